#include "kv_cache.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kv_codec.h"

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
     f32_accumulate, 0, 0},
    {"f16", TQ_KV_F16, f16_row_bytes, f16_write_rows, float_query_bytes, float_query_prepare, f16_scores,
     f16_accumulate, 0, 0},
    {"q8_0", TQ_KV_Q8_0, q8_0_row_bytes, q8_0_write_rows, float_query_bytes, float_query_prepare, q8_0_scores,
     q8_0_accumulate, 0, 0},
    {"q4_0", TQ_KV_Q4_0, q4_0_row_bytes, q4_0_write_rows, float_query_bytes, float_query_prepare, q4_0_scores,
     q4_0_accumulate, 0, 0},
    /* Codec types: rows are written and read through a tq_kv_codec (see tq_kv_cache_attend_range). */
    {"tq4", TQ_KV_TQ4, NULL, NULL, NULL, NULL, NULL, NULL, 0, 1},
    {"tq3.5", TQ_KV_TQ3_5, NULL, NULL, NULL, NULL, NULL, NULL, 0, 1},
    {"tq3", TQ_KV_TQ3, NULL, NULL, NULL, NULL, NULL, NULL, 0, 1},
    {"tq2.5", TQ_KV_TQ2_5, NULL, NULL, NULL, NULL, NULL, NULL, 0, 1},
    {"tq2", TQ_KV_TQ2, NULL, NULL, NULL, NULL, NULL, NULL, 0, 1},
    {"tq3+qjl", TQ_KV_TQ3_QJL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 1},
    {"tq4+qjl", TQ_KV_TQ4_QJL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 1},
    {"polar", TQ_KV_POLAR, NULL, NULL, NULL, NULL, NULL, NULL, 0, 1},
    {"polar+qjl", TQ_KV_POLAR_QJL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 1},
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
    return tq_error_set(err, TQ_ERR_INVALID,
                        "unknown KV cache type '%s'; expected one of f32, f16, q8_0, q4_0, tq4, tq3.5, tq3, tq2.5, "
                        "tq2, tq3+qjl, tq4+qjl, polar, polar+qjl",
                        name != NULL ? name : "(null)");
}

/* ---- Cache ------------------------------------------------------------------ */

/* Smallest allocation of a layer, in slots, so that short prompts do not
 * reallocate once per micro-batch. */
#define TQ_KV_MIN_SLOTS 256

/* Different head sizes one cache can hold with codec types (Gemma 4 uses two). */
#define TQ_KV_MAX_HEAD_SIZES 4

typedef struct {
    int head_dim;      /* values per row of one KV head */
    int source;        /* this layer's index, or the earlier layer whose rows it reads */
    int64_t window;    /* sliding window in positions, 0 for a global layer */
    int64_t max_slots; /* ring size of a sliding layer, n_ctx for a global one, 0 without rows */
    int64_t n_slots;   /* slots allocated so far (grows up to max_slots) */
    uint8_t *keys;     /* n_slots * key_slot_bytes */
    uint8_t *values;   /* n_slots * value_slot_bytes */
    /* Codec layers only (NULL otherwise): the codecs that encode and read this layer's rows,
     * owned by the cache. recent_keys and recent_values are the copies of the newest
     * positions: a ring of recent_slots positions (position p in slot p mod recent_slots),
     * each of n_kv_heads rows of the cache's recent_ops type (f16 or q8_0), recent_slot_bytes
     * per position. */
    const tq_kv_codec *codec_k;
    const tq_kv_codec *codec_v;
    /* Codecs of the audio positions: codec_k and codec_v with the audio codebook, or the same
     * codecs as those when there is no audio codebook or it does not fit the side's format.
     * Both share the rotation of codec_k and codec_v, so a query prepared by one scores rows
     * of the other and one accumulator sums both. */
    const tq_kv_codec *audio_codec_k;
    const tq_kv_codec *audio_codec_v;
    const tq_kv_type_ops *ops_k; /* baseline type of the keys, NULL when codec_k is set */
    const tq_kv_type_ops *ops_v;
    uint8_t *recent_keys;
    uint8_t *recent_values;
    size_t recent_slot_bytes;
    /* f16 copies of the first sink_slots positions of the sequence (position p in slot p), each
     * of n_kv_heads f16 rows; NULL without sink positions. */
    uint16_t *sink_keys;
    uint16_t *sink_values;
    /* Key balancing of a codec key side, NULL without it (see tq_kv_cache_config).
     * key_scale and key_center have head_dim entries. key_mean has n_kv_heads rows of
     * head_dim floats, set by the first write after creation or after a reset from its
     * first key_mean_positions positions. */
    float *key_scale;
    uint8_t *key_center;
    float *key_mean;
    int key_mean_set;
    int64_t key_mean_positions;
    /* Channel orders of split codec sides (tq_kv_cache_config.channel_order_k and _v), head_dim
     * entries each, NULL for a side that keeps the natural order. */
    int *order_k;
    int *order_v;
    size_t key_row_bytes, value_row_bytes;   /* one KV head */
    size_t key_slot_bytes, value_slot_bytes; /* all KV heads of one position */
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
    /* Codec types: one codec per side and head size, owned here (NULL for a baseline side).
     * recent_f16 is the window in positions and recent_slots its ring size, both 0 without a
     * window. */
    tq_kv_codec *codecs_k[TQ_KV_MAX_HEAD_SIZES], *codecs_v[TQ_KV_MAX_HEAD_SIZES];
    int codec_head_dims[TQ_KV_MAX_HEAD_SIZES];
    int n_codec_sizes;
    /* Codecs with the audio codebook, per head size as codecs_k and codecs_v, NULL for a side
     * the codebook does not fit. audio_flags has one byte per position (n_ctx), 1 for audio.
     * All are NULL without an audio codebook. */
    tq_kv_codec *audio_codecs_k[TQ_KV_MAX_HEAD_SIZES], *audio_codecs_v[TQ_KV_MAX_HEAD_SIZES];
    uint8_t *audio_flags;
    int64_t recent_f16;
    int64_t recent_slots;
    const tq_kv_type_ops *recent_ops; /* row type of the recent copies: f16, or q8_0 (recent_q8_0) */
    /* sink_f16: first positions of the sequence read from f16 copies, 0 for none. sink_slots:
     * positions with an f16 copy in the sink arrays. Without a recent ring it adds
     * TQ_KV_SINK_MOVE_ROOM positions (at most n_batch), so that tq_kv_cache_move into a sink
     * position finds the f16 rows of a draft tree's nodes. */
    int64_t sink_f16;
    int64_t sink_slots;
    float *sink_rows; /* one position's keys and values, for tq_kv_cache_move into the sink */
    float *balanced_keys; /* room for n_batch positions of balanced keys, if any layer balances */
    float *ordered_rows;  /* one position's keys, then its values, if any layer orders channels */
    /* Residual precision of the +qjl types: has_qjl is 1 when K or V is a +qjl type, and
     * position_qjl_bits (n_ctx bytes, 1 or 2 each, indexed by position) exists when
     * max_qjl_bits is 2. Without it every +qjl row has a 1-bit residual. */
    int has_qjl;
    int max_qjl_bits;
    uint8_t *position_qjl_bits;
};

/* Returns 1 for the codec types with a QJL residual stage. */
static int type_has_qjl(tq_kv_type type)
{
    return type == TQ_KV_TQ3_QJL || type == TQ_KV_TQ4_QJL || type == TQ_KV_POLAR_QJL;
}

/* Copy one layer's key scale and centering flags, and allocate its key mean and, once per
 * cache, the buffer of balanced keys. Scales must be finite and positive. */
