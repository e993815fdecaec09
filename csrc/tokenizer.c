/* Vocabulary, lookups and decoding shared by both tokenizer kinds: SentencePiece
 * (the "llama" vocabulary type of GGUF, used by Gemma 3) and BPE with ranked
 * merges (the "gemma4" type). Encoding is in tokenizer_encode.c, merge rules in
 * tokenizer_merges.c and the streaming decoder in tokenizer_stream.c.
 */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- hashing */

/* Hash 8 bytes per round with multiply-xorshift steps (constants of the
 * SplitMix64 finalizer), so that both halves of the result are well mixed: the
 * low bits pick the slot and the high 32 bits are the tag. */
static uint64_t hash_bytes(const char *s, size_t len)
{
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)len * 0xFF51AFD7ED558CCDULL);
    while (len >= 8) {
        uint64_t word;
        memcpy(&word, s, 8);
        h = (h ^ word) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 31;
        s += 8;
        len -= 8;
    }
    uint64_t tail = 0;
    for (size_t i = 0; i < len; i++) {
        tail |= (uint64_t)(unsigned char)s[i] << (8 * i);
    }
    h = (h ^ tail) * 0x94D049BB133111EBULL;
    h ^= h >> 32;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 29;
    return h;
}

const char *tq_tok_piece_text(const tq_tokenizer *tok, int32_t id, size_t *len)
{
    *len = tok->text_offsets[id + 1] - tok->text_offsets[id];
    return tok->text + tok->text_offsets[id];
}

int32_t tq_tok_table_find(const tq_tokenizer *tok, const tq_tok_slot *table, size_t mask, const char *s, size_t len)
{
    uint64_t hash = hash_bytes(s, len);
    uint32_t tag = (uint32_t)(hash >> 32);
    size_t slot = (size_t)hash & mask;
    for (;;) {
        tq_tok_slot entry = table[slot];
        if (entry.id < 0) {
            return -1;
        }
        /* A tag mismatch rejects the slot without reading the offsets and the
         * piece text, which would be two more cache misses. */
        if (entry.tag == tag) {
            size_t id_len;
            const char *id_text = tq_tok_piece_text(tok, entry.id, &id_len);
            if (id_len == len && memcmp(id_text, s, len) == 0) {
                return entry.id;
            }
        }
        slot = (slot + 1) & mask;
    }
}

/* Insert id unless a piece with the same text is already present, so the
 * lowest id wins for duplicate texts. */
static void table_insert(const tq_tokenizer *tok, tq_tok_slot *table, size_t mask, int32_t id)
{
    size_t len;
    const char *s = tq_tok_piece_text(tok, id, &len);
    if (tq_tok_table_find(tok, table, mask, s, len) >= 0) {
        return;
    }
    uint64_t hash = hash_bytes(s, len);
    size_t slot = (size_t)hash & mask;
    while (table[slot].id >= 0) {
        slot = (slot + 1) & mask;
    }
    table[slot].tag = (uint32_t)(hash >> 32);
    table[slot].id = id;
}

static tq_status table_alloc(size_t n_entries, tq_tok_slot **table, size_t *mask, tq_error *err)
{
    size_t size = 16;
    while (size < 2 * n_entries) {
        size *= 2;
    }
    *table = malloc(size * sizeof(tq_tok_slot));
    if (*table == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "tokenizer: out of memory for a hash table of %zu slots", size);
    }
    for (size_t i = 0; i < size; i++) {
        (*table)[i].tag = 0;
        (*table)[i].id = -1;
    }
    *mask = size - 1;
    return TQ_OK;
}

/* ---------------------------------------------------------------- creation */

static int is_special_type(int32_t type)
{
    return type == TQ_TOKEN_CONTROL || type == TQ_TOKEN_USER_DEFINED || type == TQ_TOKEN_UNKNOWN;
}

/* Parse "<0xXX>" with upper- or lower-case hex digits. Returns the byte, or -1
 * when s is not a byte piece. */
