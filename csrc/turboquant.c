#include "turboquant.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codebook.h"
#include "quant_kernels.h"
#include "rng.h"
#include "rotation.h"

/* Purpose tag for tq_rng_derive_seed: the Gaussian QJL matrix S. */
#define QJL_MATRIX_PURPOSE 0x514A4C4741555353ull /* "QJLGAUSS" */

/* Rows scored per block of inner_product: codes of a block stay in cache while
 * every query passes over them. */
#define SCORE_BLOCK_ROWS 256

#define MAX_LEVELS (1 << TQ_QUANT_MAX_CODE_BITS)

struct tq_turboquant {
    tq_turboquant_kind kind;
    int dim;
    int bits_x2;
    tq_isa isa;
    const tq_quant_kernels *kernels;
    tq_turboquant_layout layout;
    tq_rotation *rotation;
    float codebook_high[MAX_LEVELS];
    float boundaries_high[MAX_LEVELS - 1];
    float codebook_low[MAX_LEVELS];
    float boundaries_low[MAX_LEVELS - 1];
    float *gaussian;   /* PROD: S, row-major dim x dim */
    float *gaussian_t; /* PROD: S^T, row-major */
    float qjl_scale;   /* sqrt(pi/2) / dim */
};

static const float sign_table[2] = {-1.0f, 1.0f};
static const float zero_boundary[1] = {0.0f};

tq_status tq_turboquant_layout_get(tq_turboquant_kind kind, int dim, int bits_x2, tq_turboquant_layout *out,
                                   tq_error *err)
{
    memset(out, 0, sizeof(*out));
    out->dim = dim;
    if (dim < 2) {
        return tq_error_set(err, TQ_ERR_INVALID, "dim must be at least 2, got %d", dim);
    }
    if (kind == TQ_TURBOQUANT_MSE) {
        if (bits_x2 < 2 || bits_x2 > 8) {
            return tq_error_set(err, TQ_ERR_INVALID,
                                "TurboQuantMSE bits must be one of 1, 1.5, 2, 2.5, 3, 3.5, 4; got %g",
                                bits_x2 / 2.0);
        }
        out->bits_high = (bits_x2 + 1) / 2;
        out->bits_low = bits_x2 / 2;
        out->dim_high = (bits_x2 % 2 == 1) ? dim / 2 : dim;
    } else if (kind == TQ_TURBOQUANT_PROD) {
        if (bits_x2 < 2 || bits_x2 > 8 || bits_x2 % 2 != 0) {
            return tq_error_set(err, TQ_ERR_INVALID, "TurboQuantProd bits must be one of 1, 2, 3, 4; got %g",
                                bits_x2 / 2.0);
        }
        out->bits_high = bits_x2 / 2 - 1;
        out->bits_low = out->bits_high;
        out->dim_high = dim;
    } else {
        return tq_error_set(err, TQ_ERR_INVALID, "unknown TurboQuant kind %d; expected 0 (MSE) or 1 (Prod)", (int)kind);
    }
    out->high_bytes = ((size_t)out->dim_high * (size_t)out->bits_high + 7) / 8;
    out->low_bytes = ((size_t)(dim - out->dim_high) * (size_t)out->bits_low + 7) / 8;
    out->sign_bytes = kind == TQ_TURBOQUANT_PROD ? ((size_t)dim + 7) / 8 : 0;
    out->norm_offset = out->high_bytes + out->low_bytes + out->sign_bytes;
    out->row_bytes = out->norm_offset + (kind == TQ_TURBOQUANT_PROD ? 8 : 4);
    return TQ_OK;
}

static tq_status set_codebook(int dim, int bits, const float *given, float *codebook, float *boundaries, tq_error *err)
{
    if (bits == 0) {
        return TQ_OK;
    }
    const int levels = 1 << bits;
    if (given != NULL) {
        memcpy(codebook, given, (size_t)levels * sizeof(float));
    } else {
        tq_status status = tq_codebook_lloyd_max(TQ_DENSITY_SPHERE, dim, bits, codebook, NULL, err);
        if (status != TQ_OK) {
            return status;
        }
    }
    for (int i = 0; i < levels; i++) {
        if (!isfinite(codebook[i]) || (i > 0 && !(codebook[i] > codebook[i - 1]))) {
            return tq_error_set(err, TQ_ERR_INVALID,
                                "codebook for %d bits must contain %d finite, strictly ascending centroids; "
                                "entry %d is %g",
                                bits, levels, i, (double)codebook[i]);
        }
    }
    for (int i = 0; i + 1 < levels; i++) {
        boundaries[i] = 0.5f * (codebook[i] + codebook[i + 1]);
    }
    return TQ_OK;
}