static tq_status create_key_balance(tq_kv_cache *cache, tq_kv_layer *layer, const float *scale,
                                    const uint8_t *center, int l, tq_error *err)
{
    const int d = layer->head_dim;
    for (int i = 0; i < d; i++) {
        if (!(scale[i] > 0.0f) || !isfinite(scale[i])) {
            return tq_error_set(err, TQ_ERR_INVALID,
                                "key_scale[%d][%d] is %g; key scales must be finite and positive", l, i,
                                (double)scale[i]);
        }
    }
    layer->key_scale = malloc((size_t)d * sizeof(float));
    layer->key_center = calloc((size_t)d, 1);
    layer->key_mean = calloc((size_t)cache->n_kv_heads * (size_t)d, sizeof(float));
    if (cache->balanced_keys == NULL) {
        /* Sized for the largest head of any layer, so every balancing layer can use it. */
        cache->balanced_keys =
            malloc((size_t)cache->n_batch * (size_t)cache->n_kv_heads * (size_t)cache->head_dim * sizeof(float));
    }
    if (layer->key_scale == NULL || layer->key_center == NULL || layer->key_mean == NULL ||
        cache->balanced_keys == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for the key balancing of layer %d", l);
    }
    memcpy(layer->key_scale, scale, (size_t)d * sizeof(float));
    if (center != NULL) {
        memcpy(layer->key_center, center, (size_t)d);
    }
    return TQ_OK;
}

/* Copy one layer's channel order (head_dim entries, which must be a permutation of the
 * channels) into *out, and allocate the cache's buffer of ordered rows once. */
static tq_status create_channel_order(tq_kv_cache *cache, const tq_kv_layer *layer, const int *order, int l,
                                      const char *side, int **out, tq_error *err)
{
    const int d = layer->head_dim;
    uint8_t seen[TQ_KV_MAX_HEAD_DIM] = {0};
    for (int i = 0; i < d; i++) {
        if (order[i] < 0 || order[i] >= d || seen[order[i]]) {
            return tq_error_set(err, TQ_ERR_INVALID,
                                "channel_order_%s[%d][%d] is %d; each layer's order must list every channel "
                                "0 .. %d once",
                                side, l, i, order[i], d - 1);
        }
        seen[order[i]] = 1;
    }
    *out = malloc((size_t)d * sizeof(int));
    if (cache->ordered_rows == NULL) {
        /* Sized for the largest head of any layer. */
        cache->ordered_rows = malloc(2 * (size_t)cache->n_kv_heads * (size_t)cache->head_dim * sizeof(float));
    }
    if (*out == NULL || cache->ordered_rows == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for the channel order of layer %d", l);
    }
    memcpy(*out, order, (size_t)d * sizeof(int));
    return TQ_OK;
}

/* out[h][i] = rows[h][order[i]] for n_rows rows of head_dim floats. */
static void order_channels(const int *order, int n_rows, int head_dim, const float *rows, float *out)
{
    for (int r = 0; r < n_rows; r++) {
        const float *in = rows + (size_t)r * (size_t)head_dim;
        float *o = out + (size_t)r * (size_t)head_dim;
        for (int i = 0; i < head_dim; i++) {
            o[i] = in[order[i]];
        }
    }
}

/* Undo order_channels in place on n_rows rows of head_dim floats. */
static void restore_channels(const int *order, int n_rows, int head_dim, float *rows)
{
    float ordered[TQ_KV_MAX_HEAD_DIM];
    for (int r = 0; r < n_rows; r++) {
        float *row = rows + (size_t)r * (size_t)head_dim;
        memcpy(ordered, row, (size_t)head_dim * sizeof(float));
        for (int i = 0; i < head_dim; i++) {
            row[order[i]] = ordered[i];
        }
    }
}

/* Codecs with the audio codebook for the head size at index, on the sides it fits. */
static tq_status create_audio_codecs(tq_kv_cache *cache, const tq_kv_cache_config *config, int index, int head_dim,
                                     tq_error *err)
{
    const tq_kv_type_ops *sides[2] = {cache->ops_k, cache->ops_v};
    tq_kv_codec **outputs[2] = {&cache->audio_codecs_k[index], &cache->audio_codecs_v[index]};
    for (int side = 0; side < 2; side++) {
        if (!sides[side]->codec || !tq_kv_codec_codebook_fits(sides[side]->name, config->audio_codebook_count)) {
            continue;
        }
        /* Audio rows go into the same slots as the other rows, so both codecs hold residuals of
         * the same precision. */
        tq_status status = tq_kv_codec_create_with_codebook(sides[side]->name, (size_t)head_dim, config->codec_seed,
                                                            config->isa, config->max_qjl_bits >= 2 ? 2 : 1,
                                                            config->audio_codebook,
                                                            config->audio_codebook_count, outputs[side], err);
        if (status != TQ_OK) {
            return status;
        }
    }
    return TQ_OK;
}

/* Check that the audio codebook fits a codec side and allocate the per-position flags. A cache
 * without codec sides has no codebook to replace and ignores it. */
static tq_status create_audio_flags(tq_kv_cache *cache, const tq_kv_cache_config *config, tq_error *err)
{
    if (config->audio_codebook == NULL || (!cache->ops_k->codec && !cache->ops_v->codec)) {
        return TQ_OK;
    }
    const size_t count = config->audio_codebook_count;
    const int fits_k = cache->ops_k->codec && tq_kv_codec_codebook_fits(cache->ops_k->name, count);
    const int fits_v = cache->ops_v->codec && tq_kv_codec_codebook_fits(cache->ops_v->name, count);
    if (!fits_k && !fits_v) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "the audio codebook has %zu entries, which fits neither KV cache type (K %s, V %s); "
                            "polar types take 16 radii, tq4 and tq3.5 16, tq3, tq2.5 and tq4+qjl 8, tq2 and "
                            "tq3+qjl 4",
                            count, cache->ops_k->name, cache->ops_v->name);
    }
    cache->audio_flags = calloc((size_t)cache->n_ctx, 1);
    if (cache->audio_flags == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for the audio flags of %lld positions",
                            (long long)cache->n_ctx);
    }
    return TQ_OK;
}

/* Codecs of one head size, created on first use and shared by every layer of that size. */
static tq_status codecs_for_head_dim(tq_kv_cache *cache, const tq_kv_cache_config *config, int head_dim,
                                     const tq_kv_codec **key_codec, const tq_kv_codec **value_codec,
                                     int *codec_index, tq_error *err)
{
    int index = 0;
    while (index < cache->n_codec_sizes && cache->codec_head_dims[index] != head_dim) {
        index++;
    }
    if (index == cache->n_codec_sizes) {
        if (index == TQ_KV_MAX_HEAD_SIZES) {
            return tq_error_set(err, TQ_ERR_UNSUPPORTED,
                                "the KV cache codecs support at most %d different head sizes per model",
                                TQ_KV_MAX_HEAD_SIZES);
        }
        cache->codec_head_dims[index] = head_dim;
        cache->n_codec_sizes++;
        tq_status status = TQ_OK;
        if (cache->ops_k->codec) {
            status = tq_kv_codec_create_qjl(cache->ops_k->name, (size_t)head_dim, config->codec_seed, config->isa,
                                            cache->max_qjl_bits, &cache->codecs_k[index], err);
        }
        if (status == TQ_OK && cache->ops_v->codec) {
            status = tq_kv_codec_create_qjl(cache->ops_v->name, (size_t)head_dim, config->codec_seed, config->isa,
                                            cache->max_qjl_bits, &cache->codecs_v[index], err);
        }
        if (status == TQ_OK && config->norm_correction) {
            if (cache->codecs_k[index] != NULL) {
                tq_kv_codec_set_norm_correction(cache->codecs_k[index], 1);
            }
            if (cache->codecs_v[index] != NULL) {
                tq_kv_codec_set_norm_correction(cache->codecs_v[index], 1);
            }
        }
        if (status == TQ_OK && cache->audio_flags != NULL) {
            status = create_audio_codecs(cache, config, index, head_dim, err);
        }
        if (status != TQ_OK) {
            return status;
        }
    }
    *key_codec = cache->codecs_k[index];
    *value_codec = cache->codecs_v[index];
    *codec_index = index;
    return TQ_OK;
}

/* Allocate the copies of keys and values of layer l for slots positions of slot_bytes each.
 * The argument what ("recent window" or "f16 sink") names them in errors. */
