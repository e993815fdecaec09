/* AVX2 kernels of the KV-cache codecs. Eight coordinates per step: a 256-entry table
 * spreads one byte of each bit plane into the bytes of a 64-bit integer, which widens into
 * the lane indices; vpermps looks up 8-entry tables, and 16-entry tables blend two lookups
 * on the fourth index bit. All query heads of a group are scored in one pass over the codes. */
#include <immintrin.h>

#include "kv_codec.h"
#include "kv_codec_kernels.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* Lane masks (all ones where the bit is set) of the 8 bits of one plane byte. */
ALWAYS_INLINE __m256i expand_byte(uint8_t byte)
{
    const __m256i lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(byte), lane_bits), lane_bits);
}

/* Codes of the 8 coordinates starting at j (a multiple of 8) of a group of `bits`-bit
 * codes. Lanes may carry extra high bits, which lookup ignores (it reads bits 0-3). */
/* spread_bits[b] has bit i of b in the lowest bit of byte i, so the codes of 8 coordinates
 * from `bits` planes combine in one 64-bit integer: byte i = sum_p spread_bits[plane_p] << p. */
static const uint64_t spread_bits[256] = {
    0x0000000000000000ull, 0x0000000000000001ull, 0x0000000000000100ull, 0x0000000000000101ull,
    0x0000000000010000ull, 0x0000000000010001ull, 0x0000000000010100ull, 0x0000000000010101ull,
    0x0000000001000000ull, 0x0000000001000001ull, 0x0000000001000100ull, 0x0000000001000101ull,
    0x0000000001010000ull, 0x0000000001010001ull, 0x0000000001010100ull, 0x0000000001010101ull,
    0x0000000100000000ull, 0x0000000100000001ull, 0x0000000100000100ull, 0x0000000100000101ull,
    0x0000000100010000ull, 0x0000000100010001ull, 0x0000000100010100ull, 0x0000000100010101ull,
    0x0000000101000000ull, 0x0000000101000001ull, 0x0000000101000100ull, 0x0000000101000101ull,
    0x0000000101010000ull, 0x0000000101010001ull, 0x0000000101010100ull, 0x0000000101010101ull,
    0x0000010000000000ull, 0x0000010000000001ull, 0x0000010000000100ull, 0x0000010000000101ull,
    0x0000010000010000ull, 0x0000010000010001ull, 0x0000010000010100ull, 0x0000010000010101ull,
    0x0000010001000000ull, 0x0000010001000001ull, 0x0000010001000100ull, 0x0000010001000101ull,
    0x0000010001010000ull, 0x0000010001010001ull, 0x0000010001010100ull, 0x0000010001010101ull,
    0x0000010100000000ull, 0x0000010100000001ull, 0x0000010100000100ull, 0x0000010100000101ull,
    0x0000010100010000ull, 0x0000010100010001ull, 0x0000010100010100ull, 0x0000010100010101ull,
    0x0000010101000000ull, 0x0000010101000001ull, 0x0000010101000100ull, 0x0000010101000101ull,
    0x0000010101010000ull, 0x0000010101010001ull, 0x0000010101010100ull, 0x0000010101010101ull,
    0x0001000000000000ull, 0x0001000000000001ull, 0x0001000000000100ull, 0x0001000000000101ull,
    0x0001000000010000ull, 0x0001000000010001ull, 0x0001000000010100ull, 0x0001000000010101ull,
    0x0001000001000000ull, 0x0001000001000001ull, 0x0001000001000100ull, 0x0001000001000101ull,
    0x0001000001010000ull, 0x0001000001010001ull, 0x0001000001010100ull, 0x0001000001010101ull,
    0x0001000100000000ull, 0x0001000100000001ull, 0x0001000100000100ull, 0x0001000100000101ull,
    0x0001000100010000ull, 0x0001000100010001ull, 0x0001000100010100ull, 0x0001000100010101ull,
    0x0001000101000000ull, 0x0001000101000001ull, 0x0001000101000100ull, 0x0001000101000101ull,
    0x0001000101010000ull, 0x0001000101010001ull, 0x0001000101010100ull, 0x0001000101010101ull,
    0x0001010000000000ull, 0x0001010000000001ull, 0x0001010000000100ull, 0x0001010000000101ull,
    0x0001010000010000ull, 0x0001010000010001ull, 0x0001010000010100ull, 0x0001010000010101ull,
    0x0001010001000000ull, 0x0001010001000001ull, 0x0001010001000100ull, 0x0001010001000101ull,
    0x0001010001010000ull, 0x0001010001010001ull, 0x0001010001010100ull, 0x0001010001010101ull,
    0x0001010100000000ull, 0x0001010100000001ull, 0x0001010100000100ull, 0x0001010100000101ull,
    0x0001010100010000ull, 0x0001010100010001ull, 0x0001010100010100ull, 0x0001010100010101ull,
    0x0001010101000000ull, 0x0001010101000001ull, 0x0001010101000100ull, 0x0001010101000101ull,
    0x0001010101010000ull, 0x0001010101010001ull, 0x0001010101010100ull, 0x0001010101010101ull,
    0x0100000000000000ull, 0x0100000000000001ull, 0x0100000000000100ull, 0x0100000000000101ull,
    0x0100000000010000ull, 0x0100000000010001ull, 0x0100000000010100ull, 0x0100000000010101ull,
    0x0100000001000000ull, 0x0100000001000001ull, 0x0100000001000100ull, 0x0100000001000101ull,
    0x0100000001010000ull, 0x0100000001010001ull, 0x0100000001010100ull, 0x0100000001010101ull,
    0x0100000100000000ull, 0x0100000100000001ull, 0x0100000100000100ull, 0x0100000100000101ull,
    0x0100000100010000ull, 0x0100000100010001ull, 0x0100000100010100ull, 0x0100000100010101ull,
    0x0100000101000000ull, 0x0100000101000001ull, 0x0100000101000100ull, 0x0100000101000101ull,
    0x0100000101010000ull, 0x0100000101010001ull, 0x0100000101010100ull, 0x0100000101010101ull,
    0x0100010000000000ull, 0x0100010000000001ull, 0x0100010000000100ull, 0x0100010000000101ull,
    0x0100010000010000ull, 0x0100010000010001ull, 0x0100010000010100ull, 0x0100010000010101ull,
    0x0100010001000000ull, 0x0100010001000001ull, 0x0100010001000100ull, 0x0100010001000101ull,
    0x0100010001010000ull, 0x0100010001010001ull, 0x0100010001010100ull, 0x0100010001010101ull,
    0x0100010100000000ull, 0x0100010100000001ull, 0x0100010100000100ull, 0x0100010100000101ull,
    0x0100010100010000ull, 0x0100010100010001ull, 0x0100010100010100ull, 0x0100010100010101ull,
    0x0100010101000000ull, 0x0100010101000001ull, 0x0100010101000100ull, 0x0100010101000101ull,
    0x0100010101010000ull, 0x0100010101010001ull, 0x0100010101010100ull, 0x0100010101010101ull,
    0x0101000000000000ull, 0x0101000000000001ull, 0x0101000000000100ull, 0x0101000000000101ull,
    0x0101000000010000ull, 0x0101000000010001ull, 0x0101000000010100ull, 0x0101000000010101ull,
    0x0101000001000000ull, 0x0101000001000001ull, 0x0101000001000100ull, 0x0101000001000101ull,
    0x0101000001010000ull, 0x0101000001010001ull, 0x0101000001010100ull, 0x0101000001010101ull,
    0x0101000100000000ull, 0x0101000100000001ull, 0x0101000100000100ull, 0x0101000100000101ull,
    0x0101000100010000ull, 0x0101000100010001ull, 0x0101000100010100ull, 0x0101000100010101ull,
    0x0101000101000000ull, 0x0101000101000001ull, 0x0101000101000100ull, 0x0101000101000101ull,
    0x0101000101010000ull, 0x0101000101010001ull, 0x0101000101010100ull, 0x0101000101010101ull,
    0x0101010000000000ull, 0x0101010000000001ull, 0x0101010000000100ull, 0x0101010000000101ull,
    0x0101010000010000ull, 0x0101010000010001ull, 0x0101010000010100ull, 0x0101010000010101ull,
    0x0101010001000000ull, 0x0101010001000001ull, 0x0101010001000100ull, 0x0101010001000101ull,
    0x0101010001010000ull, 0x0101010001010001ull, 0x0101010001010100ull, 0x0101010001010101ull,
    0x0101010100000000ull, 0x0101010100000001ull, 0x0101010100000100ull, 0x0101010100000101ull,
    0x0101010100010000ull, 0x0101010100010001ull, 0x0101010100010100ull, 0x0101010100010101ull,
    0x0101010101000000ull, 0x0101010101000001ull, 0x0101010101000100ull, 0x0101010101000101ull,
    0x0101010101010000ull, 0x0101010101010001ull, 0x0101010101010100ull, 0x0101010101010101ull,
};

