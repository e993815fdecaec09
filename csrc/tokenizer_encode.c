/* Encoding of both tokenizer kinds, in two stages:
 *   1. Split the text at pieces that are matched whole: user-defined pieces
 *      always, control and unknown pieces only when parse_special is set.
 *      Matching is leftmost-longest.
 *   2. Encode every other fragment with BPE after replacing " " by U+2581:
 *      - SentencePiece (TQ_TOKENIZER_SPM): start from single UTF-8
 *        characters and repeatedly merge the adjacent pair whose concatenation
 *        is a vocabulary piece with the highest score (ties go to the leftmost
 *        pair). Characters without a piece fall back to one <0xXX> byte token
 *        per UTF-8 byte.
 *      - Ranked BPE (TQ_TOKENIZER_BPE): start from the ids of single UTF-8
 *        characters, with byte tokens for characters without a piece as in
 *        Hugging Face tokenizers' byte_fallback. Then repeatedly apply the
 *        merge rule of lowest rank among adjacent pairs (ties go to the
 *        leftmost pair).
 *    A priority queue keeps both O(n log n) in the fragment length.
 * tests/test_tokenizer.py checks SentencePiece against the sentencepiece
 * package and transformers, and tests/test_tokenizer_bpe.py checks ranked BPE
 * against transformers; comments below note where llama.cpp differs. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

#include "utf8.h"

/* A growable array of token ids. */
typedef struct {
    int32_t *data;
    size_t len;
    size_t cap;
} id_vec;

static tq_status id_vec_push(id_vec *vec, int32_t id, tq_error *err)
{
    if (vec->len == vec->cap) {
        size_t cap = vec->cap ? vec->cap * 2 : 64;
        int32_t *data = realloc(vec->data, cap * sizeof(int32_t));
        if (data == NULL) {
            return tq_error_set(err, TQ_ERR_NOMEM, "encode: out of memory for %zu token ids", cap);
        }
        vec->data = data;
        vec->cap = cap;
    }
    vec->data[vec->len++] = id;
    return TQ_OK;
}

/* One symbol of the BPE working list: a byte range of the fragment buffer,
 * linked to its neighbors. A symbol merged into its left neighbor gets len 0.
 * 32-bit offsets suffice because workspace_reserve limits a fragment buffer to
 * INT32_MAX bytes, and they keep the struct at 20 bytes, so long texts touch
 * less memory. */
typedef struct {
    int32_t prev;
    int32_t next;
    int32_t id; /* piece id of the symbol's text, or -1 when it has none */
    uint32_t start;
    uint32_t len;
} symbol;

/* A candidate merge of symbols left and right (adjacent when it was queued)
 * into a piece of len bytes. SentencePiece orders candidates by score and
 * leaves rank 0; ranked BPE orders them by rank and leaves score 0. */
typedef struct {
    float score;
    int32_t rank;
    int32_t left;
    int32_t right;
    int32_t id;   /* piece id of the merged text */
    uint32_t len; /* fits because workspace_reserve limits a fragment to INT32_MAX bytes */
} bigram;

/* Scratch memory reused across the fragments of one encode call. */
typedef struct {
    char *buffer;
    size_t buffer_cap;
    symbol *symbols;
    size_t symbols_cap;
    bigram *heap;
    size_t heap_len;
    size_t heap_cap;
} workspace;

static void workspace_free(workspace *ws)
{
    free(ws->buffer);
    free(ws->symbols);
    free(ws->heap);
}

/* Grow ws for a fragment of len bytes, which becomes at most 3 * len + 3 bytes
 * after replacing spaces and adding the prefix mark. */
static tq_status workspace_reserve(workspace *ws, size_t len, tq_error *err)
{
    size_t buffer_size;
    size_t heap_size;
    if (!tq_mul_size(len, 3, &buffer_size) || !tq_add_size(buffer_size, TQ_SPACE_MARK_LEN, &buffer_size) ||
        !tq_mul_size(buffer_size, 3, &heap_size) || buffer_size > (size_t)INT32_MAX) {
        return tq_error_set(err, TQ_ERR_INVALID, "encode: a text fragment of %zu bytes is too long to encode", len);
    }
    if (buffer_size > ws->buffer_cap) {
        char *buffer = realloc(ws->buffer, buffer_size);
        if (buffer == NULL) {
            return tq_error_set(err, TQ_ERR_NOMEM, "encode: out of memory for a fragment of %zu bytes", len);
        }
        ws->buffer = buffer;
        ws->buffer_cap = buffer_size;
    }
    /* One symbol per byte at most, and per merge at most two new bigrams on top
     * of the initial ones, so 3 entries per symbol bound the heap. */
    if (buffer_size > ws->symbols_cap) {
        symbol *symbols = realloc(ws->symbols, buffer_size * sizeof(symbol));
        bigram *heap = symbols ? realloc(ws->heap, heap_size * sizeof(bigram)) : NULL;
        if (symbols != NULL) {
            ws->symbols = symbols;
        }
        if (heap == NULL) {
            return tq_error_set(err, TQ_ERR_NOMEM, "encode: out of memory for a fragment of %zu bytes", len);
        }
        ws->heap = heap;
        ws->symbols_cap = buffer_size;
        ws->heap_cap = heap_size;
    }
    return TQ_OK;
}

