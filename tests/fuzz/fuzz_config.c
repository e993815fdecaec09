/* Fuzz target for the YAML configuration parser (csrc/config.c, with libyaml):
 * tq_config_parse_memory on arbitrary bytes, which need not be NUL-terminated.
 * A rejection must come with a message and a location inside the text. */
#include <string.h>

#include "config.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* tq_config is large (paths and lists), so it lives on the heap. */
    tq_config *cfg = malloc(sizeof(*cfg));
    FUZZ_CHECK(cfg != NULL, "no memory for a tq_config of %zu bytes", sizeof(*cfg));
    tq_config_error_location where;
    memset(&where, 0, sizeof(where));
    tq_error err;
    tq_error_clear(&err);

    const tq_status st = tq_config_parse_memory((const char *)data, size, "fuzz.yaml", cfg, &where, &err);
    if (st != TQ_OK) {
        fuzz_check_failure(st, &err, "tq_config_parse_memory");
        FUZZ_CHECK(memchr(where.key, '\0', sizeof(where.key)) != NULL, "error key is not NUL-terminated");
        FUZZ_CHECK(where.line >= 0 && where.column >= 0, "error location %d:%d", where.line, where.column);
    }
    free(cfg);
    return 0;
}
