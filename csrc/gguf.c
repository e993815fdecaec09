/* GGUF reader: maps the file read-only and validates every count, length and
 * offset before it reads or allocates anything that depends on it.
 *
 * The parser walks the header once. Metadata values and tensor names point into
 * the mapping. Only the entry tables, the string tables of top-level string
 * arrays and the two name indexes are allocated. Because a GGUF count can claim
 * up to 2^64 entries, each count is first compared with the minimum number of
 * bytes its entries need, so a corrupt count fails before any allocation.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* mmap, fstat and open for a build without _GNU_SOURCE */
#endif

#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC_SIZE 4
#define GGUF_DEFAULT_ALIGNMENT 32

/* Minimum encoded sizes in bytes, used to bound counts before allocating.
 * A metadata entry is a key length (8), a value type (4) and a value of at least 1.
 * A tensor info is a name length (8), n_dims (4), one dimension (8), a type (4)
 * and an offset (8). A string is at least its 8-byte length. An inner array is
 * its element type (4) and count (8). */
#define GGUF_MIN_KV_BYTES 13
#define GGUF_MIN_TENSOR_INFO_BYTES 32
#define GGUF_MIN_STRING_BYTES 8
#define GGUF_MIN_ARRAY_BYTES 12

/* Maximum bytes of a key, tensor name or path shown in an error message, so that
 * the rest of a message usually fits in TQ_ERROR_MSG_SIZE (longer ones are cut). */
#define GGUF_MAX_SHOWN_NAME 64
#define GGUF_MAX_SHOWN_PATH 120
/* A shown name is at most 4 output bytes per input byte plus "..." and NUL. */
#define GGUF_SHOWN_NAME_CAP (GGUF_MAX_SHOWN_NAME * 4 + 4)

/* Names sorted bytewise, for binary search and for finding duplicates. A sorted
 * array costs O(n log n) for any input, where a hash table without a secret seed
 * degrades to O(n^2) on names crafted to collide. */
typedef struct {
    const char *data;
    uint64_t len;
    uint64_t index; /* entry number: the position in kvs or tensors */
} gguf_name_entry;

typedef struct {
    gguf_name_entry *entries;
    uint64_t count;
} gguf_name_index;

struct tq_gguf {
    const uint8_t *base; /* the mapping or the caller's buffer, file_size bytes */
    uint64_t file_size;
    int owns_mapping; /* 1 when base came from mmap and tq_gguf_close() unmaps it */
    uint32_t version;
    uint64_t alignment;
    uint64_t data_offset; /* absolute offset of the data section */
    uint64_t n_kv;
    tq_gguf_kv *kvs;
    uint64_t n_tensors;
    tq_gguf_tensor *tensors;
    gguf_name_index kv_index;
    gguf_name_index tensor_index;
    const char *const *origins; /* per tensor, from tq_gguf_open_view; NULL for a GGUF file */
};

/* Parse state: the position in the mapping, and the shown path and entry
 * ("metadata key 'general.name'") that start every error message. */
typedef struct {
    const uint8_t *base;
    uint64_t size;
    uint64_t pos;
    char path[GGUF_MAX_SHOWN_PATH * 4 + 16]; /* the shown path in quotes */
    char entry[GGUF_SHOWN_NAME_CAP + 32];
    tq_error *err;
} gguf_cursor;

/* Returns 1 when this library has a block layout for the GGML type id. */
static int gguf_type_known(uint32_t type)
{
    return type <= (uint32_t)INT32_MAX && tq_type_block_size((int)type) > 0;
}

/* ---- names in messages ---- */

/* Copy name into dst for an error message, cut to GGUF_MAX_SHOWN_NAME bytes with
 * "...". Printable ASCII stays and every other byte becomes \xNN, so a message
 * stays readable and valid UTF-8 whatever bytes the file contains. */
static void gguf_format_name(char *dst, size_t cap, const char *name, uint64_t len)
{
    size_t out = 0;
    uint64_t shown = len < GGUF_MAX_SHOWN_NAME ? len : GGUF_MAX_SHOWN_NAME;
    for (uint64_t i = 0; i < shown && out + 5 < cap; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '\\') {
            dst[out++] = (char)ch;
        } else {
            out += (size_t)snprintf(dst + out, cap - out, "\\x%02x", ch);
        }
    }
    if (shown < len && out + 4 < cap) {
        memcpy(dst + out, "...", 3);
        out += 3;
    }
    dst[out < cap ? out : cap - 1] = '\0';
}

/* Copy a path for messages: its last GGUF_MAX_SHOWN_PATH bytes (the file name is
 * the useful part), with control characters escaped. Other bytes stay, so UTF-8
 * paths read normally. */
static void gguf_format_path(char *dst, size_t cap, const char *path)
{
    size_t len = strlen(path);
    size_t start = len > GGUF_MAX_SHOWN_PATH ? len - GGUF_MAX_SHOWN_PATH : 0;
    while (start > 0 && start < len && ((unsigned char)path[start] & 0xc0) == 0x80) {
        start++; /* skip UTF-8 continuation bytes, so the shown part starts at a whole character */
    }
    size_t out = 0;
    if (start > 0) {
        memcpy(dst, "...", 3);
        out = 3;
    }
    for (size_t i = start; i < len && out + 5 < cap; i++) {
        unsigned char ch = (unsigned char)path[i];
        if (ch < 0x20 || ch == 0x7f) {
            out += (size_t)snprintf(dst + out, cap - out, "\\x%02x", ch);
        } else {
            dst[out++] = (char)ch;
        }
    }
    dst[out < cap ? out : cap - 1] = '\0';
}

static void gguf_set_entry(gguf_cursor *c, const char *what, const tq_gguf_string *name)
{
    char shown[GGUF_SHOWN_NAME_CAP];
    gguf_format_name(shown, sizeof(shown), name->data, name->len);
    snprintf(c->entry, sizeof(c->entry), "%s '%s'", what, shown);
}

/* ---- bounded reads ---- */

static tq_status gguf_need(gguf_cursor *c, uint64_t n, const char *field)
{
    uint64_t left = c->size - c->pos;
    if (n > left) {
        return tq_error_set(c->err, TQ_ERR_FORMAT,
                            "%s: %s: %s at offset %" PRIu64 " needs %" PRIu64 " bytes, but only %" PRIu64
                            " bytes are left in the %" PRIu64 "-byte file; the file is truncated or corrupt",
                            c->path, c->entry, field, c->pos, n, left, c->size);
    }
    return TQ_OK;
}

static uint64_t gguf_load_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

