/* Fuzz target for the two parsers of untrusted files: tq_config_parse_memory
 * (YAML) and tq_safetensors_open_memory (binary header plus JSON).
 *
 * With libFuzzer: clang -fsanitize=fuzzer,address,undefined and link the core.
 * Without it (-DTQ_FUZZ_MAIN), main() reads each seed file named on the command
 * line and parses it, then FUZZ_ROUNDS mutations of it (byte flips, insertions,
 * truncations, from a fixed seed). tests/test_safetensors.py builds it that way
 * with AddressSanitizer and UndefinedBehaviorSanitizer. Exits 0 when no parser
 * crashed or broke an invariant, and 1 with a message otherwise. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "safetensors.h"

static int check_safetensors(const uint8_t *data, size_t size)
{
    tq_error err;
    tq_error_clear(&err);
    tq_safetensors *file = NULL;
    if (tq_safetensors_open_memory(data, size, &file, &err) != TQ_OK) {
        return err.message[0] != '\0' ? 0 : -1; /* a rejection must explain itself */
    }
    /* Every tensor lies inside the input and is found by its name. */
    for (size_t i = 0; i < tq_safetensors_count(file); i++) {
        const tq_safetensors_tensor *t = tq_safetensors_tensor_at(file, i);
        const uint8_t *start = t->data;
        if (start < data || (size_t)(start - data) > size || t->nbytes > size - (size_t)(start - data) ||
            tq_safetensors_find(file, t->name) != t) {
            tq_safetensors_close(file);
            return -1;
        }
    }
    tq_safetensors_close(file);
    return 0;
}

static int check_config(const uint8_t *data, size_t size)
{
    tq_error err;
    tq_error_clear(&err);
    tq_config_error_location where;
    tq_config *cfg = malloc(sizeof(*cfg));
    if (cfg == NULL) {
        return 0;
    }
    int result = 0;
    if (tq_config_parse_memory((const char *)data, size, "fuzz", cfg, &where, &err) != TQ_OK) {
        result = err.message[0] != '\0' ? 0 : -1;
    }
    free(cfg);
    return result;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (check_safetensors(data, size) != 0 || check_config(data, size) != 0) {
        fprintf(stderr, "invariant broken on a %zu-byte input\n", size);
        abort();
    }
    return 0;
}

#ifdef TQ_FUZZ_MAIN

#define FUZZ_ROUNDS 3000

static uint64_t rng_state = 0x243F6A8885A308D3ull;

static uint32_t next_random(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

/* Tokens that steer mutations towards the parsers' interesting branches. */
static const char *const TOKENS[] = {"\"", "\\u", "\\ud800", "{", "}", "[", "]", ":", ",", "\xff", "\xc0\xaf",
                                     "18446744073709551615", "-1", "0", "&a", "*a", "!!int", "\n- ", "---\n", ": [",
                                     "null", "1e999", "\t", "__metadata__", "data_offsets", "BF16"};

static size_t mutate(uint8_t *buffer, size_t size, size_t capacity)
{
    const int edits = 1 + (int)(next_random() % 4);
    for (int e = 0; e < edits; e++) {
        const uint32_t kind = next_random() % 4;
        if (kind == 0 && size > 0) {
            buffer[next_random() % size] = (uint8_t)next_random();
        } else if (kind == 1 && size > 0) {
            size = next_random() % size;
        } else {
            const char *token = TOKENS[next_random() % (sizeof(TOKENS) / sizeof(TOKENS[0]))];
            const size_t len = strlen(token);
            if (size + len > capacity) {
                continue;
            }
            const size_t at = size > 0 ? next_random() % (size + 1) : 0;
            memmove(buffer + at + len, buffer + at, size - at);
            memcpy(buffer + at, token, len);
            size += len;
        }
    }
    return size;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (f == NULL) {
            fprintf(stderr, "cannot open seed %s\n", argv[i]);
            return 1;
        }
        uint8_t seed[1 << 16];
        const size_t seed_size = fread(seed, 1, sizeof(seed), f);
        fclose(f);

        const size_t capacity = seed_size + 4096;
        uint8_t *buffer = malloc(capacity);
        if (buffer == NULL) {
            return 1;
        }
        LLVMFuzzerTestOneInput(seed, seed_size);
        for (int round = 0; round < FUZZ_ROUNDS; round++) {
            memcpy(buffer, seed, seed_size);
            const size_t size = mutate(buffer, seed_size, capacity);
            /* An exact-size heap copy lets AddressSanitizer catch reads one past the end. */
            uint8_t *exact = malloc(size > 0 ? size : 1);
            if (exact == NULL) {
                free(buffer);
                return 1;
            }
            memcpy(exact, buffer, size);
            LLVMFuzzerTestOneInput(exact, size);
            free(exact);
        }
        free(buffer);
    }
    printf("fuzzed %d seeds, %d mutations each\n", argc - 1, FUZZ_ROUNDS);
    return 0;
}

#endif /* TQ_FUZZ_MAIN */
