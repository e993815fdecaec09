/* Model creation: Gemma 3 configuration from GGUF metadata, weight tensors with
 * shape checks, buffers for the forward pass (model_forward.c). Gemma 4 files are
 * read by model_gemma4.c. */
#include "model.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf_weights.h"
#include "model_internal.h"

/* ---- Configuration ------------------------------------------------------------ */

/* Read an optional u32 key: *out keeps its default when the key is absent. */
static tq_status get_optional_u32(const tq_gguf *gguf, const char *key, uint32_t *out, tq_error *err)
{
    if (tq_gguf_find_kv(gguf, key) == NULL) {
        return TQ_OK;
    }
    return tq_gguf_get_u32(gguf, key, out, err);
}

static tq_status get_optional_f32(const tq_gguf *gguf, const char *key, float *out, tq_error *err)
{
    if (tq_gguf_find_kv(gguf, key) == NULL) {
        return TQ_OK;
    }
    return tq_gguf_get_f32(gguf, key, out, err);
}

static tq_status get_positive_int(const tq_gguf *gguf, const char *key, int *out, tq_error *err)
{
    uint32_t value = 0;
    tq_status status = tq_gguf_get_u32(gguf, key, &value, err);
    if (status != TQ_OK) {
        return status;
    }
    /* The limit keeps every product of two dimensions far inside int64 and size_t. */
    if (value == 0 || value > (1u << 24)) {
        return tq_error_set(err, TQ_ERR_FORMAT, "metadata %s = %u is out of range; expected 1 to %u", key, value,
                            1u << 24);
    }
    *out = (int)value;
    return TQ_OK;
}

tq_status tq_model_check_layer_count(const tq_gguf *gguf, const char *key, int n_layers, tq_error *err)
{
    const uint64_t n_tensors = tq_gguf_n_tensors(gguf);
    if ((uint64_t)n_layers > n_tensors) {
        return tq_error_set(err, TQ_ERR_FORMAT,
                            "metadata %s = %d exceeds the %llu tensors of the file, but every layer has its own "
                            "tensors; the file is corrupt",
                            key, n_layers, (unsigned long long)n_tensors);
    }
    return TQ_OK;
}

