/* Definitions of tq_model and tq_context, shared by model.c (creation),
 * model_forward.c (forward pass) and model_gemma4.c (Gemma 4). Not part of the
 * public C API. */
#ifndef TQ_MODEL_INTERNAL_H
#define TQ_MODEL_INTERNAL_H

#include "model.h"

/* Weights of one decoder layer; matrices and norms point into the GGUF mapping.
 * Norm weights are used as stored: llama.cpp's converter already folded Gemma's
 * (1 + w) into them. */
typedef struct {
    const float *attn_norm;
    tq_weight attn_q, attn_k, attn_v;
    const float *attn_q_norm, *attn_k_norm; /* head_dim each, shared by all heads */
    tq_weight attn_output;
    const float *post_attention_norm;
    const float *ffn_norm;
    tq_weight ffn_gate, ffn_up, ffn_down;
    const float *post_ffw_norm;
} tq_layer_weights;

/* Activations of one micro-batch, n_batch rows each, allocated once. */
typedef struct {
    float *x;          /* residual stream [n_batch][hidden] */
    float *x_norm;     /* normalized input of a projection [n_batch][hidden] */
    float *q;          /* [n_batch][n_heads * head_dim] */
    float *k, *v;      /* [n_batch][n_kv_heads * head_dim] */
    float *attention;  /* attention output [n_batch][n_heads * head_dim] */
    float *projection; /* attention or FFN output [n_batch][hidden] */
    float *gate, *up;  /* [n_batch][ffn] */
    float *rope_cos_local, *rope_sin_local;   /* [n_batch][head_dim / 2] */
    float *rope_cos_global, *rope_sin_global; /* [n_batch][head_dim / 2] */
    float *inv_freq_local, *inv_freq_global;  /* [head_dim / 2] */
    uint8_t *attention_scratch; /* per-thread scratch of tq_kv_cache_attend_range */
    float *attention_partials;  /* partial softmax sums of every attention task */
    size_t attention_scratch_stride;
    int attention_scratch_threads;
} tq_forward_buffers;

/* Positions a Gemma 3 layer writes into the KV cache before their queries attend. Prefill
 * runs its weight products on micro-batches of n_batch tokens but writes and attends in
 * groups of at most this many. The rings of sliding-window layers and of the recent f16
 * window then need room for only this many new positions beside the ones they keep. A
 * smaller group therefore makes the cache smaller. With 32, a sliding layer of Gemma 3 keeps
 * 544 positions, and a 32-position f16 window a ring of 64. Attention costs the same per query in
 * any group size. Gemma 4 layers write the whole micro-batch (see tq_context_create). */
/* NOTE: key balancing takes a layer's key mean from its first write, so a Gemma 3 prefill now
 * sets it from at most 32 positions, not TQ_KV_MEAN_POSITIONS. The current default's quality
 * in docs/benchmarks.md was measured that way, but a longer mean was not compared with it. */
#define TQ_ATTENTION_BATCH 32

/* Limits of a draft tree verified by tq_context_eval_tree: nodes per pass and depth below
 * the root. A tree's rows share the rings above, so it has at most TQ_ATTENTION_BATCH nodes.
 * Medusa-style trees for CPUs have a few to tens of nodes and one level per head. */
#define TQ_TREE_MAX_NODES 32
#define TQ_TREE_MAX_DEPTH 4
_Static_assert(TQ_TREE_MAX_NODES <= TQ_ATTENTION_BATCH, "a draft tree must fit in the rings of one attention group");
_Static_assert(TQ_TREE_MAX_NODES <= TQ_KV_SINK_MOVE_ROOM, "an accepted path must find its f16 rows for the sink");

/* A decoding query scores its newest TQ_ATTENTION_ROW_PARTS positions one at a time, each
 * as its own partial softmax, and the older ones in ranges. A draft node reads its ancestors
 * there, so it computes exactly the partials that decoding the same path would: quantized
 * activations turn the last-bit differences of another summation order into different
 * tokens, and speculative output must equal plain greedy output token for token. */
#define TQ_ATTENTION_ROW_PARTS (TQ_TREE_MAX_DEPTH + 1)

