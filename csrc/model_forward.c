/* Gemma 3 forward pass: prompt tokens run through every matmul together, in
 * micro-batches of n_batch tokens; a decode step is a micro-batch of one. The
 * layers of Gemma 4 run in model_gemma4.c; this file runs the LM head of both.
 *
 * The attention block of a layer runs RMSNorm, the Q/K/V projections, per-head
 * RMSNorm of Q and K, and NeoX RoPE (dimension i pairs with i + head_dim / 2).
 * Attention over the KV cache follows (sliding window on local layers), then
 * the output projection, post-attention RMSNorm and the residual add. The FFN
 * block runs RMSNorm, down(gelu_tanh(gate x) * up x), post-FFN RMSNorm and the
 * residual add. The final RMSNorm and the LM head follow, with the logit softcap
 * of models that set one (Gemma 4).
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

tq_status tq_model_matmul(const tq_model *model, const tq_weight *w, const float *x, float *y, int64_t n_tokens,
                          int per_row, tq_error *err)
{
    if (model->exact_matmul) {
        return tq_matmul_exact(w, x, y, n_tokens, err);
    }
    return per_row ? tq_matmul_per_row(model->isa, w, x, y, n_tokens, err)
                   : tq_matmul(model->isa, w, x, y, n_tokens, err);
}

/* out = x / sqrt(mean(x^2) + eps) * weight, over n values. */
static void rms_norm(const float *x, const float *weight, int n, float eps, float *out)
{
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        sum += (double)x[i] * x[i];
    }
    const float scale = (float)(1.0 / sqrt(sum / n + eps));
    for (int i = 0; i < n; i++) {
        out[i] = x[i] * scale * weight[i];
    }
}

static void rms_norm_rows(const float *x, const float *weight, int64_t rows, int n, float eps, float *out)
{
#pragma omp parallel for if (rows > 1)
    for (int64_t t = 0; t < rows; t++) {
        rms_norm(x + t * n, weight, n, eps, out + t * n);
    }
}

