/* Gemma 3 and Gemma 4 text models: configuration and weights from a GGUF file,
 * and the forward pass (batched prefill and one-token decode) run in a context.
 *
 * The split follows llama.cpp's llama_model / llama_context: a tq_model contains
 * what is read from the file (mapping, config, weights, tokenizer) and is not
 * modified after tq_model_create(), so contexts on different threads may share
 * it. A tq_context contains the state of one sequence (KV cache, activation
 * buffers, thread count); calls on one context must not run concurrently, but
 * different contexts of the same model may run in parallel.
 *
 * Ownership: tq_model_create() opens the GGUF file itself and keeps it mapped;
 * the weights point into that mapping and the tokenizer is built from its
 * metadata. It also creates one default context, used by the tq_model_eval
 * family of calls, so a model still works as a single sequence. Everything is
 * released by tq_model_free(). A context from tq_context_create() borrows its
 * model, which must outlive it, and is released by tq_context_free().
 */
#ifndef TQ_MODEL_H
#define TQ_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "cpu.h"
#include "gguf.h"
#include "kv_cache.h"
#include "tokenizer.h"
#include "tq_common.h"
#include "weights.h"

typedef struct {
    char architecture[32];  /* general.architecture, "gemma3" or "gemma4" */
    int n_layers;           /* gemma3.block_count */
    int hidden;             /* gemma3.embedding_length */
    int ffn;                /* gemma3.feed_forward_length */
    int n_heads;            /* gemma3.attention.head_count */
    int n_kv_heads;         /* gemma3.attention.head_count_kv */
    int head_dim;           /* gemma3.attention.key_length (= value_length) */
    int n_vocab;            /* rows of token_embd */
    int64_t context_length; /* gemma3.context_length */
    int64_t sliding_window; /* gemma3.attention.sliding_window */
    int sliding_window_pattern; /* layer i is global when i % pattern == pattern - 1 */
    float rms_eps;          /* gemma3.attention.layer_norm_rms_epsilon */
    float rope_base_global; /* gemma3.rope.freq_base */
    float rope_base_local;  /* sliding layers */
    float rope_scale_global; /* linear RoPE scaling factor of global layers (1: none) */
    float query_pre_attn_scalar; /* queries are multiplied by its inverse square root */
    float embedding_scale;  /* sqrt(hidden), applied to embedding rows */

    /* Gemma 4 only; a Gemma 3 model has the value in brackets. For Gemma 4, head_dim and
     * ffn above are the maxima over layers (global layers' head size, widest FFN). */
    int head_dim_local;       /* head size of sliding layers [head_dim] */
    int rope_dims_global;     /* dimensions RoPE rotates on global layers [head_dim] */
    int n_kv_shared_layers;   /* last layers that reuse earlier layers' K/V [0] */
    int per_layer_input;      /* width of the per-layer embeddings [0: none] */
    float final_logit_softcap; /* logits become cap * tanh(logits / cap) [0: none] */
    const uint8_t *layer_is_global; /* n_layers flags, owned by the model [NULL: pattern] */
} tq_model_config;

typedef struct tq_model tq_model;
typedef struct tq_context tq_context;

/* How many logits rows tq_model_eval writes. */
typedef enum {
    TQ_LOGITS_NONE = 0, /* none (prompt prefill without sampling) */
    TQ_LOGITS_LAST = 1, /* one row: the last token's */
    TQ_LOGITS_ALL = 2   /* one row per token */
} tq_logits_mode;

/* Placeholder tokens of audio and image inputs. Their positions take precomputed embedding rows
 * (tq_context_eval_soft) in place of embedding-table rows, and audio positions store their keys
 * and values with the audio codebook. */
typedef struct {
    int32_t audio_token_id; /* -1: none */
    int32_t image_token_id; /* -1: none */
    /* NULL, or the audio codebook of tq_kv_cache_config (audio_codebook_count entries), used by
     * every context of the model. */
    const float *audio_codebook;
    size_t audio_codebook_count;
} tq_placeholder_params;
/* Values of think_token_id in tq_model_params and tq_context_params. */
#define TQ_THINK_TOKEN_DEFAULT 0 /* the model's own: <|think|> (98) for Gemma 4, none for Gemma 3 */
#define TQ_THINK_TOKEN_NONE (-1) /* no think token */

/* Adaptive QJL residual precision of the +qjl cache types (tq3+qjl, tq4+qjl, polar+qjl).
 * Thinking is on at a position when think_token_id occurs at or before it, or when the
 * position lies inside a thought channel: from Gemma 4's <|channel> (100) up to, not
 * including, its <channel|> (101). Positions where thinking is on store their keys and
 * values with thinking_qjl_bits, the others with qjl_bits. Zero fields take the defaults
 * qjl_bits 1, thinking_qjl_bits 2 and think_token_id TQ_THINK_TOKEN_DEFAULT; Gemma 3 has no
 * channel tokens and no think token unless one is given. */
