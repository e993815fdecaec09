/* The configuration schema: one table of typed keys with their ranges, and the
 * parsers of scalar text that check values against it. */
#include "config_internal.h"

#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__APPLE__)
#include <xlocale.h>
#endif

static const char *const FAMILY_CHOICES[] = {"gemma3", "gemma4", NULL};
static const char *const PRESET_CHOICES[] = {"gemma3-270m", "gemma3-1b",  "gemma3-4b",  "gemma3-12b",
                                             "gemma3-27b",  "gemma4-e2b", "gemma4-e4b", NULL};
static const char *const SPECULATIVE_CHOICES[] = {"none", "mtp", "medusa", NULL};
/* Row types of the recent window's copies. Model.load's KV_RECENT_TYPES lists the same names. */
static const char *const KV_RECENT_TYPE_CHOICES[] = {"f16", "q8_0", NULL};

/* Bounds for sizes: generous enough for any published Gemma model, tight enough
 * that products of two of them fit comfortably in 64 bits. */
#define MAX_VOCAB (INT64_C(1) << 24)
#define MAX_WIDTH (INT64_C(1) << 20)
#define MAX_POSITIONS (INT64_C(1) << 24)

#define INT_KEY(id, key_name, fam, null, lo, hi, field)                                                   \
    [id] = {.name = key_name, .type = TQ_CFG_TYPE_INT, .families = fam, .nullable = null, .int_min = lo, \
            .int_max = hi, .value_offset = offsetof(tq_config, field)}
#define BOOL_KEY(id, key_name, fam, field) \
    [id] = {.name = key_name, .type = TQ_CFG_TYPE_BOOL, .families = fam, .value_offset = offsetof(tq_config, field)}
#define FLOAT_KEY(id, key_name, fam, null, lo, hi, exclusive, field)                                          \
    [id] = {.name = key_name, .type = TQ_CFG_TYPE_FLOAT, .families = fam, .nullable = null, .float_min = lo, \
            .float_max = hi, .min_exclusive = exclusive, .value_offset = offsetof(tq_config, field)}
#define STRING_KEY(id, key_name, fam, null, allowed, cache_type, field)                                       \
    [id] = {.name = key_name, .type = TQ_CFG_TYPE_STRING, .families = fam, .nullable = null,                 \
            .choices = allowed, .is_cache_type = cache_type, .value_offset = offsetof(tq_config, field),     \
            .string_size = sizeof(((tq_config *)0)->field)}