/* cos and sin of pos * inv_freq[i] for the positions of one micro-batch. */
static void rope_tables(const float *inv_freq, int half, int64_t pos0, int64_t n, float *cos_out, float *sin_out)
{
    for (int64_t t = 0; t < n; t++) {
        /* float32 angles, as transformers computes them. */
        const float pos = (float)(pos0 + t);
        for (int i = 0; i < half; i++) {
            float angle = pos * inv_freq[i];
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

/* gelu with the tanh approximation (transformers' gelu_pytorch_tanh). Uses
 * 1 + tanh(y) = 2 - 2 / (1 + e^(2y)), because glibc's tanhf took 10% of a
 * prefill and expf is several times cheaper; the absolute error stays near
 * 1e-7, and e^(2y) overflowing to infinity still gives the limit 2. */
static inline float gelu_tanh(float x)
{
    const float sqrt_2_over_pi = 0.7978845608028654f;
    const float y = sqrt_2_over_pi * (x + 0.044715f * x * x * x);
    return 0.5f * x * (2.0f - 2.0f / (1.0f + expf(2.0f * y)));
}

/* Make sure every OpenMP thread of this call has attention scratch, and that
 * the partial results of the largest task split fit. Grows only when the
 * thread count rises, so decode steps do not allocate. */
static tq_status ensure_attention_scratch(tq_context *context, int threads, tq_error *err)
{
    tq_forward_buffers *b = &context->buffers;
    if (b->attention_scratch != NULL && b->attention_scratch_threads >= threads) {
        return TQ_OK;
    }
    const tq_model_config *c = &context->model->config;
    const int group = c->n_heads / c->n_kv_heads;
    size_t stride = (tq_kv_cache_scratch_bytes(context->cache, group) + 63) & ~(size_t)63;
    /* Tasks are split across positions only while n_batch x n_kv_heads < threads,
     * so there are at most max(n_batch, threads x threads) x n_kv_heads tasks. */
    size_t max_tasks = (size_t)context->n_batch > (size_t)threads * (size_t)threads
                           ? (size_t)context->n_batch
                           : (size_t)threads * (size_t)threads;
    /* A decoding query has up to threads ranges and TQ_ATTENTION_ROW_PARTS rows; a tree pass
     * has that for each node. */
    const size_t query_parts = (size_t)threads + TQ_ATTENTION_ROW_PARTS;
    const size_t tree_tasks = (size_t)TQ_TREE_MAX_NODES * query_parts;
    max_tasks = max_tasks > tree_tasks ? max_tasks : tree_tasks;
    size_t scratch_bytes, partial_count, partial_bytes;
    if (!tq_mul_size(stride, (size_t)threads, &scratch_bytes) ||
        !tq_mul_size(max_tasks * (size_t)c->n_kv_heads * (size_t)group, TQ_KV_PARTIAL_FLOATS(c->head_dim),
                     &partial_count) ||
        !tq_mul_size(partial_count, sizeof(float), &partial_bytes)) {
        return tq_error_set(err, TQ_ERR_NOMEM, "attention scratch for %d threads overflows size_t", threads);
    }
    uint8_t *scratch = tq_aligned_alloc(scratch_bytes);
    float *partials = tq_aligned_alloc(partial_bytes);
    if (scratch == NULL || partials == NULL) {
        tq_aligned_free(scratch);
        tq_aligned_free(partials);
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating %zu bytes of attention scratch",
                            scratch_bytes + partial_bytes);
    }
    tq_aligned_free(b->attention_scratch);
    tq_aligned_free(b->attention_partials);
    b->attention_scratch = scratch;
    b->attention_scratch_stride = stride;
    b->attention_scratch_threads = threads;
    b->attention_partials = partials;
    return TQ_OK;
}

static void attend_decode(tq_context *context, int l, int hd, int64_t pos, const float *queries, float *out);

/* Multiply-adds (positions x head_dim, summed over heads) below which decode
 * attention runs on the calling thread: roughly 0.1 ms of work on one core,
 * where starting a parallel region would cost a noticeable share. */
#define TQ_ATTENTION_PARALLEL_MIN (1 << 20)

/* Attention of the n tokens of a micro-batch on layer l with head size hd, from queries into out.
 * A task is one token and KV head, with all the query heads that share it, so
 * each K and V row is read once per token. When there are fewer tasks than
 * threads (decode), each task is also split into ranges of positions whose
 * partial softmax sums are merged afterwards. */
void tq_attend_layer(tq_context *context, int l, int hd, int64_t pos0, int64_t n, const float *queries, float *out)
{
    if (n == 1) {
        attend_decode(context, l, hd, pos0, queries, out);
        return;
    }
    const tq_model_config *c = &context->model->config;
    tq_forward_buffers *b = &context->buffers;
    const int q_dim = c->n_heads * hd;
    const int group = c->n_heads / c->n_kv_heads;
    const int n_kv = c->n_kv_heads;
    const size_t task_floats = (size_t)group * TQ_KV_PARTIAL_FLOATS(hd);
    const int threads = b->attention_scratch_threads;

    const int64_t first = tq_kv_cache_first_visible(context->cache, l, pos0 + n - 1);
    const int64_t visible = pos0 + n - first;
    int64_t splits = 1;
    if (n * n_kv < threads) {
        const int64_t chunks = (visible + TQ_KV_CHUNK - 1) / TQ_KV_CHUNK;
        splits = chunks < threads ? chunks : threads;
    }
    const int64_t tasks = n * n_kv * splits;
    const int parallel = tasks > 1 && (int64_t)c->n_heads * n * visible * hd >= TQ_ATTENTION_PARALLEL_MIN;

#pragma omp parallel for schedule(dynamic, 1) if (parallel)
    for (int64_t task = 0; task < tasks; task++) {
        const int64_t t = task / (n_kv * splits);
        const int g = (int)((task / splits) % n_kv);
        const int64_t part = task % splits;
        const int64_t pos = pos0 + t;
        const int64_t task_first = tq_kv_cache_first_visible(context->cache, l, pos);
        const int64_t span = pos - task_first + 1;
        const int64_t begin = task_first + span * part / splits;
        const int64_t end = task_first + span * (part + 1) / splits;
        void *scratch = b->attention_scratch + (size_t)omp_get_thread_num() * b->attention_scratch_stride;
        tq_kv_cache_attend_range(context->cache, l, g, pos, begin, end, group, queries + t * q_dim + g * group * hd,
                                 scratch, b->attention_partials + (size_t)task * task_floats);
    }

#pragma omp parallel for if (parallel && n > 1)
    for (int64_t merged = 0; merged < n * n_kv; merged++) {
        const int64_t t = merged / n_kv;
        const int g = (int)(merged % n_kv);
        tq_attention_merge((int)splits, group, hd, b->attention_partials + (size_t)merged * splits * task_floats,
                           out + t * q_dim + g * group * hd);
    }
}

/* Ranges the older positions [first, end) of a decoding query are split into: one per
 * TQ_KV_CHUNK positions up to the thread count when the KV heads alone do not keep every
 * thread busy. A function of the range, so a draft node splits as decoding does. */
static int64_t decode_splits(const tq_context *context, int64_t first, int64_t end)
{
    const int threads = context->buffers.attention_scratch_threads;
    if (end <= first) {
        return 0;
    }
    if (context->model->config.n_kv_heads >= threads) {
        return 1;
    }
    const int64_t chunks = (end - first + TQ_KV_CHUNK - 1) / TQ_KV_CHUNK;
    return chunks < threads ? chunks : threads;
}

/* Partial softmax sums of one decoding query group (the query heads of KV head g) at
 * position pos on layer l, written to parts in order: the ranges of the older positions,
 * then each of the newest TQ_ATTENTION_ROW_PARTS positions alone. row_slot[j] is where
 * position pos - j is stored (pos - j itself in plain decoding; a draft node's ancestors
 * sit elsewhere). Returns the number of parts. Only the range parts with index in
 * [part_begin, part_end) are computed, so decoding can spread them over threads. */
static int attend_query_parts(tq_context *context, int l, int g, int64_t pos, const int64_t *row_slot,
                              const float *query, int part_begin, int part_end, size_t part_floats, float *parts)
{
    const tq_model_config *c = &context->model->config;
    const int group = c->n_heads / c->n_kv_heads;
    tq_forward_buffers *b = &context->buffers;
    void *scratch = b->attention_scratch + (size_t)omp_get_thread_num() * b->attention_scratch_stride;
    const int64_t first = tq_kv_cache_first_visible(context->cache, l, pos);
    const int64_t rows_first = pos - TQ_ATTENTION_ROW_PARTS + 1 > first ? pos - TQ_ATTENTION_ROW_PARTS + 1 : first;
    const int64_t splits = decode_splits(context, first, rows_first);
    const int64_t span = rows_first - first;
    int n_parts = 0;

    for (int64_t part = 0; part < splits; part++, n_parts++) {
        if (n_parts < part_begin || n_parts >= part_end) {
            continue;
        }
        tq_kv_cache_attend_range(context->cache, l, g, pos, first + span * part / splits,
                                 first + span * (part + 1) / splits, group, query, scratch,
                                 parts + (size_t)n_parts * part_floats);
    }
    /* Oldest row first. Each row is read as a query at pos reads position q: from the f16
     * window when pos - q is inside it, and from the f16 sink when q is inside it. This also
     * holds for a draft path's rows, which are stored at other slots. */
    for (int64_t q = rows_first; q <= pos; q++, n_parts++) {
        if (n_parts < part_begin || n_parts >= part_end) {
            continue;
        }
        float *part = parts + (size_t)n_parts * part_floats;
        if (row_slot != NULL) {
            tq_kv_cache_attend_path_row(context->cache, l, g, q, row_slot[pos - q], pos - q, group, query, scratch,
                                        part);
        } else {
            tq_kv_cache_attend_range(context->cache, l, g, pos, q, q + 1, group, query, scratch, part);
        }
    }
    return n_parts;
}

/* Decoding attention of one token at pos on layer l: tasks are the parts of each KV head
 * (see attend_query_parts), merged per KV head afterwards. */
static void attend_decode(tq_context *context, int l, int hd, int64_t pos, const float *queries, float *out)
{
    const tq_model_config *c = &context->model->config;
    tq_forward_buffers *b = &context->buffers;
    const int group = c->n_heads / c->n_kv_heads;
    const int n_kv = c->n_kv_heads;
    const size_t task_floats = (size_t)group * TQ_KV_PARTIAL_FLOATS(hd);
    const int max_parts = b->attention_scratch_threads + TQ_ATTENTION_ROW_PARTS;
    const int64_t first = tq_kv_cache_first_visible(context->cache, l, pos);
    const int64_t visible = pos - first + 1;
    const int64_t rows_first = pos - TQ_ATTENTION_ROW_PARTS + 1 > first ? pos - TQ_ATTENTION_ROW_PARTS + 1 : first;
    const int n_parts = (int)(decode_splits(context, first, rows_first) + (pos - rows_first + 1));
    const int64_t tasks = (int64_t)n_kv * n_parts;
    const int parallel = (int64_t)c->n_heads * visible * hd >= TQ_ATTENTION_PARALLEL_MIN;

#pragma omp parallel for schedule(dynamic, 1) if (parallel)
    for (int64_t task = 0; task < tasks; task++) {
        const int g = (int)(task / n_parts);
        const int part = (int)(task % n_parts);
        attend_query_parts(context, l, g, pos, NULL, queries + g * group * hd, part, part + 1, task_floats,
                           b->attention_partials + (size_t)g * max_parts * task_floats);
    }
    for (int g = 0; g < n_kv; g++) {
        tq_attention_merge(n_parts, group, hd, b->attention_partials + (size_t)g * max_parts * task_floats,
                           out + g * group * hd);
    }
}

/* Tree attention of the n draft nodes of tree on layer l: node t at position pos0 +
 * depth[t] attends to the cached prefix and its own ancestors and itself, whose rows were written
 * at pos0 + node index. Its parts are exactly those of decoding that path (see
 * attend_query_parts). One task per node and KV head. */
void tq_attend_tree(tq_context *context, int l, int hd, int64_t pos0, int64_t n, const tq_tree *tree,
                    const float *queries, float *out)
{
    const tq_model_config *c = &context->model->config;
    tq_forward_buffers *b = &context->buffers;
    const int q_dim = c->n_heads * hd;
    const int group = c->n_heads / c->n_kv_heads;
    const int n_kv = c->n_kv_heads;
    const size_t task_floats = (size_t)group * TQ_KV_PARTIAL_FLOATS(hd);
    const int max_parts = b->attention_scratch_threads + TQ_ATTENTION_ROW_PARTS;

#pragma omp parallel for schedule(dynamic, 1) if (n * n_kv > 1)
    for (int64_t task = 0; task < n * n_kv; task++) {
        const int64_t t = task / n_kv;
        const int g = (int)(task % n_kv);
        const int64_t pos = pos0 + tree->depth[t];
        /* Slots of the positions pos, pos - 1, ..: the path up to the root, then the prefix. */
        int64_t row_slot[TQ_ATTENTION_ROW_PARTS];
        int64_t node = t;
        for (int j = 0; j < TQ_ATTENTION_ROW_PARTS; j++) {
            if (node >= 0) {
                row_slot[j] = pos0 + node;
                node = tree->parent[node];
            } else {
                row_slot[j] = pos - j;
            }
        }
        float *parts = b->attention_partials + (size_t)task * (size_t)max_parts * task_floats;
        const int n_parts = attend_query_parts(context, l, g, pos, row_slot, queries + t * q_dim + g * group * hd, 0,
                                               max_parts, task_floats, parts);
        tq_attention_merge(n_parts, group, hd, parts, out + t * q_dim + g * group * hd);
    }
}

/* One decoder layer on the n tokens of a micro-batch at positions pos0 .., or, with a tree,
 * on n draft nodes at positions pos0 + depth (their rows written at pos0 + node index). */
static tq_status forward_layer(tq_context *context, int l, int64_t pos0, int64_t n, const tq_tree *tree,
                               tq_error *err)
{
    const tq_model *model = context->model;
    const tq_model_config *c = &model->config;
    const tq_layer_weights *w = &model->layers[l];
    tq_forward_buffers *b = &context->buffers;
    const int hd = c->head_dim;
    const int half = hd / 2;
    const int q_dim = c->n_heads * hd;
    const int kv_dim = c->n_kv_heads * hd;
    const int global = tq_model_layer_is_global(c, l);
    const float *rope_cos = global ? b->rope_cos_global : b->rope_cos_local;
    const float *rope_sin = global ? b->rope_sin_global : b->rope_sin_local;
    const float query_scale = 1.0f / sqrtf(c->query_pre_attn_scalar);
    const int per_row = tree != NULL;
    tq_status status;

    /* Attention block. */
    rms_norm_rows(b->x, w->attn_norm, n, c->hidden, c->rms_eps, b->x_norm);
    if ((status = tq_model_matmul(model, &w->attn_q, b->x_norm, b->q, n, per_row, err)) != TQ_OK ||
        (status = tq_model_matmul(model, &w->attn_k, b->x_norm, b->k, n, per_row, err)) != TQ_OK ||
        (status = tq_model_matmul(model, &w->attn_v, b->x_norm, b->v, n, per_row, err)) != TQ_OK) {
        return status;
    }

#pragma omp parallel for if (n > 1)
    for (int64_t t = 0; t < n; t++) {
        /* RoPE rows are per position: one per token, or one per tree depth. */
        const int64_t r = tree != NULL ? tree->depth[t] : t;
        for (int h = 0; h < c->n_heads; h++) {
            float *q = b->q + t * q_dim + h * hd;
            rms_norm(q, w->attn_q_norm, hd, c->rms_eps, q);
            rope_apply(q, rope_cos + r * half, rope_sin + r * half, half);
            for (int i = 0; i < hd; i++) {
                q[i] *= query_scale;
            }
        }
        for (int h = 0; h < c->n_kv_heads; h++) {
            float *k = b->k + t * kv_dim + h * hd;
            rms_norm(k, w->attn_k_norm, hd, c->rms_eps, k);
            rope_apply(k, rope_cos + r * half, rope_sin + r * half, half);
        }
    }
    if (tree != NULL) {
        tq_kv_cache_write(context->cache, l, pos0, n, b->k, b->v);
        tq_attend_tree(context, l, hd, pos0, n, tree, b->q, b->attention);
    }
    /* Write and attend TQ_ATTENTION_BATCH positions at a time (see its definition). */
    for (int64_t start = 0; tree == NULL && start < n; start += TQ_ATTENTION_BATCH) {
        const int64_t m = n - start < TQ_ATTENTION_BATCH ? n - start : TQ_ATTENTION_BATCH;
        tq_kv_cache_write(context->cache, l, pos0 + start, m, b->k + start * kv_dim, b->v + start * kv_dim);
        tq_attend_layer(context, l, hd, pos0 + start, m, b->q + start * q_dim, b->attention + start * q_dim);
    }

    if ((status = tq_model_matmul(model, &w->attn_output, b->attention, b->projection, n, per_row, err)) != TQ_OK) {
        return status;
    }
#pragma omp parallel for if (n > 1)
    for (int64_t t = 0; t < n; t++) {
        float *p = b->projection + t * c->hidden;
        float *x = b->x + t * c->hidden;
        rms_norm(p, w->post_attention_norm, c->hidden, c->rms_eps, p);
        for (int i = 0; i < c->hidden; i++) {
            x[i] += p[i];
        }
    }

    /* Feed-forward block. */
    rms_norm_rows(b->x, w->ffn_norm, n, c->hidden, c->rms_eps, b->x_norm);
    if ((status = tq_model_matmul(model, &w->ffn_gate, b->x_norm, b->gate, n, per_row, err)) != TQ_OK ||
        (status = tq_model_matmul(model, &w->ffn_up, b->x_norm, b->up, n, per_row, err)) != TQ_OK) {
        return status;
    }
    const int64_t ffn_values = n * c->ffn;
#pragma omp parallel for if (n > 1)
    for (int64_t i = 0; i < ffn_values; i++) {
        b->gate[i] = gelu_tanh(b->gate[i]) * b->up[i];
    }
    if ((status = tq_model_matmul(model, &w->ffn_down, b->gate, b->projection, n, per_row, err)) != TQ_OK) {
        return status;
    }
#pragma omp parallel for if (n > 1)
    for (int64_t t = 0; t < n; t++) {
        float *p = b->projection + t * c->hidden;
        float *x = b->x + t * c->hidden;
        rms_norm(p, w->post_ffw_norm, c->hidden, c->rms_eps, p);
        for (int i = 0; i < c->hidden; i++) {
            x[i] += p[i];
        }
    }
    return TQ_OK;
}

/* logits = cap * tanh(logits / cap), in the order transformers applies it. */
static void softcap_logits(float *logits, int64_t count, float cap)
{
#pragma omp parallel for if (count > 65536)
    for (int64_t i = 0; i < count; i++) {
        logits[i] = tanhf(logits[i] / cap) * cap;
    }
}

tq_status tq_embed_tokens(tq_context *context, const int32_t *tokens, int64_t n, const float *soft_rows,
                          tq_error *err)
{
    const tq_model *model = context->model;
    const tq_model_config *c = &model->config;
    tq_forward_buffers *b = &context->buffers;
    for (int64_t t = 0; t < n; t++) {
        float *x = b->x + t * c->hidden;
        if (soft_rows != NULL && tq_model_is_placeholder(model, tokens[t])) {
            memcpy(x, soft_rows, (size_t)c->hidden * sizeof(float));
            soft_rows += c->hidden;
            continue;
        }
        tq_status status = tq_weight_get_row(&model->token_embd, tokens[t], x, err);
        if (status != TQ_OK) {
            return status;
        }
        for (int i = 0; i < c->hidden; i++) {
            x[i] *= c->embedding_scale;
        }
    }
    return TQ_OK;
}

/* Run one micro-batch of n tokens at positions pos0 .. pos0 + n - 1 (or the n nodes of
 * tree at pos0 + depth) through all layers; b->x then contains their final hidden states
 * (before output_norm). soft_rows as tq_embed_tokens. */
static tq_status forward_batch(tq_context *context, const int32_t *tokens, int64_t pos0, int64_t n,
                               const float *soft_rows, const tq_tree *tree, tq_error *err)
{
    const tq_model *model = context->model;
    const tq_model_config *c = &model->config;
    tq_forward_buffers *b = &context->buffers;
    tq_status status;

    if ((status = tq_embed_tokens(context, tokens, n, soft_rows, err)) != TQ_OK) {
        return status;
    }
    rope_tables(b->inv_freq_local, c->head_dim / 2, pos0, n, b->rope_cos_local, b->rope_sin_local);
    rope_tables(b->inv_freq_global, c->head_dim / 2, pos0, n, b->rope_cos_global, b->rope_sin_global);

    for (int l = 0; l < c->n_layers; l++) {
        if ((status = forward_layer(context, l, pos0, n, tree, err)) != TQ_OK) {
            return status;
        }
    }
    return TQ_OK;
}

tq_status tq_model_eval(tq_model *model, const int32_t *tokens, int64_t n, tq_logits_mode mode, float *logits,
                        tq_error *err)
{
    return tq_context_eval(model->context, tokens, n, mode, logits, err);
}

tq_status tq_context_eval(tq_context *context, const int32_t *tokens, int64_t n, tq_logits_mode mode, float *logits,
                          tq_error *err)
{
    return tq_context_eval_hidden(context, tokens, n, mode, logits, NULL, err);
}

tq_status tq_context_eval_hidden(tq_context *context, const int32_t *tokens, int64_t n, tq_logits_mode mode,
                                 float *logits, float *hidden, tq_error *err)
{
    return tq_context_eval_soft(context, tokens, n, NULL, 0, mode, logits, hidden, err);
}

tq_status tq_context_eval_soft(tq_context *context, const int32_t *tokens, int64_t n, const float *soft_embeddings,
                               int64_t n_soft, tq_logits_mode mode, float *logits, float *hidden, tq_error *err)
{
    const tq_model *model = context->model;
    const tq_model_config *c = &model->config;
    if (n < 1) {
        return tq_error_set(err, TQ_ERR_INVALID, "tokens is empty; pass at least one token id");
    }
    int64_t n_placeholders = 0;
    for (int64_t t = 0; t < n; t++) {
        if (tokens[t] < 0 || tokens[t] >= c->n_vocab) {
            return tq_error_set(err, TQ_ERR_INVALID, "token id %d at index %lld is outside the vocabulary [0, %d)",
                                tokens[t], (long long)t, c->n_vocab);
        }
        n_placeholders += tq_model_is_placeholder(model, tokens[t]);
    }
    if (n_soft != n_placeholders || (n_soft > 0 && soft_embeddings == NULL)) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "the tokens have %lld audio or image placeholder positions (ids %d and %d) but %lld soft "
                            "embedding rows were given; pass one row per placeholder position",
                            (long long)n_placeholders, model->placeholders.audio_token_id,
                            model->placeholders.image_token_id, (long long)(soft_embeddings != NULL ? n_soft : 0));
    }
    const int64_t n_past = tq_kv_cache_n_past(context->cache);
    if (n > context->n_ctx - n_past) {
        return tq_error_set(err, TQ_ERR_RANGE,
                            "%lld positions already used plus %lld new tokens exceed the context of %lld; create "
                            "the model with a larger ctx or truncate the cache",
                            (long long)n_past, (long long)n, (long long)context->n_ctx);
    }
    if (mode != TQ_LOGITS_NONE && logits == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "logits buffer is NULL but logits were requested");
    }

    /* Affects only the parallel regions started by this thread. */
    if (context->threads > 0) {
        omp_set_num_threads(context->threads);
    }
    tq_status status = ensure_attention_scratch(context, omp_get_max_threads(), err);
    if (status != TQ_OK) {
        return status;
    }

    tq_forward_buffers *b = &context->buffers;
    context->tree_nodes = 0;
    const float *soft_rows = n_soft > 0 ? soft_embeddings : NULL; /* rows of the next micro-batch */
    for (int64_t start = 0; start < n; start += context->n_batch) {
        const int64_t m = n - start < context->n_batch ? n - start : context->n_batch;
        const int64_t pos0 = tq_kv_cache_n_past(context->cache);
        if ((status = tq_kv_cache_reserve(context->cache, m, err)) != TQ_OK ||
            (status = tq_context_mark_thinking(context, tokens + start, NULL, pos0, m, err)) != TQ_OK) {
            return status;
        }
        for (int64_t t = 0; t < m; t++) {
            tq_kv_cache_set_audio(context->cache, pos0 + t, tokens[start + t] == model->placeholders.audio_token_id);
        }
        status = model->gemma4 != NULL ? tq_gemma4_forward_batch(context, tokens + start, pos0, m, soft_rows, NULL, err)
                                       : forward_batch(context, tokens + start, pos0, m, soft_rows, NULL, err);
        if (status != TQ_OK) {
            return status;
        }
        for (int64_t t = 0; t < m && soft_rows != NULL; t++) {
            soft_rows += tq_model_is_placeholder(model, tokens[start + t]) ? c->hidden : 0;
        }
        tq_kv_cache_advance(context->cache, m);

        /* Output norm and LM head only for the rows the caller wants. */
        float *rows = NULL;
        int64_t n_rows = 0;
        if (hidden != NULL && mode != TQ_LOGITS_LAST) {
            rms_norm_rows(b->x, model->output_norm, m, c->hidden, c->rms_eps, hidden + start * (int64_t)c->hidden);
        }
        if (mode == TQ_LOGITS_ALL) {
            rows = logits + start * (int64_t)c->n_vocab;
            n_rows = m;
            rms_norm_rows(b->x, model->output_norm, m, c->hidden, c->rms_eps, b->x_norm);
            status = tq_model_matmul(model, &model->lm_head, b->x_norm, rows, m, 0, err);
        } else if (mode == TQ_LOGITS_LAST && start + m == n) {
            rows = logits;
            n_rows = 1;
            rms_norm(b->x + (m - 1) * c->hidden, model->output_norm, c->hidden, c->rms_eps, b->x_norm);
            status = tq_model_matmul(model, &model->lm_head, b->x_norm, logits, 1, 0, err);
            if (hidden != NULL) {
                memcpy(hidden, b->x_norm, (size_t)c->hidden * sizeof(float));
            }
        }
        if (status != TQ_OK) {
            return status;
        }
        if (c->final_logit_softcap > 0.0f && n_rows > 0) {
            softcap_logits(rows, n_rows * (int64_t)c->n_vocab, c->final_logit_softcap);
        }
    }
    return TQ_OK;
}