typedef struct {
    int qjl_bits;
    int thinking_qjl_bits;
    int64_t think_token_id; /* TQ_THINK_TOKEN_DEFAULT, TQ_THINK_TOKEN_NONE or a token id >= 1 */
} tq_qjl_precision;

typedef struct {
    const char *path;
    int threads;       /* OpenMP threads per call; 0 keeps the OpenMP default */
    int64_t n_ctx;     /* positions the cache holds; 0 for the model's context_length */
    int64_t n_batch;   /* micro-batch size of prefill; 0 for the default of 512 */
    tq_kv_type type_k;
    tq_kv_type type_v;
    /* Quality controls of the codec cache types (tq3, ...; see kv_cache.h). */
    int64_t kv_recent_f16;     /* newest positions read from an f16 copy; 0 for none */
    int64_t kv_sink_f16;       /* first positions of the sequence read from an f16 copy; 0 for none */
    const int *kv_f16_layers;  /* layers stored in f16, negative indices count from the end */
    int n_kv_f16_layers;
    int kv_balance_keys; /* 1: balance the keys of codec cache types (see key_balance_tables) */
    int kv_norm_correction; /* 1: MSE codec types store corrected norms (tq_kv_cache_config.norm_correction) */
    int kv_recent_q8_0; /* 1: the kv_recent_f16 copies are q8_0 rows (tq_kv_cache_config.recent_q8_0) */
    tq_qjl_precision qjl_precision;
    int exact_matmul;  /* 1: keep activations in float32 in every weight product (slower; for
                        * comparisons with float references), 0: quantize them as llama.cpp does */
    /* Weights of a Hugging Face model directory (hf_weights.h) to use in place of the GGUF
     * file at path; NULL reads path. The model takes ownership: tq_model_create frees them
     * when it fails, tq_model_free otherwise. */
    struct tq_hf_weights *hf_weights;
    /* Tokenizer to attach in place of one built from the GGUF metadata; NULL builds it
     * from the metadata when present. Borrowed: it must outlive the model. */
    const tq_tokenizer *tokenizer;
    /* Placeholder tokens; NULL for none (copied by tq_model_create). */
    const tq_placeholder_params *placeholders;
} tq_model_params;

/* Settings of one context. */
typedef struct {
    int threads;     /* OpenMP threads per call; 0 keeps the OpenMP default */
    int64_t n_ctx;   /* positions the cache can store; 0 for the model's context_length */
    int64_t n_batch; /* micro-batch size of prefill; 0 for the default of 512 */
    tq_kv_type type_k;
    tq_kv_type type_v;
    int64_t kv_recent_f16;    /* as in tq_model_params */
    int64_t kv_sink_f16;      /* as in tq_model_params */
    const int *kv_f16_layers; /* as in tq_model_params; copied by tq_context_create */
    int n_kv_f16_layers;
    int kv_balance_keys; /* as in tq_model_params */
    int kv_norm_correction; /* as in tq_model_params */
    int kv_recent_q8_0;     /* as in tq_model_params */
    tq_qjl_precision qjl_precision; /* as in tq_model_params */
} tq_context_params;

/* Open path and build the model. A file without tokenizer metadata gives a model
 * without tokenizer (tq_model_tokenizer returns NULL) that runs token ids only.
 * Errors: TQ_ERR_IO (missing file), TQ_ERR_FORMAT (not GGUF, corrupt, a tensor
 * with the wrong shape), TQ_ERR_UNSUPPORTED (architecture other than gemma3 and
 * gemma4, tensor type without kernels), TQ_ERR_INVALID (threads or n_ctx
 * negative), TQ_ERR_NOMEM. */
tq_status tq_model_create(const tq_model_params *params, tq_model **out, tq_error *err);
void tq_model_free(tq_model *model);

const tq_model_config *tq_model_get_config(const tq_model *model);

/* Returns 1 when layer uses full attention and the global RoPE base. */
int tq_model_layer_is_global(const tq_model_config *config, int layer);
const tq_tokenizer *tq_model_tokenizer(const tq_model *model);
const tq_gguf *tq_model_gguf(const tq_model *model);
tq_kv_cache *tq_model_kv_cache(tq_model *model);
int64_t tq_model_n_ctx(const tq_model *model);
int64_t tq_model_n_past(const tq_model *model);
int tq_model_threads(const tq_model *model);
tq_isa tq_model_isa(const tq_model *model);

/* Run tokens[0..n) at positions n_past .. n_past + n - 1 of the default
 * context and append their keys and values to its cache. logits receives n_vocab floats per row requested by
 * mode (n rows for TQ_LOGITS_ALL, 1 for TQ_LOGITS_LAST, may be NULL for NONE).
 * Errors: TQ_ERR_INVALID (n < 1 or a token id outside the vocabulary, nothing
 * is run), TQ_ERR_RANGE (n_past + n > n_ctx, nothing is run). */
tq_status tq_model_eval(tq_model *model, const int32_t *tokens, int64_t n, tq_logits_mode mode, float *logits,
                        tq_error *err);

/* Forget positions >= n_past; see tq_kv_cache_truncate for the limits. */
tq_status tq_model_truncate(tq_model *model, int64_t n_past, tq_error *err);

