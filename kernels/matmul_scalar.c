/* Scalar reference kernels: activation quantization and block dot products.
 *
 * Integer sums inside a block are exact; each block then adds
 * d_weight * d_activation * sum to a float accumulator in block order.
 */
#include <math.h>
#include <string.h>

#include "cpu.h"
#include "matmul_kernels.h"
#include "weights.h"

/* Round to nearest, ties to even, as the SIMD variants' float-to-int conversions do. */
static inline int8_t round_to_int8(float v)
{
    long r = lrintf(v);
    if (r > 127) {
        r = 127;
    } else if (r < -127) {
        r = -127;
    }
    return (int8_t)r;
}

/* Maximum absolute value of n floats. */
static float max_abs(const float *x, int n)
{
    float amax = 0.0f;
    for (int i = 0; i < n; i++) {
        const float a = fabsf(x[i]);
        if (a > amax) {
            amax = a;
        }
    }
    return amax;
}

/* Symmetric 8-bit quantization per block of 32: d = amax / 127 (stored as fp16),
 * q = round(x * 127 / amax).
 * NOTE: a block with max |x| of 65520 * 127 (about 8.3e6) or more gets an infinite
 * fp16 scale and so infinite or NaN products, as Q8_0 does in llama.cpp. */
void tq_quantize_row_q8_0_scalar(const float *x, void *y, int64_t n)
{
    tq_block_q8_0 *blocks = (tq_block_q8_0 *)y;
    const int64_t nb = n / TQ_QK8_0;
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * TQ_QK8_0;
        const float amax = max_abs(xb, TQ_QK8_0);
        const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        blocks[b].d = tq_fp32_to_fp16(amax / 127.0f);
        for (int i = 0; i < TQ_QK8_0; i++) {
            blocks[b].qs[i] = round_to_int8(xb[i] * id);
        }
    }
}

/* As Q8_0 but per 256 values with a float scale and 16-value partial sums. */
void tq_quantize_row_q8_K_scalar(const float *x, void *y, int64_t n)
{
    tq_block_q8_K *blocks = (tq_block_q8_K *)y;
    const int64_t nb = n / TQ_QK_K;
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * TQ_QK_K;
        const float amax = max_abs(xb, TQ_QK_K);
        const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        blocks[b].d = amax / 127.0f;
        for (int i = 0; i < TQ_QK_K; i++) {
            blocks[b].qs[i] = round_to_int8(xb[i] * id);
        }
        for (int k = 0; k < TQ_QK_K / 16; k++) {
            int sum = 0;
            for (int i = 0; i < 16; i++) {
                sum += blocks[b].qs[16 * k + i];
            }
            blocks[b].bsums[k] = (int16_t)sum;
        }
    }
}

void tq_vec_dot_f32_scalar(int64_t n, float *s, const void *w, const void *x)
{
    const float *wf = (const float *)w;
    const float *xf = (const float *)x;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        sum += wf[i] * xf[i];
    }
    *s = sum;
}

void tq_vec_dot_f16_scalar(int64_t n, float *s, const void *w, const void *x)
{
    const tq_fp16 *wh = (const tq_fp16 *)w;
    const float *xf = (const float *)x;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        sum += tq_fp16_to_fp32(wh[i]) * xf[i];
    }
    *s = sum;
}

void tq_vec_dot_bf16_scalar(int64_t n, float *s, const void *w, const void *x)
{
    const tq_bf16 *wh = (const tq_bf16 *)w;
    const float *xf = (const float *)x;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        sum += tq_bf16_to_fp32(wh[i]) * xf[i];
    }
    *s = sum;
}

void tq_vec_dot_q4_0_q8_0_scalar(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q4_0 *wb = (const tq_block_q4_0 *)w;
    const tq_block_q8_0 *xb = (const tq_block_q8_0 *)x;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / TQ_QK4_0; b++) {
        int isum = 0;
        for (int j = 0; j < TQ_QK4_0 / 2; j++) {
            const int q0 = (wb[b].qs[j] & 0xF) - 8;
            const int q1 = (wb[b].qs[j] >> 4) - 8;
            isum += q0 * xb[b].qs[j] + q1 * xb[b].qs[j + 16];
        }
        sum += tq_fp16_to_fp32(wb[b].d) * tq_fp16_to_fp32(xb[b].d) * (float)isum;
    }
    *s = sum;
}

void tq_vec_dot_q4_1_q8_0_scalar(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q4_1 *wb = (const tq_block_q4_1 *)w;
    const tq_block_q8_0 *xb = (const tq_block_q8_0 *)x;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / TQ_QK4_1; b++) {
        int isum = 0;
        int xsum = 0;
        for (int j = 0; j < TQ_QK4_1 / 2; j++) {
            isum += (wb[b].qs[j] & 0xF) * xb[b].qs[j] + (wb[b].qs[j] >> 4) * xb[b].qs[j + 16];
            xsum += xb[b].qs[j] + xb[b].qs[j + 16];
        }
        const float dx = tq_fp16_to_fp32(xb[b].d);
        sum += tq_fp16_to_fp32(wb[b].d) * dx * (float)isum + tq_fp16_to_fp32(wb[b].m) * dx * (float)xsum;
    }
    *s = sum;
}

