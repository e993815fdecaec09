/* KV-cache codecs: format table, codebooks, rotation, encoding, and attention on codes. */
#include "kv_codec.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "kv_codec_kernels.h"
#include "qjl.h"
#include "rng.h"

/* Purposes passed to tq_rng_derive_seed, so rotation signs and the QJL matrix of one seed
 * are independent streams. */
enum { SEED_ROTATION = 0x6b76726f74ull, SEED_QJL = 0x6b76716a6cull };

typedef struct {
    const char *name;
    int kind;
    int bits_first;
    int bits_second;
    int has_qjl;
    int split; /* halves of the input coded as two vectors (tq_kv_layout.split) */
} format_spec;

/* The fractional formats split: a caller that puts the channels carrying the most score or
 * value energy in the first half gives them the wider codes (TurboQuant's outlier channels),
 * which one rotation over all channels would spread evenly. */
static const format_spec format_specs[] = {
    {"f16", TQ_KV_KIND_F16, 0, 0, 0, 0},      {"tq4", TQ_KV_KIND_MSE, 4, 4, 0, 0},
    {"tq3.5", TQ_KV_KIND_MSE, 4, 3, 0, 1},    {"tq3", TQ_KV_KIND_MSE, 3, 3, 0, 0},
    {"tq2.5", TQ_KV_KIND_MSE, 3, 2, 0, 1},    {"tq2", TQ_KV_KIND_MSE, 2, 2, 0, 0},
    {"tq3+qjl", TQ_KV_KIND_MSE, 2, 2, 1, 0},  {"tq4+qjl", TQ_KV_KIND_MSE, 3, 3, 1, 0},
    {"polar", TQ_KV_KIND_POLAR, 0, 0, 0, 0},  {"polar+qjl", TQ_KV_KIND_POLAR, 0, 0, 1, 0},
};

#define FORMAT_COUNT (sizeof(format_specs) / sizeof(format_specs[0]))

struct tq_kv_codec {
    const format_spec *spec;
    tq_isa isa;
    const tq_kv_kernels *kernels;
    tq_kv_layout layout;      /* rows read and written with a 1-bit residual */
    tq_kv_layout layout_2bit; /* the same rows with a 2-bit residual (max_qjl_bits 2 only) */
    int max_qjl_bits;         /* 1, or 2 when rows have room for the magnitude plane */
    float qjl_outer_threshold; /* |u| from which the 2-bit quantizer picks the outer level */
    size_t row_bytes;
    int norm_correction; /* 1: MSE rows store ||x|| / ||centroids|| (tq_kv_codec_set_norm_correction) */
    /* Decision thresholds between consecutive centroids (levels - 1 of them). */
    float thresholds_first[15];
    float thresholds_second[15];
    float radius_thresholds[15];
    /* Random signs of the two rounds of the randomized Hadamard transform. */
    float *signs;      /* 2 * head_dim: round 1, then round 2 */
    float *projection; /* QJL matrix, head_dim x head_dim, row-major, N(0, 1) entries; NULL without QJL */
};

/* ---------------------------------------------------------------------------------- */
/* f16 conversion (round to nearest even), used for norms and f16 rows.                 */

static uint16_t float_to_half(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof(bits));
    const uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    const uint32_t abs_bits = bits & 0x7fffffffu;

    if (abs_bits >= 0x7f800000u) {
        return (uint16_t)(sign | 0x7c00u | (abs_bits > 0x7f800000u ? 0x200u : 0u));
    }
    if (abs_bits >= 0x477ff000u) {
        return (uint16_t)(sign | 0x7c00u); /* rounds above 65504: infinity */
    }
    if (abs_bits < 0x38800000u) {
        /* Below the smallest normal half (2^-14): round value * 2^24 to an integer. */
        float abs_value;
        memcpy(&abs_value, &abs_bits, sizeof(abs_value));
        return (uint16_t)(sign | (uint16_t)lrintf(abs_value * 0x1p24f));
    }
    /* Normal: rebias the exponent and round the 13 dropped mantissa bits to nearest even. */
    const uint32_t rebased = abs_bits - 0x38000000u;
    const uint32_t rounded = rebased + 0x0fffu + ((rebased >> 13) & 1u);
    return (uint16_t)(sign | (uint16_t)(rounded >> 13));
}

static void store_half(uint8_t *p, float value)
{
    const uint16_t h = float_to_half(value);
    p[0] = (uint8_t)(h & 0xff);
    p[1] = (uint8_t)(h >> 8);
}

/* ---------------------------------------------------------------------------------- */
/* Lloyd-Max codebooks.                                                                 */
/*                                                                                      */
/* Densities are written in the scaled variable t = x * sqrt(d), where a coordinate of a */
/* uniform unit vector has variance 1. The density is tabulated at the ends and midpoints */
/* of LLOYD_GRID cells with cumulative Simpson integrals of f, t f and t^2 f, so each     */
/* Lloyd iteration costs O(levels) and integrals are accurate to O(step^4).              */

#define LLOYD_GRID 16384
#define LLOYD_MAX_ITERATIONS 200000
#define LLOYD_TOLERANCE 1e-12

/* One coordinate of a uniform unit vector in dim dimensions: f(t) ~ (1 - t^2/d)^((d-3)/2). */
static double sphere_coordinate_density(double t, double dim)
{
    const double u = 1.0 - t * t / dim;
    return u <= 0.0 ? 0.0 : exp(0.5 * (dim - 3.0) * log(u));
}

/* Radius of a coordinate pair of a uniform unit vector: f(r) ~ r (1 - r^2/d)^((d-4)/2). */
static double pair_radius_density(double r, double dim)
{
    const double u = 1.0 - r * r / dim;
    return u <= 0.0 || r <= 0.0 ? 0.0 : r * exp(0.5 * (dim - 4.0) * log(u));
}

typedef struct {
    double lo;
    double step;
    double *g[3];      /* t^k f(t) at the 2 * LLOYD_GRID + 1 cell ends and midpoints, k = 0, 1, 2 */
    double *cumul[3];  /* Simpson integrals of g[k] from lo to each of the LLOYD_GRID + 1 cell ends */
} density_table;

/* Integral of g[k] from lo to x, integrating the quadratic through the cell's two ends
 * and midpoint up to x. */
