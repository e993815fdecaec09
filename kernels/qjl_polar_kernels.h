/* SIMD kernels of QJL and PolarQuant scoring, one table of function pointers per
 * instruction set.
 *
 * Code layouts shared by every variant, all least significant bit first:
 *   - 1-bit QJL: bit i of a row is bit i % 8 of byte i / 8. A set bit is +1, a clear bit -1.
 *   - 2-bit QJL: code i is in bits 2 * (i % 4) and 2 * (i % 4) + 1 of byte i / 4.
 *   - PolarQuant: the caller unpacks the stored bit stream into one uint8 radius code
 *     and one uint8 angle code per pair before scoring.
 * Variants sum in a different order than the scalar reference, so results agree to
 * float rounding, not bit for bit.
 */
#ifndef TQ_QJL_POLAR_KERNELS_H
#define TQ_QJL_POLAR_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "cpu.h"

typedef struct {
    /* Dot product of two float vectors of length n. */
    float (*dot)(const float *a, const float *b, size_t n);
    /* out[r] = dot(a, b + r * stride, n) for r < 4, summed in the same order as dot, so a
     * row gets the same bits whether it is projected alone or in a group of four. */
    void (*dot4)(const float *a, const float *b, size_t stride, size_t n, float *out);
    /* Sum over i < m of (bit i set ? q[i] : -q[i]). */
    float (*sign_dot)(const uint8_t *bits, const float *q, size_t m);
    /* Sum over i < m of levels[code i] * q[i] for 2-bit codes; levels has 4 entries. */
    float (*level2_dot)(const uint8_t *codes, const float *q, const float *levels, size_t m);
    /* Sum over j < pairs of radius[radius_codes[j]] * table[j * stride + angle_codes[j]]. */
    float (*polar_dot)(const uint8_t *radius_codes, const uint8_t *angle_codes, const float *radius,
                       const float *table, size_t pairs, size_t stride);
} tq_qjl_polar_kernels;

extern const tq_qjl_polar_kernels tq_qjl_polar_kernels_scalar;
#if defined(TQ_HAVE_AVX2_KERNELS)
extern const tq_qjl_polar_kernels tq_qjl_polar_kernels_avx2;
#endif
#if defined(TQ_HAVE_AVX512_KERNELS)
extern const tq_qjl_polar_kernels tq_qjl_polar_kernels_avx512;
#endif
#if defined(TQ_HAVE_NEON_KERNELS)
extern const tq_qjl_polar_kernels tq_qjl_polar_kernels_neon;
#endif

/* Kernel table for isa; falls back to the scalar table when this build lacks isa. */
const tq_qjl_polar_kernels *tq_qjl_polar_kernels_for(tq_isa isa);

#endif /* TQ_QJL_POLAR_KERNELS_H */