/* A draft tree during its forward pass: node i sits at depth[i] below the root (node 0, depth
 * 0) and has parent[i] < i (-1 for the root). */
typedef struct {
    const int32_t *parent;
    const int32_t *depth;
} tq_tree;

struct tq_model {
    tq_model_config config;
    tq_gguf *gguf; /* the GGUF file, or the view of hf_weights */
    struct tq_hf_weights *hf_weights; /* weights of a Hugging Face directory; NULL for GGUF */
    tq_tokenizer *tokenizer;
    int owns_tokenizer; /* 0 when tokenizer is the caller's (tq_model_params.tokenizer) */
    tq_weight token_embd;
    tq_weight lm_head; /* token_embd unless the file has output.weight */
    const float *output_norm;
    tq_layer_weights *layers;
    int64_t *layer_window; /* sliding window per layer, 0 for global layers */
    tq_isa isa;
    int exact_matmul; /* 1: float activations in every product (tq_matmul_exact) */
    tq_context_params context_params; /* settings of the default context */
    int *kv_f16_layers;               /* owned copy behind context_params.kv_f16_layers */
    tq_context *context;              /* default context of tq_model_eval */
    struct tq_gemma4 *gemma4;         /* Gemma 4 weights and tables; NULL for Gemma 3 */
    tq_placeholder_params placeholders; /* audio_codebook points to the model's own copy */
    float *audio_codebook;              /* owned copy behind placeholders.audio_codebook */
    /* Channel orders of the split KV types (tq_kv_cache_config.channel_order_k and _v), derived
     * from the weights once at load and shared by every context; NULL for Gemma 4. */
    int *kv_channel_order_k;
    int *kv_channel_order_v;
};

/* State of one sequence; see model.h. */
struct tq_context {
    const tq_model *model;
    tq_kv_cache *cache;
    int64_t n_ctx;
    int64_t n_batch;
    int threads;
    tq_forward_buffers buffers;
    struct tq_gemma4_context *gemma4; /* Gemma 4 buffers of this context; NULL for Gemma 3 */
    /* The tree of the last tq_context_eval_tree, whose rows wait at n_past .. n_past +
     * tree_nodes - 1 for tq_context_accept_path; tree_nodes is 0 when none waits. */
    int64_t tree_nodes;
    int32_t tree_parent[TQ_TREE_MAX_NODES];
    /* Adaptive QJL precision (tq_qjl_precision with the defaults resolved): token ids are -1
     * when absent. thinking_state has n_ctx bytes, the THINKING_* flags after each position. */
    int qjl_bits;
    int thinking_qjl_bits;
    int32_t think_token_id;
    int32_t channel_open_id;
    int32_t channel_close_id;
    uint8_t *thinking_state;
};

/* Gemma's pad token id. Gemma 4 looks up its per-layer embedding row at placeholder positions. */
#define TQ_GEMMA_PAD_TOKEN_ID 0

/* Write the input embeddings of n tokens into context->buffers.x: the embedding row times
 * embedding_scale, or for a placeholder token the next row of soft_rows (hidden floats each)
 * as it is. soft_rows must hold a row for every placeholder token among tokens. */
tq_status tq_embed_tokens(tq_context *context, const int32_t *tokens, int64_t n, const float *soft_rows,
                          tq_error *err);
/* Resolve the adaptive QJL settings of a context (defaults, the model's think and channel
 * tokens) and allocate its thinking state of n_ctx bytes. Errors: TQ_ERR_INVALID for a
 * think_token_id outside the vocabulary, TQ_ERR_NOMEM. */
tq_status tq_context_set_qjl_precision(tq_context *context, const tq_qjl_precision *precision, int gemma4,
                                       tq_error *err);

/* Residual bits the cache rows need room for: thinking_qjl_bits counts only when some token
 * can switch thinking on. */
int tq_context_max_qjl_bits(const tq_context *context);

/* Choose the QJL residual precision of the n tokens about to be written at pos0 .. pos0 + n - 1
 * and pass it to the cache. parents is NULL for a sequence (token i follows token i - 1) or
 * the parent node of each token of a draft tree (-1 for the root, which follows pos0 - 1). */
tq_status tq_context_mark_thinking(tq_context *context, const int32_t *tokens, const int32_t *parents, int64_t pos0,
                                   int64_t n, tq_error *err);