static double table_integral(const density_table *table, int k, double x)
{
    double position = (x - table->lo) / table->step;
    if (position <= 0.0) {
        return 0.0;
    }
    if (position >= LLOYD_GRID) {
        return table->cumul[k][LLOYD_GRID];
    }
    const size_t cell = (size_t)position;
    const double u = position - (double)cell;
    const double *g = table->g[k] + 2 * cell;
    const double u2 = u * u;
    const double u3 = u2 * u;
    const double weight_start = 2.0 * (u3 / 3.0 - 0.75 * u2 + 0.5 * u);
    const double weight_mid = -4.0 * (u3 / 3.0 - 0.5 * u2);
    const double weight_end = 2.0 * (u3 / 3.0 - 0.25 * u2);
    return table->cumul[k][cell] + table->step * (weight_start * g[0] + weight_mid * g[1] + weight_end * g[2]);
}

/* Lloyd-Max quantizer with `levels` centroids for density(t, dim) on [lo, hi]. Writes the
 * centroids and thresholds in unit-vector units (t / sqrt(dim)) and, when mse is not NULL,
 * the expected squared error per coordinate in t units. */
static tq_status lloyd_max(double (*density)(double, double), double dim, double lo, double hi, int levels,
                           float *centroids, float *thresholds, double *mse, tq_error *err)
{
    enum { POINTS = 2 * LLOYD_GRID + 1, ENDS = LLOYD_GRID + 1 };
    density_table table;
    table.lo = lo;
    table.step = (hi - lo) / LLOYD_GRID;
    double *storage = malloc(3 * (POINTS + ENDS) * sizeof(double));
    if (storage == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory building a %d-level codebook", levels);
    }
    for (int k = 0; k < 3; k++) {
        table.g[k] = storage + (size_t)k * POINTS;
        table.cumul[k] = storage + 3 * (size_t)POINTS + (size_t)k * ENDS;
    }
    for (size_t i = 0; i < POINTS; i++) {
        const double t = lo + 0.5 * table.step * (double)i;
        const double f = density(t, dim);
        table.g[0][i] = f;
        table.g[1][i] = t * f;
        table.g[2][i] = t * t * f;
    }
    for (int k = 0; k < 3; k++) {
        const double *g = table.g[k];
        table.cumul[k][0] = 0.0;
        for (size_t i = 0; i < LLOYD_GRID; i++) {
            table.cumul[k][i + 1] =
                table.cumul[k][i] + table.step / 6.0 * (g[2 * i] + 4.0 * g[2 * i + 1] + g[2 * i + 2]);
        }
    }
    const double total_mass = table.cumul[0][LLOYD_GRID];

    /* Start from evenly spaced centroids over the bulk of the density (about +-2.5 sigma,
     * or [0, 3.5] for a radius); Lloyd iterations then move them to the optimum. */
    double c[16];
    const double start = lo < 0.0 ? -2.5 : 0.2;
    const double end = lo < 0.0 ? 2.5 : 3.5;
    for (int i = 0; i < levels; i++) {
        c[i] = start + (end - start) * (i + 0.5) / levels;
    }

    double edges[17];
    for (int iteration = 0; iteration < LLOYD_MAX_ITERATIONS; iteration++) {
        edges[0] = lo;
        edges[levels] = hi;
        for (int i = 1; i < levels; i++) {
            edges[i] = 0.5 * (c[i - 1] + c[i]);
        }
        double change = 0.0;
        for (int i = 0; i < levels; i++) {
            const double mass = table_integral(&table, 0, edges[i + 1]) - table_integral(&table, 0, edges[i]);
            const double moment = table_integral(&table, 1, edges[i + 1]) - table_integral(&table, 1, edges[i]);
            if (mass > 1e-300) {
                const double updated = moment / mass;
                change = fmax(change, fabs(updated - c[i]));
                c[i] = updated;
            }
        }
        if (change < LLOYD_TOLERANCE) {
            break;
        }
    }

    edges[0] = lo;
    edges[levels] = hi;
    for (int i = 1; i < levels; i++) {
        edges[i] = 0.5 * (c[i - 1] + c[i]);
    }
    double error = 0.0;
    for (int i = 0; i < levels; i++) {
        double m[3];
        for (int k = 0; k < 3; k++) {
            m[k] = table_integral(&table, k, edges[i + 1]) - table_integral(&table, k, edges[i]);
        }
        error += m[2] - 2.0 * c[i] * m[1] + c[i] * c[i] * m[0];
    }
    if (mse != NULL) {
        *mse = error / total_mass;
    }

    const double unit = 1.0 / sqrt(dim);
    for (int i = 0; i < 16; i++) {
        centroids[i] = i < levels ? (float)(c[i] * unit) : 0.0f;
    }
    for (int i = 1; i < levels; i++) {
        thresholds[i - 1] = (float)(edges[i] * unit);
    }
    free(storage);
    return TQ_OK;
}

/* ---------------------------------------------------------------------------------- */
/* Randomized Hadamard rotation: y = H D2 H D1 x / d with random sign diagonals D1, D2. */
/* Two rounds spread even a one-hot vector into near-Gaussian coordinates.             */

static void walsh_hadamard(float *x, size_t d)
{
    size_t len = 1;
    if (d >= 8 && d % 8 == 0) {
        /* The stages of span 1, 2 and 4 mix only within aligned groups of 8, so each group
         * runs all three before the next. These are the same additions in the same order as
         * stage by stage, without short inner loops that keep the compiler from vectorizing. */
        for (size_t start = 0; start < d; start += 8) {
            float *g = x + start;
            const float a0 = g[0] + g[1], a1 = g[0] - g[1], a2 = g[2] + g[3], a3 = g[2] - g[3];
            const float a4 = g[4] + g[5], a5 = g[4] - g[5], a6 = g[6] + g[7], a7 = g[6] - g[7];
            const float b0 = a0 + a2, b1 = a1 + a3, b2 = a0 - a2, b3 = a1 - a3;
            const float b4 = a4 + a6, b5 = a5 + a7, b6 = a4 - a6, b7 = a5 - a7;
            g[0] = b0 + b4;
            g[1] = b1 + b5;
            g[2] = b2 + b6;
            g[3] = b3 + b7;
            g[4] = b0 - b4;
            g[5] = b1 - b5;
            g[6] = b2 - b6;
            g[7] = b3 - b7;
        }
        len = 8;
    }
    for (; len < d; len <<= 1) {
        for (size_t start = 0; start < d; start += 2 * len) {
            for (size_t j = start; j < start + len; j++) {
                const float a = x[j];
                const float b = x[j + len];
                x[j] = a + b;
                x[j + len] = a - b;
            }
        }
    }
}

