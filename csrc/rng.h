/* Deterministic random numbers from a 64-bit seed, identical on every platform.
 *
 * Integer outputs (and so random signs) are bit-exact everywhere. Normal samples use
 * the Box-Muller transform through libm's log, sqrt and cos, so they may differ in the
 * last bit between C libraries; they are identical on one machine for one seed.
 */
#ifndef TQ_RNG_H
#define TQ_RNG_H

#include <stdint.h>

/* xoshiro256** state, seeded through splitmix64. */
typedef struct {
    uint64_t s[4];
    int has_spare_normal;
    double spare_normal;
} tq_rng;

void tq_rng_seed(tq_rng *rng, uint64_t seed);
uint64_t tq_rng_next_u64(tq_rng *rng);
/* Uniform in [0, 1) with 53 random bits. */
double tq_rng_uniform(tq_rng *rng);
/* Standard normal N(0, 1). */
double tq_rng_normal(tq_rng *rng);

/* Derive an independent stream for a named purpose from one user seed, so that for
 * example the rotation and the QJL projection of one quantizer are not correlated. */
uint64_t tq_rng_derive_seed(uint64_t seed, uint64_t purpose);

#endif /* TQ_RNG_H */