static tq_status gguf_read_uint(gguf_cursor *c, int n, const char *field, uint64_t *out)
{
    tq_status st = gguf_need(c, (uint64_t)n, field);
    if (st != TQ_OK) {
        return st;
    }
    *out = gguf_load_le(c->base + c->pos, n);
    c->pos += (uint64_t)n;
    return TQ_OK;
}

static tq_status gguf_read_u32(gguf_cursor *c, const char *field, uint32_t *out)
{
    uint64_t v = 0;
    tq_status st = gguf_read_uint(c, 4, field, &v);
    *out = (uint32_t)v;
    return st;
}

static tq_status gguf_read_u64(gguf_cursor *c, const char *field, uint64_t *out)
{
    return gguf_read_uint(c, 8, field, out);
}

static tq_status gguf_read_string(gguf_cursor *c, const char *field, tq_gguf_string *out)
{
    uint64_t len = 0;
    uint64_t start = c->pos;
    tq_status st = gguf_read_u64(c, field, &len);
    if (st != TQ_OK) {
        return st;
    }
    uint64_t left = c->size - c->pos;
    if (len > left) {
        return tq_error_set(c->err, TQ_ERR_FORMAT,
                            "%s: %s: %s at offset %" PRIu64 " has length %" PRIu64 ", but only %" PRIu64
                            " bytes are left in the %" PRIu64 "-byte file; the file is truncated or corrupt",
                            c->path, c->entry, field, start, len, left, c->size);
    }
    out->data = (const char *)(c->base + c->pos);
    out->len = len;
    c->pos += len;
    return TQ_OK;
}

/* ---- metadata values ---- */

