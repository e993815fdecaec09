/* Fuzz target for building a tokenizer from an untrusted vocabulary and merge
 * list (tq_tokenizer_create, with csrc/tokenizer_merges.c for the merge texts),
 * as tokenizer.json and GGUF files provide them, followed by one encode and
 * decode with the result.
 *
 * Input layout: byte 0 contains the options: model BPE (bit 0, else SentencePiece),
 * byte_fallback (bit 1), ignore_merges (bit 2), split_newlines (bits 3-4),
 * add_space_prefix (bit 5). The rest is the vocabulary, then a 0x02 byte and the
 * merge texts ("LEFT RIGHT"). Pieces and merges are separated by 0x01 bytes.
 * Pieces of the form <0xXX> are byte tokens, other pieces in angle brackets are
 * control tokens. */
#include <string.h>

#include "fuzz_common.h"
#include "tokenizer.h"

#define FUZZ_MAX_ITEMS 4096

typedef struct {
    const char *texts[FUZZ_MAX_ITEMS];
    uint64_t lens[FUZZ_MAX_ITEMS];
    size_t n;
} item_list;

/* Split data[0 .. size) at 0x01 bytes into list (up to FUZZ_MAX_ITEMS items). */
static void split_items(const uint8_t *data, size_t size, item_list *list)
{
    list->n = 0;
    size_t start = 0;
    for (size_t i = 0; i <= size && list->n < FUZZ_MAX_ITEMS; i++) {
        if (i == size || data[i] == 0x01) {
            list->texts[list->n] = (const char *)data + start;
            list->lens[list->n] = i - start;
            list->n++;
            start = i + 1;
        }
    }
}

static int32_t piece_type(const char *text, uint64_t len)
{
    if (len == 6 && memcmp(text, "<0x", 3) == 0 && text[5] == '>') {
        return TQ_TOKEN_BYTE;
    }
    if (len >= 2 && text[0] == '<' && text[len - 1] == '>') {
        return TQ_TOKEN_CONTROL;
    }
    return TQ_TOKEN_NORMAL;
}

static void encode_and_decode(const tq_tokenizer *tok, const char *text, size_t len)
{
    tq_error err;
    tq_error_clear(&err);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    const tq_status st = tq_tokenizer_encode(tok, text, len, -1, 1, &ids, &n_ids, &err);
    if (st != TQ_OK) {
        fuzz_check_failure(st, &err, "tq_tokenizer_encode");
        return;
    }
    for (size_t i = 0; i < n_ids; i++) {
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < tq_tokenizer_n_vocab(tok), "id %d outside the vocabulary", ids[i]);
    }
    char *decoded = NULL;
    size_t decoded_len = 0;
    const tq_status dst = tq_tokenizer_decode(tok, ids, n_ids, 1, &decoded, &decoded_len, &err);
    FUZZ_CHECK(dst == TQ_OK, "decoding an encoding failed: %s", err.message);
    free(decoded);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) {
        return 0;
    }
    static item_list pieces;
    static item_list merges;
    static int32_t types[FUZZ_MAX_ITEMS];
    const uint8_t flags = data[0];
    const uint8_t *body = data + 1;
    const size_t body_size = size - 1;
    const uint8_t *separator = memchr(body, 0x02, body_size);
    const size_t vocab_size = separator != NULL ? (size_t)(separator - body) : body_size;
    split_items(body, vocab_size, &pieces);
    if (separator != NULL) {
        split_items(separator + 1, body_size - vocab_size - 1, &merges);
    } else {
        merges.n = 0;
    }
    for (size_t i = 0; i < pieces.n; i++) {
        types[i] = piece_type(pieces.texts[i], pieces.lens[i]);
    }

    tq_tokenizer_spec spec;
    memset(&spec, 0, sizeof(spec));
    spec.model = (flags & 1) ? TQ_TOKENIZER_BPE : TQ_TOKENIZER_SPM;
    spec.n_vocab = (int32_t)pieces.n;
    spec.pieces = pieces.texts;
    spec.piece_lens = pieces.lens;
    spec.types = types;
    spec.bos_id = pieces.n > 0 ? 0 : -1;
    spec.eos_id = pieces.n > 1 ? 1 : -1;
    spec.unk_id = pieces.n > 2 ? 2 : -1;
    spec.pad_id = -1;
    spec.add_bos = 1;
    spec.add_space_prefix = (flags >> 5) & 1;
    spec.byte_fallback = (flags >> 1) & 1;
    spec.ignore_merges = (flags >> 2) & 1;
    spec.split_newlines = (flags >> 3) & 3; /* 3 is invalid and must be rejected */
    if (spec.model == TQ_TOKENIZER_BPE) {
        spec.n_merges = (int64_t)merges.n;
        spec.merge_texts = merges.texts;
        spec.merge_text_lens = merges.lens;
    }

    tq_error err;
    tq_error_clear(&err);
    tq_tokenizer *tok = NULL;
    const tq_status st = tq_tokenizer_create(&spec, &tok, &err);
    if (st != TQ_OK) {
        fuzz_check_failure(st, &err, "tq_tokenizer_create");
        return 0;
    }
    static const char sample[] = "abc \n\n<b> \xe2\x96\x81x\xff\xc3";
    encode_and_decode(tok, sample, sizeof(sample) - 1);
    encode_and_decode(tok, (const char *)body, vocab_size);
    tq_tokenizer_free(tok);
    return 0;
}
