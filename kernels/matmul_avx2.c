/* AVX2 kernels (with FMA and F16C): activation quantization and block dot products.
 *
 * Signed 8-bit products use _mm256_maddubs_epi16, which multiplies unsigned by
 * signed bytes: a signed weight w is passed as |w| with its sign moved onto the
 * activation. Pair sums stay below 2 * 128 * 127 = 32512, so the 16-bit results
 * never saturate. Activation codes lie in -127..127.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "matmul_kernels.h"
#include "weights.h"

#include "matmul_avx2_helpers.h"

/* ---- activation quantization ---- */

/* Quantize 32 floats with multiplier id into 32 int8 codes at out, rounding to
 * nearest even as the scalar reference's lrintf does. */
static inline void quantize_32(const float *x, __m256 id, int8_t *out)
{
    __m256i i[4];
    for (int k = 0; k < 4; k++) {
        const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), id);
        i[k] = _mm256_cvtps_epi32(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    /* packs works per 128-bit lane, leaving groups of four codes in the order
     * 0, 2, 4, 6, 1, 3, 5, 7; the permutation restores 0..7. */
    const __m256i words_01 = _mm256_packs_epi32(i[0], i[1]);
    const __m256i words_23 = _mm256_packs_epi32(i[2], i[3]);
    const __m256i bytes = _mm256_packs_epi16(words_01, words_23);
    const __m256i ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)out, ordered);
}

static inline float max_abs_avx2(const float *x, int n)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 vmax = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) {
        vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

void tq_quantize_row_q8_0_avx2(const float *x, void *y, int64_t n)
{
    tq_block_q8_0 *blocks = (tq_block_q8_0 *)y;
    for (int64_t b = 0; b < n / TQ_QK8_0; b++) {
        const float *xb = x + b * TQ_QK8_0;
        const float amax = max_abs_avx2(xb, TQ_QK8_0);
        const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        blocks[b].d = tq_fp32_to_fp16(amax / 127.0f);
        quantize_32(xb, _mm256_set1_ps(id), blocks[b].qs);
    }
}

void tq_quantize_row_q8_K_avx2(const float *x, void *y, int64_t n)
{
    tq_block_q8_K *blocks = (tq_block_q8_K *)y;
    for (int64_t b = 0; b < n / TQ_QK_K; b++) {
        const float *xb = x + b * TQ_QK_K;
        const float amax = max_abs_avx2(xb, TQ_QK_K);
        const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        blocks[b].d = amax / 127.0f;
        for (int k = 0; k < TQ_QK_K / 32; k++) {
            quantize_32(xb + 32 * k, _mm256_set1_ps(id), blocks[b].qs + 32 * k);
        }
        for (int k = 0; k < TQ_QK_K / 16; k++) {
            /* Sum 16 codes: widen to 16 bits, pairwise-add to 32 bits, reduce. */
            const __m256i words = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blocks[b].qs + 16 * k)));
            blocks[b].bsums[k] = (int16_t)hsum_i32_avx2(_mm256_madd_epi16(words, _mm256_set1_epi16(1)));
        }
    }
}

/* ---- float weights ---- */

void tq_vec_dot_f32_avx2(int64_t n, float *s, const void *w, const void *x)
{
    const float *wf = (const float *)w;
    const float *xf = (const float *)x;
    __m256 acc0 = _mm256_setzero_ps();
    __m256 acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(wf + i), _mm256_loadu_ps(xf + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(wf + i + 8), _mm256_loadu_ps(xf + i + 8), acc1);
    }
    float sum = hsum_ps_avx2(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) {
        sum += wf[i] * xf[i];
    }
    *s = sum;
}

void tq_vec_dot_f16_avx2(int64_t n, float *s, const void *w, const void *x)
{
    const tq_fp16 *wh = (const tq_fp16 *)w;
    const float *xf = (const float *)x;
    __m256 acc0 = _mm256_setzero_ps();
    __m256 acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wh + i)));
        const __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wh + i + 8)));
        acc0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xf + i), acc0);
        acc1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xf + i + 8), acc1);
    }
    float sum = hsum_ps_avx2(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) {
        sum += tq_fp16_to_fp32(wh[i]) * xf[i];
    }
    *s = sum;
}