#define INT_LIST_KEY(id, key_name, fam, lo, hi, count_lo, field)                                              \
    [id] = {.name = key_name, .type = TQ_CFG_TYPE_INT_LIST, .families = fam, .int_min = lo, .int_max = hi,  \
            .min_count = count_lo, .max_count = sizeof(((tq_config *)0)->field) / sizeof(int64_t),          \
            .value_offset = offsetof(tq_config, field), .count_offset = offsetof(tq_config, field##_count)}
#define FLOAT_LIST_KEY(id, key_name, fam, count_lo, field)                                                     \
    [id] = {.name = key_name, .type = TQ_CFG_TYPE_FLOAT_LIST, .families = fam, .float_min = -HUGE_VAL,       \
            .float_max = HUGE_VAL, .min_count = count_lo,                                                   \
            .max_count = sizeof(((tq_config *)0)->field) / sizeof(double),                                  \
            .value_offset = offsetof(tq_config, field), .count_offset = offsetof(tq_config, field##_count)}

#define G3 TQ_CFG_FAMILY_GEMMA3
#define G4 TQ_CFG_FAMILY_GEMMA4
#define ANY TQ_CFG_FAMILY_ANY

const tq_config_key_spec tq_config_keys[TQ_CFG_KEY_COUNT] = {
    STRING_KEY(TQ_CFG_FAMILY, "family", ANY, 0, FAMILY_CHOICES, 0, family),
    STRING_KEY(TQ_CFG_PRESET, "preset", ANY, 0, PRESET_CHOICES, 0, preset),
    INT_KEY(TQ_CFG_VOCAB_SIZE, "vocab_size", ANY, 0, 1, MAX_VOCAB, vocab_size),
    INT_KEY(TQ_CFG_NUM_LAYERS, "num_layers", ANY, 0, 1, TQ_CONFIG_MAX_LAYERS, num_layers),
    INT_KEY(TQ_CFG_HIDDEN_SIZE, "hidden_size", ANY, 0, 1, MAX_WIDTH, hidden_size),
    INT_KEY(TQ_CFG_NUM_HEADS, "num_heads", ANY, 0, 1, 1024, num_heads),
    INT_KEY(TQ_CFG_NUM_KV_HEADS, "num_kv_heads", ANY, 0, 1, 1024, num_kv_heads),
    INT_KEY(TQ_CFG_HEAD_DIM, "head_dim", ANY, 0, 1, 4096, head_dim),
    INT_KEY(TQ_CFG_GLOBAL_HEAD_DIM, "global_head_dim", G4, 0, 1, 4096, global_head_dim),
    INT_KEY(TQ_CFG_FFN_SIZE, "ffn_size", ANY, 0, 1, MAX_WIDTH, ffn_size),
    INT_LIST_KEY(TQ_CFG_FFN_SIZES, "ffn_sizes", ANY, 1, MAX_WIDTH, 1, ffn_sizes),
    BOOL_KEY(TQ_CFG_DOUBLE_WIDE_FFN, "double_wide_ffn", G4, double_wide_ffn),
    INT_KEY(TQ_CFG_SLIDING_WINDOW, "sliding_window", ANY, 0, 1, MAX_POSITIONS, sliding_window),
    INT_KEY(TQ_CFG_SLIDING_PATTERN, "sliding_pattern", ANY, 0, 1, TQ_CONFIG_MAX_LAYERS, sliding_pattern),
    BOOL_KEY(TQ_CFG_USE_SWA, "use_swa", ANY, use_swa),
    FLOAT_KEY(TQ_CFG_ROPE_BASE_LOCAL, "rope_base_local", ANY, 0, 1.0, 1e12, 0, rope_base_local),
    FLOAT_KEY(TQ_CFG_ROPE_BASE_GLOBAL, "rope_base_global", ANY, 0, 1.0, 1e12, 0, rope_base_global),
    FLOAT_KEY(TQ_CFG_ROPE_SCALING_FACTOR, "rope_scaling_factor", G3, 0, 1.0, 1024.0, 0, rope_scaling_factor),
    FLOAT_KEY(TQ_CFG_GLOBAL_ROPE_PARTIAL_FACTOR, "global_rope_partial_factor", G4, 0, 0.0, 1.0, 1,
              global_rope_partial_factor),
    FLOAT_KEY(TQ_CFG_QUERY_PRE_ATTN_SCALAR, "query_pre_attn_scalar", G3, 0, 0.0, 1e6, 1, query_pre_attn_scalar),
    INT_KEY(TQ_CFG_NUM_KV_SHARED_LAYERS, "num_kv_shared_layers", G4, 0, 0, TQ_CONFIG_MAX_LAYERS - 1,
            num_kv_shared_layers),
    INT_KEY(TQ_CFG_PER_LAYER_EMBEDDING_DIM, "per_layer_embedding_dim", G4, 0, 0, 65536, per_layer_embedding_dim),
    FLOAT_KEY(TQ_CFG_FINAL_LOGIT_SOFTCAP, "final_logit_softcap", ANY, 1, 0.0, 1e6, 1, final_logit_softcap),
    FLOAT_KEY(TQ_CFG_RMS_NORM_EPS, "rms_norm_eps", ANY, 0, 0.0, 0.1, 1, rms_norm_eps),
    INT_KEY(TQ_CFG_CONTEXT_LENGTH, "context_length", ANY, 0, 1, MAX_POSITIONS, context_length),
    INT_KEY(TQ_CFG_THINK_TOKEN_ID, "think_token_id", ANY, 1, 0, MAX_VOCAB - 1, think_token_id),
    INT_KEY(TQ_CFG_AUDIO_TOKEN_ID, "audio_token_id", ANY, 1, 0, MAX_VOCAB - 1, audio_token_id),
    INT_KEY(TQ_CFG_IMAGE_TOKEN_ID, "image_token_id", ANY, 1, 0, MAX_VOCAB - 1, image_token_id),
    BOOL_KEY(TQ_CFG_INCLUDE_MTP, "include_mtp", ANY, include_mtp),
    BOOL_KEY(TQ_CFG_INCLUDE_TURBO, "include_turbo", ANY, include_turbo),
    STRING_KEY(TQ_CFG_CACHE_TYPE_K, "cache_type_k", ANY, 0, NULL, 1, cache_type_k),
    STRING_KEY(TQ_CFG_CACHE_TYPE_V, "cache_type_v", ANY, 0, NULL, 1, cache_type_v),
    INT_KEY(TQ_CFG_KV_RECENT_F16, "kv_recent_f16", ANY, 0, 0, MAX_POSITIONS, kv_recent_f16),
    STRING_KEY(TQ_CFG_KV_RECENT_TYPE, "kv_recent_type", ANY, 0, KV_RECENT_TYPE_CHOICES, 0, kv_recent_type),
    INT_KEY(TQ_CFG_KV_SINK_F16, "kv_sink_f16", ANY, 0, 0, MAX_POSITIONS, kv_sink_f16),
    INT_LIST_KEY(TQ_CFG_KV_F16_LAYERS, "kv_f16_layers", ANY, -TQ_CONFIG_MAX_LAYERS, TQ_CONFIG_MAX_LAYERS - 1, 0,
                 kv_f16_layers),
    INT_KEY(TQ_CFG_QJL_BITS, "qjl_bits", ANY, 0, 1, 2, qjl_bits),
    INT_KEY(TQ_CFG_THINKING_QJL_BITS, "thinking_qjl_bits", ANY, 0, 1, 2, thinking_qjl_bits),
    FLOAT_LIST_KEY(TQ_CFG_AUDIO_CODEBOOK, "audio_codebook", ANY, 2, audio_codebook),
    INT_KEY(TQ_CFG_THREADS, "threads", ANY, 0, 1, 4096, threads),
    INT_KEY(TQ_CFG_CTX, "ctx", ANY, 0, 1, MAX_POSITIONS, ctx),
    STRING_KEY(TQ_CFG_SPECULATIVE, "speculative", ANY, 0, SPECULATIVE_CHOICES, 0, speculative),
    STRING_KEY(TQ_CFG_MTP_CHECKPOINT, "mtp_checkpoint", ANY, 1, NULL, 0, mtp_checkpoint),
    INT_LIST_KEY(TQ_CFG_TREE_BRANCHING, "tree_branching", ANY, 1, 64, 1, tree_branching),
};

const char *tq_config_key_name(tq_config_key key)
{
    return (unsigned)key < TQ_CFG_KEY_COUNT ? tq_config_keys[key].name : NULL;
}

int tq_config_key_type(tq_config_key key)
{
    return (unsigned)key < TQ_CFG_KEY_COUNT ? (int)tq_config_keys[key].type : -1;
}

int tq_config_key_families(tq_config_key key)
{
    return (unsigned)key < TQ_CFG_KEY_COUNT ? tq_config_keys[key].families : 0;
}

int tq_config_key_nullable(tq_config_key key)
{
    return (unsigned)key < TQ_CFG_KEY_COUNT ? tq_config_keys[key].nullable : 0;
}

const void *tq_config_value(const tq_config *cfg, tq_config_key key, size_t *count)
{
    if ((unsigned)key >= TQ_CFG_KEY_COUNT || cfg == NULL) {
        return NULL;
    }
    const tq_config_key_spec *spec = &tq_config_keys[key];
    const char *base = (const char *)cfg;
    if (count != NULL) {
        *count = spec->count_offset != 0 ? *(const size_t *)(base + spec->count_offset) : 1;
    }
    return base + spec->value_offset;
}

void tq_config_describe_expected(const tq_config_key_spec *spec, char *out, size_t out_size)
{
    switch (spec->type) {
    case TQ_CFG_TYPE_INT:
        snprintf(out, out_size, "an integer from %lld to %lld%s", (long long)spec->int_min, (long long)spec->int_max,
                 spec->nullable ? ", or null" : "");
        break;
    case TQ_CFG_TYPE_FLOAT:
        if (spec->float_max >= HUGE_VAL) {
            snprintf(out, out_size, "a finite number");
        } else {
            snprintf(out, out_size, "a number %s %g %s %g%s", spec->min_exclusive ? "greater than" : "from",
                     spec->float_min, spec->min_exclusive ? "and at most" : "to", spec->float_max,
                     spec->nullable ? ", or null" : "");
        }
        break;
    case TQ_CFG_TYPE_BOOL:
        snprintf(out, out_size, "true or false");
        break;
    case TQ_CFG_TYPE_STRING:
        if (spec->choices != NULL) {
            size_t used = (size_t)snprintf(out, out_size, "one of");
            for (size_t i = 0; spec->choices[i] != NULL && used < out_size; i++) {
                used += (size_t)snprintf(out + used, out_size - used, "%s %s", i == 0 ? ":" : ",", spec->choices[i]);
            }
        } else if (spec->is_cache_type) {
            snprintf(out, out_size, "a KV cache type name such as f16, q8_0 or tq3");
        } else {
            snprintf(out, out_size, "a non-empty string of at most %zu bytes%s", spec->string_size - 1,
                     spec->nullable ? ", or null" : "");
        }
        break;
    case TQ_CFG_TYPE_INT_LIST:
        snprintf(out, out_size, "a list of %zu to %zu integers, each from %lld to %lld", spec->min_count,
                 spec->max_count, (long long)spec->int_min, (long long)spec->int_max);
        break;
    case TQ_CFG_TYPE_FLOAT_LIST:
        snprintf(out, out_size, "a list of %zu to %zu finite numbers", spec->min_count, spec->max_count);
        break;
    }
}

int tq_config_parse_int(const char *text, int64_t lo, int64_t hi, int64_t *out)
{
    const char *p = text;
    int negative = 0;
    if (*p == '+' || *p == '-') {
        negative = *p == '-';
        p++;
    }
    if (*p == '\0') {
        return 0;
    }
    /* Accumulate the magnitude as unsigned; past 2^63 it is out of every range. */
    uint64_t magnitude = 0;
    int overflow = 0;
    for (; *p != '\0'; p++) {
        if (*p < '0' || *p > '9') {
            return 0;
        }
        uint64_t digit = (uint64_t)(*p - '0');
        if (magnitude > (UINT64_C(1) << 63) / 10) {
            overflow = 1;
        } else {
            magnitude = magnitude * 10 + digit;
            if (magnitude > (UINT64_C(1) << 63)) {
                overflow = 1;
            }
        }
    }
    if (overflow) {
        return -1;
    }
    int64_t value;
    if (negative) {
        value = magnitude == (UINT64_C(1) << 63) ? INT64_MIN : -(int64_t)magnitude;
    } else {
        if (magnitude > (uint64_t)INT64_MAX) {
            return -1;
        }
        value = (int64_t)magnitude;
    }
    if (value < lo || value > hi) {
        return -1;
    }
    *out = value;
    return 1;
}

/* Accepts [+-]digits[.digits][e[+-]digits], with the integer part or the fraction
 * missing but not both. The C locale is used so that "0.5" parses the same whatever
 * LC_NUMERIC the embedding program set. */
int tq_config_parse_float(const char *text, double *out)
{
    const char *p = text;
    if (*p == '+' || *p == '-') {
        p++;
    }
    size_t int_digits = 0, frac_digits = 0;
    while (*p >= '0' && *p <= '9') {
        p++;
        int_digits++;
    }
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9') {
            p++;
            frac_digits++;
        }
    }
    if (int_digits + frac_digits == 0) {
        return 0;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') {
            p++;
        }
        size_t exp_digits = 0;
        while (*p >= '0' && *p <= '9') {
            p++;
            exp_digits++;
        }
        if (exp_digits == 0) {
            return 0;
        }
    }
    if (*p != '\0') {
        return 0;
    }

    locale_t c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    if (c_locale == (locale_t)0) {
        return 0;
    }
    char *end = NULL;
    double value = strtod_l(text, &end, c_locale);
    freelocale(c_locale);
    if (end == NULL || *end != '\0') {
        return 0;
    }
    if (!isfinite(value)) {
        return -1;
    }
    *out = value;
    return 1;
}

int tq_config_float_in_range(const tq_config_key_spec *spec, double value)
{
    if (spec->min_exclusive ? !(value > spec->float_min) : !(value >= spec->float_min)) {
        return 0;
    }
    return value <= spec->float_max;
}

static int is_true_word(const char *v)
{
    return strcmp(v, "true") == 0 || strcmp(v, "True") == 0 || strcmp(v, "TRUE") == 0;
}

static int is_false_word(const char *v)
{
    return strcmp(v, "false") == 0 || strcmp(v, "False") == 0 || strcmp(v, "FALSE") == 0;
}

/* YAML 1.1 spellings of booleans that YAML 1.2 reads as strings. */
static int is_yaml11_bool_word(const char *v)
{
    static const char *const words[] = {"yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON",
                                        "off", "Off", "OFF", "y", "Y", "n", "N", NULL};
    for (size_t i = 0; words[i] != NULL; i++) {
        if (strcmp(v, words[i]) == 0) {
            return 1;
        }
    }
    return 0;
}

int tq_config_parse_bool(const char *text)
{
    if (is_true_word(text)) {
        return 1;
    }
    if (is_false_word(text)) {
        return 0;
    }
    return is_yaml11_bool_word(text) ? -1 : -2;
}