ALWAYS_INLINE __m256i load_codes8(const uint8_t *planes, size_t plane_bytes, int bits, size_t j)
{
    if (bits == 4) {
        const __m256i bytes =
            _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(planes + (j / 32) * 16 + j % 16)));
        return (j / 16) % 2 ? _mm256_srli_epi32(bytes, 4) : bytes;
    }
    uint64_t codes = 0;
    for (int p = 0; p < bits; p++) {
        codes |= spread_bits[planes[(size_t)p * plane_bytes + j / 8]] << p;
    }
    return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)codes));
}

/* table[index] for a table of 2^bits <= 16 floats held in two registers. */
ALWAYS_INLINE __m256 lookup(__m256 low, __m256 high, int bits, __m256i index)
{
    const __m256 from_low = _mm256_permutevar8x32_ps(low, index);
    if (bits <= 3) {
        return from_low;
    }
    /* Index bit 3 moved to the sign bit selects the upper eight entries. */
    const __m256 select = _mm256_castsi256_ps(_mm256_slli_epi32(index, 28));
    return _mm256_blendv_ps(from_low, _mm256_permutevar8x32_ps(high, index), select);
}

ALWAYS_INLINE float reduce_add(__m256 x)
{
    const __m128 pair = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    const __m128 quad = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
    return _mm_cvtss_f32(_mm_add_ss(quad, _mm_movehdup_ps(quad)));
}

