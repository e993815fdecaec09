/* Draft proposals of Medusa-style heads for tree speculative decoding.
 *
 * Head k reads the output-normed final hidden state h of the last accepted token and
 * predicts the token k + 2 positions ahead (the base LM head predicts the next one):
 *
 *     g_k = h + SiLU(W_k h + b_k)        W_k: [n_embd][n_embd], row = output
 *     logits_k = LM head(g_k)             the model's own LM head, softcapped as the model's
 *
 * The verification of the resulting tree is tq_context_eval_tree (model.h). */
#ifndef TQ_SPECULATIVE_H
#define TQ_SPECULATIVE_H

#include <stdint.h>

#include "model.h"
#include "mtp.h"

/* Largest number of candidates one head may propose. */
#define TQ_HEADS_MAX_TOP_K 64

/* Write the top_k token ids of each of n_heads heads, best first, into ids[head * top_k ..].
 * weight has n_heads * n_embd * n_embd floats, bias n_heads * n_embd and hidden n_embd.
 * vocab (NULL for the whole vocabulary) is the draft vocabulary the candidates come from.
 * logprobs (optional, NULL to skip) gets the ids' log-probabilities under the head's softmax.
 * Ties go to the lower token id. Runs on the context's threads.
 * Errors: TQ_ERR_INVALID (counts), TQ_ERR_NOMEM. */
tq_status tq_context_heads_topk(tq_context *context, int n_heads, const float *weight, const float *bias,
                                const tq_mtp_vocab *vocab, const float *hidden, int top_k, int32_t *ids,
                                float *logprobs, tq_error *err);

#endif /* TQ_SPECULATIVE_H */