tq_status tq_context_eval_tree(tq_context *context, const int32_t *tokens, const int32_t *parents, int64_t n,
                               float *logits, float *hidden, tq_error *err)
{
    const tq_model *model = context->model;
    const tq_model_config *c = &model->config;
    /* A tree's rows share the rings of sliding layers and of the f16 window with the
     * prefix, which have room for TQ_ATTENTION_BATCH new positions (and n_batch). */
    int64_t max_nodes = TQ_TREE_MAX_NODES < context->n_batch ? TQ_TREE_MAX_NODES : context->n_batch;
    if (n < 1 || n > max_nodes) {
        return tq_error_set(err, TQ_ERR_INVALID, "a draft tree has %lld nodes; it needs 1 to %lld", (long long)n,
                            (long long)max_nodes);
    }
    if (logits == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "logits buffer is NULL; a tree pass always returns logits");
    }
    int32_t depth[TQ_TREE_MAX_NODES];
    for (int64_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= c->n_vocab) {
            return tq_error_set(err, TQ_ERR_INVALID, "token id %d of tree node %lld is outside the vocabulary [0, %d)",
                                tokens[i], (long long)i, c->n_vocab);
        }
        if (tq_model_is_placeholder(model, tokens[i])) {
            return tq_error_set(err, TQ_ERR_INVALID,
                                "tree node %lld is the placeholder token %d, which needs a soft embedding row; "
                                "evaluate placeholders with tq_context_eval_soft",
                                (long long)i, tokens[i]);
        }
        if (i == 0 ? parents[0] != -1 : parents[i] < 0 || parents[i] >= i) {
            return tq_error_set(err, TQ_ERR_INVALID,
                                "tree node %lld has parent %d; the root (node 0) needs -1 and node i a parent in "
                                "0 .. i - 1",
                                (long long)i, parents[i]);
        }
        depth[i] = i == 0 ? 0 : depth[parents[i]] + 1;
        if (depth[i] > TQ_TREE_MAX_DEPTH) {
            return tq_error_set(err, TQ_ERR_INVALID, "tree node %lld is %d levels deep; at most %d are supported",
                                (long long)i, depth[i], TQ_TREE_MAX_DEPTH);
        }
    }

    /* Nodes past the root sit at n_past + 1 on; before exact_from their rows could not be
     * moved exactly on acceptance (tq_kv_cache_exact_moves_from). */
    const int64_t n_past = tq_kv_cache_n_past(context->cache);
    const int64_t exact_from = tq_kv_cache_exact_moves_from(context->cache);
    if (n > 1 && n_past + 1 < exact_from) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "draft nodes at position %lld fall inside the f16 sink of %lld positions, which a q8_0 "
                            "recent window cannot fill exactly; evaluate single tokens until %lld are cached",
                            (long long)(n_past + 1), (long long)exact_from, (long long)(exact_from - 1));
    }

    if (context->threads > 0) {
        omp_set_num_threads(context->threads);
    }
    tq_status status = ensure_attention_scratch(context, omp_get_max_threads(), err);
    if (status != TQ_OK) {
        return status;
    }
    context->tree_nodes = 0;
    if ((status = tq_kv_cache_reserve(context->cache, n, err)) != TQ_OK ||
        (status = tq_context_mark_thinking(context, tokens, parents, n_past, n, err)) != TQ_OK) {
        return status;
    }
    const tq_tree tree = {.parent = parents, .depth = depth};
    for (int64_t i = 0; i < n; i++) {
        tq_kv_cache_set_audio(context->cache, n_past + i, 0); /* node i's rows wait at n_past + i */
    }
    status = model->gemma4 != NULL ? tq_gemma4_forward_batch(context, tokens, n_past, n, NULL, &tree, err)
                                   : forward_batch(context, tokens, n_past, n, NULL, &tree, err);
    if (status != TQ_OK) {
        return status;
    }

    tq_forward_buffers *b = &context->buffers;
    rms_norm_rows(b->x, model->output_norm, n, c->hidden, c->rms_eps, b->x_norm);
    if (hidden != NULL) {
        memcpy(hidden, b->x_norm, (size_t)n * (size_t)c->hidden * sizeof(float));
    }
    if ((status = tq_model_matmul(model, &model->lm_head, b->x_norm, logits, n, 1, err)) != TQ_OK) {
        return status;
    }
    if (c->final_logit_softcap > 0.0f) {
        softcap_logits(logits, n * (int64_t)c->n_vocab, c->final_logit_softcap);
    }
    memcpy(context->tree_parent, parents, (size_t)n * sizeof(int32_t));
    context->tree_nodes = n;
    return TQ_OK;
}

