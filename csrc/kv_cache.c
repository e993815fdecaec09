#include "kv_cache.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- Storage types ---------------------------------------------------------- */

static size_t f32_row_bytes(int head_dim)
{
    return (size_t)head_dim * sizeof(float);
}

static size_t f16_row_bytes(int head_dim)
{
    return (size_t)head_dim * sizeof(uint16_t);
}

static size_t q8_0_row_bytes(int head_dim)
{
    return (size_t)(head_dim / TQ_KV_BLOCK) * sizeof(tq_block_q8_0);
}

static size_t q4_0_row_bytes(int head_dim)
{
    return (size_t)(head_dim / TQ_KV_BLOCK) * sizeof(tq_block_q4_0);
}

static void f32_write_rows(const float *src, int64_t n, int head_dim, void *dst, size_t dst_stride)
{
    for (int64_t j = 0; j < n; j++) {
        memcpy((uint8_t *)dst + (size_t)j * dst_stride, src + j * head_dim, (size_t)head_dim * sizeof(float));
    }
}

static void f16_write_rows(const float *src, int64_t n, int head_dim, void *dst, size_t dst_stride)
{
    for (int64_t j = 0; j < n; j++) {
        uint16_t *row = (uint16_t *)((uint8_t *)dst + (size_t)j * dst_stride);
        for (int i = 0; i < head_dim; i++) {
            row[i] = tq_fp32_to_fp16(src[j * head_dim + i]);
        }
    }
}

/* Same rounding as ggml's quantize_row_q8_0_ref: d = max|x| / 127, codes round(x / d). */
static void q8_0_write_rows(const float *src, int64_t n, int head_dim, void *dst, size_t dst_stride)
{
    for (int64_t j = 0; j < n; j++) {
        tq_block_q8_0 *blocks = (tq_block_q8_0 *)((uint8_t *)dst + (size_t)j * dst_stride);
        for (int b = 0; b < head_dim / TQ_KV_BLOCK; b++) {
            const float *x = src + j * head_dim + b * TQ_KV_BLOCK;
            float amax = 0.0f;
            for (int i = 0; i < TQ_KV_BLOCK; i++) {
                amax = fmaxf(amax, fabsf(x[i]));
            }
            const float d = amax / 127.0f;
            const float id = d != 0.0f ? 1.0f / d : 0.0f;
            blocks[b].d = tq_fp32_to_fp16(d);
            for (int i = 0; i < TQ_KV_BLOCK; i++) {
                blocks[b].qs[i] = (int8_t)roundf(x[i] * id);
            }
        }
    }
}

/* Same rounding as ggml's quantize_row_q4_0_ref: d = m / -8 where m is the value
 * of largest magnitude (so m itself maps to code 0), codes x / d + 8 truncated
 * after adding 0.5 and clamped to 15. */
static void q4_0_write_rows(const float *src, int64_t n, int head_dim, void *dst, size_t dst_stride)
{
    for (int64_t j = 0; j < n; j++) {
        tq_block_q4_0 *blocks = (tq_block_q4_0 *)((uint8_t *)dst + (size_t)j * dst_stride);
        for (int b = 0; b < head_dim / TQ_KV_BLOCK; b++) {
            const float *x = src + j * head_dim + b * TQ_KV_BLOCK;
            float amax = 0.0f;
            float max = 0.0f;
            for (int i = 0; i < TQ_KV_BLOCK; i++) {
                if (fabsf(x[i]) > amax) {
                    amax = fabsf(x[i]);
                    max = x[i];
                }
            }
            const float d = max / -8.0f;
            const float id = d != 0.0f ? 1.0f / d : 0.0f;
            blocks[b].d = tq_fp32_to_fp16(d);
            for (int i = 0; i < TQ_KV_BLOCK / 2; i++) {
                int low = (int)(int8_t)(x[i] * id + 8.5f);
                int high = (int)(int8_t)(x[i + TQ_KV_BLOCK / 2] * id + 8.5f);
                low = low < 15 ? low : 15;
                high = high < 15 ? high : 15;
                blocks[b].qs[i] = (uint8_t)(low | (high << 4));
            }
        }
    }
}