static tq_status read_config(const tq_gguf *gguf, tq_model_config *config, tq_error *err)
{
    memset(config, 0, sizeof(*config));
    tq_gguf_string architecture;
    tq_status status = tq_gguf_get_string(gguf, "general.architecture", &architecture, err);
    if (status != TQ_OK) {
        return status;
    }
    if (architecture.len != 6 || memcmp(architecture.data, "gemma3", 6) != 0) {
        int name_length = architecture.len < 64 ? (int)architecture.len : 64;
        return tq_error_set(err, TQ_ERR_UNSUPPORTED,
                            "model architecture '%.*s' is not supported; this runtime runs 'gemma3' and 'gemma4' "
                            "models",
                            name_length,
                            architecture.data);
    }
    snprintf(config->architecture, sizeof(config->architecture), "gemma3");

    if ((status = get_positive_int(gguf, "gemma3.block_count", &config->n_layers, err)) != TQ_OK ||
        (status = get_positive_int(gguf, "gemma3.embedding_length", &config->hidden, err)) != TQ_OK ||
        (status = get_positive_int(gguf, "gemma3.feed_forward_length", &config->ffn, err)) != TQ_OK ||
        (status = get_positive_int(gguf, "gemma3.attention.head_count", &config->n_heads, err)) != TQ_OK ||
        (status = get_positive_int(gguf, "gemma3.attention.head_count_kv", &config->n_kv_heads, err)) != TQ_OK ||
        (status = get_positive_int(gguf, "gemma3.attention.key_length", &config->head_dim, err)) != TQ_OK ||
        (status = tq_model_check_layer_count(gguf, "gemma3.block_count", config->n_layers, err)) != TQ_OK) {
        return status;
    }
    int value_length = 0;
    if ((status = get_positive_int(gguf, "gemma3.attention.value_length", &value_length, err)) != TQ_OK) {
        return status;
    }
    if (value_length != config->head_dim) {
        return tq_error_set(err, TQ_ERR_UNSUPPORTED,
                            "gemma3.attention.value_length %d differs from key_length %d; only equal lengths are "
                            "supported",
                            value_length, config->head_dim);
    }
    if (config->n_heads % config->n_kv_heads != 0) {
        return tq_error_set(err, TQ_ERR_FORMAT,
                            "gemma3.attention.head_count %d is not a multiple of head_count_kv %d", config->n_heads,
                            config->n_kv_heads);
    }
    if (config->head_dim % 32 != 0) {
        return tq_error_set(err, TQ_ERR_UNSUPPORTED,
                            "gemma3.attention.key_length %d is not supported; the KV cache needs a multiple of 32",
                            config->head_dim);
    }

    uint32_t context_length = 0;
    uint32_t sliding_window = 0;
    if ((status = tq_gguf_get_u32(gguf, "gemma3.context_length", &context_length, err)) != TQ_OK ||
        (status = tq_gguf_get_u32(gguf, "gemma3.attention.sliding_window", &sliding_window, err)) != TQ_OK) {
        return status;
    }
    if (context_length == 0 || sliding_window == 0) {
        return tq_error_set(err, TQ_ERR_FORMAT,
                            "gemma3.context_length (%u) and gemma3.attention.sliding_window (%u) must be positive",
                            context_length, sliding_window);
    }
    config->context_length = context_length;
    config->sliding_window = sliding_window;

    if ((status = tq_gguf_get_f32(gguf, "gemma3.attention.layer_norm_rms_epsilon", &config->rms_eps, err)) !=
            TQ_OK ||
        (status = tq_gguf_get_f32(gguf, "gemma3.rope.freq_base", &config->rope_base_global, err)) != TQ_OK) {
        return status;
    }
    if (!(config->rms_eps >= 0.0f) || !(config->rope_base_global > 1.0f)) {
        return tq_error_set(err, TQ_ERR_FORMAT,
                            "invalid gemma3 metadata: layer_norm_rms_epsilon %g must be >= 0 and rope.freq_base %g "
                            "above 1",
                            (double)config->rms_eps, (double)config->rope_base_global);
    }

    /* Gemma 3 constants that GGUF files do not store; both llama.cpp (gemma3
     * hparams) and transformers (Gemma3Config: rope_local_base_freq=10000,
     * sliding_window_pattern=6) hard-code them. */
    config->rope_base_local = 10000.0f;
    config->sliding_window_pattern = 6;
    /* Hugging Face configs store the sliding layers' base (rope_local_base_freq); the
     * directory loader passes it under this optional key. */
    if ((status = get_optional_f32(gguf, "gemma3.rope.freq_base_swa", &config->rope_base_local, err)) != TQ_OK) {
        return status;
    }
    if (!(config->rope_base_local > 1.0f)) {
        return tq_error_set(err, TQ_ERR_FORMAT, "gemma3.rope.freq_base_swa %g must be above 1",
                            (double)config->rope_base_local);
    }

    /* Linear RoPE scaling applies to global layers only (4B and larger use factor 8). */
    config->rope_scale_global = 1.0f;
    const tq_gguf_kv *scaling_type = tq_gguf_find_kv(gguf, "gemma3.rope.scaling.type");
    if (scaling_type != NULL) {
        tq_gguf_string type_name;
        if ((status = tq_gguf_get_string(gguf, "gemma3.rope.scaling.type", &type_name, err)) != TQ_OK) {
            return status;
        }
        int is_linear = type_name.len == 6 && memcmp(type_name.data, "linear", 6) == 0;
        int is_none = type_name.len == 4 && memcmp(type_name.data, "none", 4) == 0;
        if (!is_linear && !is_none) {
            int name_length = type_name.len < 64 ? (int)type_name.len : 64;
            return tq_error_set(err, TQ_ERR_UNSUPPORTED,
                                "gemma3.rope.scaling.type '%.*s' is not supported; expected 'linear' or 'none'",
                                name_length, type_name.data);
        }
        if (is_linear) {
            if ((status = tq_gguf_get_f32(gguf, "gemma3.rope.scaling.factor", &config->rope_scale_global, err)) !=
                TQ_OK) {
                return status;
            }
            if (!(config->rope_scale_global > 0.0f)) {
                return tq_error_set(err, TQ_ERR_FORMAT, "gemma3.rope.scaling.factor %g must be positive",
                                    (double)config->rope_scale_global);
            }
        }
    }

    /* Queries are scaled by query_pre_attn_scalar^-1/2. transformers' configs set
     * it to head_dim for 270M, 1B, 4B and 12B, and to hidden / heads = 168 for
     * 27B (62 layers), which is also how llama.cpp picks it. GGUF files from
     * llama.cpp's converter do not store it; an optional key overrides the rule. */
    config->query_pre_attn_scalar = (float)config->head_dim;
    if (config->n_layers == 62) {
        config->query_pre_attn_scalar = (float)config->hidden / (float)config->n_heads;
    }
    if ((status = get_optional_f32(gguf, "gemma3.attention.query_pre_attn_scalar", &config->query_pre_attn_scalar,
                                   err)) != TQ_OK) {
        return status;
    }
    if (!(config->query_pre_attn_scalar > 0.0f)) {
        return tq_error_set(err, TQ_ERR_FORMAT, "gemma3.attention.query_pre_attn_scalar %g must be positive",
                            (double)config->query_pre_attn_scalar);
    }
    uint32_t pattern = (uint32_t)config->sliding_window_pattern;
    if ((status = get_optional_u32(gguf, "gemma3.attention.sliding_window_pattern", &pattern, err)) != TQ_OK) {
        return status;
    }
    if (pattern == 0 || pattern > 1024) {
        return tq_error_set(err, TQ_ERR_FORMAT, "gemma3.attention.sliding_window_pattern %u is out of range 1..1024",
                            pattern);
    }
    config->sliding_window_pattern = (int)pattern;

    /* transformers multiplies embeddings by sqrt(hidden) cast to the model dtype;
     * in float32 that is sqrtf. */
    config->embedding_scale = sqrtf((float)config->hidden);
    config->head_dim_local = config->head_dim;
    config->rope_dims_global = config->head_dim;
    return TQ_OK;
}

int tq_model_layer_is_global(const tq_model_config *config, int layer)
{
    if (config->layer_is_global != NULL) {
        return config->layer_is_global[layer];
    }
    return layer % config->sliding_window_pattern == config->sliding_window_pattern - 1;
}

/* ---- Tensors ------------------------------------------------------------------ */

static tq_status find_tensor(const tq_gguf *gguf, const char *name, int64_t ne0, int64_t ne1,
                             const tq_gguf_tensor **out, tq_error *err)
{
    const tq_gguf_tensor *tensor = tq_gguf_find_tensor(gguf, name);
    if (tensor == NULL) {
        return tq_error_set(err, TQ_ERR_FORMAT, "tensor %s is missing from the GGUF file", name);
    }
    if ((int64_t)tensor->ne[0] != ne0 || (int64_t)tensor->ne[1] != ne1 || tensor->ne[2] != 1 || tensor->ne[3] != 1) {
        /* Weights read from safetensors name their source tensor, whose shape lists the
         * dimensions in the opposite order: [rows, values per row]. */
        const char *origin = tq_gguf_tensor_origin(gguf, tensor);
        if (origin != NULL) {
            return tq_error_set(err, TQ_ERR_FORMAT,
                                "tensor %s has shape [%llu, %llu]; the model configuration (config.json) expects "
                                "[%lld, %lld]",
                                origin, (unsigned long long)tensor->ne[1], (unsigned long long)tensor->ne[0],
                                (long long)ne1, (long long)ne0);
        }
        return tq_error_set(err, TQ_ERR_FORMAT,
                            "tensor %s has shape [%llu, %llu, %llu, %llu]; the model configuration expects [%lld, "
                            "%lld]",
                            name, (unsigned long long)tensor->ne[0], (unsigned long long)tensor->ne[1],
                            (unsigned long long)tensor->ne[2], (unsigned long long)tensor->ne[3], (long long)ne0,
                            (long long)ne1);
    }
    *out = tensor;
    return TQ_OK;
}

