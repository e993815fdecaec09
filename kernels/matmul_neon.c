/* NEON (arm64 Advanced SIMD) kernels for the formats of Gemma 3 GGUF files:
 * F32, F16, Q4_0, Q8_0, Q5_0, Q4_K and Q6_K. The other types and the activation
 * quantization use the scalar reference, which gives the same codes as every
 * variant by construction.
 *
 * Products of 16 int8 pairs use vmull_s8 (exact in int16, since |product| <= 16384)
 * and vpadalq_s16, which is baseline ARMv8.0; with the dot-product extension
 * (__ARM_FEATURE_DOTPROD) vdotq_s32 does the same in one instruction.
 *
 * NOTE: only arm64 builds compile this file, so test runs on x86 do not cover it.
 */
#include <arm_neon.h>

#include "matmul_kernels.h"
#include "weights.h"

static inline float fp16_to_fp32_neon(tq_fp16 h)
{
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

/* acc + the dot products of 16 signed bytes a and b, in four int32 lanes. */
static inline int32x4_t dot16_neon(int32x4_t acc, int8x16_t a, int8x16_t b)
{
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    const int16x8_t lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    const int16x8_t hi = vmull_high_s8(a, b);
    return vpadalq_s16(vpadalq_s16(acc, lo), hi);
#endif
}

/* 0xFF in byte i where bit i of the 16-bit field is set. */
static inline uint8x16_t bits_16_neon(uint32_t bits)
{
    static const uint8_t bit_of_byte[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t spread = vcombine_u8(vdup_n_u8((uint8_t)(bits & 0xFF)), vdup_n_u8((uint8_t)((bits >> 8) & 0xFF)));
    return vtstq_u8(spread, vld1q_u8(bit_of_byte));
}

static void vec_dot_f32_neon(int64_t n, float *s, const void *w, const void *x)
{
    const float *wf = (const float *)w;
    const float *xf = (const float *)x;
    float32x4_t acc0 = vdupq_n_f32(0.0f);
    float32x4_t acc1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        acc0 = vfmaq_f32(acc0, vld1q_f32(wf + i), vld1q_f32(xf + i));
        acc1 = vfmaq_f32(acc1, vld1q_f32(wf + i + 4), vld1q_f32(xf + i + 4));
    }
    float sum = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < n; i++) {
        sum += wf[i] * xf[i];
    }
    *s = sum;
}

static void vec_dot_f16_neon(int64_t n, float *s, const void *w, const void *x)
{
    const tq_fp16 *wh = (const tq_fp16 *)w;
    const float *xf = (const float *)x;
    float32x4_t acc0 = vdupq_n_f32(0.0f);
    float32x4_t acc1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const float32x4_t w0 = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(wh + i)));
        const float32x4_t w1 = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(wh + i + 4)));
        acc0 = vfmaq_f32(acc0, w0, vld1q_f32(xf + i));
        acc1 = vfmaq_f32(acc1, w1, vld1q_f32(xf + i + 4));
    }
    float sum = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < n; i++) {
        sum += tq_fp16_to_fp32(wh[i]) * xf[i];
    }
    *s = sum;
}

static void vec_dot_q8_0_q8_0_neon(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q8_0 *wb = (const tq_block_q8_0 *)w;
    const tq_block_q8_0 *xb = (const tq_block_q8_0 *)x;
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < n / TQ_QK8_0; b++) {
        int32x4_t sum = vdupq_n_s32(0);
        sum = dot16_neon(sum, vld1q_s8(wb[b].qs), vld1q_s8(xb[b].qs));
        sum = dot16_neon(sum, vld1q_s8(wb[b].qs + 16), vld1q_s8(xb[b].qs + 16));
        const float d = fp16_to_fp32_neon(wb[b].d) * fp16_to_fp32_neon(xb[b].d);
        acc = vmlaq_n_f32(acc, vcvtq_f32_s32(sum), d);
    }
    *s = vaddvq_f32(acc);
}