/* ------------------------------------------------------- priority queue */

/* Whether a is merged before b: lower rank first, then higher score, then the
 * leftmost pair. */
static int bigram_before(const bigram *a, const bigram *b)
{
    if (a->rank != b->rank) {
        return a->rank < b->rank;
    }
    if (a->score != b->score) {
        return a->score > b->score;
    }
    return a->left < b->left;
}

static void heap_push(workspace *ws, bigram item)
{
    size_t i = ws->heap_len++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!bigram_before(&item, &ws->heap[parent])) {
            break;
        }
        ws->heap[i] = ws->heap[parent];
        i = parent;
    }
    ws->heap[i] = item;
}

static bigram heap_pop(workspace *ws)
{
    bigram top = ws->heap[0];
    bigram last = ws->heap[--ws->heap_len];
    size_t n = ws->heap_len;
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n) {
            break;
        }
        if (child + 1 < n && bigram_before(&ws->heap[child + 1], &ws->heap[child])) {
            child++;
        }
        if (!bigram_before(&ws->heap[child], &last)) {
            break;
        }
        ws->heap[i] = ws->heap[child];
        i = child;
    }
    if (n > 0) {
        ws->heap[i] = last;
    }
    return top;
}

/* ------------------------------------------------------------------ BPE */

/* Look up a BPE piece. Only normal and user-defined pieces count, as in
 * SentencePiece: control, byte and unused pieces are never produced by merges,
 * so plain text cannot turn into a control token when parse_special is 0.
 * llama.cpp accepts every type here, which differs only for such texts. */
static int32_t find_bpe_piece(const tq_tokenizer *tok, const char *s, size_t len)
{
    int32_t id = tq_tok_table_find(tok, tok->piece_table, tok->piece_mask, s, len);
    if (id < 0) {
        return -1;
    }
    int32_t type = tok->types[id];
    return (type == TQ_TOKEN_NORMAL || type == TQ_TOKEN_USER_DEFINED) ? id : -1;
}

static void queue_bigram(const tq_tokenizer *tok, workspace *ws, int32_t left, int32_t right)
{
    if (left < 0 || right < 0) {
        return;
    }
    const symbol *l = &ws->symbols[left];
    const symbol *r = &ws->symbols[right];
    size_t len = l->len + r->len;
    int32_t id = find_bpe_piece(tok, ws->buffer + l->start, len);
    if (id < 0) {
        return;
    }
    bigram item = {tok->scores[id], 0, left, right, id, (uint32_t)len};
    heap_push(ws, item);
}

/* Queue the merge of the adjacent symbols left and right when their pair of
 * ids has a merge rule (ranked BPE). */
static void queue_ranked_pair(const tq_tokenizer *tok, workspace *ws, int32_t left, int32_t right)
{
    if (left < 0 || right < 0) {
        return;
    }
    const symbol *l = &ws->symbols[left];
    const symbol *r = &ws->symbols[right];
    const tq_tok_merge_slot *merge = tq_tok_find_merge(tok, l->id, r->id);
    if (merge == NULL) {
        return;
    }
    bigram item = {0.0f, merge->rank, left, right, merge->id, (uint32_t)(l->len + r->len)};
    heap_push(ws, item);
}

/* Emit the ids of one final symbol: its piece id when it has one, or else one
 * byte token per byte (SentencePiece's byte fallback), or else the unknown token. */