/* Bytes of one element of a scalar value type; 0 for string, array and unknown ids. */
static uint64_t gguf_scalar_size(uint32_t type)
{
    switch (type) {
    case TQ_GGUF_UINT8:
    case TQ_GGUF_INT8:
    case TQ_GGUF_BOOL:
        return 1;
    case TQ_GGUF_UINT16:
    case TQ_GGUF_INT16:
        return 2;
    case TQ_GGUF_UINT32:
    case TQ_GGUF_INT32:
    case TQ_GGUF_FLOAT32:
        return 4;
    case TQ_GGUF_UINT64:
    case TQ_GGUF_INT64:
    case TQ_GGUF_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

static int gguf_valid_value_type(uint32_t type)
{
    return type <= TQ_GGUF_FLOAT64;
}

const char *tq_gguf_value_type_name(int type)
{
    static const char *const names[] = {"uint8",  "int8",  "uint16", "int16", "uint32", "int32",  "float32",
                                        "bool",   "string", "array", "uint64", "int64", "float64"};
    if (type < 0 || type > TQ_GGUF_FLOAT64) {
        return "unknown";
    }
    return names[type];
}

static tq_status gguf_unknown_value_type(gguf_cursor *c, uint64_t offset, const char *field, uint32_t type)
{
    return tq_error_set(c->err, TQ_ERR_FORMAT,
                        "%s: %s: %s at offset %" PRIu64 " is %" PRIu32
                        ", which is not a GGUF value type (0 to 12); the file is corrupt",
                        c->path, c->entry, field, offset, type);
}

static tq_status gguf_check_bools(gguf_cursor *c, const uint8_t *data, uint64_t count)
{
    for (uint64_t i = 0; i < count; i++) {
        if (data[i] > 1) {
            return tq_error_set(c->err, TQ_ERR_FORMAT,
                                "%s: %s: bool at offset %" PRIu64 " is %u; a GGUF bool must be 0 or 1, "
                                "so the file is corrupt",
                                c->path, c->entry, (uint64_t)(data + i - c->base), (unsigned)data[i]);
        }
    }
    return TQ_OK;
}

/* Parse an array body (element type, count, elements) at the cursor. depth is 1
 * for a metadata value that is an array. Only a top-level string array gets a
 * string table (depth == 1), because inner arrays are only checked and skipped. */
static tq_status gguf_parse_array(gguf_cursor *c, int depth, tq_gguf_array *arr)
{
    uint64_t type_offset = c->pos;
    uint32_t type = 0;
    uint64_t count = 0;
    tq_status st = gguf_read_u32(c, "array element type", &type);
    if (st != TQ_OK) {
        return st;
    }
    if (!gguf_valid_value_type(type)) {
        return gguf_unknown_value_type(c, type_offset, "array element type", type);
    }
    uint64_t count_offset = c->pos;
    st = gguf_read_u64(c, "array count", &count);
    if (st != TQ_OK) {
        return st;
    }

    arr->type = (tq_gguf_value_type)type;
    arr->count = count;
    arr->data = c->base + c->pos;
    arr->strings = NULL;

    uint64_t left = c->size - c->pos;
    uint64_t min_element = gguf_scalar_size(type);
    if (type == TQ_GGUF_STRING) {
        min_element = GGUF_MIN_STRING_BYTES;
    } else if (type == TQ_GGUF_ARRAY) {
        min_element = GGUF_MIN_ARRAY_BYTES;
    }
    if (count > left / min_element) {
        return tq_error_set(c->err, TQ_ERR_FORMAT,
                            "%s: %s: array count %" PRIu64 " at offset %" PRIu64 " needs at least %" PRIu64
                            " bytes per %s element, but only %" PRIu64
                            " bytes are left in the file; the file is truncated or corrupt",
                            c->path, c->entry, count, count_offset, min_element, tq_gguf_value_type_name((int)type),
                            left);
    }

    if (type == TQ_GGUF_STRING) {
        tq_gguf_string *strings = NULL;
        if (depth == 1 && count > 0) {
            size_t bytes = 0;
            if (!tq_mul_size((size_t)count, sizeof(*strings), &bytes) || (strings = malloc(bytes)) == NULL) {
                return tq_error_set(c->err, TQ_ERR_NOMEM, "%s: %s: out of memory for a table of %" PRIu64 " strings",
                                    c->path, c->entry, count);
            }
        }
        for (uint64_t i = 0; i < count; i++) {
            tq_gguf_string s;
            st = gguf_read_string(c, "array string", &s);
            if (st != TQ_OK) {
                free(strings);
                return st;
            }
            if (strings != NULL) {
                strings[i] = s;
            }
        }
        arr->strings = strings;
        return TQ_OK;
    }

    if (type == TQ_GGUF_ARRAY) {
        if (depth >= TQ_GGUF_MAX_ARRAY_DEPTH) {
            return tq_error_set(c->err, TQ_ERR_FORMAT,
                                "%s: %s: arrays nested more than %d levels deep at offset %" PRIu64
                                "; this reader rejects deeper nesting as corrupt",
                                c->path, c->entry, TQ_GGUF_MAX_ARRAY_DEPTH, type_offset);
        }
        for (uint64_t i = 0; i < count; i++) {
            tq_gguf_array inner;
            st = gguf_parse_array(c, depth + 1, &inner);
            if (st != TQ_OK) {
                return st;
            }
        }
        return TQ_OK;
    }

    /* Scalar elements: the count check above bounds count * size by the bytes left. */
    uint64_t bytes = count * min_element;
    if (type == TQ_GGUF_BOOL) {
        st = gguf_check_bools(c, arr->data, count);
        if (st != TQ_OK) {
            return st;
        }
    }
    c->pos += bytes;
    return TQ_OK;
}

static tq_status gguf_parse_value(gguf_cursor *c, tq_gguf_kv *kv)
{
    uint64_t raw = 0;
    tq_status st = TQ_OK;
    switch (kv->type) {
    case TQ_GGUF_UINT8:
    case TQ_GGUF_UINT16:
    case TQ_GGUF_UINT32:
    case TQ_GGUF_UINT64:
        st = gguf_read_uint(c, (int)gguf_scalar_size(kv->type), "value", &raw);
        kv->value.u64 = raw;
        return st;
    case TQ_GGUF_INT8:
        st = gguf_read_uint(c, 1, "value", &raw);
        kv->value.i64 = (int8_t)(uint8_t)raw;
        return st;
    case TQ_GGUF_INT16:
        st = gguf_read_uint(c, 2, "value", &raw);
        kv->value.i64 = (int16_t)(uint16_t)raw;
        return st;
    case TQ_GGUF_INT32:
        st = gguf_read_uint(c, 4, "value", &raw);
        kv->value.i64 = (int32_t)(uint32_t)raw;
        return st;
    case TQ_GGUF_INT64:
        st = gguf_read_uint(c, 8, "value", &raw);
        kv->value.i64 = (int64_t)raw;
        return st;
    case TQ_GGUF_FLOAT32: {
        st = gguf_read_uint(c, 4, "value", &raw);
        uint32_t bits = (uint32_t)raw;
        float f;
        memcpy(&f, &bits, sizeof(f));
        kv->value.f64 = (double)f;
        return st;
    }
    case TQ_GGUF_FLOAT64: {
        st = gguf_read_uint(c, 8, "value", &raw);
        double d;
        memcpy(&d, &raw, sizeof(d));
        kv->value.f64 = d;
        return st;
    }
    case TQ_GGUF_BOOL:
        st = gguf_need(c, 1, "value");
        if (st == TQ_OK) {
            st = gguf_check_bools(c, c->base + c->pos, 1);
        }
        if (st == TQ_OK) {
            kv->value.u64 = c->base[c->pos];
            c->pos += 1;
        }
        return st;
    case TQ_GGUF_STRING:
        return gguf_read_string(c, "string value", &kv->value.str);
    case TQ_GGUF_ARRAY:
        return gguf_parse_array(c, 1, &kv->value.arr);
    }
    return tq_error_set(c->err, TQ_ERR_FORMAT, "%s: %s: internal error: value type %d", c->path, c->entry,
                        (int)kv->type);
}

/* ---- name index ---- */

static int gguf_compare_names(const char *a, uint64_t a_len, const char *b, uint64_t b_len)
{
    uint64_t common = a_len < b_len ? a_len : b_len;
    int order = common > 0 ? memcmp(a, b, (size_t)common) : 0;
    if (order != 0) {
        return order;
    }
    return a_len < b_len ? -1 : a_len > b_len;
}

/* qsort comparator: by name, then by entry number, so duplicates appear in file order. */
static int gguf_compare_entries(const void *a, const void *b)
{
    const gguf_name_entry *x = a;
    const gguf_name_entry *y = b;
    int order = gguf_compare_names(x->data, x->len, y->data, y->len);
    if (order != 0) {
        return order;
    }
    return x->index < y->index ? -1 : x->index > y->index;
}

/* Fill index with n names and sort it. The names are tq_gguf_string fields spaced
 * stride bytes apart, starting at first (the key of kvs[0] or the name of
 * tensors[0]). When a name occurs twice, *duplicate is set to the entry number of
 * the second occurrence and *original to the first. Otherwise both are UINT64_MAX. */
static tq_status gguf_index_build(gguf_name_index *index, const tq_gguf_string *first, size_t stride, uint64_t n,
                                  uint64_t *original, uint64_t *duplicate, tq_error *err)
{
    *original = UINT64_MAX;
    *duplicate = UINT64_MAX;
    index->count = n;
    if (n == 0) {
        return TQ_OK;
    }
    /* n is bounded by the file size divided by the minimum entry size, so it fits in size_t. */
    index->entries = calloc((size_t)n, sizeof(gguf_name_entry));
    if (index->entries == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for a name index of %" PRIu64 " entries", n);
    }
    for (uint64_t i = 0; i < n; i++) {
        const tq_gguf_string *name = (const tq_gguf_string *)((const char *)first + i * stride);
        index->entries[i].data = name->data;
        index->entries[i].len = name->len;
        index->entries[i].index = i;
    }
    qsort(index->entries, (size_t)n, sizeof(gguf_name_entry), gguf_compare_entries);

    /* Report the duplicate whose second occurrence comes first in the file. */
    for (uint64_t i = 1; i < n; i++) {
        const gguf_name_entry *prev = &index->entries[i - 1];
        const gguf_name_entry *cur = &index->entries[i];
        if (gguf_compare_names(prev->data, prev->len, cur->data, cur->len) == 0 && cur->index < *duplicate) {
            *original = prev->index;
            *duplicate = cur->index;
        }
    }
    return TQ_OK;
}

/* Entry number of the entry called name, or UINT64_MAX when there is none. */
static uint64_t gguf_index_find(const gguf_name_index *index, const char *name, uint64_t len)
{
    uint64_t low = 0;
    uint64_t high = index->count;
    while (low < high) {
        uint64_t mid = low + (high - low) / 2;
        const gguf_name_entry *e = &index->entries[mid];
        int order = gguf_compare_names(e->data, e->len, name, len);
        if (order == 0) {
            return e->index;
        }
        if (order < 0) {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    return UINT64_MAX;
}

/* ---- header sections ---- */

static tq_status gguf_parse_header(gguf_cursor *c, tq_gguf *g, uint64_t *n_tensors, uint64_t *n_kv)
{
    if (c->size < GGUF_MAGIC_SIZE || memcmp(c->base, "GGUF", GGUF_MAGIC_SIZE) != 0) {
        if (c->size < GGUF_MAGIC_SIZE && memcmp(c->base, "GGUF", (size_t)c->size) == 0) {
            return tq_error_set(c->err, TQ_ERR_FORMAT,
                                "%s: the file has only %" PRIu64
                                " bytes, fewer than the 4-byte magic 'GGUF'; the file is truncated",
                                c->path, c->size);
        }
        char shown[GGUF_SHOWN_NAME_CAP];
        gguf_format_name(shown, sizeof(shown), (const char *)c->base, c->size < 4 ? c->size : 4);
        return tq_error_set(c->err, TQ_ERR_FORMAT,
                            "%s: not a GGUF file: it starts with '%s' instead of the magic 'GGUF'", c->path, shown);
    }
    c->pos = GGUF_MAGIC_SIZE;

    uint32_t version = 0;
    tq_status st = gguf_read_u32(c, "version", &version);
    if (st != TQ_OK) {
        return st;
    }
    if (version == 2 || version == 3) {
        g->version = version;
    } else if (version == 1) {
        return tq_error_set(c->err, TQ_ERR_UNSUPPORTED,
                            "%s: GGUF version 1 is not supported (it uses 32-bit counts and lengths); "
                            "convert the file to version 3 with a current llama.cpp",
                            c->path);
    } else if (version != 0 && (version & 0xffffu) == 0) {
        return tq_error_set(c->err, TQ_ERR_UNSUPPORTED,
                            "%s: version field is 0x%08" PRIx32
                            ", so the file is probably a big-endian GGUF; only little-endian files are supported",
                            c->path, version);
    } else if (version == 0) {
        return tq_error_set(c->err, TQ_ERR_FORMAT, "%s: GGUF version 0 is invalid; the file is corrupt", c->path);
    } else {
        return tq_error_set(c->err, TQ_ERR_UNSUPPORTED,
                            "%s: GGUF version %" PRIu32 " is not supported; this reader reads versions 2 and 3",
                            c->path, version);
    }

    st = gguf_read_u64(c, "tensor count", n_tensors);
    if (st == TQ_OK) {
        st = gguf_read_u64(c, "metadata count", n_kv);
    }
    if (st != TQ_OK) {
        return st;
    }

    /* Each bound is at most the bytes left, so the sum of the two products fits in 64 bits. */
    uint64_t left = c->size - c->pos;
    if (*n_kv > left / GGUF_MIN_KV_BYTES || *n_tensors > left / GGUF_MIN_TENSOR_INFO_BYTES ||
        *n_kv * GGUF_MIN_KV_BYTES + *n_tensors * GGUF_MIN_TENSOR_INFO_BYTES > left) {
        return tq_error_set(c->err, TQ_ERR_FORMAT,
                            "%s: header claims %" PRIu64 " tensors and %" PRIu64
                            " metadata entries, which need at least %d and %d bytes each, but only %" PRIu64
                            " bytes follow the header; the file is truncated or corrupt",
                            c->path, *n_tensors, *n_kv, GGUF_MIN_TENSOR_INFO_BYTES, GGUF_MIN_KV_BYTES, left);
    }
    return TQ_OK;
}

/* Report a name that occurs twice. name is the second occurrence; its 8-byte
 * length field precedes it in the file. */
static tq_status gguf_duplicate_error(gguf_cursor *c, const char *what, const tq_gguf_string *name, uint64_t original,
                                      uint64_t duplicate)
{
    gguf_set_entry(c, what, name);
    uint64_t offset = (uint64_t)((const uint8_t *)name->data - c->base) - 8;
    return tq_error_set(c->err, TQ_ERR_FORMAT,
                        "%s: %s at offset %" PRIu64 " (entry %" PRIu64 ") repeats entry %" PRIu64
                        "; names must be unique, so the file is corrupt",
                        c->path, c->entry, offset, duplicate, original);
}

static tq_status gguf_parse_kvs(gguf_cursor *c, tq_gguf *g)
{
    tq_status st = TQ_OK;
    if (g->n_kv > 0) {
        g->kvs = calloc((size_t)g->n_kv, sizeof(tq_gguf_kv));
        if (g->kvs == NULL) {
            return tq_error_set(c->err, TQ_ERR_NOMEM, "%s: out of memory for %" PRIu64 " metadata entries", c->path,
                                g->n_kv);
        }
    }

    for (uint64_t i = 0; i < g->n_kv; i++) {
        tq_gguf_kv *kv = &g->kvs[i];
        snprintf(c->entry, sizeof(c->entry), "metadata entry %" PRIu64, i);
        st = gguf_read_string(c, "key", &kv->key);
        if (st != TQ_OK) {
            return st;
        }
        gguf_set_entry(c, "metadata key", &kv->key);

        uint64_t type_offset = c->pos;
        uint32_t type = 0;
        st = gguf_read_u32(c, "value type", &type);
        if (st != TQ_OK) {
            return st;
        }
        if (!gguf_valid_value_type(type)) {
            return gguf_unknown_value_type(c, type_offset, "value type", type);
        }
        kv->type = (tq_gguf_value_type)type;
        st = gguf_parse_value(c, kv);
        if (st != TQ_OK) {
            return st;
        }
    }

    uint64_t original = 0;
    uint64_t duplicate = 0;
    const tq_gguf_string *first_key = g->n_kv > 0 ? &g->kvs[0].key : NULL;
    st = gguf_index_build(&g->kv_index, first_key, sizeof(tq_gguf_kv), g->n_kv, &original, &duplicate, c->err);
    if (st == TQ_OK && duplicate != UINT64_MAX) {
        st = gguf_duplicate_error(c, "metadata key", &g->kvs[duplicate].key, original, duplicate);
    }
    return st;
}

static tq_status gguf_read_alignment(gguf_cursor *c, tq_gguf *g)
{
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const tq_gguf_kv *kv = tq_gguf_find_kv(g, "general.alignment");
    if (kv == NULL) {
        return TQ_OK;
    }
    if (kv->type != TQ_GGUF_UINT32) {
        return tq_error_set(c->err, TQ_ERR_FORMAT,
                            "%s: general.alignment has type %s, but GGUF requires uint32; the file is corrupt",
                            c->path, tq_gguf_value_type_name((int)kv->type));
    }
    uint64_t alignment = kv->value.u64;
    if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
        return tq_error_set(c->err, TQ_ERR_FORMAT,
                            "%s: general.alignment is %" PRIu64
                            ", but it must be a power of two greater than 0; the file is corrupt",
                            c->path, alignment);
    }
    g->alignment = alignment;
    return TQ_OK;
}

static tq_status gguf_parse_tensor_info(gguf_cursor *c, tq_gguf *g, uint64_t i)
{
    tq_gguf_tensor *t = &g->tensors[i];
    snprintf(c->entry, sizeof(c->entry), "tensor info %" PRIu64, i);
    tq_status st = gguf_read_string(c, "name", &t->name);
    if (st != TQ_OK) {
        return st;
    }
    gguf_set_entry(c, "tensor", &t->name);

    uint64_t dims_offset = c->pos;
    st = gguf_read_u32(c, "n_dims", &t->n_dims);
    if (st != TQ_OK) {
        return st;
    }
    if (t->n_dims < 1 || t->n_dims > 4) {
        return tq_error_set(c->err, TQ_ERR_FORMAT,
                            "%s: %s: n_dims at offset %" PRIu64 " is %" PRIu32
                            ", but it must be 1 to 4; the file is corrupt",
                            c->path, c->entry, dims_offset, t->n_dims);
    }
    for (int d = 0; d < 4; d++) {
        t->ne[d] = 1;
    }
    for (uint32_t d = 0; d < t->n_dims; d++) {
        uint64_t dim_offset = c->pos;
        st = gguf_read_u64(c, "dimension", &t->ne[d]);
        if (st != TQ_OK) {
            return st;
        }
        if (t->ne[d] > (uint64_t)INT64_MAX) {
            return tq_error_set(c->err, TQ_ERR_FORMAT,
                                "%s: %s: dimension %" PRIu32 " at offset %" PRIu64 " is %" PRIu64
                                ", more than the maximum 2^63 - 1; the file is corrupt",
                                c->path, c->entry, d, dim_offset, t->ne[d]);
        }
    }

    uint64_t type_offset = c->pos;
    uint32_t type = 0;
    st = gguf_read_u32(c, "type", &type);
    if (st != TQ_OK) {
        return st;
    }
    if (!gguf_type_known(type)) {
        const char *name = type <= (uint32_t)INT32_MAX ? tq_type_name((int)type) : "unknown";
        return tq_error_set(c->err, TQ_ERR_UNSUPPORTED,
                            "%s: %s: tensor type id %" PRIu32 " (%s) at offset %" PRIu64
                            " is not supported by turboquant; convert the model to a supported type such as "
                            "Q4_K_M or Q8_0",
                            c->path, c->entry, type, name, type_offset);
    }
    t->type = (tq_ggml_type)type;

    return gguf_read_u64(c, "offset", &t->offset);
}

/* Compute nbytes and the data pointer of tensor t and check that its data lies
 * inside the file. Runs after the data section's start is known. */
static tq_status gguf_place_tensor(gguf_cursor *c, tq_gguf *g, tq_gguf_tensor *t)
{
    gguf_set_entry(c, "tensor", &t->name);
    const int64_t block_size = tq_type_block_size((int)t->type);

    /* Both the element count and the row count ne[1] * ne[2] * ne[3] must fit in
     * int64_t, as ggml requires. The rows are multiplied first, so a row count
     * that overflows is caught even when ne[0] is 0. */
    uint64_t n_elements = 1;
    for (int i = 0; i < 4; i++) {
        int d = (i + 1) % 4;
        if (t->ne[d] != 0 && n_elements > (uint64_t)INT64_MAX / t->ne[d]) {
            return tq_error_set(c->err, TQ_ERR_FORMAT,
                                "%s: %s: dimensions [%" PRIu64 ", %" PRIu64 ", %" PRIu64 ", %" PRIu64
                                "] have more than 2^63 - 1 elements in total; the file is corrupt",
                                c->path, c->entry, t->ne[0], t->ne[1], t->ne[2], t->ne[3]);
        }
        n_elements *= t->ne[d];
    }
    if (t->ne[0] % (uint64_t)block_size != 0) {
        return tq_error_set(c->err, TQ_ERR_FORMAT,
                            "%s: %s: ne[0] = %" PRIu64 " is not a multiple of %" PRId64
                            ", the block size of type %s; the file is corrupt",
                            c->path, c->entry, t->ne[0], block_size, tq_type_name((int)t->type));
    }

    /* A row is ne[0] / block_size blocks. The element count fits in int64_t, but
     * with 4 bytes per F32 value the byte count can still exceed 2^64. */
    size_t row_bytes = 0;
    tq_error row_err;
    uint64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    if (tq_type_row_bytes((int)t->type, (int64_t)t->ne[0], &row_bytes, &row_err) != TQ_OK ||
        (rows != 0 && (uint64_t)row_bytes > UINT64_MAX / rows)) {
        return tq_error_set(c->err, TQ_ERR_FORMAT,
                            "%s: %s: %" PRIu64 " elements of type %s need more than 2^64 bytes; the file is corrupt",
                            c->path, c->entry, n_elements, tq_type_name((int)t->type));
    }
    t->nbytes = (uint64_t)row_bytes * rows;

    if (t->offset % g->alignment != 0) {
        return tq_error_set(c->err, TQ_ERR_FORMAT,
                            "%s: %s: data offset %" PRIu64 " is not a multiple of the alignment %" PRIu64
                            "; the file is corrupt",
                            c->path, c->entry, t->offset, g->alignment);
    }
    if (t->offset > g->file_size) {
        return tq_error_set(c->err, TQ_ERR_FORMAT,
                            "%s: %s: data offset %" PRIu64 " is past the end of the %" PRIu64
                            "-byte file; the file is truncated or corrupt",
                            c->path, c->entry, t->offset, g->file_size);
    }
    /* data_offset is at most the file size plus the alignment (< 2^32), so no overflow. */
    uint64_t start = g->data_offset + t->offset;
    if (start > g->file_size || t->nbytes > g->file_size - start) {
        return tq_error_set(c->err, TQ_ERR_FORMAT,
                            "%s: %s: offset %" PRIu64 " + size %" PRIu64 " exceeds the file size %" PRIu64
                            " (the data section starts at %" PRIu64 "); the file is truncated or corrupt",
                            c->path, c->entry, start, t->nbytes, g->file_size, g->data_offset);
    }
    t->data = g->base + start;
    return TQ_OK;
}

static tq_status gguf_parse_tensors(gguf_cursor *c, tq_gguf *g)
{
    tq_status st = TQ_OK;

    /* Recheck the count now that the metadata has consumed its bytes. */
    uint64_t left = c->size - c->pos;
    if (g->n_tensors > left / GGUF_MIN_TENSOR_INFO_BYTES) {
        return tq_error_set(c->err, TQ_ERR_FORMAT,
                            "%s: header claims %" PRIu64 " tensors, which need at least %d bytes each, "
                            "but only %" PRIu64 " bytes follow the metadata at offset %" PRIu64
                            "; the file is truncated or corrupt",
                            c->path, g->n_tensors, GGUF_MIN_TENSOR_INFO_BYTES, left, c->pos);
    }
    if (g->n_tensors > 0) {
        g->tensors = calloc((size_t)g->n_tensors, sizeof(tq_gguf_tensor));
        if (g->tensors == NULL) {
            return tq_error_set(c->err, TQ_ERR_NOMEM, "%s: out of memory for %" PRIu64 " tensor infos", c->path,
                                g->n_tensors);
        }
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        st = gguf_parse_tensor_info(c, g, i);
        if (st != TQ_OK) {
            return st;
        }
    }

    uint64_t original = 0;
    uint64_t duplicate = 0;
    const tq_gguf_string *first_name = g->n_tensors > 0 ? &g->tensors[0].name : NULL;
    st = gguf_index_build(&g->tensor_index, first_name, sizeof(tq_gguf_tensor), g->n_tensors, &original, &duplicate,
                          c->err);
    if (st == TQ_OK && duplicate != UINT64_MAX) {
        st = gguf_duplicate_error(c, "tensor", &g->tensors[duplicate].name, original, duplicate);
    }
    if (st != TQ_OK) {
        return st;
    }

    st = gguf_read_alignment(c, g);
    if (st != TQ_OK) {
        return st;
    }
    /* The data section starts at the first multiple of the alignment at or after
     * the end of the tensor infos. pos <= size < 2^63 on any real file system, but
     * check the rounding anyway. */
    uint64_t rem = c->pos % g->alignment;
    uint64_t pad = rem == 0 ? 0 : g->alignment - rem;
    if (c->pos > UINT64_MAX - pad) {
        return tq_error_set(c->err, TQ_ERR_FORMAT, "%s: data section offset overflows", c->path);
    }
    g->data_offset = c->pos + pad;

    for (uint64_t i = 0; i < g->n_tensors; i++) {
        st = gguf_place_tensor(c, g, &g->tensors[i]);
        if (st != TQ_OK) {
            return st;
        }
    }
    return TQ_OK;
}

/* ---- open and close ---- */

/* Map path read-only. On TQ_ERR_IO, errno is the error code of the failing call. */
static tq_status gguf_map_file(const char *path, const char *shown_path, tq_gguf *g, tq_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int saved = errno;
        tq_error_set(err, TQ_ERR_IO, "cannot open GGUF file %s: %s", shown_path, strerror(saved));
        errno = saved;
        return TQ_ERR_IO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int saved = errno;
        close(fd);
        tq_error_set(err, TQ_ERR_IO, "cannot read the size of GGUF file %s: %s", shown_path, strerror(saved));
        errno = saved;
        return TQ_ERR_IO;
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        tq_error_set(err, TQ_ERR_IO, "%s is a directory; pass the path of a .gguf file", shown_path);
        errno = EISDIR;
        return TQ_ERR_IO;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        tq_error_set(err, TQ_ERR_IO, "%s is not a regular file; pass the path of a .gguf file", shown_path);
        errno = EINVAL;
        return TQ_ERR_IO;
    }
    if (st.st_size == 0) {
        close(fd);
        return tq_error_set(err, TQ_ERR_FORMAT,
                            "%s is empty (0 bytes); a GGUF file starts with the magic 'GGUF' and a header",
                            shown_path);
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return tq_error_set(err, TQ_ERR_UNSUPPORTED, "%s has %lld bytes, more than this process can map",
                            shown_path, (long long)st.st_size);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int saved = errno;
    close(fd);
    if (map == MAP_FAILED) {
        tq_error_set(err, TQ_ERR_IO, "cannot map GGUF file %s: %s", shown_path, strerror(saved));
        errno = saved;
        return TQ_ERR_IO;
    }
    g->base = map;
    g->file_size = (uint64_t)st.st_size;
    g->owns_mapping = 1;
    return TQ_OK;
}

/* Parse the header, metadata and tensor infos of g's bytes. */
static tq_status gguf_parse(gguf_cursor *c, tq_gguf *g)
{
    c->base = g->base;
    c->size = g->file_size;
    snprintf(c->entry, sizeof(c->entry), "header");

    tq_status st = gguf_parse_header(c, g, &g->n_tensors, &g->n_kv);
    if (st == TQ_OK) {
        st = gguf_parse_kvs(c, g);
    }
    if (st == TQ_OK) {
        st = gguf_parse_tensors(c, g);
    }
    return st;
}

tq_status tq_gguf_open(const char *path, tq_gguf **out, tq_error *err)
{
    if (out == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "tq_gguf_open: out must not be NULL");
    }
    *out = NULL;
    if (path == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "tq_gguf_open: path must not be NULL");
    }

    gguf_cursor c;
    memset(&c, 0, sizeof(c));
    c.err = err;
    char shown[GGUF_MAX_SHOWN_PATH * 4 + 8];
    gguf_format_path(shown, sizeof(shown), path);
    snprintf(c.path, sizeof(c.path), "'%s'", shown);

    tq_gguf *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory opening %s", c.path);
    }
    tq_status st = gguf_map_file(path, c.path, g, err);
    if (st != TQ_OK) {
        int saved = errno;
        free(g);
        errno = saved;
        return st;
    }
    st = gguf_parse(&c, g);
    if (st != TQ_OK) {
        tq_gguf_close(g);
        return st;
    }
    *out = g;
    return TQ_OK;
}