void tq_vec_dot_bf16_avx2(int64_t n, float *s, const void *w, const void *x)
{
    const tq_bf16 *wh = (const tq_bf16 *)w;
    const float *xf = (const float *)x;
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(wh + i)));
        const __m256 wv = _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
        acc = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xf + i), acc);
    }
    float sum = hsum_ps_avx2(acc);
    for (; i < n; i++) {
        sum += tq_bf16_to_fp32(wh[i]) * xf[i];
    }
    *s = sum;
}

/* ---- 32-value formats with Q8_0 activations ---- */

void tq_vec_dot_q8_0_q8_0_avx2(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q8_0 *wb = (const tq_block_q8_0 *)w;
    const tq_block_q8_0 *xb = (const tq_block_q8_0 *)x;
    const int64_t nb = n / TQ_QK8_0;
    __m256 acc0 = _mm256_setzero_ps();
    __m256 acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)wb[b].qs);
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)wb[b + 1].qs);
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)xb[b].qs);
        const __m256i x1 = _mm256_loadu_si256((const __m256i *)xb[b + 1].qs);
        const __m256 d0 = _mm256_set1_ps(_cvtsh_ss(wb[b].d) * _cvtsh_ss(xb[b].d));
        const __m256 d1 = _mm256_set1_ps(_cvtsh_ss(wb[b + 1].d) * _cvtsh_ss(xb[b + 1].d));
        acc0 = _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(dot_i8_avx2(w0, x0)), acc0);
        acc1 = _mm256_fmadd_ps(d1, _mm256_cvtepi32_ps(dot_i8_avx2(w1, x1)), acc1);
    }
    for (; b < nb; b++) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)wb[b].qs);
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)xb[b].qs);
        const __m256 d0 = _mm256_set1_ps(_cvtsh_ss(wb[b].d) * _cvtsh_ss(xb[b].d));
        acc0 = _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(dot_i8_avx2(w0, x0)), acc0);
    }
    *s = hsum_ps_avx2(_mm256_add_ps(acc0, acc1));
}

void tq_vec_dot_q4_0_q8_0_avx2(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q4_0 *wb = (const tq_block_q4_0 *)w;
    const tq_block_q8_0 *xb = (const tq_block_q8_0 *)x;
    const __m256i eight = _mm256_set1_epi8(8);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / TQ_QK4_0; b++) {
        const __m256i q = _mm256_sub_epi8(nibbles_32_avx2(wb[b].qs), eight);
        const __m256i a = _mm256_loadu_si256((const __m256i *)xb[b].qs);
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(wb[b].d) * _cvtsh_ss(xb[b].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8_avx2(q, a)), acc);
    }
    *s = hsum_ps_avx2(acc);
}

void tq_vec_dot_q4_1_q8_0_avx2(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q4_1 *wb = (const tq_block_q4_1 *)w;
    const tq_block_q8_0 *xb = (const tq_block_q8_0 *)x;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / TQ_QK4_1; b++) {
        const __m256i q = nibbles_32_avx2(wb[b].qs);
        const __m256i a = _mm256_loadu_si256((const __m256i *)xb[b].qs);
        const float dx = _cvtsh_ss(xb[b].d);
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(wb[b].d) * dx);
        const __m256 m = _mm256_set1_ps(_cvtsh_ss(wb[b].m) * dx);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_u8_i8_avx2(q, a)), acc);
        acc = _mm256_fmadd_ps(m, _mm256_cvtepi32_ps(dot_u8_i8_avx2(_mm256_set1_epi8(1), a)), acc);
    }
    *s = hsum_ps_avx2(acc);
}

