#include "cpu.h"

#include <stdlib.h>
#include <string.h>

static const char *const isa_names[TQ_ISA_COUNT] = {"scalar", "avx2", "avx512", "neon"};

const char *tq_isa_name(tq_isa isa)
{
    if ((int)isa < 0 || isa >= TQ_ISA_COUNT) {
        return "unknown";
    }
    return isa_names[isa];
}

int tq_isa_supported(tq_isa isa)
{
    switch (isa) {
    case TQ_ISA_SCALAR:
        return 1;
    case TQ_ISA_AVX2:
#if defined(TQ_HAVE_AVX2_KERNELS) && (defined(__x86_64__) || defined(_M_X64))
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
        return 0;
#endif
    case TQ_ISA_AVX512:
#if defined(TQ_HAVE_AVX512_KERNELS) && (defined(__x86_64__) || defined(_M_X64))
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("fma");
#else
        return 0;
#endif
    case TQ_ISA_NEON:
#if defined(TQ_HAVE_NEON_KERNELS) && defined(__aarch64__)
        return 1;
#else
        return 0;
#endif
    default:
        return 0;
    }
}

tq_isa tq_isa_best(void)
{
    if (tq_isa_supported(TQ_ISA_AVX512)) {
        return TQ_ISA_AVX512;
    }
    if (tq_isa_supported(TQ_ISA_AVX2)) {
        return TQ_ISA_AVX2;
    }
    if (tq_isa_supported(TQ_ISA_NEON)) {
        return TQ_ISA_NEON;
    }
    return TQ_ISA_SCALAR;
}

tq_status tq_isa_parse(const char *name, tq_isa *out, tq_error *err)
{
    if (name == NULL || name[0] == '\0' || strcmp(name, "auto") == 0) {
        *out = tq_isa_best();
        return TQ_OK;
    }
    for (int i = 0; i < TQ_ISA_COUNT; i++) {
        if (strcmp(name, isa_names[i]) == 0) {
            if (!tq_isa_supported((tq_isa)i)) {
                return tq_error_set(err, TQ_ERR_INVALID,
                                    "kernel variant '%s' is not supported by this CPU or build; "
                                    "use 'auto' or one of the variants listed by 'python -m turboquant info'",
                                    name);
            }
            *out = (tq_isa)i;
            return TQ_OK;
        }
    }
    return tq_error_set(err, TQ_ERR_INVALID,
                        "unknown kernel variant '%s'; expected auto, scalar, avx2, avx512 or neon", name);
}

tq_status tq_isa_select(tq_isa *out, tq_error *err)
{
    const char *forced = getenv("TURBOQUANT_KERNELS");
    tq_status status = tq_isa_parse(forced, out, err);
    if (status != TQ_OK && err != NULL) {
        /* Say where the name came from, so the user knows which setting to change. */
        char inner[TQ_ERROR_MSG_SIZE];
        memcpy(inner, err->message, sizeof(inner));
        tq_error_set(err, status, "TURBOQUANT_KERNELS: %s", inner);
    }
    return status;
}
