/* AVX-512 kernels of the quantizer module (see quant_kernels.h).
 *
 * Sixteen codes of b bits fill 2b bytes, so each chunk of 16 coordinates starts on
 * a byte boundary. Codes are unpacked into 32-bit lanes with variable shifts, and
 * centroids are looked up with vpermps from a table of up to 16 floats held in one
 * register. */
#include <immintrin.h>
#include <string.h>

#include "quant_kernels.h"

/* Read `bytes` (at most 8) little-endian bytes; reads 8 when `available` allows. */
static inline uint64_t load_bits(const uint8_t *p, size_t bytes, size_t available)
{
    uint64_t word = 0;
    if (available >= 8) {
        memcpy(&word, p, 8);
        if (bytes < 8) {
            word &= (UINT64_C(1) << (8 * bytes)) - 1;
        }
    } else {
        memcpy(&word, p, bytes < sizeof(word) ? bytes : sizeof(word));
    }
    return word;
}

/* Lane i of the result is code i of the 16 codes packed in word. */
static inline __m512i unpack16(uint64_t word, int bits, __m512i shifts, __m512i mask)
{
    const __m256i low = _mm256_set1_epi32((int)(uint32_t)word);
    const __m256i high = _mm256_set1_epi32((int)(uint32_t)(word >> (8 * bits)));
    const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
    return _mm512_and_si512(_mm512_srlv_epi32(both, shifts), mask);
}

/* Lane i is bits * (i mod 8): the bit offset of code i within its 8-code half. */
static inline __m512i lane_shifts(int bits)
{
    const __m512i lane = _mm512_set_epi32(7, 6, 5, 4, 3, 2, 1, 0, 7, 6, 5, 4, 3, 2, 1, 0);
    return _mm512_mullo_epi32(lane, _mm512_set1_epi32(bits));
}

static void fwht_avx512(float *x, size_t n)
{
    if (n < 16) {
        tq_quant_kernels_scalar.fwht(x, n);
        return;
    }
    /* Stages 1, 2, 4 and 8 stay inside each block of 16: lane i pairs with lane
     * i ^ half. fma(v, sign, partner) gives a + b in the lower lane and a - b in
     * the upper one with one rounding, the same bits as the scalar butterfly. */
    const __m512i swap1 = _mm512_set_epi32(14, 15, 12, 13, 10, 11, 8, 9, 6, 7, 4, 5, 2, 3, 0, 1);
    const __m512i swap2 = _mm512_set_epi32(13, 12, 15, 14, 9, 8, 11, 10, 5, 4, 7, 6, 1, 0, 3, 2);
    const __m512i swap4 = _mm512_set_epi32(11, 10, 9, 8, 15, 14, 13, 12, 3, 2, 1, 0, 7, 6, 5, 4);
    const __m512i swap8 = _mm512_set_epi32(7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8);
    const __m512 sign1 = _mm512_set_ps(-1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1);
    const __m512 sign2 = _mm512_set_ps(-1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1);
    const __m512 sign4 = _mm512_set_ps(-1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1);
    const __m512 sign8 = _mm512_set_ps(-1, -1, -1, -1, -1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1, 1);
    for (size_t i = 0; i < n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        v = _mm512_fmadd_ps(v, sign1, _mm512_permutexvar_ps(swap1, v));
        v = _mm512_fmadd_ps(v, sign2, _mm512_permutexvar_ps(swap2, v));
        v = _mm512_fmadd_ps(v, sign4, _mm512_permutexvar_ps(swap4, v));
        v = _mm512_fmadd_ps(v, sign8, _mm512_permutexvar_ps(swap8, v));
        _mm512_storeu_ps(x + i, v);
    }
    for (size_t half = 16; half < n; half <<= 1) {
        for (size_t start = 0; start < n; start += 2 * half) {
            for (size_t j = start; j < start + half; j += 16) {
                const __m512 a = _mm512_loadu_ps(x + j);
                const __m512 b = _mm512_loadu_ps(x + j + half);
                _mm512_storeu_ps(x + j, _mm512_add_ps(a, b));
                _mm512_storeu_ps(x + j + half, _mm512_sub_ps(a, b));
            }
        }
    }
}

static void matvec_avx512(const float *m, const float *x, float *y, size_t rows, size_t cols)
{
    const size_t tail = cols % 16;
    const __mmask16 tail_mask = (__mmask16)((1u << tail) - 1u);
    for (size_t r = 0; r < rows; r++) {
        const float *row = m + r * cols;
        __m512 acc0 = _mm512_setzero_ps();
        __m512 acc1 = _mm512_setzero_ps();
        size_t c = 0;
        for (; c + 32 <= cols; c += 32) {
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(row + c), _mm512_loadu_ps(x + c), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(row + c + 16), _mm512_loadu_ps(x + c + 16), acc1);
        }
        if (c + 16 <= cols) {
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(row + c), _mm512_loadu_ps(x + c), acc0);
            c += 16;
        }
        if (tail) {
            acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail_mask, row + c), _mm512_maskz_loadu_ps(tail_mask, x + c),
                                   acc1);
        }
        y[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    }
}