static tq_status load_norm(const tq_gguf *gguf, const char *name, int64_t n, const float **out, tq_error *err)
{
    const tq_gguf_tensor *tensor = NULL;
    tq_status status = find_tensor(gguf, name, n, 1, &tensor, err);
    if (status != TQ_OK) {
        return status;
    }
    if (tensor->type != TQ_TYPE_F32) {
        return tq_error_set(err, TQ_ERR_UNSUPPORTED, "norm tensor %s has type %s; only f32 norms are supported",
                            name, tq_type_name(tensor->type));
    }
    if (((uintptr_t)tensor->data % sizeof(float)) != 0) {
        return tq_error_set(err, TQ_ERR_FORMAT, "tensor %s data is not aligned to 4 bytes", name);
    }
    *out = (const float *)tensor->data;
    return TQ_OK;
}

static tq_status load_matrix(const tq_gguf *gguf, const char *name, int64_t n_in, int64_t n_out, tq_weight *out,
                             tq_error *err)
{
    const tq_gguf_tensor *tensor = NULL;
    tq_status status = find_tensor(gguf, name, n_in, n_out, &tensor, err);
    if (status != TQ_OK) {
        return status;
    }
    if (!tq_type_supported(tensor->type)) {
        return tq_error_set(err, TQ_ERR_UNSUPPORTED, "tensor %s has type %s, which has no matmul kernel", name,
                            tq_type_name(tensor->type));
    }
    status = tq_weight_init(out, tensor->type, n_in, n_out, tensor->data, err);
    if (status != TQ_OK) {
        char inner[TQ_ERROR_MSG_SIZE];
        memcpy(inner, err->message, sizeof(inner));
        return tq_error_set(err, status, "tensor %s: %s", name, inner);
    }
    return TQ_OK;
}

tq_status tq_model_load_norm(const tq_gguf *gguf, const char *name, int64_t n, const float **out, tq_error *err)
{
    return load_norm(gguf, name, n, out, err);
}

tq_status tq_model_load_matrix(const tq_gguf *gguf, const char *name, int64_t n_in, int64_t n_out, tq_weight *out,
                               tq_error *err)
{
    return load_matrix(gguf, name, n_in, n_out, out, err);
}

static tq_status load_layer(const tq_gguf *gguf, const tq_model_config *c, int l, tq_layer_weights *w,
                            tq_error *err)
{
    char name[96];
    tq_status status;
    const int64_t q_dim = (int64_t)c->n_heads * c->head_dim;
    const int64_t kv_dim = (int64_t)c->n_kv_heads * c->head_dim;

#define TQ_LAYER_NAME(suffix) (snprintf(name, sizeof(name), "blk.%d." suffix ".weight", l), name)
    if ((status = load_norm(gguf, TQ_LAYER_NAME("attn_norm"), c->hidden, &w->attn_norm, err)) != TQ_OK ||
        (status = load_matrix(gguf, TQ_LAYER_NAME("attn_q"), c->hidden, q_dim, &w->attn_q, err)) != TQ_OK ||
        (status = load_matrix(gguf, TQ_LAYER_NAME("attn_k"), c->hidden, kv_dim, &w->attn_k, err)) != TQ_OK ||
        (status = load_matrix(gguf, TQ_LAYER_NAME("attn_v"), c->hidden, kv_dim, &w->attn_v, err)) != TQ_OK ||
        (status = load_norm(gguf, TQ_LAYER_NAME("attn_q_norm"), c->head_dim, &w->attn_q_norm, err)) != TQ_OK ||
        (status = load_norm(gguf, TQ_LAYER_NAME("attn_k_norm"), c->head_dim, &w->attn_k_norm, err)) != TQ_OK ||
        (status = load_matrix(gguf, TQ_LAYER_NAME("attn_output"), q_dim, c->hidden, &w->attn_output, err)) !=
            TQ_OK ||
        (status = load_norm(gguf, TQ_LAYER_NAME("post_attention_norm"), c->hidden, &w->post_attention_norm, err)) !=
            TQ_OK ||
        (status = load_norm(gguf, TQ_LAYER_NAME("ffn_norm"), c->hidden, &w->ffn_norm, err)) != TQ_OK ||
        (status = load_matrix(gguf, TQ_LAYER_NAME("ffn_gate"), c->hidden, c->ffn, &w->ffn_gate, err)) != TQ_OK ||
        (status = load_matrix(gguf, TQ_LAYER_NAME("ffn_up"), c->hidden, c->ffn, &w->ffn_up, err)) != TQ_OK ||
        (status = load_matrix(gguf, TQ_LAYER_NAME("ffn_down"), c->ffn, c->hidden, &w->ffn_down, err)) != TQ_OK ||
        (status = load_norm(gguf, TQ_LAYER_NAME("post_ffw_norm"), c->hidden, &w->post_ffw_norm, err)) != TQ_OK) {
        return status;
    }
#undef TQ_LAYER_NAME
    return TQ_OK;
}

