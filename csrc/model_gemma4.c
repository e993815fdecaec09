/* Gemma 4 text model (E2B and E4B): configuration and weights from GGUF files
 * in the layout of llama.cpp's converter (general.architecture "gemma4"), and
 * the decoder layers of the forward pass. model_forward.c runs the micro-batch
 * loop, the final norm, the LM head and the logit softcap, for prompts and for the
 * draft trees of speculative decoding (tq_context_eval_tree).
 *
 * What differs from Gemma 3, following transformers' modeling_gemma4.py (5.x):
 * - Norm weights multiply directly (GGUF files and checkpoints store w, not w - 1).
 * - Sliding and global layers have their own head sizes (256 and 512 in E2B/E4B).
 *   Sliding layers rotate every dimension pair with base rope.freq_base_swa.
 *   Global layers use "proportional" RoPE, where only the first pairs rotate. The
 *   converter writes a rope_freqs tensor whose factor 1e30 marks a pair that stays
 *   unrotated.
 * - Q and K get RMSNorm with weights, V gets RMSNorm without weights, and queries
 *   are not scaled (attention scale 1).
 * - Per-layer embeddings (PLE): every token gets one vector of per_layer_input
 *   values per layer, mixed into the residual stream after the FFN block.
 * - The last n_kv_shared_layers layers compute no K/V. Each attends over the cache
 *   rows of the last earlier layer of its kind (sliding or global), and the KV
 *   cache stores nothing for it.
 * - After its residual adds, a layer multiplies the hidden state by its
 *   layer_output_scale.
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

/* Weights and shape of one layer beyond the tq_layer_weights that Gemma 3 shares. */
typedef struct {
    int head_dim;
    int ffn;
    int kv_source;           /* this layer, or the layer whose K/V it reads */
    int has_v;               /* 0: V is the K projection (attention_k_eq_v checkpoints) */
    tq_weight inp_gate;      /* PLE gate, hidden -> per_layer_input */
    tq_weight proj;          /* PLE projection, per_layer_input -> hidden */
    const float *post_norm;  /* RMSNorm of the PLE projection, hidden */
    float output_scale;      /* layer_output_scale, 1 when the file has none */
} tq_gemma4_layer;

struct tq_gemma4 {
    tq_gemma4_layer *layers;
    int *head_dims;      /* n_layers, for tq_kv_cache_config.layer_head_dim */
    int *kv_sources;     /* n_layers, for tq_kv_cache_config.layer_kv_source */
    uint8_t *is_global;  /* n_layers, tq_model_config.layer_is_global points here */
    const float *rope_freqs; /* head_dim / 2 frequency divisors of global layers, or NULL */

    /* Per-layer embeddings, present when config.per_layer_input > 0. */
    tq_weight per_layer_token_embd; /* rows of n_layers * per_layer_input values per token */
    tq_weight per_layer_model_proj; /* hidden -> n_layers * per_layer_input */
    const float *per_layer_proj_norm;
};

/* Buffers of one micro-batch of a context, present when config.per_layer_input > 0. */
struct tq_gemma4_context {
    float *ple;       /* per-layer inputs [n_batch][n_layers * per_layer_input] */
    float *ple_token; /* token part of the per-layer inputs, same shape */
    float *ple_gate;  /* [n_batch][per_layer_input] */
};

/* Factor at or above which a rope_freqs entry marks an unrotated pair (the converter writes 1e30). */
#define TQ_GEMMA4_UNROTATED_FACTOR 1e29f

int tq_gemma4_detect(const tq_gguf *gguf)
{
    tq_gguf_string architecture;
    tq_error ignored;
    tq_error_clear(&ignored);
    if (tq_gguf_get_string(gguf, "general.architecture", &architecture, &ignored) != TQ_OK) {
        return 0;
    }
    return architecture.len == 6 && memcmp(architecture.data, "gemma4", 6) == 0;
}

/* ---- Configuration ------------------------------------------------------------ */

static tq_status check_dimension(const char *key, uint64_t value, int *out, tq_error *err)
{
    /* The limit keeps every product of two dimensions far inside int64 and size_t. */
    if (value == 0 || value > (1u << 24)) {
        return tq_error_set(err, TQ_ERR_FORMAT, "metadata %s = %llu is out of range; expected 1 to %u", key,
                            (unsigned long long)value, 1u << 24);
    }
    *out = (int)value;
    return TQ_OK;
}

static tq_status get_dimension(const tq_gguf *gguf, const char *key, int *out, tq_error *err)
{
    uint32_t value = 0;
    tq_status status = tq_gguf_get_u32(gguf, key, &value, err);
    if (status != TQ_OK) {
        return status;
    }
    return check_dimension(key, value, out, err);
}

static int is_integer_type(tq_gguf_value_type type)
{
    return type == TQ_GGUF_UINT8 || type == TQ_GGUF_UINT16 || type == TQ_GGUF_UINT32 || type == TQ_GGUF_UINT64 ||
           type == TQ_GGUF_INT8 || type == TQ_GGUF_INT16 || type == TQ_GGUF_INT32 || type == TQ_GGUF_INT64;
}