static tq_status allocate_copies(int64_t slots, size_t slot_bytes, const char *what, int l, void **keys,
                                 void **values, tq_error *err)
{
    size_t bytes;
    if (!tq_mul_size((size_t)slots, slot_bytes, &bytes)) {
        return tq_error_set(err, TQ_ERR_NOMEM, "%s of %lld positions overflows size_t", what, (long long)slots);
    }
    *keys = tq_aligned_alloc(bytes);
    *values = tq_aligned_alloc(bytes);
    if (*keys == NULL || *values == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for the %s of layer %d", what, l);
    }
    return TQ_OK;
}

/* Per-layer storage of every layer: row sizes, baseline ops or codecs, and for codec
 * layers the ring of the recent window (f16 or q8_0) and the f16 sink. Layers flagged in
 * config->layer_f16 store f16 rows with the baseline f16 type. */
static tq_status create_codecs(tq_kv_cache *cache, const tq_kv_cache_config *config, tq_error *err)
{
    const tq_kv_type_ops *f16_ops = tq_kv_type_get(TQ_KV_F16);
    const int uses_codec = cache->ops_k->codec || cache->ops_v->codec;
    tq_status status = TQ_OK;
    if (uses_codec) {
        if (config->recent_f16 < 0) {
            return tq_error_set(err, TQ_ERR_INVALID, "recent_f16 must be >= 0 positions, got %lld",
                                (long long)config->recent_f16);
        }
        cache->recent_f16 = config->recent_f16 < cache->n_ctx ? config->recent_f16 : cache->n_ctx;
        cache->recent_ops = tq_kv_type_get(config->recent_q8_0 ? TQ_KV_Q8_0 : TQ_KV_F16);
        if (cache->recent_f16 > 0) {
            cache->recent_slots = cache->recent_f16 + cache->n_batch;
            cache->recent_slots = cache->recent_slots < cache->n_ctx ? cache->recent_slots : cache->n_ctx;
        }
        if (config->sink_f16 < 0) {
            return tq_error_set(err, TQ_ERR_INVALID, "sink_f16 must be >= 0 positions, got %lld",
                                (long long)config->sink_f16);
        }
        cache->sink_f16 = config->sink_f16 < cache->n_ctx ? config->sink_f16 : cache->n_ctx;
        if (cache->sink_f16 > 0) {
            const int64_t room = cache->n_batch < TQ_KV_SINK_MOVE_ROOM ? cache->n_batch : TQ_KV_SINK_MOVE_ROOM;
            cache->sink_slots = cache->sink_f16 + (cache->recent_slots > 0 ? 0 : room);
            cache->sink_slots = cache->sink_slots < cache->n_ctx ? cache->sink_slots : cache->n_ctx;
        }
    }

    const size_t scale_stride = (size_t)config->head_dim;
    for (int l = 0; l < cache->n_layers; l++) {
        tq_kv_layer *layer = &cache->layers[l];
        if (layer->source != l) {
            continue; /* reads the rows of an earlier layer and stores none */
        }
        const int keep_f16 = config->layer_f16 != NULL && config->layer_f16[l];
        const tq_kv_codec *key_codec = NULL;
        const tq_kv_codec *value_codec = NULL;
        int codec_index = 0;
        if (uses_codec && !keep_f16) {
            status = codecs_for_head_dim(cache, config, layer->head_dim, &key_codec, &value_codec, &codec_index, err);
            if (status != TQ_OK) {
                return status;
            }
        }
        layer->ops_k = keep_f16 ? f16_ops : (cache->ops_k->codec ? NULL : cache->ops_k);
        layer->ops_v = keep_f16 ? f16_ops : (cache->ops_v->codec ? NULL : cache->ops_v);
        layer->codec_k = layer->ops_k == NULL ? key_codec : NULL;
        layer->codec_v = layer->ops_v == NULL ? value_codec : NULL;
        layer->audio_codec_k = layer->codec_k;
        layer->audio_codec_v = layer->codec_v;
        if (layer->codec_k != NULL && cache->audio_codecs_k[codec_index] != NULL) {
            layer->audio_codec_k = cache->audio_codecs_k[codec_index];
        }
        if (layer->codec_v != NULL && cache->audio_codecs_v[codec_index] != NULL) {
            layer->audio_codec_v = cache->audio_codecs_v[codec_index];
        }
        layer->key_row_bytes = layer->codec_k != NULL ? tq_kv_codec_row_bytes(layer->codec_k)
                                                      : layer->ops_k->row_bytes(layer->head_dim);
        layer->value_row_bytes = layer->codec_v != NULL ? tq_kv_codec_row_bytes(layer->codec_v)
                                                        : layer->ops_v->row_bytes(layer->head_dim);
        const size_t f16_row = f16_ops->row_bytes(layer->head_dim);
        layer->key_slot_bytes = layer->key_row_bytes * (size_t)cache->n_kv_heads;
        layer->value_slot_bytes = layer->value_row_bytes * (size_t)cache->n_kv_heads;

        if ((layer->codec_k != NULL || layer->codec_v != NULL) && cache->recent_slots > 0) {
            layer->recent_slot_bytes = (size_t)cache->n_kv_heads * cache->recent_ops->row_bytes(layer->head_dim);
            status = allocate_copies(cache->recent_slots, layer->recent_slot_bytes, "recent window", l,
                                     (void **)&layer->recent_keys, (void **)&layer->recent_values, err);
            if (status != TQ_OK) {
                return status;
            }
        }
        if ((layer->codec_k != NULL || layer->codec_v != NULL) && cache->sink_f16 > 0) {
            status = allocate_copies(cache->sink_slots, (size_t)cache->n_kv_heads * f16_row, "f16 sink", l,
                                     (void **)&layer->sink_keys, (void **)&layer->sink_values, err);
            if (status != TQ_OK) {
                return status;
            }
        }
        const size_t order_stride = (size_t)config->head_dim;
        if (layer->codec_k != NULL && tq_kv_codec_is_split(layer->codec_k) && config->channel_order_k != NULL) {
            status = create_channel_order(cache, layer, config->channel_order_k + (size_t)l * order_stride, l, "k",
                                          &layer->order_k, err);
            if (status != TQ_OK) {
                return status;
            }
        }
        if (layer->codec_v != NULL && tq_kv_codec_is_split(layer->codec_v) && config->channel_order_v != NULL) {
            status = create_channel_order(cache, layer, config->channel_order_v + (size_t)l * order_stride, l, "v",
                                          &layer->order_v, err);
            if (status != TQ_OK) {
                return status;
            }
        }
        if (layer->codec_k != NULL && config->key_scale != NULL) {
            status = create_key_balance(cache, layer, config->key_scale + (size_t)l * scale_stride,
                                        config->key_center != NULL ? config->key_center + (size_t)l * scale_stride
                                                                   : NULL,
                                        l, err);
            if (status != TQ_OK) {
                return status;
            }
        }
    }
    if (cache->sink_f16 > 0) {
        cache->sink_rows = malloc(2 * (size_t)cache->n_kv_heads * (size_t)config->head_dim * sizeof(float));
        if (cache->sink_rows == NULL) {
            return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for the f16 sink");
        }
    }
    /* The cache-wide sizes describe the first layer (which always stores its rows); code
     * reads the per-layer sizes. */
    cache->key_row_bytes = cache->layers[0].key_row_bytes;
    cache->value_row_bytes = cache->layers[0].value_row_bytes;
    cache->key_slot_bytes = cache->layers[0].key_slot_bytes;
    cache->value_slot_bytes = cache->layers[0].value_slot_bytes;
    return TQ_OK;
}

