#include "qjl.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "qjl_polar_kernels.h"
#include "rng.h"

/* Purpose tag for tq_rng_derive_seed, so the sketch differs from other streams of one seed. */
#define QJL_SEED_PURPOSE 0x514A4Cu /* "QJL" */

struct tq_qjl {
    int dim;
    int sketch_dim;
    int bits;
    tq_isa isa;
    const tq_qjl_polar_kernels *kernels;
    float *sketch;       /* sketch_dim x dim, row-major, i.i.d. N(0, 1) */
    float levels[4];     /* ascending quantizer levels for N(0, 1) input */
    float thresholds[3]; /* decision boundaries between adjacent levels */
    double gain;         /* E[u Q(u)] */
    double fourth_moment;
    float score_scale; /* turns the kernel sum into the estimate, divided by ||x|| */
};

static double normal_pdf(double u)
{
    return exp(-0.5 * u * u) / sqrt(2.0 * M_PI);
}

static double normal_cdf(double u)
{
    return 0.5 * erfc(-u / sqrt(2.0));
}

/* Lloyd-Max quantizer of N(0, 1) with 4 levels +-inner, +-outer. By symmetry one threshold
 * is 0 and the other two are +-t with t = (inner + outer) / 2; each level is the mean of
 * N(0, 1) over its cell, E[u | a < u < b] = (pdf(a) - pdf(b)) / (cdf(b) - cdf(a)).
 * The iteration converges to inner 0.4528, outer 1.5104, MSE 0.1175. */
static void gaussian_lloyd_max_2bit(double *inner, double *outer)
{
    double a = 0.5;
    double b = 1.5;
    for (int iter = 0; iter < 1000; iter++) {
        const double t = 0.5 * (a + b);
        const double next_a = (normal_pdf(0.0) - normal_pdf(t)) / (normal_cdf(t) - 0.5);
        const double next_b = normal_pdf(t) / (1.0 - normal_cdf(t));
        const double change = fabs(next_a - a) + fabs(next_b - b);
        a = next_a;
        b = next_b;
        if (change < 1e-15) {
            break;
        }
    }
    *inner = a;
    *outer = b;
}

/* Integral of u^2 pdf(u) over [lo, hi]: the antiderivative is cdf(u) - u pdf(u). */
static double second_moment(double lo, double hi)
{
    const double upper = isinf(hi) ? 1.0 : normal_cdf(hi) - hi * normal_pdf(hi);
    return upper - (normal_cdf(lo) - lo * normal_pdf(lo));
}

void tq_qjl_gaussian_levels(int bits, tq_qjl_gaussian_quantizer *out)
{
    memset(out, 0, sizeof(*out));
    if (bits == 1) {
        /* Q(u) = sign(u) sqrt(2/pi): E[u Q(u)] = E[Q(u)^2] = E[u^2 Q(u)^2] = 2/pi. */
        const double level = sqrt(2.0 / M_PI);
        out->levels[0] = (float)-level;
        out->levels[1] = (float)level;
        out->thresholds[0] = 0.0f;
        out->gain = 2.0 / M_PI;
        out->fourth_moment = 2.0 / M_PI;
        return;
    }

    double inner, outer;
    gaussian_lloyd_max_2bit(&inner, &outer);
    const double t = 0.5 * (inner + outer);
    out->levels[0] = (float)-outer;
    out->levels[1] = (float)-inner;
    out->levels[2] = (float)inner;
    out->levels[3] = (float)outer;
    out->thresholds[0] = (float)-t;
    out->thresholds[1] = 0.0f;
    out->thresholds[2] = (float)t;

    /* Both sides of 0 contribute equally, hence the factor 2. */
    const double p_inner = normal_cdf(t) - 0.5;
    const double p_outer = 1.0 - normal_cdf(t);
    out->gain = 2.0 * (inner * inner * p_inner + outer * outer * p_outer);
    out->fourth_moment = 2.0 * (inner * inner * second_moment(0.0, t) + outer * outer * second_moment(t, INFINITY));
}

