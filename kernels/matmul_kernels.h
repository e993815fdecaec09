/* Kernel tables for products of weight rows with activation rows.
 *
 * An integer weight format is multiplied with an activation row that was
 * quantized once per call: to Q8_0 for Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 weights,
 * to Q8_K for the K-quants. Float weights (F32, F16, BF16) take the float
 * activation directly. Every variant must give the same activation codes as the
 * scalar reference (same scale, round-half-to-even), so variants differ only by
 * the order of float additions.
 */
#ifndef TQ_MATMUL_KERNELS_H
#define TQ_MATMUL_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "blocks.h"

/* Quantize n floats (a multiple of the block size) from x into blocks at y. */
typedef void (*tq_quantize_row_fn)(const float *x, void *y, int64_t n);

/* Store in *s the dot product of one weight row w (n values in the weight's
 * format) with one activation row x (in the format the weight type pairs with). */
typedef void (*tq_vec_dot_fn)(int64_t n, float *s, const void *w, const void *x);

/* Store in s[t * s_stride] the dot products of one weight row w with the four
 * activation rows at x + t * x_stride bytes (t < 4). Decoding each weight block
 * once for four tokens is what makes prompt processing faster than four calls. */
typedef void (*tq_vec_dot_x4_fn)(int64_t n, float *s, size_t s_stride, const void *w, const void *x,
                                 size_t x_stride);

/* Maximum number of tokens of one vec_dot_rows call. With four, the AVX2 K-quant kernels keep
 * every token's accumulators in their 16 vector registers. The measurements ran on the 2-core
 * Xeon of docs/benchmarks.md with Gemma 3 270M Q4_K_M and 300 cached positions, one thread
 * while a training job loaded both cores, medians of 21 calls. eval_tree of a chain of 1 to 5
 * nodes took 25, 30, 36, 43 and 63 ms. Before, when only groups of exactly four tokens shared a
 * pass over the weights, it took 26, 47, 67, 76 and 97 ms. A decode step took 25 ms. */
#define TQ_VEC_DOT_ROWS_MAX_TOKENS 4

/* Store in s[t * s_stride + r] the dot products of the n_rows weight rows at w + r * row_bytes
 * with the n_tokens activation rows at x + t * x_stride bytes (1 <= n_tokens <=
 * TQ_VEC_DOT_ROWS_MAX_TOKENS). It prepares each activation row once for all weight rows and
 * reads each weight row once for all tokens. Each result must equal, bit for bit, what vec_dot
 * gives for that row and token, because decoding computes one token and the verification of a
 * draft tree several, and both must score a token alike. rows_after more weight rows follow the
 * last one in memory; the kernel may prefetch them, because the same thread usually multiplies
 * them next. */
typedef void (*tq_vec_dot_rows_fn)(int64_t n, float *s, size_t s_stride, const void *w, size_t row_bytes,
                                   int64_t n_rows, int64_t rows_after, const void *x, size_t x_stride,
                                   int64_t n_tokens);

/* Size of the vec_dot table: one slot per GGML type id up to BF16 (30). */
#define TQ_VEC_DOT_SLOTS 31

typedef struct {
    tq_quantize_row_fn quantize_row_q8_0;
    tq_quantize_row_fn quantize_row_q8_K;
    tq_vec_dot_fn vec_dot[TQ_VEC_DOT_SLOTS]; /* indexed by tq_ggml_type; NULL when unsupported */
    tq_vec_dot_x4_fn vec_dot_x4[TQ_VEC_DOT_SLOTS]; /* optional; NULL means four vec_dot calls */
    /* optional, and used in place of vec_dot_x4 where present. NULL means vec_dot_x4 for
     * groups of four tokens and vec_dot for the rest. */
    tq_vec_dot_rows_fn vec_dot_rows[TQ_VEC_DOT_SLOTS];
} tq_matmul_kernels;

extern const tq_matmul_kernels tq_matmul_kernels_scalar;
#if defined(TQ_HAVE_AVX2_KERNELS)
extern const tq_matmul_kernels tq_matmul_kernels_avx2;
#endif
#if defined(TQ_HAVE_AVX512_KERNELS)
extern const tq_matmul_kernels tq_matmul_kernels_avx512;
#endif
#if defined(TQ_HAVE_NEON_KERNELS)
extern const tq_matmul_kernels tq_matmul_kernels_neon;
#endif

