/* CPU feature detection and the choice of SIMD kernel variant.
 *
 * Each concept (quantizers, weight formats, attention) keeps its own table of
 * kernel function pointers, one table per instruction set. An object picks its
 * table when it is created, from tq_isa_select(), and keeps it for its lifetime,
 * so no mutable global state is involved.
 */
#ifndef TQ_CPU_H
#define TQ_CPU_H

#include "tq_common.h"

typedef enum {
    TQ_ISA_SCALAR = 0,
    TQ_ISA_AVX2 = 1,   /* AVX2 + FMA + F16C */
    TQ_ISA_AVX512 = 2, /* AVX-512 F, BW, DQ, VL */
    TQ_ISA_NEON = 3,   /* arm64 Advanced SIMD */
    TQ_ISA_COUNT = 4
} tq_isa;

/* Name of an instruction set as accepted by TURBOQUANT_KERNELS ("scalar", "avx2", ...). */
const char *tq_isa_name(tq_isa isa);

/* Returns 1 when this build contains kernels for isa and this CPU can run them. */
int tq_isa_supported(tq_isa isa);

/* Best supported instruction set of this CPU, ignoring the environment. */
tq_isa tq_isa_best(void);

/* Choose the kernel variant: the one named by the environment variable
 * TURBOQUANT_KERNELS when it is set and non-empty, else tq_isa_best().
 * Fails with TQ_ERR_INVALID for an unknown name or one this CPU cannot run. */
tq_status tq_isa_select(tq_isa *out, tq_error *err);

/* Parse a name ("scalar", "avx2", "avx512", "neon", or "auto" for the best). */
tq_status tq_isa_parse(const char *name, tq_isa *out, tq_error *err);

#endif /* TQ_CPU_H */
