/* Weight formats of GGML/GGUF and the matrix kernels that work on them.
 *
 * A weight matrix W has n_out rows of n_in values each; row r holds the weights
 * of output r, stored contiguously as blocks of the tensor's type (GGUF dims:
 * ne[0] = n_in, ne[1] = n_out). Products quantize the activation once per row
 * (to Q8_0 or Q8_K blocks, as llama.cpp does) and run integer dot products on
 * the blocks directly; nothing is dequantized to a float matrix.
 */
#ifndef TQ_WEIGHTS_H
#define TQ_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "cpu.h"
#include "tq_common.h"

/* GGML type ids, as stored in GGUF tensor infos. */
typedef enum {
    TQ_TYPE_F32 = 0,
    TQ_TYPE_F16 = 1,
    TQ_TYPE_Q4_0 = 2,
    TQ_TYPE_Q4_1 = 3,
    TQ_TYPE_Q5_0 = 6,
    TQ_TYPE_Q5_1 = 7,
    TQ_TYPE_Q8_0 = 8,
    TQ_TYPE_Q8_1 = 9,
    TQ_TYPE_Q2_K = 10,
    TQ_TYPE_Q3_K = 11,
    TQ_TYPE_Q4_K = 12,
    TQ_TYPE_Q5_K = 13,
    TQ_TYPE_Q6_K = 14,
    TQ_TYPE_Q8_K = 15,
    TQ_TYPE_BF16 = 30
} tq_ggml_type;

/* Name of a type id ("q4_K"); "unknown" for an id outside the table. */
const char *tq_type_name(int type);

/* Values per block and bytes per block; both 0 for a type this library cannot read. */
int64_t tq_type_block_size(int type);
size_t tq_type_block_bytes(int type);

/* Returns 1 for the types that dequantize and matmul support. */
int tq_type_supported(int type);

/* Bytes of one row of n values; fails when n is not a multiple of the block size. */
tq_status tq_type_row_bytes(int type, int64_t n, size_t *out, tq_error *err);

/* Dequantize n values (a multiple of the block size) from src to dst. Scalar reference. */
tq_status tq_dequantize_row(int type, const void *src, float *dst, int64_t n, tq_error *err);

typedef struct {
    tq_ggml_type type;
    int64_t n_in;     /* values per row (GGUF ne[0]) */
    int64_t n_out;    /* rows (GGUF ne[1]) */
    size_t row_bytes; /* bytes of one stored row */
    const void *data; /* n_out * row_bytes bytes, not owned */
} tq_weight;

/* Describe a tensor's data as a weight matrix, checking its type and row size. */
tq_status tq_weight_init(tq_weight *w, int type, int64_t n_in, int64_t n_out, const void *data, tq_error *err);

/* y[t][o] = sum_i W[o][i] * x[t][i] for t < n_tokens, with x of shape [n_tokens][n_in]
 * and y of shape [n_tokens][n_out], both row-major float32. isa selects the kernel
 * variant (see cpu.h); threads over output rows (and tokens) with OpenMP.
 * Integer formats quantize each row of x once (Q8_0 or Q8_K) into scratch memory
 * that the call allocates and frees itself (TQ_ERR_NOMEM when that fails), so
 * concurrent calls on different outputs share no state. x and y must not overlap. */
tq_status tq_matmul(tq_isa isa, const tq_weight *w, const float *x, float *y, int64_t n_tokens, tq_error *err);

/* tq_matmul where every row of y is bit for bit what a one-token tq_matmul of that row gives
 * (no blocked GEMM; the four-token kernels follow the one-token ones operation for operation).
 * Speculative verification uses it so that a draft tree scores tokens exactly as decoding. */
tq_status tq_matmul_per_row(tq_isa isa, const tq_weight *w, const float *x, float *y, int64_t n_tokens,
                            tq_error *err);

/* The same product with float32 activations: each weight row is dequantized and
 * dotted with x in float32, so no error is added beyond float rounding. Slower than
 * tq_matmul (no integer kernels, no SIMD variants); it exists to check the forward pass against float
 * references such as transformers, which dequantize the weights the same way.
 * Threads over output rows with OpenMP. */
tq_status tq_matmul_exact(const tq_weight *w, const float *x, float *y, int64_t n_tokens, tq_error *err);

/* Copy row `row` of w, dequantized, into dst (n_in floats). Used for embedding lookup. */
tq_status tq_weight_get_row(const tq_weight *w, int64_t row, float *dst, tq_error *err);

#endif /* TQ_WEIGHTS_H */
