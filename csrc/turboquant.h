/* TurboQuant vector quantizers (Zandieh et al., arXiv 2504.19874).
 *
 * TQ_TURBOQUANT_MSE stores, per vector x, the L2 norm and the Lloyd-Max codes of
 * the rotated unit vector R x / ||x||. The codebook is the optimal one for the
 * coordinate density of a uniform unit vector (TQ_DENSITY_SPHERE at dim), because
 * after a random rotation every coordinate follows that density. Fractional widths
 * b + 0.5 code the first dim/2 rotated coordinates with b + 1 bits and the rest
 * with b bits. After a random rotation all coordinates have the same distribution,
 * so which half gets the extra bit does not matter.
 *
 * TQ_TURBOQUANT_PROD at b bits runs the MSE quantizer at b - 1 bits (none at
 * b = 1), then stores sign(S r) and ||r|| for the residual r of the unit vector,
 * with S a dim x dim matrix of i.i.d. N(0, 1) entries. The inner-product estimate
 *   <y, x> ~ ||x|| (<y, u_mse> + sqrt(pi/2) / dim * ||r|| * <S y, sign(S r)>)
 * is unbiased. S acts in the rotated basis (on R r and R y). Because S R is again
 * a matrix of i.i.d. N(0, 1) entries, this is the same estimator with another
 * Gaussian matrix, and it saves one rotation per vector.
 *
 * Row layout (row_bytes per vector, rows back to back, no alignment):
 *   codes of the first dim_high coordinates, bits_high each, padded to whole bytes
 *   codes of the other coordinates, bits_low each, padded to whole bytes
 *   PROD only: dim sign bits (1 = positive), padded to whole bytes
 *   float32 ||x||, little-endian
 *   PROD only: float32 ||r||
 * Codes are packed least-significant bit first (see kernels/quant_kernels.h).
 *
 * A tq_turboquant is immutable after creation, so concurrent calls may share it.
 */
#ifndef TQ_TURBOQUANT_H
#define TQ_TURBOQUANT_H

#include <stddef.h>
#include <stdint.h>

#include "cpu.h"
#include "tq_common.h"

typedef enum {
    TQ_TURBOQUANT_MSE = 0,
    TQ_TURBOQUANT_PROD = 1
} tq_turboquant_kind;

typedef struct tq_turboquant tq_turboquant;

/* Code layout of one row, derived from (kind, dim, bits_x2). */
typedef struct {
    int dim;             /* values per vector */
    int dim_high;        /* coordinates coded with bits_high bits (the first ones) */
    int bits_high;       /* 0 when PROD has no MSE stage */
    int bits_low;        /* bits of the remaining dim - dim_high coordinates */
    size_t high_bytes;   /* bytes of the first code segment */
    size_t low_bytes;    /* bytes of the second code segment */
    size_t sign_bytes;   /* bytes of the sign segment (PROD), else 0 */
    size_t norm_offset;  /* offset of float32 ||x|| in the row */
    size_t row_bytes;    /* total bytes per row */
} tq_turboquant_layout;

/* Compute the layout for kind, dim and twice the bit width (bits_x2). Valid widths:
 * MSE 1, 1.5, 2, 2.5, 3, 3.5, 4 (bits_x2 2..8); PROD 1, 2, 3, 4 (bits_x2 2, 4, 6, 8). */
tq_status tq_turboquant_layout_get(tq_turboquant_kind kind, int dim, int bits_x2, tq_turboquant_layout *out,
                                   tq_error *err);

/* Create a quantizer. codebook_high and codebook_low are the ascending centroids for
 * the two code widths of the layout (2^bits floats each, copied). Pass NULL to have
 * them solved with tq_codebook_lloyd_max (TQ_DENSITY_SPHERE at dim). Callers that
 * create many quantizers should cache the codebooks and pass them in.
 * On success *out owns the quantizer. */
tq_status tq_turboquant_create(tq_turboquant_kind kind, int dim, int bits_x2, uint64_t seed,
                               const float *codebook_high, const float *codebook_low, tq_isa isa, tq_turboquant **out,
                               tq_error *err);
void tq_turboquant_free(tq_turboquant *q);

const tq_turboquant_layout *tq_turboquant_get_layout(const tq_turboquant *q);

/* Quantize n rows of dim floats (row-major) into n * row_bytes bytes of codes.
 * Fails with TQ_ERR_INVALID, naming the row, when a row's norm is not finite
 * (NaN or infinite values, or a norm above FLT_MAX). Rows run in parallel (OpenMP). */
tq_status tq_turboquant_encode(const tq_turboquant *q, const float *x, size_t n, uint8_t *codes, tq_error *err);

/* Reconstruct n rows from their codes. For PROD the reconstruction includes the
 * QJL term ||x|| sqrt(pi/2)/dim ||r|| R^T S^T sign(S r), so <y, decode(x)> equals
 * the inner-product estimate. */
tq_status tq_turboquant_decode(const tq_turboquant *q, const uint8_t *codes, size_t n, float *x, tq_error *err);

/* out[j * n + i] = estimate of <queries[j], x_i> for n_queries float rows, computed
 * from the codes without reconstructing the vectors: each query is rotated once and
 * scored against the packed codes with a table lookup per code. */
tq_status tq_turboquant_inner_product(const tq_turboquant *q, const uint8_t *codes, size_t n, const float *queries,
                                      size_t n_queries, float *out, tq_error *err);

#endif /* TQ_TURBOQUANT_H */