/* The baseline types score with the float query itself. */
static size_t float_query_bytes(int head_dim)
{
    return (size_t)head_dim * sizeof(float);
}

static void float_query_prepare(const float *query, int head_dim, void *state)
{
    memcpy(state, query, (size_t)head_dim * sizeof(float));
}

#define TQ_DEFINE_BASELINE_OPS(suffix, type_id)                                                                      \
    static void suffix##_scores(const tq_attention_kernels *kernels, const void *state, const void *rows,            \
                                size_t stride, int64_t n, int head_dim, float *out)                                  \
    {                                                                                                                \
        kernels->scores[type_id]((const float *)state, rows, stride, n, head_dim, out);                              \
    }                                                                                                                \
    static void suffix##_accumulate(const tq_attention_kernels *kernels, const float *weights, const void *rows,     \
                                    size_t stride, int64_t n, int head_dim, float *out)                              \
    {                                                                                                                \
        kernels->accumulate[type_id](weights, rows, stride, n, head_dim, out);                                       \
    }

TQ_DEFINE_BASELINE_OPS(f32, TQ_KV_F32)
TQ_DEFINE_BASELINE_OPS(f16, TQ_KV_F16)
TQ_DEFINE_BASELINE_OPS(q8_0, TQ_KV_Q8_0)
TQ_DEFINE_BASELINE_OPS(q4_0, TQ_KV_Q4_0)

static const tq_kv_type_ops kv_type_ops[TQ_KV_TYPE_COUNT] = {
    {"f32", TQ_KV_F32, f32_row_bytes, f32_write_rows, float_query_bytes, float_query_prepare, f32_scores,
     f32_accumulate, 0},
    {"f16", TQ_KV_F16, f16_row_bytes, f16_write_rows, float_query_bytes, float_query_prepare, f16_scores,
     f16_accumulate, 0},
    {"q8_0", TQ_KV_Q8_0, q8_0_row_bytes, q8_0_write_rows, float_query_bytes, float_query_prepare, q8_0_scores,
     q8_0_accumulate, 0},
    {"q4_0", TQ_KV_Q4_0, q4_0_row_bytes, q4_0_write_rows, float_query_bytes, float_query_prepare, q4_0_scores,
     q4_0_accumulate, 0},
};

const tq_kv_type_ops *tq_kv_type_get(tq_kv_type type)
{
    if ((int)type < 0 || type >= TQ_KV_TYPE_COUNT) {
        return NULL;
    }
    return &kv_type_ops[type];
}

tq_status tq_kv_type_parse(const char *name, tq_kv_type *out, tq_error *err)
{
    for (int i = 0; i < TQ_KV_TYPE_COUNT; i++) {
        if (name != NULL && strcmp(name, kv_type_ops[i].name) == 0) {
            *out = (tq_kv_type)i;
            return TQ_OK;
        }
    }
    return tq_error_set(err, TQ_ERR_INVALID, "unknown KV cache type '%s'; expected one of f32, f16, q8_0, q4_0",
                        name != NULL ? name : "(null)");
}

/* ---- Cache ------------------------------------------------------------------ */

/* Smallest allocation of a layer, in slots, so that short prompts do not
 * reallocate once per micro-batch. */
#define TQ_KV_MIN_SLOTS 256

typedef struct {
    int64_t window;    /* sliding window in positions, 0 for a global layer */
    int64_t max_slots; /* ring size of a sliding layer, n_ctx for a global one */
    int64_t n_slots;   /* slots allocated so far (grows up to max_slots) */
    uint8_t *keys;     /* n_slots * key_slot_bytes */
    uint8_t *values;   /* n_slots * value_slot_bytes */
} tq_kv_layer;

