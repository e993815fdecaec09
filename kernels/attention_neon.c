/* arm64 NEON attention kernels; same results as attention_scalar.c up to float
 * summation order. head_dim is a multiple of 32 (checked by the cache). */
#include <arm_neon.h>

#include "attention.h"

/* 8 int8 values as two float vectors (values 0-3 and 4-7). */
static inline void i8x8_to_f32(int8x8_t bytes, float32x4_t *lo, float32x4_t *hi)
{
    int16x8_t wide = vmovl_s8(bytes);
    *lo = vcvtq_f32_s32(vmovl_s16(vget_low_s16(wide)));
    *hi = vcvtq_f32_s32(vmovl_s16(vget_high_s16(wide)));
}

/* Dot product of 16 floats at q with 16 signed bytes, added to acc. */
static inline float32x4_t dot_i8x16(const float *q, int8x16_t bytes, float32x4_t acc)
{
    float32x4_t v0, v1, v2, v3;
    i8x8_to_f32(vget_low_s8(bytes), &v0, &v1);
    i8x8_to_f32(vget_high_s8(bytes), &v2, &v3);
    acc = vfmaq_f32(acc, vld1q_f32(q), v0);
    acc = vfmaq_f32(acc, vld1q_f32(q + 4), v1);
    acc = vfmaq_f32(acc, vld1q_f32(q + 8), v2);
    acc = vfmaq_f32(acc, vld1q_f32(q + 12), v3);
    return acc;
}

/* out[0..15] += scale * bytes. */
static inline void axpy_i8x16(float scale, int8x16_t bytes, float *out)
{
    float32x4_t v0, v1, v2, v3;
    i8x8_to_f32(vget_low_s8(bytes), &v0, &v1);
    i8x8_to_f32(vget_high_s8(bytes), &v2, &v3);
    vst1q_f32(out, vfmaq_n_f32(vld1q_f32(out), v0, scale));
    vst1q_f32(out + 4, vfmaq_n_f32(vld1q_f32(out + 4), v1, scale));
    vst1q_f32(out + 8, vfmaq_n_f32(vld1q_f32(out + 8), v2, scale));
    vst1q_f32(out + 12, vfmaq_n_f32(vld1q_f32(out + 12), v3, scale));
}

/* The 32 codes of a Q4_0 block as signed bytes code - 8: values 0-15 and 16-31. */
static inline void unpack_q4_0(const tq_block_q4_0 *block, int8x16_t *low, int8x16_t *high)
{
    const uint8x16_t packed = vld1q_u8(block->qs);
    const int8x16_t eight = vdupq_n_s8(8);
    *low = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0f))), eight);
    *high = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(packed, 4)), eight);
}

static void scores_f32(const float *q, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const float *k = (const float *)((const uint8_t *)rows + (size_t)j * stride);
        float32x4_t acc0 = vdupq_n_f32(0.0f);
        float32x4_t acc1 = vdupq_n_f32(0.0f);
        for (int i = 0; i < head_dim; i += 8) {
            acc0 = vfmaq_f32(acc0, vld1q_f32(q + i), vld1q_f32(k + i));
            acc1 = vfmaq_f32(acc1, vld1q_f32(q + i + 4), vld1q_f32(k + i + 4));
        }
        out[j] = vaddvq_f32(vaddq_f32(acc0, acc1));
    }
}

static void scores_f16(const float *q, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const uint16_t *k = (const uint16_t *)((const uint8_t *)rows + (size_t)j * stride);
        float32x4_t acc0 = vdupq_n_f32(0.0f);
        float32x4_t acc1 = vdupq_n_f32(0.0f);
        for (int i = 0; i < head_dim; i += 8) {
            float16x8_t halves = vreinterpretq_f16_u16(vld1q_u16(k + i));
            acc0 = vfmaq_f32(acc0, vld1q_f32(q + i), vcvt_f32_f16(vget_low_f16(halves)));
            acc1 = vfmaq_f32(acc1, vld1q_f32(q + i + 4), vcvt_high_f32_f16(halves));
        }
        out[j] = vaddvq_f32(vaddq_f32(acc0, acc1));
    }
}