void tq_vec_dot_q5_0_q8_0_avx2(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q5_0 *wb = (const tq_block_q5_0 *)w;
    const tq_block_q8_0 *xb = (const tq_block_q8_0 *)x;
    const int64_t nb = n / TQ_QK5_0;
    const __m256i minus16 = _mm256_set1_epi8((char)0xF0);
    __m256 acc0 = _mm256_setzero_ps();
    __m256 acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    /* q - 16 equals the nibble with bits 4-7 set (as int8) when the fifth bit is
     * clear, and the plain nibble when it is set. */
    for (; b + 2 <= nb; b += 2) {
        const __m256i q0 = _mm256_or_si256(nibbles_32_avx2(wb[b].qs),
                                           _mm256_andnot_si256(bits_32_avx2(wb[b].qh), minus16));
        const __m256i q1 = _mm256_or_si256(nibbles_32_avx2(wb[b + 1].qs),
                                           _mm256_andnot_si256(bits_32_avx2(wb[b + 1].qh), minus16));
        const __m256i a0 = _mm256_loadu_si256((const __m256i *)xb[b].qs);
        const __m256i a1 = _mm256_loadu_si256((const __m256i *)xb[b + 1].qs);
        const __m256 d0 = _mm256_set1_ps(_cvtsh_ss(wb[b].d) * _cvtsh_ss(xb[b].d));
        const __m256 d1 = _mm256_set1_ps(_cvtsh_ss(wb[b + 1].d) * _cvtsh_ss(xb[b + 1].d));
        acc0 = _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(dot_i8_avx2(q0, a0)), acc0);
        acc1 = _mm256_fmadd_ps(d1, _mm256_cvtepi32_ps(dot_i8_avx2(q1, a1)), acc1);
    }
    for (; b < nb; b++) {
        const __m256i q0 = _mm256_or_si256(nibbles_32_avx2(wb[b].qs),
                                           _mm256_andnot_si256(bits_32_avx2(wb[b].qh), minus16));
        const __m256i a0 = _mm256_loadu_si256((const __m256i *)xb[b].qs);
        const __m256 d0 = _mm256_set1_ps(_cvtsh_ss(wb[b].d) * _cvtsh_ss(xb[b].d));
        acc0 = _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(dot_i8_avx2(q0, a0)), acc0);
    }
    *s = hsum_ps_avx2(_mm256_add_ps(acc0, acc1));
}

void tq_vec_dot_q5_1_q8_0_avx2(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q5_1 *wb = (const tq_block_q5_1 *)w;
    const tq_block_q8_0 *xb = (const tq_block_q8_0 *)x;
    const __m256i bit4 = _mm256_set1_epi8(0x10);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / TQ_QK5_1; b++) {
        const __m256i q =
            _mm256_or_si256(nibbles_32_avx2(wb[b].qs), _mm256_and_si256(bits_32_avx2(wb[b].qh), bit4));
        const __m256i a = _mm256_loadu_si256((const __m256i *)xb[b].qs);
        const float dx = _cvtsh_ss(xb[b].d);
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(wb[b].d) * dx);
        const __m256 m = _mm256_set1_ps(_cvtsh_ss(wb[b].m) * dx);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_u8_i8_avx2(q, a)), acc);
        acc = _mm256_fmadd_ps(m, _mm256_cvtepi32_ps(dot_u8_i8_avx2(_mm256_set1_epi8(1), a)), acc);
    }
    *s = hsum_ps_avx2(acc);
}

/* ---- K-quants with Q8_K activations ---- */

void tq_vec_dot_q4_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q4_K *wb = (const tq_block_q4_K *)w;
    const tq_block_q8_K *xb = (const tq_block_q8_K *)x;
    const __m256i low4 = _mm256_set1_epi8(0xF);
    __m256 acc = _mm256_setzero_ps();
    float min_sum = 0.0f;
    for (int64_t b = 0; b < n / TQ_QK_K; b++) {
        uint8_t scales[16]; /* 8 scales, then 8 mins */
        tq_unpack_scales_k4(wb[b].scales, scales);
        const float d = _cvtsh_ss(wb[b].d) * xb[b].d;
        const float dmin = _cvtsh_ss(wb[b].dmin) * xb[b].d;
        min_sum += dmin * (float)k4_min_dot_avx2(scales + 8, xb[b].bsums);

        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(wb[b].qs + 32 * j));
            const __m256i q_lo = _mm256_and_si256(q, low4);
            const __m256i q_hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
            const __m256i a_lo = _mm256_loadu_si256((const __m256i *)(xb[b].qs + 64 * j));
            const __m256i a_hi = _mm256_loadu_si256((const __m256i *)(xb[b].qs + 64 * j + 32));
            const __m256i p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(q_lo, a_lo), _mm256_set1_epi16(scales[2 * j]));
            const __m256i p_hi =
                _mm256_madd_epi16(_mm256_maddubs_epi16(q_hi, a_hi), _mm256_set1_epi16(scales[2 * j + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p_lo, p_hi));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps_avx2(acc) - min_sum;
}