ALWAYS_INLINE float row_norm(const tq_kv_layout *layout, const uint8_t *row)
{
    return tq_kv_row_norm(layout, row);
}

/* Main-stage values of one row at coordinates j .. j+7 (*first) and half+j .. half+j+7
 * (*second), in the rotated unit-vector domain (f16 rows: the stored values). */
ALWAYS_INLINE void load_pair(const tq_kv_layout *layout, const uint8_t *codes, size_t j, __m256 *first,
                             __m256 *second)
{
    const size_t half = layout->head_dim / 2;
    const size_t plane_bytes = layout->head_dim / 16;
    if (layout->kind == TQ_KV_KIND_F16) {
        *first = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(codes + 2 * j)));
        *second = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(codes + 2 * (half + j))));
    } else if (layout->kind == TQ_KV_KIND_MSE) {
        const uint8_t *second_planes = codes + (size_t)layout->bits_first * plane_bytes;
        *first = lookup(_mm256_loadu_ps(layout->centroids_first), _mm256_loadu_ps(layout->centroids_first + 8),
                        layout->bits_first, load_codes8(codes, plane_bytes, layout->bits_first, j));
        *second = lookup(_mm256_loadu_ps(layout->centroids_second), _mm256_loadu_ps(layout->centroids_second + 8),
                         layout->bits_second, load_codes8(second_planes, plane_bytes, layout->bits_second, j));
    } else {
        const uint8_t *angles = codes + (size_t)TQ_KV_POLAR_RADIUS_BITS * plane_bytes;
        const __m256 radius = lookup(_mm256_loadu_ps(layout->radius), _mm256_loadu_ps(layout->radius + 8),
                                     TQ_KV_POLAR_RADIUS_BITS,
                                     load_codes8(codes, plane_bytes, TQ_KV_POLAR_RADIUS_BITS, j));
        const __m256i angle = load_codes8(angles, plane_bytes, TQ_KV_POLAR_ANGLE_BITS, j);
        *first = _mm256_mul_ps(radius, _mm256_permutevar8x32_ps(_mm256_loadu_ps(layout->angle_cos), angle));
        *second = _mm256_mul_ps(radius, _mm256_permutevar8x32_ps(_mm256_loadu_ps(layout->angle_sin), angle));
    }
}

