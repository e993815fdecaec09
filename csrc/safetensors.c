/* safetensors reader: mapping, a strict schema-directed JSON parser for the
 * header, and the checks that tie the tensor table to the data buffer. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct tq_safetensors {
    const uint8_t *bytes;
    size_t size;
    int mapped; /* 1: bytes is an mmap of size bytes that close() unmaps */
    uint64_t data_start;
    tq_safetensors_tensor *tensors;
    size_t n_tensors;
    size_t cap_tensors;
    char **meta_keys;
    char **meta_values;
    size_t n_meta;
    size_t cap_meta;
};

static const struct {
    const char *name;
    size_t size;
} DTYPES[TQ_ST_DTYPE_COUNT] = {
    [TQ_ST_BOOL] = {"BOOL", 1},      [TQ_ST_U8] = {"U8", 1},   [TQ_ST_I8] = {"I8", 1},
    [TQ_ST_F8_E5M2] = {"F8_E5M2", 1}, [TQ_ST_F8_E4M3] = {"F8_E4M3", 1},
    [TQ_ST_I16] = {"I16", 2},        [TQ_ST_U16] = {"U16", 2}, [TQ_ST_F16] = {"F16", 2},
    [TQ_ST_BF16] = {"BF16", 2},      [TQ_ST_I32] = {"I32", 4}, [TQ_ST_U32] = {"U32", 4},
    [TQ_ST_F32] = {"F32", 4},        [TQ_ST_F64] = {"F64", 8}, [TQ_ST_I64] = {"I64", 8},
    [TQ_ST_U64] = {"U64", 8},
};

const char *tq_safetensors_dtype_name(tq_safetensors_dtype dtype)
{
    return (unsigned)dtype < TQ_ST_DTYPE_COUNT ? DTYPES[dtype].name : NULL;
}

size_t tq_safetensors_dtype_size(tq_safetensors_dtype dtype)
{
    return (unsigned)dtype < TQ_ST_DTYPE_COUNT ? DTYPES[dtype].size : 0;
}

/* ------------------------------------------------------------ JSON reader */

typedef struct {
    const uint8_t *p;
    const uint8_t *begin;
    const uint8_t *end;
    tq_error *err;
} json_reader;

static tq_status json_fail(json_reader *r, const char *problem)
{
    return tq_error_set(r->err, TQ_ERR_FORMAT, "invalid safetensors header: %s at header byte %zu", problem,
                        (size_t)(r->p - r->begin));
}

static void skip_space(json_reader *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r')) {
        r->p++;
    }
}

static tq_status expect_char(json_reader *r, char c, const char *problem)
{
    skip_space(r);
    if (r->p >= r->end || *r->p != (uint8_t)c) {
        return json_fail(r, problem);
    }
    r->p++;
    return TQ_OK;
}

/* Append the UTF-8 encoding of code point cp to out (capacity checked by the caller: 4 bytes). */
static size_t put_utf8(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the valid UTF-8 sequence at p (at most end - p bytes), or 0 when invalid
 * (overlong forms, surrogates and code points above U+10FFFF are invalid). */
static size_t utf8_sequence_length(const uint8_t *p, const uint8_t *end)
{
    const size_t avail = (size_t)(end - p);
    const uint8_t c = p[0];
    if (c < 0x80) {
        return 1;
    }
    size_t n;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (avail < n) {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF)) {
        return 0;
    }
    return n;
}

static int hex4(const uint8_t *p, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') {
            v |= (uint32_t)(c - '0');
        } else if (c >= 'a' && c <= 'f') {
            v |= (uint32_t)(c - 'a' + 10);
        } else if (c >= 'A' && c <= 'F') {
            v |= (uint32_t)(c - 'A' + 10);
        } else {
            return 0;
        }
    }
    *out = v;
    return 1;
}

/* Parse a JSON string into a new NUL-terminated UTF-8 buffer (*out, caller frees).
 * Decoded text is never longer than its escaped form, so the raw length bounds it. */