static tq_status emit_symbol(const tq_tokenizer *tok, int32_t id, const char *s, size_t len, id_vec *ids,
                             tq_error *err)
{
    if (id >= 0) {
        return id_vec_push(ids, id, err);
    }
    for (size_t i = 0; i < len; i++) {
        int32_t byte_id = tok->byte_ids[(unsigned char)s[i]];
        if (byte_id < 0) {
            /* Without byte pieces the whole symbol is one unknown token. */
            if (tok->unk_id < 0) {
                return tq_error_set(err, TQ_ERR_INVALID,
                                    "encode: byte 0x%02X has no <0x%02X> piece and the vocabulary has no unknown "
                                    "piece, so this vocabulary cannot encode the text",
                                    (unsigned)(unsigned char)s[i], (unsigned)(unsigned char)s[i]);
            }
            return id_vec_push(ids, tok->unk_id, err);
        }
    }
    for (size_t i = 0; i < len; i++) {
        tq_status status = id_vec_push(ids, tok->byte_ids[(unsigned char)s[i]], err);
        if (status != TQ_OK) {
            return status;
        }
    }
    return TQ_OK;
}

/* Copy text[0 .. len) into ws->buffer with every space replaced by U+2581,
 * after one U+2581 when add_prefix is set. Returns the byte count. */
static size_t escape_spaces(const char *text, size_t len, int add_prefix, workspace *ws)
{
    size_t n_bytes = 0;
    if (add_prefix) {
        memcpy(ws->buffer, TQ_SPACE_MARK, TQ_SPACE_MARK_LEN);
        n_bytes = TQ_SPACE_MARK_LEN;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(ws->buffer + n_bytes, TQ_SPACE_MARK, TQ_SPACE_MARK_LEN);
            n_bytes += TQ_SPACE_MARK_LEN;
        } else {
            ws->buffer[n_bytes++] = text[i];
        }
    }
    return n_bytes;
}

/* Append a symbol for ws->buffer[start .. start + len) to the list of
 * n_symbols symbols. The next append links it to its successor. */
static void append_symbol(workspace *ws, int32_t *n_symbols, size_t start, size_t len, int32_t id)
{
    symbol *sym = &ws->symbols[*n_symbols];
    sym->prev = *n_symbols - 1;
    sym->next = -1;
    sym->start = (uint32_t)start;
    sym->len = (uint32_t)len;
    sym->id = id;
    if (*n_symbols > 0) {
        ws->symbols[*n_symbols - 1].next = *n_symbols;
    }
    (*n_symbols)++;
}

/* Initial symbols of SentencePiece: one per UTF-8 character, and one per byte
 * that is not part of a valid character. A symbol without a piece keeps id -1
 * until emit_symbol falls back to bytes. */
static int32_t split_characters(const tq_tokenizer *tok, workspace *ws, size_t n_bytes)
{
    int32_t n_symbols = 0;
    for (size_t pos = 0; pos < n_bytes;) {
        int scanned = tq_utf8_scan((const unsigned char *)ws->buffer + pos, n_bytes - pos);
        size_t char_len = scanned > 0 ? (size_t)scanned : 1;
        append_symbol(ws, &n_symbols, pos, char_len, find_bpe_piece(tok, ws->buffer + pos, char_len));
        pos += char_len;
    }
    return n_symbols;
}

/* Initial symbols of ranked BPE, as Hugging Face tokenizers builds them: the
 * piece of each UTF-8 character (any token type); for a character without a
 * piece, one byte token per byte when byte fallback is on and every byte has
 * one; otherwise the unknown token, with consecutive unknown characters fused
 * into one symbol. A byte outside a valid character counts as a character
 * without a piece. Covers ws->buffer[start .. end). Returns the symbol count,
 * or -1 with err set when a character cannot be encoded at all. */
static int32_t split_ranked_symbols(const tq_tokenizer *tok, workspace *ws, size_t start, size_t end,
                                    tq_error *err)
{
    int32_t n_symbols = 0;
    int last_was_unknown = 0;
    for (size_t pos = start; pos < end;) {
        const unsigned char *at = (const unsigned char *)ws->buffer + pos;
        int scanned = tq_utf8_scan(at, end - pos);
        size_t char_len = scanned > 0 ? (size_t)scanned : 1;
        int32_t id = tq_tok_table_find(tok, tok->piece_table, tok->piece_mask, ws->buffer + pos, char_len);
        if (id >= 0) {
            append_symbol(ws, &n_symbols, pos, char_len, id);
            last_was_unknown = 0;
            pos += char_len;
            continue;
        }
        int all_bytes = tok->byte_fallback;
        for (size_t k = 0; k < char_len && all_bytes; k++) {
            all_bytes = tok->byte_ids[at[k]] >= 0;
        }
        if (all_bytes) {
            for (size_t k = 0; k < char_len; k++) {
                append_symbol(ws, &n_symbols, pos + k, 1, tok->byte_ids[at[k]]);
            }
            last_was_unknown = 0;
        } else if (tok->unk_id < 0) {
            tq_error_set(err, TQ_ERR_INVALID,
                         "encode: the character at byte %zu of a text fragment has no piece, no byte pieces and the "
                         "vocabulary has no unknown piece, so this vocabulary cannot encode the text",
                         pos);
            return -1;
        } else if (last_was_unknown) {
            ws->symbols[n_symbols - 1].len += (uint32_t)char_len;
        } else {
            append_symbol(ws, &n_symbols, pos, char_len, tok->unk_id);
            last_was_unknown = 1;
        }
        pos += char_len;
    }
    return n_symbols;
}

