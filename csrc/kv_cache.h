/* KV cache: keys and values of every layer and KV head, in a storage type chosen
 * separately for K and V, with attention computed directly on the stored rows.
 *
 * Layout: each layer has one array of slots. A slot contains the rows of all KV
 * heads of one position (head h at byte h * row_bytes). Global layers map
 * position p to slot p and grow their allocation as positions arrive, up to
 * n_ctx.
 * Sliding-window layers keep a ring of window + n_batch slots (position p in
 * slot p mod ring size): a query at p needs keys from p - window + 1 on, and a
 * micro-batch writes up to n_batch positions before its queries read, so the
 * ring never overwrites a row that is still needed and its memory stays flat
 * at any context length.
 *
 * Storage types are described by a table of operations (tq_kv_type_ops) so that
 * code-based types (rotated, bit-packed rows scored through per-query lookup
 * tables) can be added without touching the attention loop.
 *
 * Ownership: tq_kv_cache_create() returns an object owned by the caller and
 * released with tq_kv_cache_free(). One cache serves one sequence; calls on the
 * same cache must not run concurrently, except tq_kv_cache_attend_range(),
 * which only reads and may run from many threads at once.
 */
#ifndef TQ_KV_CACHE_H
#define TQ_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "attention.h"
#include "cpu.h"
#include "tq_common.h"

/* Operations of one storage type. Rows are head_dim values of one KV head at
 * one position; head_dim is a multiple of 32. */
typedef struct {
    const char *name; /* as accepted by tq_kv_type_parse: "f16", "q4_0", ... */
    tq_kv_type type;

    /* Bytes of one stored row, codes and scales included. */
    size_t (*row_bytes)(int head_dim);

    /* Encode n rows of head_dim floats (src rows are contiguous) into stored rows
     * that start dst_stride bytes apart. */
    void (*write_rows)(const float *src, int64_t n, int head_dim, void *dst, size_t dst_stride);

    /* Bytes of the per-query state that prepare_query builds once per query
     * vector and KV head, for example a lookup table of partial scores. A type
     * that scores with the float query itself returns head_dim * 4 and copies it. */
    size_t (*query_bytes)(int head_dim);
    void (*prepare_query)(const float *query, int head_dim, void *state);

    /* out[j] = score of the prepared query against stored row j, for j < n. */
    void (*scores)(const tq_attention_kernels *kernels, const void *state, const void *rows, size_t stride,
                   int64_t n, int head_dim, float *out);

    /* out[i] += sum_j weights[j] * row_j[i], decoding the stored rows. */
    void (*accumulate)(const tq_attention_kernels *kernels, const float *weights, const void *rows, size_t stride,
                       int64_t n, int head_dim, float *out);

    /* Number of newest positions a code type wants kept in f16 beside its codes,
     * scored exactly while they are recent. NOTE: the cache does not implement
     * this window yet, so tq_kv_cache_create rejects types that set it. */
    int recent_f16_window;

    /* 1 for the TurboQuant codecs of kv_codec.h (name is the codec's format name). Their
     * function pointers above are NULL: the cache creates one codec per type and reads
     * rows through it, with tq_kv_cache_config.recent_f16 as their f16 window. */
    int codec;
} tq_kv_type_ops;

/* Operations of a type; NULL for an id outside the table. */
const tq_kv_type_ops *tq_kv_type_get(tq_kv_type type);

/* Parse "f32", "f16", "q8_0", "q4_0" or a codec name of kv_codec.h ("tq3", "tq3.5",
 * "tq3+qjl", "polar", ...). The error lists the accepted names. */
tq_status tq_kv_type_parse(const char *name, tq_kv_type *out, tq_error *err);

