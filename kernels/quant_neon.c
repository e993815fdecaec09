/* NEON kernels of the quantizer module (see quant_kernels.h), for arm64.
 *
 * Eight codes of b bits fill b bytes, so each chunk of 8 coordinates starts on a
 * byte boundary and is handled as two vectors of 4 lanes. Centroids are looked up
 * with vqtbl4q_u8 from a 64-byte table of 16 floats: lane index k becomes the
 * byte indices 4k .. 4k + 3. Tails of fewer than 8 values use the scalar reference. */
#include <arm_neon.h>
#include <string.h>

#include "quant_kernels.h"

/* Read at least `bytes` (at most 4) little-endian bytes, and 4 when `available`
 * allows. Bits past `bytes` may be set: the unpackers mask every code and never
 * read above bit 8 * bits. */
static inline uint32_t load_bits(const uint8_t *p, size_t bytes, size_t available)
{
    uint32_t word = 0;
    if (available >= 4) {
        memcpy(&word, p, 4);
    } else {
        memcpy(&word, p, bytes < sizeof(word) ? bytes : sizeof(word));
    }
    return word;
}

static inline uint8x16x4_t load_table(const float *table, int bits)
{
    float padded[16] = {0};
    memcpy(padded, table, sizeof(float) << bits);
    uint8x16x4_t lut;
    lut.val[0] = vreinterpretq_u8_f32(vld1q_f32(padded));
    lut.val[1] = vreinterpretq_u8_f32(vld1q_f32(padded + 4));
    lut.val[2] = vreinterpretq_u8_f32(vld1q_f32(padded + 8));
    lut.val[3] = vreinterpretq_u8_f32(vld1q_f32(padded + 12));
    return lut;
}

/* Centroids for 4 code indices (0..15 in 32-bit lanes). */
static inline float32x4_t lookup4(uint32x4_t index, uint8x16x4_t lut)
{
    /* index * 0x04040404 + 0x03020100 spreads k into the bytes 4k, 4k+1, 4k+2, 4k+3. */
    const uint32x4_t bytes = vmlaq_n_u32(vdupq_n_u32(0x03020100u), index, 0x04040404u);
    return vreinterpretq_f32_u8(vqtbl4q_u8(lut, vreinterpretq_u8_u32(bytes)));
}

/* Codes 0..3 and 4..7 of the 8 codes packed in word. */
static inline void unpack8(uint32_t word, int bits, uint32x4_t *first, uint32x4_t *second)
{
    const int32_t b = bits;
    /* vshlq_u32 shifts right for negative counts. */
    const int32x4_t shift_first = {0, -b, -2 * b, -3 * b};
    const int32x4_t shift_second = {-4 * b, -5 * b, -6 * b, -7 * b};
    const uint32x4_t mask = vdupq_n_u32((1u << bits) - 1u);
    const uint32x4_t all = vdupq_n_u32(word);
    *first = vandq_u32(vshlq_u32(all, shift_first), mask);
    *second = vandq_u32(vshlq_u32(all, shift_second), mask);
}

static void fwht_neon(float *x, size_t n)
{
    if (n < 4) {
        tq_quant_kernels_scalar.fwht(x, n);
        return;
    }
    /* Stages 1 and 2 stay inside each block of 4; fma(partner, v, sign) gives a + b
     * and a - b with one rounding each, the same bits as the scalar code. */
    const float32x4_t sign1 = {1.0f, -1.0f, 1.0f, -1.0f};
    const float32x4_t sign2 = {1.0f, 1.0f, -1.0f, -1.0f};
    for (size_t i = 0; i < n; i += 4) {
        float32x4_t v = vld1q_f32(x + i);
        v = vfmaq_f32(vrev64q_f32(v), v, sign1);
        v = vfmaq_f32(vextq_f32(v, v, 2), v, sign2);
        vst1q_f32(x + i, v);
    }
    for (size_t half = 4; half < n; half <<= 1) {
        for (size_t start = 0; start < n; start += 2 * half) {
            for (size_t j = start; j < start + half; j += 4) {
                const float32x4_t a = vld1q_f32(x + j);
                const float32x4_t b = vld1q_f32(x + j + half);
                vst1q_f32(x + j, vaddq_f32(a, b));
                vst1q_f32(x + j + half, vsubq_f32(a, b));
            }
        }
    }
}

static double sum_squares_neon(const float *x, size_t n)
{
    /* acc[j] contains partial sums 2j and 2j + 1; an FMA of an exact square rounds
     * once, as the scalar add does. */
    float64x2_t acc[4] = {vdupq_n_f64(0.0), vdupq_n_f64(0.0), vdupq_n_f64(0.0), vdupq_n_f64(0.0)};
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const float32x4_t first = vld1q_f32(x + i);
        const float32x4_t second = vld1q_f32(x + i + 4);
        const float64x2_t v0 = vcvt_f64_f32(vget_low_f32(first));
        const float64x2_t v1 = vcvt_high_f64_f32(first);
        const float64x2_t v2 = vcvt_f64_f32(vget_low_f32(second));
        const float64x2_t v3 = vcvt_high_f64_f32(second);
        acc[0] = vfmaq_f64(acc[0], v0, v0);
        acc[1] = vfmaq_f64(acc[1], v1, v1);
        acc[2] = vfmaq_f64(acc[2], v2, v2);
        acc[3] = vfmaq_f64(acc[3], v3, v3);
    }
    double partial[8];
    for (int j = 0; j < 4; j++) {
        vst1q_f64(partial + 2 * j, acc[j]);
    }
    for (; i < n; i++) {
        partial[0] += (double)x[i] * (double)x[i];
    }
    return ((partial[0] + partial[1]) + (partial[2] + partial[3])) + ((partial[4] + partial[5]) + (partial[6] + partial[7]));
}