/* Element i of an integer array, widened; negative values come back as 0 (rejected later). */
static uint64_t array_uint(const tq_gguf_array *array, uint64_t i)
{
    const uint8_t *p = array->data;
    switch (array->type) {
    case TQ_GGUF_UINT8:
        return p[i];
    case TQ_GGUF_INT8:
        return ((const int8_t *)p)[i] < 0 ? 0 : (uint64_t)((const int8_t *)p)[i];
    case TQ_GGUF_UINT16: {
        uint16_t v;
        memcpy(&v, p + 2 * i, 2);
        return v;
    }
    case TQ_GGUF_INT16: {
        int16_t v;
        memcpy(&v, p + 2 * i, 2);
        return v < 0 ? 0 : (uint64_t)v;
    }
    case TQ_GGUF_UINT32: {
        uint32_t v;
        memcpy(&v, p + 4 * i, 4);
        return v;
    }
    case TQ_GGUF_INT32: {
        int32_t v;
        memcpy(&v, p + 4 * i, 4);
        return v < 0 ? 0 : (uint64_t)v;
    }
    case TQ_GGUF_UINT64: {
        uint64_t v;
        memcpy(&v, p + 8 * i, 8);
        return v;
    }
    case TQ_GGUF_INT64: {
        int64_t v;
        memcpy(&v, p + 8 * i, 8);
        return v < 0 ? 0 : (uint64_t)v;
    }
    default:
        return 0;
    }
}

/* A key that llama.cpp's converter writes either as one integer or as one per layer
 * (feed_forward_length with double-wide MLPs, head_count_kv with per-kind head counts). */
static tq_status get_per_layer_dimension(const tq_gguf *gguf, const char *key, int n_layers, int *out,
                                         tq_error *err)
{
    const tq_gguf_kv *kv = tq_gguf_find_kv(gguf, key);
    if (kv == NULL) {
        return tq_error_set(err, TQ_ERR_FORMAT, "metadata key %s is missing from the GGUF file", key);
    }
    if (kv->type != TQ_GGUF_ARRAY) {
        int value = 0;
        tq_status status = get_dimension(gguf, key, &value, err);
        for (int l = 0; l < n_layers && status == TQ_OK; l++) {
            out[l] = value;
        }
        return status;
    }
    const tq_gguf_array *array = &kv->value.arr;
    if (!is_integer_type(array->type) || array->count != (uint64_t)n_layers) {
        return tq_error_set(err, TQ_ERR_FORMAT,
                            "metadata %s is an array of %llu %s values; expected one integer or %d integers (one "
                            "per layer)",
                            key, (unsigned long long)array->count, tq_gguf_value_type_name(array->type), n_layers);
    }
    for (int l = 0; l < n_layers; l++) {
        tq_status status = check_dimension(key, array_uint(array, (uint64_t)l), &out[l], err);
        if (status != TQ_OK) {
            return status;
        }
    }
    return TQ_OK;
}

static tq_status get_optional_f32(const tq_gguf *gguf, const char *key, float *out, tq_error *err)
{
    if (tq_gguf_find_kv(gguf, key) == NULL) {
        return TQ_OK;
    }
    return tq_gguf_get_f32(gguf, key, out, err);
}

static tq_status get_optional_dimension(const tq_gguf *gguf, const char *key, int *out, tq_error *err)
{
    if (tq_gguf_find_kv(gguf, key) == NULL) {
        return TQ_OK;
    }
    return get_dimension(gguf, key, out, err);
}

/* Layer kinds from gemma4.attention.sliding_window_pattern: one bool per layer, true
 * for a sliding-window layer. */
static tq_status read_layer_kinds(const tq_gguf *gguf, int n_layers, uint8_t *is_global, tq_error *err)
{
    const char *key = "gemma4.attention.sliding_window_pattern";
    tq_gguf_array pattern;
    tq_status status = tq_gguf_get_array(gguf, key, &pattern, err);
    if (status != TQ_OK) {
        return status;
    }
    if ((pattern.type != TQ_GGUF_BOOL && !is_integer_type(pattern.type)) || pattern.count != (uint64_t)n_layers) {
        return tq_error_set(err, TQ_ERR_FORMAT,
                            "metadata %s has %llu %s values; expected %d bools (true for a sliding-window layer)",
                            key, (unsigned long long)pattern.count, tq_gguf_value_type_name(pattern.type), n_layers);
    }
    for (int l = 0; l < n_layers; l++) {
        const uint64_t sliding = pattern.type == TQ_GGUF_BOOL ? pattern.data[l] : array_uint(&pattern, (uint64_t)l);
        is_global[l] = sliding == 0;
    }
    return TQ_OK;
}

/* Every layer from n_layers - n_shared on reads the K/V of the last earlier layer of
 * its kind, as transformers' Gemma4TextConfig.kv_sharing_modes defines it. */
static tq_status assign_kv_sources(tq_model_config *c, tq_gemma4 *g, tq_error *err)
{
    const int first_shared = c->n_layers - c->n_kv_shared_layers;
    int last_of_kind[2] = {-1, -1};
    for (int l = 0; l < first_shared; l++) {
        g->kv_sources[l] = l;
        last_of_kind[g->is_global[l]] = l;
    }
    for (int l = first_shared; l < c->n_layers; l++) {
        const int source = last_of_kind[g->is_global[l]];
        if (source < 0) {
            return tq_error_set(err, TQ_ERR_FORMAT,
                                "layer %d is a shared-KV %s layer, but none of the first %d layers is of that kind "
                                "to store its keys and values",
                                l, g->is_global[l] ? "global" : "sliding-window", first_shared);
        }
        g->kv_sources[l] = source;
    }
    return TQ_OK;
}