tq_status tq_gguf_open_memory(const void *data, size_t size, const char *name, tq_gguf **out, tq_error *err)
{
    if (out == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "tq_gguf_open_memory: out must not be NULL");
    }
    *out = NULL;
    if (data == NULL && size > 0) {
        return tq_error_set(err, TQ_ERR_INVALID, "tq_gguf_open_memory: data is NULL but size is %zu", size);
    }

    gguf_cursor c;
    memset(&c, 0, sizeof(c));
    c.err = err;
    char shown[GGUF_MAX_SHOWN_PATH * 4 + 8];
    gguf_format_path(shown, sizeof(shown), name != NULL ? name : "<buffer>");
    snprintf(c.path, sizeof(c.path), "'%s'", shown);
    if (size == 0) {
        return tq_error_set(err, TQ_ERR_FORMAT,
                            "%s is empty (0 bytes); a GGUF file starts with the magic 'GGUF' and a header", c.path);
    }

    tq_gguf *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory opening %s", c.path);
    }
    g->base = data;
    g->file_size = (uint64_t)size;
    g->owns_mapping = 0;
    tq_status st = gguf_parse(&c, g);
    if (st != TQ_OK) {
        tq_gguf_close(g);
        return st;
    }
    *out = g;
    return TQ_OK;
}

