/* Register-blocked matrix product with AVX-512 VNNI for prompt processing (many
 * tokens): Q4_0, Q5_0 and Q8_0 weights times Q8_0 activations, and Q4_K and
 * Q6_K weights times Q8_K activations.
 *
 * _mm512_dpbusd_epi32 multiplies unsigned by signed bytes and adds groups of four
 * products to int32 lanes without saturation. Weights are therefore stored as
 * unsigned codes u = q + offset (offset 8, 16, 128 or 32), and the activation
 * layout carries -offset * (sum of each group of four codes), which starts every
 * lane's accumulation, so each lane ends with the exact integer sum of q * a.
 * Lane sums stay far from the int32 limit: 4 * 255 * 127 + 128 * 4 * 127 < 2^19.
 * Q4_K has a per-sub-block min instead of a fixed offset: its term
 * -dmin * m * d_x * (sum of the sub-block's activations) is a short float dot
 * product over the "extra" floats at the end of each packed row.
 *
 * Both operands are repacked once per call into pairs of 32-value blocks that
 * fill one 512-bit register, with a float scale for every int32 lane (each lane
 * covers four consecutive values, so Q6_K's 16-value scales fit). An odd last
 * Q8_0 block is paired with a zero block of scale 0, which adds exactly zero.
 * The tile computes 4 weight rows by 3 tokens with 12 float accumulators, so
 * every weight and activation load feeds 3 or 4 products.
 */
#include <immintrin.h>
#include <string.h>

#include "matmul_kernels.h"
#include "weights.h"

#include "matmul_avx2_helpers.h"

#define PAIR_VALUES 64
#define TILE_ROWS 4
#define TILE_TOKENS 3

/* 64 consecutive weights: unsigned codes, then the scale of each int32 lane. */
typedef struct {
    uint8_t codes[PAIR_VALUES];
    float scales[16];
} packed_weight_pair;

/* 64 consecutive activations: signed codes, the -offset * group sums that start
 * the integer accumulation, then the scale of each int32 lane. */
typedef struct {
    int8_t codes[PAIR_VALUES];
    int32_t start[16];
    float scales[16];
} packed_activation_pair;

_Static_assert(sizeof(packed_weight_pair) == 128, "packed_weight_pair must be two cache lines");
_Static_assert(sizeof(packed_activation_pair) == 192, "packed_activation_pair must be three cache lines");

static int64_t pair_count(int64_t n_in)
{
    return (n_in / 32 + 1) / 2;
}

/* Floats after the pairs of a packed row: the Q4_K min terms, one per 32-value
 * sub-block, padded to whole registers. Other types have none. */
static int64_t extra_count(int type, int64_t n_in)
{
    return type == TQ_TYPE_Q4_K ? (n_in / 32 + 15) / 16 * 16 : 0;
}

static int code_offset(int type)
{
    switch (type) {
    case TQ_TYPE_Q4_0:
        return 8;
    case TQ_TYPE_Q5_0:
        return 16;
    case TQ_TYPE_Q8_0:
        return 128;
    case TQ_TYPE_Q6_K:
        return 32;
    default: /* TQ_TYPE_Q4_K: the mins go through the extra floats instead */
        return 0;
    }
}

static size_t packed_weight_row_bytes(int type, int64_t n_in)
{
    return (size_t)pair_count(n_in) * sizeof(packed_weight_pair) + (size_t)extra_count(type, n_in) * sizeof(float);
}

static size_t packed_activation_row_bytes(int type, int64_t n_in)
{
    return (size_t)pair_count(n_in) * sizeof(packed_activation_pair) +
           (size_t)extra_count(type, n_in) * sizeof(float);
}

/* Unsigned codes q + offset of 32-value block b of a Q4_0, Q5_0 or Q8_0 row, in value order. */
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

