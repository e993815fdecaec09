/* AVX2 kernels of the quantizer module (see quant_kernels.h).
 *
 * Eight codes of b bits fill b bytes, so each chunk of 8 coordinates starts on a
 * byte boundary. Codes are unpacked into 32-bit lanes with variable shifts, and
 * centroids are looked up with vpermps from one register of 8 floats (two
 * registers and a blend for 4-bit codes). Tails of fewer than 8 values use the
 * scalar reference. */
#include <immintrin.h>
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

static inline __m256i lane_shifts(int bits)
{
    return _mm256_mullo_epi32(_mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0), _mm256_set1_epi32(bits));
}

/* Look up the centroids of 8 codes: table_low contains entries 0..7, table_high 8..15. */
static inline __m256 lookup8(__m256i index, __m256 table_low, __m256 table_high, int bits)
{
    const __m256 low = _mm256_permutevar8x32_ps(table_low, index);
    if (bits < 4) {
        return low;
    }
    const __m256 high = _mm256_permutevar8x32_ps(table_high, index);
    /* blendv picks by the sign bit, so move index bit 3 there. */
    return _mm256_blendv_ps(low, high, _mm256_castsi256_ps(_mm256_slli_epi32(index, 28)));
}

static void load_table(const float *table, int bits, __m256 *low, __m256 *high)
{
    float padded[16] = {0};
    memcpy(padded, table, sizeof(float) << bits);
    *low = _mm256_loadu_ps(padded);
    *high = _mm256_loadu_ps(padded + 8);
}

static void fwht_avx2(float *x, size_t n)
{
    if (n < 8) {
        tq_quant_kernels_scalar.fwht(x, n);
        return;
    }
    /* Stages 1, 2 and 4 stay inside each block of 8; fma(v, sign, partner) gives
     * a + b and a - b with one rounding each, the same bits as the scalar code. */
    const __m256i swap1 = _mm256_set_epi32(6, 7, 4, 5, 2, 3, 0, 1);
    const __m256i swap2 = _mm256_set_epi32(5, 4, 7, 6, 1, 0, 3, 2);
    const __m256i swap4 = _mm256_set_epi32(3, 2, 1, 0, 7, 6, 5, 4);
    const __m256 sign1 = _mm256_set_ps(-1, 1, -1, 1, -1, 1, -1, 1);
    const __m256 sign2 = _mm256_set_ps(-1, -1, 1, 1, -1, -1, 1, 1);
    const __m256 sign4 = _mm256_set_ps(-1, -1, -1, -1, 1, 1, 1, 1);
    for (size_t i = 0; i < n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        v = _mm256_fmadd_ps(v, sign1, _mm256_permutevar8x32_ps(v, swap1));
        v = _mm256_fmadd_ps(v, sign2, _mm256_permutevar8x32_ps(v, swap2));
        v = _mm256_fmadd_ps(v, sign4, _mm256_permutevar8x32_ps(v, swap4));
        _mm256_storeu_ps(x + i, v);
    }
    for (size_t half = 8; half < n; half <<= 1) {
        for (size_t start = 0; start < n; start += 2 * half) {
            for (size_t j = start; j < start + half; j += 8) {
                const __m256 a = _mm256_loadu_ps(x + j);
                const __m256 b = _mm256_loadu_ps(x + j + half);
                _mm256_storeu_ps(x + j, _mm256_add_ps(a, b));
                _mm256_storeu_ps(x + j + half, _mm256_sub_ps(a, b));
            }
        }
    }
}

static float horizontal_sum(__m256 v)
{
    __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
    sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
    return _mm_cvtss_f32(sum);
}

static double sum_squares_avx2(const float *x, size_t n)
{
    /* Lanes of acc_low and acc_high are partial sums 0..3 and 4..7; an FMA of an
     * exact square rounds once, as the scalar add does. */
    __m256d acc_low = _mm256_setzero_pd();
    __m256d acc_high = _mm256_setzero_pd();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256d low = _mm256_cvtps_pd(_mm_loadu_ps(x + i));
        const __m256d high = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
        acc_low = _mm256_fmadd_pd(low, low, acc_low);
        acc_high = _mm256_fmadd_pd(high, high, acc_high);
    }
    double partial[8];
    _mm256_storeu_pd(partial, acc_low);
    _mm256_storeu_pd(partial + 4, acc_high);
    for (; i < n; i++) {
        partial[0] += (double)x[i] * (double)x[i];
    }
    return ((partial[0] + partial[1]) + (partial[2] + partial[3])) + ((partial[4] + partial[5]) + (partial[6] + partial[7]));
}

