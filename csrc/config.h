/* YAML configuration of a model and its runtime, parsed with libyaml.
 *
 * A configuration file is one YAML mapping of flat keys to scalars or lists of
 * scalars, for example
 *
 *     family: gemma4
 *     preset: gemma4-e2b
 *     num_layers: 35
 *     cache_type_k: tq3+qjl
 *     kv_f16_layers: [0, -1]
 *
 * Every key has one type (integer, float, bool, string or list) and a range.
 * The parser rejects unknown keys, duplicate keys, wrong types, values out of
 * range, anchors, aliases, tags and syntax errors. Each error names the key,
 * the line and column (1-based) and what is allowed. Keys absent from the file
 * have set[key] == 0 and a zero value; the caller (the Python layer) fills them
 * from a preset.
 *
 * The parser keeps no global state and may run in several threads at once.
 */
#ifndef TQ_CONFIG_H
#define TQ_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "tq_common.h"

/* Limits of list lengths and strings; the checks quote them in their messages. */
#define TQ_CONFIG_MAX_LAYERS 1024
#define TQ_CONFIG_MAX_TREE_DEPTH 16
#define TQ_CONFIG_MAX_CODEBOOK 256
#define TQ_CONFIG_NAME_SIZE 32
#define TQ_CONFIG_PATH_SIZE 4096
/* Largest file tq_config_load_file reads. Real configurations are a few hundred bytes. */
#define TQ_CONFIG_MAX_FILE_BYTES (1u << 20)

/* One id per key; tq_config_key_name() gives the YAML spelling. */
typedef enum {
    TQ_CFG_FAMILY,
    TQ_CFG_PRESET,
    TQ_CFG_VOCAB_SIZE,
    TQ_CFG_NUM_LAYERS,
    TQ_CFG_HIDDEN_SIZE,
    TQ_CFG_NUM_HEADS,
    TQ_CFG_NUM_KV_HEADS,
    TQ_CFG_HEAD_DIM,
    TQ_CFG_GLOBAL_HEAD_DIM,
    TQ_CFG_FFN_SIZE,
    TQ_CFG_FFN_SIZES,
    TQ_CFG_DOUBLE_WIDE_FFN,
    TQ_CFG_SLIDING_WINDOW,
    TQ_CFG_SLIDING_PATTERN,
    TQ_CFG_USE_SWA,
    TQ_CFG_ROPE_BASE_LOCAL,
    TQ_CFG_ROPE_BASE_GLOBAL,
    TQ_CFG_ROPE_SCALING_FACTOR,
    TQ_CFG_GLOBAL_ROPE_PARTIAL_FACTOR,
    TQ_CFG_QUERY_PRE_ATTN_SCALAR,
    TQ_CFG_NUM_KV_SHARED_LAYERS,
    TQ_CFG_PER_LAYER_EMBEDDING_DIM,
    TQ_CFG_FINAL_LOGIT_SOFTCAP,
    TQ_CFG_RMS_NORM_EPS,
    TQ_CFG_CONTEXT_LENGTH,
    TQ_CFG_THINK_TOKEN_ID,
    TQ_CFG_AUDIO_TOKEN_ID,
    TQ_CFG_IMAGE_TOKEN_ID,
    TQ_CFG_INCLUDE_MTP,
    TQ_CFG_INCLUDE_TURBO,
    TQ_CFG_CACHE_TYPE_K,
    TQ_CFG_CACHE_TYPE_V,
    TQ_CFG_KV_RECENT_F16,
    TQ_CFG_KV_RECENT_TYPE,
    TQ_CFG_KV_SINK_F16,
    TQ_CFG_KV_F16_LAYERS,
    TQ_CFG_QJL_BITS,
    TQ_CFG_THINKING_QJL_BITS,
    TQ_CFG_AUDIO_CODEBOOK,
    TQ_CFG_THREADS,
    TQ_CFG_CTX,
    TQ_CFG_SPECULATIVE,
    TQ_CFG_MTP_CHECKPOINT,
    TQ_CFG_TREE_BRANCHING,
    TQ_CFG_KEY_COUNT
} tq_config_key;

typedef enum {
    TQ_CFG_TYPE_INT,
    TQ_CFG_TYPE_FLOAT,
    TQ_CFG_TYPE_BOOL,
    TQ_CFG_TYPE_STRING,
    TQ_CFG_TYPE_INT_LIST,
    TQ_CFG_TYPE_FLOAT_LIST
} tq_config_type;

/* Bit mask of the model families that a key applies to. */
#define TQ_CFG_FAMILY_GEMMA3 1
#define TQ_CFG_FAMILY_GEMMA4 2
#define TQ_CFG_FAMILY_ANY (TQ_CFG_FAMILY_GEMMA3 | TQ_CFG_FAMILY_GEMMA4)

/* Parsed values. A field is meaningful only when set[] of its key is 1, and a
 * nullable key written as `null` has set[] == 1 and is_null[] == 1. */