static void pack_pair_q8_0_family(int type, const uint8_t *row, int64_t nb, int64_t p, packed_weight_pair *out)
{
    for (int half = 0; half < 2; half++) {
        const int64_t b = 2 * p + half;
        float scale = 0.0f;
        __m256i codes = _mm256_setzero_si256();
        if (b < nb) {
            codes = weight_codes(type, row, b, &scale);
        }
        _mm256_storeu_si256((__m256i *)(out->codes + 32 * half), codes);
        _mm256_storeu_ps(out->scales + 8 * half, _mm256_set1_ps(scale));
    }
}

/* Pairs 4b..4b+3 and the 8 negated min terms of Q4_K block blk. */
static void pack_block_q4_K(const tq_block_q4_K *blk, packed_weight_pair *out, float *mins)
{
    uint8_t scales[16]; /* 8 scales, then 8 mins */
    tq_unpack_scales_k4(blk->scales, scales);
    const float d = _cvtsh_ss(blk->d);
    const float dmin = _cvtsh_ss(blk->dmin);
    const __m256i low4 = _mm256_set1_epi8(0xF);
    for (int j = 0; j < 4; j++) {
        /* Byte l of chunk j contains value l of sub-block 2j (low nibble) and of 2j + 1 (high). */
        const __m256i q = _mm256_loadu_si256((const __m256i *)(blk->qs + 32 * j));
        _mm256_storeu_si256((__m256i *)out[j].codes, _mm256_and_si256(q, low4));
        _mm256_storeu_si256((__m256i *)(out[j].codes + 32), _mm256_and_si256(_mm256_srli_epi16(q, 4), low4));
        _mm256_storeu_ps(out[j].scales, _mm256_set1_ps(d * (float)scales[2 * j]));
        _mm256_storeu_ps(out[j].scales + 8, _mm256_set1_ps(d * (float)scales[2 * j + 1]));
    }
    for (int j = 0; j < 8; j++) {
        mins[j] = -dmin * (float)scales[8 + j];
    }
}

/* Pairs 4b..4b+3 of Q6_K block blk: values 64 i .. 64 i + 63 go to pair i, and
 * each group of 16 values (4 lanes) gets its own scale. */
static void pack_block_q6_K(const tq_block_q6_K *blk, packed_weight_pair *out)
{
    const float d = _cvtsh_ss(blk->d);
    const __m256i low4 = _mm256_set1_epi8(0xF);
    const __m256i low2 = _mm256_set1_epi8(3);
    for (int half = 0; half < 2; half++) {
        const uint8_t *ql = blk->ql + 64 * half;
        const __m256i ql0 = _mm256_loadu_si256((const __m256i *)ql);
        const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(blk->qh + 32 * half));
        __m256i q[4];
        q[0] = _mm256_or_si256(_mm256_and_si256(ql0, low4), _mm256_slli_epi16(_mm256_and_si256(qh, low2), 4));
        q[1] = _mm256_or_si256(_mm256_and_si256(ql1, low4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), low2), 4));
        q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), low2), 4));
        q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), low2), 4));
        for (int k = 0; k < 4; k++) {
            packed_weight_pair *pair = &out[2 * half + k / 2];
            _mm256_storeu_si256((__m256i *)(pair->codes + 32 * (k % 2)), q[k]);
            for (int g = 0; g < 2; g++) {
                const float scale = d * (float)blk->scales[8 * half + 2 * k + g];
                _mm_storeu_ps(pair->scales + 8 * (k % 2) + 4 * g, _mm_set1_ps(scale));
            }
        }
    }
}