static tq_status parse_string(json_reader *r, char **out)
{
    *out = NULL;
    tq_status status = expect_char(r, '"', "expected a string");
    if (status != TQ_OK) {
        return status;
    }
    const uint8_t *start = r->p;
    const uint8_t *q = start;
    while (q < r->end && *q != '"') {
        q += (*q == '\\' && q + 1 < r->end) ? 2 : 1;
    }
    if (q >= r->end) {
        return json_fail(r, "unterminated string");
    }
    char *buffer = malloc((size_t)(q - start) + 1);
    if (buffer == NULL) {
        return tq_error_set(r->err, TQ_ERR_NOMEM, "out of memory reading the safetensors header");
    }
    size_t used = 0;
    while (*r->p != '"') {
        const uint8_t c = *r->p;
        if (c < 0x20) {
            free(buffer);
            return json_fail(r, "control character inside a string");
        }
        if (c != '\\') {
            size_t n = utf8_sequence_length(r->p, r->end);
            if (n == 0) {
                free(buffer);
                return json_fail(r, "invalid UTF-8");
            }
            memcpy(buffer + used, r->p, n);
            used += n;
            r->p += n;
            continue;
        }
        const uint8_t e = r->p[1];
        r->p += 2;
        const char *simple = NULL;
        switch (e) {
        case '"': simple = "\""; break;
        case '\\': simple = "\\"; break;
        case '/': simple = "/"; break;
        case 'b': simple = "\b"; break;
        case 'f': simple = "\f"; break;
        case 'n': simple = "\n"; break;
        case 'r': simple = "\r"; break;
        case 't': simple = "\t"; break;
        default: break;
        }
        if (simple != NULL) {
            buffer[used++] = simple[0];
            continue;
        }
        uint32_t cp;
        if (e != 'u' || r->end - r->p < 4 || !hex4(r->p, &cp)) {
            free(buffer);
            return json_fail(r, "invalid escape in a string");
        }
        r->p += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t low;
            if (r->end - r->p < 6 || r->p[0] != '\\' || r->p[1] != 'u' || !hex4(r->p + 2, &low) || low < 0xDC00 ||
                low > 0xDFFF) {
                free(buffer);
                return json_fail(r, "unpaired UTF-16 surrogate escape");
            }
            r->p += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            free(buffer);
            return json_fail(r, "unpaired UTF-16 surrogate escape");
        }
        if (cp == 0) {
            free(buffer);
            return json_fail(r, "NUL character inside a string");
        }
        used += put_utf8(cp, buffer + used);
    }
    r->p++;
    buffer[used] = '\0';
    *out = buffer;
    return TQ_OK;
}

/* Parse a non-negative JSON integer (no sign, fraction or exponent) that fits in u64. */
static tq_status parse_u64(json_reader *r, uint64_t *out, const char *problem)
{
    skip_space(r);
    const uint8_t *start = r->p;
    uint64_t value = 0;
    while (r->p < r->end && *r->p >= '0' && *r->p <= '9') {
        uint64_t digit = (uint64_t)(*r->p - '0');
        if (value > (UINT64_MAX - digit) / 10) {
            return json_fail(r, "integer larger than 2^64 - 1");
        }
        value = value * 10 + digit;
        r->p++;
    }
    if (r->p == start || (r->p - start > 1 && *start == '0')) {
        return json_fail(r, problem);
    }
    if (r->p < r->end && (*r->p == '.' || *r->p == 'e' || *r->p == 'E')) {
        return json_fail(r, problem);
    }
    *out = value;
    return TQ_OK;
}

