/* AVX2 kernels of the KV-cache codecs. Eight coordinates per step: one byte of each bit
 * plane is broadcast and tested against the lane bits (1, 2, ..., 128) to build the lane
 * indices; vpermps looks up 8-entry tables, and 16-entry tables blend two lookups on the
 * fourth index bit. All query heads of a group are scored in one pass over the codes. */
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
ALWAYS_INLINE __m256i load_codes8(const uint8_t *planes, size_t plane_bytes, int bits, size_t j)
{
    if (bits == 4) {
        const __m256i bytes =
            _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(planes + (j / 32) * 16 + j % 16)));
        return (j / 16) % 2 ? _mm256_srli_epi32(bytes, 4) : bytes;
    }
    __m256i index = _mm256_setzero_si256();
    for (int p = 0; p < bits; p++) {
        const __m256i mask = expand_byte(planes[(size_t)p * plane_bytes + j / 8]);
        index = _mm256_or_si256(index, _mm256_and_si256(mask, _mm256_set1_epi32(1 << p)));
    }
    return index;
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
    return layout->kind == TQ_KV_KIND_F16 ? 1.0f : tq_kv_load_half(row + layout->norm_offset);
}

ALWAYS_INLINE void score_row(const tq_kv_layout *layout, const float *prepared, const int n_queries,
                             const uint8_t *row, float *out, size_t out_stride, size_t i)
{
    const size_t d = layout->head_dim;
    const size_t half = d / 2;
    const size_t plane_bytes = d / 16;
    const size_t qf = layout->query_floats;
    const uint8_t *codes = row + layout->codes_offset;
    __m256 acc[TQ_KV_MAX_GROUP];
    for (int h = 0; h < n_queries; h++) {
        acc[h] = _mm256_setzero_ps();
    }

    if (layout->kind == TQ_KV_KIND_F16) {
        for (size_t j = 0; j < d; j += 8) {
            const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(codes + 2 * j)));
            for (int h = 0; h < n_queries; h++) {
                acc[h] = _mm256_fmadd_ps(x, _mm256_loadu_ps(prepared + h * qf + j), acc[h]);
            }
        }
    } else if (layout->kind == TQ_KV_KIND_MSE) {
        const __m256 first_low = _mm256_loadu_ps(layout->centroids_first);
        const __m256 first_high = _mm256_loadu_ps(layout->centroids_first + 8);
        const __m256 second_low = _mm256_loadu_ps(layout->centroids_second);
        const __m256 second_high = _mm256_loadu_ps(layout->centroids_second + 8);
        const uint8_t *second = codes + (size_t)layout->bits_first * plane_bytes;
        for (size_t j = 0; j < half; j += 8) {
            const __m256 x = lookup(first_low, first_high, layout->bits_first,
                                    load_codes8(codes, plane_bytes, layout->bits_first, j));
            const __m256 y = lookup(second_low, second_high, layout->bits_second,
                                    load_codes8(second, plane_bytes, layout->bits_second, j));
            for (int h = 0; h < n_queries; h++) {
                const float *q = prepared + h * qf;
                acc[h] = _mm256_fmadd_ps(x, _mm256_loadu_ps(q + j), acc[h]);
                acc[h] = _mm256_fmadd_ps(y, _mm256_loadu_ps(q + half + j), acc[h]);
            }
        }
    } else {
        const __m256 radius_low = _mm256_loadu_ps(layout->radius);
        const __m256 radius_high = _mm256_loadu_ps(layout->radius + 8);
        const __m256 cos_table = _mm256_loadu_ps(layout->angle_cos);
        const __m256 sin_table = _mm256_loadu_ps(layout->angle_sin);
        const uint8_t *angles = codes + (size_t)TQ_KV_POLAR_RADIUS_BITS * plane_bytes;
        for (size_t j = 0; j < half; j += 8) {
            const __m256 radius = lookup(radius_low, radius_high, TQ_KV_POLAR_RADIUS_BITS,
                                         load_codes8(codes, plane_bytes, TQ_KV_POLAR_RADIUS_BITS, j));
            const __m256i angle = load_codes8(angles, plane_bytes, TQ_KV_POLAR_ANGLE_BITS, j);
            const __m256 x = _mm256_mul_ps(radius, _mm256_permutevar8x32_ps(cos_table, angle));
            const __m256 y = _mm256_mul_ps(radius, _mm256_permutevar8x32_ps(sin_table, angle));
            for (int h = 0; h < n_queries; h++) {
                const float *q = prepared + h * qf;
                acc[h] = _mm256_fmadd_ps(x, _mm256_loadu_ps(q + j), acc[h]);
                acc[h] = _mm256_fmadd_ps(y, _mm256_loadu_ps(q + half + j), acc[h]);
            }
        }
    }

    const float norm = row_norm(layout, row);
    if (!layout->has_qjl) {
        for (int h = 0; h < n_queries; h++) {
            out[(size_t)h * out_stride + i] = norm * reduce_add(acc[h]);
        }
        return;
    }

    /* QJL: sum of the projected query over set sign bits; the +-1 sum is twice that
     * minus the projected query's total (stored after it in the prepared query). */
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
    const float residual_weight = layout->qjl_scale * tq_kv_load_half(row + layout->qjl_norm_offset);
    for (int h = 0; h < n_queries; h++) {
        const float total = prepared[h * qf + 2 * d];
        const float signed_sum = 2.0f * reduce_add(positive[h]) - total;
        out[(size_t)h * out_stride + i] = norm * (reduce_add(acc[h]) + residual_weight * signed_sum);
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

ALWAYS_INLINE void add_scaled(float *acc, size_t acc_floats, const float *w, int n_queries, size_t j, __m256 x)
{
    for (int h = 0; h < n_queries; h++) {
        float *sum = acc + (size_t)h * acc_floats + j;
        _mm256_storeu_ps(sum, _mm256_fmadd_ps(x, _mm256_set1_ps(w[h]), _mm256_loadu_ps(sum)));
    }
}

static void accumulate_avx2(const tq_kv_layout *layout, const uint8_t *rows, size_t row_stride, size_t n,
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
            for (size_t j = 0; j < d; j += 8) {
                add_scaled(acc, af, w, n_queries, j,
                           _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(codes + 2 * j))));
            }
        } else if (layout->kind == TQ_KV_KIND_MSE) {
            const __m256 first_low = _mm256_loadu_ps(layout->centroids_first);
            const __m256 first_high = _mm256_loadu_ps(layout->centroids_first + 8);
            const __m256 second_low = _mm256_loadu_ps(layout->centroids_second);
            const __m256 second_high = _mm256_loadu_ps(layout->centroids_second + 8);
            const uint8_t *second = codes + (size_t)layout->bits_first * plane_bytes;
            for (size_t j = 0; j < half; j += 8) {
                add_scaled(acc, af, w, n_queries, j,
                           lookup(first_low, first_high, layout->bits_first,
                                  load_codes8(codes, plane_bytes, layout->bits_first, j)));
                add_scaled(acc, af, w, n_queries, half + j,
                           lookup(second_low, second_high, layout->bits_second,
                                  load_codes8(second, plane_bytes, layout->bits_second, j)));
            }
        } else {
            const __m256 radius_low = _mm256_loadu_ps(layout->radius);
            const __m256 radius_high = _mm256_loadu_ps(layout->radius + 8);
            const __m256 cos_table = _mm256_loadu_ps(layout->angle_cos);
            const __m256 sin_table = _mm256_loadu_ps(layout->angle_sin);
            const uint8_t *angles = codes + (size_t)TQ_KV_POLAR_RADIUS_BITS * plane_bytes;
            for (size_t j = 0; j < half; j += 8) {
                const __m256 radius = lookup(radius_low, radius_high, TQ_KV_POLAR_RADIUS_BITS,
                                             load_codes8(codes, plane_bytes, TQ_KV_POLAR_RADIUS_BITS, j));
                const __m256i angle = load_codes8(angles, plane_bytes, TQ_KV_POLAR_ANGLE_BITS, j);
                add_scaled(acc, af, w, n_queries, j,
                           _mm256_mul_ps(radius, _mm256_permutevar8x32_ps(cos_table, angle)));
                add_scaled(acc, af, w, n_queries, half + j,
                           _mm256_mul_ps(radius, _mm256_permutevar8x32_ps(sin_table, angle)));
            }
        }

        if (layout->has_qjl) {
            const float residual_weight = layout->qjl_scale * tq_kv_load_half(row + layout->qjl_norm_offset);
            const uint8_t *signs = row + layout->qjl_offset;
            for (size_t j = 0; j < d; j += 8) {
                const __m256 mask = _mm256_castsi256_ps(expand_byte(signs[j / 8]));
                for (int h = 0; h < n_queries; h++) {
                    const __m256 weight = _mm256_set1_ps(w[h] * residual_weight);
                    const __m256 negative = _mm256_sub_ps(_mm256_setzero_ps(), weight);
                    float *sum = acc + (size_t)h * af + d + j;
                    _mm256_storeu_ps(sum, _mm256_add_ps(_mm256_loadu_ps(sum), _mm256_blendv_ps(negative, weight, mask)));
                }
            }
        }
    }
}

const tq_kv_kernels tq_kv_kernels_avx2 = {scores_avx2, accumulate_avx2};