/* Copy the thinking state of position src to dst, as tq_kv_cache_move does with its rows. */
void tq_context_move_thinking(tq_context *context, int64_t src, int64_t dst);

/* Attention of the n tokens at positions pos0.. on layer l (head size hd), from queries
 * (n rows of n_heads * hd floats) into out, threaded over tokens, KV heads and position
 * ranges. Shared by the Gemma 3 and Gemma 4 layers (model_forward.c). */
void tq_attend_layer(tq_context *context, int l, int hd, int64_t pos0, int64_t n, const float *queries, float *out);

/* Tree attention of the n draft nodes of tree on layer l (head size hd). Node t at position
 * pos0 + depth[t] reads the prefix and its path, whose rows were written at pos0 + node index.
 * It computes exactly the partial sums of decoding that path (model_forward.c). */
void tq_attend_tree(tq_context *context, int l, int hd, int64_t pos0, int64_t n, const tq_tree *tree,
                    const float *queries, float *out);

/* Every weight product of the forward pass: y = W x for n_tokens rows of x, with quantized
 * activations as llama.cpp unless the model was created with exact_matmul. per_row = 1
 * computes each row exactly as a one-row call would (draft trees, see tq_matmul_per_row). */
tq_status tq_model_matmul(const tq_model *model, const tq_weight *w, const float *x, float *y, int64_t n_tokens,
                          int per_row, tq_error *err);

/* Returns 1 when layer uses full attention and the global RoPE base. */
int tq_model_layer_is_global(const tq_model_config *config, int layer);

/* Check the layer count read from key against the file: every layer has tensors of
 * its own, so a count above the tensor count is corrupt (TQ_ERR_FORMAT). Call it
 * before allocating per-layer tables, which a 4-byte value would otherwise size
 * at gigabytes. */
tq_status tq_model_check_layer_count(const tq_gguf *gguf, const char *key, int n_layers, tq_error *err);

/* Tensor loaders of model.c, with shape and type checks (errors name the tensor). */
tq_status tq_model_load_norm(const tq_gguf *gguf, const char *name, int64_t n, const float **out, tq_error *err);
tq_status tq_model_load_matrix(const tq_gguf *gguf, const char *name, int64_t n_in, int64_t n_out, tq_weight *out,
                               tq_error *err);

/* ---- Gemma 4 (model_gemma4.c) ---- */

typedef struct tq_gemma4 tq_gemma4;

/* Returns 1 when general.architecture is "gemma4". */
int tq_gemma4_detect(const tq_gguf *gguf);

/* Read the configuration and weights of model->gguf into model->config, model->layers,
 * the embedding and LM head, and a new model->gemma4. */
tq_status tq_gemma4_load(tq_model *model, tq_error *err);

typedef struct tq_gemma4_context tq_gemma4_context;

/* Set the Gemma 4 RoPE frequencies in the common buffers of context (allocated before)
 * and create context->gemma4, the per-layer embedding buffers of n_batch tokens. The
 * model's tq_gemma4 is only read, so contexts of one model may run in parallel. */
tq_status tq_gemma4_prepare(tq_context *context, tq_error *err);
void tq_gemma4_context_free(tq_gemma4_context *gemma4_context);

/* Per-layer head sizes and K/V source layers for tq_kv_cache_config. */
const int *tq_gemma4_layer_head_dims(const tq_gemma4 *gemma4);
const int *tq_gemma4_layer_kv_sources(const tq_gemma4 *gemma4);

/* Run n tokens at positions pos0 .. pos0 + n - 1 through every layer, as
 * forward_batch in model_forward.c (soft_rows as tq_embed_tokens); b->x then contains the final hidden states.
 * With a tree (tree != NULL, soft_rows NULL), the n tokens are its nodes at positions pos0 + depth,
 * and their rows are written at pos0 + node index. */
tq_status tq_gemma4_forward_batch(tq_context *context, const int32_t *tokens, int64_t pos0, int64_t n,
                                  const float *soft_rows, const tq_tree *tree, tq_error *err);

void tq_gemma4_free(tq_gemma4 *gemma4);

#endif /* TQ_MODEL_INTERNAL_H */
