/* AVX2 + FMA + F16C attention kernels; same results as attention_scalar.c up to
 * float summation order. head_dim is a multiple of 32 (checked by the cache). */
#include <immintrin.h>

#include "attention.h"

static inline float hsum256(__m256 v)
{
    __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
    sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
    return _mm_cvtss_f32(sum);
}

/* 8 int8 values starting at p, as floats. */
static inline __m256 load_i8x8(const int8_t *p)
{
    __m128i bytes = _mm_loadl_epi64((const __m128i *)p);
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
}

/* The 32 values of a Q4_0 block as signed bytes code - 8, low nibbles first. */
static inline void unpack_q4_0(const tq_block_q4_0 *block, __m128i *low, __m128i *high)
{
    const __m128i packed = _mm_loadu_si128((const __m128i *)block->qs);
    const __m128i mask = _mm_set1_epi8(0x0f);
    const __m128i eight = _mm_set1_epi8(8);
    *low = _mm_sub_epi8(_mm_and_si128(packed, mask), eight);
    *high = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(packed, 4), mask), eight);
}

static inline __m256 i8_lane_to_ps(__m128i bytes, int which)
{
    /* which selects bytes 0-7 (0) or 8-15 (1) of the 16-byte vector. */
    __m128i part = which ? _mm_unpackhi_epi64(bytes, bytes) : bytes;
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part));
}

static void scores_f32(const float *q, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const float *k = (const float *)((const uint8_t *)rows + (size_t)j * stride);
        __m256 acc0 = _mm256_setzero_ps();
        __m256 acc1 = _mm256_setzero_ps();
        for (int i = 0; i < head_dim; i += 16) {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), _mm256_loadu_ps(k + i + 8), acc1);
        }
        out[j] = hsum256(_mm256_add_ps(acc0, acc1));
    }
}

static void scores_f16(const float *q, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const uint16_t *k = (const uint16_t *)((const uint8_t *)rows + (size_t)j * stride);
        __m256 acc0 = _mm256_setzero_ps();
        __m256 acc1 = _mm256_setzero_ps();
        for (int i = 0; i < head_dim; i += 16) {
            __m256 k0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + i)));
            __m256 k1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + i + 8)));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), k0, acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), k1, acc1);
        }
        out[j] = hsum256(_mm256_add_ps(acc0, acc1));
    }
}

static void scores_q8_0(const float *q, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    const int n_blocks = head_dim / TQ_KV_BLOCK;
    for (int64_t j = 0; j < n; j++) {
        const tq_block_q8_0 *blocks = (const tq_block_q8_0 *)((const uint8_t *)rows + (size_t)j * stride);
        __m256 acc = _mm256_setzero_ps();
        for (int b = 0; b < n_blocks; b++) {
            const float *qb = q + b * TQ_KV_BLOCK;
            __m256 block_acc = _mm256_mul_ps(_mm256_loadu_ps(qb), load_i8x8(blocks[b].qs));
            block_acc = _mm256_fmadd_ps(_mm256_loadu_ps(qb + 8), load_i8x8(blocks[b].qs + 8), block_acc);
            block_acc = _mm256_fmadd_ps(_mm256_loadu_ps(qb + 16), load_i8x8(blocks[b].qs + 16), block_acc);
            block_acc = _mm256_fmadd_ps(_mm256_loadu_ps(qb + 24), load_i8x8(blocks[b].qs + 24), block_acc);
            acc = _mm256_fmadd_ps(block_acc, _mm256_set1_ps(tq_fp16_to_fp32(blocks[b].d)), acc);
        }
        out[j] = hsum256(acc);
    }
}

