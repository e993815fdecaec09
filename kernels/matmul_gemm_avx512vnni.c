/* Register-blocked matrix product with AVX-512 VNNI for Q4_0, Q5_0 and Q8_0
 * weights times Q8_0 activations, used for prompt processing (many tokens).
 *
 * _mm512_dpbusd_epi32 multiplies unsigned by signed bytes and adds groups of four
 * products to int32 lanes without saturation. Weights are therefore stored as
 * unsigned codes u = q + offset (offset 8, 16 or 128), and the activation layout
 * carries -offset * (sum of each group of four codes), which starts every lane's
 * accumulation, so each lane ends with the exact integer sum of q * a. Lane sums
 * stay far from the int32 limit: 4 * 255 * 127 + 128 * 4 * 127 < 2^18.
 *
 * Both operands are repacked once per call into pairs of 32-value blocks that
 * fill one 512-bit register: lanes 0-7 belong to the even block, lanes 8-15 to
 * the odd one. An odd last block is paired with a zero block of scale 0, which
 * adds exactly zero. The tile computes 4 weight rows by 3 tokens with 12 float
 * accumulators, so every weight and activation load feeds 3 or 4 products.
 */
#include <immintrin.h>
#include <string.h>

#include "matmul_kernels.h"
#include "weights.h"

#include "matmul_avx2_helpers.h"

#define PAIR_VALUES 64
#define TILE_ROWS 4
#define TILE_TOKENS 3

/* One pair of weight blocks: unsigned codes, then each block's scale repeated in 8 lanes. */
typedef struct {
    uint8_t codes[PAIR_VALUES];
    float scales[16];
} packed_weight_pair;

/* One pair of activation blocks: signed codes, the -offset * group sums that
 * start the integer accumulation, then each block's scale repeated in 8 lanes. */
typedef struct {
    int8_t codes[PAIR_VALUES];
    int32_t start[16];
    float scales[16];
} packed_activation_pair;

_Static_assert(sizeof(packed_weight_pair) == 128, "packed_weight_pair must be two cache lines");
_Static_assert(sizeof(packed_activation_pair) == 192, "packed_activation_pair must be three cache lines");

static int64_t pair_count(int64_t n_in)
{
    return (n_in / TQ_QK8_0 + 1) / 2;
}

static int code_offset(int type)
{
    switch (type) {
    case TQ_TYPE_Q4_0:
        return 8;
    case TQ_TYPE_Q5_0:
        return 16;
    default: /* TQ_TYPE_Q8_0 */
        return 128;
    }
}

static size_t packed_weight_row_bytes(int64_t n_in)
{
    return (size_t)pair_count(n_in) * sizeof(packed_weight_pair);
}

static size_t packed_activation_row_bytes(int64_t n_in)
{
    return (size_t)pair_count(n_in) * sizeof(packed_activation_pair);
}

/* Unsigned codes q + offset of block b of a weight row, in value order. */
static __m256i weight_codes(int type, const uint8_t *row, int64_t b, float *scale)
{
    switch (type) {
    case TQ_TYPE_Q4_0: {
        const tq_block_q4_0 *blk = (const tq_block_q4_0 *)row + b;
        *scale = _cvtsh_ss(blk->d);
        return nibbles_32_avx2(blk->qs);
    }
    case TQ_TYPE_Q5_0: {
        const tq_block_q5_0 *blk = (const tq_block_q5_0 *)row + b;
        uint32_t high;
        memcpy(&high, blk->qh, sizeof(high));
        *scale = _cvtsh_ss(blk->d);
        const __m256i nibbles = nibbles_32_avx2(blk->qs);
        return _mm256_mask_add_epi8(nibbles, _cvtu32_mask32(high), nibbles, _mm256_set1_epi8(0x10));
    }
    default: { /* TQ_TYPE_Q8_0: flipping the sign bit adds 128 */
        const tq_block_q8_0 *blk = (const tq_block_q8_0 *)row + b;
        *scale = _cvtsh_ss(blk->d);
        return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)blk->qs), _mm256_set1_epi8((char)0x80));
    }
    }
}

