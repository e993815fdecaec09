/* Tokenizer built from a vocabulary (as stored in GGUF metadata tokenizer.ggml.*
 * or in a Hugging Face tokenizer.json): encode text to token ids, decode ids to
 * bytes, and a streaming decoder that only releases complete UTF-8 characters.
 * Two model kinds share the vocabulary, the special-token handling and the
 * decoders: SentencePiece BPE driven by piece scores (Gemma 3) and BPE with
 * ranked merges (Gemma 4).
 *
 * Ownership: tq_tokenizer_create copies everything it needs from the spec; the
 * tokenizer is read-only afterwards and may be shared between threads.
 */
#ifndef TQ_TOKENIZER_H
#define TQ_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "tq_common.h"

/* Token types of SentencePiece, as stored in tokenizer.ggml.token_type. */
enum {
    TQ_TOKEN_NORMAL = 1,
    TQ_TOKEN_UNKNOWN = 2,
    TQ_TOKEN_CONTROL = 3,
    TQ_TOKEN_USER_DEFINED = 4,
    TQ_TOKEN_UNUSED = 5,
    TQ_TOKEN_BYTE = 6
};

/* How encoding merges symbols. */
typedef enum {
    /* SentencePiece BPE: merge the adjacent pair whose concatenation is a
     * vocabulary piece with the highest score (GGUF tokenizer.ggml.model "llama"). */
    TQ_TOKENIZER_SPM = 0,
    /* BPE with ranked merges: merge the adjacent pair of tokens that appears
     * earliest in the merge list, as Hugging Face tokenizers' BPE model does
     * (GGUF tokenizer.ggml.model "gemma4"). */
    TQ_TOKENIZER_BPE = 1
} tq_tokenizer_model;

/* Values of tq_tokenizer_spec.split_newlines. */
enum { TQ_SPLIT_NONE = 0, TQ_SPLIT_NEWLINES = 1, TQ_SPLIT_NEWLINES_WHOLE = 2 };

typedef struct {
    tq_tokenizer_model model; /* 0 (the value of a zeroed spec) is TQ_TOKENIZER_SPM */
    int32_t n_vocab;
    const char *const *pieces;   /* n_vocab UTF-8 strings, not NUL-terminated */
    const uint64_t *piece_lens;  /* their lengths in bytes */
    const float *scores;         /* n_vocab scores, or NULL (all 0) */
    const int32_t *types;        /* n_vocab token types, or NULL (all normal) */
    int32_t bos_id, eos_id, unk_id, pad_id; /* -1 when absent */
    int add_bos;                 /* prepend BOS in tq_tokenizer_encode when its add_bos argument is -1 */
    int add_space_prefix;        /* prepend U+2581 to the text (off for Gemma) */

    /* TQ_TOKENIZER_BPE only. The merges in rank order (rank 0 is applied
     * first), given either as n_merges (left id, right id) pairs in merge_ids or
     * as n_merges texts "LEFT RIGHT" in merge_texts. A text splits at the first
     * space that leaves a vocabulary piece on both sides. The concatenation of
     * both pieces must also be a vocabulary piece. A pair listed twice keeps its
     * last rank, as in Hugging Face tokenizers. */
    int64_t n_merges;
    const int32_t *merge_ids;          /* 2 * n_merges ids, or NULL */
    const char *const *merge_texts;    /* n_merges UTF-8 strings, not NUL-terminated, or NULL */
    const uint64_t *merge_text_lens;   /* their lengths in bytes */
    /* Characters without a piece become one <0xXX> byte token per UTF-8 byte
     * (when every such byte piece exists); otherwise consecutive ones become a
     * single unknown token. SentencePiece vocabularies always fall back to bytes. */
    int byte_fallback;
    /* A fragment that is a vocabulary piece as a whole becomes that piece
     * without merging (the ignore_merges option of Hugging Face BPE). */
    int ignore_merges;
    /* How a fragment splits into words that are merged separately.
     * TQ_SPLIT_NONE merges the whole fragment. TQ_SPLIT_NEWLINES splits it
     * into runs of '\n' and runs of other characters, like a Hugging Face
     * Split pre-tokenizer on newline runs. TQ_SPLIT_NEWLINES_WHOLE splits the
     * same way and keeps a newline run that is a vocabulary piece whole, as
     * llama.cpp's "gemma4" tokenizer does. */
    int split_newlines;
} tq_tokenizer_spec;

typedef struct tq_tokenizer tq_tokenizer;

tq_status tq_tokenizer_create(const tq_tokenizer_spec *spec, tq_tokenizer **out, tq_error *err);
void tq_tokenizer_free(tq_tokenizer *tok);

/* Also declared in gguf.h. C11 allows repeating the typedef, so this header
 * does not need the GGUF reader. */
typedef struct tq_gguf tq_gguf;

/* Build a tokenizer from the tokenizer.ggml.* metadata of an open GGUF file
 * (implemented in tokenizer_gguf.c): model ("llama" for SentencePiece,
 * "gemma4" for BPE with ranked merges, else TQ_ERR_UNSUPPORTED), tokens,
 * scores, token_type, merges (required for "gemma4"),
 * bos/eos/unknown/padding_token_id, add_bos_token (default true) and
 * add_space_prefix (default true for "llama", false for "gemma4"; llama.cpp
 * uses the same defaults). "gemma4" text splits at newline runs as
 * TQ_SPLIT_NEWLINES_WHOLE describes, as in llama.cpp. Array lengths must
 * equal the token count and ids must lie inside the vocabulary, else
 * TQ_ERR_FORMAT. A merge that does not name vocabulary pieces is
 * TQ_ERR_INVALID. The tokenizer copies what it needs, so gguf may be closed
 * afterwards. */
