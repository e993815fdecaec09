/* YAML configuration loader: libyaml's event parser, checks of each value against
 * the key table (config_keys.c) and of keys against each other, and errors that
 * name the key, the line and what is allowed. */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

#include "config_internal.h"
#include "kv_cache.h"

/* ------------------------------------------------------------------ errors */

typedef struct {
    const char *source;
    tq_config_error_location *where;
    tq_error *err;
} parse_context;

/* Record a TQ_ERR_FORMAT error at a 0-based libyaml mark (line < 0: no position). */
static tq_status fail_at(parse_context *ctx, long line, long column, const char *key, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;

static tq_status fail_at(parse_context *ctx, long line, long column, const char *key, const char *fmt, ...)
{
    char detail[TQ_ERROR_MSG_SIZE];
    va_list args;
    va_start(args, fmt);
    vsnprintf(detail, sizeof(detail), fmt, args);
    va_end(args);

    if (ctx->where != NULL) {
        ctx->where->line = line >= 0 ? (int)line + 1 : 0;
        ctx->where->column = column >= 0 ? (int)column + 1 : 0;
        snprintf(ctx->where->key, sizeof(ctx->where->key), "%s", key != NULL ? key : "");
    }
    const char *source = ctx->source != NULL ? ctx->source : "<config>";
    if (line >= 0) {
        return tq_error_set(ctx->err, TQ_ERR_FORMAT, "%s:%ld:%ld: %s", source, line + 1, column + 1, detail);
    }
    return tq_error_set(ctx->err, TQ_ERR_FORMAT, "%s: %s", source, detail);
}

/* Quote at most 40 bytes of a scalar for a message. */
static void quote_value(const char *value, size_t len, char *out, size_t out_size)
{
    if (len > 40) {
        snprintf(out, out_size, "'%.40s...'", value);
    } else {
        snprintf(out, out_size, "'%.*s'", (int)len, value);
    }
}

/* Levenshtein distance of two short strings, capped at 99, for "did you mean". */
static int edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) {
        return 99;
    }
    int row[64];
    for (size_t j = 0; j <= lb; j++) {
        row[j] = (int)j;
    }
    for (size_t i = 1; i <= la; i++) {
        int diagonal = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int above = row[j];
            int best = diagonal + (a[i - 1] != b[j - 1]);
            if (row[j - 1] + 1 < best) {
                best = row[j - 1] + 1;
            }
            if (above + 1 < best) {
                best = above + 1;
            }
            row[j] = best;
            diagonal = above;
        }
    }
    return row[lb];
}

/* ---------------------------------------------------------------- scalars */

static int is_null_scalar(const yaml_event_t *event)
{
    if (event->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
        return 0;
    }
    const char *v = (const char *)event->data.scalar.value;
    return strcmp(v, "") == 0 || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 || strcmp(v, "Null") == 0 ||
           strcmp(v, "NULL") == 0;
}

static const char *scalar_style_word(const yaml_event_t *event)
{
    return event->data.scalar.style == YAML_PLAIN_SCALAR_STYLE ? "" : "quoted ";
}