static void matvec_avx2(const float *m, const float *x, float *y, size_t rows, size_t cols)
{
    for (size_t r = 0; r < rows; r++) {
        const float *row = m + r * cols;
        __m256 acc0 = _mm256_setzero_ps();
        __m256 acc1 = _mm256_setzero_ps();
        size_t c = 0;
        for (; c + 16 <= cols; c += 16) {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(row + c), _mm256_loadu_ps(x + c), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(row + c + 8), _mm256_loadu_ps(x + c + 8), acc1);
        }
        for (; c + 8 <= cols; c += 8) {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(row + c), _mm256_loadu_ps(x + c), acc0);
        }
        float sum = horizontal_sum(_mm256_add_ps(acc0, acc1));
        for (; c < cols; c++) {
            sum += row[c] * x[c];
        }
        y[r] = sum;
    }
}

static void encode_avx2(const float *x, size_t count, int bits, const float *boundaries, uint8_t *out)
{
    const int n_boundaries = (1 << bits) - 1;
    const __m256i shifts = lane_shifts(bits);
    __m256 bounds_low, bounds_high;
    float padded[16] = {0};
    memcpy(padded, boundaries, (size_t)n_boundaries * sizeof(float));
    bounds_low = _mm256_loadu_ps(padded);
    bounds_high = _mm256_loadu_ps(padded + 8);
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        /* Binary search over the ascending boundaries: each step sets one bit of the
         * code by comparing x with boundary code + step - 1. The result is the number
         * of boundaries below x, as in the linear scan of the scalar code. */
        __m256i code = _mm256_setzero_si256();
        for (int step = 1 << (bits - 1); step > 0; step >>= 1) {
            const __m256i probe = _mm256_add_epi32(code, _mm256_set1_epi32(step - 1));
            const __m256 threshold = lookup8(probe, bounds_low, bounds_high, bits);
            const __m256 above = _mm256_cmp_ps(v, threshold, _CMP_GT_OQ);
            code = _mm256_add_epi32(code, _mm256_and_si256(_mm256_castps_si256(above), _mm256_set1_epi32(step)));
        }
        /* The shifted codes occupy disjoint bits, so OR-ing the lanes packs them. */
        __m256i placed = _mm256_sllv_epi32(code, shifts);
        __m128i folded = _mm_or_si128(_mm256_castsi256_si128(placed), _mm256_extracti128_si256(placed, 1));
        folded = _mm_or_si128(folded, _mm_unpackhi_epi64(folded, folded));
        folded = _mm_or_si128(folded, _mm_srli_epi64(folded, 32));
        const uint32_t word = (uint32_t)_mm_cvtsi128_si32(folded);
        for (int k = 0; k < bits; k++) {
            out[(i / 8) * (size_t)bits + (size_t)k] = (uint8_t)(word >> (8 * k));
        }
    }
    if (i < count) {
        /* The tail starts on a byte boundary, so the scalar packer can finish it. */
        tq_quant_kernels_scalar.encode(x + i, count - i, bits, boundaries, out + (i / 8) * (size_t)bits);
    }
}

static void decode_avx2(const uint8_t *codes, size_t count, int bits, const float *table, float *out)
{
    __m256 table_low, table_high;
    load_table(table, bits, &table_low, &table_high);
    const __m256i shifts = lane_shifts(bits);
    const __m256i mask = _mm256_set1_epi32((1 << bits) - 1);
    const size_t total_bytes = (count * (size_t)bits + 7) / 8;
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        const size_t offset = (i / 8) * (size_t)bits;
        const uint32_t word = load_bits(codes + offset, (size_t)bits, total_bytes - offset);
        const __m256i index = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)word), shifts), mask);
        _mm256_storeu_ps(out + i, lookup8(index, table_low, table_high, bits));
    }
    if (i < count) {
        tq_quant_kernels_scalar.decode(codes + (i / 8) * (size_t)bits, count - i, bits, table, out + i);
    }
}

/* Constants of one dot-product call, loaded once for all rows. */
typedef struct {
    __m256 table_low;
    __m256 table_high;
    __m256i shifts;
    __m256i mask;
    __m256i gather;      /* vpshufb control: the two bytes that contain each lane's code */
    __m256i byte_shifts; /* bit offset of each lane's code within those two bytes */
} dot_setup;

