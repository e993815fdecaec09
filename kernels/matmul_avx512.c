/* AVX-512 (F, BW, DQ, VL) kernels for the formats that dominate Gemma 3 decoding:
 * Q8_0 (embedding and LM head, some value projections) and Q5_0 (Q, K, gate, up).
 * Two 32-value blocks fill one 512-bit register. Other types use the AVX2
 * kernels, which run unchanged on every AVX-512 CPU.
 *
 * No VNNI: _mm512_dpbusd_epi32 needs -mavx512vnni, which the build does not pass
 * to this file, so products use maddubs + madd as in the AVX2 kernels.
 */
#include <immintrin.h>
#include <string.h>

#include "matmul_kernels.h"
#include "weights.h"

#include "matmul_avx2_helpers.h"

static inline float hsum_ps_avx512(__m512 v)
{
    const __m256 half = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    return hsum_ps_avx2(half);
}

/* Dot products of 64 signed bytes w with 64 signed bytes a, as 16 int32 partial
 * sums: |w| times a with w's sign moved onto a (see the AVX2 file for the range). */
static inline __m512i dot_i8_avx512(__m512i w, __m512i a)
{
    const __m512i abs_w = _mm512_abs_epi8(w);
    const __m512i signed_a = _mm512_mask_sub_epi8(a, _mm512_movepi8_mask(w), _mm512_setzero_si512(), a);
    return _mm512_madd_epi16(_mm512_maddubs_epi16(abs_w, signed_a), _mm512_set1_epi16(1));
}

static inline __m512i load_2x256(const void *lo, const void *hi)
{
    const __m256i low = _mm256_loadu_si256((const __m256i *)lo);
    return _mm512_inserti64x4(_mm512_castsi256_si512(low), _mm256_loadu_si256((const __m256i *)hi), 1);
}

/* Broadcast d0 to the low eight lanes and d1 to the high eight. */
static inline __m512 scales_2x8(float d0, float d1)
{
    return _mm512_insertf32x8(_mm512_set1_ps(d0), _mm256_set1_ps(d1), 1);
}

static void vec_dot_f32_avx512(int64_t n, float *s, const void *w, const void *x)
{
    const float *wf = (const float *)w;
    const float *xf = (const float *)x;
    __m512 acc0 = _mm512_setzero_ps();
    __m512 acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(wf + i), _mm512_loadu_ps(xf + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(wf + i + 16), _mm512_loadu_ps(xf + i + 16), acc1);
    }
    float sum = hsum_ps_avx512(_mm512_add_ps(acc0, acc1));
    for (; i < n; i++) {
        sum += wf[i] * xf[i];
    }
    *s = sum;
}

static void vec_dot_f16_avx512(int64_t n, float *s, const void *w, const void *x)
{
    const tq_fp16 *wh = (const tq_fp16 *)w;
    const float *xf = (const float *)x;
    __m512 acc0 = _mm512_setzero_ps();
    __m512 acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512 w0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wh + i)));
        const __m512 w1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wh + i + 16)));
        acc0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xf + i), acc0);
        acc1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xf + i + 16), acc1);
    }
    float sum = hsum_ps_avx512(_mm512_add_ps(acc0, acc1));
    for (; i < n; i++) {
        sum += tq_fp16_to_fp32(wh[i]) * xf[i];
    }
    *s = sum;
}

static void vec_dot_q8_0_q8_0_avx512(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q8_0 *wb = (const tq_block_q8_0 *)w;
    const tq_block_q8_0 *xb = (const tq_block_q8_0 *)x;
    const int64_t nb = n / TQ_QK8_0;
    __m512 acc0 = _mm512_setzero_ps();
    __m512 acc1 = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        const __m512i w01 = load_2x256(wb[b].qs, wb[b + 1].qs);
        const __m512i w23 = load_2x256(wb[b + 2].qs, wb[b + 3].qs);
        const __m512i a01 = load_2x256(xb[b].qs, xb[b + 1].qs);
        const __m512i a23 = load_2x256(xb[b + 2].qs, xb[b + 3].qs);
        const __m512 d01 = scales_2x8(_cvtsh_ss(wb[b].d) * _cvtsh_ss(xb[b].d),
                                      _cvtsh_ss(wb[b + 1].d) * _cvtsh_ss(xb[b + 1].d));
        const __m512 d23 = scales_2x8(_cvtsh_ss(wb[b + 2].d) * _cvtsh_ss(xb[b + 2].d),
                                      _cvtsh_ss(wb[b + 3].d) * _cvtsh_ss(xb[b + 3].d));
        acc0 = _mm512_fmadd_ps(d01, _mm512_cvtepi32_ps(dot_i8_avx512(w01, a01)), acc0);
        acc1 = _mm512_fmadd_ps(d23, _mm512_cvtepi32_ps(dot_i8_avx512(w23, a23)), acc1);
    }
    __m256 tail = _mm256_setzero_ps();
    for (; b < nb; b++) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)wb[b].qs);
        const __m256i a0 = _mm256_loadu_si256((const __m256i *)xb[b].qs);
        const __m256 d0 = _mm256_set1_ps(_cvtsh_ss(wb[b].d) * _cvtsh_ss(xb[b].d));
        tail = _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(dot_i8_avx2(w0, a0)), tail);
    }
    *s = hsum_ps_avx512(_mm512_add_ps(acc0, acc1)) + hsum_ps_avx2(tail);
}