static void scores_q8_0(const float *q, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    const int n_blocks = head_dim / TQ_KV_BLOCK;
    for (int64_t j = 0; j < n; j++) {
        const tq_block_q8_0 *blocks = (const tq_block_q8_0 *)((const uint8_t *)rows + (size_t)j * stride);
        float32x4_t acc = vdupq_n_f32(0.0f);
        for (int b = 0; b < n_blocks; b++) {
            const float *qb = q + b * TQ_KV_BLOCK;
            float32x4_t block_acc = dot_i8x16(qb, vld1q_s8(blocks[b].qs), vdupq_n_f32(0.0f));
            block_acc = dot_i8x16(qb + 16, vld1q_s8(blocks[b].qs + 16), block_acc);
            acc = vfmaq_n_f32(acc, block_acc, tq_fp16_to_fp32(blocks[b].d));
        }
        out[j] = vaddvq_f32(acc);
    }
}

static void scores_q4_0(const float *q, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    const int n_blocks = head_dim / TQ_KV_BLOCK;
    for (int64_t j = 0; j < n; j++) {
        const tq_block_q4_0 *blocks = (const tq_block_q4_0 *)((const uint8_t *)rows + (size_t)j * stride);
        float32x4_t acc = vdupq_n_f32(0.0f);
        for (int b = 0; b < n_blocks; b++) {
            const float *qb = q + b * TQ_KV_BLOCK;
            int8x16_t low, high;
            unpack_q4_0(&blocks[b], &low, &high);
            float32x4_t block_acc = dot_i8x16(qb, low, vdupq_n_f32(0.0f));
            block_acc = dot_i8x16(qb + 16, high, block_acc);
            acc = vfmaq_n_f32(acc, block_acc, tq_fp16_to_fp32(blocks[b].d));
        }
        out[j] = vaddvq_f32(acc);
    }
}

static void accumulate_f32(const float *w, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const float *v = (const float *)((const uint8_t *)rows + (size_t)j * stride);
        for (int i = 0; i < head_dim; i += 4) {
            vst1q_f32(out + i, vfmaq_n_f32(vld1q_f32(out + i), vld1q_f32(v + i), w[j]));
        }
    }
}

static void accumulate_f16(const float *w, const void *rows, size_t stride, int64_t n, int head_dim, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const uint16_t *v = (const uint16_t *)((const uint8_t *)rows + (size_t)j * stride);
        for (int i = 0; i < head_dim; i += 8) {
            float16x8_t halves = vreinterpretq_f16_u16(vld1q_u16(v + i));
            vst1q_f32(out + i, vfmaq_n_f32(vld1q_f32(out + i), vcvt_f32_f16(vget_low_f16(halves)), w[j]));
            vst1q_f32(out + i + 4, vfmaq_n_f32(vld1q_f32(out + i + 4), vcvt_high_f32_f16(halves), w[j]));
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
            axpy_i8x16(scale, vld1q_s8(blocks[b].qs), out + b * TQ_KV_BLOCK);
            axpy_i8x16(scale, vld1q_s8(blocks[b].qs + 16), out + b * TQ_KV_BLOCK + 16);
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
            int8x16_t low, high;
            unpack_q4_0(&blocks[b], &low, &high);
            axpy_i8x16(scale, low, out + b * TQ_KV_BLOCK);
            axpy_i8x16(scale, high, out + b * TQ_KV_BLOCK + 16);
        }
    }
}

const tq_attention_kernels tq_attention_kernels_neon = {
    .scores = {scores_f32, scores_f16, scores_q8_0, scores_q4_0},
    .accumulate = {accumulate_f32, accumulate_f16, accumulate_q8_0, accumulate_q4_0},
};