/* Parse "[n, n, ...]" of at most max_count u64 into values; *count gets the length. */
static tq_status parse_u64_array(json_reader *r, uint64_t *values, size_t max_count, size_t *count,
                                 const char *problem)
{
    tq_status status = expect_char(r, '[', problem);
    if (status != TQ_OK) {
        return status;
    }
    *count = 0;
    skip_space(r);
    if (r->p < r->end && *r->p == ']') {
        r->p++;
        return TQ_OK;
    }
    for (;;) {
        if (*count >= max_count) {
            return json_fail(r, "too many array items");
        }
        if ((status = parse_u64(r, &values[*count], problem)) != TQ_OK) {
            return status;
        }
        (*count)++;
        skip_space(r);
        if (r->p < r->end && *r->p == ',') {
            r->p++;
            continue;
        }
        return expect_char(r, ']', "expected ',' or ']' in an array");
    }
}

/* ------------------------------------------------------------ table */

static tq_status add_tensor(tq_safetensors *file, tq_error *err, tq_safetensors_tensor **out)
{
    if (file->n_tensors == file->cap_tensors) {
        size_t cap = file->cap_tensors ? file->cap_tensors * 2 : 64;
        size_t bytes;
        if (!tq_mul_size(cap, sizeof(tq_safetensors_tensor), &bytes)) {
            return tq_error_set(err, TQ_ERR_NOMEM, "too many tensors in the safetensors header");
        }
        tq_safetensors_tensor *grown = realloc(file->tensors, bytes);
        if (grown == NULL) {
            return tq_error_set(err, TQ_ERR_NOMEM, "out of memory reading the safetensors header");
        }
        file->tensors = grown;
        file->cap_tensors = cap;
    }
    *out = &file->tensors[file->n_tensors++];
    memset(*out, 0, sizeof(**out));
    return TQ_OK;
}

static tq_status add_metadata(tq_safetensors *file, char *key, char *value, tq_error *err)
{
    if (file->n_meta == file->cap_meta) {
        size_t cap = file->cap_meta ? file->cap_meta * 2 : 8;
        char **keys = realloc(file->meta_keys, cap * sizeof(char *));
        if (keys == NULL) {
            return tq_error_set(err, TQ_ERR_NOMEM, "out of memory reading the safetensors header");
        }
        file->meta_keys = keys;
        char **values = realloc(file->meta_values, cap * sizeof(char *));
        if (values == NULL) {
            return tq_error_set(err, TQ_ERR_NOMEM, "out of memory reading the safetensors header");
        }
        file->meta_values = values;
        file->cap_meta = cap;
    }
    file->meta_keys[file->n_meta] = key;
    file->meta_values[file->n_meta] = value;
    file->n_meta++;
    return TQ_OK;
}

static tq_status parse_metadata(json_reader *r, tq_safetensors *file)
{
    tq_status status = expect_char(r, '{', "__metadata__ must be an object of strings");
    if (status != TQ_OK) {
        return status;
    }
    skip_space(r);
    if (r->p < r->end && *r->p == '}') {
        r->p++;
        return TQ_OK;
    }
    for (;;) {
        char *key = NULL, *value = NULL;
        if ((status = parse_string(r, &key)) != TQ_OK) {
            return status;
        }
        for (size_t i = 0; i < file->n_meta; i++) {
            if (strcmp(file->meta_keys[i], key) == 0) {
                free(key);
                return json_fail(r, "duplicate key in __metadata__");
            }
        }
        if ((status = expect_char(r, ':', "expected ':' after a key")) != TQ_OK) {
            free(key);
            return status;
        }
        skip_space(r);
        if (r->p < r->end && *r->p != '"') {
            free(key);
            return json_fail(r, "__metadata__ values must be strings");
        }
        if ((status = parse_string(r, &value)) != TQ_OK) {
            free(key);
            return status;
        }
        if ((status = add_metadata(file, key, value, r->err)) != TQ_OK) {
            free(key);
            free(value);
            return status;
        }
        skip_space(r);
        if (r->p < r->end && *r->p == ',') {
            r->p++;
            continue;
        }
        return expect_char(r, '}', "expected ',' or '}' in __metadata__");
    }
}