static void set_levels(tq_qjl *qjl)
{
    tq_qjl_gaussian_quantizer quantizer;
    tq_qjl_gaussian_levels(qjl->bits, &quantizer);
    memcpy(qjl->levels, quantizer.levels, sizeof(qjl->levels));
    memcpy(qjl->thresholds, quantizer.thresholds, sizeof(qjl->thresholds));
    qjl->gain = quantizer.gain;
    qjl->fourth_moment = quantizer.fourth_moment;
    /* At 1 bit the kernel sums +-z_i, so the level is folded into the scale: sqrt(pi/2) / m
     * overall. At 2 bits the kernel multiplies by the levels themselves. */
    const double level = qjl->bits == 1 ? (double)quantizer.levels[1] : 1.0;
    qjl->score_scale = (float)(level / (qjl->gain * qjl->sketch_dim));
}

tq_status tq_qjl_create(int dim, int sketch_dim, int bits, uint64_t seed, tq_isa isa, tq_qjl **out, tq_error *err)
{
    *out = NULL;
    if (dim < 1 || dim > TQ_QJL_MAX_DIM) {
        return tq_error_set(err, TQ_ERR_INVALID, "QJL dim=%d is out of range; use 1 to %d", dim, TQ_QJL_MAX_DIM);
    }
    if (sketch_dim < 1 || sketch_dim > TQ_QJL_MAX_DIM) {
        return tq_error_set(err, TQ_ERR_INVALID, "QJL sketch_dim=%d is out of range; use 1 to %d", sketch_dim,
                            TQ_QJL_MAX_DIM);
    }
    if (bits != 1 && bits != 2) {
        return tq_error_set(err, TQ_ERR_INVALID, "QJL bits=%d is not supported; use 1 or 2", bits);
    }

    size_t count, bytes;
    if (!tq_mul_size((size_t)sketch_dim, (size_t)dim, &count) || !tq_mul_size(count, sizeof(float), &bytes)) {
        return tq_error_set(err, TQ_ERR_NOMEM, "QJL sketch of %d x %d floats is too large", sketch_dim, dim);
    }
    tq_qjl *qjl = calloc(1, sizeof(*qjl));
    if (qjl == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating a QJL quantizer");
    }
    qjl->sketch = tq_aligned_alloc(bytes);
    if (qjl->sketch == NULL) {
        free(qjl);
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating a QJL sketch of %d x %d floats",
                            sketch_dim, dim);
    }
    qjl->dim = dim;
    qjl->sketch_dim = sketch_dim;
    qjl->bits = bits;
    qjl->isa = isa;
    qjl->kernels = tq_qjl_polar_kernels_for(isa);

    tq_rng rng;
    tq_rng_seed(&rng, tq_rng_derive_seed(seed, QJL_SEED_PURPOSE));
    for (size_t i = 0; i < count; i++) {
        qjl->sketch[i] = (float)tq_rng_normal(&rng);
    }
    set_levels(qjl);
    *out = qjl;
    return TQ_OK;
}

void tq_qjl_free(tq_qjl *qjl)
{
    if (qjl != NULL) {
        tq_aligned_free(qjl->sketch);
        free(qjl);
    }
}

int tq_qjl_dim(const tq_qjl *qjl)
{
    return qjl->dim;
}

int tq_qjl_sketch_dim(const tq_qjl *qjl)
{
    return qjl->sketch_dim;
}

int tq_qjl_bits(const tq_qjl *qjl)
{
    return qjl->bits;
}

tq_isa tq_qjl_isa(const tq_qjl *qjl)
{
    return qjl->isa;
}

size_t tq_qjl_code_bytes(const tq_qjl *qjl)
{
    return ((size_t)qjl->sketch_dim * (size_t)qjl->bits + 7) / 8;
}

const float *tq_qjl_levels(const tq_qjl *qjl)
{
    return qjl->levels;
}

double tq_qjl_gain(const tq_qjl *qjl)
{
    return qjl->gain;
}

double tq_qjl_fourth_moment(const tq_qjl *qjl)
{
    return qjl->fourth_moment;
}