/* Apply queued merges until none is left: pop the best candidate, skip it when
 * an earlier merge changed either symbol, else merge and queue the candidates
 * with the new neighbors. */
static void merge_symbols(const tq_tokenizer *tok, workspace *ws)
{
    int ranked = tok->model == TQ_TOKENIZER_BPE;
    while (ws->heap_len > 0) {
        bigram top = heap_pop(ws);
        symbol *left = &ws->symbols[top.left];
        symbol *right = &ws->symbols[top.right];
        /* Both symbols only grow, so an unchanged total length means the same
         * pair is still adjacent. */
        if (left->len == 0 || right->len == 0 || left->next != top.right || left->len + right->len != top.len) {
            continue;
        }
        left->len += right->len;
        left->id = top.id;
        right->len = 0;
        left->next = right->next;
        if (right->next >= 0) {
            ws->symbols[right->next].prev = top.left;
        }
        if (ranked) {
            queue_ranked_pair(tok, ws, left->prev, top.left);
            queue_ranked_pair(tok, ws, top.left, left->next);
        } else {
            queue_bigram(tok, ws, left->prev, top.left);
            queue_bigram(tok, ws, top.left, left->next);
        }
    }
}

/* Emit the final symbols of the list headed by symbol 0. */
static tq_status emit_symbols(const tq_tokenizer *tok, const workspace *ws, int32_t n_symbols, id_vec *ids,
                              tq_error *err)
{
    /* Symbol 0 only ever absorbs its right neighbors, so it heads the list. */
    for (int32_t i = 0; i >= 0 && n_symbols > 0; i = ws->symbols[i].next) {
        const symbol *sym = &ws->symbols[i];
        tq_status status = emit_symbol(tok, sym->id, ws->buffer + sym->start, sym->len, ids, err);
        if (status != TQ_OK) {
            return status;
        }
    }
    return TQ_OK;
}

/* Ranked-BPE-encode the word ws->buffer[start .. end). keep_whole: emit the
 * word as one piece when the vocabulary has it, without merging. */
static tq_status encode_ranked_word(const tq_tokenizer *tok, workspace *ws, size_t start, size_t end, int keep_whole,
                                    id_vec *ids, tq_error *err)
{
    if (keep_whole) {
        int32_t whole = tq_tok_table_find(tok, tok->piece_table, tok->piece_mask, ws->buffer + start, end - start);
        if (whole >= 0) {
            return id_vec_push(ids, whole, err);
        }
    }
    int32_t n_symbols = split_ranked_symbols(tok, ws, start, end, err);
    if (n_symbols < 0) {
        return TQ_ERR_INVALID;
    }
    ws->heap_len = 0;
    for (int32_t i = 1; i < n_symbols; i++) {
        queue_ranked_pair(tok, ws, i - 1, i);
    }
    merge_symbols(tok, ws);
    return emit_symbols(tok, ws, n_symbols, ids, err);
}

