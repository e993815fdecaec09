/* KV-cache row codecs of the TurboQuant family, and attention computed on their codes.
 *
 * One row is one head vector of head_dim floats (a key or a value of one KV head at
 * one position). head_dim must be a power of two from 64 to 1024. Formats by name:
 *
 *   f16        head_dim IEEE half floats (the uncompressed baseline)
 *   tq4 tq3 tq2         TurboQuant MSE: an f16 norm, then the unit vector rotated by a
 *                       randomized Hadamard transform, each coordinate coded with the
 *                       Lloyd-Max codebook of the coordinate density on the sphere
 *   tq3.5 tq2.5         the same for each half of the channels as a vector of its own
 *                       (its own f16 norm and rotation): channels [0, head_dim/2) at
 *                       ceil(bits), [head_dim/2, head_dim) at floor(bits). TurboQuant's
 *                       outlier split: a caller that orders the channels with the most
 *                       energy first gives them the wider codes.
 *   tq3+qjl tq4+qjl     TurboQuant inner-product form: the MSE stage at bits - 1, plus a
 *                       1-bit QJL sign sketch of the residual (Gaussian projection with
 *                       head_dim rows) and the residual's f16 norm. Scores are unbiased
 *                       but noisier than the MSE stage alone at the same bits. A codec
 *                       created with max_qjl_bits 2 (tq_kv_codec_create_qjl) has rows with
 *                       room for a 2-bit residual: the 4-level Gaussian quantizer of qjl.h,
 *                       stored as the sign plane plus a magnitude plane. Each row is
 *                       written and read at the qjl_bits the caller passes.
 *   polar               coordinate pairs (j, j + head_dim/2) of the rotated unit vector as
 *                       radius (4-bit Lloyd-Max codebook) and angle (3-bit uniform)
 *   polar+qjl           polar plus the QJL residual sketch
 *
 * 4-bit codes are nibble-packed and other widths stored as bit planes (the exact layout
 * is in kernels/kv_codec_kernels.h). SIMD kernels turn packed codes into lane indices and
 * look the centroids up in registers, so no dequantized copy of the cache is ever written.
 * The QJL projection is a dense Gaussian head_dim x head_dim matrix, so +qjl formats cost
 * O(head_dim^2) per encoded row and per prepared query, and O(head_dim) per scored row.
 *
 * Attention on codes never rotates a key: the query is rotated once per head and step
 * (tq_kv_codec_prepare_query), scores are dot products in the rotated domain, values are
 * accumulated in the rotated domain, and tq_kv_codec_finish applies one inverse rotation
 * (plus one transposed QJL projection for +qjl values) per head and step.
 *
 * A codec is immutable after creation, so one codec may be used by many threads at once.
 */
#ifndef TQ_KV_CODEC_H
#define TQ_KV_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "cpu.h"
#include "tq_common.h"

#define TQ_KV_MIN_HEAD_DIM 64
#define TQ_KV_MAX_HEAD_DIM 1024

/* Query heads that share one KV head and are scored in one pass over the codes. */
#define TQ_KV_MAX_GROUP 8

/* Comma-separated list of every format name, for error messages and documentation. */
#define TQ_KV_FORMAT_NAMES "f16, tq4, tq3.5, tq3, tq2.5, tq2, tq3+qjl, tq4+qjl, polar, polar+qjl"

typedef struct tq_kv_codec tq_kv_codec;

/* Create the codec named name (see TQ_KV_FORMAT_NAMES) for rows of head_dim floats.
 * seed fixes the random rotation and QJL projection: a cache must encode and read its
 * rows with codecs of one seed. isa picks the kernel variant (from tq_isa_select()).
 * On success *out owns a new codec; free it with tq_kv_codec_free. */
tq_status tq_kv_codec_create(const char *name, size_t head_dim, uint64_t seed, tq_isa isa, tq_kv_codec **out,
                             tq_error *err);
/* tq_kv_codec_create with rows that hold a residual of up to max_qjl_bits (1 or 2) bits per
 * projected entry. 2 adds head_dim / 8 bytes per row to the +qjl formats; other formats
 * ignore it. */