static void vec_dot_q4_0_q8_0_neon(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q4_0 *wb = (const tq_block_q4_0 *)w;
    const tq_block_q8_0 *xb = (const tq_block_q8_0 *)x;
    const uint8x16_t low4 = vdupq_n_u8(0xF);
    const int8x16_t eight = vdupq_n_s8(8);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < n / TQ_QK4_0; b++) {
        const uint8x16_t packed = vld1q_u8(wb[b].qs);
        const int8x16_t q_lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(packed, low4)), eight);
        const int8x16_t q_hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(packed, 4)), eight);
        int32x4_t sum = vdupq_n_s32(0);
        sum = dot16_neon(sum, q_lo, vld1q_s8(xb[b].qs));
        sum = dot16_neon(sum, q_hi, vld1q_s8(xb[b].qs + 16));
        const float d = fp16_to_fp32_neon(wb[b].d) * fp16_to_fp32_neon(xb[b].d);
        acc = vmlaq_n_f32(acc, vcvtq_f32_s32(sum), d);
    }
    *s = vaddvq_f32(acc);
}

static void vec_dot_q5_0_q8_0_neon(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q5_0 *wb = (const tq_block_q5_0 *)w;
    const tq_block_q8_0 *xb = (const tq_block_q8_0 *)x;
    const uint8x16_t low4 = vdupq_n_u8(0xF);
    const uint8x16_t bit4 = vdupq_n_u8(0x10);
    const int8x16_t sixteen = vdupq_n_s8(16);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < n / TQ_QK5_0; b++) {
        const uint32_t qh = tq_load_u32_le(wb[b].qh);
        const uint8x16_t packed = vld1q_u8(wb[b].qs);
        /* Values 0-15 take bits 0-15 of qh, values 16-31 bits 16-31. */
        const uint8x16_t high_lo = vandq_u8(bits_16_neon(qh & 0xFFFF), bit4);
        const uint8x16_t high_hi = vandq_u8(bits_16_neon(qh >> 16), bit4);
        const int8x16_t q_lo = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vandq_u8(packed, low4), high_lo)), sixteen);
        const int8x16_t q_hi = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(packed, 4), high_hi)), sixteen);
        int32x4_t sum = vdupq_n_s32(0);
        sum = dot16_neon(sum, q_lo, vld1q_s8(xb[b].qs));
        sum = dot16_neon(sum, q_hi, vld1q_s8(xb[b].qs + 16));
        const float d = fp16_to_fp32_neon(wb[b].d) * fp16_to_fp32_neon(xb[b].d);
        acc = vmlaq_n_f32(acc, vcvtq_f32_s32(sum), d);
    }
    *s = vaddvq_f32(acc);
}

static void vec_dot_q4_K_q8_K_neon(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q4_K *wb = (const tq_block_q4_K *)w;
    const tq_block_q8_K *xb = (const tq_block_q8_K *)x;
    const uint8x16_t low4 = vdupq_n_u8(0xF);
    float sum = 0.0f;
    for (int64_t b = 0; b < n / TQ_QK_K; b++) {
        uint8_t scales[16]; /* 8 scales, then 8 mins */
        tq_unpack_scales_k4(wb[b].scales, scales);
        int min_sum = 0;
        for (int j = 0; j < 8; j++) {
            min_sum += scales[8 + j] * (xb[b].bsums[2 * j] + xb[b].bsums[2 * j + 1]);
        }
        int isum = 0;
        for (int j = 0; j < 4; j++) {
            const uint8_t *q = wb[b].qs + 32 * j;
            const int8_t *a = xb[b].qs + 64 * j;
            const uint8x16_t q0 = vld1q_u8(q);
            const uint8x16_t q1 = vld1q_u8(q + 16);
            int32x4_t lo = vdupq_n_s32(0);
            int32x4_t hi = vdupq_n_s32(0);
            lo = dot16_neon(lo, vreinterpretq_s8_u8(vandq_u8(q0, low4)), vld1q_s8(a));
            lo = dot16_neon(lo, vreinterpretq_s8_u8(vandq_u8(q1, low4)), vld1q_s8(a + 16));
            hi = dot16_neon(hi, vreinterpretq_s8_u8(vshrq_n_u8(q0, 4)), vld1q_s8(a + 32));
            hi = dot16_neon(hi, vreinterpretq_s8_u8(vshrq_n_u8(q1, 4)), vld1q_s8(a + 48));
            isum += scales[2 * j] * vaddvq_s32(lo) + scales[2 * j + 1] * vaddvq_s32(hi);
        }
        const float d = fp16_to_fp32_neon(wb[b].d) * xb[b].d;
        const float dmin = fp16_to_fp32_neon(wb[b].dmin) * xb[b].d;
        sum += d * (float)isum - dmin * (float)min_sum;
    }
    *s = sum;
}