static tq_status read_config(const tq_gguf *gguf, tq_model_config *c, tq_gemma4 *g, tq_error *err)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->architecture, sizeof(c->architecture), "gemma4");
    tq_status status;
    if ((status = get_dimension(gguf, "gemma4.block_count", &c->n_layers, err)) != TQ_OK ||
        (status = get_dimension(gguf, "gemma4.embedding_length", &c->hidden, err)) != TQ_OK ||
        (status = get_dimension(gguf, "gemma4.attention.head_count", &c->n_heads, err)) != TQ_OK ||
        (status = get_dimension(gguf, "gemma4.attention.key_length", &c->head_dim, err)) != TQ_OK ||
        (status = tq_model_check_layer_count(gguf, "gemma4.block_count", c->n_layers, err)) != TQ_OK) {
        return status;
    }
    const int n_layers = c->n_layers;
    g->layers = calloc((size_t)n_layers, sizeof(tq_gemma4_layer));
    g->head_dims = calloc((size_t)n_layers, sizeof(int));
    g->kv_sources = calloc((size_t)n_layers, sizeof(int));
    g->is_global = calloc((size_t)n_layers, 1);
    int *kv_heads = calloc((size_t)n_layers, sizeof(int));
    int *ffn = calloc((size_t)n_layers, sizeof(int));
    if (g->layers == NULL || g->head_dims == NULL || g->kv_sources == NULL || g->is_global == NULL ||
        kv_heads == NULL || ffn == NULL) {
        free(kv_heads);
        free(ffn);
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for the tables of %d layers", n_layers);
    }
    c->layer_is_global = g->is_global;

    status = get_per_layer_dimension(gguf, "gemma4.attention.head_count_kv", n_layers, kv_heads, err);
    if (status == TQ_OK) {
        status = get_per_layer_dimension(gguf, "gemma4.feed_forward_length", n_layers, ffn, err);
    }
    if (status == TQ_OK) {
        c->n_kv_heads = kv_heads[0];
        for (int l = 0; l < n_layers; l++) {
            g->layers[l].ffn = ffn[l];
            c->ffn = ffn[l] > c->ffn ? ffn[l] : c->ffn;
            if (kv_heads[l] != kv_heads[0] && status == TQ_OK) {
                /* NOTE: larger Gemma 4 models give global layers their own KV head count;
                 * the KV cache here keeps one count for all layers. */
                status = tq_error_set(err, TQ_ERR_UNSUPPORTED,
                                      "gemma4.attention.head_count_kv differs between layers (%d in layer 0, %d in "
                                      "layer %d); only one KV head count is supported",
                                      kv_heads[0], kv_heads[l], l);
            }
        }
    }
    free(kv_heads);
    free(ffn);
    if (status != TQ_OK) {
        return status;
    }

    int value_length = 0;
    c->head_dim_local = c->head_dim;
    int value_length_local = 0;
    if ((status = get_dimension(gguf, "gemma4.attention.value_length", &value_length, err)) != TQ_OK ||
        (status = get_optional_dimension(gguf, "gemma4.attention.key_length_swa", &c->head_dim_local, err)) !=
            TQ_OK) {
        return status;
    }
    value_length_local = c->head_dim_local;
    if ((status = get_optional_dimension(gguf, "gemma4.attention.value_length_swa", &value_length_local, err)) !=
        TQ_OK) {
        return status;
    }
    if (value_length != c->head_dim || value_length_local != c->head_dim_local) {
        return tq_error_set(err, TQ_ERR_UNSUPPORTED,
                            "gemma4 value lengths (%d global, %d sliding) differ from key lengths (%d, %d); only "
                            "equal lengths are supported",
                            value_length, value_length_local, c->head_dim, c->head_dim_local);
    }
    if (c->head_dim % 32 != 0 || c->head_dim_local % 32 != 0 || c->head_dim_local > c->head_dim) {
        return tq_error_set(err, TQ_ERR_UNSUPPORTED,
                            "gemma4 head sizes %d (global) and %d (sliding) are not supported; both must be "
                            "multiples of 32, the sliding one at most the global one",
                            c->head_dim, c->head_dim_local);
    }
    if (c->n_heads % c->n_kv_heads != 0) {
        return tq_error_set(err, TQ_ERR_FORMAT, "gemma4.attention.head_count %d is not a multiple of head_count_kv %d",
                            c->n_heads, c->n_kv_heads);
    }

    uint32_t context_length = 0;
    uint32_t sliding_window = 0;
    if ((status = tq_gguf_get_u32(gguf, "gemma4.context_length", &context_length, err)) != TQ_OK ||
        (status = tq_gguf_get_u32(gguf, "gemma4.attention.sliding_window", &sliding_window, err)) != TQ_OK) {
        return status;
    }
    if (context_length == 0 || sliding_window == 0) {
        return tq_error_set(err, TQ_ERR_FORMAT,
                            "gemma4.context_length (%u) and gemma4.attention.sliding_window (%u) must be positive",
                            context_length, sliding_window);
    }
    c->context_length = context_length;
    c->sliding_window = sliding_window;

    c->rope_base_local = 10000.0f;
    if ((status = tq_gguf_get_f32(gguf, "gemma4.attention.layer_norm_rms_epsilon", &c->rms_eps, err)) != TQ_OK ||
        (status = tq_gguf_get_f32(gguf, "gemma4.rope.freq_base", &c->rope_base_global, err)) != TQ_OK ||
        (status = get_optional_f32(gguf, "gemma4.rope.freq_base_swa", &c->rope_base_local, err)) != TQ_OK ||
        (status = get_optional_f32(gguf, "gemma4.final_logit_softcapping", &c->final_logit_softcap, err)) !=
            TQ_OK) {
        return status;
    }
    if (!(c->rms_eps >= 0.0f) || !(c->rope_base_global > 1.0f) || !(c->rope_base_local > 1.0f) ||
        !(c->final_logit_softcap >= 0.0f)) {
        return tq_error_set(err, TQ_ERR_FORMAT,
                            "invalid gemma4 metadata: layer_norm_rms_epsilon %g and final_logit_softcapping %g "
                            "must be >= 0, rope.freq_base %g and rope.freq_base_swa %g above 1",
                            (double)c->rms_eps, (double)c->final_logit_softcap, (double)c->rope_base_global,
                            (double)c->rope_base_local);
    }
    /* Rotated dimensions as the converter writes them: all of them, with rope_freqs
     * switching pairs off on global layers. Partial rotation in the NeoX layout would
     * pair other dimensions, which transformers' Gemma 4 never does. */
    int rope_dims = c->head_dim;
    int rope_dims_local = c->head_dim_local;
    if ((status = get_optional_dimension(gguf, "gemma4.rope.dimension_count", &rope_dims, err)) != TQ_OK ||
        (status = get_optional_dimension(gguf, "gemma4.rope.dimension_count_swa", &rope_dims_local, err)) !=
            TQ_OK) {
        return status;
    }
    if (rope_dims != c->head_dim || rope_dims_local != c->head_dim_local) {
        return tq_error_set(err, TQ_ERR_UNSUPPORTED,
                            "gemma4.rope.dimension_count %d and dimension_count_swa %d must equal the head sizes %d "
                            "and %d",
                            rope_dims, rope_dims_local, c->head_dim, c->head_dim_local);
    }

    if ((status = read_layer_kinds(gguf, n_layers, g->is_global, err)) != TQ_OK) {
        return status;
    }
    uint32_t shared = 0;
    if (tq_gguf_find_kv(gguf, "gemma4.attention.shared_kv_layers") != NULL &&
        (status = tq_gguf_get_u32(gguf, "gemma4.attention.shared_kv_layers", &shared, err)) != TQ_OK) {
        return status;
    }
    if (shared >= (uint32_t)n_layers) {
        return tq_error_set(err, TQ_ERR_FORMAT,
                            "gemma4.attention.shared_kv_layers %u must be below block_count %d, because the first "
                            "layer stores its own keys and values",
                            shared, n_layers);
    }
    c->n_kv_shared_layers = (int)shared;
    if ((status = assign_kv_sources(c, g, err)) != TQ_OK) {
        return status;
    }
    for (int l = 0; l < n_layers; l++) {
        g->layers[l].head_dim = g->is_global[l] ? c->head_dim : c->head_dim_local;
        g->layers[l].kv_source = g->kv_sources[l];
        g->head_dims[l] = g->layers[l].head_dim;
    }

    uint32_t per_layer_input = 0;
    if (tq_gguf_find_kv(gguf, "gemma4.embedding_length_per_layer_input") != NULL &&
        (status = tq_gguf_get_u32(gguf, "gemma4.embedding_length_per_layer_input", &per_layer_input, err)) != TQ_OK) {
        return status;
    }
    if (per_layer_input > (1u << 16)) {
        return tq_error_set(err, TQ_ERR_FORMAT, "gemma4.embedding_length_per_layer_input %u is out of range 0..65536",
                            per_layer_input);
    }
    c->per_layer_input = (int)per_layer_input;

    /* Fields of the Gemma 3 reader that keep Gemma 3 code paths neutral: queries are not
     * scaled (1 / sqrt(1)), RoPE is not scaled linearly. */
    c->query_pre_attn_scalar = 1.0f;
    c->rope_scale_global = 1.0f;
    c->sliding_window_pattern = 0;
    c->rope_dims_global = c->head_dim;
    c->embedding_scale = sqrtf((float)c->hidden);
    return TQ_OK;
}

