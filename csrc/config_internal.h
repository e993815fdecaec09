/* Internal interface between the YAML event parser (config.c) and the key
 * table with its value parsers (config_keys.c). Not part of the public API. */
#ifndef TQ_CONFIG_INTERNAL_H
#define TQ_CONFIG_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* Type, range and storage of one configuration key. */
typedef struct {
    const char *name;
    tq_config_type type;
    int families;
    int nullable;
    /* Inclusive bounds of an integer, or of each element of an integer list. */
    int64_t int_min;
    int64_t int_max;
    /* Bounds of a float; min_exclusive makes the lower bound strict (x > min). */
    double float_min;
    double float_max;
    int min_exclusive;
    /* Lists: element count bounds. */
    size_t min_count;
    size_t max_count;
    /* Strings: NULL-terminated allowed values, or NULL for free text (a path)
     * or a cache type (checked by tq_kv_type_parse). */
    const char *const *choices;
    int is_cache_type;
    size_t value_offset;
    size_t count_offset;
    size_t string_size;
} tq_config_key_spec;

/* The schema, indexed by tq_config_key. */
extern const tq_config_key_spec tq_config_keys[TQ_CFG_KEY_COUNT];

/* Describe what a key accepts, for messages: "an integer from 1 to 1024". */
void tq_config_describe_expected(const tq_config_key_spec *spec, char *out, size_t out_size);

/* Parse a plain decimal integer ([+-]digits) within [lo, hi]. Returns 1 on success,
 * 0 when the text is not an integer, -1 when it is one but out of range. */
int tq_config_parse_int(const char *text, int64_t lo, int64_t hi, int64_t *out);

/* Parse a plain decimal number in the C locale. Returns 1 on success, 0 when the
 * text has another form (including YAML's .inf and .nan), -1 when it overflows. */
int tq_config_parse_float(const char *text, double *out);

/* 1 when value lies within the key's float bounds. */
int tq_config_float_in_range(const tq_config_key_spec *spec, double value);

/* 1 for true, True, TRUE; 0 for false, False, FALSE; -1 for YAML 1.1 words such
 * as yes and off that YAML 1.2 reads as strings; -2 for anything else. */
int tq_config_parse_bool(const char *text);

#endif /* TQ_CONFIG_INTERNAL_H */