static tq_status load_weights(tq_model *model, tq_error *err)
{
    tq_model_config *c = &model->config;
    const tq_gguf_tensor *embd = tq_gguf_find_tensor(model->gguf, "token_embd.weight");
    if (embd == NULL) {
        return tq_error_set(err, TQ_ERR_FORMAT, "tensor token_embd.weight is missing from the GGUF file");
    }
    if (embd->ne[1] == 0 || embd->ne[1] > INT32_MAX) {
        return tq_error_set(err, TQ_ERR_FORMAT, "tensor token_embd.weight has %llu rows; expected 1 to %d",
                            (unsigned long long)embd->ne[1], INT32_MAX);
    }
    c->n_vocab = (int)embd->ne[1];
    tq_status status = load_matrix(model->gguf, "token_embd.weight", c->hidden, c->n_vocab, &model->token_embd, err);
    if (status != TQ_OK) {
        return status;
    }
    /* Gemma ties the LM head to the embedding; use a separate output.weight if a
     * converter wrote one. */
    model->lm_head = model->token_embd;
    if (tq_gguf_find_tensor(model->gguf, "output.weight") != NULL) {
        status = load_matrix(model->gguf, "output.weight", c->hidden, c->n_vocab, &model->lm_head, err);
        if (status != TQ_OK) {
            return status;
        }
    }
    status = load_norm(model->gguf, "output_norm.weight", c->hidden, &model->output_norm, err);
    if (status != TQ_OK) {
        return status;
    }
    model->layers = calloc((size_t)c->n_layers, sizeof(tq_layer_weights));
    if (model->layers == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating %d layers", c->n_layers);
    }
    for (int l = 0; l < c->n_layers; l++) {
        status = load_layer(model->gguf, c, l, &model->layers[l], err);
        if (status != TQ_OK) {
            return status;
        }
    }
    return TQ_OK;
}

/* ---- Buffers ------------------------------------------------------------------ */

static float *alloc_floats(int64_t rows, int64_t cols, tq_error *err, const char *buffer_name)
{
    size_t count, bytes;
    if (!tq_mul_size((size_t)rows, (size_t)cols, &count) || !tq_mul_size(count, sizeof(float), &bytes)) {
        tq_error_set(err, TQ_ERR_NOMEM, "buffer %s of %lld x %lld floats overflows size_t", buffer_name, (long long)rows,
                     (long long)cols);
        return NULL;
    }
    float *buffer = tq_aligned_alloc(bytes);
    if (buffer == NULL) {
        tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating buffer %s (%zu bytes)", buffer_name, bytes);
    }
    return buffer;
}

static tq_status alloc_buffers(tq_context *context, tq_error *err)
{
    const tq_model_config *c = &context->model->config;
    const int64_t nb = context->n_batch;
    const int64_t q_dim = (int64_t)c->n_heads * c->head_dim;
    const int64_t kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
    tq_forward_buffers *b = &context->buffers;
    if ((b->x = alloc_floats(nb, c->hidden, err, "x")) == NULL ||
        (b->x_norm = alloc_floats(nb, c->hidden, err, "x_norm")) == NULL ||
        (b->q = alloc_floats(nb, q_dim, err, "q")) == NULL || (b->k = alloc_floats(nb, kv_dim, err, "k")) == NULL ||
        (b->v = alloc_floats(nb, kv_dim, err, "v")) == NULL ||
        (b->attention = alloc_floats(nb, q_dim, err, "attention")) == NULL ||
        (b->projection = alloc_floats(nb, c->hidden, err, "projection")) == NULL ||
        (b->gate = alloc_floats(nb, c->ffn, err, "gate")) == NULL ||
        (b->up = alloc_floats(nb, c->ffn, err, "up")) == NULL ||
        (b->rope_cos_local = alloc_floats(nb, c->head_dim / 2, err, "rope_cos_local")) == NULL ||
        (b->rope_sin_local = alloc_floats(nb, c->head_dim / 2, err, "rope_sin_local")) == NULL ||
        (b->rope_cos_global = alloc_floats(nb, c->head_dim / 2, err, "rope_cos_global")) == NULL ||
        (b->rope_sin_global = alloc_floats(nb, c->head_dim / 2, err, "rope_sin_global")) == NULL ||
        (b->inv_freq_local = alloc_floats(1, c->head_dim / 2, err, "inv_freq_local")) == NULL ||
        (b->inv_freq_global = alloc_floats(1, c->head_dim / 2, err, "inv_freq_global")) == NULL) {
        return err->status;
    }
    /* Inverse frequencies as transformers computes them in float32:
     * base^-(2i / head_dim), divided by the linear scaling factor on global layers. */
    for (int i = 0; i < c->head_dim / 2; i++) {
        float exponent = (float)(2 * i) / (float)c->head_dim;
        b->inv_freq_local[i] = 1.0f / powf(c->rope_base_local, exponent);
        b->inv_freq_global[i] = 1.0f / powf(c->rope_base_global, exponent) / c->rope_scale_global;
    }
    return TQ_OK;
}

static void free_buffers(tq_forward_buffers *b)
{
    float **all[] = {&b->x, &b->x_norm, &b->q, &b->k, &b->v, &b->attention, &b->projection, &b->gate, &b->up,
                     &b->rope_cos_local, &b->rope_sin_local, &b->rope_cos_global, &b->rope_sin_global,
                     &b->inv_freq_local, &b->inv_freq_global};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        tq_aligned_free(*all[i]);
        *all[i] = NULL;
    }
    tq_aligned_free(b->attention_scratch);
    tq_aligned_free(b->attention_partials);
    b->attention_scratch = NULL;
    b->attention_partials = NULL;
    b->attention_scratch_threads = 0;
}

/* ---- Create and free ------------------------------------------------------------ */

#define TQ_DEFAULT_BATCH 512

/* Flags of the layers listed in params->kv_f16_layers (NULL when the list is empty). */
static tq_status kv_f16_layer_flags(const tq_context_params *params, int n_layers, uint8_t **out, tq_error *err)
{
    *out = NULL;
    if (params->n_kv_f16_layers <= 0) {
        return TQ_OK;
    }
    uint8_t *flags = calloc((size_t)n_layers, 1);
    if (flags == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for the f16 layer flags");
    }
    for (int i = 0; i < params->n_kv_f16_layers; i++) {
        const int index = params->kv_f16_layers[i];
        const int layer = index < 0 ? n_layers + index : index;
        if (layer < 0 || layer >= n_layers) {
            free(flags);
            return tq_error_set(err, TQ_ERR_INVALID,
                                "kv_f16_layers entry %d is outside the model's %d layers; use 0 to %d, or -1 for "
                                "the last",
                                index, n_layers, n_layers - 1);
        }
        flags[layer] = 1;
    }
    *out = flags;
    return TQ_OK;
}

