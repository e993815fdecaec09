/* AVX2 + FMA variant of the QJL and PolarQuant kernels (8 floats per register). */
#include <immintrin.h>
#include <string.h>

#include "qjl_polar_kernels.h"

static float horizontal_sum(__m256 v)
{
    __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
    sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
    return _mm_cvtss_f32(sum);
}

static float dot_avx2(const float *a, const float *b, size_t n)
{
    __m256 acc0 = _mm256_setzero_ps();
    __m256 acc1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    for (; i + 8 <= n; i += 8) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    }
    float sum = horizontal_sum(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) {
        sum += a[i] * b[i];
    }
    return sum;
}

static void dot4_avx2(const float *a, const float *b, size_t stride, size_t n, float *out)
{
    /* The same two accumulators, steps and tail as dot_avx2, for four rows of b at once. */
    __m256 acc0[4], acc1[4];
    for (int r = 0; r < 4; r++) {
        acc0[r] = _mm256_setzero_ps();
        acc1[r] = _mm256_setzero_ps();
    }
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 a0 = _mm256_loadu_ps(a + i);
        const __m256 a1 = _mm256_loadu_ps(a + i + 8);
        for (int r = 0; r < 4; r++) {
            acc0[r] = _mm256_fmadd_ps(a0, _mm256_loadu_ps(b + r * stride + i), acc0[r]);
            acc1[r] = _mm256_fmadd_ps(a1, _mm256_loadu_ps(b + r * stride + i + 8), acc1[r]);
        }
    }
    for (; i + 8 <= n; i += 8) {
        const __m256 a0 = _mm256_loadu_ps(a + i);
        for (int r = 0; r < 4; r++) {
            acc0[r] = _mm256_fmadd_ps(a0, _mm256_loadu_ps(b + r * stride + i), acc0[r]);
        }
    }
    for (int r = 0; r < 4; r++) {
        float sum = horizontal_sum(_mm256_add_ps(acc0[r], acc1[r]));
        for (size_t k = i; k < n; k++) {
            sum += a[k] * b[r * stride + k];
        }
        out[r] = sum;
    }
}

static float sign_dot_avx2(const uint8_t *bits, const float *q, size_t m)
{
    /* Lane k tests bit k of the byte, and a clear bit flips the sign of q by XOR with -0.0f. */
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i sign_mask = _mm256_set1_epi32((int)0x80000000u);
    __m256 acc = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= m; i += 8) {
        const __m256i byte = _mm256_set1_epi32(bits[i >> 3]);
        const __m256i clear = _mm256_cmpeq_epi32(_mm256_and_si256(byte, lane_bit), _mm256_setzero_si256());
        const __m256 flip = _mm256_castsi256_ps(_mm256_and_si256(clear, sign_mask));
        acc = _mm256_add_ps(acc, _mm256_xor_ps(_mm256_loadu_ps(q + i), flip));
    }
    float sum = horizontal_sum(acc);
    for (; i < m; i++) {
        const int set = (bits[i >> 3] >> (i & 7)) & 1;
        sum += set ? q[i] : -q[i];
    }
    return sum;
}

static float level2_dot_avx2(const uint8_t *codes, const float *q, const float *levels, size_t m)
{
    /* Eight 2-bit codes come from two bytes, and permutevar8x32 looks up their levels (indices 0..3). */
    const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    const __m256i three = _mm256_set1_epi32(3);
    const __m256 table = _mm256_setr_ps(levels[0], levels[1], levels[2], levels[3], 0.0f, 0.0f, 0.0f, 0.0f);
    __m256 acc = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= m; i += 8) {
        uint16_t word;
        memcpy(&word, codes + (i >> 2), sizeof(word));
        const __m256i index = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(word), shifts), three);
        acc = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(table, index), _mm256_loadu_ps(q + i), acc);
    }
    float sum = horizontal_sum(acc);
    for (; i < m; i++) {
        const int code = (codes[i >> 2] >> (2 * (i & 3))) & 3;
        sum += levels[code] * q[i];
    }
    return sum;
}

static float polar_dot_avx2(const uint8_t *radius_codes, const uint8_t *angle_codes, const float *radius,
                            const float *table, size_t pairs, size_t stride)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i stride_vec = _mm256_set1_epi32((int)stride);
    __m256 acc = _mm256_setzero_ps();
    size_t j = 0;
    for (; j + 8 <= pairs; j += 8) {
        const __m256i rcode = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(radius_codes + j)));
        const __m256i acode = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(angle_codes + j)));
        /* Table offsets relative to row j stay below 8 * 256, so 32-bit indices cannot overflow. */
        const __m256i offset = _mm256_add_epi32(_mm256_mullo_epi32(lane, stride_vec), acode);
        const __m256 r = _mm256_i32gather_ps(radius, rcode, 4);
        const __m256 t = _mm256_i32gather_ps(table + j * stride, offset, 4);
        acc = _mm256_fmadd_ps(r, t, acc);
    }
    float sum = horizontal_sum(acc);
    for (; j < pairs; j++) {
        sum += radius[radius_codes[j]] * table[j * stride + angle_codes[j]];
    }
    return sum;
}

const tq_qjl_polar_kernels tq_qjl_polar_kernels_avx2 = {
    dot_avx2,
    dot4_avx2,
    sign_dot_avx2,
    level2_dot_avx2,
    polar_dot_avx2,
};
