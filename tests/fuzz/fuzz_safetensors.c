/* Fuzz target for the safetensors parser (csrc/safetensors.c): the 8-byte header
 * length, the JSON header and the tensor table, parsed in place by
 * tq_safetensors_open_memory. On success every tensor must lie inside the
 * input, be found by its name, and have the byte length its dtype and shape give. */
#include <string.h>

#include "fuzz_common.h"
#include "safetensors.h"

static volatile uint8_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tq_error err;
    tq_error_clear(&err);
    tq_safetensors *file = NULL;
    const tq_status st = tq_safetensors_open_memory(data, size, &file, &err);
    if (st != TQ_OK) {
        fuzz_check_failure(st, &err, "tq_safetensors_open_memory");
        FUZZ_CHECK(file == NULL, "a failed open returned an object");
        return 0;
    }

    for (size_t i = 0; i < tq_safetensors_count(file); i++) {
        const tq_safetensors_tensor *t = tq_safetensors_tensor_at(file, i);
        const uint8_t *start = t->data;
        FUZZ_CHECK(start >= data && (size_t)(start - data) <= size && t->nbytes <= size - (size_t)(start - data),
                   "tensor %zu (%s) lies outside the input", i, t->name);
        FUZZ_CHECK(tq_safetensors_find(file, t->name) == t, "tensor %zu (%s) not found by name", i, t->name);
        FUZZ_CHECK(t->n_dims >= 0 && t->n_dims <= TQ_SAFETENSORS_MAX_DIMS, "tensor %zu has %d dimensions", i,
                   t->n_dims);
        if (t->nbytes > 0) {
            sink ^= start[0];
            sink ^= start[t->nbytes - 1];
        }
        sink ^= (uint8_t)strlen(t->name);
        if (i > 0) {
            FUZZ_CHECK(strcmp(tq_safetensors_tensor_at(file, i - 1)->name, t->name) < 0,
                       "tensors %zu and %zu are not sorted by name", i - 1, i);
        }
    }
    tq_safetensors_close(file);
    return 0;
}