/* Store one scalar (a whole value, or one list element at index) of key id. */
static tq_status store_scalar(parse_context *ctx, tq_config *cfg, tq_config_key id, const yaml_event_t *event,
                              size_t index)
{
    const tq_config_key_spec *spec = &tq_config_keys[id];
    const char *text = (const char *)event->data.scalar.value;
    const size_t len = event->data.scalar.length;
    const long line = (long)event->start_mark.line;
    const long column = (long)event->start_mark.column;
    const int plain = event->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    char *base = (char *)cfg;
    char expected[200];
    char shown[64];
    tq_config_describe_expected(spec, expected, sizeof(expected));
    quote_value(text, len, shown, sizeof(shown));

    if (strlen(text) != len) {
        return fail_at(ctx, line, column, spec->name, "key '%s': the value contains a NUL byte; expected %s",
                       spec->name, expected);
    }

    switch (spec->type) {
    case TQ_CFG_TYPE_INT:
    case TQ_CFG_TYPE_INT_LIST: {
        int64_t value = 0;
        int ok = plain ? tq_config_parse_int(text, spec->int_min, spec->int_max, &value) : 0;
        if (ok == 0) {
            return fail_at(ctx, line, column, spec->name, "key '%s': expected %s, got the %sstring %s", spec->name,
                           expected, scalar_style_word(event), shown);
        }
        if (ok < 0) {
            return fail_at(ctx, line, column, spec->name, "key '%s': %s is out of range; expected %s", spec->name,
                           shown, expected);
        }
        ((int64_t *)(base + spec->value_offset))[index] = value;
        return TQ_OK;
    }
    case TQ_CFG_TYPE_FLOAT:
    case TQ_CFG_TYPE_FLOAT_LIST: {
        double value = 0.0;
        int ok = plain ? tq_config_parse_float(text, &value) : 0;
        if (ok == 0) {
            return fail_at(ctx, line, column, spec->name, "key '%s': expected %s, got the %sstring %s", spec->name,
                           expected, scalar_style_word(event), shown);
        }
        if (ok < 0 || !tq_config_float_in_range(spec, value)) {
            return fail_at(ctx, line, column, spec->name, "key '%s': %s is out of range; expected %s", spec->name,
                           shown, expected);
        }
        ((double *)(base + spec->value_offset))[index] = value;
        return TQ_OK;
    }
    case TQ_CFG_TYPE_BOOL: {
        const int value = plain ? tq_config_parse_bool(text) : -2;
        if (value == -1) {
            return fail_at(ctx, line, column, spec->name, "key '%s': %s is not a boolean in YAML 1.2; write true or false",
                           spec->name, shown);
        }
        if (value < 0) {
            return fail_at(ctx, line, column, spec->name, "key '%s': expected true or false, got the %sstring %s",
                           spec->name, scalar_style_word(event), shown);
        }
        *(int *)(base + spec->value_offset) = value;
        return TQ_OK;
    }
    case TQ_CFG_TYPE_STRING: {
        char *dst = base + spec->value_offset;
        if (len == 0 || len >= spec->string_size) {
            return fail_at(ctx, line, column, spec->name, "key '%s': %s has %zu bytes; expected %s", spec->name, shown,
                           len, expected);
        }
        if (spec->choices != NULL) {
            int found = 0;
            for (size_t i = 0; spec->choices[i] != NULL; i++) {
                found |= strcmp(spec->choices[i], text) == 0;
            }
            if (!found) {
                return fail_at(ctx, line, column, spec->name, "key '%s': invalid value %s; expected %s", spec->name,
                               shown, expected);
            }
        }
        if (spec->is_cache_type) {
            tq_kv_type type;
            tq_error type_err;
            tq_error_clear(&type_err);
            if (tq_kv_type_parse(text, &type, &type_err) != TQ_OK) {
                return fail_at(ctx, line, column, spec->name, "key '%s': %s", spec->name, type_err.message);
            }
        }
        memcpy(dst, text, len + 1);
        return TQ_OK;
    }
    }
    return fail_at(ctx, line, column, spec->name, "key '%s': internal error: unknown key type", spec->name);
}

/* ------------------------------------------------------------------ events */

/* Reject anchors and tags on a node: aliases would let a small file expand
 * without bound, and tags would override the types this schema fixes. */
static tq_status check_plain_node(parse_context *ctx, const yaml_event_t *event, const char *key)
{
    const yaml_char_t *anchor = NULL, *tag = NULL;
    if (event->type == YAML_SCALAR_EVENT) {
        anchor = event->data.scalar.anchor;
        tag = event->data.scalar.tag;
    } else if (event->type == YAML_SEQUENCE_START_EVENT) {
        anchor = event->data.sequence_start.anchor;
        tag = event->data.sequence_start.tag;
    } else if (event->type == YAML_MAPPING_START_EVENT) {
        anchor = event->data.mapping_start.anchor;
        tag = event->data.mapping_start.tag;
    }
    const long line = (long)event->start_mark.line, column = (long)event->start_mark.column;
    if (event->type == YAML_ALIAS_EVENT || anchor != NULL) {
        return fail_at(ctx, line, column, key, "anchors (&name) and aliases (*name) are not supported; "
                       "write each value out");
    }
    if (tag != NULL) {
        return fail_at(ctx, line, column, key, "tags such as '%.40s' are not supported; every key has a fixed type",
                       (const char *)tag);
    }
    return TQ_OK;
}

