/* Kernel interface of the KV-cache codecs (csrc/kv_codec.h): the row layout the kernels
 * read and one table of function pointers per instruction set.
 *
 * Row layout (offsets in bytes, all fields little-endian):
 *   norm_offset        f16 norm of the row; for split rows, of coordinates [0, d/2)
 *   norm_second_offset split rows only: f16 norm of coordinates [d/2, d)
 *   qjl_norm_offset    f16 norm of the QJL residual (formats with a QJL stage)
 *   codes_offset       codes of the main stage, see below
 *   qjl_offset         head_dim sign bits of the QJL sketch, bit j = sign of projection j
 *   qjl_magnitude_offset  codecs created with max_qjl_bits 2 only: head_dim magnitude bits,
 *                      bit j set when |projection j| / residual norm reaches the outer
 *                      threshold of the 2-bit Gaussian quantizer. A row written at 1 bit
 *                      leaves them zero, and a 1-bit read ignores them.
 *
 * Main stage by kind (d = head_dim):
 *   TQ_KV_KIND_F16    d f16 values at codes_offset, and no norm.
 *   TQ_KV_KIND_MSE    a group of the codes of coordinates [0, d/2) at bits_first bits,
 *                     then a group of [d/2, d) at bits_second bits. Split rows (the
 *                     fractional formats) code the two halves of the input as two vectors
 *                     of d/2 channels, each with its own norm and rotation. So a half of
 *                     coordinates in the rotated domain is a half of channels in the
 *                     input. Kernels scale each half by its norm and take 1 as the row
 *                     norm.
 *   TQ_KV_KIND_POLAR  a group of 4-bit radius codes, then a group of 3-bit angle codes,
 *                     one code of each per pair (j, j + d/2).
 * A group of 4-bit codes is nibble-packed, because one byte load then feeds 32 lanes: in
 * each run of 32 coordinates (16 bytes), byte i stores coordinate i in its low nibble and
 * coordinate 16 + i in its high nibble. Other widths use bit planes: plane p contains bit
 * p of every code, coordinate j at bit (j % 8) of byte j / 8. Either way a group of n
 * coordinates at b bits takes n * b / 8 bytes.
 *
 * Prepared query (floats): the rotated query (d), then for QJL formats the projected query
 * (d) and the sum of the projected query (1), padded to a multiple of 16.
 * Accumulator (floats): the rotated value sum (d), then for QJL formats the signed sums (d).
 */
#ifndef TQ_KV_CODEC_KERNELS_H
#define TQ_KV_CODEC_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum { TQ_KV_KIND_F16 = 0, TQ_KV_KIND_MSE = 1, TQ_KV_KIND_POLAR = 2 };

enum { TQ_KV_POLAR_RADIUS_BITS = 4, TQ_KV_POLAR_ANGLE_BITS = 3 };

typedef struct {
    int kind;
    int has_qjl;
    size_t head_dim;
    int bits_first;  /* MSE: bits of coordinates [0, d/2) */
    int bits_second; /* MSE: bits of coordinates [d/2, d) */
    int split;       /* MSE: 1 when the halves have their own norms and rotations */
    size_t norm_offset;
    size_t norm_second_offset; /* split rows only */
    size_t qjl_norm_offset;
    size_t codes_offset;
    size_t qjl_offset;
    size_t qjl_magnitude_offset; /* 0 when rows have no magnitude plane */
    int qjl_bits;                /* residual bits this layout reads and writes: 1 or 2 */
    size_t query_floats;
    size_t acc_floats;
    /* Lookup tables padded to 16 entries (unused entries are 0), in unit-vector units. */
    float centroids_first[16];
    float centroids_second[16];
    float radius[16];
    float angle_cos[16]; /* 8 angles, already scaled by the in-bin shrink factor */
    float angle_sin[16];
    /* The residual estimate is ||r|| * sum_j z_j s_j (qjl_scale + m_j * qjl_magnitude_scale)
     * for projected query z, signs s_j = +-1 and magnitude bits m_j: at 1 bit qjl_scale is
     * sqrt(pi/2) / head_dim and qjl_magnitude_scale 0; at 2 bits they are inner / (head_dim
     * gain) and (outer - inner) / (head_dim gain) for the levels +-inner, +-outer and
     * gain E[u Q(u)] of the 2-bit Gaussian quantizer (qjl.h), so both are unbiased. */
    float qjl_scale;
    float qjl_magnitude_scale;
} tq_kv_layout;

