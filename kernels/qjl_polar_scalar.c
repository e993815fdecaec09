/* Scalar reference of the QJL and PolarQuant kernels, and the table selector. */
#include "qjl_polar_kernels.h"

static float dot_scalar(const float *a, const float *b, size_t n)
{
    float sum = 0.0f;
    for (size_t i = 0; i < n; i++) {
        sum += a[i] * b[i];
    }
    return sum;
}

static void dot4_scalar(const float *a, const float *b, size_t stride, size_t n, float *out)
{
    float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (size_t i = 0; i < n; i++) {
        for (size_t r = 0; r < 4; r++) {
            sum[r] += a[i] * b[r * stride + i];
        }
    }
    for (size_t r = 0; r < 4; r++) {
        out[r] = sum[r];
    }
}

static float sign_dot_scalar(const uint8_t *bits, const float *q, size_t m)
{
    float sum = 0.0f;
    for (size_t i = 0; i < m; i++) {
        const int set = (bits[i >> 3] >> (i & 7)) & 1;
        sum += set ? q[i] : -q[i];
    }
    return sum;
}

static float level2_dot_scalar(const uint8_t *codes, const float *q, const float *levels, size_t m)
{
    float sum = 0.0f;
    for (size_t i = 0; i < m; i++) {
        const int code = (codes[i >> 2] >> (2 * (i & 3))) & 3;
        sum += levels[code] * q[i];
    }
    return sum;
}

static float polar_dot_scalar(const uint8_t *radius_codes, const uint8_t *angle_codes, const float *radius,
                              const float *table, size_t pairs, size_t stride)
{
    float sum = 0.0f;
    for (size_t j = 0; j < pairs; j++) {
        sum += radius[radius_codes[j]] * table[j * stride + angle_codes[j]];
    }
    return sum;
}

const tq_qjl_polar_kernels tq_qjl_polar_kernels_scalar = {
    dot_scalar,
    dot4_scalar,
    sign_dot_scalar,
    level2_dot_scalar,
    polar_dot_scalar,
};

const tq_qjl_polar_kernels *tq_qjl_polar_kernels_for(tq_isa isa)
{
    switch (isa) {
#if defined(TQ_HAVE_AVX2_KERNELS)
    case TQ_ISA_AVX2:
        return &tq_qjl_polar_kernels_avx2;
#endif
#if defined(TQ_HAVE_AVX512_KERNELS)
    case TQ_ISA_AVX512:
        return &tq_qjl_polar_kernels_avx512;
#endif
#if defined(TQ_HAVE_NEON_KERNELS)
    case TQ_ISA_NEON:
        return &tq_qjl_polar_kernels_neon;
#endif
    default:
        return &tq_qjl_polar_kernels_scalar;
    }
}