static inline dot_setup make_dot_setup(int bits, const float *table)
{
    dot_setup setup;
    load_table(table, bits, &setup.table_low, &setup.table_high);
    setup.shifts = lane_shifts(bits);
    setup.mask = _mm256_set1_epi32((1 << bits) - 1);

    /* Lane i's code starts at bit bits * i, in byte (bits * i) / 8, and ends at most
     * 7 + 4 bits later, so two bytes always contain it. 0x80 makes vpshufb write 0. */
    uint8_t control[32];
    int32_t offsets[8];
    for (int i = 0; i < 8; i++) {
        const int bit = bits * i;
        control[4 * i] = (uint8_t)(bit >> 3);
        control[4 * i + 1] = (uint8_t)((bit >> 3) + 1);
        control[4 * i + 2] = 0x80;
        control[4 * i + 3] = 0x80;
        offsets[i] = bit & 7;
    }
    setup.gather = _mm256_loadu_si256((const __m256i *)control);
    setup.byte_shifts = _mm256_loadu_si256((const __m256i *)offsets);
    return setup;
}

/* Codes of the 8-code chunk at p, which must have 16 readable bytes. The chunk is
 * broadcast to both 128-bit lanes because vpshufb indexes within a lane. */
static inline __m256 values8_bytes(const uint8_t *p, int bits, const dot_setup *setup)
{
    const __m256i chunk = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    const __m256i pairs = _mm256_shuffle_epi8(chunk, setup->gather);
    const __m256i index = _mm256_and_si256(_mm256_srlv_epi32(pairs, setup->byte_shifts), setup->mask);
    return lookup8(index, setup->table_low, setup->table_high, bits);
}

static inline __m256 values8(uint32_t word, int bits, const dot_setup *setup)
{
    const __m256i index = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)word), setup->shifts), setup->mask);
    return lookup8(index, setup->table_low, setup->table_high, bits);
}

static inline float dot_row(const uint8_t *codes, size_t count, int bits, const float *table, const dot_setup *setup,
                            const float *q)
{
    const size_t total_bytes = (count * (size_t)bits + 7) / 8;
    __m256 acc0 = _mm256_setzero_ps();
    __m256 acc1 = _mm256_setzero_ps();
    size_t i = 0;
    /* Use 16-byte loads while the second chunk of the step has 16 readable bytes. */
    for (; i + 16 <= count && (i / 8 + 1) * (size_t)bits + 16 <= total_bytes; i += 16) {
        const uint8_t *p = codes + (i / 8) * (size_t)bits;
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), values8_bytes(p, bits, setup), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), values8_bytes(p + bits, bits, setup), acc1);
    }
    for (; i + 16 <= count; i += 16) {
        const size_t offset = (i / 8) * (size_t)bits;
        const uint32_t word0 = load_bits(codes + offset, (size_t)bits, total_bytes - offset);
        const uint32_t word1 = load_bits(codes + offset + bits, (size_t)bits, total_bytes - offset - bits);
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), values8(word0, bits, setup), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), values8(word1, bits, setup), acc1);
    }
    for (; i + 8 <= count; i += 8) {
        const size_t offset = (i / 8) * (size_t)bits;
        const uint32_t word = load_bits(codes + offset, (size_t)bits, total_bytes - offset);
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), values8(word, bits, setup), acc0);
    }
    float sum = horizontal_sum(_mm256_add_ps(acc0, acc1));
    if (i < count) {
        sum += tq_quant_kernels_scalar.dot(codes + (i / 8) * (size_t)bits, count - i, bits, table, q + i);
    }
    return sum;
}

static float dot_avx2(const uint8_t *codes, size_t count, int bits, const float *table, const float *q)
{
    const dot_setup setup = make_dot_setup(bits, table);
    return dot_row(codes, count, bits, table, &setup, q);
}

static void dot_rows_avx2(const uint8_t *codes, size_t row_bytes, size_t n_rows, size_t count, int bits,
                          const float *table, const float *q, float *out)
{
    const dot_setup setup = make_dot_setup(bits, table);
    for (size_t r = 0; r < n_rows; r++) {
        out[r] = dot_row(codes + r * row_bytes, count, bits, table, &setup, q);
    }
}

const tq_quant_kernels tq_quant_kernels_avx2 = {
    .fwht = fwht_avx2,
    .sum_squares = sum_squares_avx2,
    .matvec = matvec_avx2,
    .encode = encode_avx2,
    .decode = decode_avx2,
    .dot = dot_avx2,
    .dot_rows = dot_rows_avx2,
};