tq_status tq_gguf_open_view(const void *metadata, size_t size, const char *name, const tq_gguf_tensor *tensors,
                            const char *const *origins, uint64_t n_tensors, tq_gguf **out, tq_error *err)
{
    if (out == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "tq_gguf_open_view: out must not be NULL");
    }
    *out = NULL;
    if (n_tensors > 0 && tensors == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "tq_gguf_open_view: tensors is NULL but n_tensors is %" PRIu64,
                            n_tensors);
    }
    tq_gguf *g = NULL;
    tq_status st = tq_gguf_open_memory(metadata, size, name, &g, err);
    if (st != TQ_OK) {
        return st;
    }
    if (g->n_tensors != 0) {
        tq_gguf_close(g);
        return tq_error_set(err, TQ_ERR_INVALID,
                            "tq_gguf_open_view: the metadata of '%s' lists %" PRIu64 " tensors; it must list none",
                            name != NULL ? name : "<buffer>", g->n_tensors);
    }
    if (n_tensors > SIZE_MAX / sizeof(tq_gguf_tensor)) {
        tq_gguf_close(g);
        return tq_error_set(err, TQ_ERR_NOMEM, "tq_gguf_open_view: %" PRIu64 " tensors overflow size_t", n_tensors);
    }
    if (n_tensors > 0) {
        g->tensors = malloc((size_t)n_tensors * sizeof(tq_gguf_tensor));
        if (g->tensors == NULL) {
            tq_gguf_close(g);
            return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for %" PRIu64 " tensor entries", n_tensors);
        }
        memcpy(g->tensors, tensors, (size_t)n_tensors * sizeof(tq_gguf_tensor));
    }
    g->n_tensors = n_tensors;
    g->origins = origins;
    free(g->tensor_index.entries);
    g->tensor_index.entries = NULL;
    uint64_t original = 0;
    uint64_t duplicate = 0;
    const tq_gguf_string *first_name = n_tensors > 0 ? &g->tensors[0].name : NULL;
    st = gguf_index_build(&g->tensor_index, first_name, sizeof(tq_gguf_tensor), n_tensors, &original, &duplicate,
                          err);
    if (st == TQ_OK && duplicate != UINT64_MAX) {
        const tq_gguf_string *dup = &g->tensors[duplicate].name;
        int shown = dup->len < GGUF_MAX_SHOWN_NAME ? (int)dup->len : GGUF_MAX_SHOWN_NAME;
        st = tq_error_set(err, TQ_ERR_INVALID, "tq_gguf_open_view: tensor '%.*s' is listed twice (entries %" PRIu64
                          " and %" PRIu64 ")", shown, dup->data, original, duplicate);
    }
    if (st != TQ_OK) {
        tq_gguf_close(g);
        return st;
    }
    *out = g;
    return TQ_OK;
}

