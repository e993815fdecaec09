/* AVX-512 (F, BW, DQ, VL) variant of the QJL and PolarQuant kernels (16 floats per register). */
#include <immintrin.h>
#include <string.h>

#include "qjl_polar_kernels.h"

static float dot_avx512(const float *a, const float *b, size_t n)
{
    __m512 acc0 = _mm512_setzero_ps();
    __m512 acc1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
    }
    acc0 = _mm512_add_ps(acc0, acc1);
    if (i + 16 <= n) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        i += 16;
    }
    if (i < n) {
        const __mmask16 tail = (__mmask16)((1u << (n - i)) - 1u);
        acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, a + i), _mm512_maskz_loadu_ps(tail, b + i), acc0);
    }
    return _mm512_reduce_add_ps(acc0);
}

static void dot4_avx512(const float *a, const float *b, size_t stride, size_t n, float *out)
{
    /* The same accumulators, steps and masked tail as dot_avx512, for four rows of b at once. */
    __m512 acc0[4], acc1[4];
    for (int r = 0; r < 4; r++) {
        acc0[r] = _mm512_setzero_ps();
        acc1[r] = _mm512_setzero_ps();
    }
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512 a0 = _mm512_loadu_ps(a + i);
        const __m512 a1 = _mm512_loadu_ps(a + i + 16);
        for (int r = 0; r < 4; r++) {
            acc0[r] = _mm512_fmadd_ps(a0, _mm512_loadu_ps(b + r * stride + i), acc0[r]);
            acc1[r] = _mm512_fmadd_ps(a1, _mm512_loadu_ps(b + r * stride + i + 16), acc1[r]);
        }
    }
    for (int r = 0; r < 4; r++) {
        acc0[r] = _mm512_add_ps(acc0[r], acc1[r]);
    }
    if (i + 16 <= n) {
        const __m512 a0 = _mm512_loadu_ps(a + i);
        for (int r = 0; r < 4; r++) {
            acc0[r] = _mm512_fmadd_ps(a0, _mm512_loadu_ps(b + r * stride + i), acc0[r]);
        }
        i += 16;
    }
    if (i < n) {
        const __mmask16 tail = (__mmask16)((1u << (n - i)) - 1u);
        const __m512 a0 = _mm512_maskz_loadu_ps(tail, a + i);
        for (int r = 0; r < 4; r++) {
            acc0[r] = _mm512_fmadd_ps(a0, _mm512_maskz_loadu_ps(tail, b + r * stride + i), acc0[r]);
        }
    }
    for (int r = 0; r < 4; r++) {
        out[r] = _mm512_reduce_add_ps(acc0[r]);
    }
}

static float sign_dot_avx512(const uint8_t *bits, const float *q, size_t m)
{
    /* Two code bytes are exactly the 16-lane mask: add q where the bit is set, subtract elsewhere. */
    __m512 acc = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= m; i += 16) {
        uint16_t word;
        memcpy(&word, bits + (i >> 3), sizeof(word));
        const __m512 v = _mm512_loadu_ps(q + i);
        acc = _mm512_add_ps(acc, _mm512_mask_blend_ps((__mmask16)word, _mm512_sub_ps(_mm512_setzero_ps(), v), v));
    }
    float sum = _mm512_reduce_add_ps(acc);
    for (; i < m; i++) {
        const int set = (bits[i >> 3] >> (i & 7)) & 1;
        sum += set ? q[i] : -q[i];
    }
    return sum;
}

static float level2_dot_avx512(const uint8_t *codes, const float *q, const float *levels, size_t m)
{
    /* Sixteen 2-bit codes come from four bytes, and permutexvar looks up their levels (indices 0..3). */
    const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i three = _mm512_set1_epi32(3);
    const __m512 table = _mm512_maskz_loadu_ps((__mmask16)0xF, levels);
    __m512 acc = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= m; i += 16) {
        uint32_t word;
        memcpy(&word, codes + (i >> 2), sizeof(word));
        const __m512i index = _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32((int)word), shifts), three);
        acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(index, table), _mm512_loadu_ps(q + i), acc);
    }
    float sum = _mm512_reduce_add_ps(acc);
    for (; i < m; i++) {
        const int code = (codes[i >> 2] >> (2 * (i & 3))) & 3;
        sum += levels[code] * q[i];
    }
    return sum;
}

static float polar_dot_avx512(const uint8_t *radius_codes, const uint8_t *angle_codes, const float *radius,
                              const float *table, size_t pairs, size_t stride)
{
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i lane_offset = _mm512_mullo_epi32(lane, _mm512_set1_epi32((int)stride));
    __m512 acc = _mm512_setzero_ps();
    size_t j = 0;
    for (; j + 16 <= pairs; j += 16) {
        const __m512i rcode = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(radius_codes + j)));
        const __m512i acode = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(angle_codes + j)));
        /* Table offsets relative to row j stay below 16 * 256, so 32-bit indices cannot overflow. */
        const __m512 r = _mm512_i32gather_ps(rcode, radius, 4);
        const __m512 t = _mm512_i32gather_ps(_mm512_add_epi32(lane_offset, acode), table + j * stride, 4);
        acc = _mm512_fmadd_ps(r, t, acc);
    }
    float sum = _mm512_reduce_add_ps(acc);
    for (; j < pairs; j++) {
        sum += radius[radius_codes[j]] * table[j * stride + angle_codes[j]];
    }
    return sum;
}

const tq_qjl_polar_kernels tq_qjl_polar_kernels_avx512 = {
    dot_avx512,
    dot4_avx512,
    sign_dot_avx512,
    level2_dot_avx512,
    polar_dot_avx512,
};