/* Parse {"dtype": ..., "shape": [...], "data_offsets": [b, e]} into t (name already set). */
static tq_status parse_tensor_info(json_reader *r, tq_safetensors_tensor *t)
{
    tq_status status = expect_char(r, '{', "a tensor entry must be an object");
    if (status != TQ_OK) {
        return status;
    }
    int have_dtype = 0, have_shape = 0, have_offsets = 0;
    uint64_t offsets[2];
    for (;;) {
        char *field = NULL;
        if ((status = parse_string(r, &field)) != TQ_OK) {
            return status;
        }
        if ((status = expect_char(r, ':', "expected ':' after a key")) != TQ_OK) {
            free(field);
            return status;
        }
        if (strcmp(field, "dtype") == 0 && !have_dtype) {
            char *dtype = NULL;
            status = parse_string(r, &dtype);
            if (status == TQ_OK) {
                int found = -1;
                for (int i = 0; i < TQ_ST_DTYPE_COUNT; i++) {
                    if (strcmp(DTYPES[i].name, dtype) == 0) {
                        found = i;
                    }
                }
                if (found < 0) {
                    status = tq_error_set(r->err, TQ_ERR_FORMAT,
                                          "tensor '%.100s' has unknown dtype '%.20s'; expected BOOL, U8, I8, "
                                          "F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64 or U64",
                                          t->name, dtype);
                }
                t->dtype = (tq_safetensors_dtype)(found < 0 ? 0 : found);
            }
            free(dtype);
            have_dtype = 1;
        } else if (strcmp(field, "shape") == 0 && !have_shape) {
            size_t n = 0;
            status = parse_u64_array(r, t->shape, TQ_SAFETENSORS_MAX_DIMS, &n,
                                     "shape must be a list of at most 8 non-negative integers");
            t->n_dims = (int)n;
            have_shape = 1;
        } else if (strcmp(field, "data_offsets") == 0 && !have_offsets) {
            size_t n = 0;
            status = parse_u64_array(r, offsets, 2, &n, "data_offsets must be [begin, end]");
            if (status == TQ_OK && n != 2) {
                status = json_fail(r, "data_offsets must be [begin, end]");
            }
            have_offsets = 1;
        } else {
            status = tq_error_set(r->err, TQ_ERR_FORMAT,
                                  "tensor '%.100s' has an unknown or repeated field '%.40s'; expected dtype, shape "
                                  "and data_offsets once each", t->name, field);
        }
        free(field);
        if (status != TQ_OK) {
            return status;
        }
        skip_space(r);
        if (r->p < r->end && *r->p == ',') {
            r->p++;
            continue;
        }
        if ((status = expect_char(r, '}', "expected ',' or '}' in a tensor entry")) != TQ_OK) {
            return status;
        }
        break;
    }
    const char *missing = NULL;
    if (!have_dtype) {
        missing = "dtype";
    } else if (!have_shape) {
        missing = "shape";
    } else if (!have_offsets) {
        missing = "data_offsets";
    }
    if (missing != NULL) {
        return tq_error_set(r->err, TQ_ERR_FORMAT, "tensor '%.100s' lacks %s; every entry needs dtype, shape and "
                            "data_offsets", t->name, missing);
    }
    if (offsets[1] < offsets[0]) {
        return tq_error_set(r->err, TQ_ERR_FORMAT, "tensor '%.100s' has data_offsets [%llu, %llu] with end before "
                            "begin", t->name, (unsigned long long)offsets[0], (unsigned long long)offsets[1]);
    }
    t->offset = offsets[0];
    t->nbytes = offsets[1] - offsets[0];
    return TQ_OK;
}