static void encode_avx512(const float *x, size_t count, int bits, const float *boundaries, uint8_t *out)
{
    const int n_boundaries = (1 << bits) - 1;
    __m512 bound[15];
    for (int k = 0; k < n_boundaries; k++) {
        bound[k] = _mm512_set1_ps(boundaries[k]);
    }
    const __m512i shifts = lane_shifts(bits);
    const __m512i one = _mm512_set1_epi32(1);
    const size_t chunk_bytes = 2 * (size_t)bits;

    for (size_t i = 0; i < count; i += 16) {
        const size_t lanes = count - i < 16 ? count - i : 16;
        const __mmask16 valid = (__mmask16)(lanes == 16 ? 0xFFFFu : (1u << lanes) - 1u);
        const __m512 v = _mm512_maskz_loadu_ps(valid, x + i);
        __m512i code = _mm512_setzero_si512();
        for (int k = 0; k < n_boundaries; k++) {
            const __mmask16 above = _mm512_mask_cmp_ps_mask(valid, v, bound[k], _CMP_GT_OQ);
            code = _mm512_mask_add_epi32(code, above, code, one);
        }
        const __m512i placed = _mm512_sllv_epi32(code, shifts);
        const uint64_t low = (uint32_t)_mm512_mask_reduce_or_epi32(0x00FF, placed);
        const uint64_t high = (uint32_t)_mm512_mask_reduce_or_epi32(0xFF00, placed);
        const uint64_t word = low | (high << (8 * bits));
        const size_t bytes = lanes == 16 ? chunk_bytes : (lanes * (size_t)bits + 7) / 8;
        memcpy(out + (i / 16) * chunk_bytes, &word, bytes);
    }
}

static void decode_avx512(const uint8_t *codes, size_t count, int bits, const float *table, float *out)
{
    const __m512 lut = _mm512_maskz_loadu_ps((__mmask16)((1u << (1 << bits)) - 1u), table);
    const __m512i shifts = lane_shifts(bits);
    const __m512i mask = _mm512_set1_epi32((1 << bits) - 1);
    const size_t chunk_bytes = 2 * (size_t)bits;
    const size_t total_bytes = (count * (size_t)bits + 7) / 8;

    for (size_t i = 0; i < count; i += 16) {
        const size_t lanes = count - i < 16 ? count - i : 16;
        const size_t offset = (i / 16) * chunk_bytes;
        const size_t bytes = lanes == 16 ? chunk_bytes : (lanes * (size_t)bits + 7) / 8;
        const uint64_t word = load_bits(codes + offset, bytes, total_bytes - offset);
        const __m512 values = _mm512_permutexvar_ps(unpack16(word, bits, shifts, mask), lut);
        _mm512_mask_storeu_ps(out + i, (__mmask16)(lanes == 16 ? 0xFFFFu : (1u << lanes) - 1u), values);
    }
}

static float dot_avx512(const uint8_t *codes, size_t count, int bits, const float *table, const float *q)
{
    const __m512 lut = _mm512_maskz_loadu_ps((__mmask16)((1u << (1 << bits)) - 1u), table);
    const __m512i shifts = lane_shifts(bits);
    const __m512i mask = _mm512_set1_epi32((1 << bits) - 1);
    const size_t chunk_bytes = 2 * (size_t)bits;
    const size_t total_bytes = (count * (size_t)bits + 7) / 8;
    __m512 acc0 = _mm512_setzero_ps();
    __m512 acc1 = _mm512_setzero_ps();

    size_t i = 0;
    /* Two chunks per step on independent accumulators hide the FMA latency. */
    for (; i + 32 <= count; i += 32) {
        const size_t offset = (i / 16) * chunk_bytes;
        const uint64_t word0 = load_bits(codes + offset, chunk_bytes, total_bytes - offset);
        const uint64_t word1 = load_bits(codes + offset + chunk_bytes, chunk_bytes, total_bytes - offset - chunk_bytes);
        const __m512 values0 = _mm512_permutexvar_ps(unpack16(word0, bits, shifts, mask), lut);
        const __m512 values1 = _mm512_permutexvar_ps(unpack16(word1, bits, shifts, mask), lut);
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), values0, acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), values1, acc1);
    }
    for (; i < count; i += 16) {
        const size_t lanes = count - i < 16 ? count - i : 16;
        const __mmask16 valid = (__mmask16)(lanes == 16 ? 0xFFFFu : (1u << lanes) - 1u);
        const size_t offset = (i / 16) * chunk_bytes;
        const size_t bytes = lanes == 16 ? chunk_bytes : (lanes * (size_t)bits + 7) / 8;
        const uint64_t word = load_bits(codes + offset, bytes, total_bytes - offset);
        const __m512 values = _mm512_permutexvar_ps(unpack16(word, bits, shifts, mask), lut);
        acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(valid, q + i), values, acc0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

const tq_quant_kernels tq_quant_kernels_avx512 = {
    .fwht = fwht_avx512,
    .matvec = matvec_avx512,
    .encode = encode_avx512,
    .decode = decode_avx512,
    .dot = dot_avx512,
};
