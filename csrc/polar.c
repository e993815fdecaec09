#include "polar.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "codebook.h"
#include "qjl.h"
#include "qjl_polar_kernels.h"
#include "rng.h"
#include "rotation.h"

/* Purpose tags for tq_rng_derive_seed, so the rotation and the residual sketch of one
 * seed are independent. */
#define POLAR_ROTATION_PURPOSE 0x504F4C52u /* "POLR" */
#define POLAR_QJL_PURPOSE 0x504F4C51u      /* "POLQ" */

/* Loops with fewer multiply-adds than this run on the calling thread, because starting a
 * parallel region costs more than it saves (one key per decode step, for example). */
#define POLAR_PARALLEL_MIN_WORK ((size_t)65536)

/* Rough multiply-adds per coordinate to encode or decode a row (rotation and polar step). */
#define POLAR_WORK_PER_COORDINATE ((size_t)8)

/* Memory for the per-query angle tables of one block of queries in inner_product. */
#define POLAR_TABLE_BUDGET_BYTES ((size_t)8 << 20)

struct tq_polar {
    int dim;
    int pairs; /* dim / 2 */
    int radius_bits;
    int angle_bits;
    int qjl_bits;
    tq_isa isa;
    const tq_qjl_polar_kernels *kernels;
    tq_rotation *rotation;
    tq_qjl *qjl; /* residual sketch, NULL when qjl_bits is 0 */
    float radius[1 << TQ_POLAR_MAX_BITS];
    float radius_thresholds[(1 << TQ_POLAR_MAX_BITS) - 1]; /* midpoints of adjacent radii */
    float angle_cos[1 << TQ_POLAR_MAX_BITS];               /* cos and sin of each cell centre */
    float angle_sin[1 << TQ_POLAR_MAX_BITS];
    float boundary_cos[1 << (TQ_POLAR_MAX_BITS - 1)]; /* direction of cell boundary k in [0, pi) */
    float boundary_sin[1 << (TQ_POLAR_MAX_BITS - 1)];
    size_t radius_bytes; /* per row */
    size_t angle_bytes;
    size_t qjl_bytes;
};

/* ---------------------------------------------------------------- bit streams */

/* Store value (bits wide, bits <= 8) as field index of an LSB-first stream that starts zeroed. */
static void put_field(uint8_t *stream, size_t index, int bits, unsigned value)
{
    const size_t position = index * (size_t)bits;
    const size_t byte = position >> 3;
    const unsigned shift = (unsigned)(position & 7);
    stream[byte] |= (uint8_t)(value << shift);
    if (shift + (unsigned)bits > 8) {
        stream[byte + 1] |= (uint8_t)(value >> (8 - shift));
    }
}

/* Unpack count fields of the given width into one byte each. */
static void unpack_fields(const uint8_t *stream, size_t count, int bits, uint8_t *out)
{
    const unsigned mask = (1u << bits) - 1u;
    for (size_t index = 0; index < count; index++) {
        const size_t position = index * (size_t)bits;
        const size_t byte = position >> 3;
        const unsigned shift = (unsigned)(position & 7);
        unsigned value = (unsigned)stream[byte] >> shift;
        if (shift + (unsigned)bits > 8) {
            value |= (unsigned)stream[byte + 1] << (8 - shift);
        }
        out[index] = (uint8_t)(value & mask);
    }
}

static size_t stream_bytes(int pairs, int bits)
{
    return ((size_t)pairs * (size_t)bits + 7) / 8;
}

/* ---------------------------------------------------------------- creation */