static tq_status parse_header(json_reader *r, tq_safetensors *file)
{
    tq_status status = expect_char(r, '{', "the header must be a JSON object");
    if (status != TQ_OK) {
        return status;
    }
    int have_metadata = 0;
    skip_space(r);
    if (r->p < r->end && *r->p == '}') {
        r->p++;
    } else {
        for (;;) {
            char *key = NULL;
            if ((status = parse_string(r, &key)) != TQ_OK) {
                return status;
            }
            if ((status = expect_char(r, ':', "expected ':' after a key")) != TQ_OK) {
                free(key);
                return status;
            }
            if (strcmp(key, "__metadata__") == 0) {
                free(key);
                if (have_metadata) {
                    return json_fail(r, "duplicate key __metadata__");
                }
                have_metadata = 1;
                status = parse_metadata(r, file);
            } else {
                tq_safetensors_tensor *t = NULL;
                status = add_tensor(file, r->err, &t);
                if (status != TQ_OK) {
                    free(key);
                    return status;
                }
                t->name = key; /* owned by the table from here on */
                status = parse_tensor_info(r, t);
            }
            if (status != TQ_OK) {
                return status;
            }
            skip_space(r);
            if (r->p < r->end && *r->p == ',') {
                r->p++;
                continue;
            }
            if ((status = expect_char(r, '}', "expected ',' or '}' in the header object")) != TQ_OK) {
                return status;
            }
            break;
        }
    }
    skip_space(r);
    if (r->p != r->end) {
        return json_fail(r, "unexpected bytes after the header object");
    }
    return TQ_OK;
}

static int compare_by_name(const void *a, const void *b)
{
    return strcmp(((const tq_safetensors_tensor *)a)->name, ((const tq_safetensors_tensor *)b)->name);
}