typedef struct {
    yaml_parser_t parser;
    yaml_event_t event;
    int has_event;
    const char *text; /* the input, to place reader errors that carry only a byte offset */
    size_t len;
} event_reader;

/* 0-based line and column of byte offset in text. */
static void locate_offset(const char *text, size_t len, size_t offset, long *line, long *column)
{
    *line = 0;
    *column = 0;
    for (size_t i = 0; i < offset && i < len; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *column = 0;
        } else {
            (*column)++;
        }
    }
}

/* Read the next event into reader->event, freeing the previous one. */
static tq_status next_event(parse_context *ctx, event_reader *reader)
{
    if (reader->has_event) {
        yaml_event_delete(&reader->event);
        reader->has_event = 0;
    }
    if (!yaml_parser_parse(&reader->parser, &reader->event)) {
        const yaml_parser_t *p = &reader->parser;
        if (p->error == YAML_MEMORY_ERROR) {
            return tq_error_set(ctx->err, TQ_ERR_NOMEM, "out of memory while parsing the configuration");
        }
        const char *problem = p->problem != NULL ? p->problem : "invalid YAML";
        if (p->error == YAML_READER_ERROR) {
            /* Encoding errors (invalid UTF-8, control characters) carry a byte offset, not a mark. */
            long line, column;
            locate_offset(reader->text, reader->len, p->problem_offset, &line, &column);
            return fail_at(ctx, line, column, NULL, "YAML syntax error: %s at byte %zu; the file must be UTF-8 text",
                           problem, p->problem_offset);
        }
        if (p->context != NULL) {
            return fail_at(ctx, (long)p->problem_mark.line, (long)p->problem_mark.column, NULL,
                           "YAML syntax error: %s %s (line %ld)", problem, p->context, (long)p->context_mark.line + 1);
        }
        return fail_at(ctx, (long)p->problem_mark.line, (long)p->problem_mark.column, NULL, "YAML syntax error: %s",
                       problem);
    }
    reader->has_event = 1;
    return TQ_OK;
}

static int find_key(const char *name)
{
    for (int i = 0; i < TQ_CFG_KEY_COUNT; i++) {
        if (strcmp(tq_config_keys[i].name, name) == 0) {
            return i;
        }
    }
    return -1;
}

static tq_status unknown_key(parse_context *ctx, const yaml_event_t *event)
{
    const char *name = (const char *)event->data.scalar.value;
    int best = -1, best_distance = 99;
    for (int i = 0; i < TQ_CFG_KEY_COUNT; i++) {
        int d = edit_distance(name, tq_config_keys[i].name);
        if (d < best_distance) {
            best_distance = d;
            best = i;
        }
    }
    char shown[64];
    quote_value(name, event->data.scalar.length, shown, sizeof(shown));
    /* Suggest a key only for a likely typo: about one edit per three letters. */
    const int max_distance = event->data.scalar.length >= 6 ? (int)(event->data.scalar.length / 3) : 1;
    if (best >= 0 && best_distance <= max_distance) {
        return fail_at(ctx, (long)event->start_mark.line, (long)event->start_mark.column, name,
                       "unknown key %s; did you mean '%s'? The keys are listed in docs/config.md", shown,
                       tq_config_keys[best].name);
    }
    return fail_at(ctx, (long)event->start_mark.line, (long)event->start_mark.column, name,
                   "unknown key %s; the keys are listed in docs/config.md", shown);
}