struct tq_kv_cache {
    int n_layers;
    int n_kv_heads;
    int head_dim;
    int64_t n_ctx;
    int64_t n_batch;
    int64_t n_past;
    const tq_kv_type_ops *ops_k;
    const tq_kv_type_ops *ops_v;
    const tq_attention_kernels *kernels;
    size_t key_row_bytes, value_row_bytes;   /* one KV head */
    size_t key_slot_bytes, value_slot_bytes; /* all KV heads of one position */
    tq_kv_layer *layers;
};

tq_status tq_kv_cache_create(const tq_kv_cache_config *config, tq_kv_cache **out, tq_error *err)
{
    *out = NULL;
    if (config->n_layers <= 0 || config->n_kv_heads <= 0 || config->n_ctx <= 0 || config->n_batch <= 0) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "invalid KV cache shape: n_layers=%d, n_kv_heads=%d, n_ctx=%lld, n_batch=%lld; all must "
                            "be positive",
                            config->n_layers, config->n_kv_heads, (long long)config->n_ctx,
                            (long long)config->n_batch);
    }
    if (config->head_dim <= 0 || config->head_dim % TQ_KV_BLOCK != 0) {
        return tq_error_set(err, TQ_ERR_UNSUPPORTED,
                            "KV cache head_dim %d is not supported; it must be a positive multiple of %d",
                            config->head_dim, TQ_KV_BLOCK);
    }
    const tq_kv_type_ops *ops_k = tq_kv_type_get(config->type_k);
    const tq_kv_type_ops *ops_v = tq_kv_type_get(config->type_v);
    if (ops_k == NULL || ops_v == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "invalid KV cache type id (K %d, V %d)", (int)config->type_k,
                            (int)config->type_v);
    }
    if (ops_k->recent_f16_window != 0 || ops_v->recent_f16_window != 0) {
        return tq_error_set(err, TQ_ERR_UNSUPPORTED, "KV cache types with a recent f16 window are not supported yet");
    }

    tq_kv_cache *cache = calloc(1, sizeof(*cache));
    if (cache == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating the KV cache");
    }
    cache->n_layers = config->n_layers;
    cache->n_kv_heads = config->n_kv_heads;
    cache->head_dim = config->head_dim;
    cache->n_ctx = config->n_ctx;
    cache->n_batch = config->n_batch < config->n_ctx ? config->n_batch : config->n_ctx;
    cache->ops_k = ops_k;
    cache->ops_v = ops_v;
    cache->kernels = tq_attention_kernels_get(config->isa);
    cache->key_row_bytes = ops_k->row_bytes(config->head_dim);
    cache->value_row_bytes = ops_v->row_bytes(config->head_dim);
    cache->key_slot_bytes = cache->key_row_bytes * (size_t)config->n_kv_heads;
    cache->value_slot_bytes = cache->value_row_bytes * (size_t)config->n_kv_heads;

    cache->layers = calloc((size_t)config->n_layers, sizeof(tq_kv_layer));
    if (cache->layers == NULL) {
        free(cache);
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating the KV cache");
    }
    for (int l = 0; l < config->n_layers; l++) {
        tq_kv_layer *layer = &cache->layers[l];
        int64_t window = config->layer_window != NULL ? config->layer_window[l] : 0;
        if (window < 0) {
            tq_kv_cache_free(cache);
            return tq_error_set(err, TQ_ERR_INVALID, "layer %d has a negative sliding window %lld", l,
                                (long long)window);
        }
        layer->window = window;
        layer->max_slots = config->n_ctx;
        if (window > 0 && window + cache->n_batch < config->n_ctx) {
            layer->max_slots = window + cache->n_batch;
        }
    }
    *out = cache;
    return TQ_OK;
}