static int compare_by_offset(const void *a, const void *b)
{
    const tq_safetensors_tensor *x = *(const tq_safetensors_tensor *const *)a;
    const tq_safetensors_tensor *y = *(const tq_safetensors_tensor *const *)b;
    if (x->offset != y->offset) {
        return x->offset < y->offset ? -1 : 1;
    }
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Check sizes against shapes, names for duplicates, and that the tensors tile the data buffer. */
static tq_status check_table(tq_safetensors *file, tq_error *err)
{
    const uint64_t buffer_size = (uint64_t)file->size - file->data_start;
    for (size_t i = 0; i < file->n_tensors; i++) {
        tq_safetensors_tensor *t = &file->tensors[i];
        uint64_t elements = 1;
        for (int d = 0; d < t->n_dims; d++) {
            if (t->shape[d] != 0 && elements > UINT64_MAX / t->shape[d]) {
                return tq_error_set(err, TQ_ERR_FORMAT, "tensor '%.100s' has a shape whose element count overflows",
                                    t->name);
            }
            elements *= t->shape[d];
        }
        const uint64_t size = DTYPES[t->dtype].size;
        if (elements > UINT64_MAX / size || elements * size != t->nbytes) {
            return tq_error_set(err, TQ_ERR_FORMAT, "tensor '%.100s': shape and dtype %s give %llu elements of %llu "
                                "bytes, but data_offsets span %llu bytes", t->name, DTYPES[t->dtype].name,
                                (unsigned long long)elements, (unsigned long long)size,
                                (unsigned long long)t->nbytes);
        }
        if (t->offset > buffer_size || t->nbytes > buffer_size - t->offset) {
            return tq_error_set(err, TQ_ERR_FORMAT, "tensor '%.100s' has data_offsets [%llu, %llu] past the end of "
                                "the %llu-byte data buffer (file truncated?)", t->name,
                                (unsigned long long)t->offset, (unsigned long long)(t->offset + t->nbytes),
                                (unsigned long long)buffer_size);
        }
        t->data = file->bytes + file->data_start + t->offset;
    }

    if (file->n_tensors > 1) {
        qsort(file->tensors, file->n_tensors, sizeof(tq_safetensors_tensor), compare_by_name);
    }
    for (size_t i = 1; i < file->n_tensors; i++) {
        if (strcmp(file->tensors[i - 1].name, file->tensors[i].name) == 0) {
            return tq_error_set(err, TQ_ERR_FORMAT, "tensor name '%.100s' appears twice in the header",
                                file->tensors[i].name);
        }
    }

    /* Walk the tensors in offset order: each must start where the previous ended. */
    const tq_safetensors_tensor **order = NULL;
    if (file->n_tensors > 0) {
        order = malloc(file->n_tensors * sizeof(*order));
        if (order == NULL) {
            return tq_error_set(err, TQ_ERR_NOMEM, "out of memory checking the safetensors header");
        }
    }
    for (size_t i = 0; i < file->n_tensors; i++) {
        order[i] = &file->tensors[i];
    }
    if (file->n_tensors > 1) {
        qsort(order, file->n_tensors, sizeof(*order), compare_by_offset);
    }
    uint64_t expected = 0;
    tq_status status = TQ_OK;
    for (size_t i = 0; i < file->n_tensors && status == TQ_OK; i++) {
        const tq_safetensors_tensor *t = order[i];
        if (t->offset < expected) {
            status = tq_error_set(err, TQ_ERR_FORMAT, "tensor '%.100s' at bytes [%llu, %llu] overlaps '%.100s'",
                                  t->name, (unsigned long long)t->offset,
                                  (unsigned long long)(t->offset + t->nbytes), order[i - 1]->name);
        } else if (t->offset > expected) {
            status = tq_error_set(err, TQ_ERR_FORMAT, "the data buffer has unused bytes [%llu, %llu) before tensor "
                                  "'%.100s'", (unsigned long long)expected, (unsigned long long)t->offset, t->name);
        }
        expected = t->offset + t->nbytes;
    }
    if (status == TQ_OK && expected != buffer_size) {
        status = tq_error_set(err, TQ_ERR_FORMAT, "the tensors cover %llu bytes but the data buffer has %llu; the "
                              "file has trailing bytes", (unsigned long long)expected,
                              (unsigned long long)buffer_size);
    }
    free(order);
    return status;
}

/* ------------------------------------------------------------ open/close */

static tq_status parse_file(tq_safetensors *file, tq_error *err)
{
    if (file->size < 8) {
        return tq_error_set(err, TQ_ERR_FORMAT, "not a safetensors file: %zu bytes, shorter than the 8-byte header "
                            "length", file->size);
    }
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) {
        header_len = (header_len << 8) | file->bytes[i];
    }
    if (header_len > TQ_SAFETENSORS_MAX_HEADER) {
        return tq_error_set(err, TQ_ERR_FORMAT, "not a safetensors file: header length %llu is above the 100 MB "
                            "limit", (unsigned long long)header_len);
    }
    if (header_len > (uint64_t)file->size - 8) {
        return tq_error_set(err, TQ_ERR_FORMAT, "truncated safetensors file: header length %llu but only %zu bytes "
                            "follow", (unsigned long long)header_len, file->size - 8);
    }
    if (header_len < 2) {
        return tq_error_set(err, TQ_ERR_FORMAT, "not a safetensors file: header length %llu is too short for a JSON "
                            "object", (unsigned long long)header_len);
    }
    file->data_start = 8 + header_len;
    json_reader r = {file->bytes + 8, file->bytes + 8, file->bytes + 8 + header_len, err};
    tq_status status = parse_header(&r, file);
    if (status != TQ_OK) {
        return status;
    }
    return check_table(file, err);
}

static tq_safetensors *new_file(tq_error *err)
{
    tq_safetensors *file = calloc(1, sizeof(*file));
    if (file == NULL) {
        tq_error_set(err, TQ_ERR_NOMEM, "out of memory opening a safetensors file");
    }
    return file;
}

tq_status tq_safetensors_open_memory(const void *data, size_t size, tq_safetensors **out, tq_error *err)
{
    if (out == NULL || (data == NULL && size > 0)) {
        return tq_error_set(err, TQ_ERR_INVALID, "tq_safetensors_open_memory: out and data must not be NULL");
    }
    *out = NULL;
    tq_safetensors *file = new_file(err);
    if (file == NULL) {
        return TQ_ERR_NOMEM;
    }
    static const uint8_t empty[1] = {0};
    file->bytes = size > 0 ? data : empty;
    file->size = size;
    tq_status status = parse_file(file, err);
    if (status != TQ_OK) {
        tq_safetensors_close(file);
        return status;
    }
    *out = file;
    return TQ_OK;
}