/* QJL residual sums of one row: sums[h] = qjl_scale * sum_j s_j z_j over the projected query
 * z of head h and the signs s_j = +-1. The +-1 sum is twice the sum over set sign bits minus
 * the projected query's total (stored after it in the prepared query). */
ALWAYS_INLINE void residual_sums_1bit(const tq_kv_layout *layout, const float *prepared, const int n_queries,
                                      const uint8_t *row, float *sums)
{
    const size_t d = layout->head_dim;
    const size_t qf = layout->query_floats;
    __m256 positive[TQ_KV_MAX_GROUP];
    for (int h = 0; h < n_queries; h++) {
        positive[h] = _mm256_setzero_ps();
    }
    const uint8_t *signs = row + layout->qjl_offset;
    for (size_t j = 0; j < d; j += 8) {
        const __m256 mask = _mm256_castsi256_ps(expand_byte(signs[j / 8]));
        for (int h = 0; h < n_queries; h++) {
            positive[h] = _mm256_add_ps(positive[h], _mm256_and_ps(mask, _mm256_loadu_ps(prepared + h * qf + d + j)));
        }
    }
    for (int h = 0; h < n_queries; h++) {
        const float total = prepared[h * qf + 2 * d];
        sums[h] = layout->qjl_scale * (2.0f * reduce_add(positive[h]) - total);
    }
}

/* 2-bit residual sums: sums[h] = sum_j s_j (qjl_scale + m_j qjl_magnitude_scale) z_j for the
 * magnitude bits m_j. The signed weight of each entry is built once per block for all heads:
 * a blend on the magnitude bit, then the sign flipped where the sign bit is clear. */
ALWAYS_INLINE void residual_sums_2bit(const tq_kv_layout *layout, const float *prepared, const int n_queries,
                                      const uint8_t *row, float *sums)
{
    const size_t d = layout->head_dim;
    const size_t qf = layout->query_floats;
    const __m256 inner = _mm256_set1_ps(layout->qjl_scale);
    const __m256 outer = _mm256_set1_ps(layout->qjl_scale + layout->qjl_magnitude_scale);
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    const uint8_t *signs = row + layout->qjl_offset;
    const uint8_t *magnitudes = row + layout->qjl_magnitude_offset;
    __m256 residual[TQ_KV_MAX_GROUP];
    for (int h = 0; h < n_queries; h++) {
        residual[h] = _mm256_setzero_ps();
    }
    for (size_t j = 0; j < d; j += 8) {
        const __m256 magnitude = _mm256_castsi256_ps(expand_byte(magnitudes[j / 8]));
        const __m256 positive = _mm256_castsi256_ps(expand_byte(signs[j / 8]));
        const __m256 weight = _mm256_xor_ps(_mm256_blendv_ps(inner, outer, magnitude),
                                            _mm256_andnot_ps(positive, sign_bit));
        for (int h = 0; h < n_queries; h++) {
            residual[h] = _mm256_fmadd_ps(weight, _mm256_loadu_ps(prepared + h * qf + d + j), residual[h]);
        }
    }
    for (int h = 0; h < n_queries; h++) {
        sums[h] = reduce_add(residual[h]);
    }
}

