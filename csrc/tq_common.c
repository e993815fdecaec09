#define _POSIX_C_SOURCE 200112L /* posix_memalign, also without _GNU_SOURCE */

#include "tq_common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

tq_status tq_error_set(tq_error *err, tq_status status, const char *fmt, ...)
{
    if (err != NULL) {
        va_list args;
        va_start(args, fmt);
        err->status = status;
        vsnprintf(err->message, sizeof(err->message), fmt, args);
        va_end(args);
    }
    return status;
}

void tq_error_clear(tq_error *err)
{
    if (err != NULL) {
        err->status = TQ_OK;
        err->message[0] = '\0';
    }
}

void *tq_aligned_alloc(size_t size)
{
    if (size == 0) {
        return NULL;
    }
    void *ptr = NULL;
    if (posix_memalign(&ptr, 64, size) != 0) {
        return NULL;
    }
    return ptr;
}

void tq_aligned_free(void *ptr)
{
    free(ptr);
}

int tq_mul_size(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a) {
        return 0;
    }
    *out = a * b;
    return 1;
}

int tq_add_size(size_t a, size_t b, size_t *out)
{
    if (b > SIZE_MAX - a) {
        return 0;
    }
    *out = a + b;
    return 1;
}
