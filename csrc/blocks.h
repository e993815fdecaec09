/* Block layouts of the GGML quantized formats, and fp16/bf16 conversion.
 *
 * Each struct matches the bytes that GGUF files store (little-endian, no padding),
 * so a tensor's data can be cast to an array of blocks. Layouts follow
 * ggml/src/ggml-common.h of llama.cpp. Scales named d and dmin are IEEE binary16.
 *
 * Value order inside a block: for the 32-value formats, byte j of qs holds value j
 * in its low nibble and value j + 16 in its high nibble. The K-quants group 256
 * values into a super-block with per-sub-block scales; their layouts are described
 * at each struct.
 */
#ifndef TQ_BLOCKS_H
#define TQ_BLOCKS_H

#include <stdint.h>
#include <string.h>

typedef uint16_t tq_fp16; /* IEEE 754 binary16 bits */
typedef uint16_t tq_bf16; /* upper 16 bits of an IEEE 754 binary32 */

#define TQ_QK4_0 32
#define TQ_QK4_1 32
#define TQ_QK5_0 32
#define TQ_QK5_1 32
#define TQ_QK8_0 32
#define TQ_QK_K 256
#define TQ_K_SCALE_SIZE 12

/* Q4_0: value = d * (q - 8), q in 0..15. */
typedef struct {
    tq_fp16 d;
    uint8_t qs[TQ_QK4_0 / 2];
} tq_block_q4_0;
_Static_assert(sizeof(tq_block_q4_0) == 18, "tq_block_q4_0 must be 18 bytes");

/* Q4_1: value = d * q + m, q in 0..15. */
typedef struct {
    tq_fp16 d;
    tq_fp16 m;
    uint8_t qs[TQ_QK4_1 / 2];
} tq_block_q4_1;
_Static_assert(sizeof(tq_block_q4_1) == 20, "tq_block_q4_1 must be 20 bytes");

/* Q5_0: value = d * (q - 16), q in 0..31. Bit j of qh (read as a little-endian
 * uint32) is bit 4 of value j. */
typedef struct {
    tq_fp16 d;
    uint8_t qh[4];
    uint8_t qs[TQ_QK5_0 / 2];
} tq_block_q5_0;
_Static_assert(sizeof(tq_block_q5_0) == 22, "tq_block_q5_0 must be 22 bytes");

/* Q5_1: value = d * q + m, q in 0..31, high bits as in Q5_0. */
typedef struct {
    tq_fp16 d;
    tq_fp16 m;
    uint8_t qh[4];
    uint8_t qs[TQ_QK5_1 / 2];
} tq_block_q5_1;
_Static_assert(sizeof(tq_block_q5_1) == 24, "tq_block_q5_1 must be 24 bytes");

/* Q8_0: value = d * q, q in -128..127. Also the activation format for the dot
 * products with the 32-value weight formats. */
typedef struct {
    tq_fp16 d;
    int8_t qs[TQ_QK8_0];
} tq_block_q8_0;
_Static_assert(sizeof(tq_block_q8_0) == 34, "tq_block_q8_0 must be 34 bytes");

/* Q4_K: 8 sub-blocks of 32 values; value = d * sc[j] * q - dmin * m[j], q in 0..15.
 * scales packs 8 six-bit scales and 8 six-bit mins (see tq_get_scale_min_k4).
 * Sub-blocks 2i and 2i + 1 share qs[32 i .. 32 i + 31]: low nibbles, then high. */
typedef struct {
    tq_fp16 d;
    tq_fp16 dmin;
    uint8_t scales[TQ_K_SCALE_SIZE];
    uint8_t qs[TQ_QK_K / 2];
} tq_block_q4_K;
_Static_assert(sizeof(tq_block_q4_K) == 144, "tq_block_q4_K must be 144 bytes");

/* Q5_K: Q4_K plus a fifth bit: bit j of qh[l] is bit 4 of value 32 j + l. */
typedef struct {
    tq_fp16 d;
    tq_fp16 dmin;
    uint8_t scales[TQ_K_SCALE_SIZE];
    uint8_t qh[TQ_QK_K / 8];
    uint8_t qs[TQ_QK_K / 2];
} tq_block_q5_K;
_Static_assert(sizeof(tq_block_q5_K) == 176, "tq_block_q5_K must be 176 bytes");

/* Q6_K: 16 sub-blocks of 16 values; value = d * scales[k] * (q - 32), q in 0..63.
 * In each half of 128 values, value 32 k + l (k < 4, l < 32) takes its low four
 * bits from ql (byte l for k = 0 and 2, byte l + 32 for k = 1 and 3; low nibble
 * for k < 2, high nibble otherwise) and its top two bits from bits 2k, 2k + 1 of qh[l]. */
typedef struct {
    uint8_t ql[TQ_QK_K / 2];
    uint8_t qh[TQ_QK_K / 4];
    int8_t scales[TQ_QK_K / 16];
    tq_fp16 d;
} tq_block_q6_K;
_Static_assert(sizeof(tq_block_q6_K) == 210, "tq_block_q6_K must be 210 bytes");

/* Q8_K: activation format for the K-quant dot products; value = d * qs[i].
 * bsums[k] is the sum of qs[16 k .. 16 k + 15], used for the min and offset terms. */