/* RoPE pairs whose period exceeds this many positions count as slow: their key mean moves
 * little over a context, so subtracting it removes a shared offset rather than content. */
#define TQ_SLOW_ROPE_PERIOD 2048.0

/* Key balancing tables of every layer for the KV cache (tq_kv_cache_config.key_scale and
 * key_center), derived from the weights alone.
 *
 * Queries and keys leave their RMSNorms multiplied per channel by the norm weights wq and
 * wk, so channel i of q . k carries wq[i] * wk[i] of the score. A random rotation spreads
 * the quantization error evenly over channels; the score error is smallest when keys are
 * scaled by s = sqrt(wq / wk) (and queries by 1 / s) before quantizing, which gives every
 * channel the same share of q and k. RoPE mixes channel i with i + head_dim/2, so both
 * weights are taken as the RMS over that pair. A floor of 1e-3 times the largest weight
 * keeps a channel with a zero weight finite. Scales are divided by their geometric mean so
 * that row norms keep their size (the codecs store them as f16).
 *
 * Centering flags mark the slow RoPE pairs (period above TQ_SLOW_ROPE_PERIOD positions),
 * where Gemma's keys carry a large mean shared by every position. */
static tq_status key_balance_tables(const tq_model *model, float **scale_out, uint8_t **center_out, tq_error *err)
{
    const tq_model_config *c = &model->config;
    const int d = c->head_dim;
    const int half = d / 2;
    float *scale = malloc((size_t)c->n_layers * (size_t)d * sizeof(float));
    uint8_t *center = malloc((size_t)c->n_layers * (size_t)d);
    if (scale == NULL || center == NULL) {
        free(scale);
        free(center);
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for the key balancing tables");
    }
    for (int l = 0; l < c->n_layers; l++) {
        const float *wq = model->layers[l].attn_q_norm;
        const float *wk = model->layers[l].attn_k_norm;
        float *s = scale + (size_t)l * (size_t)d;
        float max_q = 0.0f, max_k = 0.0f;
        for (int i = 0; i < d; i++) {
            max_q = fabsf(wq[i]) > max_q ? fabsf(wq[i]) : max_q;
            max_k = fabsf(wk[i]) > max_k ? fabsf(wk[i]) : max_k;
        }
        double log_sum = 0.0;
        for (int j = 0; j < half; j++) {
            const float pair_q = sqrtf(0.5f * (wq[j] * wq[j] + wq[j + half] * wq[j + half])) + 1e-3f * max_q;
            const float pair_k = sqrtf(0.5f * (wk[j] * wk[j] + wk[j + half] * wk[j + half])) + 1e-3f * max_k;
            /* Both floors are positive unless a whole norm is zero; fall back to 1 then. */
            s[j] = pair_q > 0.0f && pair_k > 0.0f ? sqrtf(pair_q / pair_k) : 1.0f;
            s[j + half] = s[j];
            log_sum += 2.0 * log((double)s[j]);
        }
        const float norm = (float)exp(-log_sum / d);
        const int global = tq_model_layer_is_global(c, l);
        const double base = global ? c->rope_base_global : c->rope_base_local;
        const double linear = global ? c->rope_scale_global : 1.0;
        for (int j = 0; j < half; j++) {
            s[j] *= norm;
            s[j + half] = s[j];
            /* Pair j turns by base^(-2j/d) / linear radians per position. */
            const double period = 6.283185307179586 * pow(base, 2.0 * j / d) * linear;
            center[(size_t)l * (size_t)d + (size_t)j] = period > TQ_SLOW_ROPE_PERIOD;
            center[(size_t)l * (size_t)d + (size_t)j + (size_t)half] = period > TQ_SLOW_ROPE_PERIOD;
        }
    }
    *scale_out = scale;
    *center_out = center;
    return TQ_OK;
}