/* Parse the value of key id, starting at reader->event. */
static tq_status parse_value(parse_context *ctx, event_reader *reader, tq_config *cfg, tq_config_key id)
{
    const tq_config_key_spec *spec = &tq_config_keys[id];
    yaml_event_t *event = &reader->event;
    const long line = (long)event->start_mark.line, column = (long)event->start_mark.column;
    char expected[200];
    tq_config_describe_expected(spec, expected, sizeof(expected));

    tq_status status = check_plain_node(ctx, event, spec->name);
    if (status != TQ_OK) {
        return status;
    }
    const int is_list = spec->type == TQ_CFG_TYPE_INT_LIST || spec->type == TQ_CFG_TYPE_FLOAT_LIST;

    if (event->type == YAML_MAPPING_START_EVENT) {
        return fail_at(ctx, line, column, spec->name, "key '%s': nested mappings are not supported; expected %s",
                       spec->name, expected);
    }
    if (event->type == YAML_SCALAR_EVENT && is_null_scalar(event)) {
        if (!spec->nullable) {
            return fail_at(ctx, line, column, spec->name, "key '%s' has no value; expected %s", spec->name, expected);
        }
        cfg->is_null[id] = 1;
        return TQ_OK;
    }
    if (event->type == YAML_SCALAR_EVENT) {
        if (is_list) {
            return fail_at(ctx, line, column, spec->name, "key '%s': expected %s, written [a, b, ...]", spec->name,
                           expected);
        }
        return store_scalar(ctx, cfg, id, event, 0);
    }
    if (event->type != YAML_SEQUENCE_START_EVENT) {
        return fail_at(ctx, line, column, spec->name, "key '%s': unexpected YAML node; expected %s", spec->name,
                       expected);
    }
    if (!is_list) {
        return fail_at(ctx, line, column, spec->name, "key '%s': got a list; expected %s", spec->name, expected);
    }

    size_t count = 0;
    for (;;) {
        status = next_event(ctx, reader);
        if (status != TQ_OK) {
            return status;
        }
        if (event->type == YAML_SEQUENCE_END_EVENT) {
            break;
        }
        status = check_plain_node(ctx, event, spec->name);
        if (status != TQ_OK) {
            return status;
        }
        const long item_line = (long)event->start_mark.line, item_column = (long)event->start_mark.column;
        if (event->type != YAML_SCALAR_EVENT || is_null_scalar(event)) {
            return fail_at(ctx, item_line, item_column, spec->name, "key '%s': item %zu is not a number; expected %s",
                           spec->name, count, expected);
        }
        if (count >= spec->max_count) {
            return fail_at(ctx, item_line, item_column, spec->name, "key '%s': more than %zu items; expected %s",
                           spec->name, spec->max_count, expected);
        }
        status = store_scalar(ctx, cfg, id, event, count);
        if (status != TQ_OK) {
            return status;
        }
        count++;
    }
    if (count < spec->min_count) {
        return fail_at(ctx, line, column, spec->name, "key '%s': %zu items; expected %s", spec->name, count, expected);
    }
    *(size_t *)((char *)cfg + spec->count_offset) = count;
    return TQ_OK;
}

/* --------------------------------------------------------- cross checks */

/* Fail at the line of key id (the later of two related keys). */
#define FAIL_KEY(id, ...) fail_at(ctx, (long)cfg->line[id] - 1, 0, tq_config_keys[id].name, __VA_ARGS__)

static tq_config_key later_key(const tq_config *cfg, tq_config_key a, tq_config_key b)
{
    return cfg->line[a] >= cfg->line[b] ? a : b;
}

static tq_status check_token_id(parse_context *ctx, const tq_config *cfg, tq_config_key id, int64_t token)
{
    if (!cfg->set[id] || cfg->is_null[id] || !cfg->set[TQ_CFG_VOCAB_SIZE] || token < cfg->vocab_size) {
        return TQ_OK;
    }
    return FAIL_KEY(later_key(cfg, id, TQ_CFG_VOCAB_SIZE), "key '%s': token id %lld is not below vocab_size %lld",
                    tq_config_keys[id].name, (long long)token, (long long)cfg->vocab_size);
}

