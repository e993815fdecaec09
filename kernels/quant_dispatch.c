/* Choice of the quantizer kernel table for an instruction set. */
#include "quant_kernels.h"

const tq_quant_kernels *tq_quant_kernels_get(tq_isa isa)
{
    switch (isa) {
    default:
        return &tq_quant_kernels_scalar;
    }
}
