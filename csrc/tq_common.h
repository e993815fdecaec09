/* Shared definitions of the turboquant C core: status codes and the error buffer.
 *
 * Every fallible function returns a tq_status and, on failure, writes a message
 * with context into a caller-owned tq_error. The core never prints and never
 * exits; the Python binding turns (status, message) into an exception.
 */
#ifndef TQ_COMMON_H
#define TQ_COMMON_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    TQ_OK = 0,
    TQ_ERR_INVALID = -1,     /* bad argument value: ValueError */
    TQ_ERR_TYPE = -2,        /* wrong type or dtype: TypeError */
    TQ_ERR_NOMEM = -3,       /* allocation failed: MemoryError */
    TQ_ERR_IO = -4,          /* file missing or unreadable: OSError */
    TQ_ERR_FORMAT = -5,      /* malformed or truncated file: ValueError */
    TQ_ERR_UNSUPPORTED = -6, /* valid but not implemented (tensor type, architecture): NotImplementedError */
    TQ_ERR_RANGE = -7        /* index or length out of range, for example a prompt past the context: IndexError */
} tq_status;

#define TQ_ERROR_MSG_SIZE 512

typedef struct {
    tq_status status;
    char message[TQ_ERROR_MSG_SIZE];
} tq_error;

/* Record status and a printf-style message in err (which may be NULL); returns status. */
tq_status tq_error_set(tq_error *err, tq_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

void tq_error_clear(tq_error *err);

/* Allocate size bytes aligned to 64 bytes (one cache line, and one AVX-512 register).
 * Returns NULL when size is 0 or memory is exhausted. Free with tq_aligned_free. */
void *tq_aligned_alloc(size_t size);
void tq_aligned_free(void *ptr);

/* Overflow-checked size arithmetic; both return 0 on overflow and 1 on success. */
int tq_mul_size(size_t a, size_t b, size_t *out);
int tq_add_size(size_t a, size_t b, size_t *out);

#endif /* TQ_COMMON_H */
