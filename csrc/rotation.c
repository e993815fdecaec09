#include "rotation.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quant_kernels.h"
#include "rng.h"

/* Purpose tags for tq_rng_derive_seed, so each random object has its own stream. */
#define ROTATION_SIGNS_PURPOSE 0x524F545349474E53ull /* "ROTSIGNS" */
#define ROTATION_DENSE_PURPOSE 0x524F5444454E5345ull /* "ROTDENSE" */

struct tq_rotation {
    int dim;
    int is_hadamard;
    const tq_quant_kernels *kernels;
    float *signs;        /* Hadamard path: the diagonal D, entries +-1 */
    float *signs_scaled; /* Hadamard path: D / sqrt(dim), applied after the inverse transform */
    float scale;         /* 1 / sqrt(dim) */
    float *matrix;       /* dense path: R, row-major dim x dim */
    float *matrix_t;     /* dense path: R^T, row-major, so both directions read rows */
};

static int is_power_of_two(int n)
{
    return n > 0 && (n & (n - 1)) == 0;
}

/* Fill q (row-major n x n) with the Q factor of a Gaussian matrix G = Q R with
 * diag(R) > 0, by classical Gram-Schmidt with one reorthogonalisation pass
 * ("CGS2"), which is as accurate as Householder QR for full-rank G. Column j of G
 * becomes column j of Q, so q is transposed into row-major at the end. */
static tq_status dense_orthogonal(int n, uint64_t seed, float *q, tq_error *err)
{
    size_t count;
    if (!tq_mul_size((size_t)n, (size_t)n, &count) || count > SIZE_MAX / sizeof(double)) {
        return tq_error_set(err, TQ_ERR_NOMEM, "rotation dim %d is too large for a dense matrix", n);
    }
    /* cols[j * n + i] is entry (i, j): one column per contiguous run. */
    double *cols = malloc(count * sizeof(double));
    double *proj = malloc((size_t)n * sizeof(double));
    if (cols == NULL || proj == NULL) {
        free(cols);
        free(proj);
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for a dense %d x %d rotation", n, n);
    }

    tq_rng rng;
    tq_rng_seed(&rng, tq_rng_derive_seed(seed, ROTATION_DENSE_PURPOSE));
    /* Draw G row by row, so entry (i, j) is the (i * n + j)-th normal of the stream. */
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            cols[(size_t)j * n + i] = tq_rng_normal(&rng);
        }
    }

    for (int j = 0; j < n; j++) {
        double *v = cols + (size_t)j * n;
        for (int pass = 0; pass < 2; pass++) {
            for (int k = 0; k < j; k++) {
                const double *u = cols + (size_t)k * n;
                double dot = 0.0;
                for (int i = 0; i < n; i++) {
                    dot += u[i] * v[i];
                }
                proj[k] = dot;
            }
            for (int k = 0; k < j; k++) {
                const double *u = cols + (size_t)k * n;
                for (int i = 0; i < n; i++) {
                    v[i] -= proj[k] * u[i];
                }
            }
        }
        double norm = 0.0;
        for (int i = 0; i < n; i++) {
            norm += v[i] * v[i];
        }
        norm = sqrt(norm);
        /* A Gaussian matrix is singular with probability zero; guard anyway. */
        if (!(norm > 0.0)) {
            free(cols);
            free(proj);
            return tq_error_set(err, TQ_ERR_INVALID, "random matrix for rotation seed %llu is singular; use another seed",
                                (unsigned long long)seed);
        }
        for (int i = 0; i < n; i++) {
            v[i] /= norm;
        }
    }

    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            q[(size_t)i * n + j] = (float)cols[(size_t)j * n + i];
        }
    }
    free(cols);
    free(proj);
    return TQ_OK;
}

