/* Helpers shared by the libFuzzer harnesses in this directory.
 *
 * Each harness defines LLVMFuzzerTestOneInput and calls abort() through
 * FUZZ_CHECK when the core breaks a contract that the sanitizers cannot see,
 * such as a failure without a message. libFuzzer then saves the input as a crash.
 */
#ifndef TQ_FUZZ_COMMON_H
#define TQ_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "tq_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(condition, ...)                                                   \
    do {                                                                             \
        if (!(condition)) {                                                          \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #condition); \
            fprintf(stderr, __VA_ARGS__);                                            \
            fputc('\n', stderr);                                                     \
            abort();                                                                 \
        }                                                                            \
    } while (0)

/* A failing call must set err to its own status and explain itself. */
static inline void fuzz_check_failure(tq_status status, const tq_error *err, const char *call)
{
    FUZZ_CHECK(status != TQ_OK, "%s", call);
    FUZZ_CHECK(err->message[0] != '\0', "%s failed with status %d and an empty message", call, (int)status);
}

#endif /* TQ_FUZZ_COMMON_H */