void tq_vec_dot_q5_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q5_K *wb = (const tq_block_q5_K *)w;
    const tq_block_q8_K *xb = (const tq_block_q8_K *)x;
    const __m256i low4 = _mm256_set1_epi8(0xF);
    const __m256i bit0 = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    float min_sum = 0.0f;
    for (int64_t b = 0; b < n / TQ_QK_K; b++) {
        uint8_t scales[16];
        tq_unpack_scales_k4(wb[b].scales, scales);
        const float d = _cvtsh_ss(wb[b].d) * xb[b].d;
        const float dmin = _cvtsh_ss(wb[b].dmin) * xb[b].d;
        min_sum += dmin * (float)k4_min_dot_avx2(scales + 8, xb[b].bsums);

        /* Bit 2j of qh[l] is the fifth bit of the low-nibble value of chunk j, and bit
         * 2j + 1 that of the high-nibble value. Shifting by 2 per chunk exposes both. */
        __m256i high = _mm256_loadu_si256((const __m256i *)wb[b].qh);
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(wb[b].qs + 32 * j));
            const __m256i h_lo = _mm256_slli_epi16(_mm256_and_si256(high, bit0), 4);
            const __m256i h_hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(high, 1), bit0), 4);
            high = _mm256_srli_epi16(high, 2);
            const __m256i q_lo = _mm256_or_si256(_mm256_and_si256(q, low4), h_lo);
            const __m256i q_hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), low4), h_hi);
            const __m256i a_lo = _mm256_loadu_si256((const __m256i *)(xb[b].qs + 64 * j));
            const __m256i a_hi = _mm256_loadu_si256((const __m256i *)(xb[b].qs + 64 * j + 32));
            const __m256i p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(q_lo, a_lo), _mm256_set1_epi16(scales[2 * j]));
            const __m256i p_hi =
                _mm256_madd_epi16(_mm256_maddubs_epi16(q_hi, a_hi), _mm256_set1_epi16(scales[2 * j + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p_lo, p_hi));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps_avx2(acc) - min_sum;
}

void tq_vec_dot_q6_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *x)
{
    const tq_block_q6_K *wb = (const tq_block_q6_K *)w;
    const tq_block_q8_K *xb = (const tq_block_q8_K *)x;
    const __m256i low4 = _mm256_set1_epi8(0xF);
    const __m256i low2 = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / TQ_QK_K; b++) {
        /* sum sc (q - 32) a = sum sc q a - 32 sum_k sc[k] bsums[k]: the offset term
         * comes from the Q8_K partial sums, so the loop multiplies unsigned q only. */
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)wb[b].scales));
        const __m256i bsums = _mm256_loadu_si256((const __m256i *)xb[b].bsums);
        __m256i sumi = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(sc16, bsums), 5));

        for (int half = 0; half < 2; half++) {
            const uint8_t *ql = wb[b].ql + 64 * half;
            const __m256i ql0 = _mm256_loadu_si256((const __m256i *)ql);
            const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(wb[b].qh + 32 * half));
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(ql0, low4), _mm256_slli_epi16(_mm256_and_si256(qh, low2), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(ql1, low4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), low2), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), low2), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), low2), 4));
            const int8_t *sc = wb[b].scales + 8 * half;
            const int8_t *a = xb[b].qs + 128 * half;
            for (int k = 0; k < 4; k++) {
                /* The low 128-bit lane covers values 0-15 of the chunk (scale 2k),
                 * the high lane values 16-31 (scale 2k + 1). */
                const __m256i scale = _mm256_set_m128i(_mm_set1_epi16(sc[2 * k + 1]), _mm_set1_epi16(sc[2 * k]));
                const __m256i ak = _mm256_loadu_si256((const __m256i *)(a + 32 * k));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(q[k], ak), scale));
            }
        }
        const float d = _cvtsh_ss(wb[b].d) * xb[b].d;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps_avx2(acc);
}

/* ---- four tokens per weight row ---- */

#define X4_TOKENS 4

static inline const void *token_row(const void *x, size_t x_stride, int t)
{
    return (const uint8_t *)x + (size_t)t * x_stride;
}

void tq_vec_dot_q8_0_q8_0_x4_avx2(int64_t n, float *s, size_t s_stride, const void *w, const void *x,
                                  size_t x_stride)
{
    /* Even blocks go to acc0 and odd ones to acc1, as in tq_vec_dot_q8_0_q8_0_avx2, so each
     * token's result is bit for bit the one-token result (speculative verification relies on
     * it). */
    const tq_block_q8_0 *wb = (const tq_block_q8_0 *)w;
    const tq_block_q8_0 *xb[X4_TOKENS];
    __m256 acc[X4_TOKENS][2];
    for (int t = 0; t < X4_TOKENS; t++) {
        xb[t] = (const tq_block_q8_0 *)token_row(x, x_stride, t);
        acc[t][0] = _mm256_setzero_ps();
        acc[t][1] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < n / TQ_QK8_0; b++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)wb[b].qs);
        const __m256i abs_q = _mm256_sign_epi8(q, q);
        const float dw = _cvtsh_ss(wb[b].d);
        for (int t = 0; t < X4_TOKENS; t++) {
            const __m256i a = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)xb[t][b].qs), q);
            const __m256 d = _mm256_set1_ps(dw * _cvtsh_ss(xb[t][b].d));
            acc[t][b & 1] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_u8_i8_avx2(abs_q, a)), acc[t][b & 1]);
        }
    }
    for (int t = 0; t < X4_TOKENS; t++) {
        s[(size_t)t * s_stride] = hsum_ps_avx2(_mm256_add_ps(acc[t][0], acc[t][1]));
    }
}