static int parse_byte_piece(const char *s, size_t len)
{
    if (len != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') {
        return -1;
    }
    int value = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int digit;
        if (c >= '0' && c <= '9') {
            digit = c - '0';
        } else if (c >= 'A' && c <= 'F') {
            digit = c - 'A' + 10;
        } else if (c >= 'a' && c <= 'f') {
            digit = c - 'a' + 10;
        } else {
            return -1;
        }
        value = value * 16 + digit;
    }
    return value;
}

/* Write the decoded form of a piece into out, which needs room for len bytes,
 * and return its length. */
static size_t decode_piece(const char *s, size_t len, int32_t type, char *out)
{
    if (type == TQ_TOKEN_CONTROL || type == TQ_TOKEN_UNKNOWN || type == TQ_TOKEN_UNUSED) {
        return 0;
    }
    if (type == TQ_TOKEN_BYTE) {
        int byte = parse_byte_piece(s, len);
        if (byte >= 0) {
            out[0] = (char)byte;
            return 1;
        }
    }
    size_t n = 0;
    size_t i = 0;
    while (i < len) {
        if (i + TQ_SPACE_MARK_LEN <= len && memcmp(s + i, TQ_SPACE_MARK, TQ_SPACE_MARK_LEN) == 0) {
            out[n++] = ' ';
            i += TQ_SPACE_MARK_LEN;
        } else {
            out[n++] = s[i++];
        }
    }
    return n;
}

static int compare_u32_desc(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a;
    uint32_t y = *(const uint32_t *)b;
    return (x < y) - (x > y);
}

static tq_status validate_spec(const tq_tokenizer_spec *spec, tq_error *err)
{
    if (spec == NULL || spec->pieces == NULL || spec->piece_lens == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "tokenizer: the spec and its pieces and piece_lens must not be NULL");
    }
    if (spec->model != TQ_TOKENIZER_SPM && spec->model != TQ_TOKENIZER_BPE) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "tokenizer: model=%d is not a tokenizer kind. Use 0 (SentencePiece) or 1 (ranked BPE)",
                            (int)spec->model);
    }
    if (spec->model == TQ_TOKENIZER_SPM && spec->n_merges != 0) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "tokenizer: n_merges=%lld, but a SentencePiece vocabulary merges by score and takes no "
                            "merge rules",
                            (long long)spec->n_merges);
    }
    if (spec->split_newlines < TQ_SPLIT_NONE || spec->split_newlines > TQ_SPLIT_NEWLINES_WHOLE ||
        (spec->split_newlines != TQ_SPLIT_NONE && spec->model != TQ_TOKENIZER_BPE)) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "tokenizer: split_newlines=%d is invalid. Use 0, or 1 and 2 with ranked BPE merges",
                            spec->split_newlines);
    }
    if (spec->n_vocab <= 0) {
        return tq_error_set(err, TQ_ERR_INVALID, "tokenizer: n_vocab=%d must be positive", (int)spec->n_vocab);
    }
    const struct {
        const char *name;
        int32_t id;
    } ids[] = {{"bos_id", spec->bos_id}, {"eos_id", spec->eos_id}, {"unk_id", spec->unk_id}, {"pad_id", spec->pad_id}};
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        if (ids[i].id < -1 || ids[i].id >= spec->n_vocab) {
            return tq_error_set(err, TQ_ERR_INVALID,
                                "tokenizer: %s=%d is outside the vocabulary of %d pieces. Use -1 when it is absent",
                                ids[i].name, (int)ids[i].id, (int)spec->n_vocab);
        }
    }
    if (spec->add_bos && spec->bos_id < 0) {
        return tq_error_set(err, TQ_ERR_INVALID, "tokenizer: add_bos is set but bos_id is -1; give a bos_id");
    }
    for (int32_t i = 0; i < spec->n_vocab; i++) {
        if (spec->pieces[i] == NULL && spec->piece_lens[i] != 0) {
            return tq_error_set(err, TQ_ERR_INVALID, "tokenizer: piece %d is NULL but its length is %llu", (int)i,
                                (unsigned long long)spec->piece_lens[i]);
        }
        if (spec->piece_lens[i] > UINT32_MAX) {
            return tq_error_set(err, TQ_ERR_INVALID,
                                "tokenizer: piece %d is %llu bytes long, but pieces longer than 4 GiB are not supported",
                                (int)i, (unsigned long long)spec->piece_lens[i]);
        }
        if (spec->types != NULL && (spec->types[i] < TQ_TOKEN_NORMAL || spec->types[i] > TQ_TOKEN_BYTE)) {
            return tq_error_set(err, TQ_ERR_INVALID,
                                "tokenizer: piece %d has token type %d, but valid types are 1 (normal) to 6 (byte)",
                                (int)i, (int)spec->types[i]);
        }
    }
    return TQ_OK;
}