static void project_row(const tq_qjl *qjl, const float *y, float *projected)
{
    const size_t dim = (size_t)qjl->dim;
    for (size_t i = 0; i < (size_t)qjl->sketch_dim; i++) {
        projected[i] = qjl->kernels->dot(qjl->sketch + i * dim, y, dim);
    }
}

/* Project four consecutive rows of y: each sketch row is loaded once for all four, which
 * divides the memory traffic of S by four. Results equal four project_row calls. */
static void project_four_rows(const tq_qjl *qjl, const float *y, float *projected)
{
    const size_t dim = (size_t)qjl->dim;
    const size_t m = (size_t)qjl->sketch_dim;
    for (size_t i = 0; i < m; i++) {
        float dots[4];
        qjl->kernels->dot4(qjl->sketch + i * dim, y, dim, dim, dots);
        for (size_t r = 0; r < 4; r++) {
            projected[r * m + i] = dots[r];
        }
    }
}

/* Project rows [first, first + count) of y, four at a time while at least four remain. */
static void project_rows(const tq_qjl *qjl, const float *y, size_t first, size_t count, float *projected)
{
    const size_t dim = (size_t)qjl->dim;
    const size_t m = (size_t)qjl->sketch_dim;
    size_t r = 0;
    for (; r + 4 <= count; r += 4) {
        project_four_rows(qjl, y + (first + r) * dim, projected + r * m);
    }
    for (; r < count; r++) {
        project_row(qjl, y + (first + r) * dim, projected + r * m);
    }
}

/* Rows per group in project and quantize: enough for the four-row kernel. */
#define QJL_ROW_GROUP 4

void tq_qjl_project(const tq_qjl *qjl, const float *y, size_t n, float *projected)
{
    const size_t m = (size_t)qjl->sketch_dim;
    const size_t groups = (n + QJL_ROW_GROUP - 1) / QJL_ROW_GROUP;
#pragma omp parallel for schedule(static) if (n > 1 && n * m * (size_t)qjl->dim > 65536)
    for (size_t g = 0; g < groups; g++) {
        const size_t first = g * QJL_ROW_GROUP;
        const size_t count = n - first < QJL_ROW_GROUP ? n - first : QJL_ROW_GROUP;
        project_rows(qjl, y, first, count, projected + first * m);
    }
}

static float row_norm(const float *x, size_t dim)
{
    double sum_squares = 0.0;
    for (size_t k = 0; k < dim; k++) {
        sum_squares += (double)x[k] * (double)x[k];
    }
    return (float)sqrt(sum_squares);
}

/* Write the codes of a row from its norm and its projection S x. */
static void encode_projected(const tq_qjl *qjl, float norm, const float *projected, uint8_t *codes)
{
    const size_t m = (size_t)qjl->sketch_dim;
    memset(codes, 0, tq_qjl_code_bytes(qjl));
    if (norm == 0.0f) {
        return;
    }
    if (qjl->bits == 1) {
        /* sign(S x) equals sign(S x / ||x||), so no division is needed. */
        for (size_t i = 0; i < m; i++) {
            if (projected[i] >= 0.0f) {
                codes[i >> 3] |= (uint8_t)(1u << (i & 7));
            }
        }
        return;
    }

    const float inv_norm = 1.0f / norm;
    for (size_t i = 0; i < m; i++) {
        const float u = projected[i] * inv_norm;
        const unsigned code = (unsigned)(u >= qjl->thresholds[0]) + (unsigned)(u >= qjl->thresholds[1]) +
                              (unsigned)(u >= qjl->thresholds[2]);
        codes[i >> 2] |= (uint8_t)(code << (2 * (i & 3)));
    }
}

float tq_qjl_quantize_row(const tq_qjl *qjl, const float *x, float *scratch, uint8_t *codes)
{
    const float norm = row_norm(x, (size_t)qjl->dim);
    if (norm != 0.0f) {
        project_row(qjl, x, scratch);
    }
    encode_projected(qjl, norm, scratch, codes);
    return norm;
}