const char *tq_gguf_tensor_origin(const tq_gguf *gguf, const tq_gguf_tensor *tensor)
{
    if (gguf->origins == NULL || tensor < gguf->tensors || tensor >= gguf->tensors + gguf->n_tensors) {
        return NULL;
    }
    return gguf->origins[tensor - gguf->tensors];
}

void tq_gguf_close(tq_gguf *gguf)
{
    if (gguf == NULL) {
        return;
    }
    if (gguf->kvs != NULL) {
        for (uint64_t i = 0; i < gguf->n_kv; i++) {
            if (gguf->kvs[i].type == TQ_GGUF_ARRAY) {
                free((void *)gguf->kvs[i].value.arr.strings);
            }
        }
        free(gguf->kvs);
    }
    free(gguf->tensors);
    free(gguf->kv_index.entries);
    free(gguf->tensor_index.entries);
    if (gguf->owns_mapping && gguf->base != NULL) {
        munmap((void *)gguf->base, (size_t)gguf->file_size);
    }
    free(gguf);
}

/* ---- accessors ---- */

uint32_t tq_gguf_version(const tq_gguf *gguf)
{
    return gguf->version;
}

uint64_t tq_gguf_alignment(const tq_gguf *gguf)
{
    return gguf->alignment;
}

uint64_t tq_gguf_file_size(const tq_gguf *gguf)
{
    return gguf->file_size;
}