/* ---- Tensors ------------------------------------------------------------------ */

#define TQ_GEMMA4_NAME(buffer, l, suffix) (snprintf(buffer, sizeof(buffer), "blk.%d." suffix ".weight", l), buffer)

static tq_status load_layer(const tq_gguf *gguf, const tq_model_config *c, int l, tq_layer_weights *w,
                            tq_gemma4_layer *g, tq_error *err)
{
    char name[96];
    tq_status status;
    const int64_t hd = g->head_dim;
    const int64_t q_dim = (int64_t)c->n_heads * hd;
    const int64_t kv_dim = (int64_t)c->n_kv_heads * hd;
    if ((status = tq_model_load_norm(gguf, TQ_GEMMA4_NAME(name, l, "attn_norm"), c->hidden, &w->attn_norm, err)) !=
            TQ_OK ||
        (status = tq_model_load_matrix(gguf, TQ_GEMMA4_NAME(name, l, "attn_q"), c->hidden, q_dim, &w->attn_q, err)) !=
            TQ_OK ||
        (status = tq_model_load_norm(gguf, TQ_GEMMA4_NAME(name, l, "attn_q_norm"), hd, &w->attn_q_norm, err)) !=
            TQ_OK ||
        (status = tq_model_load_matrix(gguf, TQ_GEMMA4_NAME(name, l, "attn_output"), q_dim, c->hidden,
                                       &w->attn_output, err)) != TQ_OK ||
        (status = tq_model_load_norm(gguf, TQ_GEMMA4_NAME(name, l, "post_attention_norm"), c->hidden,
                                     &w->post_attention_norm, err)) != TQ_OK ||
        (status = tq_model_load_norm(gguf, TQ_GEMMA4_NAME(name, l, "ffn_norm"), c->hidden, &w->ffn_norm, err)) !=
            TQ_OK ||
        (status = tq_model_load_matrix(gguf, TQ_GEMMA4_NAME(name, l, "ffn_gate"), c->hidden, g->ffn, &w->ffn_gate,
                                       err)) != TQ_OK ||
        (status = tq_model_load_matrix(gguf, TQ_GEMMA4_NAME(name, l, "ffn_up"), c->hidden, g->ffn, &w->ffn_up, err)) !=
            TQ_OK ||
        (status = tq_model_load_matrix(gguf, TQ_GEMMA4_NAME(name, l, "ffn_down"), g->ffn, c->hidden, &w->ffn_down,
                                       err)) != TQ_OK ||
        (status = tq_model_load_norm(gguf, TQ_GEMMA4_NAME(name, l, "post_ffw_norm"), c->hidden, &w->post_ffw_norm,
                                     err)) != TQ_OK) {
        return status;
    }

    /* Shared-KV layers need no K/V weights; checkpoints that still carry them are fine. */
    if (g->kv_source == l) {
        if ((status = tq_model_load_matrix(gguf, TQ_GEMMA4_NAME(name, l, "attn_k"), c->hidden, kv_dim, &w->attn_k,
                                           err)) != TQ_OK ||
            (status = tq_model_load_norm(gguf, TQ_GEMMA4_NAME(name, l, "attn_k_norm"), hd, &w->attn_k_norm, err)) !=
                TQ_OK) {
            return status;
        }
        g->has_v = tq_gguf_find_tensor(gguf, TQ_GEMMA4_NAME(name, l, "attn_v")) != NULL;
        if (g->has_v &&
            (status = tq_model_load_matrix(gguf, name, c->hidden, kv_dim, &w->attn_v, err)) != TQ_OK) {
            return status;
        }
    }

    if (c->per_layer_input > 0) {
        if ((status = tq_model_load_matrix(gguf, TQ_GEMMA4_NAME(name, l, "inp_gate"), c->hidden, c->per_layer_input,
                                           &g->inp_gate, err)) != TQ_OK ||
            (status = tq_model_load_matrix(gguf, TQ_GEMMA4_NAME(name, l, "proj"), c->per_layer_input, c->hidden,
                                           &g->proj, err)) != TQ_OK ||
            (status = tq_model_load_norm(gguf, TQ_GEMMA4_NAME(name, l, "post_norm"), c->hidden, &g->post_norm,
                                         err)) != TQ_OK) {
            return status;
        }
    }

    g->output_scale = 1.0f;
    if (tq_gguf_find_tensor(gguf, TQ_GEMMA4_NAME(name, l, "layer_output_scale")) != NULL) {
        const float *scale = NULL;
        if ((status = tq_model_load_norm(gguf, name, 1, &scale, err)) != TQ_OK) {
            return status;
        }
        g->output_scale = scale[0];
    }
    return TQ_OK;
}

