/* Inline AVX2 helpers shared by the AVX2 and AVX-512 kernel files. Include only
 * from files compiled with AVX2 (or wider) target flags. */
#ifndef TQ_MATMUL_AVX2_HELPERS_H
#define TQ_MATMUL_AVX2_HELPERS_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

static inline float hsum_ps_avx2(__m256 v)
{
    __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
    sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
    return _mm_cvtss_f32(sum);
}

static inline int hsum_i32_avx2(__m256i v)
{
    __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, _MM_SHUFFLE(1, 0, 3, 2)));
    sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(sum);
}

/* Dot products of 32 unsigned bytes u with 32 signed bytes a, as 8 int32 partial sums. */
static inline __m256i dot_u8_i8_avx2(__m256i u, __m256i a)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), _mm256_set1_epi16(1));
}

/* Dot products of 32 signed bytes w with 32 signed bytes a: |w| times a with w's sign. */
static inline __m256i dot_i8_avx2(__m256i w, __m256i a)
{
    return dot_u8_i8_avx2(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
}

/* Expand 16 bytes of packed nibbles to 32 bytes 0..15: low nibbles in the low
 * lane (values 0-15 of a block), high nibbles in the high lane (values 16-31). */
static inline __m256i nibbles_32_avx2(const uint8_t *p)
{
    const __m128i packed = _mm_loadu_si128((const __m128i *)p);
    const __m256i both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
    return _mm256_and_si256(both, _mm256_set1_epi8(0xF));
}

/* Expand the 32 bits at p (little-endian) to 32 bytes: 0xFF where bit i is set. */
static inline __m256i bits_32_avx2(const uint8_t *p)
{
    uint32_t bits;
    memcpy(&bits, p, sizeof(bits));
    /* Byte i receives byte i / 8 of the bit field, then all bits except bit i % 8 are set. */
    const __m256i spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32((int)bits),
        _mm256_setr_epi64x(0x0000000000000000, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303));
    const __m256i others = _mm256_set1_epi64x(0x7FBFDFEFF7FBFDFE);
    return _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi64x(-1));
}

/* Prefetch the row_bytes bytes at row into L1. It must be inlined: GCC 12 (-O2, -O3) takes a
 * function that only prefetches for one without effects and deletes the calls to it. */
static inline __attribute__((always_inline)) void prefetch_row(const void *row, size_t row_bytes)
{
    for (size_t offset = 0; offset < row_bytes; offset += 64) {
        _mm_prefetch((const char *)row + offset, _MM_HINT_T0);
    }
}

/* sum_j mins[j] * (bsums[2j] + bsums[2j + 1]) for the 8 sub-blocks of a Q4_K or Q5_K block. */
static inline int k4_min_dot_avx2(const uint8_t *mins, const int16_t *bsums)
{
    const __m128i lo = _mm_loadu_si128((const __m128i *)bsums);
    const __m128i hi = _mm_loadu_si128((const __m128i *)(bsums + 8));
    const __m128i pair_sums = _mm_hadd_epi16(lo, hi);
    const __m128i m = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)mins));
    __m128i prod = _mm_madd_epi16(m, pair_sums);
    prod = _mm_add_epi32(prod, _mm_shuffle_epi32(prod, _MM_SHUFFLE(1, 0, 3, 2)));
    prod = _mm_add_epi32(prod, _mm_shuffle_epi32(prod, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(prod);
}

#endif /* TQ_MATMUL_AVX2_HELPERS_H */