/* Head size, row source, window and ring size of every layer, checked against each other. */
static tq_status set_layer_shapes(tq_kv_cache *cache, const tq_kv_cache_config *config, tq_error *err)
{
    for (int l = 0; l < config->n_layers; l++) {
        tq_kv_layer *layer = &cache->layers[l];
        const int64_t window = config->layer_window != NULL ? config->layer_window[l] : 0;
        if (window < 0) {
            return tq_error_set(err, TQ_ERR_INVALID, "layer %d has a negative sliding window %lld", l,
                                (long long)window);
        }
        layer->window = window;
        layer->head_dim = config->layer_head_dim != NULL ? config->layer_head_dim[l] : config->head_dim;
        if (layer->head_dim <= 0 || layer->head_dim % TQ_KV_BLOCK != 0 || layer->head_dim > config->head_dim) {
            return tq_error_set(err, TQ_ERR_UNSUPPORTED,
                                "KV cache head_dim %d of layer %d is not supported; it must be a positive multiple "
                                "of %d and at most head_dim %d",
                                layer->head_dim, l, TQ_KV_BLOCK, config->head_dim);
        }
        layer->source = config->layer_kv_source != NULL ? config->layer_kv_source[l] : l;
        if (layer->source != l) {
            const int s = layer->source;
            if (s < 0 || s > l || cache->layers[s].source != s) {
                return tq_error_set(err, TQ_ERR_INVALID,
                                    "layer %d reads the KV rows of layer %d; it must be an earlier layer that "
                                    "stores its own rows",
                                    l, s);
            }
            if (cache->layers[s].head_dim != layer->head_dim || cache->layers[s].window != window) {
                return tq_error_set(err, TQ_ERR_INVALID,
                                    "layer %d (head_dim %d, window %lld) cannot read the KV rows of layer %d "
                                    "(head_dim %d, window %lld); both must match",
                                    l, layer->head_dim, (long long)window, s, cache->layers[s].head_dim,
                                    (long long)cache->layers[s].window);
            }
            layer->max_slots = 0;
            continue;
        }
        layer->max_slots = config->n_ctx;
        if (window > 0 && window + cache->n_batch < config->n_ctx) {
            layer->max_slots = window + cache->n_batch;
        }
    }
    return TQ_OK;
}

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
    if (config->max_qjl_bits < 0 || config->max_qjl_bits > 2) {
        return tq_error_set(err, TQ_ERR_INVALID, "max_qjl_bits %d is not supported; use 0 or 1 (1-bit rows) or 2",
                            config->max_qjl_bits);
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
    cache->has_qjl = type_has_qjl(config->type_k) || type_has_qjl(config->type_v);
    cache->max_qjl_bits = config->max_qjl_bits == 2 ? 2 : 1;

    cache->layers = calloc((size_t)config->n_layers, sizeof(tq_kv_layer));
    if (cache->layers == NULL) {
        free(cache);
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating the KV cache");
    }
    tq_status status = set_layer_shapes(cache, config, err);
    if (status == TQ_OK) {
        status = create_audio_flags(cache, config, err);
    }
    if (status == TQ_OK) {
        status = create_codecs(cache, config, err);
    }
    if (status == TQ_OK && cache->has_qjl && cache->max_qjl_bits == 2) {
        cache->position_qjl_bits = malloc((size_t)cache->n_ctx);
        if (cache->position_qjl_bits == NULL) {
            status = tq_error_set(err, TQ_ERR_NOMEM, "out of memory for the residual precision of %lld positions",
                                  (long long)cache->n_ctx);
        } else {
            memset(cache->position_qjl_bits, 1, (size_t)cache->n_ctx);
        }
    }
    if (status != TQ_OK) {
        tq_kv_cache_free(cache);
        return status;
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
            tq_aligned_free(cache->layers[l].recent_keys);
            tq_aligned_free(cache->layers[l].recent_values);
            tq_aligned_free(cache->layers[l].sink_keys);
            tq_aligned_free(cache->layers[l].sink_values);
            free(cache->layers[l].key_scale);
            free(cache->layers[l].key_center);
            free(cache->layers[l].key_mean);
            free(cache->layers[l].order_k);
            free(cache->layers[l].order_v);
        }
        free(cache->layers);
    }
    for (int i = 0; i < cache->n_codec_sizes; i++) {
        tq_kv_codec_free(cache->codecs_k[i]);
        tq_kv_codec_free(cache->codecs_v[i]);
        tq_kv_codec_free(cache->audio_codecs_k[i]);
        tq_kv_codec_free(cache->audio_codecs_v[i]);
    }
    free(cache->audio_flags);
    free(cache->balanced_keys);
    free(cache->ordered_rows);
    free(cache->sink_rows);
    free(cache->position_qjl_bits);
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

