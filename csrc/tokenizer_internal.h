/* Internal layout of tq_tokenizer, shared by tokenizer.c (vocabulary and
 * decoding), tokenizer_merges.c (merge rules of ranked BPE),
 * tokenizer_encode.c (both BPE kinds) and tokenizer_stream.c (streaming
 * decoder). Not part of the public API. */
#ifndef TQ_TOKENIZER_INTERNAL_H
#define TQ_TOKENIZER_INTERNAL_H

#include "tokenizer.h"

/* U+2581 LOWER ONE EIGHTH BLOCK, which SentencePiece writes in place of a space. */
#define TQ_SPACE_MARK "\xE2\x96\x81"
#define TQ_SPACE_MARK_LEN 3

/* One slot of the open-addressing piece tables: the upper 32 bits of the
 * text's hash, and the piece id or -1 for an empty slot. */
typedef struct {
    uint32_t tag;
    int32_t id;
} tq_tok_slot;

/* One slot of the merge table: the pair (left id << 32 | right id), the rank
 * of the merge and the id of the merged piece, or -1 for an empty slot. */
typedef struct {
    uint64_t pair;
    int32_t rank;
    int32_t id;
} tq_tok_merge_slot;

struct tq_tokenizer {
    tq_tokenizer_model model;
    int32_t n_vocab;
    int32_t bos_id, eos_id, unk_id, pad_id;
    int add_bos;
    int add_space_prefix;

    /* Piece texts as stored in the vocabulary, concatenated. Piece i spans
     * text[text_offsets[i] .. text_offsets[i + 1]). */
    char *text;
    size_t *text_offsets;
    float *scores;
    int32_t *types;

    /* The bytes each piece decodes to (see tq_tokenizer_piece_bytes), with
     * control and unknown pieces empty. */
    char *decoded;
    size_t *decoded_offsets;
    size_t max_piece_len; /* maximum piece text length in bytes */

    /* Open-addressing hash table of every non-empty piece text, with linear
     * probing. Its size is a power of two and at least twice n_vocab. */
    tq_tok_slot *piece_table;
    size_t piece_mask;

    /* The pieces matched whole before BPE (user-defined, control, unknown), grouped
     * by first byte: for byte b, special_lens[special_len_start[b] ..
     * special_len_start[b + 1]) lists their distinct lengths, longest first. */
    tq_tok_slot *special_table;
    size_t special_mask;
    size_t special_len_start[257];
    uint32_t *special_lens;

    int32_t byte_ids[256]; /* id of <0xXX> for each byte, or -1 */

    /* TQ_TOKENIZER_BPE only: open-addressing hash table of the merge rules with
     * linear probing, sized like piece_table. */
    tq_tok_merge_slot *merge_table;
    size_t merge_mask;
    int64_t n_merges;
    int byte_fallback;
    int ignore_merges;
    int split_newlines; /* TQ_SPLIT_* */
};

/* The piece text of id as stored in the vocabulary (not NUL-terminated). */
const char *tq_tok_piece_text(const tq_tokenizer *tok, int32_t id, size_t *len);

/* The bytes id decodes to (see tq_tokenizer_piece_bytes), pointing into tok. */
const char *tq_tok_piece_decoded(const tq_tokenizer *tok, int32_t id, int render_special, size_t *len);

/* Look up s in one of the hash tables of tok. Returns the piece id, or -1. */
int32_t tq_tok_table_find(const tq_tokenizer *tok, const tq_tok_slot *table, size_t mask, const char *s, size_t len);

/* Build tok->merge_table from the merges of spec (tokenizer_merges.c). The
 * piece table must exist already. */
tq_status tq_tok_build_merges(tq_tokenizer *tok, const tq_tokenizer_spec *spec, tq_error *err);

/* Look up the merge of the pair (left, right). Returns the slot, or NULL when
 * the pair has no merge rule. */
const tq_tok_merge_slot *tq_tok_find_merge(const tq_tokenizer *tok, int32_t left, int32_t right);

#endif /* TQ_TOKENIZER_INTERNAL_H */