/* Index order of n scores, largest first (ties keep the lower index first). */
static void rank_descending(const double *score, int n, int *order)
{
    for (int i = 0; i < n; i++) {
        int j = i;
        while (j > 0 && score[order[j - 1]] < score[i]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
}

/* Channel order of one layer for a split codec side (tq_kv_cache_config.channel_order_k and
 * _v): the d / 2 channels flagged in first, in increasing order, then the others. */
static void order_from_flags(const uint8_t *first, int d, int *order)
{
    int next = 0;
    for (int pass = 1; pass >= 0; pass--) {
        for (int i = 0; i < d; i++) {
            if (first[i] == pass) {
                order[next++] = i;
            }
        }
    }
}

/* Channel orders of every layer for the split cache types (tq3.5, tq2.5), derived from the
 * weights alone: the half of the channels with the most expected energy goes first and gets
 * the wider codes.
 *
 * Keys: channel i of q . k carries wq[i] * wk[i] of the score (see key_balance_tables), and
 * RoPE mixes channel i with i + head_dim/2, so whole pairs are ranked by the product of their
 * RMS query and key norm weights. Values: channel c of head g is the dot product of the normed
 * input (unit RMS per channel on average) with row g * head_dim + c of the V projection. Its
 * energy is therefore taken as sum_i (W_v[row][i] * attn_norm[i])^2, summed over KV heads. */
static tq_status channel_order_tables(const tq_model *model, int **order_k_out, int **order_v_out, tq_error *err)
{
    const tq_model_config *c = &model->config;
    const int d = c->head_dim;
    const int half = d / 2;
    if (d < 2 || d % 2 != 0) {
        return tq_error_set(err, TQ_ERR_INVALID, "head_dim %d must be even for the KV channel order tables", d);
    }
    int *order_k = malloc((size_t)c->n_layers * (size_t)d * sizeof(int));
    int *order_v = malloc((size_t)c->n_layers * (size_t)d * sizeof(int));
    double *score = malloc((size_t)d * sizeof(double));
    int *rank = malloc((size_t)d * sizeof(int));
    uint8_t *first = malloc((size_t)d);
    float *row = malloc((size_t)c->hidden * sizeof(float));
    tq_status status = TQ_OK;
    if (order_k == NULL || order_v == NULL || score == NULL || rank == NULL || first == NULL || row == NULL) {
        status = tq_error_set(err, TQ_ERR_NOMEM, "out of memory for the KV channel order tables");
    }
    for (int l = 0; status == TQ_OK && l < c->n_layers; l++) {
        const tq_layer_weights *w = &model->layers[l];

        for (int j = 0; j < half; j++) {
            const double pair_q = sqrt(0.5 * ((double)w->attn_q_norm[j] * w->attn_q_norm[j] +
                                              (double)w->attn_q_norm[j + half] * w->attn_q_norm[j + half]));
            const double pair_k = sqrt(0.5 * ((double)w->attn_k_norm[j] * w->attn_k_norm[j] +
                                              (double)w->attn_k_norm[j + half] * w->attn_k_norm[j + half]));
            score[j] = pair_q * pair_k;
        }
        rank_descending(score, half, rank);
        memset(first, 0, (size_t)d);
        for (int r = 0; r < half / 2; r++) {
            first[rank[r]] = 1;
            first[rank[r] + half] = 1;
        }
        order_from_flags(first, d, order_k + (size_t)l * (size_t)d);

        for (int i = 0; i < d; i++) {
            score[i] = 0.0;
        }
        for (int g = 0; status == TQ_OK && g < c->n_kv_heads; g++) {
            for (int i = 0; i < d; i++) {
                status = tq_weight_get_row(&w->attn_v, (int64_t)g * d + i, row, err);
                if (status != TQ_OK) {
                    break;
                }
                double energy = 0.0;
                for (int k = 0; k < c->hidden; k++) {
                    const double x = (double)row[k] * (double)w->attn_norm[k];
                    energy += x * x;
                }
                score[i] += energy;
            }
        }
        rank_descending(score, d, rank);
        memset(first, 0, (size_t)d);
        for (int r = 0; r < half; r++) {
            first[rank[r]] = 1;
        }
        order_from_flags(first, d, order_v + (size_t)l * (size_t)d);
    }
    free(score);
    free(rank);
    free(first);
    free(row);
    if (status != TQ_OK) {
        free(order_k);
        free(order_v);
        return status;
    }
    *order_k_out = order_k;
    *order_v_out = order_v;
    return TQ_OK;
}

static tq_status check_context_params(const tq_context_params *params, tq_error *err)
{
    if (params->threads < 0) {
        return tq_error_set(err, TQ_ERR_INVALID, "threads must be >= 0 (0 uses the OpenMP default), got %d",
                            params->threads);
    }
    if (params->n_ctx < 0 || params->n_batch < 0) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "ctx must be >= 0 (0 uses the model's context length), got %lld; n_batch %lld must be "
                            ">= 0",
                            (long long)params->n_ctx, (long long)params->n_batch);
    }
    if (tq_kv_type_get(params->type_k) == NULL || tq_kv_type_get(params->type_v) == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "invalid KV cache type id (K %d, V %d)", (int)params->type_k,
                            (int)params->type_v);
    }
    if (params->n_kv_f16_layers < 0 || (params->n_kv_f16_layers > 0 && params->kv_f16_layers == NULL)) {
        return tq_error_set(err, TQ_ERR_INVALID, "kv_f16_layers is NULL but n_kv_f16_layers is %d",
                            params->n_kv_f16_layers);
    }
    const tq_qjl_precision *precision = &params->qjl_precision;
    if (precision->qjl_bits < 0 || precision->qjl_bits > 2 || precision->thinking_qjl_bits < 0 ||
        precision->thinking_qjl_bits > 2) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "qjl_bits %d and thinking_qjl_bits %d must be 1 or 2 (0 selects the default)",
                            precision->qjl_bits, precision->thinking_qjl_bits);
    }
    if (precision->think_token_id < TQ_THINK_TOKEN_NONE || precision->think_token_id > INT32_MAX) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "think_token_id %lld is invalid; use a token id, %d for the model's default or %d for none",
                            (long long)precision->think_token_id, TQ_THINK_TOKEN_DEFAULT, TQ_THINK_TOKEN_NONE);
    }
    return TQ_OK;
}