uint64_t tq_gguf_data_offset(const tq_gguf *gguf)
{
    return gguf->data_offset;
}

const void *tq_gguf_mapping(const tq_gguf *gguf)
{
    return gguf->base;
}

uint64_t tq_gguf_n_kv(const tq_gguf *gguf)
{
    return gguf->n_kv;
}

const tq_gguf_kv *tq_gguf_kv_at(const tq_gguf *gguf, uint64_t index)
{
    return index < gguf->n_kv ? &gguf->kvs[index] : NULL;
}

const tq_gguf_kv *tq_gguf_find_kv(const tq_gguf *gguf, const char *key)
{
    return key != NULL ? tq_gguf_find_kv_len(gguf, key, strlen(key)) : NULL;
}

const tq_gguf_kv *tq_gguf_find_kv_len(const tq_gguf *gguf, const char *key, size_t len)
{
    if (key == NULL) {
        return NULL;
    }
    uint64_t entry = gguf_index_find(&gguf->kv_index, key, (uint64_t)len);
    return entry != UINT64_MAX ? &gguf->kvs[entry] : NULL;
}

uint64_t tq_gguf_n_tensors(const tq_gguf *gguf)
{
    return gguf->n_tensors;
}

const tq_gguf_tensor *tq_gguf_tensor_at(const tq_gguf *gguf, uint64_t index)
{
    return index < gguf->n_tensors ? &gguf->tensors[index] : NULL;
}

const tq_gguf_tensor *tq_gguf_find_tensor(const tq_gguf *gguf, const char *name)
{
    return name != NULL ? tq_gguf_find_tensor_len(gguf, name, strlen(name)) : NULL;
}

const tq_gguf_tensor *tq_gguf_find_tensor_len(const tq_gguf *gguf, const char *name, size_t len)
{
    if (name == NULL) {
        return NULL;
    }
    uint64_t entry = gguf_index_find(&gguf->tensor_index, name, (uint64_t)len);
    return entry != UINT64_MAX ? &gguf->tensors[entry] : NULL;
}