/* BPE-encode text[0 .. len) that contains no whole-matched piece. */
static tq_status encode_fragment(const tq_tokenizer *tok, const char *text, size_t len, int add_prefix,
                                 workspace *ws, id_vec *ids, tq_error *err)
{
    if (len == 0 && !add_prefix) {
        return TQ_OK;
    }
    tq_status status = workspace_reserve(ws, len, err);
    if (status != TQ_OK) {
        return status;
    }
    size_t n_bytes = escape_spaces(text, len, add_prefix, ws);

    if (tok->model == TQ_TOKENIZER_SPM) {
        int32_t n_symbols = split_characters(tok, ws, n_bytes);
        ws->heap_len = 0;
        for (int32_t i = 1; i < n_symbols; i++) {
            queue_bigram(tok, ws, i - 1, i);
        }
        merge_symbols(tok, ws);
        return emit_symbols(tok, ws, n_symbols, ids, err);
    }

    if (tok->split_newlines == TQ_SPLIT_NONE) {
        return encode_ranked_word(tok, ws, 0, n_bytes, tok->ignore_merges, ids, err);
    }
    /* Alternate runs of newlines and runs of other bytes. A '\n' byte never
     * occurs inside a multi-byte UTF-8 character, so runs end at character
     * boundaries. */
    for (size_t start = 0; start < n_bytes && status == TQ_OK;) {
        int newline = ws->buffer[start] == '\n';
        size_t end = start;
        while (end < n_bytes && (ws->buffer[end] == '\n') == newline) {
            end++;
        }
        int keep_whole = tok->ignore_merges || (newline && tok->split_newlines == TQ_SPLIT_NEWLINES_WHOLE);
        status = encode_ranked_word(tok, ws, start, end, keep_whole, ids, err);
        start = end;
    }
    return status;
}

/* ------------------------------------------------ whole-matched pieces */

/* The id of the longest whole-matched piece that starts at text[0], or -1.
 * User-defined pieces always match, as in SentencePiece, llama.cpp and the
 * added tokens of Hugging Face tokenizers. Control and unknown pieces match
 * only when parse_special is set, as in llama.cpp. */
static int32_t match_special(const tq_tokenizer *tok, const char *text, size_t len, int parse_special,
                             size_t *match_len)
{
    unsigned char first = (unsigned char)text[0];
    for (size_t k = tok->special_len_start[first]; k < tok->special_len_start[first + 1]; k++) {
        size_t piece_len = tok->special_lens[k];
        if (piece_len > len) {
            continue;
        }
        int32_t id = tq_tok_table_find(tok, tok->special_table, tok->special_mask, text, piece_len);
        if (id >= 0 && (parse_special || tok->types[id] == TQ_TOKEN_USER_DEFINED)) {
            *match_len = piece_len;
            return id;
        }
    }
    return -1;
}

tq_status tq_tokenizer_encode(const tq_tokenizer *tok, const char *text, size_t len, int add_bos, int parse_special,
                              int32_t **ids, size_t *n_ids, tq_error *err)
{
    if (ids == NULL || n_ids == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "encode: ids and n_ids must not be NULL");
    }
    *ids = NULL;
    *n_ids = 0;
    if (text == NULL && len > 0) {
        return tq_error_set(err, TQ_ERR_INVALID, "encode: text is NULL but len is %zu", len);
    }
    int with_bos = add_bos < 0 ? tok->add_bos : add_bos;
    if (with_bos && tok->bos_id < 0) {
        return tq_error_set(err, TQ_ERR_INVALID, "encode: add_bos requested but this vocabulary has no BOS token");
    }

    id_vec out = {NULL, 0, 0};
    workspace ws;
    memset(&ws, 0, sizeof(ws));
    tq_status status = TQ_OK;
    if (with_bos) {
        status = id_vec_push(&out, tok->bos_id, err);
    }

    /* The prefix mark goes before the text only (SentencePiece's dummy prefix),
     * not after every special piece as llama.cpp does. */
    size_t fragment_start = 0;
    size_t pos = 0;
    while (status == TQ_OK && pos < len) {
        size_t match_len = 0;
        int32_t id = match_special(tok, text + pos, len - pos, parse_special, &match_len);
        if (id < 0) {
            pos++;
            continue;
        }
        int prefix = tok->add_space_prefix && fragment_start == 0 && pos > 0;
        status = encode_fragment(tok, text + fragment_start, pos - fragment_start, prefix, &ws, &out, err);
        if (status == TQ_OK) {
            status = id_vec_push(&out, id, err);
        }
        pos += match_len;
        fragment_start = pos;
    }
    if (status == TQ_OK && fragment_start < len) {
        int prefix = tok->add_space_prefix && fragment_start == 0;
        status = encode_fragment(tok, text + fragment_start, len - fragment_start, prefix, &ws, &out, err);
    }
    workspace_free(&ws);

    if (status != TQ_OK) {
        free(out.data);
        return status;
    }
    if (out.data == NULL) {
        /* An empty result still returns a pointer that free() accepts. */
        out.data = malloc(sizeof(int32_t));
        if (out.data == NULL) {
            return tq_error_set(err, TQ_ERR_NOMEM, "encode: out of memory");
        }
    }
    *ids = out.data;
    *n_ids = out.len;
    return TQ_OK;
}