int tq_kv_cache_layer_head_dim(const tq_kv_cache *cache, int layer)
{
    return cache->layers[layer].head_dim;
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
    if (n_new < 0) {
        return tq_error_set(err, TQ_ERR_INVALID, "cannot reserve %lld positions; the count must be >= 0",
                            (long long)n_new);
    }
    const int64_t end = cache->n_past + n_new;
    if (end > cache->n_ctx) {
        return tq_error_set(err, TQ_ERR_RANGE,
                            "the KV cache holds %lld positions and %lld more do not fit in its context of %lld",
                            (long long)cache->n_past, (long long)n_new, (long long)cache->n_ctx);
    }
    for (int l = 0; l < cache->n_layers; l++) {
        tq_kv_layer *layer = &cache->layers[l];
        if (layer->source != l) {
            continue;
        }
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
        uint8_t *keys = grow_slots(layer->keys, layer->n_slots, target, layer->key_slot_bytes);
        if (keys == NULL) {
            return tq_error_set(err, TQ_ERR_NOMEM, "out of memory growing the KV cache of layer %d to %lld positions",
                                l, (long long)target);
        }
        layer->keys = keys;
        uint8_t *values = grow_slots(layer->values, layer->n_slots, target, layer->value_slot_bytes);
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

/* Store n rows of one side (keys or values) with its baseline type or codec. A codec with a
 * QJL stage writes a qjl_bits residual. */
static void write_side(const tq_kv_type_ops *ops, const tq_kv_codec *codec, int qjl_bits, const float *src,
                       int64_t n, int head_dim, uint8_t *dst, size_t row_bytes)
{
    if (codec == NULL) {
        ops->write_rows(src, n, head_dim, dst, row_bytes);
        return;
    }
    /* A side without a QJL stage (max_qjl_bits 1) stores every position the same way. */
    if (qjl_bits > tq_kv_codec_max_qjl_bits(codec)) {
        qjl_bits = 1;
    }
    /* Encoding fails only for a non-finite value or a row norm above 65504. A working model
     * never produces either, and such a row is stored as zeros (a zero vector). */
    if (tq_kv_codec_encode(codec, qjl_bits, src, (size_t)head_dim, (size_t)n, dst, row_bytes, NULL) != TQ_OK) {
        memset(dst, 0, (size_t)n * row_bytes);
        for (int64_t i = 0; i < n; i++) {
            if (tq_kv_codec_encode(codec, qjl_bits, src + i * head_dim, (size_t)head_dim, 1, dst + i * row_bytes,
                                   row_bytes, NULL) != TQ_OK) {
                memset(dst + i * row_bytes, 0, row_bytes);
            }
        }
    }
}

/* Set the key mean of a balancing layer from the first keys it receives: the average of up
 * to TQ_KV_MEAN_POSITIONS positions over the flagged channels, per KV head. */
static void set_key_mean(const tq_kv_cache *cache, tq_kv_layer *layer, int64_t n, const float *keys)
{
    const int d = layer->head_dim;
    const int64_t used = n < TQ_KV_MEAN_POSITIONS ? n : TQ_KV_MEAN_POSITIONS;
    for (int g = 0; g < cache->n_kv_heads; g++) {
        float *mean = layer->key_mean + (size_t)g * (size_t)d;
        for (int i = 0; i < d; i++) {
            double sum = 0.0;
            if (layer->key_center[i]) {
                for (int64_t t = 0; t < used; t++) {
                    sum += keys[((size_t)t * (size_t)cache->n_kv_heads + (size_t)g) * (size_t)d + (size_t)i];
                }
            }
            mean[i] = (float)(sum / (double)used);
        }
    }
    layer->key_mean_set = 1;
    layer->key_mean_positions = used;
}

/* Write (k - mean) * scale for n positions into cache->balanced_keys and return it. */
static const float *balance_keys(tq_kv_cache *cache, const tq_kv_layer *layer, int64_t n, const float *keys)
{
    const size_t d = (size_t)layer->head_dim;
    const size_t rows = (size_t)n * (size_t)cache->n_kv_heads;
    for (size_t r = 0; r < rows; r++) {
        const float *mean = layer->key_mean + (r % (size_t)cache->n_kv_heads) * d;
        const float *k = keys + r * d;
        float *out = cache->balanced_keys + r * d;
        for (size_t i = 0; i < d; i++) {
            out[i] = (k[i] - mean[i]) * layer->key_scale[i];
        }
    }
    return cache->balanced_keys;
}

/* Round one position's keys and values (row_floats each) to the f16 copies at keys_f16 and
 * values_f16. */
static void write_f16_copy(const float *keys, const float *values, int row_floats, uint16_t *keys_f16,
                           uint16_t *values_f16)
{
    const tq_kv_type_ops *f16_ops = tq_kv_type_get(TQ_KV_F16);
    const size_t row_bytes = (size_t)row_floats * sizeof(uint16_t);
    f16_ops->write_rows(keys, 1, row_floats, keys_f16, row_bytes);
    f16_ops->write_rows(values, 1, row_floats, values_f16, row_bytes);
}

void tq_kv_cache_write(tq_kv_cache *cache, int layer_index, int64_t pos, int64_t n, const float *keys,
                       const float *values)
{
    tq_kv_layer *layer = &cache->layers[layer_index];
    if (layer->source != layer_index) {
        return;
    }
    const int head_dim = layer->head_dim;
    const int row_floats = cache->n_kv_heads * head_dim;
    /* Codes take balanced keys; the f16 copies below keep the keys as they are. */
    const float *coded_keys = keys;
    if (layer->key_scale != NULL) {
        if (!layer->key_mean_set) {
            set_key_mean(cache, layer, n, keys);
        }
        coded_keys = balance_keys(cache, layer, n, keys);
    }
    for (int64_t t = 0; t < n; t++) {
        const int64_t slot = (pos + t) % layer->max_slots;
        uint8_t *key_slot = layer->keys + (size_t)slot * layer->key_slot_bytes;
        uint8_t *value_slot = layer->values + (size_t)slot * layer->value_slot_bytes;
        const int audio = tq_kv_cache_is_audio(cache, pos + t);
        /* All heads of one position are contiguous, so one call encodes them. */
        const int qjl_bits = tq_kv_cache_qjl_bits_at(cache, pos + t);
        const float *key_rows = coded_keys + t * row_floats;
        const float *value_rows = values + t * row_floats;
        if (layer->order_k != NULL) {
            order_channels(layer->order_k, cache->n_kv_heads, head_dim, key_rows, cache->ordered_rows);
            key_rows = cache->ordered_rows;
        }
        if (layer->order_v != NULL) {
            order_channels(layer->order_v, cache->n_kv_heads, head_dim, value_rows, cache->ordered_rows + row_floats);
            value_rows = cache->ordered_rows + row_floats;
        }
        write_side(layer->ops_k, audio ? layer->audio_codec_k : layer->codec_k, qjl_bits, key_rows,
                   cache->n_kv_heads, head_dim, key_slot, layer->key_row_bytes);
        write_side(layer->ops_v, audio ? layer->audio_codec_v : layer->codec_v, qjl_bits, value_rows,
                   cache->n_kv_heads, head_dim, value_slot, layer->value_row_bytes);
        const size_t f16_slot = (size_t)row_floats;
        if (layer->recent_keys != NULL) {
            /* One row per KV head, as the attention loop reads them. */
            const size_t recent_offset = (size_t)((pos + t) % cache->recent_slots) * layer->recent_slot_bytes;
            const size_t recent_row = layer->recent_slot_bytes / (size_t)cache->n_kv_heads;
            cache->recent_ops->write_rows(keys + t * row_floats, cache->n_kv_heads, head_dim,
                                          layer->recent_keys + recent_offset, recent_row);
            cache->recent_ops->write_rows(values + t * row_floats, cache->n_kv_heads, head_dim,
                                          layer->recent_values + recent_offset, recent_row);
        }
        if (layer->sink_keys != NULL && pos + t < cache->sink_slots) {
            const size_t sink_slot = (size_t)(pos + t);
            write_f16_copy(keys + t * row_floats, values + t * row_floats, row_floats,
                           layer->sink_keys + sink_slot * f16_slot, layer->sink_values + sink_slot * f16_slot);
        }
    }
}

tq_status tq_kv_cache_set_qjl_bits(tq_kv_cache *cache, int64_t pos, int64_t n, const uint8_t *bits, tq_error *err)
{
    if (pos < 0 || n < 0 || n > cache->n_ctx - pos) {
        return tq_error_set(err, TQ_ERR_RANGE, "positions %lld .. %lld are outside the KV cache context of %lld",
                            (long long)pos, (long long)(pos + n - 1), (long long)cache->n_ctx);
    }
    for (int64_t i = 0; i < n; i++) {
        if (bits[i] != 1 && bits[i] != 2) {
            return tq_error_set(err, TQ_ERR_INVALID, "QJL residual precision %d of position %lld is invalid; use 1 or 2",
                                (int)bits[i], (long long)(pos + i));
        }
        if (bits[i] == 2 && cache->position_qjl_bits == NULL && cache->has_qjl) {
            return tq_error_set(err, TQ_ERR_INVALID,
                                "position %lld asks for a 2-bit QJL residual, but the KV cache rows hold 1 bit; "
                                "create the cache with max_qjl_bits 2",
                                (long long)(pos + i));
        }
    }
    if (cache->position_qjl_bits != NULL) {
        memcpy(cache->position_qjl_bits + pos, bits, (size_t)n);
    }
    return TQ_OK;
}

int tq_kv_cache_qjl_bits_at(const tq_kv_cache *cache, int64_t pos)
{
    return cache->position_qjl_bits != NULL ? cache->position_qjl_bits[pos] : 1;
}

void tq_kv_cache_qjl_positions(const tq_kv_cache *cache, int64_t *n_1bit, int64_t *n_2bit)
{
    *n_1bit = 0;
    *n_2bit = 0;
    if (!cache->has_qjl) {
        return;
    }
    for (int64_t p = 0; p < cache->n_past; p++) {
        if (tq_kv_cache_qjl_bits_at(cache, p) == 2) {
            (*n_2bit)++;
        } else {
            (*n_1bit)++;
        }
    }
}

void tq_kv_cache_advance(tq_kv_cache *cache, int64_t n)
{
    cache->n_past += n;
}

void tq_kv_cache_set_audio(tq_kv_cache *cache, int64_t pos, int audio)
{
    if (cache->audio_flags != NULL && pos >= 0 && pos < cache->n_ctx) {
        cache->audio_flags[pos] = audio != 0;
    }
}

int tq_kv_cache_is_audio(const tq_kv_cache *cache, int64_t pos)
{
    return cache->audio_flags != NULL && pos >= 0 && pos < cache->n_ctx && cache->audio_flags[pos];
}

/* Decode n_kv_heads stored rows of one side into out: through the codec, or for a baseline type
 * by accumulating each row with weight 1 into zeros (the type's own decoding). */
static void read_side(const tq_kv_cache *cache, const tq_kv_type_ops *ops, const tq_kv_codec *codec, int qjl_bits,
                      const uint8_t *slot, size_t row_bytes, int head_dim, float *out)
{
    if (codec != NULL) {
        tq_kv_codec_decode(codec, qjl_bits, slot, row_bytes, (size_t)cache->n_kv_heads, out, (size_t)head_dim);
        return;
    }
    const float weight = 1.0f;
    memset(out, 0, (size_t)cache->n_kv_heads * (size_t)head_dim * sizeof(float));
    for (int g = 0; g < cache->n_kv_heads; g++) {
        ops->accumulate(cache->kernels, &weight, slot + (size_t)g * row_bytes, row_bytes, 1, head_dim,
                        out + (size_t)g * (size_t)head_dim);
    }
}

/* Decode the stored rows of position pos of a layer that stores its own rows into keys and
 * values (n_kv_heads rows of head_dim floats each), undoing channel order and key balancing. */
static void decode_position(const tq_kv_cache *cache, const tq_kv_layer *layer, int64_t pos, float *keys,
                            float *values)
{
    const int head_dim = layer->head_dim;
    const size_t row_floats = (size_t)cache->n_kv_heads * (size_t)head_dim;
    const int64_t slot = pos % layer->max_slots;
    const int audio = tq_kv_cache_is_audio(cache, pos);
    const int qjl_bits = tq_kv_cache_qjl_bits_at(cache, pos);
    read_side(cache, layer->ops_k, audio ? layer->audio_codec_k : layer->codec_k, qjl_bits,
              layer->keys + (size_t)slot * layer->key_slot_bytes, layer->key_row_bytes, head_dim, keys);
    read_side(cache, layer->ops_v, audio ? layer->audio_codec_v : layer->codec_v, qjl_bits,
              layer->values + (size_t)slot * layer->value_slot_bytes, layer->value_row_bytes, head_dim, values);
    if (layer->order_k != NULL) {
        restore_channels(layer->order_k, cache->n_kv_heads, head_dim, keys);
    }
    if (layer->order_v != NULL) {
        restore_channels(layer->order_v, cache->n_kv_heads, head_dim, values);
    }
    if (layer->key_scale != NULL) {
        /* Codes hold (k - mean) * scale. */
        for (size_t r = 0; r < row_floats; r++) {
            const size_t channel = r % (size_t)head_dim;
            const float *mean = layer->key_mean + (r / (size_t)head_dim) * (size_t)head_dim;
            keys[r] = keys[r] / layer->key_scale[channel] + mean[channel];
        }
    }
}

tq_status tq_kv_cache_read(const tq_kv_cache *cache, int layer_index, int64_t pos, int64_t n, float *keys,
                           float *values, tq_error *err)
{
    if (layer_index < 0 || layer_index >= cache->n_layers) {
        return tq_error_set(err, TQ_ERR_INVALID, "layer %d is outside the KV cache's %d layers", layer_index,
                            cache->n_layers);
    }
    layer_index = cache->layers[layer_index].source;
    const tq_kv_layer *layer = &cache->layers[layer_index];
    const int64_t oldest_held = cache->n_past > layer->max_slots ? cache->n_past - layer->max_slots : 0;
    if (n < 0 || pos < oldest_held || pos > cache->n_past || n > cache->n_past - pos) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "cannot read positions %lld .. %lld of layer %d: it holds positions %lld .. %lld",
                            (long long)pos, (long long)(pos + n - 1), layer_index, (long long)oldest_held,
                            (long long)(cache->n_past - 1));
    }
    const size_t row_floats = (size_t)cache->n_kv_heads * (size_t)layer->head_dim;
    for (int64_t t = 0; t < n; t++) {
        decode_position(cache, layer, pos + t, keys + (size_t)t * row_floats, values + (size_t)t * row_floats);
    }
    return TQ_OK;
}