tq_status tq_tokenizer_create_from_gguf(const tq_gguf *gguf, tq_tokenizer **out, tq_error *err);

int32_t tq_tokenizer_n_vocab(const tq_tokenizer *tok);
tq_tokenizer_model tq_tokenizer_model_kind(const tq_tokenizer *tok);
/* Number of merge rules (0 for TQ_TOKENIZER_SPM). */
int64_t tq_tokenizer_n_merges(const tq_tokenizer *tok);
int32_t tq_tokenizer_bos(const tq_tokenizer *tok);
int32_t tq_tokenizer_eos(const tq_tokenizer *tok);
int32_t tq_tokenizer_unk(const tq_tokenizer *tok);
int32_t tq_tokenizer_pad(const tq_tokenizer *tok);
/* Whether tq_tokenizer_encode adds BOS when add_bos is -1. */
int tq_tokenizer_add_bos(const tq_tokenizer *tok);
/* Token type of id (TQ_TOKEN_*), or -1 for an id outside the vocabulary. */
int32_t tq_tokenizer_token_type(const tq_tokenizer *tok, int32_t id);
/* Score of id, or 0 for an id outside the vocabulary. */
float tq_tokenizer_score(const tq_tokenizer *tok, int32_t id);
/* Length in bytes of the longest piece text. */
size_t tq_tokenizer_max_piece_len(const tq_tokenizer *tok);

/* Look up a piece by its exact text; -1 when absent. */
int32_t tq_tokenizer_find(const tq_tokenizer *tok, const char *piece, size_t len);

/* Encode len bytes of text. add_bos: 1 yes, 0 no, -1 the vocabulary's default.
 * parse_special: when 1, control and unknown pieces (such as "<start_of_turn>"
 * and "<unk>") in the text map to their ids. When 0, they are tokenized as plain
 * text. User-defined pieces (Gemma's runs of
 * spaces, tabs and newlines, and HTML tags) map to their ids in both cases, as
 * in SentencePiece, llama.cpp and Hugging Face tokenizers. On success *ids is
 * malloc'ed (free with free()) and contains *n_ids ids. Invalid UTF-8 bytes fall
 * back to byte tokens. */
tq_status tq_tokenizer_encode(const tq_tokenizer *tok, const char *text, size_t len, int add_bos, int parse_special,
                              int32_t **ids, size_t *n_ids, tq_error *err);

/* The bytes a token stands for when decoding: U+2581 becomes a space, byte tokens
 * <0xXX> become that byte, control tokens become "" unless render_special is 1.
 * Unknown and unused tokens decode like control tokens.
 * Writes at most cap bytes to out and returns the full length (snprintf-like), or
 * -1 for an id outside the vocabulary. */
int64_t tq_tokenizer_piece_bytes(const tq_tokenizer *tok, int32_t id, int render_special, char *out, size_t cap);

/* Copy the piece text of id, exactly as stored in the vocabulary, to out. Like
 * tq_tokenizer_piece_bytes, writes at most cap bytes and returns the full
 * length, or -1 for an id outside the vocabulary. */
int64_t tq_tokenizer_piece_text(const tq_tokenizer *tok, int32_t id, char *out, size_t cap);

/* Decode n_ids ids into the concatenation of their piece bytes. The result may
 * hold invalid UTF-8 (for example half of a character made of byte tokens).
 * On success *out is malloc'ed, NUL-terminated (free with free()) and contains
 * *out_len bytes. An id outside the vocabulary is TQ_ERR_INVALID. */
tq_status tq_tokenizer_decode(const tq_tokenizer *tok, const int32_t *ids, size_t n_ids, int render_special,
                              char **out, size_t *out_len, tq_error *err);

/* Streaming decoder: feed ids one at a time; text comes out only in whole UTF-8
 * characters. Invalid sequences come out as U+FFFD once they are known invalid. */
typedef struct {
    unsigned char pending[8];
    size_t n_pending;
} tq_detok_stream;

void tq_detok_stream_init(tq_detok_stream *stream);
/* Append the complete characters released by id to out (cap bytes); *out_len gets
 * the byte count. Fails with TQ_ERR_INVALID for an id outside the vocabulary, and
 * with TQ_ERR_RANGE when out is too small, leaving the stream unchanged in both
 * cases. 64 bytes plus the longest piece suffice when every piece is valid UTF-8;
 * 3 * (tq_tokenizer_max_piece_len() + 3) bytes always suffice. */
tq_status tq_detok_stream_push(const tq_tokenizer *tok, tq_detok_stream *stream, int32_t id, int render_special,
                               char *out, size_t cap, size_t *out_len, tq_error *err);
/* Release whatever is pending at the end of generation (incomplete bytes as one
 * U+FFFD, so at most 3 bytes) and reset the stream. */
tq_status tq_detok_stream_flush(tq_detok_stream *stream, char *out, size_t cap, size_t *out_len, tq_error *err);

#endif /* TQ_TOKENIZER_H */
