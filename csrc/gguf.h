/* GGUF reader: a memory-mapped file, its metadata and its tensor table.
 *
 * Format (little-endian): magic "GGUF", u32 version (2 or 3), u64 tensor count,
 * u64 metadata count, then the metadata entries, the tensor infos, padding to
 * general.alignment (default 32), and the tensor data. Every count, length and
 * offset read from the file is checked against the file size before use.
 *
 * Ownership: tq_gguf_open() returns an object that owns the mapping; every
 * pointer obtained from it (strings, arrays, tensor data) stays valid until
 * tq_gguf_close(). The object is read-only after opening and may be shared
 * between threads.
 *
 * NOTE: the checks hold for the file as it was when opened. If another process
 * truncates the file while it is mapped, touching the lost pages raises SIGBUS.
 */
#ifndef TQ_GGUF_H
#define TQ_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "tq_common.h"
#include "weights.h"

typedef enum {
    TQ_GGUF_UINT8 = 0,
    TQ_GGUF_INT8 = 1,
    TQ_GGUF_UINT16 = 2,
    TQ_GGUF_INT16 = 3,
    TQ_GGUF_UINT32 = 4,
    TQ_GGUF_INT32 = 5,
    TQ_GGUF_FLOAT32 = 6,
    TQ_GGUF_BOOL = 7,
    TQ_GGUF_STRING = 8,
    TQ_GGUF_ARRAY = 9,
    TQ_GGUF_UINT64 = 10,
    TQ_GGUF_INT64 = 11,
    TQ_GGUF_FLOAT64 = 12
} tq_gguf_value_type;

/* A string inside the mapping: not NUL-terminated. */
typedef struct {
    const char *data;
    uint64_t len;
} tq_gguf_string;

/* An array value. For scalar element types, data points at count packed
 * little-endian elements. For TQ_GGUF_STRING elements use tq_gguf_array_string().
 * For an array of arrays, data points at the first inner array, and
 * tq_gguf_array_next_inner() walks them. */
typedef struct {
    tq_gguf_value_type type;
    uint64_t count;
    const uint8_t *data;
    const tq_gguf_string *strings; /* count entries when type == TQ_GGUF_STRING, else NULL */
} tq_gguf_array;

typedef struct {
    tq_gguf_string key;
    tq_gguf_value_type type;
    union {
        uint64_t u64; /* every unsigned integer type and bool, widened */
        int64_t i64;  /* every signed integer type, widened */
        double f64;   /* float32 and float64, widened */
        tq_gguf_string str;
        tq_gguf_array arr;
    } value;
} tq_gguf_kv;

typedef struct {
    tq_gguf_string name;
    uint32_t n_dims;
    uint64_t ne[4];       /* ne[0] is the contiguous dimension; unused dimensions are 1 */
    tq_ggml_type type;
    uint64_t offset;      /* relative to the start of the data section */
    uint64_t nbytes;      /* checked: offset + nbytes lies inside the file */
    const void *data;     /* pointer into the mapping */
} tq_gguf_tensor;

typedef struct tq_gguf tq_gguf;

/* Maximum nesting of metadata arrays: a metadata value that is an array of
 * arrays of numbers has depth 2. Deeper nesting is rejected as corrupt. */
#define TQ_GGUF_MAX_ARRAY_DEPTH 8

/* Map and parse path. Errors: TQ_ERR_IO (missing or unreadable), TQ_ERR_FORMAT
 * (bad magic, truncated, any size or offset out of bounds), TQ_ERR_UNSUPPORTED
 * (version or tensor type this reader does not know). */
tq_status tq_gguf_open(const char *path, tq_gguf **out, tq_error *err);

/* Parse size bytes at data, with the same checks and errors as tq_gguf_open(),
 * without copying them. The caller keeps data valid and unchanged until
 * tq_gguf_close(), because the accessors read it and trust what was checked.
 * name (NULL for "<buffer>") replaces the path in error messages. */
tq_status tq_gguf_open_memory(const void *data, size_t size, const char *name, tq_gguf **out, tq_error *err);
/* Build a tq_gguf whose metadata is parsed from size bytes at metadata (a GGUF file
 * that lists no tensors) and whose tensor table is tensors[0..n_tensors), for weights
 * that live elsewhere, such as safetensors files. The table is copied; the metadata
 * bytes, tensor names and data, and origins are borrowed and must outlive the object.
 * origins (may be NULL) gives for each tensor a description of where it comes from
 * ("model.layers.0.mlp.up_proj.weight in model.safetensors"), returned by
 * tq_gguf_tensor_origin. Errors as tq_gguf_open_memory, and TQ_ERR_INVALID when the
 * metadata lists tensors or a name occurs twice. */
