/* Random orthogonal rotations of R^dim, reproducible from a 64-bit seed.
 *
 * A power-of-two dim uses the randomized Hadamard transform R = H D / sqrt(dim):
 * D is a diagonal of random signs and H the Sylvester Hadamard matrix (entry
 * (i, j) is (-1)^popcount(i & j), as scipy.linalg.hadamard builds it), applied
 * as a fast Walsh-Hadamard transform in O(dim log dim). Any other dim uses a
 * dense orthogonal matrix: the Q factor of the QR decomposition of a matrix of
 * i.i.d. N(0, 1) entries, with the signs fixed so that diag(R) > 0, which makes
 * Q Haar-distributed. It costs dim^2 floats and O(dim^2) work per vector.
 *
 * Reproducibility: the random signs are bit-exact on every machine for a seed
 * (they come from integer outputs of rng.h), and the Hadamard path gives the
 * same bits with every kernel variant. The dense path draws normals through
 * libm's log, sqrt and cos, so its matrix may differ in the last bits between C
 * libraries, and SIMD variants sum its matrix-vector product in another order.
 *
 * A tq_rotation is immutable after creation, so concurrent calls may share it.
 */
#ifndef TQ_ROTATION_H
#define TQ_ROTATION_H

#include <stddef.h>
#include <stdint.h>

#include "cpu.h"
#include "tq_common.h"

typedef struct tq_rotation tq_rotation;

/* Maximum dim of the dense path (non-power-of-two dims); 4096^2 floats are 64 MiB. */
#define TQ_ROTATION_MAX_DENSE_DIM 4096

/* Create the rotation of R^dim for seed (dim >= 2; dims that are not powers of two
 * must not exceed TQ_ROTATION_MAX_DENSE_DIM). isa selects the kernel variant.
 * On success *out owns the rotation; free it with tq_rotation_free. */
tq_status tq_rotation_create(int dim, uint64_t seed, tq_isa isa, tq_rotation **out, tq_error *err);
void tq_rotation_free(tq_rotation *rot);

int tq_rotation_dim(const tq_rotation *rot);
/* 1 for the randomized Hadamard path, 0 for the dense path. */
int tq_rotation_is_hadamard(const tq_rotation *rot);

/* y = R x and x = R^T y on vectors of dim floats; input and output may alias. */
void tq_rotation_forward(const tq_rotation *rot, const float *x, float *y);
void tq_rotation_inverse(const tq_rotation *rot, const float *y, float *x);

#endif /* TQ_ROTATION_H */