static tq_status set_radius_codebook(tq_polar *polar, const float *codebook, tq_error *err)
{
    const int levels = 1 << polar->radius_bits;
    if (codebook != NULL) {
        for (int k = 0; k < levels; k++) {
            if (!isfinite(codebook[k]) || codebook[k] < 0.0f) {
                return tq_error_set(err, TQ_ERR_INVALID,
                                    "radius_codebook[%d] is %g; radii must be finite and non-negative", k,
                                    (double)codebook[k]);
            }
            if (k > 0 && codebook[k] < codebook[k - 1]) {
                return tq_error_set(err, TQ_ERR_INVALID,
                                    "radius_codebook[%d] = %g is below radius_codebook[%d] = %g; sort it ascending",
                                    k, (double)codebook[k], k - 1, (double)codebook[k - 1]);
            }
            polar->radius[k] = codebook[k];
        }
    } else if (polar->dim == 2) {
        /* A 2-D unit vector is one pair of radius exactly 1. */
        for (int k = 0; k < levels; k++) {
            polar->radius[k] = 1.0f;
        }
    } else {
        tq_status status =
            tq_codebook_lloyd_max(TQ_DENSITY_PAIR_RADIUS, polar->dim, polar->radius_bits, polar->radius, NULL, err);
        if (status != TQ_OK) {
            return status;
        }
    }
    for (int k = 0; k + 1 < levels; k++) {
        polar->radius_thresholds[k] = 0.5f * (polar->radius[k] + polar->radius[k + 1]);
    }
    return TQ_OK;
}

tq_status tq_polar_create(int dim, int radius_bits, int angle_bits, const float *radius_codebook, int qjl_bits,
                          uint64_t seed, tq_isa isa, tq_polar **out, tq_error *err)
{
    *out = NULL;
    if (dim < 2 || dim > TQ_POLAR_MAX_DIM || dim % 2 != 0) {
        return tq_error_set(err, TQ_ERR_INVALID, "PolarQuant dim=%d is invalid; use an even number from 2 to %d",
                            dim, TQ_POLAR_MAX_DIM);
    }
    if (radius_bits < 1 || radius_bits > TQ_POLAR_MAX_BITS) {
        return tq_error_set(err, TQ_ERR_INVALID, "PolarQuant radius_bits=%d is out of range; use 1 to %d",
                            radius_bits, TQ_POLAR_MAX_BITS);
    }
    if (angle_bits < 1 || angle_bits > TQ_POLAR_MAX_BITS) {
        return tq_error_set(err, TQ_ERR_INVALID, "PolarQuant angle_bits=%d is out of range; use 1 to %d",
                            angle_bits, TQ_POLAR_MAX_BITS);
    }
    if (qjl_bits < 0 || qjl_bits > 2) {
        return tq_error_set(err, TQ_ERR_INVALID, "PolarQuant qjl_bits=%d is not supported; use 0, 1 or 2",
                            qjl_bits);
    }

    tq_polar *polar = calloc(1, sizeof(*polar));
    if (polar == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating a PolarQuant quantizer");
    }
    polar->dim = dim;
    polar->pairs = dim / 2;
    polar->radius_bits = radius_bits;
    polar->angle_bits = angle_bits;
    polar->qjl_bits = qjl_bits;
    polar->isa = isa;
    polar->kernels = tq_qjl_polar_kernels_for(isa);
    polar->radius_bytes = stream_bytes(polar->pairs, radius_bits);
    polar->angle_bytes = stream_bytes(polar->pairs, angle_bits);

    tq_status status = set_radius_codebook(polar, radius_codebook, err);
    if (status == TQ_OK) {
        status = tq_rotation_create(dim, tq_rng_derive_seed(seed, POLAR_ROTATION_PURPOSE), isa, &polar->rotation,
                                    err);
    }
    if (status == TQ_OK && qjl_bits > 0) {
        status = tq_qjl_create(dim, dim, qjl_bits, tq_rng_derive_seed(seed, POLAR_QJL_PURPOSE), isa, &polar->qjl,
                               err);
        if (status == TQ_OK) {
            polar->qjl_bytes = tq_qjl_code_bytes(polar->qjl);
        }
    }
    if (status != TQ_OK) {
        tq_polar_free(polar);
        return status;
    }

    const int angles = 1 << angle_bits;
    for (int a = 0; a < angles; a++) {
        const double centre = 2.0 * M_PI * (a + 0.5) / angles;
        polar->angle_cos[a] = (float)cos(centre);
        polar->angle_sin[a] = (float)sin(centre);
    }
    for (int k = 0; k < angles / 2; k++) {
        const double boundary = 2.0 * M_PI * k / angles;
        polar->boundary_cos[k] = (float)cos(boundary);
        polar->boundary_sin[k] = (float)sin(boundary);
    }
    *out = polar;
    return TQ_OK;
}