static tq_status load_weights(tq_model *model, tq_gemma4 *g, tq_error *err)
{
    tq_model_config *c = &model->config;
    const tq_gguf *gguf = model->gguf;
    const tq_gguf_tensor *embd = tq_gguf_find_tensor(gguf, "token_embd.weight");
    if (embd == NULL) {
        return tq_error_set(err, TQ_ERR_FORMAT, "tensor token_embd.weight is missing from the GGUF file");
    }
    if (embd->ne[1] == 0 || embd->ne[1] > INT32_MAX) {
        return tq_error_set(err, TQ_ERR_FORMAT, "tensor token_embd.weight has %llu rows; expected 1 to %d",
                            (unsigned long long)embd->ne[1], INT32_MAX);
    }
    c->n_vocab = (int)embd->ne[1];
    tq_status status = tq_model_load_matrix(gguf, "token_embd.weight", c->hidden, c->n_vocab, &model->token_embd, err);
    if (status != TQ_OK) {
        return status;
    }
    model->lm_head = model->token_embd;
    if (tq_gguf_find_tensor(gguf, "output.weight") != NULL &&
        (status = tq_model_load_matrix(gguf, "output.weight", c->hidden, c->n_vocab, &model->lm_head, err)) != TQ_OK) {
        return status;
    }
    if ((status = tq_model_load_norm(gguf, "output_norm.weight", c->hidden, &model->output_norm, err)) != TQ_OK) {
        return status;
    }

    if (tq_gguf_find_tensor(gguf, "rope_freqs.weight") != NULL) {
        if ((status = tq_model_load_norm(gguf, "rope_freqs.weight", c->head_dim / 2, &g->rope_freqs, err)) != TQ_OK) {
            return status;
        }
        int rotated = 0;
        for (int i = 0; i < c->head_dim / 2; i++) {
            if (!(g->rope_freqs[i] > 0.0f)) {
                return tq_error_set(err, TQ_ERR_FORMAT, "rope_freqs.weight[%d] = %g must be positive", i,
                                    (double)g->rope_freqs[i]);
            }
            rotated += g->rope_freqs[i] < TQ_GEMMA4_UNROTATED_FACTOR;
        }
        c->rope_dims_global = 2 * rotated;
    }

    if (c->per_layer_input > 0) {
        const int64_t width = (int64_t)c->n_layers * c->per_layer_input;
        const tq_gguf_tensor *table = tq_gguf_find_tensor(gguf, "per_layer_token_embd.weight");
        if (table == NULL) {
            return tq_error_set(err, TQ_ERR_FORMAT,
                                "tensor per_layer_token_embd.weight is missing, but "
                                "gemma4.embedding_length_per_layer_input is %d",
                                c->per_layer_input);
        }
        /* Every token id of the main vocabulary needs a row. */
        if (table->ne[1] < (uint64_t)c->n_vocab) {
            return tq_error_set(err, TQ_ERR_UNSUPPORTED,
                                "tensor per_layer_token_embd.weight has %llu rows, fewer than the %d tokens of "
                                "token_embd.weight",
                                (unsigned long long)table->ne[1], c->n_vocab);
        }
        if ((status = tq_model_load_matrix(gguf, "per_layer_token_embd.weight", width, (int64_t)table->ne[1],
                                           &g->per_layer_token_embd, err)) != TQ_OK ||
            (status = tq_model_load_matrix(gguf, "per_layer_model_proj.weight", c->hidden, width,
                                           &g->per_layer_model_proj, err)) != TQ_OK ||
            (status = tq_model_load_norm(gguf, "per_layer_proj_norm.weight", c->per_layer_input,
                                         &g->per_layer_proj_norm, err)) != TQ_OK) {
            return status;
        }
    }

    model->layers = calloc((size_t)c->n_layers, sizeof(tq_layer_weights));
    if (model->layers == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating %d layers", c->n_layers);
    }
    for (int l = 0; l < c->n_layers; l++) {
        if ((status = load_layer(gguf, c, l, &model->layers[l], &g->layers[l], err)) != TQ_OK) {
            return status;
        }
    }
    return TQ_OK;
}