static size_t align64(size_t bytes)
{
    return (bytes + 63) & ~(size_t)63;
}

/* Scratch layout of a layer that stores rows, per query: the prepared state, TQ_KV_CHUNK
 * scores, and for a codec value side its rotated-domain accumulator. A codec's prepared
 * queries and accumulators are multiples of 16 floats, so these strides equal the codec's
 * own (query_floats, acc_floats) and its kernels can read all queries of a KV head at once. */
static size_t query_state_bytes(const tq_kv_layer *layer)
{
    size_t bytes = (size_t)layer->head_dim * sizeof(float);
    if (layer->codec_k != NULL) {
        const size_t codec_bytes = tq_kv_codec_query_floats(layer->codec_k) * sizeof(float);
        bytes = codec_bytes > bytes ? codec_bytes : bytes;
    } else {
        bytes = layer->ops_k->query_bytes(layer->head_dim);
    }
    return align64(bytes);
}

static size_t accumulator_bytes(const tq_kv_layer *layer)
{
    return layer->codec_v != NULL ? align64(tq_kv_codec_acc_floats(layer->codec_v) * sizeof(float)) : 0;
}

size_t tq_kv_cache_scratch_bytes(const tq_kv_cache *cache, int n_queries)
{
    size_t per_query = 0;
    for (int l = 0; l < cache->n_layers; l++) {
        const tq_kv_layer *layer = &cache->layers[l];
        if (layer->source != l) {
            continue;
        }
        const size_t bytes = query_state_bytes(layer) + TQ_KV_CHUNK * sizeof(float) + accumulator_bytes(layer);
        per_query = bytes > per_query ? bytes : per_query;
    }
    return (size_t)n_queries * per_query;
}

int64_t tq_kv_cache_first_visible(const tq_kv_cache *cache, int layer, int64_t pos)
{
    const int64_t window = cache->layers[layer].window;
    return window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
}

/* tq_kv_cache_attend_range with the f16 sink read for the positions below sink_limit (at most
 * the cache's sink_slots) instead of below sink_f16. */