void tq_vec_dot_q5_0_q8_0_x4_avx2(int64_t n, float *s, size_t s_stride, const void *w, const void *x,
                                  size_t x_stride)
{
    /* Accumulators by block parity, as in the Q8_0 kernel above. */
    const tq_block_q5_0 *wb = (const tq_block_q5_0 *)w;
    const tq_block_q8_0 *xb[X4_TOKENS];
    __m256 acc[X4_TOKENS][2];
    for (int t = 0; t < X4_TOKENS; t++) {
        xb[t] = (const tq_block_q8_0 *)token_row(x, x_stride, t);
        acc[t][0] = _mm256_setzero_ps();
        acc[t][1] = _mm256_setzero_ps();
    }
    const __m256i minus16 = _mm256_set1_epi8((char)0xF0);
    for (int64_t b = 0; b < n / TQ_QK5_0; b++) {
        const __m256i q =
            _mm256_or_si256(nibbles_32_avx2(wb[b].qs), _mm256_andnot_si256(bits_32_avx2(wb[b].qh), minus16));
        const __m256i abs_q = _mm256_sign_epi8(q, q);
        const float dw = _cvtsh_ss(wb[b].d);
        for (int t = 0; t < X4_TOKENS; t++) {
            const __m256i a = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)xb[t][b].qs), q);
            const __m256 d = _mm256_set1_ps(dw * _cvtsh_ss(xb[t][b].d));
            acc[t][b & 1] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_u8_i8_avx2(abs_q, a)), acc[t][b & 1]);
        }
    }
    for (int t = 0; t < X4_TOKENS; t++) {
        s[(size_t)t * s_stride] = hsum_ps_avx2(_mm256_add_ps(acc[t][0], acc[t][1]));
    }
}

/* ---- K-quant weight rows for one to four tokens ----
 * Each token follows the one-token kernel of its type operation for operation. It takes the
 * same int32 sums per block, the same float products of the weight and activation scales, one
 * fmadd per block into one 256-bit accumulator and the same final sums. So each result is bit
 * for bit what tq_vec_dot_q4_K_q8_K_avx2 or tq_vec_dot_q6_K_q8_K_avx2 gives. A block's codes
 * and scales are decoded once for all tokens. N_TOKENS is a constant in each instance, so that
 * the compiler keeps every token's accumulators in registers. */