typedef struct {
    float d;
    int8_t qs[TQ_QK_K];
    int16_t bsums[TQ_QK_K / 16];
} tq_block_q8_K;
_Static_assert(sizeof(tq_block_q8_K) == 292, "tq_block_q8_K must be 292 bytes");

/* Decode the 6-bit scale and min of sub-block j (0..7) of a Q4_K or Q5_K block.
 * The low six bits of bytes 0-3 are scales 0-3, those of bytes 4-7 are mins 0-3.
 * Scales and mins 4-7 keep their low four bits in bytes 8-11 (scale in the low
 * nibble) and their top two bits in the top bits of bytes 0-3 and 4-7. */
static inline void tq_get_scale_min_k4(int j, const uint8_t *q, uint8_t *scale, uint8_t *min)
{
    if (j < 4) {
        *scale = q[j] & 63;
        *min = q[j + 4] & 63;
    } else {
        *scale = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *min = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* Unpack the 12 scale bytes of a Q4_K or Q5_K block into out[0..7] = scales and
 * out[8..15] = mins, the same values as tq_get_scale_min_k4 for j = 0..7. */
static inline void tq_unpack_scales_k4(const uint8_t *packed, uint8_t out[16])
{
    const uint32_t low6 = 0x3F3F3F3Fu, low4 = 0x0F0F0F0Fu, low2 = 0x03030303u;
    uint32_t word[3];
    uint32_t result[4];
    memcpy(word, packed, 12);
    result[0] = word[0] & low6;                                       /* scales 0-3 */
    result[1] = (word[2] & low4) | (((word[0] >> 6) & low2) << 4);    /* scales 4-7 */
    result[2] = word[1] & low6;                                       /* mins 0-3 */
    result[3] = ((word[2] >> 4) & low4) | (((word[1] >> 6) & low2) << 4); /* mins 4-7 */
    memcpy(out, result, 16);
}

static inline float tq_bits_to_fp32(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

static inline uint32_t tq_fp32_to_bits(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof(bits));
    return bits;
}

/* Convert binary16 to binary32 exactly, including subnormals, infinities and NaN
 * (the NaN payload is kept in the top mantissa bits). */
static inline float tq_fp16_to_fp32(tq_fp16 h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    const uint32_t exponent = (h >> 10) & 0x1F;
    uint32_t mantissa = h & 0x3FF;
    uint32_t bits;

    if (exponent == 0x1F) {
        bits = sign | 0x7F800000u | (mantissa << 13);
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;
    } else {
        /* Subnormal: shift the mantissa up until its leading 1 becomes implicit. */
        uint32_t e = 113;
        while ((mantissa & 0x400) == 0) {
            mantissa <<= 1;
            e--;
        }
        bits = sign | (e << 23) | ((mantissa & 0x3FF) << 13);
    }
    return tq_bits_to_fp32(bits);
}

/* Convert binary32 to binary16, rounding to nearest even; overflow gives infinity,
 * NaN stays NaN (quiet), tiny values become subnormals or signed zero. */
static inline tq_fp16 tq_fp32_to_fp16(float f)
{
    const uint32_t bits = tq_fp32_to_bits(f);
    const uint32_t sign = (bits >> 16) & 0x8000;
    const uint32_t abs_bits = bits & 0x7FFFFFFF;

    if (abs_bits > 0x7F800000u) {
        return (tq_fp16)(sign | 0x7E00 | ((abs_bits >> 13) & 0x3FF));
    }
    if (abs_bits >= 0x477FF000u) {
        /* At or above 65520, the midpoint between 65504 and 2^16, rounds to infinity. */
        return (tq_fp16)(sign | 0x7C00);
    }
    if (abs_bits < 0x38800000u) {
        /* Below 2^-14: subnormal result; align the full significand to 2^-24 units. */
        if (abs_bits < 0x33000000u) {
            return (tq_fp16)sign; /* at most 2^-25, which rounds to zero (ties to even) */
        }
        const uint32_t exponent = abs_bits >> 23;
        const uint32_t significand = (abs_bits & 0x7FFFFF) | 0x800000;
        const uint32_t shift = 126 - exponent; /* 14 .. 24 */
        uint32_t half = significand >> shift;
        const uint32_t remainder = significand & ((1u << shift) - 1);
        const uint32_t midpoint = 1u << (shift - 1);
        if (remainder > midpoint || (remainder == midpoint && (half & 1))) {
            half++;
        }
        return (tq_fp16)(sign | half);
    }
    /* Normal result: rebias the exponent and round 13 mantissa bits away. A carry
     * out of the mantissa correctly bumps the exponent. */
    uint32_t half = ((abs_bits - 0x38000000u) >> 13);
    const uint32_t remainder = abs_bits & 0x1FFF;
    if (remainder > 0x1000 || (remainder == 0x1000 && (half & 1))) {
        half++;
    }
    return (tq_fp16)(sign | half);
}

static inline float tq_bf16_to_fp32(tq_bf16 h)
{
    return tq_bits_to_fp32((uint32_t)h << 16);
}

/* Read a little-endian uint32 from possibly unaligned bytes. */
static inline uint32_t tq_load_u32_le(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

#endif /* TQ_BLOCKS_H */