/* Codes q - 16 of two Q5_0 blocks (64 bytes). The 64 fifth bits form a mask
 * register: where a bit is clear, the nibble gets bits 4-7 set, which as int8
 * is nibble - 16; where it is set, the nibble is q - 16 already. */
static inline __m512i q5_0_codes_2(const tq_block_q5_0 *b0, const tq_block_q5_0 *b1)
{
    const __m512i nibbles = _mm512_inserti64x4(_mm512_castsi256_si512(nibbles_32_avx2(b0->qs)),
                                               nibbles_32_avx2(b1->qs), 1);
    uint32_t h0, h1;
    memcpy(&h0, b0->qh, sizeof(h0));
    memcpy(&h1, b1->qh, sizeof(h1));
    const __mmask64 fifth_bits = _cvtu64_mask64((uint64_t)h0 | ((uint64_t)h1 << 32));
    const __m512i minus16 = _mm512_or_si512(nibbles, _mm512_set1_epi8((char)0xF0));
    return _mm512_mask_mov_epi8(minus16, fifth_bits, nibbles);
}

static void vec_dot_q5_0_q8_0_avx512(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q5_0 *wb = (const tq_block_q5_0 *)w;
    const tq_block_q8_0 *xb = (const tq_block_q8_0 *)x;
    const int64_t nb = n / TQ_QK5_0;
    __m512 acc0 = _mm512_setzero_ps();
    __m512 acc1 = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        const __m512i q01 = q5_0_codes_2(&wb[b], &wb[b + 1]);
        const __m512i q23 = q5_0_codes_2(&wb[b + 2], &wb[b + 3]);
        const __m512i a01 = load_2x256(xb[b].qs, xb[b + 1].qs);
        const __m512i a23 = load_2x256(xb[b + 2].qs, xb[b + 3].qs);
        const __m512 d01 = scales_2x8(_cvtsh_ss(wb[b].d) * _cvtsh_ss(xb[b].d),
                                      _cvtsh_ss(wb[b + 1].d) * _cvtsh_ss(xb[b + 1].d));
        const __m512 d23 = scales_2x8(_cvtsh_ss(wb[b + 2].d) * _cvtsh_ss(xb[b + 2].d),
                                      _cvtsh_ss(wb[b + 3].d) * _cvtsh_ss(xb[b + 3].d));
        acc0 = _mm512_fmadd_ps(d01, _mm512_cvtepi32_ps(dot_i8_avx512(q01, a01)), acc0);
        acc1 = _mm512_fmadd_ps(d23, _mm512_cvtepi32_ps(dot_i8_avx512(q23, a23)), acc1);
    }
    __m256 tail = _mm256_setzero_ps();
    const __m256i minus16 = _mm256_set1_epi8((char)0xF0);
    for (; b < nb; b++) {
        const __m256i q0 = _mm256_or_si256(nibbles_32_avx2(wb[b].qs),
                                           _mm256_andnot_si256(bits_32_avx2(wb[b].qh), minus16));
        const __m256i a0 = _mm256_loadu_si256((const __m256i *)xb[b].qs);
        const __m256 d0 = _mm256_set1_ps(_cvtsh_ss(wb[b].d) * _cvtsh_ss(xb[b].d));
        tail = _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(dot_i8_avx2(q0, a0)), tail);
    }
    *s = hsum_ps_avx512(_mm512_add_ps(acc0, acc1)) + hsum_ps_avx2(tail);
}

/* ---- four tokens per weight row ----
 * Each token follows the one-token kernels above operation for operation (two 512-bit
 * accumulators over groups of four blocks, a 256-bit tail), so its result is bit for bit the
 * one-token result. The weight codes are decoded once for the four tokens. */

