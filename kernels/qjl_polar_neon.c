/* arm64 NEON variant of the QJL and PolarQuant kernels (4 floats per register). */
#include <arm_neon.h>

#include "qjl_polar_kernels.h"

static float dot_neon(const float *a, const float *b, size_t n)
{
    float32x4_t acc0 = vdupq_n_f32(0.0f);
    float32x4_t acc1 = vdupq_n_f32(0.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        acc0 = vfmaq_f32(acc0, vld1q_f32(a + i), vld1q_f32(b + i));
        acc1 = vfmaq_f32(acc1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    }
    float sum = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < n; i++) {
        sum += a[i] * b[i];
    }
    return sum;
}

static void dot4_neon(const float *a, const float *b, size_t stride, size_t n, float *out)
{
    /* The same two accumulators, steps and tail as dot_neon, for four rows of b at once. */
    float32x4_t acc0[4], acc1[4];
    for (int r = 0; r < 4; r++) {
        acc0[r] = vdupq_n_f32(0.0f);
        acc1[r] = vdupq_n_f32(0.0f);
    }
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const float32x4_t a0 = vld1q_f32(a + i);
        const float32x4_t a1 = vld1q_f32(a + i + 4);
        for (int r = 0; r < 4; r++) {
            acc0[r] = vfmaq_f32(acc0[r], a0, vld1q_f32(b + r * stride + i));
            acc1[r] = vfmaq_f32(acc1[r], a1, vld1q_f32(b + r * stride + i + 4));
        }
    }
    for (int r = 0; r < 4; r++) {
        float sum = vaddvq_f32(vaddq_f32(acc0[r], acc1[r]));
        for (size_t k = i; k < n; k++) {
            sum += a[k] * b[r * stride + k];
        }
        out[r] = sum;
    }
}

static float sign_dot_neon(const uint8_t *bits, const float *q, size_t m)
{
    /* Lane k of each half tests one bit of the byte, and a clear bit flips the sign of q. */
    static const uint32_t low_bits[4] = {1, 2, 4, 8};
    static const uint32_t high_bits[4] = {16, 32, 64, 128};
    const uint32x4_t low = vld1q_u32(low_bits);
    const uint32x4_t high = vld1q_u32(high_bits);
    const uint32x4_t sign = vdupq_n_u32(0x80000000u);
    float32x4_t acc = vdupq_n_f32(0.0f);
    size_t i = 0;
    for (; i + 8 <= m; i += 8) {
        const uint32x4_t byte = vdupq_n_u32(bits[i >> 3]);
        const uint32x4_t flip_low = vbicq_u32(sign, vtstq_u32(byte, low));
        const uint32x4_t flip_high = vbicq_u32(sign, vtstq_u32(byte, high));
        const float32x4_t v0 = vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(vld1q_f32(q + i)), flip_low));
        const float32x4_t v1 =
            vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(vld1q_f32(q + i + 4)), flip_high));
        acc = vaddq_f32(acc, vaddq_f32(v0, v1));
    }
    float sum = vaddvq_f32(acc);
    for (; i < m; i++) {
        const int set = (bits[i >> 3] >> (i & 7)) & 1;
        sum += set ? q[i] : -q[i];
    }
    return sum;
}

static float level2_dot_neon(const uint8_t *codes, const float *q, const float *levels, size_t m)
{
    /* The 4 levels fill one 16-byte table, and vqtbl1q_u8 picks bytes 4c..4c+3 for code c. */
    static const int32_t shift_amounts[4] = {0, -2, -4, -6};
    const uint8x16_t table = vreinterpretq_u8_f32(vld1q_f32(levels));
    const int32x4_t shifts = vld1q_s32(shift_amounts);
    const uint32x4_t three = vdupq_n_u32(3);
    const uint32x4_t byte_offsets = vdupq_n_u32(0x03020100u);
    const uint32x4_t spread = vdupq_n_u32(0x04040404u);
    float32x4_t acc = vdupq_n_f32(0.0f);
    size_t i = 0;
    for (; i + 4 <= m; i += 4) {
        const uint32x4_t code = vandq_u32(vshlq_u32(vdupq_n_u32(codes[i >> 2]), shifts), three);
        const uint8x16_t index = vreinterpretq_u8_u32(vmlaq_u32(byte_offsets, code, spread));
        const float32x4_t level = vreinterpretq_f32_u8(vqtbl1q_u8(table, index));
        acc = vfmaq_f32(acc, level, vld1q_f32(q + i));
    }
    float sum = vaddvq_f32(acc);
    for (; i < m; i++) {
        const int code = (codes[i >> 2] >> (2 * (i & 3))) & 3;
        sum += levels[code] * q[i];
    }
    return sum;
}

static float polar_dot_neon(const uint8_t *radius_codes, const uint8_t *angle_codes, const float *radius,
                            const float *table, size_t pairs, size_t stride)
{
    /* NEON has no gather, so four lookups fill each register before one fused multiply-add. */
    float32x4_t acc = vdupq_n_f32(0.0f);
    size_t j = 0;
    for (; j + 4 <= pairs; j += 4) {
        float r[4];
        float t[4];
        for (int k = 0; k < 4; k++) {
            r[k] = radius[radius_codes[j + k]];
            t[k] = table[(j + k) * stride + angle_codes[j + k]];
        }
        acc = vfmaq_f32(acc, vld1q_f32(r), vld1q_f32(t));
    }
    float sum = vaddvq_f32(acc);
    for (; j < pairs; j++) {
        sum += radius[radius_codes[j]] * table[j * stride + angle_codes[j]];
    }
    return sum;
}

const tq_qjl_polar_kernels tq_qjl_polar_kernels_neon = {
    dot_neon,
    dot4_neon,
    sign_dot_neon,
    level2_dot_neon,
    polar_dot_neon,
};