/* ---- typed getters ---- */

static tq_status gguf_find_typed(const tq_gguf *gguf, const char *key, const char *expected, const tq_gguf_kv **out,
                                 tq_error *err)
{
    *out = tq_gguf_find_kv(gguf, key);
    if (*out == NULL) {
        return tq_error_set(err, TQ_ERR_FORMAT, "GGUF metadata key '%s' is missing; the file must contain %s value",
                            key, expected);
    }
    return TQ_OK;
}

static tq_status gguf_wrong_type(const tq_gguf_kv *kv, const char *key, const char *expected, tq_error *err)
{
    return tq_error_set(err, TQ_ERR_FORMAT, "GGUF metadata key '%s' has type %s, but %s value is expected", key,
                        tq_gguf_value_type_name((int)kv->type), expected);
}

tq_status tq_gguf_get_u32(const tq_gguf *gguf, const char *key, uint32_t *out, tq_error *err)
{
    const tq_gguf_kv *kv = NULL;
    tq_status st = gguf_find_typed(gguf, key, "an integer", &kv, err);
    if (st != TQ_OK) {
        return st;
    }
    switch (kv->type) {
    case TQ_GGUF_UINT8:
    case TQ_GGUF_UINT16:
    case TQ_GGUF_UINT32:
    case TQ_GGUF_UINT64:
        if (kv->value.u64 > UINT32_MAX) {
            return tq_error_set(err, TQ_ERR_FORMAT,
                                "GGUF metadata key '%s' is %" PRIu64 ", which does not fit in uint32", key,
                                kv->value.u64);
        }
        *out = (uint32_t)kv->value.u64;
        return TQ_OK;
    case TQ_GGUF_INT8:
    case TQ_GGUF_INT16:
    case TQ_GGUF_INT32:
    case TQ_GGUF_INT64:
        if (kv->value.i64 < 0 || (uint64_t)kv->value.i64 > UINT32_MAX) {
            return tq_error_set(err, TQ_ERR_FORMAT,
                                "GGUF metadata key '%s' is %" PRId64 ", which does not fit in uint32", key,
                                kv->value.i64);
        }
        *out = (uint32_t)kv->value.i64;
        return TQ_OK;
    default:
        return gguf_wrong_type(kv, key, "an integer", err);
    }
}

tq_status tq_gguf_get_f32(const tq_gguf *gguf, const char *key, float *out, tq_error *err)
{
    const tq_gguf_kv *kv = NULL;
    tq_status st = gguf_find_typed(gguf, key, "a float", &kv, err);
    if (st != TQ_OK) {
        return st;
    }
    if (kv->type != TQ_GGUF_FLOAT32 && kv->type != TQ_GGUF_FLOAT64) {
        return gguf_wrong_type(kv, key, "a float", err);
    }
    double value = kv->value.f64;
    if (isfinite(value) && fabs(value) > FLT_MAX) {
        return tq_error_set(err, TQ_ERR_FORMAT, "GGUF metadata key '%s' is %g, which does not fit in float32", key,
                            value);
    }
    *out = (float)value;
    return TQ_OK;
}

tq_status tq_gguf_get_bool(const tq_gguf *gguf, const char *key, int *out, tq_error *err)
{
    const tq_gguf_kv *kv = NULL;
    tq_status st = gguf_find_typed(gguf, key, "a bool", &kv, err);
    if (st != TQ_OK) {
        return st;
    }
    if (kv->type != TQ_GGUF_BOOL) {
        return gguf_wrong_type(kv, key, "a bool", err);
    }
    *out = kv->value.u64 != 0;
    return TQ_OK;
}

tq_status tq_gguf_get_string(const tq_gguf *gguf, const char *key, tq_gguf_string *out, tq_error *err)
{
    const tq_gguf_kv *kv = NULL;
    tq_status st = gguf_find_typed(gguf, key, "a string", &kv, err);
    if (st != TQ_OK) {
        return st;
    }
    if (kv->type != TQ_GGUF_STRING) {
        return gguf_wrong_type(kv, key, "a string", err);
    }
    *out = kv->value.str;
    return TQ_OK;
}

tq_status tq_gguf_get_array(const tq_gguf *gguf, const char *key, tq_gguf_array *out, tq_error *err)
{
    const tq_gguf_kv *kv = NULL;
    tq_status st = gguf_find_typed(gguf, key, "an array", &kv, err);
    if (st != TQ_OK) {
        return st;
    }
    if (kv->type != TQ_GGUF_ARRAY) {
        return gguf_wrong_type(kv, key, "an array", err);
    }
    *out = kv->value.arr;
    return TQ_OK;
}

/* ---- walking validated arrays ---- */

/* The functions below read bytes that tq_gguf_open() has already bound-checked,
 * so they do no checks of their own. */

static tq_gguf_string gguf_take_string(const uint8_t **cursor)
{
    tq_gguf_string s;
    s.len = gguf_load_le(*cursor, 8);
    s.data = (const char *)(*cursor + 8);
    *cursor += 8 + s.len;
    return s;
}

static const uint8_t *gguf_skip_elements(const uint8_t *p, tq_gguf_value_type type, uint64_t count)
{
    if (type == TQ_GGUF_STRING) {
        for (uint64_t i = 0; i < count; i++) {
            (void)gguf_take_string(&p);
        }
        return p;
    }
    if (type == TQ_GGUF_ARRAY) {
        for (uint64_t i = 0; i < count; i++) {
            tq_gguf_array inner;
            tq_gguf_array_next_inner(&p, &inner);
        }
        return p;
    }
    return p + count * gguf_scalar_size((uint32_t)type);
}

void tq_gguf_array_next_inner(const uint8_t **cursor, tq_gguf_array *inner)
{
    const uint8_t *p = *cursor;
    inner->type = (tq_gguf_value_type)gguf_load_le(p, 4);
    inner->count = gguf_load_le(p + 4, 8);
    inner->data = p + 12;
    inner->strings = NULL;
    *cursor = gguf_skip_elements(inner->data, inner->type, inner->count);
}

tq_gguf_string tq_gguf_array_string(const tq_gguf_array *arr, uint64_t index)
{
    if (arr->strings != NULL) {
        return arr->strings[index];
    }
    const uint8_t *p = arr->data;
    for (uint64_t i = 0; i < index; i++) {
        (void)gguf_take_string(&p);
    }
    return gguf_take_string(&p);
}

tq_gguf_string tq_gguf_array_next_string(const uint8_t **cursor)
{
    return gguf_take_string(cursor);
}
