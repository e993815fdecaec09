/* AVX-512 (F, BW, VL) attention kernels; same results as attention_scalar.c up to
 * float summation order. head_dim is a multiple of 32 (checked by the cache). */
#include <immintrin.h>

#include "attention.h"

/* 16 int8 values starting at p, as floats. */
static inline __m512 load_i8x16(const void *p)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

/* The 32 values of a Q4_0 block as floats code - 8: values 0-15 and 16-31. */
static inline void unpack_q4_0(const tq_block_q4_0 *block, __m512 *low, __m512 *high)
{
    const __m128i packed = _mm_loadu_si128((const __m128i *)block->qs);
    const __m128i mask = _mm_set1_epi8(0x0f);
    const __m128i eight = _mm_set1_epi8(8);
    __m128i low_bytes = _mm_sub_epi8(_mm_and_si128(packed, mask), eight);
    __m128i high_bytes = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(packed, 4), mask), eight);
    *low = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(low_bytes));
    *high = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(high_bytes));
}

static void scores_f32(const float *q, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const float *k = (const float *)((const uint8_t *)rows + (size_t)j * stride);
        __m512 acc0 = _mm512_setzero_ps();
        __m512 acc1 = _mm512_setzero_ps();
        for (int i = 0; i < head_dim; i += 32) {
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_loadu_ps(k + i), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), _mm512_loadu_ps(k + i + 16), acc1);
        }
        out[j] = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    }
}

static void scores_f16(const float *q, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const uint16_t *k = (const uint16_t *)((const uint8_t *)rows + (size_t)j * stride);
        __m512 acc0 = _mm512_setzero_ps();
        __m512 acc1 = _mm512_setzero_ps();
        for (int i = 0; i < head_dim; i += 32) {
            __m512 k0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(k + i)));
            __m512 k1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(k + i + 16)));
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), k0, acc0);
            acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), k1, acc1);
        }
        out[j] = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    }
}

static void scores_q8_0(const float *q, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    const int n_blocks = head_dim / TQ_KV_BLOCK;
    for (int64_t j = 0; j < n; j++) {
        const tq_block_q8_0 *blocks = (const tq_block_q8_0 *)((const uint8_t *)rows + (size_t)j * stride);
        __m512 acc = _mm512_setzero_ps();
        for (int b = 0; b < n_blocks; b++) {
            const float *qb = q + b * TQ_KV_BLOCK;
            __m512 block_acc = _mm512_mul_ps(_mm512_loadu_ps(qb), load_i8x16(blocks[b].qs));
            block_acc = _mm512_fmadd_ps(_mm512_loadu_ps(qb + 16), load_i8x16(blocks[b].qs + 16), block_acc);
            acc = _mm512_fmadd_ps(block_acc, _mm512_set1_ps(tq_fp16_to_fp32(blocks[b].d)), acc);
        }
        out[j] = _mm512_reduce_add_ps(acc);
    }
}

static void scores_q4_0(const float *q, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    const int n_blocks = head_dim / TQ_KV_BLOCK;
    for (int64_t j = 0; j < n; j++) {
        const tq_block_q4_0 *blocks = (const tq_block_q4_0 *)((const uint8_t *)rows + (size_t)j * stride);
        __m512 acc = _mm512_setzero_ps();
        for (int b = 0; b < n_blocks; b++) {
            const float *qb = q + b * TQ_KV_BLOCK;
            __m512 low, high;
            unpack_q4_0(&blocks[b], &low, &high);
            __m512 block_acc = _mm512_mul_ps(_mm512_loadu_ps(qb), low);
            block_acc = _mm512_fmadd_ps(_mm512_loadu_ps(qb + 16), high, block_acc);
            acc = _mm512_fmadd_ps(block_acc, _mm512_set1_ps(tq_fp16_to_fp32(blocks[b].d)), acc);
        }
        out[j] = _mm512_reduce_add_ps(acc);
    }
}

static void accumulate_f32(const float *w, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const float *v = (const float *)((const uint8_t *)rows + (size_t)j * stride);
        const __m512 weight = _mm512_set1_ps(w[j]);
        for (int i = 0; i < head_dim; i += 16) {
            _mm512_storeu_ps(out + i, _mm512_fmadd_ps(weight, _mm512_loadu_ps(v + i), _mm512_loadu_ps(out + i)));
        }
    }
}

static void accumulate_f16(const float *w, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const uint16_t *v = (const uint16_t *)((const uint8_t *)rows + (size_t)j * stride);
        const __m512 weight = _mm512_set1_ps(w[j]);
        for (int i = 0; i < head_dim; i += 16) {
            __m512 value = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(v + i)));
            _mm512_storeu_ps(out + i, _mm512_fmadd_ps(weight, value, _mm512_loadu_ps(out + i)));
        }
    }
}

static void accumulate_q8_0(const float *w, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    const int n_blocks = head_dim / TQ_KV_BLOCK;
    for (int64_t j = 0; j < n; j++) {
        const tq_block_q8_0 *blocks = (const tq_block_q8_0 *)((const uint8_t *)rows + (size_t)j * stride);
        for (int b = 0; b < n_blocks; b++) {
            const __m512 scale = _mm512_set1_ps(w[j] * tq_fp16_to_fp32(blocks[b].d));
            float *ob = out + b * TQ_KV_BLOCK;
            _mm512_storeu_ps(ob, _mm512_fmadd_ps(scale, load_i8x16(blocks[b].qs), _mm512_loadu_ps(ob)));
            _mm512_storeu_ps(ob + 16,
                             _mm512_fmadd_ps(scale, load_i8x16(blocks[b].qs + 16), _mm512_loadu_ps(ob + 16)));
        }
    }
}

static void accumulate_q4_0(const float *w, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    const int n_blocks = head_dim / TQ_KV_BLOCK;
    for (int64_t j = 0; j < n; j++) {
        const tq_block_q4_0 *blocks = (const tq_block_q4_0 *)((const uint8_t *)rows + (size_t)j * stride);
        for (int b = 0; b < n_blocks; b++) {
            const __m512 scale = _mm512_set1_ps(w[j] * tq_fp16_to_fp32(blocks[b].d));
            float *ob = out + b * TQ_KV_BLOCK;
            __m512 low, high;
            unpack_q4_0(&blocks[b], &low, &high);
            _mm512_storeu_ps(ob, _mm512_fmadd_ps(scale, low, _mm512_loadu_ps(ob)));
            _mm512_storeu_ps(ob + 16, _mm512_fmadd_ps(scale, high, _mm512_loadu_ps(ob + 16)));
        }
    }
}

const tq_attention_kernels tq_attention_kernels_avx512 = {
    .scores = {scores_f32, scores_f16, scores_q8_0, scores_q4_0},
    .accumulate = {accumulate_f32, accumulate_f16, accumulate_q8_0, accumulate_q4_0},
};
