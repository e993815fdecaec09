/* PolarQuant, pairwise form: each pair of rotated coordinates is stored as a
 * quantized radius and a quantized angle, as in "PolarQuant: Leveraging Polar
 * Transformation for Key Cache Quantization and Decoding Acceleration" (NeurIPS).
 * It is not the recursive polar transform of arXiv 2502.02617, which has the same name.
 *
 * A row x of even dimension d is stored as ||x||, then u = x / ||x|| is rotated
 * (v = R u, R from rotation.h) and coordinate j is paired with j + d/2, the NeoX RoPE
 * pairing, so keys after RoPE pair naturally. Per pair, r = hypot(v_j, v_{j+d/2}) goes
 * through a Lloyd-Max radius codebook (by default the one for the pair-radius density of
 * a uniform unit vector at this d) and theta = atan2(v_{j+d/2}, v_j) through a uniform
 * quantizer with 2^angle_bits cells, whose centroids are the cell centres.
 *
 * With qjl_bits 1 or 2, the residual x - x_hat is also stored as a QJL sketch (qjl.h,
 * sketch_dim = d) with its norm, which makes the inner-product estimate unbiased.
 *
 * Scores never dequantize keys: the query is rotated once, then a table
 * T[j][a] = q_rot[j] cos(theta_a) + q_rot[j + d/2] sin(theta_a) gives
 * <x_hat, q> = ||x|| sum_j radius[rcode_j] T[j][acode_j].
 *
 * Code layout per row: the radius codes as a bit stream (radius_bits per pair, least
 * significant bit first, padded to a byte), the angle codes likewise, then the QJL codes.
 * Norms and residual norms are separate float32 arrays.
 *
 * Ownership: tq_polar_create returns an object that the caller frees with tq_polar_free.
 * A created object is read-only, so concurrent calls on one object are safe.
 */
#ifndef TQ_POLAR_H
#define TQ_POLAR_H

#include <stddef.h>
#include <stdint.h>

#include "cpu.h"
#include "tq_common.h"

typedef struct tq_polar tq_polar;

#define TQ_POLAR_MAX_DIM 16384
#define TQ_POLAR_MAX_BITS 8

/* Create a PolarQuant quantizer. radius_codebook is NULL for the Lloyd-Max codebook of
 * the pair-radius density at dim, or 2^radius_bits finite, non-negative values in
 * ascending order (copied). qjl_bits is 0 (no residual sketch), 1 or 2. */
tq_status tq_polar_create(int dim, int radius_bits, int angle_bits, const float *radius_codebook, int qjl_bits,
                          uint64_t seed, tq_isa isa, tq_polar **out, tq_error *err);
void tq_polar_free(tq_polar *polar);

int tq_polar_dim(const tq_polar *polar);
int tq_polar_radius_bits(const tq_polar *polar);
int tq_polar_angle_bits(const tq_polar *polar);
int tq_polar_qjl_bits(const tq_polar *polar);
tq_isa tq_polar_isa(const tq_polar *polar);

/* The 2^radius_bits radius centroids in ascending order, for unit-norm rows. */
const float *tq_polar_radius_codebook(const tq_polar *polar);

/* Bytes of packed codes per row (radius, angle and QJL codes; norms excluded). */
size_t tq_polar_code_bytes(const tq_polar *polar);

/* Quantize n rows x (n x dim) into codes (n x code_bytes), norms (n) and, when
 * qjl_bits > 0, residual_norms (n; may be NULL otherwise). A zero row gets norm 0. */
tq_status tq_polar_quantize(const tq_polar *polar, const float *x, size_t n, uint8_t *codes, float *norms,
                            float *residual_norms, tq_error *err);

/* Reconstruct n rows (n x dim): ||x|| R^T v_hat, plus the QJL reconstruction of the
 * residual when qjl_bits > 0, so that <out_i, y> equals the inner-product estimate. */
tq_status tq_polar_dequantize(const tq_polar *polar, const uint8_t *codes, const float *norms,
                              const float *residual_norms, size_t n, float *out, tq_error *err);

/* Write the estimates out[q * n + i] ~ <x_i, y_q> from codes, for queries (n_queries x dim). */
tq_status tq_polar_inner_product(const tq_polar *polar, const uint8_t *codes, const float *norms,
                                 const float *residual_norms, size_t n, const float *queries, size_t n_queries,
                                 float *out, tq_error *err);

/* Rotate n rows (n x dim) by the quantizer's rotation R: out_i = R x_i. */
void tq_polar_rotate(const tq_polar *polar, const float *x, size_t n, float *out);

#endif /* TQ_POLAR_H */