typedef struct {
    uint8_t set[TQ_CFG_KEY_COUNT];
    uint8_t is_null[TQ_CFG_KEY_COUNT];
    int line[TQ_CFG_KEY_COUNT]; /* 1-based line of each key that is set, else 0 */

    /* Architecture. */
    char family[TQ_CONFIG_NAME_SIZE]; /* "gemma3" or "gemma4" */
    char preset[TQ_CONFIG_NAME_SIZE]; /* "gemma3-270m", ..., "gemma4-e2b", "gemma4-e4b" */
    int64_t vocab_size;
    int64_t num_layers;
    int64_t hidden_size;
    int64_t num_heads;
    int64_t num_kv_heads;
    int64_t head_dim;          /* sliding layers, and every layer of Gemma 3 */
    int64_t global_head_dim;   /* Gemma 4 global layers */
    int64_t ffn_size;
    int64_t ffn_sizes[TQ_CONFIG_MAX_LAYERS]; /* one per layer; overrides ffn_size */
    size_t ffn_sizes_count;
    int double_wide_ffn;       /* Gemma 4: KV-shared layers use 2 * ffn_size */
    int64_t sliding_window;    /* positions */
    int64_t sliding_pattern;   /* layer i is global when (i + 1) % sliding_pattern == 0 */
    int use_swa;               /* 0: full attention on every layer */
    double rope_base_local;
    double rope_base_global;
    double rope_scaling_factor;         /* Gemma 3 linear scaling on global layers; 1 = none */
    double global_rope_partial_factor;  /* Gemma 4: fraction of frequency pairs rotated on global layers */
    double query_pre_attn_scalar;       /* Gemma 3: queries scaled by 1/sqrt(this) */
    int64_t num_kv_shared_layers;
    int64_t per_layer_embedding_dim;    /* Gemma 4 per-layer embeddings; 0 = none */
    double final_logit_softcap;         /* nullable: no softcap */
    double rms_norm_eps;
    int64_t context_length;
    int64_t think_token_id;             /* nullable */
    int64_t audio_token_id;             /* nullable */
    int64_t image_token_id;             /* nullable */
    int include_mtp;
    int include_turbo;                  /* 0: f16 cache, ignoring cache_type_k/v */

    /* Runtime. */
    char cache_type_k[TQ_CONFIG_NAME_SIZE]; /* a name accepted by tq_kv_type_parse */
    char cache_type_v[TQ_CONFIG_NAME_SIZE];
    int64_t kv_recent_f16;
    char kv_recent_type[TQ_CONFIG_NAME_SIZE]; /* row type of the kv_recent_f16 copies: "f16" or "q8_0" */
    int64_t kv_sink_f16;
    int64_t kv_f16_layers[TQ_CONFIG_MAX_LAYERS]; /* negative counts from the end */
    size_t kv_f16_layers_count;
    int64_t qjl_bits;
    int64_t thinking_qjl_bits;
    double audio_codebook[TQ_CONFIG_MAX_CODEBOOK]; /* strictly increasing radius centroids */
    size_t audio_codebook_count;
    int64_t threads;
    int64_t ctx;
    char speculative[TQ_CONFIG_NAME_SIZE];   /* "none", "mtp" or "medusa" */
    char mtp_checkpoint[TQ_CONFIG_PATH_SIZE]; /* nullable */
    int64_t tree_branching[TQ_CONFIG_MAX_TREE_DEPTH]; /* children per node at each depth */
    size_t tree_branching_count;
} tq_config;

/* Where a parse error was found. line and column are 1-based, 0 when unknown
 * (a failed read). key is the key being parsed, or "" outside any key. */
typedef struct {
    int line;
    int column;
    char key[64];
} tq_config_error_location;

/* Parse len bytes of YAML text into *out (which is cleared first). source_name
 * (a path, or NULL) starts every message, followed by "line:column". On failure
 * returns TQ_ERR_FORMAT with a message in err, fills *where when not NULL, and
 * leaves *out partly filled. text need not be NUL-terminated. */
tq_status tq_config_parse_memory(const char *text, size_t len, const char *source_name, tq_config *out,
                                 tq_config_error_location *where, tq_error *err);

/* Read the file at path (at most TQ_CONFIG_MAX_FILE_BYTES) and parse it.
 * TQ_ERR_IO when it cannot be read, otherwise as tq_config_parse_memory. */
tq_status tq_config_load_file(const char *path, tq_config *out, tq_config_error_location *where, tq_error *err);

/* YAML spelling, type and families of a key; NULL / -1 / 0 for an id out of range. */
const char *tq_config_key_name(tq_config_key key);
int tq_config_key_type(tq_config_key key);
int tq_config_key_families(tq_config_key key);

/* 1 when a key may be written as `null`. */
int tq_config_key_nullable(tq_config_key key);

/* Address of the value of key in cfg: an int64_t, a double, an int (bool), a
 * NUL-terminated char array, or the first element of an int64_t or double list,
 * whose length goes to *count (1 for a scalar). NULL for an id out of range. */
const void *tq_config_value(const tq_config *cfg, tq_config_key key, size_t *count);

#endif /* TQ_CONFIG_H */