/* The transform of n coordinates with sign vectors signs1 and signs2. */
static void hadamard_forward(float *x, size_t n, const float *signs1, const float *signs2)
{
    const float inverse_n = 1.0f / (float)n;
    for (size_t j = 0; j < n; j++) {
        x[j] *= signs1[j];
    }
    walsh_hadamard(x, n);
    for (size_t j = 0; j < n; j++) {
        x[j] *= signs2[j];
    }
    walsh_hadamard(x, n);
    for (size_t j = 0; j < n; j++) {
        x[j] *= inverse_n;
    }
}

/* Inverse of hadamard_forward, times scale. */
static void hadamard_inverse(float *x, size_t n, const float *signs1, const float *signs2, float scale)
{
    const float factor = scale / (float)n;
    walsh_hadamard(x, n);
    for (size_t j = 0; j < n; j++) {
        x[j] *= signs2[j];
    }
    walsh_hadamard(x, n);
    for (size_t j = 0; j < n; j++) {
        x[j] *= signs1[j] * factor;
    }
}

/* Rotation of a row: one transform of head_dim coordinates, or for split formats one of
 * each half (both halves use their own part of the sign vectors). */
static void rotate_forward(const tq_kv_codec *codec, float *x)
{
    const size_t d = codec->layout.head_dim;
    const float *signs1 = codec->signs;
    const float *signs2 = codec->signs + d;
    if (!codec->layout.split) {
        hadamard_forward(x, d, signs1, signs2);
        return;
    }
    const size_t half = d / 2;
    hadamard_forward(x, half, signs1, signs2);
    hadamard_forward(x + half, half, signs1 + half, signs2 + half);
}

/* Inverse of rotate_forward, with the first half times scale_first and the second times
 * scale_second (a single transform takes scale_first for both). */
static void rotate_inverse_halves(const tq_kv_codec *codec, float *x, float scale_first, float scale_second)
{
    const size_t d = codec->layout.head_dim;
    const float *signs1 = codec->signs;
    const float *signs2 = codec->signs + d;
    if (!codec->layout.split) {
        hadamard_inverse(x, d, signs1, signs2, scale_first);
        return;
    }
    const size_t half = d / 2;
    hadamard_inverse(x, half, signs1, signs2, scale_first);
    hadamard_inverse(x + half, half, signs1 + half, signs2 + half, scale_second);
}

/* Inverse of rotate_forward, times scale. */
static void rotate_inverse(const tq_kv_codec *codec, float *x, float scale)
{
    rotate_inverse_halves(codec, x, scale, scale);
}

/* Dimension of the vectors a codec's codebooks quantize: head_dim, or half of it for split
 * formats. */
static size_t coded_dim(const tq_kv_layout *layout)
{
    return layout->split ? layout->head_dim / 2 : layout->head_dim;
}

/* out = S x (QJL projection of a rotated vector). */
static void project(const tq_kv_codec *codec, const float *x, float *out)
{
    const size_t d = codec->layout.head_dim;
    for (size_t i = 0; i < d; i++) {
        const float *s = codec->projection + i * d;
        float sum = 0.0f;
        for (size_t j = 0; j < d; j++) {
            sum += s[j] * x[j];
        }
        out[i] = sum;
    }
}

/* x += S^T a. */
static void project_transposed_add(const tq_kv_codec *codec, const float *a, float *x)
{
    const size_t d = codec->layout.head_dim;
    for (size_t i = 0; i < d; i++) {
        const float *s = codec->projection + i * d;
        const float weight = a[i];
        for (size_t j = 0; j < d; j++) {
            x[j] += weight * s[j];
        }
    }
}

/* ---------------------------------------------------------------------------------- */
/* Creation.                                                                            */

/* Complete layout_2bit from the 1-bit layout: the 2-bit Gaussian quantizer of qjl.h has
 * levels +-inner, +-outer, so Q(u) = sign(u) (inner + [|u| >= t] (outer - inner)), and
 * dividing by head_dim * E[u Q(u)] makes the estimate unbiased as at 1 bit. */
static void set_2bit_residual(tq_kv_codec *codec, size_t d)
{
    tq_qjl_gaussian_quantizer quantizer;
    tq_qjl_gaussian_levels(2, &quantizer);
    const double inner = quantizer.levels[2];
    const double outer = quantizer.levels[3];
    const double denominator = (double)d * quantizer.gain;
    codec->qjl_outer_threshold = quantizer.thresholds[2];
    codec->layout_2bit = codec->layout;
    codec->layout_2bit.qjl_bits = 2;
    codec->layout_2bit.qjl_scale = (float)(inner / denominator);
    codec->layout_2bit.qjl_magnitude_scale = (float)((outer - inner) / denominator);
}