tq_status tq_turboquant_create(tq_turboquant_kind kind, int dim, int bits_x2, uint64_t seed,
                               const float *codebook_high, const float *codebook_low, tq_isa isa, tq_turboquant **out,
                               tq_error *err)
{
    *out = NULL;
    tq_turboquant_layout layout;
    tq_status status = tq_turboquant_layout_get(kind, dim, bits_x2, &layout, err);
    if (status != TQ_OK) {
        return status;
    }
    tq_turboquant *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for a quantizer of dim %d", dim);
    }
    q->kind = kind;
    q->dim = dim;
    q->bits_x2 = bits_x2;
    q->isa = isa;
    q->kernels = tq_quant_kernels_get(isa);
    q->layout = layout;
    q->qjl_scale = (float)(sqrt(M_PI / 2.0) / dim);

    status = set_codebook(dim, layout.bits_high, codebook_high, q->codebook_high, q->boundaries_high, err);
    if (status == TQ_OK && layout.dim_high < dim) {
        status = set_codebook(dim, layout.bits_low, codebook_low, q->codebook_low, q->boundaries_low, err);
    }
    if (status == TQ_OK) {
        status = tq_rotation_create(dim, seed, isa, &q->rotation, err);
    }
    if (status == TQ_OK && kind == TQ_TURBOQUANT_PROD) {
        size_t count;
        if (!tq_mul_size((size_t)dim, (size_t)dim, &count) || !tq_mul_size(count, sizeof(float), &count)) {
            status = tq_error_set(err, TQ_ERR_NOMEM, "dim %d is too large for the QJL matrix", dim);
        } else {
            q->gaussian = tq_aligned_alloc(count);
            q->gaussian_t = tq_aligned_alloc(count);
            if (q->gaussian == NULL || q->gaussian_t == NULL) {
                status = tq_error_set(err, TQ_ERR_NOMEM, "out of memory for the %d x %d QJL matrix", dim, dim);
            }
        }
        if (status == TQ_OK) {
            tq_rng rng;
            tq_rng_seed(&rng, tq_rng_derive_seed(seed, QJL_MATRIX_PURPOSE));
            for (size_t i = 0; i < (size_t)dim; i++) {
                for (size_t j = 0; j < (size_t)dim; j++) {
                    const float value = (float)tq_rng_normal(&rng);
                    q->gaussian[i * dim + j] = value;
                    q->gaussian_t[j * dim + i] = value;
                }
            }
        }
    }
    if (status != TQ_OK) {
        tq_turboquant_free(q);
        return status;
    }
    *out = q;
    return TQ_OK;
}

void tq_turboquant_free(tq_turboquant *q)
{
    if (q == NULL) {
        return;
    }
    tq_rotation_free(q->rotation);
    tq_aligned_free(q->gaussian);
    tq_aligned_free(q->gaussian_t);
    free(q);
}

const tq_turboquant_layout *tq_turboquant_get_layout(const tq_turboquant *q)
{
    return &q->layout;
}

/* Two scratch vectors of dim floats per thread. */
static float *alloc_scratch(int dim, int vectors)
{
    return tq_aligned_alloc((size_t)dim * (size_t)vectors * sizeof(float));
}

/* Write the MSE-stage reconstruction of one row, in the rotated basis, into v. */
static void decode_mse_rotated(const tq_turboquant *q, const uint8_t *row, float *v)
{
    const tq_turboquant_layout *L = &q->layout;
    if (L->bits_high == 0) {
        memset(v, 0, (size_t)q->dim * sizeof(float));
        return;
    }
    q->kernels->decode(row, (size_t)L->dim_high, L->bits_high, q->codebook_high, v);
    if (L->dim_high < q->dim) {
        q->kernels->decode(row + L->high_bytes, (size_t)(q->dim - L->dim_high), L->bits_low, q->codebook_low,
                           v + L->dim_high);
    }
}

