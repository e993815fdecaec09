/* AVX-512 kernels of the KV-cache codecs. Sixteen coordinates per step: 4-bit codes widen
 * from 16 bytes with one zero-extending load, and each bit plane of other widths gives a
 * 16-bit slice loaded into a mask register that sets one index bit. vpermps then looks the
 * centroids up in a 16-entry register table. All query heads of a group are scored in the
 * same pass, so each code is unpacked once. */
#include <immintrin.h>

#include "kv_codec.h"
#include "kv_codec_kernels.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE __mmask16 load_mask16(const uint8_t *p)
{
    uint16_t bits;
    memcpy(&bits, p, sizeof(bits));
    return (__mmask16)bits;
}

/* Codes of the 16 coordinates starting at j (a multiple of 16) of a group of `bits`-bit
 * codes. Lanes may carry extra high bits, which vpermps ignores (it reads bits 0-3). */
ALWAYS_INLINE __m512i load_codes16(const uint8_t *planes, size_t plane_bytes, int bits, size_t j)
{
    if (bits == 4) {
        const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(planes + (j / 32) * 16)));
        return (j / 16) % 2 ? _mm512_srli_epi32(bytes, 4) : bytes;
    }
    __m512i index = _mm512_setzero_si512();
    for (int p = 0; p < bits; p++) {
        const __mmask16 mask = load_mask16(planes + (size_t)p * plane_bytes + j / 8);
        index = _mm512_mask_or_epi32(index, mask, index, _mm512_set1_epi32(1 << p));
    }
    return index;
}

ALWAYS_INLINE float row_norm(const tq_kv_layout *layout, const uint8_t *row)
{
    return tq_kv_row_norm(layout, row);
}

/* Main-stage values of one row at coordinates j .. j+15 (*first) and half+j .. half+j+15
 * (*second), in the rotated unit-vector domain (f16 rows: the stored values). */
ALWAYS_INLINE void load_pair(const tq_kv_layout *layout, const uint8_t *codes, size_t j, __m512 *first,
                             __m512 *second)
{
    const size_t half = layout->head_dim / 2;
    const size_t plane_bytes = layout->head_dim / 16;
    if (layout->kind == TQ_KV_KIND_F16) {
        *first = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(codes + 2 * j)));
        *second = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(codes + 2 * (half + j))));
    } else if (layout->kind == TQ_KV_KIND_MSE) {
        const uint8_t *second_planes = codes + (size_t)layout->bits_first * plane_bytes;
        *first = _mm512_permutexvar_ps(load_codes16(codes, plane_bytes, layout->bits_first, j),
                                       _mm512_loadu_ps(layout->centroids_first));
        *second = _mm512_permutexvar_ps(load_codes16(second_planes, plane_bytes, layout->bits_second, j),
                                        _mm512_loadu_ps(layout->centroids_second));
    } else {
        const uint8_t *angles = codes + (size_t)TQ_KV_POLAR_RADIUS_BITS * plane_bytes;
        const __m512 radius = _mm512_permutexvar_ps(load_codes16(codes, plane_bytes, TQ_KV_POLAR_RADIUS_BITS, j),
                                                    _mm512_loadu_ps(layout->radius));
        const __m512i angle = load_codes16(angles, plane_bytes, TQ_KV_POLAR_ANGLE_BITS, j);
        *first = _mm512_mul_ps(radius, _mm512_permutexvar_ps(angle, _mm512_loadu_ps(layout->angle_cos)));
        *second = _mm512_mul_ps(radius, _mm512_permutexvar_ps(angle, _mm512_loadu_ps(layout->angle_sin)));
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
    __m512 positive[TQ_KV_MAX_GROUP];
    for (int h = 0; h < n_queries; h++) {
        positive[h] = _mm512_setzero_ps();
    }
    const uint8_t *signs = row + layout->qjl_offset;
    for (size_t j = 0; j < d; j += 16) {
        const __mmask16 mask = load_mask16(signs + j / 8);
        for (int h = 0; h < n_queries; h++) {
            positive[h] = _mm512_mask_add_ps(positive[h], mask, positive[h],
                                             _mm512_loadu_ps(prepared + h * qf + d + j));
        }
    }
    for (int h = 0; h < n_queries; h++) {
        const float total = prepared[h * qf + 2 * d];
        sums[h] = layout->qjl_scale * (2.0f * _mm512_reduce_add_ps(positive[h]) - total);
    }
}