/* out[h * out_stride + i] = score of query h against row i, for h < n_queries. */
typedef void (*tq_kv_scores_fn)(const tq_kv_layout *layout, const float *prepared, int n_queries,
                                const uint8_t *rows, size_t row_stride, size_t n, float *out, size_t out_stride);

/* acc[h * acc_floats + ...] += sum_i weights[h * weight_stride + i] * row i (rotated domain). */
typedef void (*tq_kv_accumulate_fn)(const tq_kv_layout *layout, const uint8_t *rows, size_t row_stride, size_t n,
                                    const float *weights, size_t weight_stride, int n_queries, float *acc);

typedef struct {
    tq_kv_scores_fn scores;
    tq_kv_accumulate_fn accumulate;
} tq_kv_kernels;

extern const tq_kv_kernels tq_kv_kernels_scalar;
#if defined(TQ_HAVE_AVX2_KERNELS)
extern const tq_kv_kernels tq_kv_kernels_avx2;
#endif
#if defined(TQ_HAVE_AVX512_KERNELS)
extern const tq_kv_kernels tq_kv_kernels_avx512;
#endif
#if defined(TQ_HAVE_NEON_KERNELS)
extern const tq_kv_kernels tq_kv_kernels_neon;
#endif

/* Code of coordinate j in a group of codes of `bits` bits (plane_bytes bytes per bit). */
static inline unsigned tq_kv_code_read(const uint8_t *group, size_t plane_bytes, int bits, size_t j)
{
    if (bits == 4) {
        const uint8_t byte = group[(j / 32) * 16 + j % 16];
        return (j / 16) % 2 ? (unsigned)(byte >> 4) : (unsigned)(byte & 15);
    }
    unsigned code = 0;
    for (int p = 0; p < bits; p++) {
        code |= (unsigned)((group[(size_t)p * plane_bytes + j / 8] >> (j % 8)) & 1) << p;
    }
    return code;
}

/* Store code at coordinate j of a zero-initialized group (layout as tq_kv_code_read). */
static inline void tq_kv_code_write(uint8_t *group, size_t plane_bytes, int bits, size_t j, unsigned code)
{
    if (bits == 4) {
        group[(j / 32) * 16 + j % 16] |= (uint8_t)((j / 16) % 2 ? code << 4 : code);
        return;
    }
    for (int p = 0; p < bits; p++) {
        group[(size_t)p * plane_bytes + j / 8] |= (uint8_t)(((code >> p) & 1u) << (j % 8));
    }
}

/* Main-stage reconstruction of one row in the rotated unit-vector domain, without the
 * row norm and the QJL term (for f16 rows: the stored values). unit holds head_dim floats. */
void tq_kv_decode_main_scalar(const tq_kv_layout *layout, const uint8_t *row, float *unit);

/* IEEE half to float, exact for every half value including subnormals and infinities. */
static inline float tq_kv_half_to_float(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu;
    const uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0) {
        /* Zero or subnormal: mantissa * 2^-24, exact in float. */
        float value = (float)mantissa * 0x1p-24f;
        memcpy(&bits, &value, sizeof(bits));
        bits |= sign;
    } else if (exponent == 31) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    }
    float out;
    memcpy(&out, &bits, sizeof(out));
    return out;
}

static inline float tq_kv_load_half(const uint8_t *p)
{
    return tq_kv_half_to_float((uint16_t)(p[0] | (p[1] << 8)));
}

/* Norm a kernel multiplies a whole row by: 1 for f16 rows and for split rows, whose halves
 * carry their own norms (tq_kv_half_norms), else the stored row norm. */
static inline float tq_kv_row_norm(const tq_kv_layout *layout, const uint8_t *row)
{
    return layout->kind == TQ_KV_KIND_F16 || layout->split ? 1.0f : tq_kv_load_half(row + layout->norm_offset);
}

/* Norms of the two halves of a split row, by which kernels scale coordinates [0, d/2) and
 * [d/2, d). */
static inline void tq_kv_half_norms(const tq_kv_layout *layout, const uint8_t *row, float *first, float *second)
{
    *first = tq_kv_load_half(row + layout->norm_offset);
    *second = tq_kv_load_half(row + layout->norm_second_offset);
}

#endif /* TQ_KV_CODEC_KERNELS_H */