/* Checks between keys, run when both keys of a pair are in the file. */
static tq_status check_relations(parse_context *ctx, const tq_config *cfg)
{
    tq_status status;
    if (cfg->set[TQ_CFG_FAMILY]) {
        const int family = strcmp(cfg->family, "gemma3") == 0 ? TQ_CFG_FAMILY_GEMMA3 : TQ_CFG_FAMILY_GEMMA4;
        for (int i = 0; i < TQ_CFG_KEY_COUNT; i++) {
            if (cfg->set[i] && !(tq_config_keys[i].families & family)) {
                return FAIL_KEY((tq_config_key)i, "key '%s' applies to %s models only, but family is %s",
                                tq_config_keys[i].name, family == TQ_CFG_FAMILY_GEMMA3 ? "gemma4" : "gemma3", cfg->family);
            }
        }
        if (cfg->set[TQ_CFG_PRESET] && strncmp(cfg->preset, cfg->family, strlen(cfg->family)) != 0) {
            return FAIL_KEY(later_key(cfg, TQ_CFG_PRESET, TQ_CFG_FAMILY),
                            "preset '%s' is not a %s model; choose a %s preset or change family", cfg->preset,
                            cfg->family, cfg->family);
        }
    }
    if (cfg->set[TQ_CFG_NUM_HEADS] && cfg->set[TQ_CFG_NUM_KV_HEADS] && cfg->num_heads % cfg->num_kv_heads != 0) {
        return FAIL_KEY(later_key(cfg, TQ_CFG_NUM_HEADS, TQ_CFG_NUM_KV_HEADS),
                        "num_heads %lld is not a multiple of num_kv_heads %lld", (long long)cfg->num_heads,
                        (long long)cfg->num_kv_heads);
    }
    if (cfg->set[TQ_CFG_NUM_LAYERS]) {
        const int64_t layers = cfg->num_layers;
        if (cfg->set[TQ_CFG_NUM_KV_SHARED_LAYERS] && cfg->num_kv_shared_layers >= layers) {
            return FAIL_KEY(later_key(cfg, TQ_CFG_NUM_KV_SHARED_LAYERS, TQ_CFG_NUM_LAYERS),
                            "num_kv_shared_layers %lld must be below num_layers %lld, because shared layers reuse "
                            "the K/V of an earlier layer", (long long)cfg->num_kv_shared_layers, (long long)layers);
        }
        if (cfg->set[TQ_CFG_FFN_SIZES] && (int64_t)cfg->ffn_sizes_count != layers) {
            return FAIL_KEY(later_key(cfg, TQ_CFG_FFN_SIZES, TQ_CFG_NUM_LAYERS),
                            "ffn_sizes has %zu entries but num_layers is %lld; give one size per layer",
                            cfg->ffn_sizes_count, (long long)layers);
        }
        for (size_t i = 0; cfg->set[TQ_CFG_KV_F16_LAYERS] && i < cfg->kv_f16_layers_count; i++) {
            const int64_t layer = cfg->kv_f16_layers[i];
            if (layer < -layers || layer >= layers) {
                return FAIL_KEY(later_key(cfg, TQ_CFG_KV_F16_LAYERS, TQ_CFG_NUM_LAYERS),
                                "kv_f16_layers item %zu is %lld, outside -%lld .. %lld for num_layers %lld", i,
                                (long long)layer, (long long)layers, (long long)(layers - 1), (long long)layers);
            }
        }
    }
    if (cfg->set[TQ_CFG_FFN_SIZES] && cfg->set[TQ_CFG_DOUBLE_WIDE_FFN] && cfg->double_wide_ffn) {
        return FAIL_KEY(later_key(cfg, TQ_CFG_FFN_SIZES, TQ_CFG_DOUBLE_WIDE_FFN),
                        "set either ffn_sizes (one size per layer) or double_wide_ffn: true, not both");
    }
    for (size_t i = 1; cfg->set[TQ_CFG_AUDIO_CODEBOOK] && i < cfg->audio_codebook_count; i++) {
        if (!(cfg->audio_codebook[i] > cfg->audio_codebook[i - 1])) {
            return FAIL_KEY(TQ_CFG_AUDIO_CODEBOOK, "audio_codebook must be strictly increasing, but item %zu (%g) "
                            "follows %g", i, cfg->audio_codebook[i], cfg->audio_codebook[i - 1]);
        }
    }
    if ((status = check_token_id(ctx, cfg, TQ_CFG_THINK_TOKEN_ID, cfg->think_token_id)) != TQ_OK ||
        (status = check_token_id(ctx, cfg, TQ_CFG_AUDIO_TOKEN_ID, cfg->audio_token_id)) != TQ_OK ||
        (status = check_token_id(ctx, cfg, TQ_CFG_IMAGE_TOKEN_ID, cfg->image_token_id)) != TQ_OK) {
        return status;
    }
    if (cfg->set[TQ_CFG_MTP_CHECKPOINT] && !cfg->is_null[TQ_CFG_MTP_CHECKPOINT] && cfg->set[TQ_CFG_SPECULATIVE] &&
        strcmp(cfg->speculative, "mtp") != 0) {
        return FAIL_KEY(later_key(cfg, TQ_CFG_MTP_CHECKPOINT, TQ_CFG_SPECULATIVE),
                        "mtp_checkpoint is set but speculative is '%s'; set speculative: mtp or remove "
                        "mtp_checkpoint", cfg->speculative);
    }
    return TQ_OK;
}

