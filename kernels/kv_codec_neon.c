/* NEON (arm64) kernels of the KV-cache codecs. Four coordinates per step: one plane byte
 * covers two steps; vtst against the lane bits builds lane indices, and a 16-entry float
 * table is read with vqtbl4q_u8 on byte indices 4 * index + (0, 1, 2, 3). All query heads
 * of a group are scored in one pass over the codes. */
#include <arm_neon.h>

#include "kv_codec.h"
#include "kv_codec_kernels.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* Lane masks of bits (shift .. shift + 3) of one plane byte. */
ALWAYS_INLINE uint32x4_t expand_nibble(uint8_t byte, int shift)
{
    static const uint32_t lane_bits[4] = {1, 2, 4, 8};
    return vtstq_u32(vdupq_n_u32((uint32_t)(byte >> shift)), vld1q_u32(lane_bits));
}

/* Codes of the 4 coordinates starting at j (a multiple of 4) of a group of `bits`-bit
 * codes, each at most 15 as lookup requires. */
ALWAYS_INLINE uint32x4_t load_codes4(const uint8_t *planes, size_t plane_bytes, int bits, size_t j)
{
    if (bits == 4) {
        /* Four bytes only: a wider load could read past the end of the row. */
        uint32_t word;
        memcpy(&word, planes + (j / 32) * 16 + j % 16, sizeof(word));
        const uint16x8_t wide = vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(word)));
        const uint32x4_t bytes = vmovl_u16(vget_low_u16(wide));
        return (j / 16) % 2 ? vshrq_n_u32(bytes, 4) : vandq_u32(bytes, vdupq_n_u32(15));
    }
    uint32x4_t index = vdupq_n_u32(0);
    for (int p = 0; p < bits; p++) {
        const uint32x4_t mask = expand_nibble(planes[(size_t)p * plane_bytes + j / 8], (int)(j & 4));
        index = vorrq_u32(index, vandq_u32(mask, vdupq_n_u32(1u << p)));
    }
    return index;
}

/* A 16-float table as 64 bytes for vqtbl4q_u8. */
ALWAYS_INLINE uint8x16x4_t load_table(const float *table)
{
    uint8x16x4_t bytes;
    bytes.val[0] = vreinterpretq_u8_f32(vld1q_f32(table));
    bytes.val[1] = vreinterpretq_u8_f32(vld1q_f32(table + 4));
    bytes.val[2] = vreinterpretq_u8_f32(vld1q_f32(table + 8));
    bytes.val[3] = vreinterpretq_u8_f32(vld1q_f32(table + 12));
    return bytes;
}

ALWAYS_INLINE float32x4_t lookup(uint8x16x4_t table, uint32x4_t index)
{
    /* index <= 15, so 4 * index fits in each byte without carries. */
    const uint32x4_t byte_index = vmlaq_n_u32(vdupq_n_u32(0x03020100u), index, 0x04040404u);
    return vreinterpretq_f32_u8(vqtbl4q_u8(table, vreinterpretq_u8_u32(byte_index)));
}