ALWAYS_INLINE void score_row(const tq_kv_layout *layout, const float *prepared, const int n_queries,
                             const uint8_t *row, float *out, size_t out_stride, size_t i)
{
    const size_t d = layout->head_dim;
    const size_t half = d / 2;
    const size_t qf = layout->query_floats;
    const uint8_t *codes = row + layout->codes_offset;
    __m256 acc[TQ_KV_MAX_GROUP];
    for (int h = 0; h < n_queries; h++) {
        acc[h] = _mm256_setzero_ps();
    }
    float first_norm = 1.0f, second_norm = 1.0f;
    if (layout->split) {
        tq_kv_half_norms(layout, row, &first_norm, &second_norm);
    }
    const __m256 first_scale = _mm256_set1_ps(first_norm);
    const __m256 second_scale = _mm256_set1_ps(second_norm);
    for (size_t j = 0; j < half; j += 8) {
        __m256 x, y;
        load_pair(layout, codes, j, &x, &y);
        if (layout->split) {
            x = _mm256_mul_ps(x, first_scale);
            y = _mm256_mul_ps(y, second_scale);
        }
        for (int h = 0; h < n_queries; h++) {
            const float *q = prepared + h * qf;
            acc[h] = _mm256_fmadd_ps(x, _mm256_loadu_ps(q + j), acc[h]);
            acc[h] = _mm256_fmadd_ps(y, _mm256_loadu_ps(q + half + j), acc[h]);
        }
    }

    const float norm = row_norm(layout, row);
    if (!layout->has_qjl) {
        for (int h = 0; h < n_queries; h++) {
            out[(size_t)h * out_stride + i] = norm * reduce_add(acc[h]);
        }
        return;
    }

    float residual_sums[TQ_KV_MAX_GROUP];
    if (layout->qjl_bits == 2) {
        residual_sums_2bit(layout, prepared, n_queries, row, residual_sums);
    } else {
        residual_sums_1bit(layout, prepared, n_queries, row, residual_sums);
    }
    const float residual_norm = tq_kv_load_half(row + layout->qjl_norm_offset);
    for (int h = 0; h < n_queries; h++) {
        out[(size_t)h * out_stride + i] = norm * (reduce_add(acc[h]) + residual_norm * residual_sums[h]);
    }
}

ALWAYS_INLINE void score_rows(const tq_kv_layout *layout, const float *prepared, const int n_queries,
                              const uint8_t *rows, size_t row_stride, size_t n, float *out, size_t out_stride)
{
    for (size_t i = 0; i < n; i++) {
        score_row(layout, prepared, n_queries, rows + i * row_stride, out, out_stride, i);
    }
}

static void scores_avx2(const tq_kv_layout *layout, const float *prepared, int n_queries, const uint8_t *rows,
                        size_t row_stride, size_t n, float *out, size_t out_stride)
{
    /* One instantiation per group size keeps the accumulators in registers. */
    switch (n_queries) {
    case 1: score_rows(layout, prepared, 1, rows, row_stride, n, out, out_stride); break;
    case 2: score_rows(layout, prepared, 2, rows, row_stride, n, out, out_stride); break;
    case 3: score_rows(layout, prepared, 3, rows, row_stride, n, out, out_stride); break;
    case 4: score_rows(layout, prepared, 4, rows, row_stride, n, out, out_stride); break;
    case 5: score_rows(layout, prepared, 5, rows, row_stride, n, out, out_stride); break;
    case 6: score_rows(layout, prepared, 6, rows, row_stride, n, out, out_stride); break;
    case 7: score_rows(layout, prepared, 7, rows, row_stride, n, out, out_stride); break;
    default: score_rows(layout, prepared, 8, rows, row_stride, n, out, out_stride); break;
    }
}

/* Rows per pass of the value accumulation: their codes stay in L1/L2 while every
 * coordinate block reads them. */
#define ACCUMULATE_CHUNK 64

/* Add the weighted rows of one chunk to the accumulators. Coordinate blocks form the outer
 * loop, so each head's partial sums for a block stay in registers across the rows; with 8
 * heads that takes all 16 registers, and the compiler spills the rest. */