tq_status tq_context_create(const tq_model *model, const tq_context_params *params, tq_context **out,
                            tq_error *err)
{
    *out = NULL;
    tq_status status = check_context_params(params, err);
    if (status != TQ_OK) {
        return status;
    }
    const int gemma4 = model->gemma4 != NULL;
    tq_context *context = calloc(1, sizeof(*context));
    if (context == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating a model context");
    }
    const tq_model_config *c = &model->config;
    context->model = model;
    context->threads = params->threads;
    context->n_ctx = params->n_ctx > 0 ? params->n_ctx : c->context_length;
    context->n_batch = params->n_batch > 0 ? params->n_batch : TQ_DEFAULT_BATCH;
    if (context->n_batch > context->n_ctx) {
        context->n_batch = context->n_ctx;
    }
    status = alloc_buffers(context, err);
    if (status == TQ_OK) {
        status = tq_context_set_qjl_precision(context, &params->qjl_precision, gemma4, err);
    }
    if (status == TQ_OK && gemma4) {
        status = tq_gemma4_prepare(context, err);
    }
    if (status == TQ_OK) {
        uint8_t *layer_f16 = NULL;
        float *key_scale = NULL;
        uint8_t *key_center = NULL;
        status = kv_f16_layer_flags(params, c->n_layers, &layer_f16, err);
        /* TODO: key balancing tables for Gemma 4, whose layers differ in head size and
         * RoPE; its codec layers code the keys as they are for now. */
        if (status == TQ_OK && params->kv_balance_keys && !gemma4) {
            status = key_balance_tables(model, &key_scale, &key_center, err);
        }

        /* Gemma 3 writes and attends TQ_ATTENTION_BATCH positions at a time. Gemma 4 writes
         * a whole micro-batch first, because its shared-KV layers attend over the rows of an
         * earlier layer after that layer has written all of them. */
        int64_t cache_batch = context->n_batch;
        if (!gemma4 && cache_batch > TQ_ATTENTION_BATCH) {
            cache_batch = TQ_ATTENTION_BATCH;
        }
        tq_kv_cache_config cache_config = {
            .n_layers = c->n_layers,
            .n_kv_heads = c->n_kv_heads,
            .head_dim = c->head_dim,
            .n_ctx = context->n_ctx,
            .n_batch = cache_batch,
            .layer_window = model->layer_window,
            .type_k = params->type_k,
            .type_v = params->type_v,
            .isa = model->isa,
            .recent_f16 = params->kv_recent_f16,
            .recent_q8_0 = params->kv_recent_q8_0,
            .sink_f16 = params->kv_sink_f16,
            .layer_f16 = layer_f16,
            .key_scale = key_scale,
            .key_center = key_center,
            .layer_head_dim = gemma4 ? tq_gemma4_layer_head_dims(model->gemma4) : NULL,
            .layer_kv_source = gemma4 ? tq_gemma4_layer_kv_sources(model->gemma4) : NULL,
            .audio_codebook = model->placeholders.audio_codebook,
            .audio_codebook_count = model->placeholders.audio_codebook_count,
            .max_qjl_bits = tq_context_max_qjl_bits(context),
            .channel_order_k = model->kv_channel_order_k,
            .channel_order_v = model->kv_channel_order_v,
            .norm_correction = params->kv_norm_correction,
        };
        if (status == TQ_OK) {
            status = tq_kv_cache_create(&cache_config, &context->cache, err);
        }
        free(layer_f16);
        free(key_scale);
        free(key_center);
    }
    if (status != TQ_OK) {
        tq_context_free(context);
        return status;
    }
    *out = context;
    return TQ_OK;
}

void tq_context_free(tq_context *context)
{
    if (context == NULL) {
        return;
    }
    tq_kv_cache_free(context->cache);
    tq_gemma4_context_free(context->gemma4);
    free(context->thinking_state);
    free_buffers(&context->buffers);
    free(context);
}

/* Copy the placeholder settings into the model, with a copy of the audio codebook, after the
 * configuration is read: token ids must be in the vocabulary. */
static tq_status store_placeholders(tq_model *model, const tq_placeholder_params *params, tq_error *err)
{
    if (params == NULL) {
        return TQ_OK;
    }
    const int32_t ids[2] = {params->audio_token_id, params->image_token_id};
    const char *names[2] = {"audio_token_id", "image_token_id"};
    for (int i = 0; i < 2; i++) {
        if (ids[i] < -1 || ids[i] >= model->config.n_vocab) {
            return tq_error_set(err, TQ_ERR_INVALID, "%s %d is outside the vocabulary [0, %d); use -1 for none",
                                names[i], ids[i], model->config.n_vocab);
        }
    }
    model->placeholders.audio_token_id = params->audio_token_id;
    model->placeholders.image_token_id = params->image_token_id;
    if (params->audio_codebook != NULL) {
        model->audio_codebook = malloc((params->audio_codebook_count > 0 ? params->audio_codebook_count : 1) *
                                       sizeof(float));
        if (model->audio_codebook == NULL) {
            return tq_error_set(err, TQ_ERR_NOMEM, "out of memory copying the audio codebook");
        }
        memcpy(model->audio_codebook, params->audio_codebook, params->audio_codebook_count * sizeof(float));
        model->placeholders.audio_codebook = model->audio_codebook;
        model->placeholders.audio_codebook_count = params->audio_codebook_count;
    }
    return TQ_OK;
}

int tq_model_is_placeholder(const tq_model *model, int32_t token)
{
    return token >= 0 && (token == model->placeholders.audio_token_id || token == model->placeholders.image_token_id);
}

const tq_placeholder_params *tq_model_placeholders(const tq_model *model)
{
    return &model->placeholders;
}

/* Copy params into model->context_params, with a copy of the f16 layer list owned by the model. */
static tq_status store_context_params(tq_model *model, const tq_model_params *params, tq_error *err)
{
    tq_context_params *stored = &model->context_params;
    stored->threads = params->threads;
    stored->n_ctx = params->n_ctx;
    stored->n_batch = params->n_batch;
    stored->type_k = params->type_k;
    stored->type_v = params->type_v;
    stored->kv_recent_f16 = params->kv_recent_f16;
    stored->kv_sink_f16 = params->kv_sink_f16;
    stored->kv_balance_keys = params->kv_balance_keys ? 1 : 0;
    stored->kv_norm_correction = params->kv_norm_correction ? 1 : 0;
    stored->kv_recent_q8_0 = params->kv_recent_q8_0 ? 1 : 0;
    stored->qjl_precision = params->qjl_precision;
    stored->kv_f16_layers = NULL;
    stored->n_kv_f16_layers = 0;
    if (params->n_kv_f16_layers > 0 && params->kv_f16_layers != NULL) {
        model->kv_f16_layers = malloc((size_t)params->n_kv_f16_layers * sizeof(int));
        if (model->kv_f16_layers == NULL) {
            return tq_error_set(err, TQ_ERR_NOMEM, "out of memory copying %d kv_f16_layers entries",
                                params->n_kv_f16_layers);
        }
        memcpy(model->kv_f16_layers, params->kv_f16_layers, (size_t)params->n_kv_f16_layers * sizeof(int));
        stored->kv_f16_layers = model->kv_f16_layers;
        stored->n_kv_f16_layers = params->n_kv_f16_layers;
    }
    return TQ_OK;
}