static tq_status build_layout(tq_kv_codec *codec, size_t d, tq_error *err)
{
    const format_spec *spec = codec->spec;
    tq_kv_layout *layout = &codec->layout;
    memset(layout, 0, sizeof(*layout));
    layout->kind = spec->kind;
    layout->has_qjl = spec->has_qjl;
    layout->head_dim = d;
    layout->bits_first = spec->bits_first;
    layout->bits_second = spec->bits_second;
    layout->query_floats = spec->has_qjl ? 2 * d + 16 : d;
    layout->acc_floats = spec->has_qjl ? 2 * d : d;
    layout->qjl_bits = 1;
    layout->qjl_scale = (float)(sqrt(M_PI / 2.0) / (double)d);

    const size_t plane_bytes = d / 16; /* one plane covers half of the coordinates */
    size_t offset = 0;
    if (spec->kind == TQ_KV_KIND_F16) {
        layout->codes_offset = 0;
        codec->row_bytes = 2 * d;
        return TQ_OK;
    }
    layout->split = spec->split;
    layout->norm_offset = offset;
    offset += 2;
    if (spec->split) {
        layout->norm_second_offset = offset;
        offset += 2;
    }
    if (spec->has_qjl) {
        layout->qjl_norm_offset = offset;
        offset += 2;
    }
    layout->codes_offset = offset;

    const double dim = (double)coded_dim(layout);
    const double reach = fmin(sqrt(dim), 12.0); /* the density is below exp(-70) beyond 12 sigma */
    if (spec->kind == TQ_KV_KIND_MSE) {
        offset += (size_t)(spec->bits_first + spec->bits_second) * plane_bytes;
        tq_status status = lloyd_max(sphere_coordinate_density, dim, -reach, reach, 1 << spec->bits_first,
                                     layout->centroids_first, codec->thresholds_first, NULL, err);
        if (status != TQ_OK) {
            return status;
        }
        status = lloyd_max(sphere_coordinate_density, dim, -reach, reach, 1 << spec->bits_second,
                           layout->centroids_second, codec->thresholds_second, NULL, err);
        if (status != TQ_OK) {
            return status;
        }
    } else {
        offset += (size_t)(TQ_KV_POLAR_RADIUS_BITS + TQ_KV_POLAR_ANGLE_BITS) * plane_bytes;
        tq_status status = lloyd_max(pair_radius_density, dim, 0.0, reach, 1 << TQ_KV_POLAR_RADIUS_BITS,
                                     layout->radius, codec->radius_thresholds, NULL, err);
        if (status != TQ_OK) {
            return status;
        }
        /* Angle bins of width pi/4 centred on -pi + (k + 1/2) pi/4. For an angle spread
         * uniformly over its bin the MSE-optimal point lies on the centre ray, shortened by
         * E[cos(angle - centre)] = sin(pi/8) / (pi/8). */
        const double width = 2.0 * M_PI / (1 << TQ_KV_POLAR_ANGLE_BITS);
        const double shrink = sin(0.5 * width) / (0.5 * width);
        for (int k = 0; k < (1 << TQ_KV_POLAR_ANGLE_BITS); k++) {
            const double centre = -M_PI + (k + 0.5) * width;
            layout->angle_cos[k] = (float)(shrink * cos(centre));
            layout->angle_sin[k] = (float)(shrink * sin(centre));
        }
    }
    if (spec->has_qjl) {
        layout->qjl_offset = offset;
        offset += d / 8;
    }
    if (spec->has_qjl && codec->max_qjl_bits == 2) {
        layout->qjl_magnitude_offset = offset;
        offset += d / 8;
        set_2bit_residual(codec, d);
    }
    codec->row_bytes = offset;
    return TQ_OK;
}

static const tq_kv_kernels *kernels_for(tq_isa isa)
{
    switch (isa) {
#if defined(TQ_HAVE_AVX2_KERNELS)
    case TQ_ISA_AVX2:
        return &tq_kv_kernels_avx2;
#endif
#if defined(TQ_HAVE_AVX512_KERNELS)
    case TQ_ISA_AVX512:
        return &tq_kv_kernels_avx512;
#endif
#if defined(TQ_HAVE_NEON_KERNELS)
    case TQ_ISA_NEON:
        return &tq_kv_kernels_neon;
#endif
    default:
        return &tq_kv_kernels_scalar;
    }
}

tq_status tq_kv_codec_create(const char *name, size_t head_dim, uint64_t seed, tq_isa isa, tq_kv_codec **out,
                             tq_error *err)
{
    return tq_kv_codec_create_qjl(name, head_dim, seed, isa, 1, out, err);
}

tq_status tq_kv_codec_create_qjl(const char *name, size_t head_dim, uint64_t seed, tq_isa isa, int max_qjl_bits,
                                 tq_kv_codec **out, tq_error *err)
{
    *out = NULL;
    if (max_qjl_bits != 1 && max_qjl_bits != 2) {
        return tq_error_set(err, TQ_ERR_INVALID, "max_qjl_bits %d is not supported; use 1 or 2", max_qjl_bits);
    }
    const format_spec *spec = NULL;
    for (size_t i = 0; name != NULL && i < FORMAT_COUNT; i++) {
        if (strcmp(name, format_specs[i].name) == 0) {
            spec = &format_specs[i];
        }
    }
    if (spec == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "unknown KV cache format '%s'; valid formats: %s",
                            name != NULL ? name : "(null)", TQ_KV_FORMAT_NAMES);
    }
    if (head_dim < TQ_KV_MIN_HEAD_DIM || head_dim > TQ_KV_MAX_HEAD_DIM || (head_dim & (head_dim - 1)) != 0) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "head_dim %zu is not supported by KV cache format '%s'; use a power of two from %d "
                            "to %d",
                            head_dim, name, TQ_KV_MIN_HEAD_DIM, TQ_KV_MAX_HEAD_DIM);
    }
    if (!tq_isa_supported(isa)) {
        return tq_error_set(err, TQ_ERR_INVALID, "kernel variant '%s' is not supported by this CPU or build",
                            tq_isa_name(isa));
    }

    tq_kv_codec *codec = calloc(1, sizeof(*codec));
    if (codec == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory creating KV cache format '%s'", name);
    }
    codec->spec = spec;
    codec->isa = isa;
    /* Formats without a QJL stage have no residual, so their rows never grow. */
    codec->max_qjl_bits = spec->has_qjl ? max_qjl_bits : 1;
    codec->kernels = kernels_for(isa);

    tq_status status = build_layout(codec, head_dim, err);
    if (status != TQ_OK) {
        tq_kv_codec_free(codec);
        return status;
    }

    if (spec->kind != TQ_KV_KIND_F16) {
        codec->signs = tq_aligned_alloc(2 * head_dim * sizeof(float));
        if (codec->signs == NULL) {
            tq_kv_codec_free(codec);
            return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for the rotation of format '%s'", name);
        }
        tq_rng rng;
        tq_rng_seed(&rng, tq_rng_derive_seed(seed, SEED_ROTATION));
        for (size_t j = 0; j < 2 * head_dim; j++) {
            codec->signs[j] = (tq_rng_next_u64(&rng) >> 63) ? -1.0f : 1.0f;
        }
    }
    if (spec->has_qjl) {
        size_t count;
        if (!tq_mul_size(head_dim, head_dim * sizeof(float), &count) ||
            (codec->projection = tq_aligned_alloc(count)) == NULL) {
            tq_kv_codec_free(codec);
            return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for the QJL matrix of format '%s'", name);
        }
        tq_rng rng;
        tq_rng_seed(&rng, tq_rng_derive_seed(seed, SEED_QJL));
        for (size_t i = 0; i < head_dim * head_dim; i++) {
            codec->projection[i] = (float)tq_rng_normal(&rng);
        }
    }
    *out = codec;
    return TQ_OK;
}

/* Replace the centroids of one codebook (levels entries, padded to 16) with codebook, given in
 * units of sqrt(head_dim) times a unit-vector coordinate, and set the thresholds between them. */