static void vec_dot_q6_K_q8_K_neon(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q6_K *wb = (const tq_block_q6_K *)w;
    const tq_block_q8_K *xb = (const tq_block_q8_K *)x;
    const uint8x16_t low4 = vdupq_n_u8(0xF);
    const uint8x16_t low2 = vdupq_n_u8(3);
    const int8x16_t thirty_two = vdupq_n_s8(32);
    float sum = 0.0f;
    for (int64_t b = 0; b < n / TQ_QK_K; b++) {
        int isum = 0;
        for (int half = 0; half < 2; half++) {
            const uint8_t *ql = wb[b].ql + 64 * half;
            const uint8_t *qh = wb[b].qh + 32 * half;
            const int8_t *sc = wb[b].scales + 8 * half;
            const int8_t *a = xb[b].qs + 128 * half;
            /* Bytes l0 .. l0 + 15 give values 32 k + l0 .. 32 k + l0 + 15 of each chunk k,
             * all inside sub-block 2k + l0 / 16. */
            for (int l0 = 0; l0 < 32; l0 += 16) {
                const uint8x16_t h = vld1q_u8(qh + l0);
                const uint8x16_t low_a = vld1q_u8(ql + l0);
                const uint8x16_t low_b = vld1q_u8(ql + 32 + l0);
                uint8x16_t q[4];
                q[0] = vorrq_u8(vandq_u8(low_a, low4), vshlq_n_u8(vandq_u8(h, low2), 4));
                q[1] = vorrq_u8(vandq_u8(low_b, low4), vshlq_n_u8(vandq_u8(vshrq_n_u8(h, 2), low2), 4));
                q[2] = vorrq_u8(vshrq_n_u8(low_a, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(h, 4), low2), 4));
                q[3] = vorrq_u8(vshrq_n_u8(low_b, 4), vshlq_n_u8(vshrq_n_u8(h, 6), 4));
                for (int k = 0; k < 4; k++) {
                    const int8x16_t centered = vsubq_s8(vreinterpretq_s8_u8(q[k]), thirty_two);
                    const int32x4_t dot = dot16_neon(vdupq_n_s32(0), centered, vld1q_s8(a + 32 * k + l0));
                    isum += sc[2 * k + l0 / 16] * vaddvq_s32(dot);
                }
            }
        }
        sum += fp16_to_fp32_neon(wb[b].d) * xb[b].d * (float)isum;
    }
    *s = sum;
}

const tq_matmul_kernels tq_matmul_kernels_neon = {
    .quantize_row_q8_0 = tq_quantize_row_q8_0_scalar,
    .quantize_row_q8_K = tq_quantize_row_q8_K_scalar,
    .vec_dot =
        {
            [TQ_TYPE_F32] = vec_dot_f32_neon,
            [TQ_TYPE_F16] = vec_dot_f16_neon,
            [TQ_TYPE_BF16] = tq_vec_dot_bf16_scalar,
            [TQ_TYPE_Q4_0] = vec_dot_q4_0_q8_0_neon,
            [TQ_TYPE_Q4_1] = tq_vec_dot_q4_1_q8_0_scalar,
            [TQ_TYPE_Q5_0] = vec_dot_q5_0_q8_0_neon,
            [TQ_TYPE_Q5_1] = tq_vec_dot_q5_1_q8_0_scalar,
            [TQ_TYPE_Q8_0] = vec_dot_q8_0_q8_0_neon,
            [TQ_TYPE_Q4_K] = vec_dot_q4_K_q8_K_neon,
            [TQ_TYPE_Q5_K] = tq_vec_dot_q5_K_q8_K_scalar,
            [TQ_TYPE_Q6_K] = vec_dot_q6_K_q8_K_neon,
        },
};