tq_status tq_gemma4_load(tq_model *model, tq_error *err)
{
    tq_gemma4 *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating the Gemma 4 state");
    }
    model->gemma4 = g;
    tq_status status = read_config(model->gguf, &model->config, g, err);
    if (status == TQ_OK) {
        status = load_weights(model, g, err);
    }
    return status;
}

static float *alloc_floats(int64_t rows, int64_t cols, const char *buffer_name, tq_error *err)
{
    size_t count, bytes;
    if (!tq_mul_size((size_t)rows, (size_t)cols, &count) || !tq_mul_size(count, sizeof(float), &bytes)) {
        tq_error_set(err, TQ_ERR_NOMEM, "buffer %s of %lld x %lld floats overflows size_t", buffer_name,
                     (long long)rows, (long long)cols);
        return NULL;
    }
    float *buffer = tq_aligned_alloc(bytes);
    if (buffer == NULL) {
        tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating buffer %s (%zu bytes)", buffer_name, bytes);
    }
    return buffer;
}

tq_status tq_gemma4_prepare(tq_context *context, tq_error *err)
{
    const tq_model_config *c = &context->model->config;
    const tq_gemma4 *g = context->model->gemma4;
    tq_forward_buffers *b = &context->buffers;

    /* Inverse frequencies in float32 as transformers computes them: base^-(2i / head_dim)
     * per layer kind. The common buffers hold head_dim / 2 entries, the larger size. */
    for (int i = 0; i < c->head_dim_local / 2; i++) {
        b->inv_freq_local[i] = 1.0f / powf(c->rope_base_local, (float)(2 * i) / (float)c->head_dim_local);
    }
    for (int i = 0; i < c->head_dim / 2; i++) {
        const float inv_freq = 1.0f / powf(c->rope_base_global, (float)(2 * i) / (float)c->head_dim);
        const float factor = g->rope_freqs != NULL ? g->rope_freqs[i] : 1.0f;
        b->inv_freq_global[i] = factor >= TQ_GEMMA4_UNROTATED_FACTOR ? 0.0f : inv_freq / factor;
    }

    tq_gemma4_context *gc = calloc(1, sizeof(*gc));
    if (gc == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating the Gemma 4 context state");
    }
    context->gemma4 = gc;
    if (c->per_layer_input > 0) {
        const int64_t width = (int64_t)c->n_layers * c->per_layer_input;
        if ((gc->ple = alloc_floats(context->n_batch, width, "ple", err)) == NULL ||
            (gc->ple_token = alloc_floats(context->n_batch, width, "ple_token", err)) == NULL ||
            (gc->ple_gate = alloc_floats(context->n_batch, c->per_layer_input, "ple_gate", err)) == NULL) {
            return err->status;
        }
    }
    return TQ_OK;
}

void tq_gemma4_context_free(tq_gemma4_context *gemma4_context)
{
    if (gemma4_context == NULL) {
        return;
    }
    tq_aligned_free(gemma4_context->ple);
    tq_aligned_free(gemma4_context->ple_token);
    tq_aligned_free(gemma4_context->ple_gate);
    free(gemma4_context);
}

const int *tq_gemma4_layer_head_dims(const tq_gemma4 *gemma4)
{
    return gemma4->head_dims;
}

const int *tq_gemma4_layer_kv_sources(const tq_gemma4 *gemma4)
{
    return gemma4->kv_sources;
}

void tq_gemma4_free(tq_gemma4 *gemma4)
{
    if (gemma4 == NULL) {
        return;
    }
    free(gemma4->layers);
    free(gemma4->head_dims);
    free(gemma4->kv_sources);
    free(gemma4->is_global);
    free(gemma4);
}

/* ---- Forward pass ----------------------------------------------------------------- */

/* out = x / sqrt(mean(x^2) + eps), times weight unless weight is NULL (the V norm). */
static void rms_norm(const float *x, const float *weight, int n, float eps, float *out)
{
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        sum += (double)x[i] * x[i];
    }
    const float scale = (float)(1.0 / sqrt(sum / n + eps));
    for (int i = 0; i < n; i++) {
        out[i] = weight != NULL ? x[i] * scale * weight[i] : x[i] * scale;
    }
}

static void rms_norm_rows(const float *x, const float *weight, int64_t rows, int n, float eps, float *out)
{
#pragma omp parallel for if (rows > 1)
    for (int64_t t = 0; t < rows; t++) {
        rms_norm(x + t * n, weight, n, eps, out + t * n);
    }
}

/* gelu with the tanh approximation, written with expf as in model_forward.c. */
static inline float gelu_tanh(float x)
{
    const float sqrt_2_over_pi = 0.7978845608028654f;
    const float y = sqrt_2_over_pi * (x + 0.044715f * x * x * x);
    return 0.5f * x * (2.0f - 2.0f / (1.0f + expf(2.0f * y)));
}

/* cos and sin of pos * inv_freq[i] (float32 angles) for the n positions from pos0. */
static void rope_tables(const float *inv_freq, int half, int64_t pos0, int64_t n, float *cos_out, float *sin_out)
{
    for (int64_t t = 0; t < n; t++) {
        const float pos = (float)(pos0 + t);
        for (int i = 0; i < half; i++) {
            const float angle = pos * inv_freq[i];
            cos_out[t * half + i] = cosf(angle);
            sin_out[t * half + i] = sinf(angle);
        }
    }
}