static void set_codebook(const float *codebook, int levels, double dim, float *centroids, float *thresholds)
{
    const double unit = 1.0 / sqrt(dim);
    for (int i = 0; i < 16; i++) {
        centroids[i] = i < levels ? (float)(codebook[i] * unit) : 0.0f;
    }
    for (int i = 1; i < levels; i++) {
        thresholds[i - 1] = (float)(0.5 * ((double)codebook[i - 1] + (double)codebook[i]) * unit);
    }
}

int tq_kv_codec_codebook_fits(const char *name, size_t count)
{
    for (size_t i = 0; name != NULL && i < FORMAT_COUNT; i++) {
        const format_spec *spec = &format_specs[i];
        if (strcmp(name, spec->name) != 0) {
            continue;
        }
        if (spec->kind == TQ_KV_KIND_POLAR) {
            return count == (size_t)1 << TQ_KV_POLAR_RADIUS_BITS;
        }
        return spec->kind == TQ_KV_KIND_MSE &&
               (count == (size_t)1 << spec->bits_first || count == (size_t)1 << spec->bits_second);
    }
    return 0;
}

tq_status tq_kv_codec_create_with_codebook(const char *name, size_t head_dim, uint64_t seed, tq_isa isa,
                                           int max_qjl_bits, const float *codebook, size_t count, tq_kv_codec **out,
                                           tq_error *err)
{
    *out = NULL;
    if (codebook == NULL || count < 2) {
        return tq_error_set(err, TQ_ERR_INVALID, "a codebook needs at least 2 centroids, got %zu", count);
    }
    for (size_t i = 0; i < count; i++) {
        if (!isfinite(codebook[i]) || (i > 0 && !(codebook[i] > codebook[i - 1]))) {
            return tq_error_set(err, TQ_ERR_INVALID,
                                "codebook entry %zu is %g; entries must be finite and strictly increasing", i,
                                (double)codebook[i]);
        }
    }
    tq_kv_codec *codec;
    tq_status status = tq_kv_codec_create_qjl(name, head_dim, seed, isa, max_qjl_bits, &codec, err);
    if (status != TQ_OK) {
        return status;
    }
    tq_kv_layout *layout = &codec->layout;
    const double dim = (double)coded_dim(layout);
    const int levels = (int)count;
    if (layout->kind == TQ_KV_KIND_POLAR) {
        if (count != (size_t)1 << TQ_KV_POLAR_RADIUS_BITS || !(codebook[0] >= 0.0f)) {
            tq_kv_codec_free(codec);
            return tq_error_set(err, TQ_ERR_INVALID,
                                "format '%s' needs a radius codebook of %d entries >= 0; got %zu entries from %g",
                                name, 1 << TQ_KV_POLAR_RADIUS_BITS, count, (double)codebook[0]);
        }
        set_codebook(codebook, levels, dim, layout->radius, codec->radius_thresholds);
    } else if (layout->kind == TQ_KV_KIND_MSE &&
               (count == (size_t)1 << layout->bits_first || count == (size_t)1 << layout->bits_second)) {
        /* A fractional format replaces only the half whose width matches the codebook. */
        if (count == (size_t)1 << layout->bits_first) {
            set_codebook(codebook, levels, dim, layout->centroids_first, codec->thresholds_first);
        }
        if (count == (size_t)1 << layout->bits_second) {
            set_codebook(codebook, levels, dim, layout->centroids_second, codec->thresholds_second);
        }
    } else {
        const int bits_first = layout->kind == TQ_KV_KIND_MSE ? layout->bits_first : 0;
        const int bits_second = layout->kind == TQ_KV_KIND_MSE ? layout->bits_second : 0;
        tq_kv_codec_free(codec);
        if (bits_first == 0) {
            return tq_error_set(err, TQ_ERR_INVALID, "format '%s' has no codebook to replace", name);
        }
        return tq_error_set(err, TQ_ERR_INVALID,
                            "a codebook of %zu entries does not fit format '%s', whose coordinate codebooks have "
                            "%d and %d entries",
                            count, name, 1 << bits_first, 1 << bits_second);
    }
    *out = codec;
    return TQ_OK;
}

void tq_kv_codec_free(tq_kv_codec *codec)
{
    if (codec == NULL) {
        return;
    }
    tq_aligned_free(codec->signs);
    tq_aligned_free(codec->projection);
    free(codec);
}

const char *tq_kv_codec_name(const tq_kv_codec *codec)
{
    return codec->spec->name;
}

size_t tq_kv_codec_head_dim(const tq_kv_codec *codec)
{
    return codec->layout.head_dim;
}

tq_isa tq_kv_codec_isa(const tq_kv_codec *codec)
{
    return codec->isa;
}

int tq_kv_codec_max_qjl_bits(const tq_kv_codec *codec)
{
    return codec->max_qjl_bits;
}

size_t tq_kv_codec_row_bytes(const tq_kv_codec *codec)
{
    return codec->row_bytes;
}

double tq_kv_codec_bits_per_value(const tq_kv_codec *codec)
{
    return 8.0 * (double)codec->row_bytes / (double)codec->layout.head_dim;
}

int tq_kv_codec_is_split(const tq_kv_codec *codec)
{
    return codec->layout.split;
}

const float *tq_kv_codec_centroids(const tq_kv_codec *codec, size_t *count)
{
    switch (codec->layout.kind) {
    case TQ_KV_KIND_MSE:
        *count = (size_t)1 << codec->layout.bits_first;
        return codec->layout.centroids_first;
    case TQ_KV_KIND_POLAR:
        *count = (size_t)1 << TQ_KV_POLAR_RADIUS_BITS;
        return codec->layout.radius;
    default:
        *count = 0;
        return NULL;
    }
}

void tq_kv_codec_set_norm_correction(tq_kv_codec *codec, int enabled)
{
    codec->norm_correction = enabled ? 1 : 0;
}

int tq_kv_codec_norm_correction(const tq_kv_codec *codec)
{
    return codec->norm_correction;
}

size_t tq_kv_codec_query_floats(const tq_kv_codec *codec)
{
    return codec->layout.query_floats;
}

size_t tq_kv_codec_acc_floats(const tq_kv_codec *codec)
{
    return codec->layout.acc_floats;
}

/* ---------------------------------------------------------------------------------- */
/* Encoding and decoding.                                                               */

