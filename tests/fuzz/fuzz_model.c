/* Fuzz target for the path from a GGUF file to a model: tq_model_create reads
 * the configuration from metadata, checks every weight tensor's type and shape
 * against it, builds the tokenizer and allocates the KV cache and buffers.
 *
 * The input is written to an anonymous in-memory file (memfd) and opened by its
 * /proc/self/fd path, because tq_model_create takes a path. When the model is
 * small, one token is evaluated so that the forward pass reads every weight. */
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "model.h"

/* Models with fewer weights than this (in elements per layer) are evaluated; a
 * larger one would slow the fuzzer down without reaching new parsing code. */
#define FUZZ_MAX_EVAL_WEIGHTS ((int64_t)1 << 20)

static int write_memfd(const uint8_t *data, size_t size)
{
    const int fd = memfd_create("fuzz.gguf", MFD_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    size_t done = 0;
    while (done < size) {
        const ssize_t n = write(fd, data + done, size - done);
        if (n <= 0) {
            close(fd);
            return -1;
        }
        done += (size_t)n;
    }
    return fd;
}

static void evaluate_one_token(tq_model *model)
{
    const tq_model_config *c = tq_model_get_config(model);
    const int64_t per_layer = (int64_t)c->hidden * (c->ffn * 3 + (int64_t)c->head_dim * (c->n_heads * 2 + c->n_kv_heads * 2));
    if (per_layer > FUZZ_MAX_EVAL_WEIGHTS || (int64_t)c->n_vocab * c->hidden > FUZZ_MAX_EVAL_WEIGHTS) {
        return;
    }
    const size_t n_vocab = (size_t)c->n_vocab;
    float *logits = malloc(n_vocab * sizeof(float));
    FUZZ_CHECK(logits != NULL, "no memory for %zu logits", n_vocab);
    const int32_t token = c->n_vocab - 1;
    tq_error err;
    tq_error_clear(&err);
    const tq_status st = tq_model_eval(model, &token, 1, TQ_LOGITS_LAST, logits, &err);
    if (st != TQ_OK) {
        fuzz_check_failure(st, &err, "tq_model_eval");
    }
    free(logits);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const int fd = write_memfd(data, size);
    FUZZ_CHECK(fd >= 0, "memfd_create or write failed for %zu bytes", size);
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);

    tq_model_params params;
    memset(&params, 0, sizeof(params));
    params.path = path;
    params.threads = 1;
    params.n_ctx = 8; /* keeps the KV cache small whatever context_length the file states */
    params.n_batch = 4;
    params.type_k = TQ_KV_F16;
    params.type_v = TQ_KV_F16;

    tq_error err;
    tq_error_clear(&err);
    tq_model *model = NULL;
    const tq_status st = tq_model_create(&params, &model, &err);
    if (st != TQ_OK) {
        fuzz_check_failure(st, &err, "tq_model_create");
        FUZZ_CHECK(model == NULL, "a failed create returned a model");
    } else {
        evaluate_one_token(model);
        tq_model_free(model);
    }
    close(fd);
    return 0;
}