static void pack_weight_rows(int type, const void *w, size_t row_bytes, int64_t rows, int64_t padded_rows,
                             int64_t n_in, void *packed)
{
    const int64_t nb = n_in / 32;
    const int64_t n_pairs = pair_count(n_in);
    const int64_t n_extra = extra_count(type, n_in);
    const size_t packed_row_bytes = packed_weight_row_bytes(type, n_in);
    for (int64_t r = 0; r < padded_rows; r++) {
        packed_weight_pair *out = (packed_weight_pair *)((uint8_t *)packed + (size_t)r * packed_row_bytes);
        float *extra = (float *)(out + n_pairs);
        if (r >= rows) {
            memset(out, 0, packed_row_bytes);
            continue;
        }
        const uint8_t *row = (const uint8_t *)w + (size_t)r * row_bytes;
        if (type == TQ_TYPE_Q4_K) {
            memset(extra, 0, (size_t)n_extra * sizeof(float));
            for (int64_t b = 0; b < n_in / TQ_QK_K; b++) {
                pack_block_q4_K((const tq_block_q4_K *)row + b, out + 4 * b, extra + 8 * b);
            }
        } else if (type == TQ_TYPE_Q6_K) {
            for (int64_t b = 0; b < n_in / TQ_QK_K; b++) {
                pack_block_q6_K((const tq_block_q6_K *)row + b, out + 4 * b);
            }
        } else {
            for (int64_t p = 0; p < n_pairs; p++) {
                pack_pair_q8_0_family(type, row, nb, p, out + p);
            }
        }
    }
}

/* Stores the codes of 32 activations, the start of their integer accumulation
 * (-offset times each group sum of four codes), and their scale. */
static void pack_activation_half(__m256i codes, float scale, __m256i minus_offset, packed_activation_pair *out,
                                 int half)
{
    const __m256i sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), codes);
    _mm256_storeu_si256((__m256i *)(out->codes + 32 * half), codes);
    _mm256_storeu_si256((__m256i *)(out->start + 8 * half), _mm256_mullo_epi32(sums, minus_offset));
    _mm256_storeu_ps(out->scales + 8 * half, _mm256_set1_ps(scale));
}