#define DEFINE_VEC_DOT_Q4_K_TOKENS_AVX2(name, N_TOKENS)                                                             \
    static inline void name(int64_t n, float *s, size_t s_stride, const void *w, const void *x, size_t x_stride)    \
    {                                                                                                               \
        const tq_block_q4_K *wb = (const tq_block_q4_K *)w;                                                         \
        const tq_block_q8_K *xb[N_TOKENS];                                                                          \
        __m256 acc[N_TOKENS];                                                                                       \
        float min_sum[N_TOKENS];                                                                                    \
        for (int t = 0; t < N_TOKENS; t++) {                                                                        \
            xb[t] = (const tq_block_q8_K *)token_row(x, x_stride, t);                                               \
            acc[t] = _mm256_setzero_ps();                                                                           \
            min_sum[t] = 0.0f;                                                                                      \
        }                                                                                                           \
        const __m256i low4 = _mm256_set1_epi8(0xF);                                                                 \
        for (int64_t b = 0; b < n / TQ_QK_K; b++) {                                                                 \
            uint8_t scales[16]; /* 8 scales, then 8 mins */                                                         \
            tq_unpack_scales_k4(wb[b].scales, scales);                                                              \
            const float dw = _cvtsh_ss(wb[b].d);                                                                    \
            const float dminw = _cvtsh_ss(wb[b].dmin);                                                              \
            __m256i sumi[N_TOKENS];                                                                                 \
            for (int t = 0; t < N_TOKENS; t++) {                                                                    \
                min_sum[t] += dminw * xb[t][b].d * (float)k4_min_dot_avx2(scales + 8, xb[t][b].bsums);              \
                sumi[t] = _mm256_setzero_si256();                                                                   \
            }                                                                                                       \
            for (int j = 0; j < 4; j++) {                                                                           \
                const __m256i q = _mm256_loadu_si256((const __m256i *)(wb[b].qs + 32 * j));                         \
                const __m256i q_lo = _mm256_and_si256(q, low4);                                                     \
                const __m256i q_hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);                               \
                const __m256i scale_lo = _mm256_set1_epi16(scales[2 * j]);                                          \
                const __m256i scale_hi = _mm256_set1_epi16(scales[2 * j + 1]);                                      \
                for (int t = 0; t < N_TOKENS; t++) {                                                                \
                    const __m256i a_lo = _mm256_loadu_si256((const __m256i *)(xb[t][b].qs + 64 * j));               \
                    const __m256i a_hi = _mm256_loadu_si256((const __m256i *)(xb[t][b].qs + 64 * j + 32));          \
                    const __m256i p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(q_lo, a_lo), scale_lo);             \
                    const __m256i p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(q_hi, a_hi), scale_hi);             \
                    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p_lo, p_hi));                              \
                }                                                                                                   \
            }                                                                                                       \
            for (int t = 0; t < N_TOKENS; t++) {                                                                    \
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xb[t][b].d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);     \
            }                                                                                                       \
        }                                                                                                           \
        for (int t = 0; t < N_TOKENS; t++) {                                                                        \
            s[(size_t)t * s_stride] = hsum_ps_avx2(acc[t]) - min_sum[t];                                            \
        }                                                                                                           \
    }

#define DEFINE_VEC_DOT_Q6_K_TOKENS_AVX2(name, N_TOKENS)                                                             \
    static inline void name(int64_t n, float *s, size_t s_stride, const void *w, const void *x, size_t x_stride)    \
    {                                                                                                               \
        const tq_block_q6_K *wb = (const tq_block_q6_K *)w;                                                         \
        const tq_block_q8_K *xb[N_TOKENS];                                                                          \
        __m256 acc[N_TOKENS];                                                                                       \
        for (int t = 0; t < N_TOKENS; t++) {                                                                        \
            xb[t] = (const tq_block_q8_K *)token_row(x, x_stride, t);                                               \
            acc[t] = _mm256_setzero_ps();                                                                           \
        }                                                                                                           \
        const __m256i low4 = _mm256_set1_epi8(0xF);                                                                 \
        const __m256i low2 = _mm256_set1_epi8(3);                                                                   \
        for (int64_t b = 0; b < n / TQ_QK_K; b++) {                                                                 \
            /* Offset term -32 sum_k sc[k] bsums[k], as in the one-token kernel. */                                 \
            const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)wb[b].scales));              \
            __m256i sumi[N_TOKENS];                                                                                 \
            for (int t = 0; t < N_TOKENS; t++) {                                                                    \
                const __m256i bsums = _mm256_loadu_si256((const __m256i *)xb[t][b].bsums);                          \
                sumi[t] =                                                                                           \
                    _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(sc16, bsums), 5)); \
            }                                                                                                       \
            for (int half = 0; half < 2; half++) {                                                                  \
                const uint8_t *ql = wb[b].ql + 64 * half;                                                           \
                const __m256i ql0 = _mm256_loadu_si256((const __m256i *)ql);                                        \
                const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(ql + 32));                                 \
                const __m256i qh = _mm256_loadu_si256((const __m256i *)(wb[b].qh + 32 * half));                     \
                __m256i q[4];                                                                                       \
                q[0] = _mm256_or_si256(_mm256_and_si256(ql0, low4),                                                 \
                                       _mm256_slli_epi16(_mm256_and_si256(qh, low2), 4));                           \
                q[1] = _mm256_or_si256(_mm256_and_si256(ql1, low4),                                                 \
                                       _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), low2), 4));     \
                q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),                           \
                                       _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), low2), 4));     \
                q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),                           \
                                       _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), low2), 4));     \
                const int8_t *sc = wb[b].scales + 8 * half;                                                         \
                for (int k = 0; k < 4; k++) {                                                                       \
                    const __m256i scale =                                                                           \
                        _mm256_set_m128i(_mm_set1_epi16(sc[2 * k + 1]), _mm_set1_epi16(sc[2 * k]));                 \
                    for (int t = 0; t < N_TOKENS; t++) {                                                            \
                        const __m256i a =                                                                           \
                            _mm256_loadu_si256((const __m256i *)(xb[t][b].qs + 128 * half + 32 * k));               \
                        sumi[t] =                                                                                   \
                            _mm256_add_epi32(sumi[t], _mm256_madd_epi16(_mm256_maddubs_epi16(q[k], a), scale));     \
                    }                                                                                               \
                }                                                                                                   \
            }                                                                                                       \
            const float dw = _cvtsh_ss(wb[b].d);                                                                    \
            for (int t = 0; t < N_TOKENS; t++) {                                                                    \
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xb[t][b].d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);     \
            }                                                                                                       \
        }                                                                                                           \
        for (int t = 0; t < N_TOKENS; t++) {                                                                        \
            s[(size_t)t * s_stride] = hsum_ps_avx2(acc[t]);                                                         \
        }                                                                                                           \
    }