tq_status tq_rotation_create(int dim, uint64_t seed, tq_isa isa, tq_rotation **out, tq_error *err)
{
    *out = NULL;
    if (dim < 2) {
        return tq_error_set(err, TQ_ERR_INVALID, "rotation dim must be at least 2, got %d", dim);
    }
    const int hadamard = is_power_of_two(dim);
    if (!hadamard && dim > TQ_ROTATION_MAX_DENSE_DIM) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "rotation dim %d is not a power of two and exceeds %d, the maximum of the dense "
                            "rotation; use a power-of-two dim",
                            dim, TQ_ROTATION_MAX_DENSE_DIM);
    }

    tq_rotation *rot = calloc(1, sizeof(*rot));
    if (rot == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for a rotation of dim %d", dim);
    }
    rot->dim = dim;
    rot->is_hadamard = hadamard;
    rot->kernels = tq_quant_kernels_get(isa);
    rot->scale = (float)(1.0 / sqrt((double)dim));

    if (hadamard) {
        rot->signs = tq_aligned_alloc((size_t)dim * sizeof(float));
        rot->signs_scaled = tq_aligned_alloc((size_t)dim * sizeof(float));
        if (rot->signs == NULL || rot->signs_scaled == NULL) {
            tq_rotation_free(rot);
            return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for a rotation of dim %d", dim);
        }
        tq_rng rng;
        tq_rng_seed(&rng, tq_rng_derive_seed(seed, ROTATION_SIGNS_PURPOSE));
        for (int i = 0; i < dim; i++) {
            /* The top bit of each output is one fair coin flip. */
            rot->signs[i] = (tq_rng_next_u64(&rng) >> 63) ? -1.0f : 1.0f;
            rot->signs_scaled[i] = rot->signs[i] * rot->scale;
        }
    } else {
        const size_t bytes = (size_t)dim * (size_t)dim * sizeof(float);
        rot->matrix = tq_aligned_alloc(bytes);
        rot->matrix_t = tq_aligned_alloc(bytes);
        if (rot->matrix == NULL || rot->matrix_t == NULL) {
            tq_rotation_free(rot);
            return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for a dense %d x %d rotation", dim, dim);
        }
        tq_status status = dense_orthogonal(dim, seed, rot->matrix, err);
        if (status != TQ_OK) {
            tq_rotation_free(rot);
            return status;
        }
        for (int i = 0; i < dim; i++) {
            for (int j = 0; j < dim; j++) {
                rot->matrix_t[(size_t)j * dim + i] = rot->matrix[(size_t)i * dim + j];
            }
        }
    }
    *out = rot;
    return TQ_OK;
}

void tq_rotation_free(tq_rotation *rot)
{
    if (rot == NULL) {
        return;
    }
    tq_aligned_free(rot->signs);
    tq_aligned_free(rot->signs_scaled);
    tq_aligned_free(rot->matrix);
    tq_aligned_free(rot->matrix_t);
    free(rot);
}

int tq_rotation_dim(const tq_rotation *rot)
{
    return rot->dim;
}

int tq_rotation_is_hadamard(const tq_rotation *rot)
{
    return rot->is_hadamard;
}

/* out = m in, where in and out may alias. The copy lives on the stack, which the
 * dense dim limit keeps at 16 KiB. */
static void dense_apply(const tq_rotation *rot, const float *m, const float *in, float *out)
{
    float copy[TQ_ROTATION_MAX_DENSE_DIM];
    memcpy(copy, in, (size_t)rot->dim * sizeof(float));
    rot->kernels->matvec(m, copy, out, (size_t)rot->dim, (size_t)rot->dim);
}

void tq_rotation_forward(const tq_rotation *rot, const float *x, float *y)
{
    const int n = rot->dim;
    if (!rot->is_hadamard) {
        dense_apply(rot, rot->matrix, x, y);
        return;
    }
    for (int i = 0; i < n; i++) {
        y[i] = x[i] * rot->signs[i];
    }
    rot->kernels->fwht(y, (size_t)n);
    for (int i = 0; i < n; i++) {
        y[i] *= rot->scale;
    }
}

void tq_rotation_inverse(const tq_rotation *rot, const float *y, float *x)
{
    const int n = rot->dim;
    if (!rot->is_hadamard) {
        dense_apply(rot, rot->matrix_t, y, x);
        return;
    }
    if (x != y) {
        memcpy(x, y, (size_t)n * sizeof(float));
    }
    rot->kernels->fwht(x, (size_t)n);
    for (int i = 0; i < n; i++) {
        x[i] *= rot->signs_scaled[i];
    }
}