ALWAYS_INLINE void accumulate_chunk(const tq_kv_layout *layout, const uint8_t *rows, size_t row_stride,
                                    size_t count, float weight[][ACCUMULATE_CHUNK],
                                    float residual[][ACCUMULATE_CHUNK], const float half_norms[][2],
                                    const int n_queries, float *acc)
{
    const size_t d = layout->head_dim;
    const size_t half = d / 2;
    const size_t af = layout->acc_floats;

    for (size_t j = 0; j < half; j += 8) {
        __m256 first[TQ_KV_MAX_GROUP], second[TQ_KV_MAX_GROUP];
        for (int h = 0; h < n_queries; h++) {
            first[h] = _mm256_loadu_ps(acc + h * af + j);
            second[h] = _mm256_loadu_ps(acc + h * af + half + j);
        }
        for (size_t r = 0; r < count; r++) {
            __m256 x, y;
            load_pair(layout, rows + r * row_stride + layout->codes_offset, j, &x, &y);
            if (layout->split) {
                x = _mm256_mul_ps(x, _mm256_broadcast_ss(&half_norms[r][0]));
                y = _mm256_mul_ps(y, _mm256_broadcast_ss(&half_norms[r][1]));
            }
            for (int h = 0; h < n_queries; h++) {
                const __m256 w = _mm256_broadcast_ss(&weight[h][r]);
                first[h] = _mm256_fmadd_ps(x, w, first[h]);
                second[h] = _mm256_fmadd_ps(y, w, second[h]);
            }
        }
        for (int h = 0; h < n_queries; h++) {
            _mm256_storeu_ps(acc + h * af + j, first[h]);
            _mm256_storeu_ps(acc + h * af + half + j, second[h]);
        }
    }

    if (!layout->has_qjl) {
        return;
    }
    /* Signed sums: sum_r (bit ? w : -w) = 2 * sum over set bits - sum of all w. */
    float total[TQ_KV_MAX_GROUP];
    for (int h = 0; h < n_queries; h++) {
        total[h] = 0.0f;
        for (size_t r = 0; r < count; r++) {
            total[h] += residual[h][r];
        }
    }
    for (size_t j = 0; j < d; j += 8) {
        __m256 positive[TQ_KV_MAX_GROUP];
        for (int h = 0; h < n_queries; h++) {
            positive[h] = _mm256_setzero_ps();
        }
        for (size_t r = 0; r < count; r++) {
            const __m256 mask = _mm256_castsi256_ps(expand_byte(rows[r * row_stride + layout->qjl_offset + j / 8]));
            for (int h = 0; h < n_queries; h++) {
                positive[h] = _mm256_add_ps(positive[h], _mm256_and_ps(mask, _mm256_broadcast_ss(&residual[h][r])));
            }
        }
        for (int h = 0; h < n_queries; h++) {
            float *sum = acc + h * af + d + j;
            const __m256 signed_sum = _mm256_sub_ps(_mm256_add_ps(positive[h], positive[h]), _mm256_set1_ps(total[h]));
            _mm256_storeu_ps(sum, _mm256_add_ps(_mm256_loadu_ps(sum), signed_sum));
        }
    }
}

/* 2-bit QJL residual of one chunk: add sum_r magnitude[h][r] m_rj s_rj to the signed sums of
 * head h, for the magnitude bits m_rj and signs s_rj = +-1, as 2 * (sum over m_rj and sign
 * bit set) - (sum over m_rj set). */
ALWAYS_INLINE void accumulate_magnitudes(const tq_kv_layout *layout, const uint8_t *rows, size_t row_stride,
                                         size_t count, float magnitude[][ACCUMULATE_CHUNK], const int n_queries,
                                         float *acc)
{
    const size_t d = layout->head_dim;
    const size_t af = layout->acc_floats;
    for (size_t j = 0; j < d; j += 8) {
        __m256 positive[TQ_KV_MAX_GROUP], all[TQ_KV_MAX_GROUP];
        for (int h = 0; h < n_queries; h++) {
            positive[h] = _mm256_setzero_ps();
            all[h] = _mm256_setzero_ps();
        }
        for (size_t r = 0; r < count; r++) {
            const uint8_t *row = rows + r * row_stride;
            const uint8_t outer_bits = row[layout->qjl_magnitude_offset + j / 8];
            const __m256 outer = _mm256_castsi256_ps(expand_byte(outer_bits));
            const __m256 outer_positive =
                _mm256_castsi256_ps(expand_byte((uint8_t)(outer_bits & row[layout->qjl_offset + j / 8])));
            for (int h = 0; h < n_queries; h++) {
                const __m256 w = _mm256_broadcast_ss(&magnitude[h][r]);
                positive[h] = _mm256_add_ps(positive[h], _mm256_and_ps(outer_positive, w));
                all[h] = _mm256_add_ps(all[h], _mm256_and_ps(outer, w));
            }
        }
        for (int h = 0; h < n_queries; h++) {
            float *sum = acc + h * af + d + j;
            const __m256 signed_sum = _mm256_sub_ps(_mm256_add_ps(positive[h], positive[h]), all[h]);
            _mm256_storeu_ps(sum, _mm256_add_ps(_mm256_loadu_ps(sum), signed_sum));
        }
    }
}