/* Number of thresholds below value, which is the index of the nearest centroid. */
static unsigned quantize(float value, const float *thresholds, int levels)
{
    unsigned code = 0;
    for (int i = 0; i < levels - 1; i++) {
        code += value > thresholds[i];
    }
    return code;
}

/* Layout of rows read or written with a qjl_bits residual; 1 bit unless both the request and
 * the codec's rows allow 2. */
static const tq_kv_layout *layout_for_bits(const tq_kv_codec *codec, int qjl_bits)
{
    return qjl_bits == 2 && codec->max_qjl_bits == 2 ? &codec->layout_2bit : &codec->layout;
}

static tq_status encode_row(const tq_kv_codec *codec, const tq_kv_layout *layout, const float *x, uint8_t *row,
                            size_t row_index, tq_error *err)
{
    const size_t d = layout->head_dim;
    const size_t half = d / 2;
    const size_t plane_bytes = d / 16;

    double sum_squares = 0.0;
    for (size_t j = 0; j < d; j++) {
        if (!isfinite(x[j])) {
            return tq_error_set(err, TQ_ERR_INVALID, "row %zu, column %zu is %g; KV cache inputs must be finite",
                                row_index, j, (double)x[j]);
        }
        sum_squares += (double)x[j] * (double)x[j];
    }
    memset(row, 0, codec->row_bytes);

    if (layout->kind == TQ_KV_KIND_F16) {
        for (size_t j = 0; j < d; j++) {
            if (fabsf(x[j]) > 65504.0f) {
                return tq_error_set(err, TQ_ERR_INVALID,
                                    "row %zu, column %zu is %g, outside the f16 range (65504); use a "
                                    "TurboQuant format, which stores only the row norm in f16",
                                    row_index, j, (double)x[j]);
            }
            store_half(row + 2 * j, x[j]);
        }
        return TQ_OK;
    }

    /* One norm per coded vector: the row, or each half of a split row. */
    const size_t parts = layout->split ? 2 : 1;
    const size_t part_dim = d / parts;
    const size_t norm_offsets[2] = {layout->norm_offset, layout->norm_second_offset};
    float unit[TQ_KV_MAX_HEAD_DIM];
    double norms[2];
    for (size_t part = 0; part < parts; part++) {
        const float *in = x + part * part_dim;
        double part_squares = sum_squares;
        if (parts > 1) {
            part_squares = 0.0;
            for (size_t j = 0; j < part_dim; j++) {
                part_squares += (double)in[j] * (double)in[j];
            }
        }
        norms[part] = sqrt(part_squares);
        const float inverse_norm = norms[part] > 0.0 ? (float)(1.0 / norms[part]) : 0.0f;
        for (size_t j = 0; j < part_dim; j++) {
            unit[part * part_dim + j] = in[j] * inverse_norm;
        }
    }
    rotate_forward(codec, unit);

    uint8_t *codes = row + layout->codes_offset;
    if (layout->kind == TQ_KV_KIND_MSE) {
        uint8_t *second = codes + (size_t)layout->bits_first * plane_bytes;
        const int levels_first = 1 << layout->bits_first;
        const int levels_second = 1 << layout->bits_second;
        /* Squared length of each coded vector's centroids: below 1 by about the codebook's MSE. */
        double code_squares[2] = {0.0, 0.0};
        for (size_t j = 0; j < half; j++) {
            const unsigned code_first = quantize(unit[j], codec->thresholds_first, levels_first);
            const unsigned code_second = quantize(unit[half + j], codec->thresholds_second, levels_second);
            tq_kv_code_write(codes, plane_bytes, layout->bits_first, j, code_first);
            tq_kv_code_write(second, plane_bytes, layout->bits_second, j, code_second);
            code_squares[0] += (double)layout->centroids_first[code_first] * layout->centroids_first[code_first];
            code_squares[parts - 1] +=
                (double)layout->centroids_second[code_second] * layout->centroids_second[code_second];
        }
        /* Norm correction: store ||x|| / ||centroids|| so the decoded vector has x's length.
         * Lloyd-Max centroids are conditional means, so every decoded vector is shorter than x
         * by about the codebook's MSE. In attention that scales coded scores down against the
         * f16 window's and pulls averaged values towards zero. QJL formats keep the plain
         * norm, which their unbiased residual term needs. */
        if (codec->norm_correction && !layout->has_qjl) {
            for (size_t part = 0; part < parts; part++) {
                if (code_squares[part] > 0.0) {
                    norms[part] /= sqrt(code_squares[part]);
                }
            }
        }
    } else {
        uint8_t *angles = codes + (size_t)TQ_KV_POLAR_RADIUS_BITS * plane_bytes;
        const int angle_bins = 1 << TQ_KV_POLAR_ANGLE_BITS;
        const double bin_width = 2.0 * M_PI / angle_bins;
        for (size_t j = 0; j < half; j++) {
            const float a = unit[j];
            const float b = unit[half + j];
            const float radius = sqrtf(a * a + b * b);
            tq_kv_code_write(codes, plane_bytes, TQ_KV_POLAR_RADIUS_BITS, j,
                       quantize(radius, codec->radius_thresholds, 1 << TQ_KV_POLAR_RADIUS_BITS));
            int bin = (int)floor((atan2((double)b, (double)a) + M_PI) / bin_width);
            bin = bin < 0 ? 0 : (bin >= angle_bins ? angle_bins - 1 : bin);
            tq_kv_code_write(angles, plane_bytes, TQ_KV_POLAR_ANGLE_BITS, j, (unsigned)bin);
        }
    }
    for (size_t part = 0; part < parts; part++) {
        if (norms[part] > 65504.0) {
            return tq_error_set(err, TQ_ERR_INVALID, "row %zu has norm %g, above the f16 maximum 65504 used for norms",
                                row_index, norms[part]);
        }
        store_half(row + norm_offsets[part], (float)norms[part]);
    }

    if (layout->has_qjl) {
        float reconstruction[TQ_KV_MAX_HEAD_DIM];
        float projected[TQ_KV_MAX_HEAD_DIM];
        tq_kv_decode_main_scalar(layout, row, reconstruction);
        double residual_squares = 0.0;
        for (size_t j = 0; j < d; j++) {
            unit[j] -= reconstruction[j];
            residual_squares += (double)unit[j] * (double)unit[j];
        }
        const float residual_norm = (float)sqrt(residual_squares);
        store_half(row + layout->qjl_norm_offset, residual_norm);
        project(codec, unit, projected);
        uint8_t *signs = row + layout->qjl_offset;
        for (size_t i = 0; i < d; i++) {
            signs[i >> 3] |= (uint8_t)((projected[i] >= 0.0f) << (i & 7));
        }
        if (layout->qjl_bits == 2) {
            /* u_i = projected_i / ||r|| is N(0, 1) over the draw of the projection, the input
             * the Gaussian quantizer's threshold is set for. */
            const float outer_from = codec->qjl_outer_threshold * residual_norm;
            uint8_t *magnitudes = row + layout->qjl_magnitude_offset;
            for (size_t i = 0; i < d; i++) {
                magnitudes[i >> 3] |= (uint8_t)((fabsf(projected[i]) >= outer_from && residual_norm > 0.0f)
                                                << (i & 7));
            }
        }
    }
    return TQ_OK;
}