void tq_vec_dot_q5_0_q8_0_scalar(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q5_0 *wb = (const tq_block_q5_0 *)w;
    const tq_block_q8_0 *xb = (const tq_block_q8_0 *)x;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / TQ_QK5_0; b++) {
        const uint32_t qh = tq_load_u32_le(wb[b].qh);
        int isum = 0;
        for (int j = 0; j < TQ_QK5_0 / 2; j++) {
            const int q0 = ((wb[b].qs[j] & 0xF) | (int)(((qh >> j) & 1) << 4)) - 16;
            const int q1 = ((wb[b].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4)) - 16;
            isum += q0 * xb[b].qs[j] + q1 * xb[b].qs[j + 16];
        }
        sum += tq_fp16_to_fp32(wb[b].d) * tq_fp16_to_fp32(xb[b].d) * (float)isum;
    }
    *s = sum;
}

void tq_vec_dot_q5_1_q8_0_scalar(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q5_1 *wb = (const tq_block_q5_1 *)w;
    const tq_block_q8_0 *xb = (const tq_block_q8_0 *)x;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / TQ_QK5_1; b++) {
        const uint32_t qh = tq_load_u32_le(wb[b].qh);
        int isum = 0;
        int xsum = 0;
        for (int j = 0; j < TQ_QK5_1 / 2; j++) {
            const int q0 = (wb[b].qs[j] & 0xF) | (int)(((qh >> j) & 1) << 4);
            const int q1 = (wb[b].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            isum += q0 * xb[b].qs[j] + q1 * xb[b].qs[j + 16];
            xsum += xb[b].qs[j] + xb[b].qs[j + 16];
        }
        const float dx = tq_fp16_to_fp32(xb[b].d);
        sum += tq_fp16_to_fp32(wb[b].d) * dx * (float)isum + tq_fp16_to_fp32(wb[b].m) * dx * (float)xsum;
    }
    *s = sum;
}

void tq_vec_dot_q8_0_q8_0_scalar(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q8_0 *wb = (const tq_block_q8_0 *)w;
    const tq_block_q8_0 *xb = (const tq_block_q8_0 *)x;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / TQ_QK8_0; b++) {
        int isum = 0;
        for (int j = 0; j < TQ_QK8_0; j++) {
            isum += wb[b].qs[j] * xb[b].qs[j];
        }
        sum += tq_fp16_to_fp32(wb[b].d) * tq_fp16_to_fp32(xb[b].d) * (float)isum;
    }
    *s = sum;
}

/* The min term of Q4_K and Q5_K: sum over sub-blocks of m[j] * (sum of the 32
 * activation codes of sub-block j), from the Q8_K partial sums. */
static int k4_min_sum(const uint8_t *mins, const int16_t *bsums)
{
    int sum = 0;
    for (int j = 0; j < 8; j++) {
        sum += mins[j] * (bsums[2 * j] + bsums[2 * j + 1]);
    }
    return sum;
}

void tq_vec_dot_q4_K_q8_K_scalar(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q4_K *wb = (const tq_block_q4_K *)w;
    const tq_block_q8_K *xb = (const tq_block_q8_K *)x;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / TQ_QK_K; b++) {
        uint8_t scales[8];
        uint8_t mins[8];
        for (int j = 0; j < 8; j++) {
            tq_get_scale_min_k4(j, wb[b].scales, &scales[j], &mins[j]);
        }
        int isum = 0;
        for (int j = 0; j < 4; j++) {
            const uint8_t *q = wb[b].qs + 32 * j;
            const int8_t *a = xb[b].qs + 64 * j;
            int lo = 0;
            int hi = 0;
            for (int l = 0; l < 32; l++) {
                lo += (q[l] & 0xF) * a[l];
                hi += (q[l] >> 4) * a[l + 32];
            }
            isum += scales[2 * j] * lo + scales[2 * j + 1] * hi;
        }
        const float d = tq_fp16_to_fp32(wb[b].d) * xb[b].d;
        const float dmin = tq_fp16_to_fp32(wb[b].dmin) * xb[b].d;
        sum += d * (float)isum - dmin * (float)k4_min_sum(mins, xb[b].bsums);
    }
    *s = sum;
}