tq_status tq_model_create(const tq_model_params *params, tq_model **out, tq_error *err)
{
    *out = NULL;
    tq_model *model = calloc(1, sizeof(*model));
    if (model == NULL) {
        tq_hf_weights_free(params->hf_weights);
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating the model");
    }
    /* The model owns the directory's weights from here on, also when creation fails. */
    model->hf_weights = params->hf_weights;
    model->exact_matmul = params->exact_matmul ? 1 : 0;
    model->placeholders.audio_token_id = -1;
    model->placeholders.image_token_id = -1;
    tq_status status = store_context_params(model, params, err);
    if (status == TQ_OK) {
        /* Checked before the file is opened, so a bad setting fails fast. */
        status = check_context_params(&model->context_params, err);
    }
    if (status == TQ_OK) {
        status = tq_isa_select(&model->isa, err);
    }
    if (status == TQ_OK && model->hf_weights != NULL) {
        model->gguf = tq_hf_weights_gguf(model->hf_weights);
    } else if (status == TQ_OK) {
        status = tq_gguf_open(params->path, &model->gguf, err);
    }
    const int gemma4 = status == TQ_OK && tq_gemma4_detect(model->gguf);
    if (status == TQ_OK) {
        status = gemma4 ? tq_gemma4_load(model, err) : read_config(model->gguf, &model->config, err);
    }
    if (status == TQ_OK && !gemma4) {
        status = load_weights(model, err);
    }
    /* Test models written without a vocabulary run on token ids alone. */
    if (status == TQ_OK && params->tokenizer != NULL) {
        if (tq_tokenizer_n_vocab(params->tokenizer) > model->config.n_vocab) {
            status = tq_error_set(err, TQ_ERR_FORMAT,
                                  "the tokenizer has %d tokens but the embedding has only %d rows; the tokenizer "
                                  "belongs to another model",
                                  tq_tokenizer_n_vocab(params->tokenizer), model->config.n_vocab);
        }
        model->tokenizer = (tq_tokenizer *)params->tokenizer;
        model->owns_tokenizer = 0;
    } else if (status == TQ_OK && tq_gguf_find_kv(model->gguf, "tokenizer.ggml.model") != NULL) {
        status = tq_tokenizer_create_from_gguf(model->gguf, &model->tokenizer, err);
        model->owns_tokenizer = 1;
    }
    if (status == TQ_OK) {
        const tq_model_config *c = &model->config;
        model->layer_window = calloc((size_t)c->n_layers, sizeof(int64_t));
        if (model->layer_window == NULL) {
            status = tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating the layer table");
        } else {
            for (int l = 0; l < c->n_layers; l++) {
                model->layer_window[l] = tq_model_layer_is_global(c, l) ? 0 : c->sliding_window;
            }
        }
    }
    if (status == TQ_OK) {
        status = store_placeholders(model, params->placeholders, err);
    }
    /* TODO: channel orders for Gemma 4 (per-layer head sizes); its split types keep the natural
     * channel order for now. */
    if (status == TQ_OK && !gemma4) {
        status = channel_order_tables(model, &model->kv_channel_order_k, &model->kv_channel_order_v, err);
    }
    if (status == TQ_OK) {
        status = tq_context_create(model, &model->context_params, &model->context, err);
    }
    if (status != TQ_OK) {
        tq_model_free(model);
        return status;
    }
    *out = model;
    return TQ_OK;
}

void tq_model_free(tq_model *model)
{
    if (model == NULL) {
        return;
    }
    tq_context_free(model->context);
    tq_gemma4_free(model->gemma4);
    free(model->kv_f16_layers);
    free(model->audio_codebook);
    free(model->kv_channel_order_k);
    free(model->kv_channel_order_v);
    free(model->layer_window);
    free(model->layers);
    if (model->owns_tokenizer) {
        tq_tokenizer_free(model->tokenizer);
    }
    if (model->hf_weights != NULL) {
        tq_hf_weights_free(model->hf_weights); /* closes the view in model->gguf */
    } else {
        tq_gguf_close(model->gguf);
    }
    free(model);
}

const tq_model_config *tq_model_get_config(const tq_model *model)
{
    return &model->config;
}

const tq_tokenizer *tq_model_tokenizer(const tq_model *model)
{
    return model->tokenizer;
}

const tq_gguf *tq_model_gguf(const tq_model *model)
{
    return model->gguf;
}

tq_kv_cache *tq_model_kv_cache(tq_model *model)
{
    return model->context->cache;
}

int64_t tq_model_n_ctx(const tq_model *model)
{
    return model->context->n_ctx;
}

int64_t tq_model_n_past(const tq_model *model)
{
    return tq_kv_cache_n_past(model->context->cache);
}

int tq_model_threads(const tq_model *model)
{
    return model->context->threads;
}

tq_isa tq_model_isa(const tq_model *model)
{
    return model->isa;
}

tq_status tq_model_truncate(tq_model *model, int64_t n_past, tq_error *err)
{
    return tq_context_truncate(model->context, n_past, err);
}

tq_context *tq_model_context(tq_model *model)
{
    return model->context;
}

tq_context_params tq_model_context_params(const tq_model *model)
{
    return model->context_params;
}

const tq_model *tq_context_model(const tq_context *context)
{
    return context->model;
}

tq_kv_cache *tq_context_kv_cache(tq_context *context)
{
    return context->cache;
}

int64_t tq_context_n_ctx(const tq_context *context)
{
    return context->n_ctx;
}

int64_t tq_context_n_past(const tq_context *context)
{
    return tq_kv_cache_n_past(context->cache);
}

int tq_context_threads(const tq_context *context)
{
    return context->threads;
}

tq_status tq_context_set_threads(tq_context *context, int threads, tq_error *err)
{
    if (threads < 0) {
        return tq_error_set(err, TQ_ERR_INVALID, "threads must be >= 0 (0 uses the OpenMP default), got %d",
                            threads);
    }
    context->threads = threads;
    return TQ_OK;
}

tq_status tq_context_truncate(tq_context *context, int64_t n_past, tq_error *err)
{
    context->tree_nodes = 0;
    return tq_kv_cache_truncate(context->cache, n_past, err);
}