tq_status tq_kv_codec_create_qjl(const char *name, size_t head_dim, uint64_t seed, tq_isa isa, int max_qjl_bits,
                                 tq_kv_codec **out, tq_error *err);
void tq_kv_codec_free(tq_kv_codec *codec);

/* Create a codec as tq_kv_codec_create_qjl does, with codebook (count strictly increasing entries)
 * in place of the default Lloyd-Max centroids. Entries are in units of sqrt(head_dim) times a
 * unit-vector coordinate, the scale at which a rotated coordinate has variance about 1, so one
 * codebook suits every head size. polar and polar+qjl take 16 radius entries >= 0. The tq
 * formats take 2^bits entries for the coordinates coded at bits bits: tq4 16, tq3 8, tq2 4,
 * tq3+qjl 4, tq4+qjl 8; tq3.5 and tq2.5 replace only the half whose width matches. Same seed,
 * same rotation and QJL projection, so rows of both codecs share prepared queries and
 * accumulators. Errors: TQ_ERR_INVALID for a size that fits no codebook of the format, f16, or
 * entries that are not finite and strictly increasing. */
tq_status tq_kv_codec_create_with_codebook(const char *name, size_t head_dim, uint64_t seed, tq_isa isa,
                                           int max_qjl_bits, const float *codebook, size_t count, tq_kv_codec **out,
                                           tq_error *err);


const char *tq_kv_codec_name(const tq_kv_codec *codec);
size_t tq_kv_codec_head_dim(const tq_kv_codec *codec);
tq_isa tq_kv_codec_isa(const tq_kv_codec *codec);

/* Largest residual precision the rows hold: 2 for a +qjl codec created with max_qjl_bits 2,
 * else 1. */
int tq_kv_codec_max_qjl_bits(const tq_kv_codec *codec);

/* Bytes of one encoded row: codes and norms, everything the cache stores per row. */
size_t tq_kv_codec_row_bytes(const tq_kv_codec *codec);

/* Stored bits per value: 8 * row_bytes / head_dim. */
double tq_kv_codec_bits_per_value(const tq_kv_codec *codec);

/* 1 for the split formats (tq3.5, tq2.5). They code channels [0, head_dim/2) and
 * [head_dim/2, head_dim) as two vectors with their own norms and rotations, the first at the
 * wider width, so the caller's channel order decides which channels get the wider codes. */
int tq_kv_codec_is_split(const tq_kv_codec *codec);

/* Codebook of the MSE stage in units of the unit vector's coordinates: for tq formats
 * the centroids of the first half of the coordinates (*count = 2^bits), for polar the
 * radius centroids. Returns NULL with *count = 0 for f16. The pointer lives as long as
 * the codec. */
const float *tq_kv_codec_centroids(const tq_kv_codec *codec, size_t *count);

/* Norm correction of the MSE formats (tq4 .. tq2; not +qjl, polar or f16), off at creation:
 * each coded vector then stores ||x|| / ||c|| instead of ||x||, where c is the vector of its
 * centroids in the rotated domain, so decoded rows keep the input's length. Lloyd-Max
 * centroids alone decode to about (1 - MSE) of x along x, which minimizes the MSE but scales
 * attention scores and averaged values down. Affects rows encoded after the call. */
void tq_kv_codec_set_norm_correction(tq_kv_codec *codec, int enabled);
int tq_kv_codec_norm_correction(const tq_kv_codec *codec);

/* Encode n rows of head_dim floats (row i at x + i * x_stride floats) into n rows of
 * row_bytes bytes (row i at rows + i * row_stride bytes), with a qjl_bits residual for
 * +qjl formats (other formats take qjl_bits 1). Encoding is scalar code shared
 * by every kernel variant, so codes are identical whatever the variant. Fails with
 * TQ_ERR_INVALID when qjl_bits is outside 1 .. tq_kv_codec_max_qjl_bits, for a non-finite
 * value, or when a row norm (for f16 rows, a value) exceeds the f16 maximum 65504. */