#undef FAIL_KEY

/* ------------------------------------------------------------------ driver */

/* Parse the top-level mapping; reader->event is its MAPPING_START. */
static tq_status parse_mapping(parse_context *ctx, event_reader *reader, tq_config *cfg)
{
    for (;;) {
        tq_status status = next_event(ctx, reader);
        if (status != TQ_OK) {
            return status;
        }
        yaml_event_t *event = &reader->event;
        if (event->type == YAML_MAPPING_END_EVENT) {
            return TQ_OK;
        }
        status = check_plain_node(ctx, event, NULL);
        if (status != TQ_OK) {
            return status;
        }
        const long line = (long)event->start_mark.line, column = (long)event->start_mark.column;
        if (event->type != YAML_SCALAR_EVENT || event->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
            return fail_at(ctx, line, column, NULL, "every key must be a plain word such as num_layers");
        }
        const int id = find_key((const char *)event->data.scalar.value);
        if (id < 0) {
            return unknown_key(ctx, event);
        }
        if (cfg->set[id]) {
            return fail_at(ctx, line, column, tq_config_keys[id].name, "duplicate key '%s' (first set on line %d); keep one",
                           tq_config_keys[id].name, cfg->line[id]);
        }
        cfg->set[id] = 1;
        cfg->line[id] = (int)line + 1;

        status = next_event(ctx, reader);
        if (status == TQ_OK) {
            status = parse_value(ctx, reader, cfg, (tq_config_key)id);
        }
        if (status != TQ_OK) {
            return status;
        }
    }
}

static tq_status parse_stream(parse_context *ctx, event_reader *reader, tq_config *cfg)
{
    tq_status status = next_event(ctx, reader);
    if (status != TQ_OK) {
        return status;
    }
    /* STREAM_START */
    if ((status = next_event(ctx, reader)) != TQ_OK) {
        return status;
    }
    if (reader->event.type == YAML_STREAM_END_EVENT) {
        return TQ_OK; /* empty file or comments only */
    }
    /* DOCUMENT_START, then the root node. */
    if ((status = next_event(ctx, reader)) != TQ_OK) {
        return status;
    }
    yaml_event_t *event = &reader->event;
    if ((status = check_plain_node(ctx, event, NULL)) != TQ_OK) {
        return status;
    }
    if (event->type == YAML_SCALAR_EVENT && is_null_scalar(event)) {
        /* A document with no content ("---" alone). */
    } else if (event->type == YAML_MAPPING_START_EVENT) {
        if ((status = parse_mapping(ctx, reader, cfg)) != TQ_OK) {
            return status;
        }
    } else {
        return fail_at(ctx, (long)event->start_mark.line, (long)event->start_mark.column, NULL,
                       "the configuration must be a mapping of keys to values, such as 'num_layers: 18'");
    }
    /* DOCUMENT_END, then the end of the stream. */
    if ((status = next_event(ctx, reader)) != TQ_OK || (status = next_event(ctx, reader)) != TQ_OK) {
        return status;
    }
    if (reader->event.type != YAML_STREAM_END_EVENT) {
        return fail_at(ctx, (long)reader->event.start_mark.line, (long)reader->event.start_mark.column, NULL,
                       "the file has a second YAML document; a configuration is one document");
    }
    return check_relations(ctx, cfg);
}

