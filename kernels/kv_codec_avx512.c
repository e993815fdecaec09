/* AVX-512 kernels of the KV-cache codecs. Sixteen coordinates per step: each bit plane
 * contributes a 16-bit slice loaded straight into a mask register, the masks build the
 * lane indices, and vpermps looks the centroids up in a 16-entry register table. All
 * query heads of a group are scored in the same pass, so each code is unpacked once. */
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

/* Codes of the 16 coordinates starting at j (a multiple of 16) from `bits` planes. */
ALWAYS_INLINE __m512i load_codes16(const uint8_t *planes, size_t plane_bytes, int bits, size_t j)
{
    __m512i index = _mm512_setzero_si512();
    for (int p = 0; p < bits; p++) {
        const __mmask16 mask = load_mask16(planes + (size_t)p * plane_bytes + j / 8);
        index = _mm512_mask_or_epi32(index, mask, index, _mm512_set1_epi32(1 << p));
    }
    return index;
}

ALWAYS_INLINE float row_norm(const tq_kv_layout *layout, const uint8_t *row)
{
    return layout->kind == TQ_KV_KIND_F16 ? 1.0f : tq_kv_load_half(row + layout->norm_offset);
}

/* Scores of n_queries (a compile-time constant after inlining) queries against one row. */
ALWAYS_INLINE void score_row(const tq_kv_layout *layout, const float *prepared, const int n_queries,
                             const uint8_t *row, float *out, size_t out_stride, size_t i)
{
    const size_t d = layout->head_dim;
    const size_t half = d / 2;
    const size_t plane_bytes = d / 16;
    const size_t qf = layout->query_floats;
    const uint8_t *codes = row + layout->codes_offset;
    __m512 acc[TQ_KV_MAX_GROUP];
    for (int h = 0; h < n_queries; h++) {
        acc[h] = _mm512_setzero_ps();
    }

    if (layout->kind == TQ_KV_KIND_F16) {
        for (size_t j = 0; j < d; j += 16) {
            const __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(codes + 2 * j)));
            for (int h = 0; h < n_queries; h++) {
                acc[h] = _mm512_fmadd_ps(x, _mm512_loadu_ps(prepared + h * qf + j), acc[h]);
            }
        }
    } else if (layout->kind == TQ_KV_KIND_MSE) {
        const __m512 table_first = _mm512_loadu_ps(layout->centroids_first);
        const __m512 table_second = _mm512_loadu_ps(layout->centroids_second);
        const uint8_t *second = codes + (size_t)layout->bits_first * plane_bytes;
        for (size_t j = 0; j < half; j += 16) {
            const __m512 x = _mm512_permutexvar_ps(load_codes16(codes, plane_bytes, layout->bits_first, j),
                                                   table_first);
            const __m512 y = _mm512_permutexvar_ps(load_codes16(second, plane_bytes, layout->bits_second, j),
                                                   table_second);
            for (int h = 0; h < n_queries; h++) {
                const float *q = prepared + h * qf;
                acc[h] = _mm512_fmadd_ps(x, _mm512_loadu_ps(q + j), acc[h]);
                acc[h] = _mm512_fmadd_ps(y, _mm512_loadu_ps(q + half + j), acc[h]);
            }
        }
    } else {
        const __m512 radius_table = _mm512_loadu_ps(layout->radius);
        const __m512 cos_table = _mm512_loadu_ps(layout->angle_cos);
        const __m512 sin_table = _mm512_loadu_ps(layout->angle_sin);
        const uint8_t *angles = codes + (size_t)TQ_KV_POLAR_RADIUS_BITS * plane_bytes;
        for (size_t j = 0; j < half; j += 16) {
            const __m512 radius = _mm512_permutexvar_ps(
                load_codes16(codes, plane_bytes, TQ_KV_POLAR_RADIUS_BITS, j), radius_table);
            const __m512i angle = load_codes16(angles, plane_bytes, TQ_KV_POLAR_ANGLE_BITS, j);
            const __m512 x = _mm512_mul_ps(radius, _mm512_permutexvar_ps(angle, cos_table));
            const __m512 y = _mm512_mul_ps(radius, _mm512_permutexvar_ps(angle, sin_table));
            for (int h = 0; h < n_queries; h++) {
                const float *q = prepared + h * qf;
                acc[h] = _mm512_fmadd_ps(x, _mm512_loadu_ps(q + j), acc[h]);
                acc[h] = _mm512_fmadd_ps(y, _mm512_loadu_ps(q + half + j), acc[h]);
            }
        }
    }

    const float norm = row_norm(layout, row);
    if (!layout->has_qjl) {
        for (int h = 0; h < n_queries; h++) {
            out[(size_t)h * out_stride + i] = norm * _mm512_reduce_add_ps(acc[h]);
        }
        return;
    }

    /* QJL: sum of the projected query over set sign bits; the +-1 sum is twice that
     * minus the projected query's total (stored after it in the prepared query). */
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
    const float residual_weight = layout->qjl_scale * tq_kv_load_half(row + layout->qjl_norm_offset);
    for (int h = 0; h < n_queries; h++) {
        const float total = prepared[h * qf + 2 * d];
        const float signed_sum = 2.0f * _mm512_reduce_add_ps(positive[h]) - total;
        out[(size_t)h * out_stride + i] = norm * (_mm512_reduce_add_ps(acc[h]) + residual_weight * signed_sum);
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

/* acc_h[j .. j+15] += w_h * x for every query head h. */
ALWAYS_INLINE void add_scaled(float *acc, size_t acc_floats, const float *w, int n_queries, size_t j, __m512 x)
{
    for (int h = 0; h < n_queries; h++) {
        float *sum = acc + (size_t)h * acc_floats + j;
        _mm512_storeu_ps(sum, _mm512_fmadd_ps(x, _mm512_set1_ps(w[h]), _mm512_loadu_ps(sum)));
    }
}

static void accumulate_avx512(const tq_kv_layout *layout, const uint8_t *rows, size_t row_stride, size_t n,
                              const float *weights, size_t weight_stride, int n_queries, float *acc)
{
    const size_t d = layout->head_dim;
    const size_t half = d / 2;
    const size_t plane_bytes = d / 16;
    const size_t af = layout->acc_floats;

    for (size_t i = 0; i < n; i++) {
        const uint8_t *row = rows + i * row_stride;
        const uint8_t *codes = row + layout->codes_offset;
        const float norm = row_norm(layout, row);
        float w[TQ_KV_MAX_GROUP];
        for (int h = 0; h < n_queries; h++) {
            w[h] = weights[(size_t)h * weight_stride + i] * norm;
        }

        if (layout->kind == TQ_KV_KIND_F16) {
            for (size_t j = 0; j < d; j += 16) {
                const __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(codes + 2 * j)));
                add_scaled(acc, af, w, n_queries, j, x);
            }
        } else if (layout->kind == TQ_KV_KIND_MSE) {
            const __m512 table_first = _mm512_loadu_ps(layout->centroids_first);
            const __m512 table_second = _mm512_loadu_ps(layout->centroids_second);
            const uint8_t *second = codes + (size_t)layout->bits_first * plane_bytes;
            for (size_t j = 0; j < half; j += 16) {
                add_scaled(acc, af, w, n_queries, j,
                           _mm512_permutexvar_ps(load_codes16(codes, plane_bytes, layout->bits_first, j),
                                                 table_first));
                add_scaled(acc, af, w, n_queries, half + j,
                           _mm512_permutexvar_ps(load_codes16(second, plane_bytes, layout->bits_second, j),
                                                 table_second));
            }
        } else {
            const __m512 radius_table = _mm512_loadu_ps(layout->radius);
            const __m512 cos_table = _mm512_loadu_ps(layout->angle_cos);
            const __m512 sin_table = _mm512_loadu_ps(layout->angle_sin);
            const uint8_t *angles = codes + (size_t)TQ_KV_POLAR_RADIUS_BITS * plane_bytes;
            for (size_t j = 0; j < half; j += 16) {
                const __m512 radius = _mm512_permutexvar_ps(
                    load_codes16(codes, plane_bytes, TQ_KV_POLAR_RADIUS_BITS, j), radius_table);
                const __m512i angle = load_codes16(angles, plane_bytes, TQ_KV_POLAR_ANGLE_BITS, j);
                add_scaled(acc, af, w, n_queries, j, _mm512_mul_ps(radius, _mm512_permutexvar_ps(angle, cos_table)));
                add_scaled(acc, af, w, n_queries, half + j,
                           _mm512_mul_ps(radius, _mm512_permutexvar_ps(angle, sin_table)));
            }
        }

        if (layout->has_qjl) {
            const float residual_weight = layout->qjl_scale * tq_kv_load_half(row + layout->qjl_norm_offset);
            const uint8_t *signs = row + layout->qjl_offset;
            for (size_t j = 0; j < d; j += 16) {
                const __mmask16 mask = load_mask16(signs + j / 8);
                for (int h = 0; h < n_queries; h++) {
                    const __m512 weight = _mm512_set1_ps(w[h] * residual_weight);
                    const __m512 signed_weight = _mm512_mask_blend_ps(mask, _mm512_sub_ps(_mm512_setzero_ps(), weight),
                                                                      weight);
                    float *sum = acc + (size_t)h * af + d + j;
                    _mm512_storeu_ps(sum, _mm512_add_ps(_mm512_loadu_ps(sum), signed_weight));
                }
            }
        }
    }
}

const tq_kv_kernels tq_kv_kernels_avx512 = {scores_avx512, accumulate_avx512};