typedef struct {
    int n_layers;
    int n_kv_heads;
    int head_dim;                /* multiple of 32 */
    int64_t n_ctx;               /* positions the cache can hold */
    int64_t n_batch;             /* most positions written before their queries attend */
    const int64_t *layer_window; /* n_layers entries: sliding window in positions, 0 for a global layer */
    tq_kv_type type_k;
    tq_kv_type type_v;
    tq_isa isa;                  /* kernel variant used by tq_kv_cache_attend_range */

    /* Quality controls of the codec types (ignored when neither type is a codec):
     * recent_f16: a query also reads the keys and values of its newest recent_f16
     * positions from a copy instead of their codes (0: codes only). The copy is a ring of
     * recent_f16 + n_batch positions per layer, counted by tq_kv_cache_bytes. Its rows are f16,
     * or q8_0 when recent_q8_0 is 1. Q8_0 is ggml's block format: 34 bytes per 32 values instead
     * of 64, with an error of at most 0.4% of the block's largest value.
     * layer_f16: NULL, or n_layers flags; a layer whose flag is set stores f16 rows.
     * codec_seed: seed of the codecs' rotation and QJL projection.
     * key_scale, key_center: key balancing of a codec key side (NULL: none). Both hold
     * n_layers rows of head_dim entries. A key is stored as (k - mean) * key_scale and a
     * query scored as q / key_scale, so q . k keeps its value while the channels that
     * queries weigh most get the smaller share of the quantization error. mean is the
     * average of the first keys a layer receives (up to TQ_KV_MEAN_POSITIONS of them) on
     * the channels whose key_center flag is set, and zero elsewhere. Scores of coded rows
     * get q . mean added back, so any fixed mean leaves softmax(q k) exact. The flags
     * select the channels where a mean is stable over positions (slow RoPE pairs). */
    int64_t recent_f16;
    int recent_q8_0;
    const uint8_t *layer_f16;

    /* sink_f16: a query reads the first sink_f16 positions of the sequence from f16 copies
     * instead of their codes (0: codes only). The first positions (BOS and the tokens after
     * it) draw a large share of attention in many heads. An error in their scores therefore
     * moves weight between them and all other positions. The copies cost sink_f16 positions
     * of f16 per layer, or up to TQ_KV_SINK_MOVE_ROOM more without a recent window (see
     * tq_kv_cache_move), counted by tq_kv_cache_bytes. */
    int64_t sink_f16;
    uint64_t codec_seed;
    const float *key_scale;
    const uint8_t *key_center;

    /* Per-layer shapes (Gemma 4); NULL keeps every layer at head_dim with its own rows.
     * layer_head_dim: n_layers head sizes, each a positive multiple of 32; head_dim must
     * then be their maximum.
     * layer_kv_source: n_layers layer indices. Entry l == l means layer l stores its own
     * keys and values. An entry s < l makes layer l store nothing and attend over the rows
     * of layer s, which must store its own, with the same window and head size. */
    const int *layer_head_dim;
    const int *layer_kv_source;

    /* Audio codebook (NULL: none): audio_codebook_count strictly increasing centroids in the
     * units of tq_kv_codec_create_with_codebook. Positions marked with tq_kv_cache_set_audio
     * store their rows with it on every codec side (K or V) whose format takes a codebook of
     * that size (tq_kv_codec_codebook_fits). Other sides and baseline types store them like
     * any row. Creation fails when a codec side exists but none fits. */
    const float *audio_codebook;
    size_t audio_codebook_count;

    /* Residual precision of the +qjl codec types (ignored by other types). max_qjl_bits 2
     * sizes every +qjl row for a 2-bit residual and keeps one byte per position that records
     * whether its rows were written with a 1-bit or a 2-bit residual (set with
     * tq_kv_cache_set_qjl_bits before the write; 1 until then). 0 or 1: 1-bit rows only. */
    int max_qjl_bits;

    /* Channel order of the split codec types (tq3.5, tq2.5; NULL: natural order), for keys and
     * for values: n_layers rows of head_dim channel indices (a row per layer, shared by its KV
     * heads), each row a permutation of the layer's channels. Coded channel i is channel
     * order[i], so the first head_dim / 2 listed get the wider codes. Keys are ordered after
     * balancing; queries and attention outputs are ordered to match. Sides whose type does not
     * split ignore it. */
    const int *channel_order_k;
    const int *channel_order_v;

    /* 1: the MSE codec types (tq4 .. tq2) store each row's norm corrected for the length of
     * its centroids, so coded keys and values keep their length (tq_kv_codec_set_norm_correction).
     * The audio codebook's codecs and other types are unaffected. */
    int norm_correction;
} tq_kv_cache_config;

/* Positions past the sink whose f16 copies a cache without a recent window keeps, so that
 * tq_kv_cache_move can move a row written there into the sink exactly (at most n_batch). Draft
 * trees move rows at most this far, because they have at most this many nodes. */
#define TQ_KV_SINK_MOVE_ROOM 32

/* Positions whose keys set a layer's key mean (see tq_kv_cache_config.key_center). */
#define TQ_KV_MEAN_POSITIONS 128