static void attend_range(const tq_kv_cache *cache, int layer_index, int kv_head, int64_t pos, int64_t begin,
                         int64_t end, int64_t sink_limit, int n_queries, const float *queries, void *scratch,
                         float *partial)
{
    /* A layer without rows of its own reads its source layer, which has the same window. */
    layer_index = cache->layers[layer_index].source;
    const tq_kv_layer *layer = &cache->layers[layer_index];
    const tq_kv_type_ops *f16_ops = tq_kv_type_get(TQ_KV_F16);
    const int head_dim = layer->head_dim;
    const size_t partial_floats = TQ_KV_PARTIAL_FLOATS(head_dim);
    const size_t state_bytes = query_state_bytes(layer);
    const size_t acc_floats = accumulator_bytes(layer) / sizeof(float);
    uint8_t *states = scratch;
    float *scores = (float *)(states + (size_t)n_queries * state_bytes);
    float *accs = scores + (size_t)n_queries * TQ_KV_CHUNK;

    int64_t first = tq_kv_cache_first_visible(cache, layer_index, pos);
    first = begin > first ? begin : first;
    const int64_t last = end - 1 < pos ? end - 1 : pos;
    /* A codec layer reads positions from recent_first on from its recent ring and positions
     * before sink_end from its f16 sink; the codes cover the rest. */
    int64_t recent_first = last + 1;
    if (layer->recent_keys != NULL) {
        recent_first = pos - cache->recent_f16 + 1 > first ? pos - cache->recent_f16 + 1 : first;
    }
    int64_t sink_end = first;
    if (layer->sink_keys != NULL && sink_limit > first) {
        sink_end = sink_limit < recent_first ? sink_limit : recent_first;
    }

    /* Coded positions, if any, are those from sink_end to recent_first. Ranges that lie in the
     * window or the sink (the newest positions of a decode step are scored one by one, see
     * TQ_ATTENTION_ROW_PARTS) skip the query rotation, since only the codes read it. */
    const int has_codes = recent_first > sink_end;
    float score_offsets[TQ_KV_MAX_GROUP] = {0.0f};
    for (int i = 0; i < n_queries; i++) {
        float *part = partial + (size_t)i * partial_floats;
        part[0] = -INFINITY;
        part[1] = 0.0f;
        memset(part + 2, 0, (size_t)head_dim * sizeof(float));
        const float *query = queries + (size_t)i * head_dim;
        if (layer->codec_k != NULL && !has_codes) {
            continue;
        }
        if (layer->codec_k != NULL && (layer->key_scale != NULL || layer->order_k != NULL)) {
            /* Balanced codes hold (k - mean) * scale: score them with q / scale and add
             * q . mean back, so that coded and f16 rows share one softmax. Ordered codes
             * take the query's channels in the same order. */
            float coded_query[TQ_KV_MAX_HEAD_DIM];
            for (int d = 0; d < head_dim; d++) {
                const int channel = layer->order_k != NULL ? layer->order_k[d] : d;
                coded_query[d] = layer->key_scale != NULL ? query[channel] / layer->key_scale[channel] : query[channel];
            }
            if (layer->key_scale != NULL) {
                const float *mean = layer->key_mean + (size_t)kv_head * (size_t)head_dim;
                float offset = 0.0f;
                for (int d = 0; d < head_dim; d++) {
                    offset += query[d] * mean[d];
                }
                score_offsets[i] = offset;
            }
            tq_kv_codec_prepare_query(layer->codec_k, coded_query, (float *)(states + (size_t)i * state_bytes));
        } else if (layer->codec_k != NULL) {
            tq_kv_codec_prepare_query(layer->codec_k, query, (float *)(states + (size_t)i * state_bytes));
        } else {
            layer->ops_k->prepare_query(query, head_dim, states + (size_t)i * state_bytes);
        }
    }
    if (layer->codec_v != NULL) {
        memset(accs, 0, (size_t)n_queries * acc_floats * sizeof(float));
    }

    const size_t f16_row = (size_t)head_dim * sizeof(uint16_t);
    const size_t f16_stride = f16_row * (size_t)cache->n_kv_heads;
    int64_t chunk_start = first;
    while (chunk_start <= last) {
        /* A chunk is a run of consecutive slots of one ring: it ends at TQ_KV_CHUNK
         * positions, at the last visible one, where the ring wraps, or where the f16 sink
         * ends or the f16 window starts. */
        const int recent = chunk_start >= recent_first;
        const int sink = chunk_start < sink_end;
        const int exact = recent || sink; /* read from f16 or q8_0 copies, not from codes */
        int64_t ring = layer->max_slots;
        if (recent) {
            ring = cache->recent_slots;
        } else if (sink) {
            ring = cache->sink_slots;
        }
        const int64_t slot = chunk_start % ring;
        int64_t length = last - chunk_start + 1;
        length = length < TQ_KV_CHUNK ? length : TQ_KV_CHUNK;
        length = length < ring - slot ? length : ring - slot;
        if (sink && sink_end - chunk_start < length) {
            length = sink_end - chunk_start;
        }
        if (!exact && recent_first - chunk_start < length) {
            length = recent_first - chunk_start;
        }
        /* Coded rows of one chunk share one codebook and one residual precision: a chunk also
         * ends where the audio flag or the precision of its positions changes. */
        const int audio = !exact && tq_kv_cache_is_audio(cache, chunk_start);
        const int qjl_bits = tq_kv_cache_qjl_bits_at(cache, chunk_start);
        if (!exact && (cache->audio_flags != NULL || cache->position_qjl_bits != NULL)) {
            int64_t same = 1;
            while (same < length && tq_kv_cache_is_audio(cache, chunk_start + same) == audio &&
                   tq_kv_cache_qjl_bits_at(cache, chunk_start + same) == qjl_bits) {
                same++;
            }
            length = same;
        }
        const tq_kv_codec *key_codec = audio ? layer->audio_codec_k : layer->codec_k;
        const tq_kv_codec *value_codec = audio ? layer->audio_codec_v : layer->codec_v;
        const uint8_t *key_rows, *value_rows;
        size_t key_stride, value_stride;
        const tq_kv_type_ops *copy_ops = recent ? cache->recent_ops : f16_ops; /* type of exact rows */
        if (recent) {
            const size_t recent_row = layer->recent_slot_bytes / (size_t)cache->n_kv_heads;
            key_rows = layer->recent_keys + (size_t)slot * layer->recent_slot_bytes + (size_t)kv_head * recent_row;
            value_rows = layer->recent_values + (size_t)slot * layer->recent_slot_bytes + (size_t)kv_head * recent_row;
            key_stride = value_stride = layer->recent_slot_bytes;
        } else if (sink) {
            key_rows = (const uint8_t *)layer->sink_keys + (size_t)slot * f16_stride + (size_t)kv_head * f16_row;
            value_rows = (const uint8_t *)layer->sink_values + (size_t)slot * f16_stride + (size_t)kv_head * f16_row;
            key_stride = value_stride = f16_stride;
        } else {
            key_rows = layer->keys + (size_t)slot * layer->key_slot_bytes + (size_t)kv_head * layer->key_row_bytes;
            value_rows =
                layer->values + (size_t)slot * layer->value_slot_bytes + (size_t)kv_head * layer->value_row_bytes;
            key_stride = layer->key_slot_bytes;
            value_stride = layer->value_slot_bytes;
        }

        /* Scores: a codec scores every query in one pass over the codes. The rows of the
         * sink and the window are scored with the query itself. */
        if (!exact && layer->codec_k != NULL) {
            tq_kv_codec_scores(key_codec, qjl_bits, (const float *)states, n_queries, key_rows, key_stride,
                               (size_t)length, scores, TQ_KV_CHUNK);
            if (layer->key_scale != NULL) {
                for (int i = 0; i < n_queries; i++) {
                    for (int64_t j = 0; j < length; j++) {
                        scores[(size_t)i * TQ_KV_CHUNK + (size_t)j] += score_offsets[i];
                    }
                }
            }
        } else {
            for (int i = 0; i < n_queries; i++) {
                const void *state = exact ? (const void *)(queries + (size_t)i * head_dim)
                                          : (const void *)(states + (size_t)i * state_bytes);
                const tq_kv_type_ops *ops = exact ? copy_ops : layer->ops_k;
                ops->scores(cache->kernels, state, key_rows, key_stride, length, head_dim,
                            scores + (size_t)i * TQ_KV_CHUNK);
            }
        }

        /* Online softmax: rescale what was summed so far to the new maximum. */
        for (int i = 0; i < n_queries; i++) {
            float *part = partial + (size_t)i * partial_floats;
            float *chunk_scores = scores + (size_t)i * TQ_KV_CHUNK;
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
                if (layer->codec_v != NULL) {
                    float *acc = accs + (size_t)i * acc_floats;
                    for (size_t d = 0; d < acc_floats; d++) {
                        acc[d] *= rescale;
                    }
                }
                part[0] = chunk_max;
            }
            float sum = 0.0f;
            for (int64_t j = 0; j < length; j++) {
                chunk_scores[j] = expf(chunk_scores[j] - part[0]);
                sum += chunk_scores[j];
            }
            part[1] += sum;
        }

        /* Values: a codec sums in its rotated domain (finished once below), the others
         * straight into the partial result. */
        if (!exact && layer->codec_v != NULL) {
            tq_kv_codec_accumulate(value_codec, qjl_bits, value_rows, value_stride, (size_t)length, scores, TQ_KV_CHUNK,
                                   n_queries, accs);
        } else {
            const tq_kv_type_ops *ops = exact ? copy_ops : layer->ops_v;
            for (int i = 0; i < n_queries; i++) {
                ops->accumulate(cache->kernels, scores + (size_t)i * TQ_KV_CHUNK, value_rows, value_stride, length,
                                head_dim, partial + (size_t)i * partial_floats + 2);
            }
        }
        chunk_start += length;
    }

    if (layer->codec_v != NULL && has_codes) {
        /* One inverse rotation per query and range; finish works in place. */
        for (int i = 0; i < n_queries; i++) {
            float *acc = accs + (size_t)i * acc_floats;
            float *values = partial + (size_t)i * partial_floats + 2;
            tq_kv_codec_finish(layer->codec_v, acc, 1.0f, acc);
            for (int d = 0; d < head_dim; d++) {
                values[layer->order_v != NULL ? layer->order_v[d] : d] += acc[d];
            }
        }
    }
}

void tq_kv_cache_attend_range(const tq_kv_cache *cache, int layer_index, int kv_head, int64_t pos, int64_t begin,
                              int64_t end, int n_queries, const float *queries, void *scratch, float *partial)
{
    attend_range(cache, layer_index, kv_head, pos, begin, end, cache->sink_f16, n_queries, queries, scratch, partial);
}

