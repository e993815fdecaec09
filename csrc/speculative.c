/* Draft proposals of Medusa-style heads; see speculative.h. */
#include "speculative.h"

#include <omp.h>

#include "model_internal.h"
#include "mtp.h"

tq_status tq_context_heads_topk(tq_context *context, int n_heads, const float *weight, const float *bias,
                                const tq_mtp_vocab *vocab, const float *hidden, int top_k, int32_t *ids,
                                float *logprobs, tq_error *err)
{
    const tq_model *model = context->model;
    if (top_k < 1 || top_k > TQ_HEADS_MAX_TOP_K) {
        return tq_error_set(err, TQ_ERR_INVALID, "heads_topk needs top_k in 1 .. %d, got %d", TQ_HEADS_MAX_TOP_K,
                            top_k);
    }
    /* Affects only the parallel regions started by this thread. */
    if (context->threads > 0) {
        omp_set_num_threads(context->threads);
    }
    const tq_mtp_heads heads = {
        .n_heads = n_heads, .hidden = model->config.hidden, .weight = weight, .bias = bias, .vocab = vocab};
    return tq_mtp_top_k(model, &heads, hidden, top_k, ids, logprobs, err);
}