typedef struct tq_kv_cache tq_kv_cache;

tq_status tq_kv_cache_create(const tq_kv_cache_config *config, tq_kv_cache **out, tq_error *err);
void tq_kv_cache_free(tq_kv_cache *cache);

/* Positions stored so far; the next write goes to position n_past. */
int64_t tq_kv_cache_n_past(const tq_kv_cache *cache);
int64_t tq_kv_cache_n_ctx(const tq_kv_cache *cache);

/* Head size of layer's rows (the cache's head_dim unless layer_head_dim was given). */
int tq_kv_cache_layer_head_dim(const tq_kv_cache *cache, int layer);

/* Make room for positions n_past .. n_past + n_new - 1 in every layer. They may then
 * be written n_batch at a time, each group attended before the next is written. Fails
 * with TQ_ERR_RANGE past n_ctx and TQ_ERR_NOMEM. */
tq_status tq_kv_cache_reserve(tq_kv_cache *cache, int64_t n_new, tq_error *err);

/* Store n positions starting at pos (room reserved before) for one layer.
 * keys and values are [n][n_kv_heads * head_dim] floats, with the layer's head_dim.
 * A layer that reads another layer's rows (layer_kv_source) stores nothing: the call
 * returns without writing. */
void tq_kv_cache_write(tq_kv_cache *cache, int layer, int64_t pos, int64_t n, const float *keys,
                       const float *values);

/* Mark position pos (0 <= pos < n_ctx) as an audio position (audio = 1) or not, before its
 * rows are written: tq_kv_cache_write then codes them with the audio codebook, and attention
 * reads them with it. Without an audio codebook the call does nothing. Marks move with
 * tq_kv_cache_move and are cleared by tq_kv_cache_truncate for the dropped positions. */
void tq_kv_cache_set_audio(tq_kv_cache *cache, int64_t pos, int audio);

/* 1 when an audio codebook is in use and pos is marked as an audio position. */
int tq_kv_cache_is_audio(const tq_kv_cache *cache, int64_t pos);

/* Decode the stored rows of positions pos .. pos + n - 1 of one layer (a layer without rows of
 * its own reads its source layer) into keys and values, [n][n_kv_heads * head_dim] floats with
 * the layer's head_dim. These are the coded rows that attention reads outside the f16 sink and recent
 * window, with key balancing undone. Errors: TQ_ERR_INVALID for a layer outside the cache or
 * positions that are not stored or no longer held by a sliding layer's ring. */
tq_status tq_kv_cache_read(const tq_kv_cache *cache, int layer, int64_t pos, int64_t n, float *keys, float *values,
                           tq_error *err);
/* Choose the residual precision (1 or 2 bits) of positions pos .. pos + n - 1 before any
 * layer writes them: bits[i] is the precision of position pos + i, for keys and values of
 * every layer whose type is +qjl. The positions must be reserved. Fails with TQ_ERR_INVALID
 * for a value other than 1 or 2, or for 2 when the cache was created with max_qjl_bits 1.
 * The precision stays attached to the position until it is written again (moves copy it). */
tq_status tq_kv_cache_set_qjl_bits(tq_kv_cache *cache, int64_t pos, int64_t n, const uint8_t *bits, tq_error *err);

/* Residual precision the rows of position pos were written with: 1 or 2. */
int tq_kv_cache_qjl_bits_at(const tq_kv_cache *cache, int64_t pos);

/* Number of stored positions (0 .. n_past - 1) whose +qjl rows have a 1-bit and a 2-bit
 * residual. Both are 0 when neither keys nor values use a +qjl type. A sliding layer keeps
 * only its window of these positions; the counts are per position of the sequence. */
void tq_kv_cache_qjl_positions(const tq_kv_cache *cache, int64_t *n_1bit, int64_t *n_2bit);

/* Count n more positions as stored, after every layer has written them. */
void tq_kv_cache_advance(tq_kv_cache *cache, int64_t n);

/* Positions scored per pass over the stored rows: the rows of one chunk stay
 * in cache while every query of a KV head reads them. */
#define TQ_KV_CHUNK 256

/* Floats of one query's partial result: running max, sum of exponentials,
 * then head_dim unnormalized weighted values. */
#define TQ_KV_PARTIAL_FLOATS(head_dim) ((size_t)(head_dim) + 2)

/* Bytes of per-thread scratch that tq_kv_cache_attend_range needs for
 * n_queries queries on any layer (independent of the context length). */
