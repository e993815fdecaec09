/* Scalar reference kernels of the KV-cache codecs: decode one row at a time into a
 * stack buffer and take plain dot products. SIMD variants must match these results up
 * to float summation order. */
#include "kv_codec_kernels.h"

#include "kv_codec.h"

static inline int plane_bit(const uint8_t *plane, size_t j)
{
    return (plane[j >> 3] >> (j & 7)) & 1;
}

void tq_kv_decode_main_scalar(const tq_kv_layout *layout, const uint8_t *row, float *unit)
{
    const size_t d = layout->head_dim;
    const size_t half = d / 2;
    const size_t plane_bytes = half / 8;
    const uint8_t *codes = row + layout->codes_offset;

    if (layout->kind == TQ_KV_KIND_F16) {
        for (size_t j = 0; j < d; j++) {
            unit[j] = tq_kv_load_half(codes + 2 * j);
        }
    } else if (layout->kind == TQ_KV_KIND_MSE) {
        const uint8_t *second = codes + (size_t)layout->bits_first * plane_bytes;
        for (size_t j = 0; j < half; j++) {
            unit[j] = layout->centroids_first[tq_kv_code_read(codes, plane_bytes, layout->bits_first, j)];
            unit[half + j] = layout->centroids_second[tq_kv_code_read(second, plane_bytes, layout->bits_second, j)];
        }
    } else {
        const uint8_t *angles = codes + (size_t)TQ_KV_POLAR_RADIUS_BITS * plane_bytes;
        for (size_t j = 0; j < half; j++) {
            const float radius = layout->radius[tq_kv_code_read(codes, plane_bytes, TQ_KV_POLAR_RADIUS_BITS, j)];
            const unsigned angle = tq_kv_code_read(angles, plane_bytes, TQ_KV_POLAR_ANGLE_BITS, j);
            unit[j] = radius * layout->angle_cos[angle];
            unit[half + j] = radius * layout->angle_sin[angle];
        }
    }
}

/* Main-stage row with the norms of split rows applied to their halves. */
static void decode_row(const tq_kv_layout *layout, const uint8_t *row, float *unit)
{
    tq_kv_decode_main_scalar(layout, row, unit);
    if (layout->split) {
        const size_t half = layout->head_dim / 2;
        float first, second;
        tq_kv_half_norms(layout, row, &first, &second);
        for (size_t j = 0; j < half; j++) {
            unit[j] *= first;
            unit[half + j] *= second;
        }
    }
}

/* Residual weight of projected entry j of row: ||r|| (qjl_scale + m_j qjl_magnitude_scale),
 * without the sign. */
static inline float residual_weight(const tq_kv_layout *layout, const uint8_t *row, float residual_norm, size_t j)
{
    float weight = layout->qjl_scale;
    if (layout->qjl_bits == 2 && plane_bit(row + layout->qjl_magnitude_offset, j)) {
        weight += layout->qjl_magnitude_scale;
    }
    return residual_norm * weight;
}

static void scores_scalar(const tq_kv_layout *layout, const float *prepared, int n_queries, const uint8_t *rows,
                          size_t row_stride, size_t n, float *out, size_t out_stride)
{
    const size_t d = layout->head_dim;
    float unit[TQ_KV_MAX_HEAD_DIM];

    for (size_t i = 0; i < n; i++) {
        const uint8_t *row = rows + i * row_stride;
        decode_row(layout, row, unit);
        const float norm = tq_kv_row_norm(layout, row);

        for (int h = 0; h < n_queries; h++) {
            const float *q = prepared + (size_t)h * layout->query_floats;
            float dot = 0.0f;
            for (size_t j = 0; j < d; j++) {
                dot += q[j] * unit[j];
            }
            if (layout->has_qjl) {
                const float *projected = q + d;
                const uint8_t *signs = row + layout->qjl_offset;
                const float residual_norm = tq_kv_load_half(row + layout->qjl_norm_offset);
                float residual = 0.0f;
                for (size_t j = 0; j < d; j++) {
                    const float term = residual_weight(layout, row, residual_norm, j) * projected[j];
                    residual += plane_bit(signs, j) ? term : -term;
                }
                dot += residual;
            }
            out[(size_t)h * out_stride + i] = norm * dot;
        }
    }
}

static void accumulate_scalar(const tq_kv_layout *layout, const uint8_t *rows, size_t row_stride, size_t n,
                              const float *weights, size_t weight_stride, int n_queries, float *acc)
{
    const size_t d = layout->head_dim;
    float unit[TQ_KV_MAX_HEAD_DIM];

    for (size_t i = 0; i < n; i++) {
        const uint8_t *row = rows + i * row_stride;
        decode_row(layout, row, unit);
        const float norm = tq_kv_row_norm(layout, row);

        for (int h = 0; h < n_queries; h++) {
            float *sum = acc + (size_t)h * layout->acc_floats;
            const float w = weights[(size_t)h * weight_stride + i] * norm;
            for (size_t j = 0; j < d; j++) {
                sum[j] += w * unit[j];
            }
            if (layout->has_qjl) {
                const uint8_t *signs = row + layout->qjl_offset;
                const float residual_norm = tq_kv_load_half(row + layout->qjl_norm_offset);
                for (size_t j = 0; j < d; j++) {
                    const float term = w * residual_weight(layout, row, residual_norm, j);
                    sum[d + j] += plane_bit(signs, j) ? term : -term;
                }
            }
        }
    }
}

const tq_kv_kernels tq_kv_kernels_scalar = {scores_scalar, accumulate_scalar};