void tq_kv_cache_attend_path_row(const tq_kv_cache *cache, int layer_index, int kv_head, int64_t row_pos, int64_t slot,
                                 int64_t distance, int n_queries, const float *queries, void *scratch,
                                 float *partial)
{
    if (row_pos >= cache->sink_f16 || slot == row_pos) {
        /* Inside the recent window by distance, in the sink by its own slot, or coded. */
        attend_range(cache, layer_index, kv_head, slot + distance, slot, slot + 1, cache->sink_f16, n_queries,
                     queries, scratch, partial);
    } else if (slot < cache->sink_slots) {
        /* A sink position written past the sink: its f16 copy is in the room past the sink. */
        attend_range(cache, layer_index, kv_head, slot + distance, slot, slot + 1, slot + 1, n_queries, queries,
                     scratch, partial);
    } else {
        /* Past the sink's room there is a recent ring, and it contains every row of the batch,
         * so read the row as the newest position. */
        attend_range(cache, layer_index, kv_head, slot, slot, slot + 1, cache->sink_f16, n_queries, queries, scratch,
                     partial);
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

/* Fill the f16 sink slot of position dst (< sink_f16) with the rows of position src. The sink or
 * the recent ring contains a copy of every row of a draft tree, so src's own copy is used (a q8_0
 * copy is decoded and rounded to f16). For an older src, its codes are decoded, which is what
 * attention read for it. Called after src's codes moved to dst. */
static void move_to_sink(tq_kv_cache *cache, tq_kv_layer *layer, int64_t src, int64_t dst)
{
    const size_t row = (size_t)cache->n_kv_heads * (size_t)layer->head_dim;
    if (src < cache->sink_slots) {
        memcpy(layer->sink_keys + (size_t)dst * row, layer->sink_keys + (size_t)src * row, row * sizeof(uint16_t));
        memcpy(layer->sink_values + (size_t)dst * row, layer->sink_values + (size_t)src * row,
               row * sizeof(uint16_t));
        return;
    }

    if (layer->recent_keys != NULL) {
        const size_t offset = (size_t)(src % cache->recent_slots) * layer->recent_slot_bytes;
        const size_t recent_row = layer->recent_slot_bytes / (size_t)cache->n_kv_heads;
        read_side(cache, cache->recent_ops, NULL, 0, layer->recent_keys + offset, recent_row, layer->head_dim,
                  cache->sink_rows);
        read_side(cache, cache->recent_ops, NULL, 0, layer->recent_values + offset, recent_row, layer->head_dim,
                  cache->sink_rows + row);
    } else {
        decode_position(cache, layer, dst, cache->sink_rows, cache->sink_rows + row);
    }
    write_f16_copy(cache->sink_rows, cache->sink_rows + row, (int)row, layer->sink_keys + (size_t)dst * row,
                   layer->sink_values + (size_t)dst * row);
}

void tq_kv_cache_move(tq_kv_cache *cache, int64_t src, int64_t dst)
{
    if (src == dst) {
        return;
    }
    if (cache->audio_flags != NULL) {
        cache->audio_flags[dst] = cache->audio_flags[src];
    }
    if (cache->position_qjl_bits != NULL) {
        cache->position_qjl_bits[dst] = cache->position_qjl_bits[src];
    }
    for (int l = 0; l < cache->n_layers; l++) {
        tq_kv_layer *layer = &cache->layers[l];
        if (layer->source != l) {
            continue;
        }
        const int64_t from = src % layer->max_slots;
        const int64_t to = dst % layer->max_slots;
        memcpy(layer->keys + (size_t)to * layer->key_slot_bytes, layer->keys + (size_t)from * layer->key_slot_bytes,
               layer->key_slot_bytes);
        memcpy(layer->values + (size_t)to * layer->value_slot_bytes,
               layer->values + (size_t)from * layer->value_slot_bytes, layer->value_slot_bytes);
        if (layer->recent_keys != NULL) {
            const size_t recent_from = (size_t)(src % cache->recent_slots) * layer->recent_slot_bytes;
            const size_t recent_to = (size_t)(dst % cache->recent_slots) * layer->recent_slot_bytes;
            memcpy(layer->recent_keys + recent_to, layer->recent_keys + recent_from, layer->recent_slot_bytes);
            memcpy(layer->recent_values + recent_to, layer->recent_values + recent_from, layer->recent_slot_bytes);
        }
        if (layer->sink_keys != NULL && dst < cache->sink_f16) {
            move_to_sink(cache, layer, src, dst);
        }
    }
}

int64_t tq_kv_cache_exact_moves_from(const tq_kv_cache *cache)
{
    return cache->recent_slots > 0 && cache->recent_ops->type == TQ_KV_Q8_0 ? cache->sink_f16 : 0;
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
            if (layer->window == 0 || layer->source != l) {
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
    if (n_past > 0 && cache->recent_slots > 0) {
        /* The recent ring must still hold the window of a query at n_past. */
        const int64_t oldest_held = cache->n_past - cache->recent_slots;
        const int64_t oldest_needed = n_past - cache->recent_f16 + 1;
        if (oldest_held > 0 && oldest_needed < oldest_held) {
            return tq_error_set(err, TQ_ERR_INVALID,
                                "cannot truncate the KV cache from %lld to %lld positions: the recent window keeps "
                                "copies of only the last %lld positions, so truncate to at least %lld or reset",
                                (long long)cache->n_past, (long long)n_past, (long long)cache->recent_slots,
                                (long long)(oldest_held + cache->recent_f16 - 1));
        }
    }
    for (int l = 0; n_past > 0 && l < cache->n_layers; l++) {
        /* Dropping the positions of the key mean would code later keys around tokens that are no
         * longer in the sequence, so the output would depend on earlier calls. */
        const tq_kv_layer *layer = &cache->layers[l];
        if (layer->key_mean_set && n_past < layer->key_mean_positions) {
            return tq_error_set(err, TQ_ERR_INVALID,
                                "cannot truncate the KV cache from %lld to %lld positions: layer %d codes its keys "
                                "relative to the mean of the first %lld positions, so truncate to at least %lld or "
                                "reset",
                                (long long)cache->n_past, (long long)n_past, l, (long long)layer->key_mean_positions,
                                (long long)layer->key_mean_positions);
        }
    }
    if (cache->audio_flags != NULL) {
        memset(cache->audio_flags + n_past, 0, (size_t)(cache->n_past - n_past));
    }
    if (n_past == 0) {
        /* No coded key is left, so the next keys may set a new mean. */
        for (int l = 0; l < cache->n_layers; l++) {
            cache->layers[l].key_mean_set = 0;
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
        total += (size_t)held * (layer->key_slot_bytes + layer->value_slot_bytes);
        if (layer->recent_keys != NULL) {
            /* The f16 or q8_0 copies of the newest positions, keys and values. */
            const int64_t recent_held = cache->n_past < cache->recent_slots ? cache->n_past : cache->recent_slots;
            total += 2 * (size_t)recent_held * layer->recent_slot_bytes;
        }
        if (layer->sink_keys != NULL) {
            /* The f16 copies of the first positions, keys and values. */
            const int64_t sink_held = cache->n_past < cache->sink_slots ? cache->n_past : cache->sink_slots;
            total += 2 * (size_t)sink_held * (size_t)cache->n_kv_heads * (size_t)layer->head_dim * sizeof(uint16_t);
        }
        if (layer->key_scale != NULL) {
            /* Scale and flags per channel, mean per KV head and channel. */
            total += (size_t)layer->head_dim * (sizeof(float) + 1 + (size_t)cache->n_kv_heads * sizeof(float));
        }
    }
    if (cache->audio_flags != NULL) {
        total += (size_t)cache->n_past; /* one audio flag per position */
    }
    if (cache->position_qjl_bits != NULL) {
        total += (size_t)cache->n_past; /* one residual precision byte per position */
    }
    return total;
}

size_t tq_kv_cache_bytes_per_token(const tq_kv_cache *cache)
{
    size_t total = 0;
    for (int l = 0; l < cache->n_layers; l++) {
        total += cache->layers[l].key_slot_bytes + cache->layers[l].value_slot_bytes;
    }
    /* The per-position bytes that tq_kv_cache_bytes counts: audio flag and residual precision. */
    total += cache->audio_flags != NULL ? 1 : 0;
    total += cache->position_qjl_bits != NULL ? 1 : 0;
    return total;
}