tq_status tq_safetensors_open(const char *path, tq_safetensors **out, tq_error *err)
{
    if (out == NULL || path == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "tq_safetensors_open: path and out must not be NULL");
    }
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return tq_error_set(err, TQ_ERR_IO, "cannot open safetensors file %s: %s", path, strerror(errno));
    }
    struct stat info;
    if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
        close(fd);
        return tq_error_set(err, TQ_ERR_IO, "%s is not a regular file; pass a .safetensors file", path);
    }
    if ((uint64_t)info.st_size > SIZE_MAX) {
        close(fd);
        return tq_error_set(err, TQ_ERR_IO, "safetensors file %s is too large to map", path);
    }
    const size_t size = (size_t)info.st_size;
    tq_safetensors *file = new_file(err);
    if (file == NULL) {
        close(fd);
        return TQ_ERR_NOMEM;
    }
    /* mmap rejects a length of 0, and an empty file fails the header checks anyway. */
    static const uint8_t empty[1] = {0};
    void *mapping = size > 0 ? mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0) : (void *)empty;
    close(fd);
    if (mapping == MAP_FAILED) {
        tq_safetensors_close(file);
        return tq_error_set(err, TQ_ERR_IO, "cannot map safetensors file %s: %s", path, strerror(errno));
    }
    file->bytes = mapping;
    file->size = size;
    file->mapped = size > 0;
    tq_status status = parse_file(file, err);
    if (status != TQ_OK) {
        /* Put the path in front of the reason. */
        char reason[TQ_ERROR_MSG_SIZE] = "";
        if (err != NULL) {
            memcpy(reason, err->message, sizeof(reason));
        }
        tq_safetensors_close(file);
        return tq_error_set(err, status, "%s: %s", path, reason);
    }
    *out = file;
    return TQ_OK;
}

void tq_safetensors_close(tq_safetensors *file)
{
    if (file == NULL) {
        return;
    }
    for (size_t i = 0; i < file->n_tensors; i++) {
        free((char *)file->tensors[i].name);
    }
    free(file->tensors);
    for (size_t i = 0; i < file->n_meta; i++) {
        free(file->meta_keys[i]);
        free(file->meta_values[i]);
    }
    free(file->meta_keys);
    free(file->meta_values);
    if (file->mapped) {
        munmap((void *)file->bytes, file->size);
    }
    free(file);
}

size_t tq_safetensors_count(const tq_safetensors *file)
{
    return file->n_tensors;
}

const tq_safetensors_tensor *tq_safetensors_tensor_at(const tq_safetensors *file, size_t index)
{
    return index < file->n_tensors ? &file->tensors[index] : NULL;
}

const tq_safetensors_tensor *tq_safetensors_find(const tq_safetensors *file, const char *name)
{
    size_t lo = 0, hi = file->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(file->tensors[mid].name, name);
        if (c == 0) {
            return &file->tensors[mid];
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

size_t tq_safetensors_metadata_count(const tq_safetensors *file)
{
    return file->n_meta;
}

const char *tq_safetensors_metadata_key(const tq_safetensors *file, size_t index)
{
    return index < file->n_meta ? file->meta_keys[index] : NULL;
}

const char *tq_safetensors_metadata_value(const tq_safetensors *file, size_t index)
{
    return index < file->n_meta ? file->meta_values[index] : NULL;
}

uint64_t tq_safetensors_data_start(const tq_safetensors *file)
{
    return file->data_start;
}

const void *tq_safetensors_bytes(const tq_safetensors *file, size_t *size)
{
    if (size != NULL) {
        *size = file->size;
    }
    return file->bytes;
}
