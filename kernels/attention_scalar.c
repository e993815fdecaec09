/* Scalar reference of the attention kernels; the SIMD variants must match it. */
#include "attention.h"

static void scores_f32(const float *q, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const float *k = (const float *)((const uint8_t *)rows + (size_t)j * stride);
        float sum = 0.0f;
        for (int i = 0; i < head_dim; i++) {
            sum += q[i] * k[i];
        }
        out[j] = sum;
    }
}

static void scores_f16(const float *q, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const uint16_t *k = (const uint16_t *)((const uint8_t *)rows + (size_t)j * stride);
        float sum = 0.0f;
        for (int i = 0; i < head_dim; i++) {
            sum += q[i] * tq_fp16_to_fp32(k[i]);
        }
        out[j] = sum;
    }
}

static void scores_q8_0(const float *q, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    const int n_blocks = head_dim / TQ_KV_BLOCK;
    for (int64_t j = 0; j < n; j++) {
        const tq_block_q8_0 *blocks = (const tq_block_q8_0 *)((const uint8_t *)rows + (size_t)j * stride);
        float sum = 0.0f;
        for (int b = 0; b < n_blocks; b++) {
            const float *qb = q + b * TQ_KV_BLOCK;
            float block_sum = 0.0f;
            for (int i = 0; i < TQ_KV_BLOCK; i++) {
                block_sum += qb[i] * (float)blocks[b].qs[i];
            }
            sum += block_sum * tq_fp16_to_fp32(blocks[b].d);
        }
        out[j] = sum;
    }
}

static void scores_q4_0(const float *q, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    const int n_blocks = head_dim / TQ_KV_BLOCK;
    for (int64_t j = 0; j < n; j++) {
        const tq_block_q4_0 *blocks = (const tq_block_q4_0 *)((const uint8_t *)rows + (size_t)j * stride);
        float sum = 0.0f;
        for (int b = 0; b < n_blocks; b++) {
            const float *qb = q + b * TQ_KV_BLOCK;
            float block_sum = 0.0f;
            for (int i = 0; i < TQ_KV_BLOCK / 2; i++) {
                block_sum += qb[i] * (float)((blocks[b].qs[i] & 0x0f) - 8);
                block_sum += qb[i + TQ_KV_BLOCK / 2] * (float)((blocks[b].qs[i] >> 4) - 8);
            }
            sum += block_sum * tq_fp16_to_fp32(blocks[b].d);
        }
        out[j] = sum;
    }
}

static void accumulate_f32(const float *w, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const float *v = (const float *)((const uint8_t *)rows + (size_t)j * stride);
        for (int i = 0; i < head_dim; i++) {
            out[i] += w[j] * v[i];
        }
    }
}

static void accumulate_f16(const float *w, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const uint16_t *v = (const uint16_t *)((const uint8_t *)rows + (size_t)j * stride);
        for (int i = 0; i < head_dim; i++) {
            out[i] += w[j] * tq_fp16_to_fp32(v[i]);
        }
    }
}

static void accumulate_q8_0(const float *w, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    const int n_blocks = head_dim / TQ_KV_BLOCK;
    for (int64_t j = 0; j < n; j++) {
        const tq_block_q8_0 *blocks = (const tq_block_q8_0 *)((const uint8_t *)rows + (size_t)j * stride);
        for (int b = 0; b < n_blocks; b++) {
            const float scale = w[j] * tq_fp16_to_fp32(blocks[b].d);
            float *ob = out + b * TQ_KV_BLOCK;
            for (int i = 0; i < TQ_KV_BLOCK; i++) {
                ob[i] += scale * (float)blocks[b].qs[i];
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
            const float scale = w[j] * tq_fp16_to_fp32(blocks[b].d);
            float *ob = out + b * TQ_KV_BLOCK;
            for (int i = 0; i < TQ_KV_BLOCK / 2; i++) {
                ob[i] += scale * (float)((blocks[b].qs[i] & 0x0f) - 8);
                ob[i + TQ_KV_BLOCK / 2] += scale * (float)((blocks[b].qs[i] >> 4) - 8);
            }
        }
    }
}

const tq_attention_kernels tq_attention_kernels_scalar = {
    .scores = {scores_f32, scores_f16, scores_q8_0, scores_q4_0},
    .accumulate = {accumulate_f32, accumulate_f16, accumulate_q8_0, accumulate_q4_0},
};

const tq_attention_kernels *tq_attention_kernels_get(tq_isa isa)
{
    switch (isa) {
#if defined(TQ_HAVE_AVX2_KERNELS)
    case TQ_ISA_AVX2:
        return &tq_attention_kernels_avx2;
#endif
#if defined(TQ_HAVE_AVX512_KERNELS)
    case TQ_ISA_AVX512:
        return &tq_attention_kernels_avx512;
#endif
#if defined(TQ_HAVE_NEON_KERNELS)
    case TQ_ISA_NEON:
        return &tq_attention_kernels_neon;
#endif
    default:
        return &tq_attention_kernels_scalar;
    }
}