void tq_polar_free(tq_polar *polar)
{
    if (polar != NULL) {
        tq_rotation_free(polar->rotation);
        tq_qjl_free(polar->qjl);
        free(polar);
    }
}

int tq_polar_dim(const tq_polar *polar)
{
    return polar->dim;
}

int tq_polar_radius_bits(const tq_polar *polar)
{
    return polar->radius_bits;
}

int tq_polar_angle_bits(const tq_polar *polar)
{
    return polar->angle_bits;
}

int tq_polar_qjl_bits(const tq_polar *polar)
{
    return polar->qjl_bits;
}

tq_isa tq_polar_isa(const tq_polar *polar)
{
    return polar->isa;
}

const float *tq_polar_radius_codebook(const tq_polar *polar)
{
    return polar->radius;
}

size_t tq_polar_code_bytes(const tq_polar *polar)
{
    return polar->radius_bytes + polar->angle_bytes + polar->qjl_bytes;
}

void tq_polar_rotate(const tq_polar *polar, const float *x, size_t n, float *out)
{
    const size_t dim = (size_t)polar->dim;
#pragma omp parallel for schedule(static) if (n > 1 && n * dim > POLAR_PARALLEL_MIN_WORK)
    for (size_t r = 0; r < n; r++) {
        tq_rotation_forward(polar->rotation, x + r * dim, out + r * dim);
    }
}

/* Scratch memory with one slice of floats and one of bytes per thread. */
typedef struct {
    float *floats;
    uint8_t *bytes;
    size_t floats_per_thread;
    size_t bytes_per_thread;
} scratch_space;

static tq_status scratch_alloc(scratch_space *scratch, int threads, size_t floats_per_thread,
                               size_t bytes_per_thread, tq_error *err)
{
    size_t float_count, float_bytes, byte_count;
    memset(scratch, 0, sizeof(*scratch));
    if (!tq_mul_size((size_t)threads, floats_per_thread, &float_count) ||
        !tq_mul_size(float_count, sizeof(float), &float_bytes) ||
        !tq_mul_size((size_t)threads, bytes_per_thread + 64, &byte_count)) {
        return tq_error_set(err, TQ_ERR_NOMEM, "PolarQuant scratch for %d threads is too large", threads);
    }
    scratch->floats = tq_aligned_alloc(float_bytes);
    scratch->bytes = tq_aligned_alloc(byte_count);
    if (scratch->floats == NULL || scratch->bytes == NULL) {
        tq_aligned_free(scratch->floats);
        tq_aligned_free(scratch->bytes);
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating PolarQuant scratch for %d threads",
                            threads);
    }
    scratch->floats_per_thread = floats_per_thread;
    /* 64 spare bytes per thread keep threads from writing to one cache line. */
    scratch->bytes_per_thread = bytes_per_thread + 64;
    return TQ_OK;
}

static void scratch_free(scratch_space *scratch)
{
    tq_aligned_free(scratch->floats);
    tq_aligned_free(scratch->bytes);
}

/* ---------------------------------------------------------------- quantize */

