/* Merge rules of BPE with ranked merges (TQ_TOKENIZER_BPE): parsing, checking
 * against the vocabulary and a hash table from token pairs to (rank, merged id). */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

/* Mix the 64-bit pair key with the SplitMix64 finalizer, so that the low bits
 * that pick the slot depend on both ids. */
static uint64_t hash_pair(uint64_t pair)
{
    pair ^= pair >> 30;
    pair *= 0xBF58476D1CE4E5B9ULL;
    pair ^= pair >> 27;
    pair *= 0x94D049BB133111EBULL;
    pair ^= pair >> 31;
    return pair;
}

static uint64_t make_pair(int32_t left, int32_t right)
{
    return ((uint64_t)(uint32_t)left << 32) | (uint64_t)(uint32_t)right;
}

const tq_tok_merge_slot *tq_tok_find_merge(const tq_tokenizer *tok, int32_t left, int32_t right)
{
    if (tok->merge_table == NULL) {
        return NULL;
    }
    uint64_t pair = make_pair(left, right);
    size_t slot = (size_t)hash_pair(pair) & tok->merge_mask;
    for (;;) {
        const tq_tok_merge_slot *entry = &tok->merge_table[slot];
        if (entry->id < 0) {
            return NULL;
        }
        if (entry->pair == pair) {
            return entry;
        }
        slot = (slot + 1) & tok->merge_mask;
    }
}

/* Insert or overwrite the rule for (left, right), so a pair listed twice keeps
 * its last rank as in Hugging Face tokenizers (llama.cpp keeps the first). */
static void insert_merge(tq_tokenizer *tok, int32_t left, int32_t right, int32_t rank, int32_t id)
{
    uint64_t pair = make_pair(left, right);
    size_t slot = (size_t)hash_pair(pair) & tok->merge_mask;
    while (tok->merge_table[slot].id >= 0 && tok->merge_table[slot].pair != pair) {
        slot = (slot + 1) & tok->merge_mask;
    }
    tok->merge_table[slot].pair = pair;
    tok->merge_table[slot].rank = rank;
    tok->merge_table[slot].id = id;
}

/* Split the merge text s at the first space that leaves a vocabulary piece on
 * both sides. Vocabulary pieces write spaces as U+2581, so usually the text has
 * exactly one space. Returns 1 and the two ids, or 0 when no split works. */
static int split_merge_text(const tq_tokenizer *tok, const char *s, size_t len, int32_t *left, int32_t *right)
{
    for (size_t i = 1; i + 1 < len; i++) {
        if (s[i] != ' ') {
            continue;
        }
        int32_t a = tq_tokenizer_find(tok, s, i);
        int32_t b = a >= 0 ? tq_tokenizer_find(tok, s + i + 1, len - i - 1) : -1;
        if (a >= 0 && b >= 0) {
            *left = a;
            *right = b;
            return 1;
        }
    }
    return 0;
}

tq_status tq_tok_build_merges(tq_tokenizer *tok, const tq_tokenizer_spec *spec, tq_error *err)
{
    if (spec->n_merges < 0 || spec->n_merges > INT32_MAX) {
        return tq_error_set(err, TQ_ERR_INVALID, "tokenizer: n_merges=%lld must lie in [0, %d]",
                            (long long)spec->n_merges, (int)INT32_MAX);
    }
    size_t n = (size_t)spec->n_merges;
    if (n > 0 && spec->merge_ids == NULL && (spec->merge_texts == NULL || spec->merge_text_lens == NULL)) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "tokenizer: n_merges=%zu but neither merge_ids nor merge_texts is given", n);
    }

    size_t size = 16;
    while (size < 2 * n) {
        size *= 2;
    }
    tok->merge_table = malloc(size * sizeof(tq_tok_merge_slot));
    char *joined = malloc(2 * tok->max_piece_len + 1);
    if (tok->merge_table == NULL || joined == NULL) {
        free(joined);
        return tq_error_set(err, TQ_ERR_NOMEM, "tokenizer: out of memory for a table of %zu merges", n);
    }
    for (size_t i = 0; i < size; i++) {
        tok->merge_table[i].pair = 0;
        tok->merge_table[i].rank = 0;
        tok->merge_table[i].id = -1;
    }
    tok->merge_mask = size - 1;
    tok->n_merges = (int64_t)n;

    tq_status status = TQ_OK;
    for (size_t rank = 0; rank < n && status == TQ_OK; rank++) {
        int32_t left;
        int32_t right;
        if (spec->merge_ids != NULL) {
            left = spec->merge_ids[2 * rank];
            right = spec->merge_ids[2 * rank + 1];
            if (left < 0 || left >= tok->n_vocab || right < 0 || right >= tok->n_vocab) {
                status = tq_error_set(err, TQ_ERR_INVALID,
                                      "tokenizer: merge %zu is the pair (%d, %d), but ids must lie in [0, %d)", rank,
                                      (int)left, (int)right, (int)tok->n_vocab);
                break;
            }
        } else {
            const char *text = spec->merge_texts[rank];
            size_t text_len = (size_t)spec->merge_text_lens[rank];
            if (text == NULL || !split_merge_text(tok, text, text_len, &left, &right)) {
                status = tq_error_set(err, TQ_ERR_INVALID,
                                      "tokenizer: merge %zu ('%.*s') is not two vocabulary pieces separated by a space",
                                      rank, (int)(text_len < 80 ? text_len : 80), text ? text : "");
                break;
            }
        }

        size_t left_len;
        size_t right_len;
        const char *left_text = tq_tok_piece_text(tok, left, &left_len);
        const char *right_text = tq_tok_piece_text(tok, right, &right_len);
        memcpy(joined, left_text, left_len);
        memcpy(joined + left_len, right_text, right_len);
        int32_t merged = tq_tokenizer_find(tok, joined, left_len + right_len);
        if (merged < 0) {
            status = tq_error_set(err, TQ_ERR_INVALID,
                                  "tokenizer: merge %zu joins pieces %d and %d into '%.*s', which is not in the "
                                  "vocabulary",
                                  rank, (int)left, (int)right, (int)((left_len + right_len) < 80 ? left_len + right_len : 80),
                                  joined);
            break;
        }
        insert_merge(tok, left, right, (int32_t)rank, merged);
    }
    free(joined);
    return status;
}