#define X4_TOKENS 4

/* a with the sign of w moved onto it, the second operand of dot_i8_avx512. */
static inline __m512i signed_by_avx512(__m512i a, __m512i w)
{
    return _mm512_mask_sub_epi8(a, _mm512_movepi8_mask(w), _mm512_setzero_si512(), a);
}

static inline __m512i dot_abs_avx512(__m512i abs_w, __m512i signed_a)
{
    return _mm512_madd_epi16(_mm512_maddubs_epi16(abs_w, signed_a), _mm512_set1_epi16(1));
}

/* The x4 body shared by Q8_0 and Q5_0: codes(b0, b1) gives the int8 weights of two blocks
 * as one register, code_1 those of one block for the tail. */
#define VEC_DOT_X4_AVX512(block_type, CODES_2, CODES_1)                                                             \
    const block_type *wb = (const block_type *)w;                                                                   \
    const int64_t nb = n / 32;                                                                                      \
    const tq_block_q8_0 *xb[X4_TOKENS];                                                                             \
    __m512 acc0[X4_TOKENS], acc1[X4_TOKENS];                                                                        \
    __m256 tail[X4_TOKENS];                                                                                         \
    for (int t = 0; t < X4_TOKENS; t++) {                                                                           \
        xb[t] = (const tq_block_q8_0 *)((const uint8_t *)x + (size_t)t * x_stride);                                 \
        acc0[t] = acc1[t] = _mm512_setzero_ps();                                                                    \
        tail[t] = _mm256_setzero_ps();                                                                              \
    }                                                                                                               \
    int64_t b = 0;                                                                                                  \
    for (; b + 4 <= nb; b += 4) {                                                                                   \
        const __m512i q01 = CODES_2(&wb[b], &wb[b + 1]);                                                            \
        const __m512i q23 = CODES_2(&wb[b + 2], &wb[b + 3]);                                                        \
        const __m512i abs01 = _mm512_abs_epi8(q01);                                                                 \
        const __m512i abs23 = _mm512_abs_epi8(q23);                                                                 \
        const float dw0 = _cvtsh_ss(wb[b].d), dw1 = _cvtsh_ss(wb[b + 1].d);                                        \
        const float dw2 = _cvtsh_ss(wb[b + 2].d), dw3 = _cvtsh_ss(wb[b + 3].d);                                    \
        for (int t = 0; t < X4_TOKENS; t++) {                                                                       \
            const tq_block_q8_0 *a = xb[t];                                                                         \
            const __m512i a01 = signed_by_avx512(load_2x256(a[b].qs, a[b + 1].qs), q01);                            \
            const __m512i a23 = signed_by_avx512(load_2x256(a[b + 2].qs, a[b + 3].qs), q23);                        \
            const __m512 d01 = scales_2x8(dw0 * _cvtsh_ss(a[b].d), dw1 * _cvtsh_ss(a[b + 1].d));                   \
            const __m512 d23 = scales_2x8(dw2 * _cvtsh_ss(a[b + 2].d), dw3 * _cvtsh_ss(a[b + 3].d));               \
            acc0[t] = _mm512_fmadd_ps(d01, _mm512_cvtepi32_ps(dot_abs_avx512(abs01, a01)), acc0[t]);                \
            acc1[t] = _mm512_fmadd_ps(d23, _mm512_cvtepi32_ps(dot_abs_avx512(abs23, a23)), acc1[t]);                \
        }                                                                                                           \
    }                                                                                                               \
    for (; b < nb; b++) {                                                                                           \
        const __m256i q0 = CODES_1(&wb[b]);                                                                         \
        const float dw = _cvtsh_ss(wb[b].d);                                                                        \
        for (int t = 0; t < X4_TOKENS; t++) {                                                                       \
            const __m256i a0 = _mm256_loadu_si256((const __m256i *)xb[t][b].qs);                                    \
            const __m256 d0 = _mm256_set1_ps(dw * _cvtsh_ss(xb[t][b].d));                                           \
            tail[t] = _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(dot_i8_avx2(q0, a0)), tail[t]);                        \
        }                                                                                                           \
    }                                                                                                               \
    for (int t = 0; t < X4_TOKENS; t++) {                                                                           \
        s[(size_t)t * s_stride] = hsum_ps_avx512(_mm512_add_ps(acc0[t], acc1[t])) + hsum_ps_avx2(tail[t]);          \
    }

static inline __m512i q8_0_codes_2(const tq_block_q8_0 *b0, const tq_block_q8_0 *b1)
{
    return load_2x256(b0->qs, b1->qs);
}