tq_status tq_kv_codec_encode(const tq_kv_codec *codec, int qjl_bits, const float *x, size_t x_stride, size_t n,
                             uint8_t *rows, size_t row_stride, tq_error *err);

/* Reconstruct n rows to floats. This is the reference for tests: attention reads codes.
 * Here and in scores and accumulate, qjl_bits is the precision the rows were written with.
 * A value other than 2, or 2 on a codec without room for it, reads them at 1 bit. */
void tq_kv_codec_decode(const tq_kv_codec *codec, int qjl_bits, const uint8_t *rows, size_t row_stride, size_t n,
                        float *out, size_t out_stride);

/* Floats of one prepared query and of one value accumulator (both multiples of 16). */
size_t tq_kv_codec_query_floats(const tq_kv_codec *codec);
size_t tq_kv_codec_acc_floats(const tq_kv_codec *codec);

/* Returns 1 when format name takes a codebook of count entries in
 * tq_kv_codec_create_with_codebook, 0 otherwise (also for an unknown name). */
int tq_kv_codec_codebook_fits(const char *name, size_t count);

/* Write x / ||x|| rotated by the codec's randomized Hadamard transform into out (head_dim
 * floats): the domain in which the codebooks quantize (a zero row stays zero). For f16 the
 * unit vector is not rotated. */
void tq_kv_codec_rotate(const tq_kv_codec *codec, const float *x, float *out);

/* Prepare one query head for scoring: rotate it and, for +qjl, project it by the QJL
 * matrix. prepared must hold tq_kv_codec_query_floats() floats. */
void tq_kv_codec_prepare_query(const tq_kv_codec *codec, const float *q, float *prepared);

/* Scores of n_queries prepared queries (query h at prepared + h * query_floats) against
 * n rows: out[h * out_stride + i] = <q_h, decoded row i>. 1 <= n_queries <= TQ_KV_MAX_GROUP. */
void tq_kv_codec_scores(const tq_kv_codec *codec, int qjl_bits, const float *prepared, int n_queries,
                        const uint8_t *rows, size_t row_stride, size_t n, float *out, size_t out_stride);

/* Add sum_i weights[h * weight_stride + i] * (decoded row i, still rotated) to
 * acc + h * acc_floats for h < n_queries. Zero acc before the first call. */
void tq_kv_codec_accumulate(const tq_kv_codec *codec, int qjl_bits, const uint8_t *rows, size_t row_stride, size_t n,
                            const float *weights, size_t weight_stride, int n_queries, float *acc);

/* Turn one accumulator into the output vector (head_dim floats): scale it, undo the
 * rotation once, and for +qjl add the transposed projection of the sign sums. acc is
 * used as scratch. */
void tq_kv_codec_finish(const tq_kv_codec *codec, float *acc, float scale, float *out);

/* Attention of n_heads query heads over n positions, reading codes only.
 *
 * q: n_heads rows of head_dim floats. Query head h reads KV head h / (n_heads / n_kv_heads).
 * keys: the key row of position i and KV head g starts at
 * keys + i * key_stride + g * (row_bytes of key_codec). Values follow the same layout with
 * value_stride and value_codec.
 * out: n_heads rows of head_dim floats, softmax(scale * q k^T) v with a max-subtracted
 * float32 softmax. n_heads must be a multiple of n_kv_heads, with at most
 * TQ_KV_MAX_GROUP query heads per KV head, and both codecs need the same head_dim. Rows are
 * read with a 1-bit residual; mixed per-position precision is read by the KV cache.
 * Threads: OpenMP over KV heads and blocks of positions. */
tq_status tq_kv_attention(const tq_kv_codec *key_codec, const tq_kv_codec *value_codec, const float *q,
                          size_t n_heads, size_t n_kv_heads, const uint8_t *keys, size_t key_stride,
                          const uint8_t *values, size_t value_stride, size_t n, float scale, float *out,
                          tq_error *err);

#endif /* TQ_KV_CODEC_H */
