/* Adaptive QJL residual precision of a context: which positions are written while the model
 * is thinking (tq_qjl_precision in model.h), tracked per position so that truncation and
 * accepted draft paths keep the rule. */
#include <stdlib.h>

#include "model_internal.h"

/* Gemma 4 thinking token ids: <|think|> in the system turn switches thinking on, and the
 * model writes its thoughts between <|channel> and <channel|>. */
#define GEMMA4_THINK_TOKEN 98
#define GEMMA4_CHANNEL_OPEN_TOKEN 100
#define GEMMA4_CHANNEL_CLOSE_TOKEN 101

/* Flags of tq_context.thinking_state. */
enum { THINKING_TOKEN_SEEN = 1, THINKING_IN_CHANNEL = 2 };

/* Positions whose precision tq_context_mark_thinking passes to the cache per call. */
#define THINKING_MARK_BATCH 256

tq_status tq_context_set_qjl_precision(tq_context *context, const tq_qjl_precision *precision, int gemma4,
                                       tq_error *err)
{
    const int n_vocab = context->model->config.n_vocab;
    context->qjl_bits = precision->qjl_bits > 0 ? precision->qjl_bits : 1;
    context->thinking_qjl_bits = precision->thinking_qjl_bits > 0 ? precision->thinking_qjl_bits : 2;
    int64_t think = precision->think_token_id;
    if (think == TQ_THINK_TOKEN_DEFAULT) {
        /* A Gemma 4 file with a smaller vocabulary (a test model) has no think token. */
        think = gemma4 && GEMMA4_THINK_TOKEN < n_vocab ? GEMMA4_THINK_TOKEN : TQ_THINK_TOKEN_NONE;
    }
    if (think >= n_vocab) {
        return tq_error_set(err, TQ_ERR_INVALID, "think_token_id %lld is outside the vocabulary [0, %d)",
                            (long long)think, n_vocab);
    }
    context->think_token_id = (int32_t)think;
    const int channels = gemma4 && GEMMA4_CHANNEL_CLOSE_TOKEN < n_vocab;
    context->channel_open_id = channels ? GEMMA4_CHANNEL_OPEN_TOKEN : -1;
    context->channel_close_id = channels ? GEMMA4_CHANNEL_CLOSE_TOKEN : -1;
    context->thinking_state = calloc((size_t)context->n_ctx, 1);
    if (context->thinking_state == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for the thinking state of %lld positions",
                            (long long)context->n_ctx);
    }
    return TQ_OK;
}

int tq_context_max_qjl_bits(const tq_context *context)
{
    const int can_think = context->think_token_id >= 0 || context->channel_open_id >= 0;
    const int thinking = can_think ? context->thinking_qjl_bits : context->qjl_bits;
    return context->qjl_bits > thinking ? context->qjl_bits : thinking;
}

static uint8_t next_thinking_state(const tq_context *context, uint8_t state, int32_t token)
{
    if (token == context->think_token_id) {
        state |= THINKING_TOKEN_SEEN;
    }
    if (token == context->channel_open_id) {
        state |= THINKING_IN_CHANNEL;
    } else if (token == context->channel_close_id) {
        state &= (uint8_t)~THINKING_IN_CHANNEL;
    }
    return state;
}

tq_status tq_context_mark_thinking(tq_context *context, const int32_t *tokens, const int32_t *parents, int64_t pos0,
                                   int64_t n, tq_error *err)
{
    uint8_t bits[THINKING_MARK_BATCH];
    const uint8_t before = pos0 > 0 ? context->thinking_state[pos0 - 1] : 0;
    for (int64_t start = 0; start < n; start += THINKING_MARK_BATCH) {
        const int64_t count = n - start < THINKING_MARK_BATCH ? n - start : THINKING_MARK_BATCH;
        for (int64_t i = start; i < start + count; i++) {
            /* A tree node follows its parent, which an earlier iteration has marked. */
            uint8_t state = before;
            if (parents != NULL && parents[i] >= 0) {
                state = context->thinking_state[pos0 + parents[i]];
            } else if (parents == NULL && i > 0) {
                state = context->thinking_state[pos0 + i - 1];
            }
            state = next_thinking_state(context, state, tokens[i]);
            context->thinking_state[pos0 + i] = state;
            bits[i - start] = (uint8_t)(state != 0 ? context->thinking_qjl_bits : context->qjl_bits);
        }
        tq_status status = tq_kv_cache_set_qjl_bits(context->cache, pos0 + start, count, bits, err);
        if (status != TQ_OK) {
            return status;
        }
    }
    return TQ_OK;
}

void tq_context_move_thinking(tq_context *context, int64_t src, int64_t dst)
{
    context->thinking_state[dst] = context->thinking_state[src];
}