static inline __m256i q8_0_codes_1(const tq_block_q8_0 *b0)
{
    return _mm256_loadu_si256((const __m256i *)b0->qs);
}

static inline __m256i q5_0_codes_1(const tq_block_q5_0 *b0)
{
    return _mm256_or_si256(nibbles_32_avx2(b0->qs),
                           _mm256_andnot_si256(bits_32_avx2(b0->qh), _mm256_set1_epi8((char)0xF0)));
}

static void vec_dot_q8_0_q8_0_x4_avx512(int64_t n, float *s, size_t s_stride, const void *w, const void *x,
                                        size_t x_stride)
{
    VEC_DOT_X4_AVX512(tq_block_q8_0, q8_0_codes_2, q8_0_codes_1)
}

static void vec_dot_q5_0_q8_0_x4_avx512(int64_t n, float *s, size_t s_stride, const void *w, const void *x,
                                        size_t x_stride)
{
    VEC_DOT_X4_AVX512(tq_block_q5_0, q5_0_codes_2, q5_0_codes_1)
}

/* ---- many weight rows per token ----
 * The Q8_0 LM head of Gemma 3 270M (262,144 rows of 640 values) takes about half of a decode
 * step, and the Q5_0 projections most of the rest. These kernels prepare the activation once
 * per call, its block pairs as 512-bit values and its scales as floats, instead of once per
 * row. They also prefetch the row ROWS_PREFETCH_AHEAD rows ahead, which the hardware
 * prefetchers do not do early enough for rows of 680 bytes. Each row then goes through the
 * arithmetic of the one-row kernel operation for operation, so its result is bit for bit the
 * same. */

/* Activation rows of up to 8192 values are prepared on the stack (8 KiB of block pairs); longer
 * rows take the one-row kernel. */
#define ROWS_MAX_BLOCKS 256

/* On the 2-core Xeon of docs/benchmarks.md, the LM head product took 11.6 ms with no software
 * prefetch, 7.1 ms with 8 rows ahead and 7.0 ms with 16 (13.1 ms with the one-row kernel). */
#define ROWS_PREFETCH_AHEAD 16

/* The rows body shared by Q8_0 and Q5_0, with the codes functions of the x4 body. A row's
 * operations are those of vec_dot_q8_0_q8_0_avx512 and vec_dot_q5_0_q8_0_avx512. */
#define VEC_DOT_ROWS_AVX512(block_type, CODES_2, CODES_1, one_row)                                                 \
    const tq_block_q8_0 *xb = (const tq_block_q8_0 *)x;                                                             \
    const int64_t nb = n / 32;                                                                                      \
    if (nb > ROWS_MAX_BLOCKS) {                                                                                     \
        for (int64_t r = 0; r < n_rows; r++) {                                                                      \
            one_row(n, &s[r], (const uint8_t *)w + (size_t)r * row_bytes, x);                                      \
        }                                                                                                           \
        return;                                                                                                     \
    }                                                                                                               \
    /* The activation: pairs of blocks for the groups of four, and every block's scale. */                          \
    __m512i pairs[ROWS_MAX_BLOCKS / 2];                                                                             \
    float xd[ROWS_MAX_BLOCKS];                                                                                      \
    const int64_t grouped = nb / 4 * 4;                                                                             \
    for (int64_t b = 0; b < grouped; b += 2) {                                                                      \
        pairs[b / 2] = load_2x256(xb[b].qs, xb[b + 1].qs);                                                          \
    }                                                                                                               \
    for (int64_t b = 0; b < nb; b++) {                                                                              \
        xd[b] = _cvtsh_ss(xb[b].d);                                                                                 \
    }                                                                                                               \
    for (int64_t r = 0; r < n_rows; r++) {                                                                          \
        const block_type *wb = (const block_type *)((const uint8_t *)w + (size_t)r * row_bytes);                    \
        if (r + ROWS_PREFETCH_AHEAD < n_rows + rows_after) {                                                        \
            const char *ahead = (const char *)w + (size_t)(r + ROWS_PREFETCH_AHEAD) * row_bytes;                    \
            for (size_t offset = 0; offset < row_bytes; offset += 64) {                                             \
                _mm_prefetch(ahead + offset, _MM_HINT_T0);                                                          \
            }                                                                                                       \
        }                                                                                                           \
        __m512 acc0 = _mm512_setzero_ps();                                                                          \
        __m512 acc1 = _mm512_setzero_ps();                                                                          \
        for (int64_t b = 0; b < grouped; b += 4) {                                                                  \
            const __m512i w01 = CODES_2(&wb[b], &wb[b + 1]);                                                        \
            const __m512i w23 = CODES_2(&wb[b + 2], &wb[b + 3]);                                                    \
            const __m512 d01 = scales_2x8(_cvtsh_ss(wb[b].d) * xd[b], _cvtsh_ss(wb[b + 1].d) * xd[b + 1]);         \
            const __m512 d23 = scales_2x8(_cvtsh_ss(wb[b + 2].d) * xd[b + 2], _cvtsh_ss(wb[b + 3].d) * xd[b + 3]); \
            acc0 = _mm512_fmadd_ps(d01, _mm512_cvtepi32_ps(dot_i8_avx512(w01, pairs[b / 2])), acc0);               \
            acc1 = _mm512_fmadd_ps(d23, _mm512_cvtepi32_ps(dot_i8_avx512(w23, pairs[b / 2 + 1])), acc1);           \
        }                                                                                                           \
        __m256 tail = _mm256_setzero_ps();                                                                          \
        for (int64_t b = grouped; b < nb; b++) {                                                                    \
            const __m256i w0 = CODES_1(&wb[b]);                                                                     \
            const __m256i a0 = _mm256_loadu_si256((const __m256i *)xb[b].qs);                                       \
            const __m256 d0 = _mm256_set1_ps(_cvtsh_ss(wb[b].d) * xd[b]);                                           \
            tail = _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(dot_i8_avx2(w0, a0)), tail);                              \
        }                                                                                                           \
        s[r] = hsum_ps_avx512(_mm512_add_ps(acc0, acc1)) + hsum_ps_avx2(tail);                                      \
    }