tq_status tq_gguf_open_view(const void *metadata, size_t size, const char *name, const tq_gguf_tensor *tensors,
                            const char *const *origins, uint64_t n_tensors, tq_gguf **out, tq_error *err);

/* The origin of a tensor of a tq_gguf_open_view object; NULL for a GGUF file. */
const char *tq_gguf_tensor_origin(const tq_gguf *gguf, const tq_gguf_tensor *tensor);

/* After tq_gguf_open() fails with TQ_ERR_IO, errno is the error code of the failing
 * system call (ENOENT, EACCES, ...), or EISDIR for a directory and EINVAL for
 * another non-regular file. */
void tq_gguf_close(tq_gguf *gguf);

uint32_t tq_gguf_version(const tq_gguf *gguf);
uint64_t tq_gguf_alignment(const tq_gguf *gguf);
uint64_t tq_gguf_file_size(const tq_gguf *gguf);
/* Absolute file offset of the data section (a multiple of the alignment). It lies
 * past the end of a file that lists no tensors and omits the padding. */
uint64_t tq_gguf_data_offset(const tq_gguf *gguf);
/* Start of the read-only mapping: tq_gguf_file_size() bytes. */
const void *tq_gguf_mapping(const tq_gguf *gguf);

/* Name of a metadata value type ("uint32", "string", "array"); "unknown" outside 0..12. */
const char *tq_gguf_value_type_name(int type);

uint64_t tq_gguf_n_kv(const tq_gguf *gguf);
const tq_gguf_kv *tq_gguf_kv_at(const tq_gguf *gguf, uint64_t index);
/* NULL when key is absent. */
const tq_gguf_kv *tq_gguf_find_kv(const tq_gguf *gguf, const char *key);
/* The same for a key of len bytes that need not end in NUL and may contain NUL bytes. */
const tq_gguf_kv *tq_gguf_find_kv_len(const tq_gguf *gguf, const char *key, size_t len);

/* Typed getters. A missing key, a value of the wrong type or a value out of range
 * fails with TQ_ERR_FORMAT and a message that names the key. Integer getters
 * accept any integer type whose value fits. tq_gguf_get_f32() accepts float32 and
 * float64 values inside the float32 range. */
tq_status tq_gguf_get_u32(const tq_gguf *gguf, const char *key, uint32_t *out, tq_error *err);
tq_status tq_gguf_get_f32(const tq_gguf *gguf, const char *key, float *out, tq_error *err);
tq_status tq_gguf_get_bool(const tq_gguf *gguf, const char *key, int *out, tq_error *err);
tq_status tq_gguf_get_string(const tq_gguf *gguf, const char *key, tq_gguf_string *out, tq_error *err);
tq_status tq_gguf_get_array(const tq_gguf *gguf, const char *key, tq_gguf_array *out, tq_error *err);

/* The functions below walk array values of an open tq_gguf. They trust the bytes
 * because tq_gguf_open() has bound-checked every element, so arr must come from
 * this reader and index must be below arr->count. */

/* Return element index of a string array. It takes O(1) for a metadata value,
 * whose strings table is filled, and O(index) for an inner array of a nested array. */
tq_gguf_string tq_gguf_array_string(const tq_gguf_array *arr, uint64_t index);

/* Decode the inner array at *cursor of an array of arrays and advance *cursor past
 * it. Start with *cursor = outer->data and call it outer->count times. The inner
 * array has strings == NULL; read its strings with tq_gguf_array_next_string(),
 * starting at inner->data. */
void tq_gguf_array_next_inner(const uint8_t **cursor, tq_gguf_array *inner);

/* Decode the string at *cursor inside a string array and advance *cursor past it. */
tq_gguf_string tq_gguf_array_next_string(const uint8_t **cursor);

uint64_t tq_gguf_n_tensors(const tq_gguf *gguf);
const tq_gguf_tensor *tq_gguf_tensor_at(const tq_gguf *gguf, uint64_t index);
/* NULL when no tensor has that name. */
const tq_gguf_tensor *tq_gguf_find_tensor(const tq_gguf *gguf, const char *name);
/* The same for a name of len bytes that need not end in NUL and may contain NUL bytes. */
const tq_gguf_tensor *tq_gguf_find_tensor_len(const tq_gguf *gguf, const char *name, size_t len);

#endif /* TQ_GGUF_H */
