/* AVX-512 kernels of the quantizer module (see quant_kernels.h).
 *
 * Sixteen codes of b bits fill 2b bytes, so each chunk of 16 coordinates starts on
 * a byte boundary. Codes are unpacked into 32-bit lanes with variable shifts, and
 * centroids are looked up with vpermps from a table of up to 16 floats held in one
 * register. */
#include <immintrin.h>
#include <string.h>

#include "quant_kernels.h"

/* Read at least `bytes` (at most 8) little-endian bytes, and 8 when `available`
 * allows. Bits past `bytes` may be set: the unpackers mask every code and never
 * read above bit 16 * bits. */
static inline uint64_t load_bits(const uint8_t *p, size_t bytes, size_t available)
{
    uint64_t word = 0;
    if (available >= 8) {
        memcpy(&word, p, 8);
    } else {
        memcpy(&word, p, bytes < sizeof(word) ? bytes : sizeof(word));
    }
    return word;
}

/* Write the low `bytes` bytes of word, little-endian. A loop of byte stores avoids
 * the library call that memcpy with a variable size becomes. */
static inline void store_bytes(uint8_t *p, uint64_t word, size_t bytes)
{
    for (size_t k = 0; k < bytes; k++) {
        p[k] = (uint8_t)(word >> (8 * k));
    }
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

static double sum_squares_avx512(const float *x, size_t n)
{
    /* Lane k of acc is partial sum k; an FMA of an exact square rounds once, as the
     * scalar add does. */
    __m512d acc = _mm512_setzero_pd();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(x + i));
        acc = _mm512_fmadd_pd(v, v, acc);
    }
    double partial[8];
    _mm512_storeu_pd(partial, acc);
    for (; i < n; i++) {
        partial[0] += (double)x[i] * (double)x[i];
    }
    return ((partial[0] + partial[1]) + (partial[2] + partial[3])) + ((partial[4] + partial[5]) + (partial[6] + partial[7]));
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
    const __m512 bound = _mm512_maskz_loadu_ps((__mmask16)((1u << n_boundaries) - 1u), boundaries);
    const __m512i shifts = lane_shifts(bits);
    const size_t chunk_bytes = 2 * (size_t)bits;

    for (size_t i = 0; i < count; i += 16) {
        const size_t lanes = count - i < 16 ? count - i : 16;
        const __mmask16 valid = (__mmask16)(lanes == 16 ? 0xFFFFu : (1u << lanes) - 1u);
        const __m512 v = _mm512_maskz_loadu_ps(valid, x + i);
        /* Binary search over the ascending boundaries: each step sets one bit of
         * the code by comparing x with boundary code + step - 1. The result is the
         * number of boundaries below x, as in the linear scan of the scalar code. */
        __m512i code = _mm512_setzero_si512();
        for (int step = 1 << (bits - 1); step > 0; step >>= 1) {
            const __m512i probe = _mm512_add_epi32(code, _mm512_set1_epi32(step - 1));
            const __m512 threshold = _mm512_permutexvar_ps(probe, bound);
            const __mmask16 above = _mm512_mask_cmp_ps_mask(valid, v, threshold, _CMP_GT_OQ);
            code = _mm512_mask_add_epi32(code, above, code, _mm512_set1_epi32(step));
        }
        /* The shifted codes of each 8-lane half occupy disjoint bits, so OR-ing the
         * lanes of a half packs it: within 128-bit lanes first, then across pairs. */
        __m512i placed = _mm512_sllv_epi32(code, shifts);
        placed = _mm512_or_si512(placed, _mm512_shuffle_epi32(placed, _MM_PERM_BADC));
        placed = _mm512_or_si512(placed, _mm512_shuffle_epi32(placed, _MM_PERM_CDAB));
        placed = _mm512_or_si512(placed, _mm512_shuffle_i32x4(placed, placed, _MM_SHUFFLE(2, 3, 0, 1)));
        const uint64_t low = (uint32_t)_mm_cvtsi128_si32(_mm512_castsi512_si128(placed));
        const uint64_t high = (uint32_t)_mm_cvtsi128_si32(_mm512_extracti32x4_epi32(placed, 2));
        const uint64_t word = low | (high << (8 * bits));
        const size_t bytes = lanes == 16 ? chunk_bytes : (lanes * (size_t)bits + 7) / 8;
        store_bytes(out + (i / 16) * chunk_bytes, word, bytes);
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

/* Constants of one dot-product call, loaded once for all rows. */
typedef struct {
    __m512 lut;
    __m512i shifts;
    __m512i mask;
    __m512i gather;       /* vpshufb control: the two bytes that contain each lane's code */
    __m512i byte_shifts;  /* bit offset of each lane's code within those two bytes */
} dot_setup;

static inline dot_setup make_dot_setup(int bits, const float *table)
{
    dot_setup setup;
    setup.lut = _mm512_maskz_loadu_ps((__mmask16)((1u << (1 << bits)) - 1u), table);
    setup.shifts = lane_shifts(bits);
    setup.mask = _mm512_set1_epi32((1 << bits) - 1);

    /* Lane i's code starts at bit bits * i, in byte (bits * i) / 8, and ends at most
     * 7 + 4 bits later, so two bytes always contain it. 0x80 makes vpshufb write 0. */
    uint8_t control[64];
    int32_t offsets[16];
    for (int i = 0; i < 16; i++) {
        const int bit = bits * i;
        control[4 * i] = (uint8_t)(bit >> 3);
        control[4 * i + 1] = (uint8_t)((bit >> 3) + 1);
        control[4 * i + 2] = 0x80;
        control[4 * i + 3] = 0x80;
        offsets[i] = bit & 7;
    }
    setup.gather = _mm512_loadu_si512(control);
    setup.byte_shifts = _mm512_loadu_si512(offsets);
    return setup;
}

/* Codes of the 16-code chunk at p, which must have 16 readable bytes. The chunk
 * is broadcast to every 128-bit lane because vpshufb indexes within a lane. */
static inline __m512i unpack16_bytes(const uint8_t *p, const dot_setup *setup)
{
    const __m512i chunk = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)p));
    const __m512i pairs = _mm512_shuffle_epi8(chunk, setup->gather);
    return _mm512_and_si512(_mm512_srlv_epi32(pairs, setup->byte_shifts), setup->mask);
}