DEFINE_VEC_DOT_Q4_K_TOKENS_AVX2(q4_K_row_1token, 1)
DEFINE_VEC_DOT_Q4_K_TOKENS_AVX2(q4_K_row_2tokens, 2)
DEFINE_VEC_DOT_Q4_K_TOKENS_AVX2(q4_K_row_3tokens, 3)
DEFINE_VEC_DOT_Q4_K_TOKENS_AVX2(q4_K_row_4tokens, 4)
DEFINE_VEC_DOT_Q6_K_TOKENS_AVX2(q6_K_row_1token, 1)
DEFINE_VEC_DOT_Q6_K_TOKENS_AVX2(q6_K_row_2tokens, 2)
DEFINE_VEC_DOT_Q6_K_TOKENS_AVX2(q6_K_row_3tokens, 3)
DEFINE_VEC_DOT_Q6_K_TOKENS_AVX2(q6_K_row_4tokens, 4)

void tq_vec_dot_q4_K_q8_K_x4_avx2(int64_t n, float *s, size_t s_stride, const void *w, const void *x,
                                  size_t x_stride)
{
    q4_K_row_4tokens(n, s, s_stride, w, x, x_stride);
}

void tq_vec_dot_q6_K_q8_K_x4_avx2(int64_t n, float *s, size_t s_stride, const void *w, const void *x,
                                  size_t x_stride)
{
    q6_K_row_4tokens(n, s, s_stride, w, x, x_stride);
}

/* Rows ahead that the K-quant rows kernels prefetch. The measurements ran on the 2-core Xeon of
 * docs/benchmarks.md with the Q6_K ffn_down of Gemma 3 270M (2048 x 640), one thread, CPU time
 * and medians of 25 calls. Read from beyond L2 (60 copies in turn), one token took 0.14 ms with
 * 8 rows ahead and 0.17 ms without prefetch, two tokens 0.16 against 0.19 ms. From three
 * tokens on, where the arithmetic bounds the product, and with weights already in L2, 0, 2, 4,
 * 8 and 16 rows ahead took the same time within the noise. */
#define K_ROWS_PREFETCH_AHEAD 8

/* Define the rows kernel `name` over the one-row kernel ROW_FN, with a software prefetch of the
 * row K_ROWS_PREFETCH_AHEAD rows ahead. */
#define DEFINE_VEC_DOT_ROWS_AVX2(name, ROW_FN)                                                                      \
    static void name(int64_t n, float *s, size_t s_stride, const void *w, size_t row_bytes, int64_t n_rows,         \
                     int64_t rows_after, const void *x, size_t x_stride)                                            \
    {                                                                                                               \
        for (int64_t r = 0; r < n_rows; r++) {                                                                      \
            if (r + K_ROWS_PREFETCH_AHEAD < n_rows + rows_after) {                                                  \
                prefetch_row((const uint8_t *)w + (size_t)(r + K_ROWS_PREFETCH_AHEAD) * row_bytes, row_bytes);      \
            }                                                                                                       \
            ROW_FN(n, s + r, s_stride, (const uint8_t *)w + (size_t)r * row_bytes, x, x_stride);                    \
        }                                                                                                           \
    }