static void scores_q4_0(const float *q, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    const int n_blocks = head_dim / TQ_KV_BLOCK;
    for (int64_t j = 0; j < n; j++) {
        const tq_block_q4_0 *blocks = (const tq_block_q4_0 *)((const uint8_t *)rows + (size_t)j * stride);
        __m256 acc = _mm256_setzero_ps();
        for (int b = 0; b < n_blocks; b++) {
            const float *qb = q + b * TQ_KV_BLOCK;
            __m128i low, high;
            unpack_q4_0(&blocks[b], &low, &high);
            __m256 block_acc = _mm256_mul_ps(_mm256_loadu_ps(qb), i8_lane_to_ps(low, 0));
            block_acc = _mm256_fmadd_ps(_mm256_loadu_ps(qb + 8), i8_lane_to_ps(low, 1), block_acc);
            block_acc = _mm256_fmadd_ps(_mm256_loadu_ps(qb + 16), i8_lane_to_ps(high, 0), block_acc);
            block_acc = _mm256_fmadd_ps(_mm256_loadu_ps(qb + 24), i8_lane_to_ps(high, 1), block_acc);
            acc = _mm256_fmadd_ps(block_acc, _mm256_set1_ps(tq_fp16_to_fp32(blocks[b].d)), acc);
        }
        out[j] = hsum256(acc);
    }
}

static void accumulate_f32(const float *w, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const float *v = (const float *)((const uint8_t *)rows + (size_t)j * stride);
        const __m256 weight = _mm256_set1_ps(w[j]);
        for (int i = 0; i < head_dim; i += 8) {
            _mm256_storeu_ps(out + i, _mm256_fmadd_ps(weight, _mm256_loadu_ps(v + i), _mm256_loadu_ps(out + i)));
        }
    }
}

static void accumulate_f16(const float *w, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const uint16_t *v = (const uint16_t *)((const uint8_t *)rows + (size_t)j * stride);
        const __m256 weight = _mm256_set1_ps(w[j]);
        for (int i = 0; i < head_dim; i += 8) {
            __m256 value = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + i)));
            _mm256_storeu_ps(out + i, _mm256_fmadd_ps(weight, value, _mm256_loadu_ps(out + i)));
        }
    }
}

static void accumulate_q8_0(const float *w, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    const int n_blocks = head_dim / TQ_KV_BLOCK;
    for (int64_t j = 0; j < n; j++) {
        const tq_block_q8_0 *blocks = (const tq_block_q8_0 *)((const uint8_t *)rows + (size_t)j * stride);
        for (int b = 0; b < n_blocks; b++) {
            const __m256 scale = _mm256_set1_ps(w[j] * tq_fp16_to_fp32(blocks[b].d));
            float *ob = out + b * TQ_KV_BLOCK;
            for (int i = 0; i < TQ_KV_BLOCK; i += 8) {
                _mm256_storeu_ps(ob + i,
                                 _mm256_fmadd_ps(scale, load_i8x8(blocks[b].qs + i), _mm256_loadu_ps(ob + i)));
            }
        }
    }
}

static void accumulate_q4_0(const float *w, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    const int n_blocks = head_dim / TQ_KV_BLOCK;
    for (int64_t j = 0; j < n; j++) {
        const tq_block_q4_0 *blocks = (const tq_block_q4_0 *)((const uint8_t *)rows + (size_t)j * stride);
        for (int b = 0; b < n_blocks; b++) {
            const __m256 scale = _mm256_set1_ps(w[j] * tq_fp16_to_fp32(blocks[b].d));
            float *ob = out + b * TQ_KV_BLOCK;
            __m128i low, high;
            unpack_q4_0(&blocks[b], &low, &high);
            _mm256_storeu_ps(ob, _mm256_fmadd_ps(scale, i8_lane_to_ps(low, 0), _mm256_loadu_ps(ob)));
            _mm256_storeu_ps(ob + 8, _mm256_fmadd_ps(scale, i8_lane_to_ps(low, 1), _mm256_loadu_ps(ob + 8)));
            _mm256_storeu_ps(ob + 16, _mm256_fmadd_ps(scale, i8_lane_to_ps(high, 0), _mm256_loadu_ps(ob + 16)));
            _mm256_storeu_ps(ob + 24, _mm256_fmadd_ps(scale, i8_lane_to_ps(high, 1), _mm256_loadu_ps(ob + 24)));
        }
    }
}

const tq_attention_kernels tq_attention_kernels_avx2 = {
    .scores = {scores_f32, scores_f16, scores_q8_0, scores_q4_0},
    .accumulate = {accumulate_f32, accumulate_f16, accumulate_q8_0, accumulate_q4_0},
};