static void pack_activation_row(int type, const void *row, int64_t n_in, void *packed)
{
    const int64_t n_pairs = pair_count(n_in);
    const __m256i minus_offset = _mm256_set1_epi32(-code_offset(type));
    packed_activation_pair *out = (packed_activation_pair *)packed;
    if (type == TQ_TYPE_Q4_K || type == TQ_TYPE_Q6_K) {
        const tq_block_q8_K *x = (const tq_block_q8_K *)row;
        float *extra = (float *)(out + n_pairs);
        const int64_t n_extra = extra_count(type, n_in);
        for (int64_t p = 0; p < n_pairs; p++) {
            const tq_block_q8_K *blk = &x[p / 4];
            for (int half = 0; half < 2; half++) {
                const __m256i codes = _mm256_loadu_si256((const __m256i *)(blk->qs + 64 * (p % 4) + 32 * half));
                pack_activation_half(codes, blk->d, minus_offset, &out[p], half);
            }
        }
        for (int64_t j = 0; j < n_extra; j++) {
            /* Scaled sum of the 32 activations of sub-block j, for the Q4_K min term. */
            const int64_t b = j / 8;
            extra[j] = j < n_in / 32 ? x[b].d * (float)(x[b].bsums[2 * (j % 8)] + x[b].bsums[2 * (j % 8) + 1]) : 0.0f;
        }
        return;
    }
    const tq_block_q8_0 *x = (const tq_block_q8_0 *)row;
    const int64_t nb = n_in / TQ_QK8_0;
    for (int64_t p = 0; p < n_pairs; p++) {
        for (int half = 0; half < 2; half++) {
            const int64_t b = 2 * p + half;
            __m256i codes = _mm256_setzero_si256();
            float scale = 0.0f;
            if (b < nb) {
                codes = _mm256_loadu_si256((const __m256i *)x[b].qs);
                scale = _cvtsh_ss(x[b].d);
            }
            pack_activation_half(codes, scale, minus_offset, &out[p], half);
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

/* Products of TILE_ROWS packed weight rows (w_stride bytes apart) with `tokens`
 * packed activation rows (a_stride bytes apart), written to y[t * ldy + r] for
 * r < rows. The extra floats (n_extra, a multiple of 16) are multiplied in float
 * and added to the same accumulators. */
static inline __attribute__((always_inline)) void gemm_tile(int tokens, int rows, int64_t n_pairs, int64_t n_extra,
                                                            const uint8_t *w, size_t w_stride, const uint8_t *a,
                                                            size_t a_stride, float *y, int64_t ldy)
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
            const packed_activation_pair *ap = (const packed_activation_pair *)(a + t * a_stride) + p;
            codes[t] = _mm512_loadu_si512(ap->codes);
            start[t] = _mm512_loadu_si512(ap->start);
            scale[t] = _mm512_loadu_ps(ap->scales);
        }
        for (int r = 0; r < TILE_ROWS; r++) {
            const packed_weight_pair *wp = (const packed_weight_pair *)(w + r * w_stride) + p;
            const __m512i q = _mm512_loadu_si512(wp->codes);
            const __m512 dw = _mm512_loadu_ps(wp->scales);
            for (int t = 0; t < tokens; t++) {
                const __m512i dot = _mm512_dpbusd_epi32(start[t], q, codes[t]);
                acc[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, scale[t]), acc[t][r]);
            }
        }
    }
    for (int64_t e = 0; e < n_extra; e += 16) {
        for (int r = 0; r < TILE_ROWS; r++) {
            const float *we = (const float *)(w + r * w_stride + n_pairs * sizeof(packed_weight_pair)) + e;
            const __m512 wv = _mm512_loadu_ps(we);
            for (int t = 0; t < tokens; t++) {
                const float *ae = (const float *)(a + t * a_stride + n_pairs * sizeof(packed_activation_pair)) + e;
                acc[t][r] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(ae), acc[t][r]);
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

static void gemm_rows(int type, int64_t n_in, const void *packed_w, int64_t rows, const void *packed_x,
                      int64_t n_tokens, float *y, int64_t ldy)
{
    const int64_t n_pairs = pair_count(n_in);
    const int64_t n_extra = extra_count(type, n_in);
    const size_t w_stride = packed_weight_row_bytes(type, n_in);
    const size_t a_stride = packed_activation_row_bytes(type, n_in);
    const uint8_t *w = (const uint8_t *)packed_w;
    const uint8_t *a = (const uint8_t *)packed_x;
    int64_t t = 0;
    for (; t + TILE_TOKENS <= n_tokens; t += TILE_TOKENS) {
        for (int64_t r = 0; r < rows; r += TILE_ROWS) {
            const int rm = rows - r < TILE_ROWS ? (int)(rows - r) : TILE_ROWS;
            gemm_tile(TILE_TOKENS, rm, n_pairs, n_extra, w + r * w_stride, w_stride, a + t * a_stride, a_stride,
                      y + t * ldy + r, ldy);
        }
    }
    const int rest = (int)(n_tokens - t);
    for (int64_t r = 0; r < rows && rest > 0; r += TILE_ROWS) {
        const int rm = rows - r < TILE_ROWS ? (int)(rows - r) : TILE_ROWS;
        if (rest == 2) {
            gemm_tile(2, rm, n_pairs, n_extra, w + r * w_stride, w_stride, a + t * a_stride, a_stride,
                      y + t * ldy + r, ldy);
        } else {
            gemm_tile(1, rm, n_pairs, n_extra, w + r * w_stride, w_stride, a + t * a_stride, a_stride,
                      y + t * ldy + r, ldy);
        }
    }
}

const tq_gemm_kernels tq_gemm_kernels_avx512vnni = {
    .min_tokens = 4,
    .row_multiple = TILE_ROWS,
    .supported = {[TQ_TYPE_Q4_0] = 1, [TQ_TYPE_Q5_0] = 1, [TQ_TYPE_Q8_0] = 1, [TQ_TYPE_Q4_K] = 1, [TQ_TYPE_Q6_K] = 1},
    .packed_weight_row_bytes = packed_weight_row_bytes,
    .packed_activation_row_bytes = packed_activation_row_bytes,
    .pack_weight_rows = pack_weight_rows,
    .pack_activation_row = pack_activation_row,
    .gemm_rows = gemm_rows,
};