static void vec_dot_q8_0_q8_0_rows_avx512(int64_t n, float *s, const void *w, size_t row_bytes, int64_t n_rows,
                                          int64_t rows_after, const void *x)
{
    VEC_DOT_ROWS_AVX512(tq_block_q8_0, q8_0_codes_2, q8_0_codes_1, vec_dot_q8_0_q8_0_avx512)
}

static void vec_dot_q5_0_q8_0_rows_avx512(int64_t n, float *s, const void *w, size_t row_bytes, int64_t n_rows,
                                          int64_t rows_after, const void *x)
{
    VEC_DOT_ROWS_AVX512(tq_block_q5_0, q5_0_codes_2, q5_0_codes_1, vec_dot_q5_0_q8_0_avx512)
}

const tq_matmul_kernels tq_matmul_kernels_avx512 = {
    .quantize_row_q8_0 = tq_quantize_row_q8_0_avx2,
    .quantize_row_q8_K = tq_quantize_row_q8_K_avx2,
    .vec_dot =
        {
            [TQ_TYPE_F32] = vec_dot_f32_avx512,
            [TQ_TYPE_F16] = vec_dot_f16_avx512,
            [TQ_TYPE_BF16] = tq_vec_dot_bf16_avx2,
            [TQ_TYPE_Q4_0] = tq_vec_dot_q4_0_q8_0_avx2,
            [TQ_TYPE_Q4_1] = tq_vec_dot_q4_1_q8_0_avx2,
            [TQ_TYPE_Q5_0] = vec_dot_q5_0_q8_0_avx512,
            [TQ_TYPE_Q5_1] = tq_vec_dot_q5_1_q8_0_avx2,
            [TQ_TYPE_Q8_0] = vec_dot_q8_0_q8_0_avx512,
            [TQ_TYPE_Q4_K] = tq_vec_dot_q4_K_q8_K_avx2,
            [TQ_TYPE_Q5_K] = tq_vec_dot_q5_K_q8_K_avx2,
            [TQ_TYPE_Q6_K] = tq_vec_dot_q6_K_q8_K_avx2,
        },
    .vec_dot_x4 =
        {
            [TQ_TYPE_Q5_0] = vec_dot_q5_0_q8_0_x4_avx512,
            [TQ_TYPE_Q8_0] = vec_dot_q8_0_q8_0_x4_avx512,
            [TQ_TYPE_Q4_K] = tq_vec_dot_q4_K_q8_K_x4_avx2,
            [TQ_TYPE_Q6_K] = tq_vec_dot_q6_K_q8_K_x4_avx2,
        },
    .vec_dot_rows =
        {
            [TQ_TYPE_Q5_0] = vec_dot_q5_0_q8_0_rows_avx512,
            [TQ_TYPE_Q8_0] = vec_dot_q8_0_q8_0_rows_avx512,
        },
};