static tq_status build_special_index(tq_tokenizer *tok, tq_error *err)
{
    size_t n_special = 0;
    for (int32_t i = 0; i < tok->n_vocab; i++) {
        if (is_special_type(tok->types[i]) && tok->text_offsets[i + 1] > tok->text_offsets[i]) {
            n_special++;
        }
    }
    tq_status status = table_alloc(n_special, &tok->special_table, &tok->special_mask, err);
    if (status != TQ_OK) {
        return status;
    }

    /* Collect (first byte, length) pairs, then sort each first byte's lengths
     * and drop duplicates. */
    size_t counts[256] = {0};
    for (int32_t i = 0; i < tok->n_vocab; i++) {
        size_t len;
        const char *s = tq_tok_piece_text(tok, i, &len);
        if (is_special_type(tok->types[i]) && len > 0) {
            table_insert(tok, tok->special_table, tok->special_mask, i);
            counts[(unsigned char)s[0]]++;
        }
    }
    tok->special_lens = malloc((n_special > 0 ? n_special : 1) * sizeof(uint32_t));
    if (tok->special_lens == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "tokenizer: out of memory for %zu special pieces", n_special);
    }
    size_t fill[256];
    size_t start = 0;
    for (int b = 0; b < 256; b++) {
        fill[b] = start;
        start += counts[b];
    }
    for (int32_t i = 0; i < tok->n_vocab; i++) {
        size_t len;
        const char *s = tq_tok_piece_text(tok, i, &len);
        if (is_special_type(tok->types[i]) && len > 0) {
            /* The cast is exact because validate_spec rejects pieces above UINT32_MAX bytes. */
            tok->special_lens[fill[(unsigned char)s[0]]++] = (uint32_t)len;
        }
    }
    size_t out = 0;
    start = 0;
    for (int b = 0; b < 256; b++) {
        uint32_t *group = tok->special_lens + start;
        qsort(group, counts[b], sizeof(uint32_t), compare_u32_desc);
        tok->special_len_start[b] = out;
        for (size_t k = 0; k < counts[b]; k++) {
            if (k == 0 || group[k] != group[k - 1]) {
                tok->special_lens[out++] = group[k];
            }
        }
        start += counts[b];
    }
    tok->special_len_start[256] = out;
    return TQ_OK;
}