tq_status tq_context_accept_path(tq_context *context, const int32_t *path, int64_t n_path, tq_error *err)
{
    if (context->tree_nodes == 0) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "no draft tree waits to be accepted; call eval_tree first (an eval or truncate in "
                            "between drops the tree)");
    }
    if (n_path < 1 || n_path > context->tree_nodes) {
        return tq_error_set(err, TQ_ERR_INVALID, "an accepted path has %lld nodes; the tree has %lld",
                            (long long)n_path, (long long)context->tree_nodes);
    }
    for (int64_t j = 0; j < n_path; j++) {
        const int32_t node = path[j];
        const int32_t expected_parent = j == 0 ? -1 : path[j - 1];
        if (node < 0 || node >= context->tree_nodes || context->tree_parent[node] != expected_parent) {
            return tq_error_set(err, TQ_ERR_INVALID,
                                "accepted node %d at step %lld is not a child of the previous node (or the root at "
                                "step 0) in the last tree",
                                node, (long long)j);
        }
    }
    /* path[j] >= j and the path only goes deeper, so no move overwrites a row still to move. */
    const int64_t n_past = tq_kv_cache_n_past(context->cache);
    for (int64_t j = 0; j < n_path; j++) {
        tq_kv_cache_move(context->cache, n_past + path[j], n_past + j);
        tq_context_move_thinking(context, n_past + path[j], n_past + j);
    }
    tq_kv_cache_advance(context->cache, n_path);
    context->tree_nodes = 0;
    return TQ_OK;
}