static void encode_row(const tq_turboquant *q, const float *x, uint8_t *row, float *scratch, int *bad)
{
    const tq_turboquant_layout *L = &q->layout;
    const int dim = q->dim;
    float *v = scratch;
    float *w = scratch + dim;

    const double norm = sqrt(q->kernels->sum_squares(x, (size_t)dim));
    if (!(norm <= FLT_MAX)) {
        *bad = 1;
        memset(row, 0, L->row_bytes);
        return;
    }
    const double inverse = norm > 0.0 ? 1.0 / norm : 0.0;
    if (inverse >= FLT_MIN && inverse <= FLT_MAX) {
        const float inverse_f = (float)inverse;
        for (int i = 0; i < dim; i++) {
            v[i] = x[i] * inverse_f;
        }
    } else {
        /* 1/norm is not a normal float for norms below about 3e-39 or above about
         * 8.5e37 (or for a zero vector), so scale in double to keep full precision. */
        for (int i = 0; i < dim; i++) {
            v[i] = (float)((double)x[i] * inverse);
        }
    }
    tq_rotation_forward(q->rotation, v, v);

    if (L->bits_high > 0) {
        q->kernels->encode(v, (size_t)L->dim_high, L->bits_high, q->boundaries_high, row);
        if (L->dim_high < dim) {
            q->kernels->encode(v + L->dim_high, (size_t)(dim - L->dim_high), L->bits_low, q->boundaries_low,
                               row + L->high_bytes);
        }
    }
    const float norm_f = (float)norm;
    memcpy(row + L->norm_offset, &norm_f, sizeof(float));

    if (q->kind == TQ_TURBOQUANT_PROD) {
        decode_mse_rotated(q, row, w);
        for (int i = 0; i < dim; i++) {
            w[i] = v[i] - w[i];
        }
        const double residual_sum = q->kernels->sum_squares(w, (size_t)dim);
        q->kernels->matvec(q->gaussian, w, v, (size_t)dim, (size_t)dim);
        q->kernels->encode(v, (size_t)dim, 1, zero_boundary, row + L->high_bytes + L->low_bytes);
        const float residual_norm = (float)sqrt(residual_sum);
        memcpy(row + L->norm_offset + sizeof(float), &residual_norm, sizeof(float));
    }
}

tq_status tq_turboquant_encode(const tq_turboquant *q, const float *x, size_t n, uint8_t *codes, tq_error *err)
{
    const size_t dim = (size_t)q->dim;
    const size_t row_bytes = q->layout.row_bytes;
    int out_of_memory = 0;
    size_t first_bad = SIZE_MAX;

#pragma omp parallel if (n > 1)
    {
        float *scratch = alloc_scratch(q->dim, 2);
        if (scratch == NULL) {
#pragma omp atomic write
            out_of_memory = 1;
        }
#pragma omp for schedule(static)
        for (size_t r = 0; r < n; r++) {
            if (scratch == NULL) {
                continue;
            }
            int bad = 0;
            encode_row(q, x + r * dim, codes + r * row_bytes, scratch, &bad);
            if (bad) {
#pragma omp critical(tq_turboquant_bad_row)
                if (r < first_bad) {
                    first_bad = r;
                }
            }
        }
        tq_aligned_free(scratch);
    }

    if (out_of_memory) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for quantizer scratch buffers");
    }
    if (first_bad != SIZE_MAX) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "row %zu of x has a non-finite L2 norm: values must be finite and the norm at most "
                            "3.4e38 (float32 max)",
                            first_bad);
    }
    return TQ_OK;
}

static float row_norm(const tq_turboquant *q, const uint8_t *row, int which)
{
    float value;
    memcpy(&value, row + q->layout.norm_offset + (size_t)which * sizeof(float), sizeof(float));
    return value;
}

tq_status tq_turboquant_decode(const tq_turboquant *q, const uint8_t *codes, size_t n, float *x, tq_error *err)
{
    const size_t dim = (size_t)q->dim;
    const tq_turboquant_layout *L = &q->layout;
    int out_of_memory = 0;

#pragma omp parallel if (n > 1)
    {
        float *scratch = alloc_scratch(q->dim, 2);
        if (scratch == NULL) {
#pragma omp atomic write
            out_of_memory = 1;
        }
#pragma omp for schedule(static)
        for (size_t r = 0; r < n; r++) {
            if (scratch == NULL) {
                continue;
            }
            const uint8_t *row = codes + r * L->row_bytes;
            float *out = x + r * dim;
            decode_mse_rotated(q, row, out);
            if (q->kind == TQ_TURBOQUANT_PROD) {
                float *signs = scratch;
                float *back = scratch + dim;
                q->kernels->decode(row + L->high_bytes + L->low_bytes, dim, 1, sign_table, signs);
                q->kernels->matvec(q->gaussian_t, signs, back, dim, dim);
                const float scale = q->qjl_scale * row_norm(q, row, 1);
                for (size_t i = 0; i < dim; i++) {
                    out[i] += scale * back[i];
                }
            }
            tq_rotation_inverse(q->rotation, out, out);
            const float norm = row_norm(q, row, 0);
            for (size_t i = 0; i < dim; i++) {
                out[i] *= norm;
            }
        }
        tq_aligned_free(scratch);
    }
    if (out_of_memory) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for quantizer scratch buffers");
    }
    return TQ_OK;
}