ALWAYS_INLINE void accumulate_rows(const tq_kv_layout *layout, const uint8_t *rows, size_t row_stride, size_t n,
                                   const float *weights, size_t weight_stride, const int n_queries, float *acc)
{
    float weight[TQ_KV_MAX_GROUP][ACCUMULATE_CHUNK];
    float residual[TQ_KV_MAX_GROUP][ACCUMULATE_CHUNK];
    float magnitude[TQ_KV_MAX_GROUP][ACCUMULATE_CHUNK];
    float half_norms[ACCUMULATE_CHUNK][2];
    for (size_t start = 0; start < n; start += ACCUMULATE_CHUNK) {
        const size_t count = n - start < ACCUMULATE_CHUNK ? n - start : ACCUMULATE_CHUNK;
        const uint8_t *chunk = rows + start * row_stride;
        for (size_t r = 0; r < count; r++) {
            const uint8_t *row = chunk + r * row_stride;
            const float norm = row_norm(layout, row);
            if (layout->split) {
                tq_kv_half_norms(layout, row, &half_norms[r][0], &half_norms[r][1]);
            }
            const float residual_weight =
                layout->has_qjl ? layout->qjl_scale * tq_kv_load_half(row + layout->qjl_norm_offset) : 0.0f;
            const float magnitude_weight =
                layout->qjl_bits == 2 ? layout->qjl_magnitude_scale * tq_kv_load_half(row + layout->qjl_norm_offset)
                                      : 0.0f;
            for (int h = 0; h < n_queries; h++) {
                weight[h][r] = weights[(size_t)h * weight_stride + start + r] * norm;
                residual[h][r] = weight[h][r] * residual_weight;
                magnitude[h][r] = weight[h][r] * magnitude_weight;
            }
        }
        accumulate_chunk(layout, chunk, row_stride, count, weight, residual, half_norms, n_queries, acc);
        if (layout->qjl_bits == 2) {
            accumulate_magnitudes(layout, chunk, row_stride, count, magnitude, n_queries, acc);
        }
    }
}

static void accumulate_avx2(const tq_kv_layout *layout, const uint8_t *rows, size_t row_stride, size_t n,
                            const float *weights, size_t weight_stride, int n_queries, float *acc)
{
    switch (n_queries) {
    case 1: accumulate_rows(layout, rows, row_stride, n, weights, weight_stride, 1, acc); break;
    case 2: accumulate_rows(layout, rows, row_stride, n, weights, weight_stride, 2, acc); break;
    case 3: accumulate_rows(layout, rows, row_stride, n, weights, weight_stride, 3, acc); break;
    case 4: accumulate_rows(layout, rows, row_stride, n, weights, weight_stride, 4, acc); break;
    case 5: accumulate_rows(layout, rows, row_stride, n, weights, weight_stride, 5, acc); break;
    case 6: accumulate_rows(layout, rows, row_stride, n, weights, weight_stride, 6, acc); break;
    case 7: accumulate_rows(layout, rows, row_stride, n, weights, weight_stride, 7, acc); break;
    default: accumulate_rows(layout, rows, row_stride, n, weights, weight_stride, 8, acc); break;
    }
}

const tq_kv_kernels tq_kv_kernels_avx2 = {scores_avx2, accumulate_avx2};