ALWAYS_INLINE float32x4_t load_half4(const uint8_t *p)
{
    return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p)));
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
    float32x4_t acc[TQ_KV_MAX_GROUP];
    for (int h = 0; h < n_queries; h++) {
        acc[h] = vdupq_n_f32(0.0f);
    }

    if (layout->kind == TQ_KV_KIND_F16) {
        for (size_t j = 0; j < d; j += 4) {
            const float32x4_t x = load_half4(codes + 2 * j);
            for (int h = 0; h < n_queries; h++) {
                acc[h] = vfmaq_f32(acc[h], x, vld1q_f32(prepared + h * qf + j));
            }
        }
    } else if (layout->kind == TQ_KV_KIND_MSE) {
        const uint8x16x4_t table_first = load_table(layout->centroids_first);
        const uint8x16x4_t table_second = load_table(layout->centroids_second);
        const uint8_t *second = codes + (size_t)layout->bits_first * plane_bytes;
        for (size_t j = 0; j < half; j += 4) {
            const float32x4_t x = lookup(table_first, load_codes4(codes, plane_bytes, layout->bits_first, j));
            const float32x4_t y = lookup(table_second, load_codes4(second, plane_bytes, layout->bits_second, j));
            for (int h = 0; h < n_queries; h++) {
                const float *q = prepared + h * qf;
                acc[h] = vfmaq_f32(acc[h], x, vld1q_f32(q + j));
                acc[h] = vfmaq_f32(acc[h], y, vld1q_f32(q + half + j));
            }
        }
    } else {
        const uint8x16x4_t radius_table = load_table(layout->radius);
        const uint8x16x4_t cos_table = load_table(layout->angle_cos);
        const uint8x16x4_t sin_table = load_table(layout->angle_sin);
        const uint8_t *angles = codes + (size_t)TQ_KV_POLAR_RADIUS_BITS * plane_bytes;
        for (size_t j = 0; j < half; j += 4) {
            const float32x4_t radius =
                lookup(radius_table, load_codes4(codes, plane_bytes, TQ_KV_POLAR_RADIUS_BITS, j));
            const uint32x4_t angle = load_codes4(angles, plane_bytes, TQ_KV_POLAR_ANGLE_BITS, j);
            const float32x4_t x = vmulq_f32(radius, lookup(cos_table, angle));
            const float32x4_t y = vmulq_f32(radius, lookup(sin_table, angle));
            for (int h = 0; h < n_queries; h++) {
                const float *q = prepared + h * qf;
                acc[h] = vfmaq_f32(acc[h], x, vld1q_f32(q + j));
                acc[h] = vfmaq_f32(acc[h], y, vld1q_f32(q + half + j));
            }
        }
    }

    const float norm = row_norm(layout, row);
    if (!layout->has_qjl) {
        for (int h = 0; h < n_queries; h++) {
            out[(size_t)h * out_stride + i] = norm * vaddvq_f32(acc[h]);
        }
        return;
    }

    /* QJL: sum of the projected query over set sign bits; the +-1 sum is twice that
     * minus the projected query's total (stored after it in the prepared query). */
    float32x4_t positive[TQ_KV_MAX_GROUP];
    for (int h = 0; h < n_queries; h++) {
        positive[h] = vdupq_n_f32(0.0f);
    }
    const uint8_t *signs = row + layout->qjl_offset;
    for (size_t j = 0; j < d; j += 4) {
        const uint32x4_t mask = expand_nibble(signs[j / 8], (int)(j & 4));
        for (int h = 0; h < n_queries; h++) {
            const uint32x4_t projected = vreinterpretq_u32_f32(vld1q_f32(prepared + h * qf + d + j));
            positive[h] = vaddq_f32(positive[h], vreinterpretq_f32_u32(vandq_u32(mask, projected)));
        }
    }
    const float residual_weight = layout->qjl_scale * tq_kv_load_half(row + layout->qjl_norm_offset);
    for (int h = 0; h < n_queries; h++) {
        const float total = prepared[h * qf + 2 * d];
        const float signed_sum = 2.0f * vaddvq_f32(positive[h]) - total;
        out[(size_t)h * out_stride + i] = norm * (vaddvq_f32(acc[h]) + residual_weight * signed_sum);
    }
}

ALWAYS_INLINE void score_rows(const tq_kv_layout *layout, const float *prepared, const int n_queries,
                              const uint8_t *rows, size_t row_stride, size_t n, float *out, size_t out_stride)
{
    for (size_t i = 0; i < n; i++) {
        score_row(layout, prepared, n_queries, rows + i * row_stride, out, out_stride, i);
    }
}