/* 2-bit residual sums: sums[h] = sum_j s_j (qjl_scale + m_j qjl_magnitude_scale) z_j for the
 * magnitude bits m_j. The signed weight of each entry is built once per block for all heads:
 * a blend on the magnitude bits, then negated where the sign bit is clear. */
ALWAYS_INLINE void residual_sums_2bit(const tq_kv_layout *layout, const float *prepared, const int n_queries,
                                      const uint8_t *row, float *sums)
{
    const size_t d = layout->head_dim;
    const size_t qf = layout->query_floats;
    const __m512 inner = _mm512_set1_ps(layout->qjl_scale);
    const __m512 outer = _mm512_set1_ps(layout->qjl_scale + layout->qjl_magnitude_scale);
    const uint8_t *signs = row + layout->qjl_offset;
    const uint8_t *magnitudes = row + layout->qjl_magnitude_offset;
    __m512 residual[TQ_KV_MAX_GROUP];
    for (int h = 0; h < n_queries; h++) {
        residual[h] = _mm512_setzero_ps();
    }
    for (size_t j = 0; j < d; j += 16) {
        const __m512 magnitude_weight = _mm512_mask_blend_ps(load_mask16(magnitudes + j / 8), inner, outer);
        const __mmask16 negative = (__mmask16)~load_mask16(signs + j / 8);
        const __m512 weight = _mm512_mask_sub_ps(magnitude_weight, negative, _mm512_setzero_ps(), magnitude_weight);
        for (int h = 0; h < n_queries; h++) {
            residual[h] = _mm512_fmadd_ps(weight, _mm512_loadu_ps(prepared + h * qf + d + j), residual[h]);
        }
    }
    for (int h = 0; h < n_queries; h++) {
        sums[h] = _mm512_reduce_add_ps(residual[h]);
    }
}

