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

/* Dot products of 64 unsigned bytes abs_w with 64 signed bytes signed_a, as 16 int32 partial sums. */
static inline __m512i dot_abs_avx512(__m512i abs_w, __m512i signed_a)
{
    return _mm512_madd_epi16(_mm512_maddubs_epi16(abs_w, signed_a), _mm512_set1_epi16(1));
}

/* Dot products of 64 signed bytes w with 64 signed bytes a, as 16 int32 partial
 * sums: |w| times a with w's sign moved onto a (see the AVX2 file for the range). */
static inline __m512i dot_i8_avx512(__m512i w, __m512i a)
{
    const __m512i signed_a = _mm512_mask_sub_epi8(a, _mm512_movepi8_mask(w), _mm512_setzero_si512(), a);
    return dot_abs_avx512(_mm512_abs_epi8(w), signed_a);
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

/* The last three steps of hsum_ps_avx2 for four 8-lane vectors at once. halves01 contains the
 * first two as its low and high 256 bits, halves23 the other two. Lane 4t of the result is
 * hsum_ps_avx2 of vector t, from the same additions in the same order. */
static inline __m512 hsum_4x8_ps_avx512(__m512 halves01, __m512 halves23)
{
    const __m512 low = _mm512_shuffle_f32x4(halves01, halves23, _MM_SHUFFLE(2, 0, 2, 0));
    const __m512 high = _mm512_shuffle_f32x4(halves01, halves23, _MM_SHUFFLE(3, 1, 3, 1));
    __m512 sum = _mm512_add_ps(low, high);
    sum = _mm512_add_ps(sum, _mm512_permute_ps(sum, _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_ps(sum, _mm512_movehdup_ps(sum));
}

/* Lane 4t of the result is hsum_ps_avx512(v[t]) for t < 4, from the same additions in the
 * same order. */
static inline __m512 hsum_4x16_ps_avx512(__m512 v0, __m512 v1, __m512 v2, __m512 v3)
{
    const __m512 halves01 = _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, _MM_SHUFFLE(1, 0, 1, 0)),
                                          _mm512_shuffle_f32x4(v0, v1, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 halves23 = _mm512_add_ps(_mm512_shuffle_f32x4(v2, v3, _MM_SHUFFLE(1, 0, 1, 0)),
                                          _mm512_shuffle_f32x4(v2, v3, _MM_SHUFFLE(3, 2, 3, 2)));
    return hsum_4x8_ps_avx512(halves01, halves23);
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

/* The int8 weight codes of two blocks (one 512-bit register) or of one block, for the rows
 * kernels below. q5_0_codes_2 is defined above. */
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

/* ---- many weight rows for one to four tokens ----
 * The Q8_0 LM head of Gemma 3 270M (262,144 rows of 640 values) takes about half of a decode
 * step, and the Q5_0 projections most of the rest. These kernels prepare each token's
 * activation once per call, its block pairs as 512-bit values and its scales as floats, instead
 * of once per row. They also prefetch the row ROWS_PREFETCH_AHEAD rows ahead, which the hardware
 * prefetchers do not do early enough for rows of 680 bytes. A row's codes are decoded once for
 * all tokens, so a draft tree of up to four tokens reads the weights once. Each token then goes
 * through the arithmetic of the one-row kernels above operation for operation, so each result
 * is bit for bit what vec_dot_q8_0_q8_0_avx512 or vec_dot_q5_0_q8_0_avx512 gives. */

/* Activation rows of up to 8192 values are prepared on the stack (16 KiB per token); longer
 * rows take the one-row kernel. */
#define ROWS_MAX_BLOCKS 256

/* On the 2-core Xeon of docs/benchmarks.md, the LM head product took 11.6 ms with no software
 * prefetch, 7.1 ms with 8 rows ahead and 7.0 ms with 16 (13.1 ms with the one-row kernel). */
#define ROWS_PREFETCH_AHEAD 16

/* One token's activation as the rows kernels read it. It contains the block pairs of the groups
 * of four blocks and the two scales of each pair, laid out as scales_2x8 lays them out. The
 * scales of the blocks after the last group (three at most) follow. */
/* Store in s[t * s_stride] (t < n_tokens <= 4) hsum_ps_avx512(sums[t]) + hsum_ps_avx2(tails[t]),
 * bit for bit, with the horizontal sums of the four tokens computed together. Without a tail
 * (has_tail = 0) it adds +0.0, as the one-row kernels add the sum of their zero tail. */
static inline void store_hsums_4x_avx512(const __m512 sums[4], const __m256 tails[4], int has_tail, float *s,
                                         size_t s_stride, int n_tokens)
{
    __m512 totals = hsum_4x16_ps_avx512(sums[0], sums[1], sums[2], sums[3]);
    if (has_tail) {
        const __m512 tails01 = _mm512_insertf32x8(_mm512_castps256_ps512(tails[0]), tails[1], 1);
        const __m512 tails23 = _mm512_insertf32x8(_mm512_castps256_ps512(tails[2]), tails[3], 1);
        totals = _mm512_add_ps(totals, hsum_4x8_ps_avx512(tails01, tails23));
    } else {
        totals = _mm512_add_ps(totals, _mm512_setzero_ps());
    }
    _mm_store_ss(&s[0], _mm512_castps512_ps128(totals));
    _mm_store_ss(&s[s_stride], _mm512_extractf32x4_ps(totals, 1));
    if (n_tokens > 2) {
        _mm_store_ss(&s[2 * s_stride], _mm512_extractf32x4_ps(totals, 2));
    }
    if (n_tokens > 3) {
        _mm_store_ss(&s[3 * s_stride], _mm512_extractf32x4_ps(totals, 3));
    }
}

typedef struct {
    __m512i pairs[ROWS_MAX_BLOCKS / 2];
    __m512 pair_scales[ROWS_MAX_BLOCKS / 2];
    float tail_scales[3];
} rows_activation;

static inline void prepare_rows_activation(const tq_block_q8_0 *xb, int64_t nb, rows_activation *act)
{
    const int64_t grouped = nb / 4 * 4;
    for (int64_t b = 0; b < grouped; b += 2) {
        act->pairs[b / 2] = load_2x256(xb[b].qs, xb[b + 1].qs);
        act->pair_scales[b / 2] = scales_2x8(_cvtsh_ss(xb[b].d), _cvtsh_ss(xb[b + 1].d));
    }
    for (int64_t b = grouped; b < nb; b++) {
        act->tail_scales[b - grouped] = _cvtsh_ss(xb[b].d);
    }
}

/* Define the rows kernel `name` for N_TOKENS tokens (a constant, so that the compiler keeps
 * every token's accumulators in registers). Each token takes the float operations of the
 * one-row kernels in their order. Each lane of d01 and d23 is the scale product dw * dx,
 * which rounds as the scalar product does. One fmadd per pair goes into acc0 or acc1, the tail
 * runs in 256 bits, and the result is hsum(acc0 + acc1) + hsum(tail), whose additions
 * store_hsums_4x_avx512 repeats for several tokens at once. The integer block sums
 * equal those of dot_i8_avx512, because the sign mask and |w| are the same, computed once per
 * row. */
#define DEFINE_VEC_DOT_ROWS_AVX512(name, block_type, CODES_2, CODES_1, N_TOKENS)                                    \
    static void name(int64_t n, float *s, size_t s_stride, const void *w, size_t row_bytes, int64_t n_rows,         \
                     int64_t rows_after, const void *x, size_t x_stride)                                            \
    {                                                                                                               \
        const int64_t nb = n / 32;                                                                                  \
        const int64_t grouped = nb / 4 * 4;                                                                         \
        const tq_block_q8_0 *xb[N_TOKENS];                                                                          \
        rows_activation act[N_TOKENS];                                                                              \
        for (int t = 0; t < N_TOKENS; t++) {                                                                        \
            xb[t] = (const tq_block_q8_0 *)((const uint8_t *)x + (size_t)t * x_stride);                             \
            prepare_rows_activation(xb[t], nb, &act[t]);                                                            \
        }                                                                                                           \
        const __m512i zero = _mm512_setzero_si512();                                                                \
        for (int64_t r = 0; r < n_rows; r++) {                                                                      \
            const block_type *wb = (const block_type *)((const uint8_t *)w + (size_t)r * row_bytes);                \
            if (r + ROWS_PREFETCH_AHEAD < n_rows + rows_after) {                                                    \
                prefetch_row((const uint8_t *)w + (size_t)(r + ROWS_PREFETCH_AHEAD) * row_bytes, row_bytes);        \
            }                                                                                                       \
            __m512 acc0[N_TOKENS], acc1[N_TOKENS];                                                                  \
            __m256 tail[N_TOKENS];                                                                                  \
            for (int t = 0; t < N_TOKENS; t++) {                                                                    \
                acc0[t] = acc1[t] = _mm512_setzero_ps();                                                            \
                tail[t] = _mm256_setzero_ps();                                                                      \
            }                                                                                                       \
            for (int64_t b = 0; b < grouped; b += 4) {                                                              \
                const __m512i w01 = CODES_2(&wb[b], &wb[b + 1]);                                                    \
                const __m512i w23 = CODES_2(&wb[b + 2], &wb[b + 3]);                                                \
                const __m512i abs01 = _mm512_abs_epi8(w01);                                                         \
                const __m512i abs23 = _mm512_abs_epi8(w23);                                                         \
                const __mmask64 negative01 = _mm512_movepi8_mask(w01);                                              \
                const __mmask64 negative23 = _mm512_movepi8_mask(w23);                                              \
                const __m512 dw01 = scales_2x8(_cvtsh_ss(wb[b].d), _cvtsh_ss(wb[b + 1].d));                         \
                const __m512 dw23 = scales_2x8(_cvtsh_ss(wb[b + 2].d), _cvtsh_ss(wb[b + 3].d));                     \
                for (int t = 0; t < N_TOKENS; t++) {                                                                \
                    const __m512i a01 = act[t].pairs[b / 2];                                                        \
                    const __m512i a23 = act[t].pairs[b / 2 + 1];                                                    \
                    const __m512i p01 = dot_abs_avx512(abs01, _mm512_mask_sub_epi8(a01, negative01, zero, a01));    \
                    const __m512i p23 = dot_abs_avx512(abs23, _mm512_mask_sub_epi8(a23, negative23, zero, a23));    \
                    const __m512 d01 = _mm512_mul_ps(dw01, act[t].pair_scales[b / 2]);                              \
                    const __m512 d23 = _mm512_mul_ps(dw23, act[t].pair_scales[b / 2 + 1]);                          \
                    acc0[t] = _mm512_fmadd_ps(d01, _mm512_cvtepi32_ps(p01), acc0[t]);                               \
                    acc1[t] = _mm512_fmadd_ps(d23, _mm512_cvtepi32_ps(p23), acc1[t]);                               \
                }                                                                                                   \
            }                                                                                                       \
            for (int64_t b = grouped; b < nb; b++) {                                                                \
                const __m256i w0 = CODES_1(&wb[b]);                                                                 \
                const float dw = _cvtsh_ss(wb[b].d);                                                                \
                for (int t = 0; t < N_TOKENS; t++) {                                                                \
                    const __m256i a0 = _mm256_loadu_si256((const __m256i *)xb[t][b].qs);                            \
                    const __m256 d0 = _mm256_set1_ps(dw * act[t].tail_scales[b - grouped]);                         \
                    tail[t] = _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(dot_i8_avx2(w0, a0)), tail[t]);                \
                }                                                                                                   \
            }                                                                                                       \
            if (N_TOKENS == 1) {                                                                                    \
                s[r] = hsum_ps_avx512(_mm512_add_ps(acc0[0], acc1[0])) + hsum_ps_avx2(tail[0]);                     \
            } else {                                                                                                \
                __m512 sums[4];                                                                                     \
                __m256 tails[4];                                                                                    \
                for (int t = 0; t < 4; t++) {                                                                       \
                    sums[t] = t < N_TOKENS ? _mm512_add_ps(acc0[t], acc1[t]) : _mm512_setzero_ps();                 \
                    tails[t] = t < N_TOKENS ? tail[t] : _mm256_setzero_ps();                                        \
                }                                                                                                   \
                store_hsums_4x_avx512(sums, tails, grouped < nb, &s[r], s_stride, N_TOKENS);                        \
            }                                                                                                       \
        }                                                                                                           \
    }

typedef void (*rows_kernel_fn)(int64_t n, float *s, size_t s_stride, const void *w, size_t row_bytes, int64_t n_rows,
                               int64_t rows_after, const void *x, size_t x_stride);

DEFINE_VEC_DOT_ROWS_AVX512(q8_0_rows_1token, tq_block_q8_0, q8_0_codes_2, q8_0_codes_1, 1)
DEFINE_VEC_DOT_ROWS_AVX512(q8_0_rows_2tokens, tq_block_q8_0, q8_0_codes_2, q8_0_codes_1, 2)
DEFINE_VEC_DOT_ROWS_AVX512(q8_0_rows_3tokens, tq_block_q8_0, q8_0_codes_2, q8_0_codes_1, 3)
DEFINE_VEC_DOT_ROWS_AVX512(q8_0_rows_4tokens, tq_block_q8_0, q8_0_codes_2, q8_0_codes_1, 4)
DEFINE_VEC_DOT_ROWS_AVX512(q5_0_rows_1token, tq_block_q5_0, q5_0_codes_2, q5_0_codes_1, 1)
DEFINE_VEC_DOT_ROWS_AVX512(q5_0_rows_2tokens, tq_block_q5_0, q5_0_codes_2, q5_0_codes_1, 2)
DEFINE_VEC_DOT_ROWS_AVX512(q5_0_rows_3tokens, tq_block_q5_0, q5_0_codes_2, q5_0_codes_1, 3)
DEFINE_VEC_DOT_ROWS_AVX512(q5_0_rows_4tokens, tq_block_q5_0, q5_0_codes_2, q5_0_codes_1, 4)

/* Run the instance for n_tokens tokens (kernels[n_tokens - 1]), or the one-row kernel per row
 * and token for rows too long to prepare on the stack. */
static void vec_dot_rows_avx512(const rows_kernel_fn kernels[TQ_VEC_DOT_ROWS_MAX_TOKENS], tq_vec_dot_fn one_row,
                                int64_t n, float *s, size_t s_stride, const void *w, size_t row_bytes, int64_t n_rows,
                                int64_t rows_after, const void *x, size_t x_stride, int64_t n_tokens)
{
    if (n / 32 > ROWS_MAX_BLOCKS) {
        for (int64_t t = 0; t < n_tokens; t++) {
            const void *token = (const uint8_t *)x + (size_t)t * x_stride;
            for (int64_t r = 0; r < n_rows; r++) {
                one_row(n, &s[(size_t)t * s_stride + r], (const uint8_t *)w + (size_t)r * row_bytes, token);
            }
        }
        return;
    }
    kernels[n_tokens - 1](n, s, s_stride, w, row_bytes, n_rows, rows_after, x, x_stride);
}

static void vec_dot_q8_0_q8_0_rows_avx512(int64_t n, float *s, size_t s_stride, const void *w, size_t row_bytes,
                                          int64_t n_rows, int64_t rows_after, const void *x, size_t x_stride,
                                          int64_t n_tokens)
{
    static const rows_kernel_fn kernels[TQ_VEC_DOT_ROWS_MAX_TOKENS] = {q8_0_rows_1token, q8_0_rows_2tokens,
                                                                       q8_0_rows_3tokens, q8_0_rows_4tokens};
    vec_dot_rows_avx512(kernels, vec_dot_q8_0_q8_0_avx512, n, s, s_stride, w, row_bytes, n_rows, rows_after, x,
                        x_stride, n_tokens);
}

static void vec_dot_q5_0_q8_0_rows_avx512(int64_t n, float *s, size_t s_stride, const void *w, size_t row_bytes,
                                          int64_t n_rows, int64_t rows_after, const void *x, size_t x_stride,
                                          int64_t n_tokens)
{
    static const rows_kernel_fn kernels[TQ_VEC_DOT_ROWS_MAX_TOKENS] = {q5_0_rows_1token, q5_0_rows_2tokens,
                                                                       q5_0_rows_3tokens, q5_0_rows_4tokens};
    vec_dot_rows_avx512(kernels, vec_dot_q5_0_q8_0_avx512, n, s, s_stride, w, row_bytes, n_rows, rows_after, x,
                        x_stride, n_tokens);
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
            [TQ_TYPE_Q4_K] = tq_vec_dot_q4_K_q8_K_x4_avx2,
            [TQ_TYPE_Q6_K] = tq_vec_dot_q6_K_q8_K_x4_avx2,
        },
    .vec_dot_rows =
        {
            [TQ_TYPE_Q5_0] = vec_dot_q5_0_q8_0_rows_avx512,
            [TQ_TYPE_Q8_0] = vec_dot_q8_0_q8_0_rows_avx512,
            [TQ_TYPE_Q4_K] = tq_vec_dot_q4_K_q8_K_rows_avx2,
            [TQ_TYPE_Q6_K] = tq_vec_dot_q6_K_q8_K_rows_avx2,
        },
};