static void scores_neon(const tq_kv_layout *layout, const float *prepared, int n_queries, const uint8_t *rows,
                        size_t row_stride, size_t n, float *out, size_t out_stride)
{
    /* NOTE: rows with a 2-bit QJL residual and split rows (tq3.5, tq2.5) are scored by the
     * scalar kernel; the other rows have a NEON path. */
    if (layout->qjl_bits == 2 || layout->split) {
        tq_kv_kernels_scalar.scores(layout, prepared, n_queries, rows, row_stride, n, out, out_stride);
        return;
    }
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

ALWAYS_INLINE void add_scaled(float *acc, size_t acc_floats, const float *w, int n_queries, size_t j, float32x4_t x)
{
    for (int h = 0; h < n_queries; h++) {
        float *sum = acc + (size_t)h * acc_floats + j;
        vst1q_f32(sum, vfmaq_n_f32(vld1q_f32(sum), x, w[h]));
    }
}

static void accumulate_neon(const tq_kv_layout *layout, const uint8_t *rows, size_t row_stride, size_t n,
                            const float *weights, size_t weight_stride, int n_queries, float *acc)
{
    /* NOTE: values with a 2-bit QJL residual and split rows are summed by the scalar kernel. */
    if (layout->qjl_bits == 2 || layout->split) {
        tq_kv_kernels_scalar.accumulate(layout, rows, row_stride, n, weights, weight_stride, n_queries, acc);
        return;
    }
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
            for (size_t j = 0; j < d; j += 4) {
                add_scaled(acc, af, w, n_queries, j, load_half4(codes + 2 * j));
            }
        } else if (layout->kind == TQ_KV_KIND_MSE) {
            const uint8x16x4_t table_first = load_table(layout->centroids_first);
            const uint8x16x4_t table_second = load_table(layout->centroids_second);
            const uint8_t *second = codes + (size_t)layout->bits_first * plane_bytes;
            for (size_t j = 0; j < half; j += 4) {
                add_scaled(acc, af, w, n_queries, j,
                           lookup(table_first, load_codes4(codes, plane_bytes, layout->bits_first, j)));
                add_scaled(acc, af, w, n_queries, half + j,
                           lookup(table_second, load_codes4(second, plane_bytes, layout->bits_second, j)));
            }
        } else {
            const uint8x16x4_t radius_table = load_table(layout->radius);
            const uint8x16x4_t cos_table = load_table(layout->angle_cos);
            const uint8x16x4_t sin_table = load_table(layout->angle_sin);
            const uint8_t *angles = codes + (size_t)TQ_KV_POLAR_RADIUS_BITS * plane_bytes;
            for (size_t j = 0; j < half; j += 4) {
                const float32x4_t radius =
                    lookup(radius_table, load_codes4(codes, plane_bytes, TQ_KV_POLAR_RADIUS_BITS, j));
                const uint32x4_t angle = load_codes4(angles, plane_bytes, TQ_KV_POLAR_ANGLE_BITS, j);
                add_scaled(acc, af, w, n_queries, j, vmulq_f32(radius, lookup(cos_table, angle)));
                add_scaled(acc, af, w, n_queries, half + j, vmulq_f32(radius, lookup(sin_table, angle)));
            }
        }

        if (layout->has_qjl) {
            const float residual_weight = layout->qjl_scale * tq_kv_load_half(row + layout->qjl_norm_offset);
            const uint8_t *signs = row + layout->qjl_offset;
            for (size_t j = 0; j < d; j += 4) {
                const uint32x4_t mask = expand_nibble(signs[j / 8], (int)(j & 4));
                for (int h = 0; h < n_queries; h++) {
                    const float32x4_t weight = vdupq_n_f32(w[h] * residual_weight);
                    const float32x4_t signed_weight = vbslq_f32(mask, weight, vnegq_f32(weight));
                    float *sum = acc + (size_t)h * af + d + j;
                    vst1q_f32(sum, vaddq_f32(vld1q_f32(sum), signed_weight));
                }
            }
        }
    }
}

const tq_kv_kernels tq_kv_kernels_neon = {scores_neon, accumulate_neon};
