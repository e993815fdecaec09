/* Choice of the quantizer kernel table for an instruction set. */
#include "quant_kernels.h"

const tq_quant_kernels *tq_quant_kernels_get(tq_isa isa)
{
    switch (isa) {
#if defined(TQ_HAVE_AVX2_KERNELS)
    case TQ_ISA_AVX2:
        return &tq_quant_kernels_avx2;
#endif
#if defined(TQ_HAVE_AVX512_KERNELS)
    case TQ_ISA_AVX512:
        return &tq_quant_kernels_avx512;
#endif
#if defined(TQ_HAVE_NEON_KERNELS)
    case TQ_ISA_NEON:
        return &tq_quant_kernels_neon;
#endif
    default:
        return &tq_quant_kernels_scalar;
    }
}
