/* QJL: 1-bit and 2-bit quantized Johnson-Lindenstrauss sketches of vectors for
 * unbiased inner-product estimates (Zandieh et al., arXiv 2406.03482, for 1 bit).
 *
 * A row x of dimension d is stored as its norm ||x|| and a quantized Gaussian projection
 * of the unit vector: u = S x / ||x||, where S is m x d with i.i.d. N(0, 1) entries, so each
 * u_i is N(0, 1). Q is the Lloyd-Max quantizer of N(0, 1) at 1 bit (levels +-sqrt(2/pi))
 * or 2 bits (4 levels). For a query y with z = S y, z_i and u_i are jointly Gaussian with
 * Cov(z_i, u_i) = <x, y> / ||x||, so E[z_i Q(u_i)] = (<x, y> / ||x||) E[u Q(u)], and
 *
 *     estimate(x, y) = ||x|| / (m E[u Q(u)]) * sum_i z_i Q(u_i)
 *
 * is unbiased over the draw of S. For a Lloyd-Max quantizer E[u Q(u)] = E[Q(u)^2] =
 * 1 - MSE; at 1 bit the estimate is sqrt(pi/2) / m * ||x|| * <S y, sign(S x)>.
 * Its variance is (||x||^2 ||y||^2 / c + <x, y>^2 (E[u^2 Q(u)^2] / c^2 - 1 / c - 1)) / m
 * with c = E[u Q(u)]; at 1 bit that is ((pi/2) ||x||^2 ||y||^2 - <x, y>^2) / m.
 * So 2 bits lower the variance by 28% for orthogonal x and y, but raise it once
 * |cos(x, y)| exceeds about 0.58.
 *
 * Ownership: tq_qjl_create returns an object that the caller frees with tq_qjl_free.
 * A created object is read-only, so concurrent calls on one object are safe.
 */
#ifndef TQ_QJL_H
#define TQ_QJL_H

#include <stddef.h>
#include <stdint.h>

#include "cpu.h"
#include "tq_common.h"

typedef struct tq_qjl tq_qjl;

/* Lloyd-Max quantizer Q of N(0, 1) at 1 or 2 bits and the moments the estimator needs. */
typedef struct {
    float levels[4];     /* ascending; 2 used at 1 bit (+-sqrt(2/pi)), 4 at 2 bits */
    float thresholds[3]; /* decision boundaries between adjacent levels (1 used at 1 bit) */
    double gain;         /* E[u Q(u)] = E[Q(u)^2] */
    double fourth_moment; /* E[u^2 Q(u)^2] */
} tq_qjl_gaussian_quantizer;

/* Fill out with the quantizer of bits 1 or 2 (any other value gives the 2-bit one). Shared
 * by this sketch and the QJL residual of the KV-cache codecs (kv_codec.h). */
void tq_qjl_gaussian_levels(int bits, tq_qjl_gaussian_quantizer *out);

/* Largest accepted dim and sketch_dim; a sketch matrix of this size is 1 GiB of floats. */
#define TQ_QJL_MAX_DIM 16384

/* Create a QJL quantizer for rows of length dim with a sketch of sketch_dim rows
 * (bits 1 or 2). S is drawn from seed, so equal arguments give equal codes. */
tq_status tq_qjl_create(int dim, int sketch_dim, int bits, uint64_t seed, tq_isa isa, tq_qjl **out,
                        tq_error *err);
void tq_qjl_free(tq_qjl *qjl);

int tq_qjl_dim(const tq_qjl *qjl);
int tq_qjl_sketch_dim(const tq_qjl *qjl);
int tq_qjl_bits(const tq_qjl *qjl);
tq_isa tq_qjl_isa(const tq_qjl *qjl);

/* Bytes of packed codes per row: ceil(sketch_dim * bits / 8). */
size_t tq_qjl_code_bytes(const tq_qjl *qjl);

/* Quantizer levels in ascending order (2 for 1 bit, 4 for 2 bits), for unit-variance input. */
const float *tq_qjl_levels(const tq_qjl *qjl);

/* E[u Q(u)] for u ~ N(0, 1): 2/pi at 1 bit, 1 - MSE of the 2-bit quantizer at 2 bits. */
double tq_qjl_gain(const tq_qjl *qjl);

/* E[u^2 Q(u)^2] for u ~ N(0, 1), the fourth-moment term of the estimator variance. */
double tq_qjl_fourth_moment(const tq_qjl *qjl);

/* Quantize n rows x (n x dim, row-major) into codes (n x code_bytes) and norms (n).
 * A zero row gets norm 0 and all-zero codes. Rows run in parallel; fails only when the
 * per-thread scratch cannot be allocated. */
tq_status tq_qjl_quantize(const tq_qjl *qjl, const float *x, size_t n, uint8_t *codes, float *norms,
                          tq_error *err);

/* Quantize one row, using scratch (sketch_dim floats) for S x. Returns ||x||. */
float tq_qjl_quantize_row(const tq_qjl *qjl, const float *x, float *scratch, uint8_t *codes);

/* Project n rows y (n x dim) to S y (n x sketch_dim). */
void tq_qjl_project(const tq_qjl *qjl, const float *y, size_t n, float *projected);

/* Return the estimate of <x, y> from the codes and norm of x and the projection S y of y. */
float tq_qjl_score_row(const tq_qjl *qjl, const uint8_t *codes, float norm, const float *projected);

/* Write the estimates out[q * n + i] ~ <x_i, y_q> for all pairs, from projected queries
 * (n_queries x sketch_dim). Rows run in parallel. */
void tq_qjl_inner_product(const tq_qjl *qjl, const uint8_t *codes, const float *norms, size_t n,
                          const float *projected, size_t n_queries, float *out);

/* Reconstruct x_hat = ||x|| / (m E[u Q(u)]) * S^T Q(u) for n rows (n x dim), so that
 * <x_hat, y> equals the estimate above up to float rounding. */
void tq_qjl_dequantize(const tq_qjl *qjl, const uint8_t *codes, const float *norms, size_t n, float *out);

/* Add the reconstruction of one row, times weight, to out (dim floats). */
void tq_qjl_dequantize_row_add(const tq_qjl *qjl, const uint8_t *codes, float norm, float weight, float *out);

#endif /* TQ_QJL_H */
