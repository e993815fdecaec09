/* Kernel table of the quantizer module: Walsh-Hadamard butterflies, dense
 * matrix-vector products, and packing, unpacking and scoring of bit-packed codes.
 *
 * Code layout shared by every variant: `count` codes of `bits` bits (1..4) are
 * packed least-significant bit first into a contiguous bit stream, code i at bit
 * offset i * bits. The stream is padded with zero bits to whole bytes, so it takes
 * (count * bits + 7) / 8 bytes.
 *
 * Exactness across variants: fwht, encode and decode give the same bits as the
 * scalar reference. matvec and dot sum in a different order, so their results
 * differ from the scalar ones by float rounding only.
 */
#ifndef TQ_QUANT_KERNELS_H
#define TQ_QUANT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "cpu.h"

#define TQ_QUANT_MAX_CODE_BITS 4

typedef struct {
    /* In-place unnormalised Walsh-Hadamard transform of n floats (n a power of two):
     * x <- H x with H the Sylvester Hadamard matrix. */
    void (*fwht)(float *x, size_t n);

    /* Returns sum_i x[i]^2 in double, in one fixed order for every variant: eight
     * partial sums, partial k over i = k mod 8 for i < n - n mod 8 in increasing i,
     * the rest added to partial 0, combined as ((p0+p1)+(p2+p3))+((p4+p5)+(p6+p7)).
     * Squares of floats are exact in double, so every variant gives the same bits. */
    double (*sum_squares)(const float *x, size_t n);

    /* y = M x with M row-major (rows x cols); y must not alias x. */
    void (*matvec)(const float *m, const float *x, float *y, size_t rows, size_t cols);

    /* Quantize count floats to codes: code i = number of the (2^bits - 1) ascending
     * boundaries that are strictly below x[i]; writes the packed stream to out. */
    void (*encode)(const float *x, size_t count, int bits, const float *boundaries, uint8_t *out);

    /* out[i] = table[code i] for count codes read from the packed stream. */
    void (*decode)(const uint8_t *codes, size_t count, int bits, const float *table, float *out);

    /* Returns sum_i q[i] * table[code i] over count codes. */
    float (*dot)(const uint8_t *codes, size_t count, int bits, const float *table, const float *q);

    /* out[r] = dot(codes + r * row_bytes, count, bits, table, q) for r < n_rows, with
     * the table and shift set-up done once for all rows. */
    void (*dot_rows)(const uint8_t *codes, size_t row_bytes, size_t n_rows, size_t count, int bits,
                     const float *table, const float *q, float *out);
} tq_quant_kernels;

extern const tq_quant_kernels tq_quant_kernels_scalar;
#if defined(TQ_HAVE_AVX2_KERNELS)
extern const tq_quant_kernels tq_quant_kernels_avx2;
#endif
#if defined(TQ_HAVE_AVX512_KERNELS)
extern const tq_quant_kernels tq_quant_kernels_avx512;
#endif
#if defined(TQ_HAVE_NEON_KERNELS)
extern const tq_quant_kernels tq_quant_kernels_neon;
#endif

/* Kernel table of isa; the scalar table for a variant this build lacks. */
const tq_quant_kernels *tq_quant_kernels_get(tq_isa isa);

#endif /* TQ_QUANT_KERNELS_H */