tq_status tq_tokenizer_create(const tq_tokenizer_spec *spec, tq_tokenizer **out, tq_error *err)
{
    if (out == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "tokenizer: out must not be NULL");
    }
    *out = NULL;
    tq_status status = validate_spec(spec, err);
    if (status != TQ_OK) {
        return status;
    }

    size_t n = (size_t)spec->n_vocab;
    size_t text_size = 0;
    for (size_t i = 0; i < n; i++) {
        if (!tq_add_size(text_size, (size_t)spec->piece_lens[i], &text_size)) {
            return tq_error_set(err, TQ_ERR_INVALID, "tokenizer: the total length of all pieces overflows size_t");
        }
    }

    tq_tokenizer *tok = calloc(1, sizeof(*tok));
    if (tok == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "tokenizer: out of memory");
    }
    tok->model = spec->model;
    tok->n_vocab = spec->n_vocab;
    tok->byte_fallback = spec->model == TQ_TOKENIZER_SPM ? 1 : (spec->byte_fallback ? 1 : 0);
    tok->ignore_merges = spec->model == TQ_TOKENIZER_BPE && spec->ignore_merges ? 1 : 0;
    tok->split_newlines = spec->split_newlines;
    tok->bos_id = spec->bos_id;
    tok->eos_id = spec->eos_id;
    tok->unk_id = spec->unk_id;
    tok->pad_id = spec->pad_id;
    tok->add_bos = spec->add_bos ? 1 : 0;
    tok->add_space_prefix = spec->add_space_prefix ? 1 : 0;

    /* Decoded pieces are never longer than their text because U+2581 (3 bytes)
     * becomes one space and <0xXX> (6 bytes) one byte. The extra byte keeps the
     * allocation non-empty when every piece is empty. */
    tok->text = malloc(text_size + 1);
    tok->decoded = malloc(text_size + 1);
    tok->text_offsets = malloc((n + 1) * sizeof(size_t));
    tok->decoded_offsets = malloc((n + 1) * sizeof(size_t));
    tok->scores = malloc(n * sizeof(float));
    tok->types = malloc(n * sizeof(int32_t));
    if (tok->text == NULL || tok->decoded == NULL || tok->text_offsets == NULL || tok->decoded_offsets == NULL ||
        tok->scores == NULL || tok->types == NULL) {
        tq_tokenizer_free(tok);
        return tq_error_set(err, TQ_ERR_NOMEM, "tokenizer: out of memory for a vocabulary of %zu pieces (%zu bytes)",
                            n, text_size);
    }

    size_t text_pos = 0;
    size_t decoded_pos = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = (size_t)spec->piece_lens[i];
        tok->text_offsets[i] = text_pos;
        if (len > 0) {
            memcpy(tok->text + text_pos, spec->pieces[i], len);
        }
        tok->scores[i] = spec->scores ? spec->scores[i] : 0.0f;
        tok->types[i] = spec->types ? spec->types[i] : TQ_TOKEN_NORMAL;
        tok->decoded_offsets[i] = decoded_pos;
        decoded_pos += decode_piece(tok->text + text_pos, len, tok->types[i], tok->decoded + decoded_pos);
        text_pos += len;
        if (len > tok->max_piece_len) {
            tok->max_piece_len = len;
        }
    }
    tok->text_offsets[n] = text_pos;
    tok->decoded_offsets[n] = decoded_pos;

    status = table_alloc(n, &tok->piece_table, &tok->piece_mask, err);
    if (status == TQ_OK) {
        /* table_insert keeps the first id inserted for a text. SentencePiece
         * keeps the lowest id of a duplicated text. For ranked BPE the highest
         * id wins, as in transformers, which fills a dict from the GGUF token
         * list in id order. llama-cpp-python 0.3.36 aborts on such a file. */
        for (size_t k = 0; k < n; k++) {
            size_t i = tok->model == TQ_TOKENIZER_BPE ? n - 1 - k : k;
            if (tok->text_offsets[i + 1] > tok->text_offsets[i]) {
                table_insert(tok, tok->piece_table, tok->piece_mask, (int32_t)i);
            }
        }
        status = build_special_index(tok, err);
    }
    if (status == TQ_OK && tok->model == TQ_TOKENIZER_BPE) {
        status = tq_tok_build_merges(tok, spec, err);
    }
    if (status != TQ_OK) {
        tq_tokenizer_free(tok);
        return status;
    }

    for (int b = 0; b < 256; b++) {
        tok->byte_ids[b] = -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (tok->types[i] == TQ_TOKEN_BYTE) {
            size_t len;
            const char *s = tq_tok_piece_text(tok, (int32_t)i, &len);
            int byte = parse_byte_piece(s, len);
            if (byte >= 0 && tok->byte_ids[byte] < 0) {
                tok->byte_ids[byte] = (int32_t)i;
            }
        }
    }

    *out = tok;
    return TQ_OK;
}

void tq_tokenizer_free(tq_tokenizer *tok)
{
    if (tok == NULL) {
        return;
    }
    free(tok->text);
    free(tok->text_offsets);
    free(tok->scores);
    free(tok->types);
    free(tok->decoded);
    free(tok->decoded_offsets);
    free(tok->piece_table);
    free(tok->special_table);
    free(tok->special_lens);
    free(tok->merge_table);
    free(tok);
}

int32_t tq_tokenizer_n_vocab(const tq_tokenizer *tok)
{
    return tok->n_vocab;
}

tq_tokenizer_model tq_tokenizer_model_kind(const tq_tokenizer *tok)
{
    return tok->model;
}