tq_status tq_kv_codec_encode(const tq_kv_codec *codec, int qjl_bits, const float *x, size_t x_stride, size_t n,
                             uint8_t *rows, size_t row_stride, tq_error *err)
{
    if (qjl_bits < 1 || qjl_bits > codec->max_qjl_bits) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "qjl_bits %d is not supported by this '%s' codec; use 1 to its max_qjl_bits %d", qjl_bits,
                            codec->spec->name, codec->max_qjl_bits);
    }
    const tq_kv_layout *layout = layout_for_bits(codec, qjl_bits);
    for (size_t i = 0; i < n; i++) {
        tq_status status = encode_row(codec, layout, x + i * x_stride, rows + i * row_stride, i, err);
        if (status != TQ_OK) {
            return status;
        }
    }
    return TQ_OK;
}

void tq_kv_codec_decode(const tq_kv_codec *codec, int qjl_bits, const uint8_t *rows, size_t row_stride, size_t n,
                        float *out, size_t out_stride)
{
    const tq_kv_layout *layout = layout_for_bits(codec, qjl_bits);
    const size_t d = layout->head_dim;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *row = rows + i * row_stride;
        float *x = out + i * out_stride;
        tq_kv_decode_main_scalar(layout, row, x);
        if (layout->kind == TQ_KV_KIND_F16) {
            continue;
        }
        if (layout->has_qjl) {
            float signed_weights[TQ_KV_MAX_HEAD_DIM];
            const float residual_norm = tq_kv_load_half(row + layout->qjl_norm_offset);
            const uint8_t *signs = row + layout->qjl_offset;
            const uint8_t *magnitudes = row + layout->qjl_magnitude_offset;
            for (size_t j = 0; j < d; j++) {
                float weight = layout->qjl_scale;
                if (layout->qjl_bits == 2 && ((magnitudes[j >> 3] >> (j & 7)) & 1)) {
                    weight += layout->qjl_magnitude_scale;
                }
                weight *= residual_norm;
                signed_weights[j] = ((signs[j >> 3] >> (j & 7)) & 1) ? weight : -weight;
            }
            project_transposed_add(codec, signed_weights, x);
        }
        if (layout->split) {
            float first, second;
            tq_kv_half_norms(layout, row, &first, &second);
            rotate_inverse_halves(codec, x, first, second);
        } else {
            rotate_inverse(codec, x, tq_kv_load_half(row + layout->norm_offset));
        }
    }
}

/* ---------------------------------------------------------------------------------- */
/* Attention on codes.                                                                  */

/* out[0 .. n) = x / ||x|| over n coordinates (a zero vector stays zero). */
static void normalize(const float *x, size_t n, float *out)
{
    double sum_squares = 0.0;
    for (size_t j = 0; j < n; j++) {
        sum_squares += (double)x[j] * (double)x[j];
    }
    const float inverse_norm = sum_squares > 0.0 ? (float)(1.0 / sqrt(sum_squares)) : 0.0f;
    for (size_t j = 0; j < n; j++) {
        out[j] = x[j] * inverse_norm;
    }
}

void tq_kv_codec_rotate(const tq_kv_codec *codec, const float *x, float *out)
{
    const size_t d = codec->layout.head_dim;
    if (codec->layout.split) {
        normalize(x, d / 2, out);
        normalize(x + d / 2, d / 2, out + d / 2);
    } else {
        normalize(x, d, out);
    }
    if (codec->layout.kind != TQ_KV_KIND_F16) {
        rotate_forward(codec, out);
    }
}

void tq_kv_codec_prepare_query(const tq_kv_codec *codec, const float *q, float *prepared)
{
    const tq_kv_layout *layout = &codec->layout;
    const size_t d = layout->head_dim;
    memset(prepared, 0, layout->query_floats * sizeof(float));
    memcpy(prepared, q, d * sizeof(float));
    if (layout->kind == TQ_KV_KIND_F16) {
        return;
    }
    rotate_forward(codec, prepared);
    if (layout->has_qjl) {
        float *projected = prepared + d;
        project(codec, prepared, projected);
        float sum = 0.0f;
        for (size_t j = 0; j < d; j++) {
            sum += projected[j];
        }
        projected[d] = sum;
    }
}

void tq_kv_codec_scores(const tq_kv_codec *codec, int qjl_bits, const float *prepared, int n_queries,
                        const uint8_t *rows, size_t row_stride, size_t n, float *out, size_t out_stride)
{
    codec->kernels->scores(layout_for_bits(codec, qjl_bits), prepared, n_queries, rows, row_stride, n, out,
                           out_stride);
}

void tq_kv_codec_accumulate(const tq_kv_codec *codec, int qjl_bits, const uint8_t *rows, size_t row_stride, size_t n,
                            const float *weights, size_t weight_stride, int n_queries, float *acc)
{
    codec->kernels->accumulate(layout_for_bits(codec, qjl_bits), rows, row_stride, n, weights, weight_stride,
                               n_queries, acc);
}

void tq_kv_codec_finish(const tq_kv_codec *codec, float *acc, float scale, float *out)
{
    const tq_kv_layout *layout = &codec->layout;
    const size_t d = layout->head_dim;
    if (layout->kind != TQ_KV_KIND_F16) {
        if (layout->has_qjl) {
            project_transposed_add(codec, acc + d, acc);
        }
        rotate_inverse(codec, acc, 1.0f);
    }
    for (size_t j = 0; j < d; j++) {
        out[j] = acc[j] * scale;
    }
}

/* Positions per work item: 128 amortises the set-up of a kernel call and still leaves
 * many items to share among threads at a few thousand positions. */
#define ATTENTION_BLOCK 128