DEFINE_VEC_DOT_ROWS_AVX2(q4_K_rows_1token, q4_K_row_1token)
DEFINE_VEC_DOT_ROWS_AVX2(q4_K_rows_2tokens, q4_K_row_2tokens)
DEFINE_VEC_DOT_ROWS_AVX2(q4_K_rows_3tokens, q4_K_row_3tokens)
DEFINE_VEC_DOT_ROWS_AVX2(q4_K_rows_4tokens, q4_K_row_4tokens)
DEFINE_VEC_DOT_ROWS_AVX2(q6_K_rows_1token, q6_K_row_1token)
DEFINE_VEC_DOT_ROWS_AVX2(q6_K_rows_2tokens, q6_K_row_2tokens)
DEFINE_VEC_DOT_ROWS_AVX2(q6_K_rows_3tokens, q6_K_row_3tokens)
DEFINE_VEC_DOT_ROWS_AVX2(q6_K_rows_4tokens, q6_K_row_4tokens)

typedef void (*rows_kernel_fn)(int64_t n, float *s, size_t s_stride, const void *w, size_t row_bytes, int64_t n_rows,
                               int64_t rows_after, const void *x, size_t x_stride);

void tq_vec_dot_q4_K_q8_K_rows_avx2(int64_t n, float *s, size_t s_stride, const void *w, size_t row_bytes,
                                    int64_t n_rows, int64_t rows_after, const void *x, size_t x_stride,
                                    int64_t n_tokens)
{
    static const rows_kernel_fn kernels[TQ_VEC_DOT_ROWS_MAX_TOKENS] = {q4_K_rows_1token, q4_K_rows_2tokens,
                                                                       q4_K_rows_3tokens, q4_K_rows_4tokens};
    kernels[n_tokens - 1](n, s, s_stride, w, row_bytes, n_rows, rows_after, x, x_stride);
}

void tq_vec_dot_q6_K_q8_K_rows_avx2(int64_t n, float *s, size_t s_stride, const void *w, size_t row_bytes,
                                    int64_t n_rows, int64_t rows_after, const void *x, size_t x_stride,
                                    int64_t n_tokens)
{
    static const rows_kernel_fn kernels[TQ_VEC_DOT_ROWS_MAX_TOKENS] = {q6_K_rows_1token, q6_K_rows_2tokens,
                                                                       q6_K_rows_3tokens, q6_K_rows_4tokens};
    kernels[n_tokens - 1](n, s, s_stride, w, row_bytes, n_rows, rows_after, x, x_stride);
}

const tq_matmul_kernels tq_matmul_kernels_avx2 = {
    .quantize_row_q8_0 = tq_quantize_row_q8_0_avx2,
    .quantize_row_q8_K = tq_quantize_row_q8_K_avx2,
    .vec_dot =
        {
            [TQ_TYPE_F32] = tq_vec_dot_f32_avx2,
            [TQ_TYPE_F16] = tq_vec_dot_f16_avx2,
            [TQ_TYPE_BF16] = tq_vec_dot_bf16_avx2,
            [TQ_TYPE_Q4_0] = tq_vec_dot_q4_0_q8_0_avx2,
            [TQ_TYPE_Q4_1] = tq_vec_dot_q4_1_q8_0_avx2,
            [TQ_TYPE_Q5_0] = tq_vec_dot_q5_0_q8_0_avx2,
            [TQ_TYPE_Q5_1] = tq_vec_dot_q5_1_q8_0_avx2,
            [TQ_TYPE_Q8_0] = tq_vec_dot_q8_0_q8_0_avx2,
            [TQ_TYPE_Q4_K] = tq_vec_dot_q4_K_q8_K_avx2,
            [TQ_TYPE_Q5_K] = tq_vec_dot_q5_K_q8_K_avx2,
            [TQ_TYPE_Q6_K] = tq_vec_dot_q6_K_q8_K_avx2,
        },
    .vec_dot_x4 =
        {
            [TQ_TYPE_Q5_0] = tq_vec_dot_q5_0_q8_0_x4_avx2,
            [TQ_TYPE_Q8_0] = tq_vec_dot_q8_0_q8_0_x4_avx2,
            [TQ_TYPE_Q4_K] = tq_vec_dot_q4_K_q8_K_x4_avx2,
            [TQ_TYPE_Q6_K] = tq_vec_dot_q6_K_q8_K_x4_avx2,
        },
    .vec_dot_rows =
        {
            [TQ_TYPE_Q4_K] = tq_vec_dot_q4_K_q8_K_rows_avx2,
            [TQ_TYPE_Q6_K] = tq_vec_dot_q6_K_q8_K_rows_avx2,
        },
};