size_t tq_kv_cache_scratch_bytes(const tq_kv_cache *cache, int n_queries);

/* Partial attention of n_queries queries (already scaled, [n_queries][head_dim],
 * for example the query heads that share kv_head) at position pos, over the
 * positions in [begin, end) that pos may see: max(0, pos - window + 1) .. pos on
 * a sliding layer, 0 .. pos on a global one. Each K and V row is read once for
 * all queries. All those positions must be written. partial gets
 * TQ_KV_PARTIAL_FLOATS(head_dim) floats per query (an empty range gives sum 0);
 * tq_attention_merge turns one or more partials into the attention output.
 * scratch has tq_kv_cache_scratch_bytes() bytes, aligned to 64. head_dim is the
 * layer's; a layer without rows of its own reads those of its layer_kv_source. */
void tq_kv_cache_attend_range(const tq_kv_cache *cache, int layer, int kv_head, int64_t pos, int64_t begin,
                              int64_t end, int n_queries, const float *queries, void *scratch, float *partial);

/* Partial attention, as tq_kv_cache_attend_range, over one row of a draft path: the row written
 * at slot is position row_pos of the path, and the query is distance positions after it. The
 * row is read as tq_kv_cache_attend_range reads position row_pos for a query at row_pos +
 * distance: from the recent copy when distance < recent_f16, else from f16 when row_pos <
 * sink_f16, else from its codes. With a q8_0 recent window, a row of a sink position is read
 * from its q8_0 copy at any distance, so such paths are exact only from
 * tq_kv_cache_exact_moves_from on.
 * slot >= row_pos, and slot must have been written in the current batch (so that its f16 copy
 * is still held). */
void tq_kv_cache_attend_path_row(const tq_kv_cache *cache, int layer, int kv_head, int64_t row_pos, int64_t slot,
                                 int64_t distance, int n_queries, const float *queries, void *scratch,
                                 float *partial);

/* First visible position of a query at pos on layer (0 on a global layer). */
int64_t tq_kv_cache_first_visible(const tq_kv_cache *cache, int layer, int64_t pos);

/* Combine n_parts partials of n_queries queries (part p of query i at
 * partials + (p * n_queries + i) * TQ_KV_PARTIAL_FLOATS(head_dim)) into the
 * softmax-weighted values out[n_queries][head_dim]. */
void tq_attention_merge(int n_parts, int n_queries, int head_dim, const float *partials, float *out);

/* Copy the rows stored for position src to position dst in every layer (codes, the recent
 * window and sink copies and the residual precision). Both positions must be reserved and src
 * written; dst's rows are replaced. Used to move an accepted draft path of a speculative pass to
 * the end of the prefix. A sink position dst receives src's exact f16 rows when src was written
 * in the same batch as dst and the recent window is f16 or absent. With a q8_0 window it receives
 * src's q8_0 copy decoded, and otherwise src's decoded codes. Those rows differ from the ones a
 * plain write of dst would store, so exact speculative decoding drafts no row into the sink. */
void tq_kv_cache_move(tq_kv_cache *cache, int64_t src, int64_t dst);

/* First position dst from which tq_kv_cache_move stores exactly the rows a plain write of dst
 * would: sink_f16 when the recent window is q8_0 and there is an f16 sink, else 0. */
int64_t tq_kv_cache_exact_moves_from(const tq_kv_cache *cache);

/* Forget positions >= n_past. Fails with TQ_ERR_INVALID when n_past is negative
 * or above the stored count, or when a sliding layer or the recent ring has already
 * overwritten a position that queries from n_past on would need (rolling back more than
 * n_batch positions on a long sequence), or when n_past drops positions whose keys set a
 * layer's key mean; reset with n_past = 0 always works. */
tq_status tq_kv_cache_truncate(tq_kv_cache *cache, int64_t n_past, tq_error *err);

/* Bytes stored for the positions held now: all layers, K and V, codes and scales, one audio
 * flag per position when an audio codebook is set, and the per-position precision byte of a
 * cache with max_qjl_bits 2. */
size_t tq_kv_cache_bytes(const tq_kv_cache *cache);

/* Bytes one position takes in every layer, K and V (past the window only the
 * global layers keep growing by their share of it). */
size_t tq_kv_cache_bytes_per_token(const tq_kv_cache *cache);

#endif /* TQ_KV_CACHE_H */
