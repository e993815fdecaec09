/* Attention kernels over rows of a KV cache: query-key scores and the weighted
 * sum of value rows, for every row format the cache stores.
 *
 * A cache row holds head_dim values of one position and one KV head in one of
 * the formats below. Row formats follow ggml (ggml-common.h): Q8_0 and Q4_0
 * store blocks of 32 values with an fp16 scale d in front, so head_dim must be a
 * multiple of 32 for them.
 *
 * Every kernel exists as a scalar reference (attention_scalar.c) and as SIMD
 * variants (attention_avx2.c, attention_avx512.c, attention_neon.c) that must
 * agree with it up to float rounding; tq_attention_kernels_get() returns the
 * table of one instruction set.
 */
#ifndef TQ_ATTENTION_KERNELS_H
#define TQ_ATTENTION_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "cpu.h"

/* Row formats of the baseline cache types (the ones llama.cpp offers). */
typedef enum {
    TQ_KV_F32 = 0,
    TQ_KV_F16 = 1,
    TQ_KV_Q8_0 = 2,
    TQ_KV_Q4_0 = 3,
    TQ_KV_TYPE_COUNT = 4
} tq_kv_type;

#define TQ_KV_BLOCK 32

/* 32 values as int8 times an fp16 scale: x = d * qs[i]. 34 bytes. */
typedef struct {
    uint16_t d;
    int8_t qs[TQ_KV_BLOCK];
} tq_block_q8_0;

/* 32 values as 4-bit codes: byte j holds value j in its low nibble and value
 * j + 16 in its high nibble, x = d * (code - 8). 18 bytes. */
typedef struct {
    uint16_t d;
    uint8_t qs[TQ_KV_BLOCK / 2];
} tq_block_q4_0;

_Static_assert(sizeof(tq_block_q8_0) == 34, "Q8_0 block must be 34 bytes as in ggml");
_Static_assert(sizeof(tq_block_q4_0) == 18, "Q4_0 block must be 18 bytes as in ggml");

/* out[j] = dot(q, row j) for j < n. Row j starts at rows + j * stride bytes. */
typedef void (*tq_attn_scores_fn)(const float *q, const void *rows, size_t stride, int64_t n, int head_dim,
                                  float *out);

/* out[i] += sum_j w[j] * row_j[i] for j < n, i < head_dim. */
typedef void (*tq_attn_accumulate_fn)(const float *w, const void *rows, size_t stride, int64_t n, int head_dim,
                                      float *out);

typedef struct {
    tq_attn_scores_fn scores[TQ_KV_TYPE_COUNT];
    tq_attn_accumulate_fn accumulate[TQ_KV_TYPE_COUNT];
} tq_attention_kernels;

extern const tq_attention_kernels tq_attention_kernels_scalar;
#if defined(TQ_HAVE_AVX2_KERNELS)
extern const tq_attention_kernels tq_attention_kernels_avx2;
#endif
#if defined(TQ_HAVE_AVX512_KERNELS)
extern const tq_attention_kernels tq_attention_kernels_avx512;
#endif
#if defined(TQ_HAVE_NEON_KERNELS)
extern const tq_attention_kernels tq_attention_kernels_neon;
#endif

/* Kernel table of isa; the scalar table for a variant this build lacks. */
const tq_attention_kernels *tq_attention_kernels_get(tq_isa isa);

/* IEEE half <-> float conversions, exact for every finite half and rounding to
 * nearest even in the float -> half direction (overflow gives infinity). */
static inline float tq_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0) {
        if (mantissa == 0) {
            bits = sign;
        } else {
            /* Subnormal half: normalise the mantissa into a float exponent. */
            exponent = 127 - 15 + 1;
            while ((mantissa & 0x400u) == 0) {
                mantissa <<= 1;
                exponent--;
            }
            mantissa &= 0x3ffu;
            bits = sign | (exponent << 23) | (mantissa << 13);
        }
    } else if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else {
        bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
    }
    union {
        uint32_t u;
        float f;
    } value = {bits};
    return value.f;
}

static inline uint16_t tq_float_to_half(float f)
{
    union {
        float f;
        uint32_t u;
    } value = {f};
    uint32_t bits = value.u;
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    uint32_t abs_bits = bits & 0x7fffffffu;
    if (abs_bits >= 0x7f800000u) {
        /* Infinity stays infinity; NaN keeps a quiet mantissa bit. */
        return (uint16_t)(sign | 0x7c00u | (abs_bits > 0x7f800000u ? 0x200u : 0));
    }
    if (abs_bits >= 0x477ff000u) {
        return (uint16_t)(sign | 0x7c00u); /* rounds to a value above 65504 */
    }
    if (abs_bits < 0x38800000u) {
        /* Result is subnormal or zero: shift the mantissa with the implicit bit
         * and round to nearest even. */
        if (abs_bits < 0x33000000u) {
            return sign;
        }
        uint32_t exponent = abs_bits >> 23;
        uint32_t mantissa = (abs_bits & 0x7fffffu) | 0x800000u;
        /* value = mantissa * 2^(exponent - 150) and one half subnormal step is 2^-24. */
        uint32_t total_shift = 126 - exponent;
        uint32_t result = mantissa >> total_shift;
        uint32_t remainder = mantissa & ((1u << total_shift) - 1u);
        uint32_t halfway = 1u << (total_shift - 1);
        if (remainder > halfway || (remainder == halfway && (result & 1u))) {
            result++;
        }
        return (uint16_t)(sign | result);
    }
    uint32_t rounded = abs_bits + 0xfffu + ((abs_bits >> 13) & 1u);
    return (uint16_t)(sign | ((rounded - 0x38000000u) >> 13));
}

#endif /* TQ_ATTENTION_KERNELS_H */