/* Write estimates of <query, x_r> for rows [start, end) into scores[start..end), given
 * the rotated query and, for PROD, the projected query S R y. */
static void score_block(const tq_turboquant *q, const uint8_t *codes, size_t start, size_t end, const float *rotated,
                        const float *projected, float *scores)
{
    const tq_turboquant_layout *L = &q->layout;
    const uint8_t *block = codes + start * L->row_bytes;
    const size_t rows = end - start;
    float high[SCORE_BLOCK_ROWS];
    float low[SCORE_BLOCK_ROWS];
    float qjl[SCORE_BLOCK_ROWS];

    if (L->bits_high > 0) {
        q->kernels->dot_rows(block, L->row_bytes, rows, (size_t)L->dim_high, L->bits_high, q->codebook_high, rotated,
                             high);
    } else {
        memset(high, 0, rows * sizeof(float));
    }
    if (L->dim_high < q->dim) {
        q->kernels->dot_rows(block + L->high_bytes, L->row_bytes, rows, (size_t)(q->dim - L->dim_high), L->bits_low,
                             q->codebook_low, rotated + L->dim_high, low);
        for (size_t r = 0; r < rows; r++) {
            high[r] += low[r];
        }
    }
    if (q->kind == TQ_TURBOQUANT_PROD) {
        q->kernels->dot_rows(block + L->high_bytes + L->low_bytes, L->row_bytes, rows, (size_t)q->dim, 1, sign_table,
                             projected, qjl);
        for (size_t r = 0; r < rows; r++) {
            high[r] += q->qjl_scale * row_norm(q, block + r * L->row_bytes, 1) * qjl[r];
        }
    }
    for (size_t r = 0; r < rows; r++) {
        scores[start + r] = row_norm(q, block + r * L->row_bytes, 0) * high[r];
    }
}

tq_status tq_turboquant_inner_product(const tq_turboquant *q, const uint8_t *codes, size_t n, const float *queries,
                                      size_t n_queries, float *out, tq_error *err)
{
    if (n == 0 || n_queries == 0) {
        return TQ_OK;
    }
    const size_t dim = (size_t)q->dim;
    const int per_query = q->kind == TQ_TURBOQUANT_PROD ? 2 : 1;
    size_t count;
    if (!tq_mul_size(n_queries, dim * (size_t)per_query, &count) || !tq_mul_size(count, sizeof(float), &count)) {
        return tq_error_set(err, TQ_ERR_NOMEM, "%zu queries are too many for one call", n_queries);
    }
    /* Row j * per_query contains R y_j, and for PROD row j * 2 + 1 contains S R y_j. */
    float *prepared = tq_aligned_alloc(count);
    if (prepared == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for %zu rotated queries", n_queries);
    }

#pragma omp parallel for schedule(static) if (n_queries > 1)
    for (size_t j = 0; j < n_queries; j++) {
        float *rotated = prepared + j * per_query * dim;
        tq_rotation_forward(q->rotation, queries + j * dim, rotated);
        if (per_query == 2) {
            q->kernels->matvec(q->gaussian, rotated, rotated + dim, dim, dim);
        }
    }

    const size_t blocks = (n + SCORE_BLOCK_ROWS - 1) / SCORE_BLOCK_ROWS;
#pragma omp parallel for schedule(static) if (blocks > 1)
    for (size_t b = 0; b < blocks; b++) {
        const size_t start = b * SCORE_BLOCK_ROWS;
        const size_t end = start + SCORE_BLOCK_ROWS < n ? start + SCORE_BLOCK_ROWS : n;
        for (size_t j = 0; j < n_queries; j++) {
            const float *rotated = prepared + j * per_query * dim;
            const float *projected = per_query == 2 ? rotated + dim : NULL;
            score_block(q, codes, start, end, rotated, projected, out + j * n);
        }
    }
    tq_aligned_free(prepared);
    return TQ_OK;
}