/* readable: bytes that may be read from codes on, at least the row's own code bytes. */
static inline float dot_row(const uint8_t *codes, size_t count, int bits, const dot_setup *setup, const float *q,
                            size_t readable)
{
    const size_t chunk_bytes = 2 * (size_t)bits;
    const size_t total_bytes = (count * (size_t)bits + 7) / 8;
    __m512 acc0 = _mm512_setzero_ps();
    __m512 acc1 = _mm512_setzero_ps();

    size_t i = 0;
    /* Two chunks per step on independent accumulators hide the FMA latency, while
     * 16 bytes can be read from the second chunk on. */
    for (; i + 32 <= count && (i / 16 + 1) * chunk_bytes + 16 <= readable; i += 32) {
        const uint8_t *p = codes + (i / 16) * chunk_bytes;
        const __m512 values0 = _mm512_permutexvar_ps(unpack16_bytes(p, setup), setup->lut);
        const __m512 values1 = _mm512_permutexvar_ps(unpack16_bytes(p + chunk_bytes, setup), setup->lut);
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), values0, acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), values1, acc1);
    }
    for (; i + 32 <= count; i += 32) {
        const size_t offset = (i / 16) * chunk_bytes;
        const uint64_t word0 = load_bits(codes + offset, chunk_bytes, total_bytes - offset);
        const uint64_t word1 = load_bits(codes + offset + chunk_bytes, chunk_bytes, total_bytes - offset - chunk_bytes);
        const __m512 values0 = _mm512_permutexvar_ps(unpack16(word0, bits, setup->shifts, setup->mask), setup->lut);
        const __m512 values1 = _mm512_permutexvar_ps(unpack16(word1, bits, setup->shifts, setup->mask), setup->lut);
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), values0, acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), values1, acc1);
    }
    for (; i < count; i += 16) {
        const size_t lanes = count - i < 16 ? count - i : 16;
        const __mmask16 valid = (__mmask16)(lanes == 16 ? 0xFFFFu : (1u << lanes) - 1u);
        const size_t offset = (i / 16) * chunk_bytes;
        const size_t bytes = lanes == 16 ? chunk_bytes : (lanes * (size_t)bits + 7) / 8;
        const uint64_t word = load_bits(codes + offset, bytes, total_bytes - offset);
        const __m512 values = _mm512_permutexvar_ps(unpack16(word, bits, setup->shifts, setup->mask), setup->lut);
        acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(valid, q + i), values, acc0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

static float dot_avx512(const uint8_t *codes, size_t count, int bits, const float *table, const float *q)
{
    const dot_setup setup = make_dot_setup(bits, table);
    return dot_row(codes, count, bits, &setup, q, (count * (size_t)bits + 7) / 8);
}

static void dot_rows_avx512(const uint8_t *codes, size_t row_bytes, size_t n_rows, size_t count, int bits,
                            const float *table, const float *q, float *out)
{
    const dot_setup setup = make_dot_setup(bits, table);
    const size_t code_bytes = (count * (size_t)bits + 7) / 8;
    for (size_t r = 0; r < n_rows; r++) {
        /* The rows that follow are readable too, so the 16-byte loads run to the end of
         * every row but the last, which stops at its own code bytes. */
        const size_t readable = (n_rows - r - 1) * row_bytes + code_bytes;
        out[r] = dot_row(codes + r * row_bytes, count, bits, &setup, q, readable);
    }
}

const tq_quant_kernels tq_quant_kernels_avx512 = {
    .fwht = fwht_avx512,
    .sum_squares = sum_squares_avx512,
    .matvec = matvec_avx512,
    .encode = encode_avx512,
    .decode = decode_avx512,
    .dot = dot_avx512,
    .dot_rows = dot_rows_avx512,
};
