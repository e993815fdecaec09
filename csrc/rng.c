#include "rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

void tq_rng_seed(tq_rng *rng, uint64_t seed)
{
    uint64_t state = seed;
    for (int i = 0; i < 4; i++) {
        rng->s[i] = splitmix64(&state);
    }
    rng->has_spare_normal = 0;
    rng->spare_normal = 0.0;
}

uint64_t tq_rng_next_u64(tq_rng *rng)
{
    uint64_t *s = rng->s;
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double tq_rng_uniform(tq_rng *rng)
{
    return (double)(tq_rng_next_u64(rng) >> 11) * 0x1.0p-53;
}

double tq_rng_normal(tq_rng *rng)
{
    if (rng->has_spare_normal) {
        rng->has_spare_normal = 0;
        return rng->spare_normal;
    }

    /* Box-Muller: u1 in (0, 1] keeps the logarithm finite. */
    const double u1 = 1.0 - tq_rng_uniform(rng);
    const double u2 = tq_rng_uniform(rng);
    const double radius = sqrt(-2.0 * log(u1));
    const double angle = 2.0 * M_PI * u2;
    rng->spare_normal = radius * sin(angle);
    rng->has_spare_normal = 1;
    return radius * cos(angle);
}

uint64_t tq_rng_derive_seed(uint64_t seed, uint64_t purpose)
{
    uint64_t state = seed ^ (purpose * 0xD1B54A32D192ED03ull);
    splitmix64(&state);
    return splitmix64(&state);
}