void tq_vec_dot_q5_K_q8_K_scalar(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q5_K *wb = (const tq_block_q5_K *)w;
    const tq_block_q8_K *xb = (const tq_block_q8_K *)x;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / TQ_QK_K; b++) {
        uint8_t scales[8];
        uint8_t mins[8];
        for (int j = 0; j < 8; j++) {
            tq_get_scale_min_k4(j, wb[b].scales, &scales[j], &mins[j]);
        }
        int isum = 0;
        for (int j = 0; j < 4; j++) {
            const uint8_t *q = wb[b].qs + 32 * j;
            const int8_t *a = xb[b].qs + 64 * j;
            int lo = 0;
            int hi = 0;
            for (int l = 0; l < 32; l++) {
                const int q_lo = (q[l] & 0xF) | (((wb[b].qh[l] >> (2 * j)) & 1) << 4);
                const int q_hi = (q[l] >> 4) | (((wb[b].qh[l] >> (2 * j + 1)) & 1) << 4);
                lo += q_lo * a[l];
                hi += q_hi * a[l + 32];
            }
            isum += scales[2 * j] * lo + scales[2 * j + 1] * hi;
        }
        const float d = tq_fp16_to_fp32(wb[b].d) * xb[b].d;
        const float dmin = tq_fp16_to_fp32(wb[b].dmin) * xb[b].d;
        sum += d * (float)isum - dmin * (float)k4_min_sum(mins, xb[b].bsums);
    }
    *s = sum;
}

void tq_vec_dot_q6_K_q8_K_scalar(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q6_K *wb = (const tq_block_q6_K *)w;
    const tq_block_q8_K *xb = (const tq_block_q8_K *)x;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / TQ_QK_K; b++) {
        int isum = 0;
        for (int half = 0; half < 2; half++) {
            const uint8_t *ql = wb[b].ql + 64 * half;
            const uint8_t *qh = wb[b].qh + 32 * half;
            const int8_t *sc = wb[b].scales + 8 * half;
            const int8_t *a = xb[b].qs + 128 * half;
            for (int k = 0; k < 4; k++) {
                const uint8_t *low = ql + ((k & 1) ? 32 : 0);
                const int shift = (k < 2) ? 0 : 4;
                int part[2] = {0, 0};
                for (int l = 0; l < 32; l++) {
                    const int q = (((low[l] >> shift) & 0xF) | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
                    part[l / 16] += q * a[32 * k + l];
                }
                isum += sc[2 * k] * part[0] + sc[2 * k + 1] * part[1];
            }
        }
        sum += tq_fp16_to_fp32(wb[b].d) * xb[b].d * (float)isum;
    }
    *s = sum;
}

const tq_matmul_kernels tq_matmul_kernels_scalar = {
    .quantize_row_q8_0 = tq_quantize_row_q8_0_scalar,
    .quantize_row_q8_K = tq_quantize_row_q8_K_scalar,
    .vec_dot =
        {
            [TQ_TYPE_F32] = tq_vec_dot_f32_scalar,
            [TQ_TYPE_F16] = tq_vec_dot_f16_scalar,
            [TQ_TYPE_BF16] = tq_vec_dot_bf16_scalar,
            [TQ_TYPE_Q4_0] = tq_vec_dot_q4_0_q8_0_scalar,
            [TQ_TYPE_Q4_1] = tq_vec_dot_q4_1_q8_0_scalar,
            [TQ_TYPE_Q5_0] = tq_vec_dot_q5_0_q8_0_scalar,
            [TQ_TYPE_Q5_1] = tq_vec_dot_q5_1_q8_0_scalar,
            [TQ_TYPE_Q8_0] = tq_vec_dot_q8_0_q8_0_scalar,
            [TQ_TYPE_Q4_K] = tq_vec_dot_q4_K_q8_K_scalar,
            [TQ_TYPE_Q5_K] = tq_vec_dot_q5_K_q8_K_scalar,
            [TQ_TYPE_Q6_K] = tq_vec_dot_q6_K_q8_K_scalar,
        },
};

const tq_matmul_kernels *tq_matmul_kernels_for(int isa)
{
    switch (isa) {
    case TQ_ISA_SCALAR:
        return &tq_matmul_kernels_scalar;
#if defined(TQ_HAVE_AVX2_KERNELS)
    case TQ_ISA_AVX2:
        return &tq_matmul_kernels_avx2;
#endif
#if defined(TQ_HAVE_AVX512_KERNELS)
    case TQ_ISA_AVX512:
        return &tq_matmul_kernels_avx512;
#endif
#if defined(TQ_HAVE_NEON_KERNELS)
    case TQ_ISA_NEON:
        return &tq_matmul_kernels_neon;
#endif
    default:
        return NULL;
    }
}

const tq_gemm_kernels *tq_gemm_kernels_for(int isa)
{
#if defined(TQ_HAVE_AVX512_KERNELS)
    if (isa == TQ_ISA_AVX512 && __builtin_cpu_supports("avx512vnni")) {
        return &tq_gemm_kernels_avx512vnni;
    }
#endif
    (void)isa;
    return NULL;
}