static void pack_weight_rows(int type, const void *w, size_t row_bytes, int64_t rows, int64_t padded_rows,
                             int64_t n_in, void *packed)
{
    const int64_t nb = n_in / TQ_QK8_0;
    const int64_t n_pairs = pair_count(n_in);
    packed_weight_pair *out = (packed_weight_pair *)packed;
    for (int64_t r = 0; r < padded_rows; r++) {
        const uint8_t *row = (const uint8_t *)w + (size_t)r * row_bytes;
        for (int64_t p = 0; p < n_pairs; p++, out++) {
            for (int half = 0; half < 2; half++) {
                const int64_t b = 2 * p + half;
                float scale = 0.0f;
                __m256i codes = _mm256_setzero_si256();
                if (r < rows && b < nb) {
                    codes = weight_codes(type, row, b, &scale);
                }
                _mm256_storeu_si256((__m256i *)(out->codes + 32 * half), codes);
                _mm256_storeu_ps(out->scales + 8 * half, _mm256_set1_ps(scale));
            }
        }
    }
}

static void pack_activation_row(int type, const void *q8_0_row, int64_t n_in, void *packed)
{
    const tq_block_q8_0 *x = (const tq_block_q8_0 *)q8_0_row;
    const int64_t nb = n_in / TQ_QK8_0;
    const int64_t n_pairs = pair_count(n_in);
    const __m256i minus_offset = _mm256_set1_epi32(-code_offset(type));
    packed_activation_pair *out = (packed_activation_pair *)packed;
    for (int64_t p = 0; p < n_pairs; p++, out++) {
        for (int half = 0; half < 2; half++) {
            const int64_t b = 2 * p + half;
            __m256i codes = _mm256_setzero_si256();
            float scale = 0.0f;
            if (b < nb) {
                codes = _mm256_loadu_si256((const __m256i *)x[b].qs);
                scale = _cvtsh_ss(x[b].d);
            }
            const __m256i sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), codes);
            _mm256_storeu_si256((__m256i *)(out->codes + 32 * half), codes);
            _mm256_storeu_si256((__m256i *)(out->start + 8 * half), _mm256_mullo_epi32(sums, minus_offset));
            _mm256_storeu_ps(out->scales + 8 * half, _mm256_set1_ps(scale));
        }
    }
}