/* Blocked matrix product for many tokens, an optional addition to a kernel table.
 * Both operands are first repacked into a layout private to the kernel. Weights
 * are packed one range of rows at a time. Activations are packed once per call
 * from the Q8_0 or Q8_K rows that the vec_dot path uses, so both paths see the
 * same codes. */
typedef struct {
    int64_t min_tokens;   /* use the blocked product from this many tokens on */
    int64_t row_multiple; /* pack_weight_rows pads the rows to a multiple of this */
    unsigned char supported[TQ_VEC_DOT_SLOTS]; /* indexed by tq_ggml_type */
    size_t (*packed_weight_row_bytes)(int type, int64_t n_in);
    size_t (*packed_activation_row_bytes)(int type, int64_t n_in);
    /* Repack `rows` rows of weights w (row_bytes apart) into padded_rows packed
     * rows at packed; rows past `rows` become zero rows. */
    void (*pack_weight_rows)(int type, const void *w, size_t row_bytes, int64_t rows, int64_t padded_rows,
                             int64_t n_in, void *packed);
    /* Repack one quantized activation row for weights of the given type. */
    void (*pack_activation_row)(int type, const void *row, int64_t n_in, void *packed);
    /* y[t * ldy + r] = dot(weight row r, activation row t) for r < rows, t < n_tokens. */
    void (*gemm_rows)(int type, int64_t n_in, const void *packed_w, int64_t rows, const void *packed_x,
                      int64_t n_tokens, float *y, int64_t ldy);
} tq_gemm_kernels;

#if defined(TQ_HAVE_AVX512_KERNELS)
extern const tq_gemm_kernels tq_gemm_kernels_avx512vnni;
#endif

/* Returns the blocked-product table for isa on this CPU, or NULL when there is none. */
const tq_gemm_kernels *tq_gemm_kernels_for(int isa);

/* Scalar references, also used by variants for the types they do not specialize. */
void tq_quantize_row_q8_0_scalar(const float *x, void *y, int64_t n);
void tq_quantize_row_q8_K_scalar(const float *x, void *y, int64_t n);
void tq_vec_dot_f32_scalar(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_f16_scalar(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_bf16_scalar(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_q4_0_q8_0_scalar(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_q4_1_q8_0_scalar(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_q5_0_q8_0_scalar(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_q5_1_q8_0_scalar(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_q8_0_q8_0_scalar(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_q4_K_q8_K_scalar(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_q5_K_q8_K_scalar(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_q6_K_q8_K_scalar(int64_t n, float *s, const void *w, const void *x);

#if defined(TQ_HAVE_AVX2_KERNELS)
/* AVX2 kernels, also used by the AVX-512 table for the types it does not specialize. */
void tq_quantize_row_q8_0_avx2(const float *x, void *y, int64_t n);
void tq_quantize_row_q8_K_avx2(const float *x, void *y, int64_t n);
void tq_vec_dot_f32_avx2(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_f16_avx2(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_bf16_avx2(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_q4_0_q8_0_avx2(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_q4_1_q8_0_avx2(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_q5_0_q8_0_avx2(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_q5_1_q8_0_avx2(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_q8_0_q8_0_avx2(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_q4_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_q5_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_q6_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *x);
void tq_vec_dot_q8_0_q8_0_x4_avx2(int64_t n, float *s, size_t s_stride, const void *w, const void *x,
                                  size_t x_stride);
void tq_vec_dot_q5_0_q8_0_x4_avx2(int64_t n, float *s, size_t s_stride, const void *w, const void *x,
                                  size_t x_stride);
void tq_vec_dot_q4_K_q8_K_x4_avx2(int64_t n, float *s, size_t s_stride, const void *w, const void *x,
                                  size_t x_stride);
void tq_vec_dot_q6_K_q8_K_x4_avx2(int64_t n, float *s, size_t s_stride, const void *w, const void *x,
                                  size_t x_stride);
void tq_vec_dot_q4_K_q8_K_rows_avx2(int64_t n, float *s, size_t s_stride, const void *w, size_t row_bytes,
                                    int64_t n_rows, int64_t rows_after, const void *x, size_t x_stride,
                                    int64_t n_tokens);
void tq_vec_dot_q6_K_q8_K_rows_avx2(int64_t n, float *s, size_t s_stride, const void *w, size_t row_bytes,
                                    int64_t n_rows, int64_t rows_after, const void *x, size_t x_stride,
                                    int64_t n_tokens);
#endif

/* Returns the table for isa (a tq_isa value), or NULL when this build has none. */
const tq_matmul_kernels *tq_matmul_kernels_for(int isa);

#endif /* TQ_MATMUL_KERNELS_H */
