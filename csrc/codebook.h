/* Lloyd-Max scalar quantizers (codebooks) for the coordinates of random unit vectors.
 *
 * After a random rotation, each coordinate of a unit vector in dim dimensions has
 * the density TQ_DENSITY_SPHERE below. The MSE-optimal scalar quantizer for it is
 * the Lloyd-Max quantizer: each centroid is the conditional mean of its cell, and
 * each cell boundary is the midpoint of its two centroids. The solver iterates these
 * two conditions (with Newton steps on the fixed point, falling back to plain Lloyd
 * steps) until the centroids move by less than 1e-12 relative. The integrals use
 * composite 16-point Gauss-Legendre quadrature of the exact density. The functions
 * are pure (no caching, no global state), so callers cache. Every width from 1 to 8
 * bits solves in milliseconds.
 */
#ifndef TQ_CODEBOOK_H
#define TQ_CODEBOOK_H

#include <stddef.h>

#include "tq_common.h"

typedef enum {
    TQ_DENSITY_SPHERE = 0,     /* one coordinate of a uniform unit vector in dim dims: (1-x^2)^((dim-3)/2) on [-1,1] */
    TQ_DENSITY_GAUSSIAN = 1,   /* N(0, 1/dim), the large-dim limit of the above */
    TQ_DENSITY_PAIR_RADIUS = 2 /* radius of a pair of coordinates of a uniform unit vector: r (1-r^2)^((dim-4)/2) on [0,1] */
} tq_density;

#define TQ_CODEBOOK_MAX_BITS 8

/* Lloyd-Max optimal scalar quantizer with 2^bits levels (bits 1..8) for the density at dim:
 * writes 2^bits centroids in ascending order and the expected squared error per
 * coordinate (mse may be NULL). dim >= 2 (>= 3 for TQ_DENSITY_PAIR_RADIUS, whose
 * density at dim 2 is a point mass at 1). */
tq_status tq_codebook_lloyd_max(tq_density density, int dim, int bits, float *centroids, double *mse, tq_error *err);

/* Empirical Lloyd-Max (1-D k-means from quantile initialisation) on n samples
 * (n >= 1, all finite): writes 2^bits ascending centroids and the mean squared
 * error of the samples against their nearest centroid (mse may be NULL). With
 * fewer distinct samples than levels, some centroids repeat. */
tq_status tq_codebook_fit(const float *samples, size_t n, int bits, float *centroids, double *mse, tq_error *err);

#endif /* TQ_CODEBOOK_H */