/* Scores of n_queries (a compile-time constant after inlining) queries against one row. */
ALWAYS_INLINE void score_row(const tq_kv_layout *layout, const float *prepared, const int n_queries,
                             const uint8_t *row, float *out, size_t out_stride, size_t i)
{
    const size_t d = layout->head_dim;
    const size_t half = d / 2;
    const size_t qf = layout->query_floats;
    const uint8_t *codes = row + layout->codes_offset;
    __m512 acc[TQ_KV_MAX_GROUP];
    for (int h = 0; h < n_queries; h++) {
        acc[h] = _mm512_setzero_ps();
    }
    float first_norm = 1.0f, second_norm = 1.0f;
    if (layout->split) {
        tq_kv_half_norms(layout, row, &first_norm, &second_norm);
    }
    const __m512 first_scale = _mm512_set1_ps(first_norm);
    const __m512 second_scale = _mm512_set1_ps(second_norm);
    for (size_t j = 0; j < half; j += 16) {
        __m512 x, y;
        load_pair(layout, codes, j, &x, &y);
        if (layout->split) {
            x = _mm512_mul_ps(x, first_scale);
            y = _mm512_mul_ps(y, second_scale);
        }
        for (int h = 0; h < n_queries; h++) {
            const float *q = prepared + h * qf;
            acc[h] = _mm512_fmadd_ps(x, _mm512_loadu_ps(q + j), acc[h]);
            acc[h] = _mm512_fmadd_ps(y, _mm512_loadu_ps(q + half + j), acc[h]);
        }
    }

    const float norm = row_norm(layout, row);
    if (!layout->has_qjl) {
        for (int h = 0; h < n_queries; h++) {
            out[(size_t)h * out_stride + i] = norm * _mm512_reduce_add_ps(acc[h]);
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
        out[(size_t)h * out_stride + i] = norm * (_mm512_reduce_add_ps(acc[h]) + residual_norm * residual_sums[h]);
    }
}

ALWAYS_INLINE void score_rows(const tq_kv_layout *layout, const float *prepared, const int n_queries,
                              const uint8_t *rows, size_t row_stride, size_t n, float *out, size_t out_stride)
{
    for (size_t i = 0; i < n; i++) {
        score_row(layout, prepared, n_queries, rows + i * row_stride, out, out_stride, i);
    }
}

static void scores_avx512(const tq_kv_layout *layout, const float *prepared, int n_queries, const uint8_t *rows,
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

/* Rows per pass of the value accumulation: their codes (at most 64 rows of 2 KiB for f16
 * at head_dim 1024, less for codes) stay in L1/L2 while every coordinate block reads them. */
#define ACCUMULATE_CHUNK 64

/* Add the weighted rows of one chunk to the accumulators. Coordinate blocks form the outer
 * loop, so each head's partial sums for a block stay in registers across the rows. */
ALWAYS_INLINE void accumulate_chunk(const tq_kv_layout *layout, const uint8_t *rows, size_t row_stride,
                                    size_t count, float weight[][ACCUMULATE_CHUNK],
                                    float residual[][ACCUMULATE_CHUNK], const float half_norms[][2],
                                    const int n_queries, float *acc)
{
    const size_t d = layout->head_dim;
    const size_t half = d / 2;
    const size_t af = layout->acc_floats;

    for (size_t j = 0; j < half; j += 16) {
        __m512 first[TQ_KV_MAX_GROUP], second[TQ_KV_MAX_GROUP];
        for (int h = 0; h < n_queries; h++) {
            first[h] = _mm512_loadu_ps(acc + h * af + j);
            second[h] = _mm512_loadu_ps(acc + h * af + half + j);
        }
        for (size_t r = 0; r < count; r++) {
            __m512 x, y;
            load_pair(layout, rows + r * row_stride + layout->codes_offset, j, &x, &y);
            if (layout->split) {
                x = _mm512_mul_ps(x, _mm512_set1_ps(half_norms[r][0]));
                y = _mm512_mul_ps(y, _mm512_set1_ps(half_norms[r][1]));
            }
            for (int h = 0; h < n_queries; h++) {
                const __m512 w = _mm512_set1_ps(weight[h][r]);
                first[h] = _mm512_fmadd_ps(x, w, first[h]);
                second[h] = _mm512_fmadd_ps(y, w, second[h]);
            }
        }
        for (int h = 0; h < n_queries; h++) {
            _mm512_storeu_ps(acc + h * af + j, first[h]);
            _mm512_storeu_ps(acc + h * af + half + j, second[h]);
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
    for (size_t j = 0; j < d; j += 16) {
        __m512 positive[TQ_KV_MAX_GROUP];
        for (int h = 0; h < n_queries; h++) {
            positive[h] = _mm512_setzero_ps();
        }
        for (size_t r = 0; r < count; r++) {
            const __mmask16 mask = load_mask16(rows + r * row_stride + layout->qjl_offset + j / 8);
            for (int h = 0; h < n_queries; h++) {
                positive[h] = _mm512_mask_add_ps(positive[h], mask, positive[h], _mm512_set1_ps(residual[h][r]));
            }
        }
        for (int h = 0; h < n_queries; h++) {
            float *sum = acc + h * af + d + j;
            const __m512 signed_sum = _mm512_sub_ps(_mm512_add_ps(positive[h], positive[h]), _mm512_set1_ps(total[h]));
            _mm512_storeu_ps(sum, _mm512_add_ps(_mm512_loadu_ps(sum), signed_sum));
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
    for (size_t j = 0; j < d; j += 16) {
        __m512 positive[TQ_KV_MAX_GROUP], all[TQ_KV_MAX_GROUP];
        for (int h = 0; h < n_queries; h++) {
            positive[h] = _mm512_setzero_ps();
            all[h] = _mm512_setzero_ps();
        }
        for (size_t r = 0; r < count; r++) {
            const uint8_t *row = rows + r * row_stride;
            const __mmask16 outer = load_mask16(row + layout->qjl_magnitude_offset + j / 8);
            const __mmask16 outer_positive = outer & load_mask16(row + layout->qjl_offset + j / 8);
            for (int h = 0; h < n_queries; h++) {
                const __m512 w = _mm512_set1_ps(magnitude[h][r]);
                positive[h] = _mm512_mask_add_ps(positive[h], outer_positive, positive[h], w);
                all[h] = _mm512_mask_add_ps(all[h], outer, all[h], w);
            }
        }
        for (int h = 0; h < n_queries; h++) {
            float *sum = acc + h * af + d + j;
            const __m512 signed_sum = _mm512_sub_ps(_mm512_add_ps(positive[h], positive[h]), all[h]);
            _mm512_storeu_ps(sum, _mm512_add_ps(_mm512_loadu_ps(sum), signed_sum));
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

static void accumulate_avx512(const tq_kv_layout *layout, const uint8_t *rows, size_t row_stride, size_t n,
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

const tq_kv_kernels tq_kv_kernels_avx512 = {scores_avx512, accumulate_avx512};