tq_status tq_config_parse_memory(const char *text, size_t len, const char *source_name, tq_config *out,
                                 tq_config_error_location *where, tq_error *err)
{
    parse_context ctx = {source_name, where, err};
    if (where != NULL) {
        memset(where, 0, sizeof(*where));
    }
    if (out == NULL || (text == NULL && len > 0)) {
        return tq_error_set(err, TQ_ERR_INVALID, "tq_config_parse_memory: out and text must not be NULL");
    }
    memset(out, 0, sizeof(*out));

    event_reader reader;
    memset(&reader, 0, sizeof(reader));
    if (!yaml_parser_initialize(&reader.parser)) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory while creating the YAML parser");
    }
    reader.text = text;
    reader.len = len;
    static const unsigned char empty[1] = {0};
    yaml_parser_set_input_string(&reader.parser, len > 0 ? (const unsigned char *)text : empty, len);
    tq_status status = parse_stream(&ctx, &reader, out);
    if (reader.has_event) {
        yaml_event_delete(&reader.event);
    }
    yaml_parser_delete(&reader.parser);
    return status;
}

tq_status tq_config_load_file(const char *path, tq_config *out, tq_config_error_location *where, tq_error *err)
{
    if (where != NULL) {
        memset(where, 0, sizeof(*where));
    }
    if (path == NULL || out == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "tq_config_load_file: path and out must not be NULL");
    }
    struct stat info;
    if (stat(path, &info) != 0) {
        return tq_error_set(err, TQ_ERR_IO, "configuration file %s: %s", path, strerror(errno));
    }
    if (!S_ISREG(info.st_mode)) {
        return tq_error_set(err, TQ_ERR_IO, "configuration file %s is not a regular file; pass a YAML file", path);
    }
    if ((uint64_t)info.st_size > TQ_CONFIG_MAX_FILE_BYTES) {
        return tq_error_set(err, TQ_ERR_FORMAT, "configuration file %s has %lld bytes, more than the %u allowed; "
                            "is it a YAML configuration?", path, (long long)info.st_size, TQ_CONFIG_MAX_FILE_BYTES);
    }
    FILE *file = fopen(path, "rb");
    if (file == NULL) {
        return tq_error_set(err, TQ_ERR_IO, "configuration file %s: %s", path, strerror(errno));
    }
    /* Read one byte more than allowed, to notice a file that grew since stat(). */
    char *text = malloc(TQ_CONFIG_MAX_FILE_BYTES + 1);
    if (text == NULL) {
        fclose(file);
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory reading configuration file %s", path);
    }
    size_t len = fread(text, 1, TQ_CONFIG_MAX_FILE_BYTES + 1, file);
    int read_failed = ferror(file);
    fclose(file);
    tq_status status;
    if (read_failed) {
        status = tq_error_set(err, TQ_ERR_IO, "configuration file %s: read failed", path);
    } else if (len > TQ_CONFIG_MAX_FILE_BYTES) {
        status = tq_error_set(err, TQ_ERR_FORMAT, "configuration file %s has more than %u bytes", path,
                              TQ_CONFIG_MAX_FILE_BYTES);
    } else {
        status = tq_config_parse_memory(text, len, path, out, where, err);
    }
    free(text);
    return status;
}