tq_status tq_kv_attention(const tq_kv_codec *key_codec, const tq_kv_codec *value_codec, const float *q,
                          size_t n_heads, size_t n_kv_heads, const uint8_t *keys, size_t key_stride,
                          const uint8_t *values, size_t value_stride, size_t n, float scale, float *out,
                          tq_error *err)
{
    const size_t d = key_codec->layout.head_dim;
    if (value_codec->layout.head_dim != d) {
        return tq_error_set(err, TQ_ERR_INVALID, "key head_dim %zu differs from value head_dim %zu", d,
                            value_codec->layout.head_dim);
    }
    if (n_kv_heads == 0 || n_heads == 0 || n_heads % n_kv_heads != 0) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "n_heads %zu must be a positive multiple of n_kv_heads %zu", n_heads, n_kv_heads);
    }
    const size_t group = n_heads / n_kv_heads;
    if (group > TQ_KV_MAX_GROUP) {
        return tq_error_set(err, TQ_ERR_INVALID, "%zu query heads per KV head exceeds the maximum %d", group,
                            TQ_KV_MAX_GROUP);
    }
    if (n == 0) {
        return tq_error_set(err, TQ_ERR_INVALID, "attention needs at least one position (n = 0)");
    }

    const size_t query_floats = key_codec->layout.query_floats;
    const size_t acc_floats = value_codec->layout.acc_floats;
    const size_t key_row_bytes = key_codec->row_bytes;
    const size_t value_row_bytes = value_codec->row_bytes;
    const size_t n_blocks = (n + ATTENTION_BLOCK - 1) / ATTENTION_BLOCK;
    const size_t n_items = n_kv_heads * n_blocks;
    int n_threads = omp_get_max_threads();
    if (n_threads < 1) {
        n_threads = 1;
    }

    size_t score_count, acc_count, block_count;
    if (!tq_mul_size(n_heads, n, &score_count) ||
        !tq_mul_size((size_t)n_threads * n_heads, acc_floats, &acc_count) ||
        !tq_mul_size(n_heads, n_blocks, &block_count)) {
        return tq_error_set(err, TQ_ERR_RANGE, "attention over %zu positions and %zu heads overflows size_t", n,
                            n_heads);
    }
    float *prepared = tq_aligned_alloc(n_heads * query_floats * sizeof(float));
    float *scores = tq_aligned_alloc(score_count * sizeof(float));
    float *accs = tq_aligned_alloc(acc_count * sizeof(float));
    float *block_max = tq_aligned_alloc(block_count * sizeof(float));
    float *block_sum = tq_aligned_alloc(block_count * sizeof(float));
    if (prepared == NULL || scores == NULL || accs == NULL || block_max == NULL || block_sum == NULL) {
        tq_aligned_free(prepared);
        tq_aligned_free(scores);
        tq_aligned_free(accs);
        tq_aligned_free(block_max);
        tq_aligned_free(block_sum);
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for attention over %zu positions", n);
    }
    memset(accs, 0, acc_count * sizeof(float));

    #pragma omp parallel num_threads(n_threads)
    {
        float *my_accs = accs + (size_t)omp_get_thread_num() * n_heads * acc_floats;

        #pragma omp for schedule(static)
        for (size_t h = 0; h < n_heads; h++) {
            tq_kv_codec_prepare_query(key_codec, q + h * d, prepared + h * query_floats);
        }

        /* Pass 1: scaled scores and their maximum per block. */
        #pragma omp for schedule(static)
        for (size_t item = 0; item < n_items; item++) {
            const size_t g = item / n_blocks;
            const size_t start = (item % n_blocks) * ATTENTION_BLOCK;
            const size_t count = n - start < ATTENTION_BLOCK ? n - start : ATTENTION_BLOCK;
            float *block_scores = scores + g * group * n + start;
            tq_kv_codec_scores(key_codec, 1, prepared + g * group * query_floats, (int)group,
                               keys + start * key_stride + g * key_row_bytes, key_stride, count, block_scores, n);
            for (size_t h = 0; h < group; h++) {
                float *s = block_scores + h * n;
                float max = -INFINITY;
                for (size_t i = 0; i < count; i++) {
                    s[i] *= scale;
                    max = s[i] > max ? s[i] : max;
                }
                block_max[(g * group + h) * n_blocks + item % n_blocks] = max;
            }
        }

        /* Pass 2: softmax weights against the head's global maximum, then values. */
        #pragma omp for schedule(static)
        for (size_t item = 0; item < n_items; item++) {
            const size_t g = item / n_blocks;
            const size_t block = item % n_blocks;
            const size_t start = block * ATTENTION_BLOCK;
            const size_t count = n - start < ATTENTION_BLOCK ? n - start : ATTENTION_BLOCK;
            for (size_t h = 0; h < group; h++) {
                const float *maxima = block_max + (g * group + h) * n_blocks;
                float max = -INFINITY;
                for (size_t b = 0; b < n_blocks; b++) {
                    max = maxima[b] > max ? maxima[b] : max;
                }
                float *s = scores + (g * group + h) * n + start;
                float sum = 0.0f;
                for (size_t i = 0; i < count; i++) {
                    s[i] = expf(s[i] - max);
                    sum += s[i];
                }
                block_sum[(g * group + h) * n_blocks + block] = sum;
            }
            tq_kv_codec_accumulate(value_codec, 1, values + start * value_stride + g * value_row_bytes, value_stride,
                                   count, scores + g * group * n + start, n, (int)group,
                                   my_accs + g * group * acc_floats);
        }

        /* Pass 3: add the per-thread sums, normalize, undo the rotation once per head. */
        #pragma omp for schedule(static)
        for (size_t h = 0; h < n_heads; h++) {
            float *total = accs + h * acc_floats;
            for (int t = 1; t < n_threads; t++) {
                const float *part = accs + ((size_t)t * n_heads + h) * acc_floats;
                for (size_t j = 0; j < acc_floats; j++) {
                    total[j] += part[j];
                }
            }
            double sum = 0.0;
            for (size_t b = 0; b < n_blocks; b++) {
                sum += block_sum[h * n_blocks + b];
            }
            tq_kv_codec_finish(value_codec, total, (float)(1.0 / sum), out + h * d);
        }
    }

    tq_aligned_free(prepared);
    tq_aligned_free(scores);
    tq_aligned_free(accs);
    tq_aligned_free(block_max);
    tq_aligned_free(block_sum);
    return TQ_OK;
}