void tq_kv_cache_free(tq_kv_cache *cache)
{
    if (cache == NULL) {
        return;
    }
    if (cache->layers != NULL) {
        for (int l = 0; l < cache->n_layers; l++) {
            tq_aligned_free(cache->layers[l].keys);
            tq_aligned_free(cache->layers[l].values);
        }
        free(cache->layers);
    }
    free(cache);
}

int64_t tq_kv_cache_n_past(const tq_kv_cache *cache)
{
    return cache->n_past;
}

int64_t tq_kv_cache_n_ctx(const tq_kv_cache *cache)
{
    return cache->n_ctx;
}

/* Grow one slot array from old_slots to new_slots, keeping the stored slots. */
static uint8_t *grow_slots(uint8_t *old, int64_t old_slots, int64_t new_slots, size_t slot_bytes)
{
    size_t new_bytes;
    if (!tq_mul_size((size_t)new_slots, slot_bytes, &new_bytes)) {
        return NULL;
    }
    uint8_t *grown = tq_aligned_alloc(new_bytes);
    if (grown == NULL) {
        return NULL;
    }
    if (old != NULL) {
        memcpy(grown, old, (size_t)old_slots * slot_bytes);
        tq_aligned_free(old);
    }
    return grown;
}

tq_status tq_kv_cache_reserve(tq_kv_cache *cache, int64_t n_new, tq_error *err)
{
    if (n_new < 0 || n_new > cache->n_batch) {
        return tq_error_set(err, TQ_ERR_INVALID, "cannot reserve %lld positions at once; the limit is n_batch=%lld",
                            (long long)n_new, (long long)cache->n_batch);
    }
    const int64_t end = cache->n_past + n_new;
    if (end > cache->n_ctx) {
        return tq_error_set(err, TQ_ERR_RANGE,
                            "the KV cache holds %lld positions and %lld more do not fit in its context of %lld",
                            (long long)cache->n_past, (long long)n_new, (long long)cache->n_ctx);
    }
    for (int l = 0; l < cache->n_layers; l++) {
        tq_kv_layer *layer = &cache->layers[l];
        int64_t needed = end < layer->max_slots ? end : layer->max_slots;
        if (needed <= layer->n_slots) {
            continue;
        }
        /* Double the allocation so that a growing sequence copies each slot O(1) times. */
        int64_t target = layer->n_slots * 2;
        if (target < TQ_KV_MIN_SLOTS) {
            target = TQ_KV_MIN_SLOTS;
        }
        if (target < needed) {
            target = needed;
        }
        if (target > layer->max_slots) {
            target = layer->max_slots;
        }
        uint8_t *keys = grow_slots(layer->keys, layer->n_slots, target, cache->key_slot_bytes);
        if (keys == NULL) {
            return tq_error_set(err, TQ_ERR_NOMEM, "out of memory growing the KV cache of layer %d to %lld positions",
                                l, (long long)target);
        }
        layer->keys = keys;
        uint8_t *values = grow_slots(layer->values, layer->n_slots, target, cache->value_slot_bytes);
        if (values == NULL) {
            /* keys already grew; n_slots stays at the old count, which both arrays hold. */
            return tq_error_set(err, TQ_ERR_NOMEM, "out of memory growing the KV cache of layer %d to %lld positions",
                                l, (long long)target);
        }
        layer->values = values;
        layer->n_slots = target;
    }
    return TQ_OK;
}

void tq_kv_cache_write(tq_kv_cache *cache, int layer_index, int64_t pos, int64_t n, const float *keys,
                       const float *values)
{
    tq_kv_layer *layer = &cache->layers[layer_index];
    const int row_floats = cache->n_kv_heads * cache->head_dim;
    for (int64_t t = 0; t < n; t++) {
        const int64_t slot = (pos + t) % layer->max_slots;
        uint8_t *key_slot = layer->keys + (size_t)slot * cache->key_slot_bytes;
        uint8_t *value_slot = layer->values + (size_t)slot * cache->value_slot_bytes;
        /* All heads of one position are contiguous, so one call encodes them. */
        cache->ops_k->write_rows(keys + t * row_floats, cache->n_kv_heads, cache->head_dim, key_slot,
                                 cache->key_row_bytes);
        cache->ops_v->write_rows(values + t * row_floats, cache->n_kv_heads, cache->head_dim, value_slot,
                                 cache->value_row_bytes);
    }
}