/* The default context that tq_model_eval and tq_model_truncate use; owned by the model. */
tq_context *tq_model_context(tq_model *model);

/* Settings the default context was created with (kv_f16_layers points into the
 * model and stays valid until tq_model_free). A starting point for new contexts. */
tq_context_params tq_model_context_params(const tq_model *model);

/* Create a context of model with its own KV cache and buffers. Errors:
 * TQ_ERR_INVALID (negative threads, n_ctx or n_batch, unknown cache type, a
 * kv_f16_layers entry outside the model), TQ_ERR_NOMEM. */
tq_status tq_context_create(const tq_model *model, const tq_context_params *params, tq_context **out,
                            tq_error *err);
void tq_context_free(tq_context *context);

const tq_model *tq_context_model(const tq_context *context);
tq_kv_cache *tq_context_kv_cache(tq_context *context);
int64_t tq_context_n_ctx(const tq_context *context);
int64_t tq_context_n_past(const tq_context *context);
int tq_context_threads(const tq_context *context);

/* Change the OpenMP threads of the next calls on context (0: OpenMP default), for
 * example to share the cores between the contexts that are busy. Not safe while
 * another thread runs a call on the same context. Errors: TQ_ERR_INVALID (negative). */
tq_status tq_context_set_threads(tq_context *context, int threads, tq_error *err);

/* tq_model_eval and tq_model_truncate on a given context. */
tq_status tq_context_eval(tq_context *context, const int32_t *tokens, int64_t n, tq_logits_mode mode, float *logits,
                          tq_error *err);
tq_status tq_context_truncate(tq_context *context, int64_t n_past, tq_error *err);

/* Speculative verification of a draft tree in one forward pass. Node 0 (the root) is the
 * token that follows the n_past cached positions; node i > 0 has parent parents[i] < i
 * (parents[0] is -1) and sits at position n_past + depth(i). Each node attends to the cached
 * prefix and to its ancestors and itself only. logits gets n rows of n_vocab floats, one per
 * node. hidden (optional, NULL to skip) gets the output-normed final hidden states, n rows of
 * n_embd floats. The nodes' K/V rows are stored past n_past but not counted: call
 * tq_context_accept_path to keep a path, or any eval or truncate to drop them all.
 * n <= 32 nodes, depth <= 4, n_past + n <= n_ctx. Gemma 3 only (TQ_ERR_UNSUPPORTED else). With a
 * q8_0 recent window (kv_recent_q8_0) and an f16 sink, a tree of more than one node needs
 * n_past + 1 >= kv_sink_f16 (TQ_ERR_INVALID else; see tq_kv_cache_exact_moves_from). */
tq_status tq_context_eval_tree(tq_context *context, const int32_t *tokens, const int32_t *parents, int64_t n,
                               float *logits, float *hidden, tq_error *err);

/* Keep the nodes path[0] = 0, path[1], .. path[n_path - 1] of the last tq_context_eval_tree,
 * each the parent of the next: their rows move to positions n_past .. n_past + n_path - 1,
 * which then count as stored; the other nodes' rows are dropped. */
tq_status tq_context_accept_path(tq_context *context, const int32_t *path, int64_t n_path, tq_error *err);

/* tq_context_eval that also writes the final hidden states after the output norm (the
 * LM head's input), hidden floats per row, into hidden when it is not NULL: n rows for
 * TQ_LOGITS_ALL and TQ_LOGITS_NONE, the last token's row for TQ_LOGITS_LAST. Errors as
 * tq_context_eval. */
tq_status tq_context_eval_hidden(tq_context *context, const int32_t *tokens, int64_t n, tq_logits_mode mode,
                                 float *logits, float *hidden, tq_error *err);

/* tq_context_eval_hidden where the positions of audio and image placeholder tokens (see
 * tq_placeholder_params) take their input embedding from soft_embeddings. It has n_soft rows of
 * hidden floats, one per placeholder position in order. They are used as they are, while text
 * embedding rows are multiplied by sqrt(hidden). Gemma 4's per-layer embeddings of those
 * positions look up the pad token's row (id 0), as transformers' Gemma4Model does. Errors as
 * tq_context_eval, and TQ_ERR_INVALID (nothing is run) when n_soft differs from the count of
 * placeholder positions, also when the tokens have placeholders and soft_embeddings is NULL.
 * NOTE: attention stays causal at image positions, while transformers lets the image tokens of
 * one image attend to each other when the model configures it (Gemma 3 token_type_ids). */
tq_status tq_context_eval_soft(tq_context *context, const int32_t *tokens, int64_t n, const float *soft_embeddings,
                               int64_t n_soft, tq_logits_mode mode, float *logits, float *hidden, tq_error *err);

/* 1 when token is the model's audio or image placeholder token. */
int tq_model_is_placeholder(const tq_model *model, int32_t token);

/* Placeholder settings of the model (audio_token_id and image_token_id are -1 without them). */
const tq_placeholder_params *tq_model_placeholders(const tq_model *model);

#endif /* TQ_MODEL_H */