/* NeoX rotation of one head: (x[i], x[i + half]) turns by the angle of pair i. */
static void rope_apply(float *x, const float *cos_row, const float *sin_row, int half)
{
    for (int i = 0; i < half; i++) {
        const float a = x[i];
        const float b = x[i + half];
        x[i] = a * cos_row[i] - b * sin_row[i];
        x[i + half] = a * sin_row[i] + b * cos_row[i];
    }
}

/* x += RMSNorm(projection) for n rows of the residual stream. */
static void add_normed(tq_forward_buffers *b, const float *norm, int64_t n, int hidden, float eps)
{
#pragma omp parallel for if (n > 1)
    for (int64_t t = 0; t < n; t++) {
        float *p = b->projection + t * hidden;
        float *x = b->x + t * hidden;
        rms_norm(p, norm, hidden, eps, p);
        for (int i = 0; i < hidden; i++) {
            x[i] += p[i];
        }
    }
}

/* Attention block: Q (and K, V unless the layer reads another layer's cache rows),
 * their norms and RoPE, attention over the cache, output projection, residual add.
 * With a tree, the n rows are draft nodes at positions pos0 + depth (see tq_attend_tree). */
static tq_status attention_block(tq_context *context, int l, int64_t pos0, int64_t n, const tq_tree *tree,
                                 tq_error *err)
{
    const tq_model *model = context->model;
    const tq_model_config *c = &model->config;
    const tq_layer_weights *w = &model->layers[l];
    const tq_gemma4_layer *gl = &model->gemma4->layers[l];
    tq_forward_buffers *b = &context->buffers;
    const int hd = gl->head_dim;
    const int half = hd / 2;
    const int q_dim = c->n_heads * hd;
    const int kv_dim = c->n_kv_heads * hd;
    const int stores_kv = gl->kv_source == l;
    const int global = model->gemma4->is_global[l];
    const float *rope_cos = global ? b->rope_cos_global : b->rope_cos_local;
    const float *rope_sin = global ? b->rope_sin_global : b->rope_sin_local;
    const int per_row = tree != NULL;
    tq_status status;

    rms_norm_rows(b->x, w->attn_norm, n, c->hidden, c->rms_eps, b->x_norm);
    if ((status = tq_model_matmul(model, &w->attn_q, b->x_norm, b->q, n, per_row, err)) != TQ_OK) {
        return status;
    }
    if (stores_kv) {
        if ((status = tq_model_matmul(model, &w->attn_k, b->x_norm, b->k, n, per_row, err)) != TQ_OK) {
            return status;
        }
        if (gl->has_v) {
            status = tq_model_matmul(model, &w->attn_v, b->x_norm, b->v, n, per_row, err);
        } else {
            memcpy(b->v, b->k, (size_t)n * (size_t)kv_dim * sizeof(float));
        }
        if (status != TQ_OK) {
            return status;
        }
    }

#pragma omp parallel for if (n > 1)
    for (int64_t t = 0; t < n; t++) {
        /* RoPE rows are per position: one per token, or one per tree depth. */
        const int64_t r = tree != NULL ? tree->depth[t] : t;
        for (int h = 0; h < c->n_heads; h++) {
            float *q = b->q + t * q_dim + h * hd;
            rms_norm(q, w->attn_q_norm, hd, c->rms_eps, q);
            rope_apply(q, rope_cos + r * half, rope_sin + r * half, half);
        }
        for (int h = 0; stores_kv && h < c->n_kv_heads; h++) {
            float *k = b->k + t * kv_dim + h * hd;
            float *v = b->v + t * kv_dim + h * hd;
            rms_norm(k, w->attn_k_norm, hd, c->rms_eps, k);
            rope_apply(k, rope_cos + r * half, rope_sin + r * half, half);
            rms_norm(v, NULL, hd, c->rms_eps, v);
        }
    }
    if (stores_kv) {
        tq_kv_cache_write(context->cache, l, pos0, n, b->k, b->v);
    }

    /* A shared-KV layer reads its source layer's rows, including the tree rows that layer
     * wrote at pos0 + node index in this pass. */
    if (tree != NULL) {
        tq_attend_tree(context, l, hd, pos0, n, tree, b->q, b->attention);
    } else {
        tq_attend_layer(context, l, hd, pos0, n, b->q, b->attention);
    }

    if ((status = tq_model_matmul(model, &w->attn_output, b->attention, b->projection, n, per_row, err)) != TQ_OK) {
        return status;
    }
    add_normed(b, w->post_attention_norm, n, c->hidden, c->rms_eps);
    return TQ_OK;
}

static tq_status ffn_block(tq_context *context, int l, int64_t n, int per_row, tq_error *err)
{
    const tq_model *model = context->model;
    const tq_model_config *c = &model->config;
    const tq_layer_weights *w = &model->layers[l];
    const int ffn = model->gemma4->layers[l].ffn;
    tq_forward_buffers *b = &context->buffers;
    tq_status status;

    rms_norm_rows(b->x, w->ffn_norm, n, c->hidden, c->rms_eps, b->x_norm);
    if ((status = tq_model_matmul(model, &w->ffn_gate, b->x_norm, b->gate, n, per_row, err)) != TQ_OK ||
        (status = tq_model_matmul(model, &w->ffn_up, b->x_norm, b->up, n, per_row, err)) != TQ_OK) {
        return status;
    }
    const int64_t values = n * ffn;
#pragma omp parallel for if (n > 1)
    for (int64_t i = 0; i < values; i++) {
        b->gate[i] = gelu_tanh(b->gate[i]) * b->up[i];
    }
    if ((status = tq_model_matmul(model, &w->ffn_down, b->gate, b->projection, n, per_row, err)) != TQ_OK) {
        return status;
    }
    add_normed(b, w->post_ffw_norm, n, c->hidden, c->rms_eps);
    return TQ_OK;
}