int64_t tq_tokenizer_n_merges(const tq_tokenizer *tok)
{
    return tok->n_merges;
}

int32_t tq_tokenizer_bos(const tq_tokenizer *tok)
{
    return tok->bos_id;
}

int32_t tq_tokenizer_eos(const tq_tokenizer *tok)
{
    return tok->eos_id;
}

int32_t tq_tokenizer_unk(const tq_tokenizer *tok)
{
    return tok->unk_id;
}

int32_t tq_tokenizer_pad(const tq_tokenizer *tok)
{
    return tok->pad_id;
}

int tq_tokenizer_add_bos(const tq_tokenizer *tok)
{
    return tok->add_bos;
}

int32_t tq_tokenizer_token_type(const tq_tokenizer *tok, int32_t id)
{
    if (id < 0 || id >= tok->n_vocab) {
        return -1;
    }
    return tok->types[id];
}

float tq_tokenizer_score(const tq_tokenizer *tok, int32_t id)
{
    if (id < 0 || id >= tok->n_vocab) {
        return 0.0f;
    }
    return tok->scores[id];
}

size_t tq_tokenizer_max_piece_len(const tq_tokenizer *tok)
{
    return tok->max_piece_len;
}

int32_t tq_tokenizer_find(const tq_tokenizer *tok, const char *piece, size_t len)
{
    if (len == 0) {
        return -1;
    }
    return tq_tok_table_find(tok, tok->piece_table, tok->piece_mask, piece, len);
}

int64_t tq_tokenizer_piece_text(const tq_tokenizer *tok, int32_t id, char *out, size_t cap)
{
    if (id < 0 || id >= tok->n_vocab) {
        return -1;
    }
    size_t len;
    const char *s = tq_tok_piece_text(tok, id, &len);
    if (out != NULL && cap > 0) {
        memcpy(out, s, len < cap ? len : cap);
    }
    return (int64_t)len;
}

const char *tq_tok_piece_decoded(const tq_tokenizer *tok, int32_t id, int render_special, size_t *len)
{
    int32_t type = tok->types[id];
    if (render_special && (type == TQ_TOKEN_CONTROL || type == TQ_TOKEN_UNKNOWN || type == TQ_TOKEN_UNUSED)) {
        return tq_tok_piece_text(tok, id, len);
    }
    *len = tok->decoded_offsets[id + 1] - tok->decoded_offsets[id];
    return tok->decoded + tok->decoded_offsets[id];
}

int64_t tq_tokenizer_piece_bytes(const tq_tokenizer *tok, int32_t id, int render_special, char *out, size_t cap)
{
    if (id < 0 || id >= tok->n_vocab) {
        return -1;
    }
    size_t len;
    const char *s = tq_tok_piece_decoded(tok, id, render_special, &len);
    if (out != NULL && cap > 0) {
        memcpy(out, s, len < cap ? len : cap);
    }
    return (int64_t)len;
}

tq_status tq_tokenizer_decode(const tq_tokenizer *tok, const int32_t *ids, size_t n_ids, int render_special,
                              char **out, size_t *out_len, tq_error *err)
{
    *out = NULL;
    *out_len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= tok->n_vocab) {
            return tq_error_set(err, TQ_ERR_INVALID,
                                "decode: token id %d at position %zu is outside the vocabulary [0, %d)", (int)ids[i],
                                i, (int)tok->n_vocab);
        }
        size_t len;
        tq_tok_piece_decoded(tok, ids[i], render_special, &len);
        if (!tq_add_size(total, len, &total)) {
            return tq_error_set(err, TQ_ERR_INVALID, "decode: the decoded length of %zu ids overflows size_t", n_ids);
        }
    }
    char *buffer = malloc(total + 1);
    if (buffer == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "decode: out of memory for %zu bytes", total);
    }
    size_t pos = 0;
    for (size_t i = 0; i < n_ids; i++) {
        size_t len;
        const char *s = tq_tok_piece_decoded(tok, ids[i], render_special, &len);
        memcpy(buffer + pos, s, len);
        pos += len;
    }
    buffer[pos] = '\0';
    *out = buffer;
    *out_len = pos;
    return TQ_OK;
}