/* Sums of the 16 lanes of each of v[0..3], returned in lanes 0..3. */
static inline __m128 hsum_4x16(const __m512 v[4])
{
    const __m512 x01 = _mm512_add_ps(_mm512_unpacklo_ps(v[0], v[1]), _mm512_unpackhi_ps(v[0], v[1]));
    const __m512 x23 = _mm512_add_ps(_mm512_unpacklo_ps(v[2], v[3]), _mm512_unpackhi_ps(v[2], v[3]));
    /* Each 128-bit lane now contains partial sums in the order v0, v1, v0, v1 and v2, v3, v2, v3. */
    const __m512 y = _mm512_add_ps(_mm512_shuffle_ps(x01, x23, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_ps(x01, x23, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m256 z = _mm256_add_ps(_mm512_castps512_ps256(y), _mm512_extractf32x8_ps(y, 1));
    return _mm_add_ps(_mm256_castps256_ps128(z), _mm256_extractf128_ps(z, 1));
}

/* Products of TILE_ROWS packed weight rows with `tokens` packed activation rows,
 * written to y[t * ldy + r] for r < rows. */
static inline __attribute__((always_inline)) void gemm_tile(int tokens, int rows, int64_t n_pairs,
                                                            const packed_weight_pair *w, int64_t w_stride,
                                                            const packed_activation_pair *a, int64_t a_stride,
                                                            float *y, int64_t ldy)
{
    __m512 acc[TILE_TOKENS][TILE_ROWS];
    for (int t = 0; t < TILE_TOKENS; t++) {
        for (int r = 0; r < TILE_ROWS; r++) {
            acc[t][r] = _mm512_setzero_ps();
        }
    }
    for (int64_t p = 0; p < n_pairs; p++) {
        __m512i codes[TILE_TOKENS];
        __m512i start[TILE_TOKENS];
        __m512 scale[TILE_TOKENS];
        for (int t = 0; t < tokens; t++) {
            const packed_activation_pair *ap = a + t * a_stride + p;
            codes[t] = _mm512_loadu_si512(ap->codes);
            start[t] = _mm512_loadu_si512(ap->start);
            scale[t] = _mm512_loadu_ps(ap->scales);
        }
        for (int r = 0; r < TILE_ROWS; r++) {
            const packed_weight_pair *wp = w + r * w_stride + p;
            const __m512i q = _mm512_loadu_si512(wp->codes);
            const __m512 dw = _mm512_loadu_ps(wp->scales);
            for (int t = 0; t < tokens; t++) {
                const __m512i dot = _mm512_dpbusd_epi32(start[t], q, codes[t]);
                acc[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, scale[t]), acc[t][r]);
            }
        }
    }
    for (int t = 0; t < tokens; t++) {
        const __m128 sums = hsum_4x16(acc[t]);
        if (rows == TILE_ROWS) {
            _mm_storeu_ps(y + t * ldy, sums);
        } else {
            float tmp[TILE_ROWS];
            _mm_storeu_ps(tmp, sums);
            memcpy(y + t * ldy, tmp, (size_t)rows * sizeof(float));
        }
    }
}

static void gemm_rows(int64_t n_in, const void *packed_w, int64_t rows, const void *packed_x, int64_t n_tokens,
                      float *y, int64_t ldy)
{
    const int64_t n_pairs = pair_count(n_in);
    const packed_weight_pair *w = (const packed_weight_pair *)packed_w;
    const packed_activation_pair *a = (const packed_activation_pair *)packed_x;
    int64_t t = 0;
    for (; t + TILE_TOKENS <= n_tokens; t += TILE_TOKENS) {
        for (int64_t r = 0; r < rows; r += TILE_ROWS) {
            const int rm = rows - r < TILE_ROWS ? (int)(rows - r) : TILE_ROWS;
            gemm_tile(TILE_TOKENS, rm, n_pairs, w + r * n_pairs, n_pairs, a + t * n_pairs, n_pairs, y + t * ldy + r,
                      ldy);
        }
    }
    const int rest = (int)(n_tokens - t);
    for (int64_t r = 0; r < rows && rest > 0; r += TILE_ROWS) {
        const int rm = rows - r < TILE_ROWS ? (int)(rows - r) : TILE_ROWS;
        if (rest == 2) {
            gemm_tile(2, rm, n_pairs, w + r * n_pairs, n_pairs, a + t * n_pairs, n_pairs, y + t * ldy + r, ldy);
        } else {
            gemm_tile(1, rm, n_pairs, w + r * n_pairs, n_pairs, a + t * n_pairs, n_pairs, y + t * ldy + r, ldy);
        }
    }
}

const tq_gemm_kernels tq_gemm_kernels_avx512vnni = {
    .min_tokens = 4,
    .row_multiple = TILE_ROWS,
    .supported = {[TQ_TYPE_Q4_0] = 1, [TQ_TYPE_Q5_0] = 1, [TQ_TYPE_Q8_0] = 1},
    .packed_weight_row_bytes = packed_weight_row_bytes,
    .packed_activation_row_bytes = packed_activation_row_bytes,
    .pack_weight_rows = pack_weight_rows,
    .pack_activation_row = pack_activation_row,
    .gemm_rows = gemm_rows,
};