void tq_kv_cache_advance(tq_kv_cache *cache, int64_t n)
{
    cache->n_past += n;
}

/* Scratch layout: the prepared state of each query, then TQ_KV_CHUNK scores per query. */
static size_t query_state_bytes(const tq_kv_cache *cache)
{
    size_t bytes = cache->ops_k->query_bytes(cache->head_dim);
    return (bytes + 63) & ~(size_t)63;
}

size_t tq_kv_cache_scratch_bytes(const tq_kv_cache *cache, int n_queries)
{
    return (size_t)n_queries * (query_state_bytes(cache) + TQ_KV_CHUNK * sizeof(float));
}

int64_t tq_kv_cache_first_visible(const tq_kv_cache *cache, int layer, int64_t pos)
{
    const int64_t window = cache->layers[layer].window;
    return window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
}

void tq_kv_cache_attend_range(const tq_kv_cache *cache, int layer_index, int kv_head, int64_t pos, int64_t begin,
                              int64_t end, int n_queries, const float *queries, void *scratch, float *partial)
{
    const tq_kv_layer *layer = &cache->layers[layer_index];
    const int head_dim = cache->head_dim;
    const size_t partial_floats = TQ_KV_PARTIAL_FLOATS(head_dim);
    const size_t state_bytes = query_state_bytes(cache);
    uint8_t *states = scratch;
    float *scores = (float *)(states + (size_t)n_queries * state_bytes);

    int64_t first = tq_kv_cache_first_visible(cache, layer_index, pos);
    first = begin > first ? begin : first;
    const int64_t last = end - 1 < pos ? end - 1 : pos;

    for (int i = 0; i < n_queries; i++) {
        float *part = partial + (size_t)i * partial_floats;
        part[0] = -INFINITY;
        part[1] = 0.0f;
        memset(part + 2, 0, (size_t)head_dim * sizeof(float));
        cache->ops_k->prepare_query(queries + (size_t)i * head_dim, head_dim, states + (size_t)i * state_bytes);
    }

    const uint8_t *keys = layer->keys + (size_t)kv_head * cache->key_row_bytes;
    const uint8_t *values = layer->values + (size_t)kv_head * cache->value_row_bytes;
    int64_t chunk_start = first;
    while (chunk_start <= last) {
        /* A chunk is a run of consecutive slots: it ends at TQ_KV_CHUNK
         * positions, at the last visible one, or where the ring wraps. */
        const int64_t slot = chunk_start % layer->max_slots;
        int64_t length = last - chunk_start + 1;
        length = length < TQ_KV_CHUNK ? length : TQ_KV_CHUNK;
        length = length < layer->max_slots - slot ? length : layer->max_slots - slot;
        const uint8_t *key_rows = keys + (size_t)slot * cache->key_slot_bytes;
        const uint8_t *value_rows = values + (size_t)slot * cache->value_slot_bytes;

        for (int i = 0; i < n_queries; i++) {
            float *part = partial + (size_t)i * partial_floats;
            float *chunk_scores = scores + (size_t)i * TQ_KV_CHUNK;
            cache->ops_k->scores(cache->kernels, states + (size_t)i * state_bytes, key_rows, cache->key_slot_bytes,
                                 length, head_dim, chunk_scores);

            /* Online softmax: rescale what was summed so far to the new maximum. */
            float chunk_max = chunk_scores[0];
            for (int64_t j = 1; j < length; j++) {
                chunk_max = chunk_scores[j] > chunk_max ? chunk_scores[j] : chunk_max;
            }
            if (chunk_max > part[0]) {
                const float rescale = expf(part[0] - chunk_max);
                part[1] *= rescale;
                for (int d = 0; d < head_dim; d++) {
                    part[2 + d] *= rescale;
                }
                part[0] = chunk_max;
            }
            float sum = 0.0f;
            for (int64_t j = 0; j < length; j++) {
                chunk_scores[j] = expf(chunk_scores[j] - part[0]);
                sum += chunk_scores[j];
            }
            part[1] += sum;
            cache->ops_v->accumulate(cache->kernels, chunk_scores, value_rows, cache->value_slot_bytes, length,
                                     head_dim, part + 2);
        }
        chunk_start += length;
    }
}

