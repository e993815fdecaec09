/* safetensors reader: a memory-mapped file, its JSON header and its tensor table.
 *
 * Format (Hugging Face safetensors): u64 little-endian header length N, then N
 * bytes of UTF-8 JSON (possibly padded with trailing spaces), then the data
 * buffer. The JSON is one object: each key is a tensor name mapping to
 * {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]} with offsets
 * relative to the data buffer, plus an optional "__metadata__" object of
 * string values. The reader accepts only files where the tensors cover the
 * data buffer exactly, without overlaps or gaps, and where each tensor's byte
 * length equals its element count times its dtype size. The JSON parser is
 * strict (RFC 8259, valid UTF-8, no duplicate keys, no unknown fields).
 *
 * Ownership: tq_safetensors_open() maps the file and the object owns the
 * mapping; tq_safetensors_open_memory() borrows the caller's bytes, which must
 * outlive the object. Names, metadata strings and tensor data pointers stay
 * valid until tq_safetensors_close(). The object is read-only after opening
 * and may be shared between threads.
 *
 * NOTE: tensor data starts at 8 + N + begin bytes into the file, so a pointer is
 * aligned to its element size only when the writer padded the header (the
 * safetensors package pads N to a multiple of 8).
 */
#ifndef TQ_SAFETENSORS_H
#define TQ_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "tq_common.h"

/* The reference implementation's limit on the header, 100 MB. */
#define TQ_SAFETENSORS_MAX_HEADER ((uint64_t)100000000)
#define TQ_SAFETENSORS_MAX_DIMS 8

typedef enum {
    TQ_ST_BOOL,
    TQ_ST_U8,
    TQ_ST_I8,
    TQ_ST_F8_E5M2,
    TQ_ST_F8_E4M3,
    TQ_ST_I16,
    TQ_ST_U16,
    TQ_ST_F16,
    TQ_ST_BF16,
    TQ_ST_I32,
    TQ_ST_U32,
    TQ_ST_F32,
    TQ_ST_F64,
    TQ_ST_I64,
    TQ_ST_U64,
    TQ_ST_DTYPE_COUNT
} tq_safetensors_dtype;

typedef struct {
    const char *name; /* NUL-terminated UTF-8, JSON escapes decoded */
    tq_safetensors_dtype dtype;
    int n_dims;       /* 0 for a scalar */
    uint64_t shape[TQ_SAFETENSORS_MAX_DIMS];
    uint64_t offset;  /* bytes from the start of the data buffer */
    uint64_t nbytes;  /* element count times dtype size */
    const void *data; /* offset bytes into the data buffer */
} tq_safetensors_tensor;

typedef struct tq_safetensors tq_safetensors;

/* Map and parse the file at path. TQ_ERR_IO when it cannot be opened or mapped,
 * TQ_ERR_FORMAT (with the reason) when it is not a valid safetensors file. */
tq_status tq_safetensors_open(const char *path, tq_safetensors **out, tq_error *err);

/* Parse size bytes at data, without copying them. Errors as tq_safetensors_open. */
tq_status tq_safetensors_open_memory(const void *data, size_t size, tq_safetensors **out, tq_error *err);

void tq_safetensors_close(tq_safetensors *file);

/* Tensors, sorted by name. */
size_t tq_safetensors_count(const tq_safetensors *file);
const tq_safetensors_tensor *tq_safetensors_tensor_at(const tq_safetensors *file, size_t index);

/* The tensor called name, or NULL. */
const tq_safetensors_tensor *tq_safetensors_find(const tq_safetensors *file, const char *name);

/* "__metadata__" entries, in file order. */
size_t tq_safetensors_metadata_count(const tq_safetensors *file);
const char *tq_safetensors_metadata_key(const tq_safetensors *file, size_t index);
const char *tq_safetensors_metadata_value(const tq_safetensors *file, size_t index);

/* Byte offset of the data buffer from the start of the file (8 + header length),
 * and the whole file or memory block. */
uint64_t tq_safetensors_data_start(const tq_safetensors *file);
const void *tq_safetensors_bytes(const tq_safetensors *file, size_t *size);

/* The safetensors spelling ("F32", "BF16", ...) and element size in bytes of a
 * dtype; NULL and 0 out of range. */
const char *tq_safetensors_dtype_name(tq_safetensors_dtype dtype);
size_t tq_safetensors_dtype_size(tq_safetensors_dtype dtype);

#endif /* TQ_SAFETENSORS_H */