/* x += RMSNorm(W_proj (gelu_tanh(W_gate x) * ple[l])). */
static tq_status per_layer_block(tq_context *context, int l, int64_t n, int per_row, tq_error *err)
{
    const tq_model *model = context->model;
    const tq_model_config *c = &model->config;
    const tq_gemma4_layer *gl = &model->gemma4->layers[l];
    const tq_gemma4_context *g = context->gemma4;
    tq_forward_buffers *b = &context->buffers;
    const int width = c->per_layer_input;
    const int64_t row = (int64_t)c->n_layers * width;
    tq_status status;

    if ((status = tq_model_matmul(model, &gl->inp_gate, b->x, g->ple_gate, n, per_row, err)) != TQ_OK) {
        return status;
    }
#pragma omp parallel for if (n > 1)
    for (int64_t t = 0; t < n; t++) {
        float *gate = g->ple_gate + t * width;
        const float *input = g->ple + t * row + (int64_t)l * width;
        for (int i = 0; i < width; i++) {
            gate[i] = gelu_tanh(gate[i]) * input[i];
        }
    }
    if ((status = tq_model_matmul(model, &gl->proj, g->ple_gate, b->projection, n, per_row, err)) != TQ_OK) {
        return status;
    }
    add_normed(b, gl->post_norm, n, c->hidden, c->rms_eps);
    return TQ_OK;
}

/* Per-layer inputs of the micro-batch: (RMSNorm(W x / sqrt(hidden)) + table[token]
 * * sqrt(width)) / sqrt(2), per layer slice of width values, where x is the input embedding
 * in b->x (a soft embedding row at a placeholder position). A placeholder position looks up
 * the pad token's table row, as transformers' Gemma4Model does. Scalars are rounded to float32
 * as transformers does. */
static tq_status per_layer_inputs(tq_context *context, const int32_t *tokens, int64_t n, int per_row,
                                  tq_error *err)
{
    const tq_model *model = context->model;
    const tq_model_config *c = &model->config;
    const tq_gemma4 *weights = model->gemma4;
    const tq_gemma4_context *g = context->gemma4;
    tq_forward_buffers *b = &context->buffers;
    const int width = c->per_layer_input;
    const int64_t row = (int64_t)c->n_layers * width;
    const float projection_scale = (float)pow((double)c->hidden, -0.5);
    const float table_scale = sqrtf((float)width);
    const float sum_scale = (float)pow(2.0, -0.5);
    tq_status status;

    if ((status = tq_model_matmul(model, &weights->per_layer_model_proj, b->x, g->ple, n, per_row, err)) != TQ_OK) {
        return status;
    }
    for (int64_t t = 0; t < n; t++) {
        const int32_t token = tq_model_is_placeholder(model, tokens[t]) ? TQ_GEMMA_PAD_TOKEN_ID : tokens[t];
        status = tq_weight_get_row(&weights->per_layer_token_embd, token, g->ple_token + t * row, err);
        if (status != TQ_OK) {
            return status;
        }
    }
#pragma omp parallel for if (n > 1)
    for (int64_t t = 0; t < n; t++) {
        for (int l = 0; l < c->n_layers; l++) {
            float *projected = g->ple + t * row + (int64_t)l * width;
            const float *token = g->ple_token + t * row + (int64_t)l * width;
            for (int i = 0; i < width; i++) {
                projected[i] *= projection_scale;
            }
            rms_norm(projected, weights->per_layer_proj_norm, width, c->rms_eps, projected);
            for (int i = 0; i < width; i++) {
                projected[i] = (projected[i] + token[i] * table_scale) * sum_scale;
            }
        }
    }
    return TQ_OK;
}

tq_status tq_gemma4_forward_batch(tq_context *context, const int32_t *tokens, int64_t pos0, int64_t n,
                                  const float *soft_rows, const tq_tree *tree, tq_error *err)
{
    const tq_model *model = context->model;
    const tq_model_config *c = &model->config;
    const tq_gemma4 *g = model->gemma4;
    tq_forward_buffers *b = &context->buffers;
    const int per_row = tree != NULL; /* each node's products exactly as decoding computes them */
    tq_status status;

    if ((status = tq_embed_tokens(context, tokens, n, soft_rows, err)) != TQ_OK) {
        return status;
    }
    if (c->per_layer_input > 0 && (status = per_layer_inputs(context, tokens, n, per_row, err)) != TQ_OK) {
        return status;
    }
    rope_tables(b->inv_freq_local, c->head_dim_local / 2, pos0, n, b->rope_cos_local, b->rope_sin_local);
    rope_tables(b->inv_freq_global, c->head_dim / 2, pos0, n, b->rope_cos_global, b->rope_sin_global);

    for (int l = 0; l < c->n_layers; l++) {
        if ((status = attention_block(context, l, pos0, n, tree, err)) != TQ_OK ||
            (status = ffn_block(context, l, n, per_row, err)) != TQ_OK) {
            return status;
        }
        if (c->per_layer_input > 0 && (status = per_layer_block(context, l, n, per_row, err)) != TQ_OK) {
            return status;
        }
        const float scale = g->layers[l].output_scale;
        if (scale != 1.0f) {
            const int64_t values = n * c->hidden;
            for (int64_t i = 0; i < values; i++) {
                b->x[i] *= scale;
            }
        }
    }
    return TQ_OK;
}
