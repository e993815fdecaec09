/* Draft proposals of Medusa-style heads; see speculative.h. */
#include "speculative.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

/* The top_k largest of n logits, best first, ties to the lower id: one pass that keeps a
 * sorted list, cheap because top_k is small and most logits fail the first comparison. */
static void top_k_ids(const float *logits, int64_t n, int top_k, int32_t *ids, float *values)
{
    int kept = 0;
    for (int64_t i = 0; i < n; i++) {
        const float v = logits[i];
        if (kept == top_k && !(v > values[top_k - 1])) {
            continue;
        }
        int j = kept < top_k ? kept++ : top_k - 1;
        while (j > 0 && v > values[j - 1]) {
            values[j] = values[j - 1];
            ids[j] = ids[j - 1];
            j--;
        }
        values[j] = v;
        ids[j] = (int32_t)i;
    }
}

/* log(sum(exp(logits))) over n values, shifted by the maximum for range. */
static float log_sum_exp(const float *logits, int64_t n, float max)
{
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        sum += exp((double)(logits[i] - max));
    }
    return max + (float)log(sum);
}

tq_status tq_context_heads_topk(tq_context *context, int n_heads, const float *weight, const float *bias,
                                const float *hidden, int top_k, int32_t *ids, float *logprobs, tq_error *err)
{
    const tq_model *model = context->model;
    const tq_model_config *c = &model->config;
    const int d = c->hidden;
    if (n_heads < 1 || top_k < 1 || top_k > TQ_HEADS_MAX_TOP_K || top_k > c->n_vocab) {
        return tq_error_set(err, TQ_ERR_INVALID, "heads_topk needs n_heads >= 1 (got %d) and top_k in 1 .. %d (got %d)",
                            n_heads, TQ_HEADS_MAX_TOP_K, top_k);
    }
    if (context->threads > 0) {
        omp_set_num_threads(context->threads);
    }

    size_t g_count, logits_count;
    if (!tq_mul_size((size_t)n_heads, (size_t)d, &g_count) ||
        !tq_mul_size((size_t)n_heads, (size_t)c->n_vocab, &logits_count)) {
        return tq_error_set(err, TQ_ERR_NOMEM, "%d heads overflow size_t", n_heads);
    }
    float *g = malloc(g_count * sizeof(float));
    float *logits = malloc(logits_count * sizeof(float));
    if (g == NULL || logits == NULL) {
        free(g);
        free(logits);
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for the logits of %d heads", n_heads);
    }

    /* g_k = h + SiLU(W_k h + b_k), one output row per iteration. */
#pragma omp parallel for collapse(2)
    for (int k = 0; k < n_heads; k++) {
        for (int r = 0; r < d; r++) {
            const float *row = weight + ((size_t)k * (size_t)d + (size_t)r) * (size_t)d;
            float z = bias[(size_t)k * (size_t)d + (size_t)r];
            for (int i = 0; i < d; i++) {
                z += row[i] * hidden[i];
            }
            g[(size_t)k * (size_t)d + (size_t)r] = hidden[r] + z / (1.0f + expf(-z));
        }
    }

    tq_status status = model->exact_matmul ? tq_matmul_exact(&model->lm_head, g, logits, n_heads, err)
                                           : tq_matmul(model->isa, &model->lm_head, g, logits, n_heads, err);
    if (status == TQ_OK) {
#pragma omp parallel for
        for (int k = 0; k < n_heads; k++) {
            float *row = logits + (size_t)k * (size_t)c->n_vocab;
            if (c->final_logit_softcap > 0.0f) {
                for (int64_t i = 0; i < c->n_vocab; i++) {
                    row[i] = tanhf(row[i] / c->final_logit_softcap) * c->final_logit_softcap;
                }
            }
            float values[TQ_HEADS_MAX_TOP_K] = {0.0f};
            top_k_ids(row, c->n_vocab, top_k, ids + (size_t)k * (size_t)top_k, values);
            if (logprobs != NULL) {
                const float lse = log_sum_exp(row, c->n_vocab, values[0]);
                for (int j = 0; j < top_k; j++) {
                    logprobs[(size_t)k * (size_t)top_k + (size_t)j] = values[j] - lse;
                }
            }
        }
    }
    free(g);
    free(logits);
    return status;
}