static unsigned radius_code(const tq_polar *polar, float radius)
{
    /* Nearest centroid: the number of midpoints below radius (binary search). */
    unsigned lo = 0;
    unsigned hi = (1u << polar->radius_bits) - 1u;
    while (lo < hi) {
        const unsigned mid = (lo + hi) / 2;
        if (radius > polar->radius_thresholds[mid]) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

/* Angle cell of the point (x, y): floor(theta * L / (2 pi)) for theta = atan2(y, x) in
 * [0, 2 pi), found without trigonometry. The lower half-plane is turned by pi onto the upper
 * one, which selects the first or second half of the cells. There every cell boundary is
 * less than pi away from theta, so the sign of the cross product of the boundary direction
 * with the point shows on which side theta lies, and a binary search finds the cell. */
static unsigned angle_code(const tq_polar *polar, float y, float x)
{
    const unsigned half = 1u << (polar->angle_bits - 1);
    if (x == 0.0f && y == 0.0f) {
        return 0; /* atan2(0, 0) is 0 */
    }
    const int lower = y < 0.0f || (y == 0.0f && x < 0.0f);
    if (lower) {
        x = -x;
        y = -y;
    }
    unsigned lo = 0;
    unsigned hi = half - 1;
    while (lo < hi) {
        const unsigned mid = (lo + hi + 1) / 2;
        if (polar->boundary_cos[mid] * y - polar->boundary_sin[mid] * x >= 0.0f) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return (lower ? half : 0u) + lo;
}

/* Write ||x|| R^T v_hat for one row's unpacked codes into out (dim floats), using work (dim floats). */
static void reconstruct_row(const tq_polar *polar, const uint8_t *radius_codes, const uint8_t *angle_codes,
                            float norm, float *work, float *out)
{
    const int pairs = polar->pairs;
    for (int j = 0; j < pairs; j++) {
        const float r = norm * polar->radius[radius_codes[j]];
        work[j] = r * polar->angle_cos[angle_codes[j]];
        work[j + pairs] = r * polar->angle_sin[angle_codes[j]];
    }
    tq_rotation_inverse(polar->rotation, work, out);
}

static void quantize_row(const tq_polar *polar, const float *x, float *work, uint8_t *unpacked, uint8_t *codes,
                         float *norm_out, float *residual_norm_out)
{
    const int dim = polar->dim;
    const int pairs = polar->pairs;
    float *rotated = work;
    float *reconstructed = work + dim;
    float *residual = work + 2 * (size_t)dim;
    float *sketch_scratch = work + 3 * (size_t)dim;
    memset(codes, 0, tq_polar_code_bytes(polar));
    *norm_out = 0.0f;
    if (residual_norm_out != NULL) {
        *residual_norm_out = 0.0f;
    }

    double sum_squares = 0.0;
    for (int k = 0; k < dim; k++) {
        sum_squares += (double)x[k] * (double)x[k];
    }
    if (sum_squares == 0.0) {
        return;
    }
    const float norm = (float)sqrt(sum_squares);
    const float inv_norm = (float)(1.0 / sqrt(sum_squares));
    for (int k = 0; k < dim; k++) {
        rotated[k] = x[k] * inv_norm;
    }
    tq_rotation_forward(polar->rotation, rotated, rotated);

    uint8_t *radius_stream = codes;
    uint8_t *angle_stream = codes + polar->radius_bytes;
    uint8_t *radius_codes = unpacked;
    uint8_t *angle_codes = unpacked + pairs;
    for (int j = 0; j < pairs; j++) {
        const float a = rotated[j];
        const float b = rotated[j + pairs];
        /* Both coordinates of a unit vector are at most 1, so a * a + b * b cannot overflow. */
        radius_codes[j] = (uint8_t)radius_code(polar, sqrtf(a * a + b * b));
        angle_codes[j] = (uint8_t)angle_code(polar, b, a);
        put_field(radius_stream, (size_t)j, polar->radius_bits, radius_codes[j]);
        put_field(angle_stream, (size_t)j, polar->angle_bits, angle_codes[j]);
    }
    *norm_out = norm;

    if (polar->qjl != NULL) {
        reconstruct_row(polar, radius_codes, angle_codes, norm, rotated, reconstructed);
        for (int k = 0; k < dim; k++) {
            residual[k] = x[k] - reconstructed[k];
        }
        *residual_norm_out =
            tq_qjl_quantize_row(polar->qjl, residual, sketch_scratch, angle_stream + polar->angle_bytes);
    }
}

tq_status tq_polar_quantize(const tq_polar *polar, const float *x, size_t n, uint8_t *codes, float *norms,
                            float *residual_norms, tq_error *err)
{
    if (n == 0) {
        return TQ_OK;
    }
    if (polar->qjl != NULL && residual_norms == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "PolarQuant with qjl_bits=%d needs residual_norms", polar->qjl_bits);
    }
    const int threads = omp_get_max_threads();
    scratch_space scratch;
    tq_status status = scratch_alloc(&scratch, threads, 4 * (size_t)polar->dim, (size_t)polar->dim, err);
    if (status != TQ_OK) {
        return status;
    }
    const size_t dim = (size_t)polar->dim;
    const size_t code_bytes = tq_polar_code_bytes(polar);

#pragma omp parallel num_threads(threads) if (n > 1 && n * dim * POLAR_WORK_PER_COORDINATE > POLAR_PARALLEL_MIN_WORK)
    {
        const int thread = omp_get_thread_num();
        float *work = scratch.floats + (size_t)thread * scratch.floats_per_thread;
        uint8_t *unpacked = scratch.bytes + (size_t)thread * scratch.bytes_per_thread;
#pragma omp for schedule(static)
        for (size_t r = 0; r < n; r++) {
            quantize_row(polar, x + r * dim, work, unpacked, codes + r * code_bytes, norms + r,
                         residual_norms != NULL ? residual_norms + r : NULL);
        }
    }
    scratch_free(&scratch);
    return TQ_OK;
}

/* ---------------------------------------------------------------- dequantize */

tq_status tq_polar_dequantize(const tq_polar *polar, const uint8_t *codes, const float *norms,
                              const float *residual_norms, size_t n, float *out, tq_error *err)
{
    if (n == 0) {
        return TQ_OK;
    }
    if (polar->qjl != NULL && residual_norms == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "PolarQuant with qjl_bits=%d needs residual_norms", polar->qjl_bits);
    }
    const int threads = omp_get_max_threads();
    scratch_space scratch;
    tq_status status = scratch_alloc(&scratch, threads, (size_t)polar->dim, (size_t)polar->dim, err);
    if (status != TQ_OK) {
        return status;
    }
    const size_t dim = (size_t)polar->dim;
    const size_t pairs = (size_t)polar->pairs;
    const size_t code_bytes = tq_polar_code_bytes(polar);

#pragma omp parallel num_threads(threads) if (n > 1 && n * dim * POLAR_WORK_PER_COORDINATE > POLAR_PARALLEL_MIN_WORK)
    {
        const int thread = omp_get_thread_num();
        float *work = scratch.floats + (size_t)thread * scratch.floats_per_thread;
        uint8_t *unpacked = scratch.bytes + (size_t)thread * scratch.bytes_per_thread;
#pragma omp for schedule(static)
        for (size_t r = 0; r < n; r++) {
            const uint8_t *row = codes + r * code_bytes;
            unpack_fields(row, pairs, polar->radius_bits, unpacked);
            unpack_fields(row + polar->radius_bytes, pairs, polar->angle_bits, unpacked + pairs);
            reconstruct_row(polar, unpacked, unpacked + pairs, norms[r], work, out + r * dim);
            if (polar->qjl != NULL) {
                tq_qjl_dequantize_row_add(polar->qjl, row + polar->radius_bytes + polar->angle_bytes,
                                          residual_norms[r], 1.0f, out + r * dim);
            }
        }
    }
    scratch_free(&scratch);
    return TQ_OK;
}

/* ---------------------------------------------------------------- inner products */

/* Per query: the angle table (pairs x 2^angle_bits) and, with a residual sketch, S y. */
static void prepare_query(const tq_polar *polar, const float *query, float *rotated, float *table, float *projected)
{
    const int pairs = polar->pairs;
    const int angles = 1 << polar->angle_bits;
    tq_rotation_forward(polar->rotation, query, rotated);
    for (int j = 0; j < pairs; j++) {
        const float c = rotated[j];
        const float s = rotated[j + pairs];
        float *row = table + (size_t)j * (size_t)angles;
        for (int a = 0; a < angles; a++) {
            row[a] = c * polar->angle_cos[a] + s * polar->angle_sin[a];
        }
    }
    if (polar->qjl != NULL) {
        tq_qjl_project(polar->qjl, query, 1, projected);
    }
}

tq_status tq_polar_inner_product(const tq_polar *polar, const uint8_t *codes, const float *norms,
                                 const float *residual_norms, size_t n, const float *queries, size_t n_queries,
                                 float *out, tq_error *err)
{
    if (n == 0 || n_queries == 0) {
        return TQ_OK;
    }
    if (polar->qjl != NULL && residual_norms == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "PolarQuant with qjl_bits=%d needs residual_norms", polar->qjl_bits);
    }
    const size_t dim = (size_t)polar->dim;
    const size_t pairs = (size_t)polar->pairs;
    const size_t angles = (size_t)1 << polar->angle_bits;
    const size_t code_bytes = tq_polar_code_bytes(polar);
    const size_t projected_floats = polar->qjl != NULL ? dim : 0;

    /* Per query: rotated query (dim), angle table (pairs * angles), projection. */
    const size_t query_floats = dim + pairs * angles + projected_floats;
    size_t block = POLAR_TABLE_BUDGET_BYTES / (query_floats * sizeof(float));
    if (block < 1) {
        block = 1;
    }
    if (block > n_queries) {
        block = n_queries;
    }
    size_t block_floats, block_bytes;
    if (!tq_mul_size(block, query_floats, &block_floats) || !tq_mul_size(block_floats, sizeof(float), &block_bytes)) {
        return tq_error_set(err, TQ_ERR_NOMEM, "PolarQuant query tables are too large");
    }
    float *query_data = tq_aligned_alloc(block_bytes);
    if (query_data == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating PolarQuant query tables (%zu bytes)",
                            block_bytes);
    }
    const int threads = omp_get_max_threads();
    scratch_space scratch;
    tq_status status = scratch_alloc(&scratch, threads, 1, 2 * pairs, err);
    if (status != TQ_OK) {
        tq_aligned_free(query_data);
        return status;
    }

    for (size_t first = 0; first < n_queries; first += block) {
        const size_t count = n_queries - first < block ? n_queries - first : block;

#pragma omp parallel for schedule(static) num_threads(threads) if (count > 1 && count * pairs * angles > POLAR_PARALLEL_MIN_WORK)
        for (size_t q = 0; q < count; q++) {
            float *rotated = query_data + q * query_floats;
            prepare_query(polar, queries + (first + q) * dim, rotated, rotated + dim, rotated + dim + pairs * angles);
        }

#pragma omp parallel num_threads(threads) if (n > 1 && n * count * pairs > POLAR_PARALLEL_MIN_WORK)
        {
            uint8_t *unpacked = scratch.bytes + (size_t)omp_get_thread_num() * scratch.bytes_per_thread;
#pragma omp for schedule(static)
            for (size_t r = 0; r < n; r++) {
                const uint8_t *row = codes + r * code_bytes;
                const uint8_t *qjl_codes = row + polar->radius_bytes + polar->angle_bytes;
                unpack_fields(row, pairs, polar->radius_bits, unpacked);
                unpack_fields(row + polar->radius_bytes, pairs, polar->angle_bits, unpacked + pairs);
                for (size_t q = 0; q < count; q++) {
                    const float *table = query_data + q * query_floats + dim;
                    float score = norms[r] * polar->kernels->polar_dot(unpacked, unpacked + pairs, polar->radius,
                                                                       table, pairs, angles);
                    if (polar->qjl != NULL) {
                        score += tq_qjl_score_row(polar->qjl, qjl_codes, residual_norms[r], table + pairs * angles);
                    }
                    out[(first + q) * n + r] = score;
                }
            }
        }
    }
    scratch_free(&scratch);
    tq_aligned_free(query_data);
    return TQ_OK;
}