tq_status tq_qjl_quantize(const tq_qjl *qjl, const float *x, size_t n, uint8_t *codes, float *norms, tq_error *err)
{
    if (n == 0) {
        return TQ_OK;
    }
    const size_t dim = (size_t)qjl->dim;
    const size_t m = (size_t)qjl->sketch_dim;
    const size_t code_bytes = tq_qjl_code_bytes(qjl);
    const size_t groups = (n + QJL_ROW_GROUP - 1) / QJL_ROW_GROUP;
    const int threads = omp_get_max_threads();
    size_t scratch_bytes;
    if (!tq_mul_size((size_t)threads * QJL_ROW_GROUP * m, sizeof(float), &scratch_bytes)) {
        return tq_error_set(err, TQ_ERR_NOMEM, "QJL scratch for %d threads is too large", threads);
    }
    float *scratch = tq_aligned_alloc(scratch_bytes);
    if (scratch == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating QJL scratch for %d threads", threads);
    }

#pragma omp parallel num_threads(threads) if (n > 1 && n * m * dim > 65536)
    {
        float *projected = scratch + (size_t)omp_get_thread_num() * QJL_ROW_GROUP * m;
#pragma omp for schedule(static)
        for (size_t g = 0; g < groups; g++) {
            const size_t first = g * QJL_ROW_GROUP;
            const size_t count = n - first < QJL_ROW_GROUP ? n - first : QJL_ROW_GROUP;
            project_rows(qjl, x, first, count, projected);
            for (size_t r = 0; r < count; r++) {
                norms[first + r] = row_norm(x + (first + r) * dim, dim);
                encode_projected(qjl, norms[first + r], projected + r * m, codes + (first + r) * code_bytes);
            }
        }
    }
    tq_aligned_free(scratch);
    return TQ_OK;
}

float tq_qjl_score_row(const tq_qjl *qjl, const uint8_t *codes, float norm, const float *projected)
{
    const size_t m = (size_t)qjl->sketch_dim;
    const float sum = qjl->bits == 1 ? qjl->kernels->sign_dot(codes, projected, m)
                                     : qjl->kernels->level2_dot(codes, projected, qjl->levels, m);
    return norm * qjl->score_scale * sum;
}

void tq_qjl_inner_product(const tq_qjl *qjl, const uint8_t *codes, const float *norms, size_t n,
                          const float *projected, size_t n_queries, float *out)
{
    const size_t m = (size_t)qjl->sketch_dim;
    const size_t code_bytes = tq_qjl_code_bytes(qjl);
#pragma omp parallel for schedule(static) if (n * n_queries * m > 65536)
    for (size_t r = 0; r < n; r++) {
        for (size_t q = 0; q < n_queries; q++) {
            out[q * n + r] = tq_qjl_score_row(qjl, codes + r * code_bytes, norms[r], projected + q * m);
        }
    }
}

void tq_qjl_dequantize_row_add(const tq_qjl *qjl, const uint8_t *codes, float norm, float weight, float *out)
{
    const size_t dim = (size_t)qjl->dim;
    const size_t m = (size_t)qjl->sketch_dim;
    const float scale = weight * norm * qjl->score_scale;
    if (scale == 0.0f) {
        return;
    }
    for (size_t i = 0; i < m; i++) {
        float value;
        if (qjl->bits == 1) {
            value = ((codes[i >> 3] >> (i & 7)) & 1) ? scale : -scale;
        } else {
            value = scale * qjl->levels[(codes[i >> 2] >> (2 * (i & 3))) & 3];
        }
        const float *row = qjl->sketch + i * dim;
        for (size_t k = 0; k < dim; k++) {
            out[k] += value * row[k];
        }
    }
}

void tq_qjl_dequantize(const tq_qjl *qjl, const uint8_t *codes, const float *norms, size_t n, float *out)
{
    const size_t dim = (size_t)qjl->dim;
    const size_t code_bytes = tq_qjl_code_bytes(qjl);
#pragma omp parallel for schedule(static) if (n * dim * (size_t)qjl->sketch_dim > 65536)
    for (size_t r = 0; r < n; r++) {
        memset(out + r * dim, 0, dim * sizeof(float));
        tq_qjl_dequantize_row_add(qjl, codes + r * code_bytes, norms[r], 1.0f, out + r * dim);
    }
}