void tq_attention_merge(int n_parts, int n_queries, int head_dim, const float *partials, float *out)
{
    const size_t partial_floats = TQ_KV_PARTIAL_FLOATS(head_dim);
    for (int i = 0; i < n_queries; i++) {
        float max = -INFINITY;
        for (int p = 0; p < n_parts; p++) {
            const float *part = partials + ((size_t)p * n_queries + i) * partial_floats;
            max = part[1] > 0.0f && part[0] > max ? part[0] : max;
        }
        float *result = out + (size_t)i * head_dim;
        memset(result, 0, (size_t)head_dim * sizeof(float));
        float sum = 0.0f;
        for (int p = 0; p < n_parts; p++) {
            const float *part = partials + ((size_t)p * n_queries + i) * partial_floats;
            if (part[1] == 0.0f) {
                continue; /* empty range */
            }
            const float weight = expf(part[0] - max);
            sum += part[1] * weight;
            for (int d = 0; d < head_dim; d++) {
                result[d] += weight * part[2 + d];
            }
        }
        const float inverse_sum = 1.0f / sum;
        for (int d = 0; d < head_dim; d++) {
            result[d] *= inverse_sum;
        }
    }
}

tq_status tq_kv_cache_truncate(tq_kv_cache *cache, int64_t n_past, tq_error *err)
{
    if (n_past < 0 || n_past > cache->n_past) {
        return tq_error_set(err, TQ_ERR_INVALID, "cannot truncate the KV cache to %lld positions; it holds %lld",
                            (long long)n_past, (long long)cache->n_past);
    }
    if (n_past > 0) {
        for (int l = 0; l < cache->n_layers; l++) {
            const tq_kv_layer *layer = &cache->layers[l];
            if (layer->window == 0) {
                continue;
            }
            int64_t oldest_held = cache->n_past - layer->max_slots;
            int64_t oldest_needed = n_past - layer->window + 1;
            if (oldest_held > 0 && oldest_needed < oldest_held) {
                return tq_error_set(err, TQ_ERR_INVALID,
                                    "cannot truncate the KV cache from %lld to %lld positions: sliding-window layer "
                                    "%d keeps only the last %lld positions, so truncate to at least %lld or reset",
                                    (long long)cache->n_past, (long long)n_past, l, (long long)layer->max_slots,
                                    (long long)(oldest_held + layer->window - 1));
            }
        }
    }
    cache->n_past = n_past;
    return TQ_OK;
}

size_t tq_kv_cache_bytes(const tq_kv_cache *cache)
{
    size_t total = 0;
    for (int l = 0; l < cache->n_layers; l++) {
        const tq_kv_layer *layer = &cache->layers[l];
        int64_t held = cache->n_past < layer->max_slots ? cache->n_past : layer->max_slots;
        total += (size_t)held * (cache->key_slot_bytes + cache->value_slot_bytes);
    }
    return total;
}

size_t tq_kv_cache_bytes_per_token(const tq_kv_cache *cache)
{
    return (size_t)cache->n_layers * (cache->key_slot_bytes + cache->value_slot_bytes);
}
