/* Attention kernels over rows of a KV cache: query-key scores and the weighted
 * sum of value rows, for every row format the cache stores.
 *
 * A cache row contains head_dim values of one position and one KV head in one of
 * the formats below. Q8_0 and Q4_0 rows are arrays of the ggml blocks of
 * blocks.h (32 values with an fp16 scale d in front), so head_dim must be a
 * multiple of 32.
 *
 * Every kernel exists as a scalar reference (attention_scalar.c) and as SIMD
 * variants (attention_avx2.c, attention_avx512.c, attention_neon.c) that must
 * agree with it up to float rounding; tq_attention_kernels_get() returns the
 * table of one instruction set.
 */
#ifndef TQ_ATTENTION_KERNELS_H
#define TQ_ATTENTION_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "blocks.h"
#include "cpu.h"

/* Row formats of the cache types. The first TQ_KV_BASELINE_COUNT are the ones llama.cpp
 * offers, scored by the kernels below; the others are the TurboQuant codecs of kv_codec.h,
 * which the cache encodes and scores through that module. */
typedef enum {
    TQ_KV_F32 = 0,
    TQ_KV_F16 = 1,
    TQ_KV_Q8_0 = 2,
    TQ_KV_Q4_0 = 3,
    TQ_KV_TQ4 = 4,
    TQ_KV_TQ3_5 = 5,
    TQ_KV_TQ3 = 6,
    TQ_KV_TQ2_5 = 7,
    TQ_KV_TQ2 = 8,
    TQ_KV_TQ3_QJL = 9,
    TQ_KV_TQ4_QJL = 10,
    TQ_KV_POLAR = 11,
    TQ_KV_POLAR_QJL = 12,
    TQ_KV_TYPE_COUNT = 13
} tq_kv_type;

#define TQ_KV_BASELINE_COUNT 4

/* Values per Q8_0 and Q4_0 block; both formats are tq_block_q8_0 and
 * tq_block_q4_0 of blocks.h. */
#define TQ_KV_BLOCK 32
_Static_assert(TQ_KV_BLOCK == TQ_QK8_0 && TQ_KV_BLOCK == TQ_QK4_0, "KV blocks are ggml's 32-value blocks");

/* out[j] = dot(q, row j) for j < n. Row j starts at rows + j * stride bytes. */
typedef void (*tq_attn_scores_fn)(const float *q, const void *rows, size_t stride, int64_t n, int head_dim,
                                  float *out);

/* out[i] += sum_j w[j] * row_j[i] for j < n, i < head_dim. */
typedef void (*tq_attn_accumulate_fn)(const float *w, const void *rows, size_t stride, int64_t n, int head_dim,
                                      float *out);

typedef struct {
    tq_attn_scores_fn scores[TQ_KV_BASELINE_COUNT];
    tq_attn_accumulate_fn accumulate[TQ_KV_BASELINE_COUNT];
} tq_attention_kernels;

extern const tq_attention_kernels tq_attention_kernels_scalar;
#if defined(TQ_HAVE_AVX2_KERNELS)
extern const tq_attention_kernels tq_attention_kernels_avx2;
#endif
#if defined(TQ_HAVE_AVX512_KERNELS)
extern const tq_attention_kernels tq_attention_kernels_avx512;
#endif
#if defined(TQ_HAVE_NEON_KERNELS)
extern const tq_attention_kernels tq_attention_kernels_neon;
#endif

/* Kernel table of isa; the scalar table for a variant this build lacks. */
const tq_attention_kernels *tq_attention_kernels_get(tq_isa isa);

#endif /* TQ_ATTENTION_KERNELS_H */
