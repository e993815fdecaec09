/* main() for running a harness without libFuzzer, so that any C compiler with
 * AddressSanitizer (gcc included) can replay inputs through it. It calls
 * LLVMFuzzerInitialize when the harness defines it, then runs each file named
 * on the command line once, followed by FUZZ_MUTATIONS mutated copies of it
 * (byte changes, truncations and inserted tokens, from a fixed seed, so runs
 * repeat exactly). tests/test_fuzz_harnesses.py builds it this way.
 *
 * Usage: harness [-m MUTATIONS] FILE...   (MUTATIONS defaults to 0)
 * Exit status 0 when every input passed; a failed check aborts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

/* Inputs larger than this are rejected; the committed seeds are far smaller. */
#define MAX_INPUT_BYTES ((size_t)16 << 20)
/* Room for inserted tokens beyond the seed's size. */
#define MUTATION_SLACK 4096

static uint64_t rng_state = 0x243F6A8885A308D3ull;

static uint32_t next_random(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

/* Tokens that steer mutations towards the parsers' edge cases: JSON and YAML
 * syntax, invalid UTF-8, extreme integers, and GGUF length fields. */
static const char *const TOKENS[] = {"\"", "\\u", "\\ud800", "{", "}", "[", "]", ":", ",", "\xff", "\xc0\xaf",
                                     "18446744073709551615", "-1", "0", "&a", "*a", "!!int", "\n- ", "---\n", ": [",
                                     "null", "1e999", "\t", "__metadata__", "data_offsets", "BF16",
                                     "\xff\xff\xff\xff\xff\xff\xff\xff", "\x00\x00\x00\x00", "\xe2\x96\x81"};

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
            /* Tokens made of zero bytes have their length in the table's spelling. */
            const size_t len = token[0] == '\0' ? 4 : strlen(token);
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

/* Run one input from an exact-size heap copy, so AddressSanitizer catches a
 * read one byte past the end. */
static int run_exact(const uint8_t *data, size_t size)
{
    uint8_t *exact = malloc(size > 0 ? size : 1);
    if (exact == NULL) {
        fprintf(stderr, "out of memory for a %zu-byte input\n", size);
        return 1;
    }
    memcpy(exact, data, size);
    LLVMFuzzerTestOneInput(exact, size);
    free(exact);
    return 0;
}

static uint8_t *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "failed to open input %s\n", path);
        return NULL;
    }
    uint8_t *data = malloc(MAX_INPUT_BYTES + MUTATION_SLACK);
    if (data == NULL) {
        fclose(f);
        fprintf(stderr, "out of memory reading %s\n", path);
        return NULL;
    }
    *size = fread(data, 1, MAX_INPUT_BYTES + 1, f);
    fclose(f);
    if (*size > MAX_INPUT_BYTES) {
        fprintf(stderr, "input %s is larger than %zu bytes\n", path, MAX_INPUT_BYTES);
        free(data);
        return NULL;
    }
    return data;
}

int main(int argc, char **argv)
{
    if (LLVMFuzzerInitialize != NULL) {
        LLVMFuzzerInitialize(&argc, &argv);
    }
    long mutations = 0;
    int first = 1;
    if (argc >= 3 && strcmp(argv[1], "-m") == 0) {
        char *end = NULL;
        mutations = strtol(argv[2], &end, 10);
        if (end == argv[2] || *end != '\0' || mutations < 0) {
            fprintf(stderr, "invalid mutation count '%s': expected an integer >= 0\n", argv[2]);
            return 2;
        }
        first = 3;
    }

    for (int i = first; i < argc; i++) {
        size_t size = 0;
        uint8_t *seed = read_file(argv[i], &size);
        if (seed == NULL) {
            return 1;
        }
        uint8_t *buffer = malloc(size + MUTATION_SLACK);
        if (buffer == NULL || run_exact(seed, size) != 0) {
            free(buffer);
            free(seed);
            return 1;
        }
        for (long round = 0; round < mutations; round++) {
            memcpy(buffer, seed, size);
            const size_t mutated = mutate(buffer, size, size + MUTATION_SLACK);
            if (run_exact(buffer, mutated) != 0) {
                free(buffer);
                free(seed);
                return 1;
            }
        }
        free(buffer);
        free(seed);
    }
    printf("ran %d inputs, %ld mutations each\n", argc - first, mutations);
    return 0;
}