static void matvec_neon(const float *m, const float *x, float *y, size_t rows, size_t cols)
{
    for (size_t r = 0; r < rows; r++) {
        const float *row = m + r * cols;
        float32x4_t acc0 = vdupq_n_f32(0.0f);
        float32x4_t acc1 = vdupq_n_f32(0.0f);
        size_t c = 0;
        for (; c + 8 <= cols; c += 8) {
            acc0 = vfmaq_f32(acc0, vld1q_f32(row + c), vld1q_f32(x + c));
            acc1 = vfmaq_f32(acc1, vld1q_f32(row + c + 4), vld1q_f32(x + c + 4));
        }
        float sum = vaddvq_f32(vaddq_f32(acc0, acc1));
        for (; c < cols; c++) {
            sum += row[c] * x[c];
        }
        y[r] = sum;
    }
}

static void encode_neon(const float *x, size_t count, int bits, const float *boundaries, uint8_t *out)
{
    const int n_boundaries = (1 << bits) - 1;
    const int32_t b = bits;
    const int32x4_t shift_first = {0, b, 2 * b, 3 * b};
    const int32x4_t shift_second = {4 * b, 5 * b, 6 * b, 7 * b};
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        const float32x4_t v0 = vld1q_f32(x + i);
        const float32x4_t v1 = vld1q_f32(x + i + 4);
        uint32x4_t code0 = vdupq_n_u32(0);
        uint32x4_t code1 = vdupq_n_u32(0);
        for (int k = 0; k < n_boundaries; k++) {
            /* A true comparison is all ones, so subtracting it adds one. */
            const float32x4_t bound = vdupq_n_f32(boundaries[k]);
            code0 = vsubq_u32(code0, vcgtq_f32(v0, bound));
            code1 = vsubq_u32(code1, vcgtq_f32(v1, bound));
        }
        /* The shifted codes occupy disjoint bits, so their sum is their OR. */
        const uint32_t word = vaddvq_u32(vshlq_u32(code0, shift_first)) + vaddvq_u32(vshlq_u32(code1, shift_second));
        for (int k = 0; k < bits; k++) {
            out[(i / 8) * (size_t)bits + (size_t)k] = (uint8_t)(word >> (8 * k));
        }
    }
    if (i < count) {
        tq_quant_kernels_scalar.encode(x + i, count - i, bits, boundaries, out + (i / 8) * (size_t)bits);
    }
}

static void decode_neon(const uint8_t *codes, size_t count, int bits, const float *table, float *out)
{
    const uint8x16x4_t lut = load_table(table, bits);
    const size_t total_bytes = (count * (size_t)bits + 7) / 8;
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        const size_t offset = (i / 8) * (size_t)bits;
        uint32x4_t first, second;
        unpack8(load_bits(codes + offset, (size_t)bits, total_bytes - offset), bits, &first, &second);
        vst1q_f32(out + i, lookup4(first, lut));
        vst1q_f32(out + i + 4, lookup4(second, lut));
    }
    if (i < count) {
        tq_quant_kernels_scalar.decode(codes + (i / 8) * (size_t)bits, count - i, bits, table, out + i);
    }
}

static inline float dot_row(const uint8_t *codes, size_t count, int bits, const float *table, uint8x16x4_t lut,
                            const float *q)
{
    const size_t total_bytes = (count * (size_t)bits + 7) / 8;
    float32x4_t acc0 = vdupq_n_f32(0.0f);
    float32x4_t acc1 = vdupq_n_f32(0.0f);
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        const size_t offset = (i / 8) * (size_t)bits;
        uint32x4_t first, second;
        unpack8(load_bits(codes + offset, (size_t)bits, total_bytes - offset), bits, &first, &second);
        acc0 = vfmaq_f32(acc0, vld1q_f32(q + i), lookup4(first, lut));
        acc1 = vfmaq_f32(acc1, vld1q_f32(q + i + 4), lookup4(second, lut));
    }
    float sum = vaddvq_f32(vaddq_f32(acc0, acc1));
    if (i < count) {
        sum += tq_quant_kernels_scalar.dot(codes + (i / 8) * (size_t)bits, count - i, bits, table, q + i);
    }
    return sum;
}

static float dot_neon(const uint8_t *codes, size_t count, int bits, const float *table, const float *q)
{
    return dot_row(codes, count, bits, table, load_table(table, bits), q);
}

static void dot_rows_neon(const uint8_t *codes, size_t row_bytes, size_t n_rows, size_t count, int bits,
                          const float *table, const float *q, float *out)
{
    const uint8x16x4_t lut = load_table(table, bits);
    for (size_t r = 0; r < n_rows; r++) {
        out[r] = dot_row(codes + r * row_bytes, count, bits, table, lut, q);
    }
}

const tq_quant_kernels tq_quant_kernels_neon = {
    .fwht = fwht_neon,
    .sum_squares = sum_squares_neon,
    .matvec = matvec_neon,
    .encode = encode_neon,
    .decode = decode_neon,
    .dot = dot_neon,
    .dot_rows = dot_rows_neon,
};
