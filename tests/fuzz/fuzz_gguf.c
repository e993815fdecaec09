/* Fuzz target for the GGUF reader (csrc/gguf.c) and what reads GGUF metadata
 * and tensors right after it: the tokenizer built from tokenizer.ggml.* keys and
 * the dequantizers applied to the first row of every tensor.
 *
 * The input is a whole GGUF file parsed in place by tq_gguf_open_memory. On
 * success every metadata value, array element, tensor name and tensor byte range
 * is read, so AddressSanitizer detects any offset that the reader let through
 * without a bounds check. */
#include <string.h>

#include "fuzz_common.h"
#include "gguf.h"
#include "tokenizer.h"
#include "weights.h"

/* Maximum row length the harness dequantizes, in elements, which sizes the scratch buffer. */
#define FUZZ_MAX_ROW 65536

static volatile uint8_t sink;

static void touch(const void *data, uint64_t len)
{
    if (len > 0) {
        const uint8_t *bytes = data;
        sink ^= bytes[0];
        sink ^= bytes[len - 1];
    }
}

static void walk_array(const tq_gguf_array *arr, int depth)
{
    FUZZ_CHECK(depth <= TQ_GGUF_MAX_ARRAY_DEPTH, "array nested %d deep", depth);
    if (arr->type == TQ_GGUF_STRING) {
        const uint8_t *cursor = arr->data;
        for (uint64_t i = 0; i < arr->count; i++) {
            const tq_gguf_string s =
                arr->strings != NULL ? tq_gguf_array_string(arr, i) : tq_gguf_array_next_string(&cursor);
            touch(s.data, s.len);
        }
    } else if (arr->type == TQ_GGUF_ARRAY) {
        const uint8_t *cursor = arr->data;
        for (uint64_t i = 0; i < arr->count; i++) {
            tq_gguf_array inner;
            tq_gguf_array_next_inner(&cursor, &inner);
            walk_array(&inner, depth + 1);
        }
    } else if (arr->count > 0) {
        static const uint64_t sizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
        FUZZ_CHECK((unsigned)arr->type < sizeof(sizes) / sizeof(sizes[0]) && sizes[arr->type] > 0,
                   "array of element type %d", (int)arr->type);
        touch(arr->data, arr->count * sizes[arr->type]);
    }
}

static void walk_metadata(const tq_gguf *g)
{
    for (uint64_t i = 0; i < tq_gguf_n_kv(g); i++) {
        const tq_gguf_kv *kv = tq_gguf_kv_at(g, i);
        touch(kv->key.data, kv->key.len);
        FUZZ_CHECK(tq_gguf_find_kv_len(g, kv->key.data, kv->key.len) == kv, "metadata key %llu not found by name",
                   (unsigned long long)i);
        if (kv->type == TQ_GGUF_STRING) {
            touch(kv->value.str.data, kv->value.str.len);
        } else if (kv->type == TQ_GGUF_ARRAY) {
            walk_array(&kv->value.arr, 1);
        }
    }
}

static void walk_tensors(const tq_gguf *g, float *row)
{
    const uint8_t *base = tq_gguf_mapping(g);
    const uint64_t file_size = tq_gguf_file_size(g);
    for (uint64_t i = 0; i < tq_gguf_n_tensors(g); i++) {
        const tq_gguf_tensor *t = tq_gguf_tensor_at(g, i);
        touch(t->name.data, t->name.len);
        FUZZ_CHECK(tq_gguf_find_tensor_len(g, t->name.data, t->name.len) == t, "tensor %llu not found by name",
                   (unsigned long long)i);
        const uint8_t *start = t->data;
        FUZZ_CHECK(start >= base && (uint64_t)(start - base) <= file_size &&
                       t->nbytes <= file_size - (uint64_t)(start - base),
                   "tensor %llu lies outside the file", (unsigned long long)i);
        touch(t->data, t->nbytes);

        /* The first row must fit in the tensor's bytes, and the dequantizer must
         * read only inside it. A tensor with a zero dimension has no rows. */
        tq_error err;
        tq_error_clear(&err);
        size_t row_bytes = 0;
        if (t->nbytes == 0 || t->ne[0] > FUZZ_MAX_ROW || tq_type_row_bytes(t->type, (int64_t)t->ne[0], &row_bytes, &err) != TQ_OK) {
            continue;
        }
        FUZZ_CHECK(row_bytes <= t->nbytes, "tensor %llu: row of %zu bytes in %llu bytes", (unsigned long long)i,
                   row_bytes, (unsigned long long)t->nbytes);
        const tq_status st = tq_dequantize_row(t->type, t->data, row, (int64_t)t->ne[0], &err);
        if (st != TQ_OK) {
            fuzz_check_failure(st, &err, "tq_dequantize_row");
        }
    }
}

/* Build the tokenizer from the metadata, as tq_model_create does, and run it once. */
static void check_tokenizer(const tq_gguf *g)
{
    tq_error err;
    tq_error_clear(&err);
    tq_tokenizer *tok = NULL;
    const tq_status st = tq_tokenizer_create_from_gguf(g, &tok, &err);
    if (st != TQ_OK) {
        fuzz_check_failure(st, &err, "tq_tokenizer_create_from_gguf");
        return;
    }
    static const char text[] = "<start_of_turn>user\nHi \xff\xe2\x96\x81 there\n\n";
    int32_t *ids = NULL;
    size_t n_ids = 0;
    const tq_status est = tq_tokenizer_encode(tok, text, sizeof(text) - 1, -1, 1, &ids, &n_ids, &err);
    if (est != TQ_OK) {
        fuzz_check_failure(est, &err, "tq_tokenizer_encode");
    } else {
        char *decoded = NULL;
        size_t decoded_len = 0;
        const tq_status dst = tq_tokenizer_decode(tok, ids, n_ids, 1, &decoded, &decoded_len, &err);
        FUZZ_CHECK(dst == TQ_OK, "decoding the ids of an encoding failed: %s", err.message);
        free(decoded);
        free(ids);
    }
    tq_tokenizer_free(tok);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static float row[FUZZ_MAX_ROW];
    tq_error err;
    tq_error_clear(&err);
    tq_gguf *g = NULL;
    const tq_status st = tq_gguf_open_memory(data, size, "fuzz.gguf", &g, &err);
    if (st != TQ_OK) {
        fuzz_check_failure(st, &err, "tq_gguf_open_memory");
        FUZZ_CHECK(g == NULL, "a failed open returned an object");
        return 0;
    }
    FUZZ_CHECK(tq_gguf_file_size(g) == size, "file size %llu for %zu bytes",
               (unsigned long long)tq_gguf_file_size(g), size);
    /* A file without tensors needs no padding, so only then may the data section
     * start past the end of the file. */
    const uint64_t data_offset = tq_gguf_data_offset(g);
    FUZZ_CHECK(data_offset % tq_gguf_alignment(g) == 0, "data offset %llu is not aligned",
               (unsigned long long)data_offset);
    FUZZ_CHECK(data_offset <= size || tq_gguf_n_tensors(g) == 0, "data section starts past the end");
    walk_metadata(g);
    walk_tensors(g, row);
    check_tokenizer(g);
    tq_gguf_close(g);
    return 0;
}
