/* Token sampler: repetition penalties, top-k, top-p, min-p, temperature, seeded draw.
 *
 * The filters run in the order of llama.cpp's default sampler chain (the `samplers` list
 * in common/common.h, without the DRY, typical-p and XTC stages that this sampler lacks):
 * penalties, top-k, top-p, min-p, temperature, then one draw from what remains.
 *
 *   penalties    for each token that occurs c > 0 times in the last penalty_last_n
 *                history tokens: logit /= repetition_penalty when logit > 0, else
 *                logit *= repetition_penalty; then
 *                logit -= c * frequency_penalty + presence_penalty.
 *   top-k        keep the k tokens with the largest logits (k = 0 keeps all).
 *   top-p        softmax over the kept tokens, sort by probability, keep the shortest
 *                prefix whose probability mass reaches top_p (top_p = 1 keeps all).
 *   min-p        keep tokens with probability >= min_p * (largest probability), that is
 *                logit >= max_logit + log(min_p) (min_p = 0 keeps all).
 *   temperature  divide the kept logits by temperature, softmax, draw one token.
 *
 * Because temperature comes last, top-p and min-p see the distribution at temperature 1,
 * as in llama.cpp. Temperature 0 means greedy: the token with the largest logit after the
 * penalties, and top-k, top-p and min-p are skipped (they always keep that token).
 * Ties between equal logits are broken by the lower token id, in every filter.
 *
 * Ownership: tq_sampler_create copies the parameters; the sampler owns its work buffers
 * and its random state. A sampler must not be used by two threads at the same time.
 */
#ifndef TQ_SAMPLER_H
#define TQ_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "tq_common.h"

typedef struct {
    float temperature;        /* 0 = greedy; must be >= 0 */
    int32_t top_k;            /* 0 = off; must be >= 0 */
    float top_p;              /* in (0, 1]; 1 = off */
    float min_p;              /* in [0, 1]; 0 = off */
    float repetition_penalty; /* > 0; 1 = off */
    float presence_penalty;   /* subtracted once from the logit of every token in the window */
    float frequency_penalty;  /* subtracted once per occurrence in the window */
    int32_t penalty_last_n;   /* history window for the penalties: 0 = off, -1 = whole history */
    uint64_t seed;
} tq_sampler_params;

typedef struct tq_sampler tq_sampler;

/* Fill params with the defaults: greedy, every filter and penalty off, window 64, seed 0. */
void tq_sampler_params_default(tq_sampler_params *params);

/* Check every parameter; TQ_ERR_INVALID with a message that names the first bad one. */
tq_status tq_sampler_params_check(const tq_sampler_params *params, tq_error *err);

tq_status tq_sampler_create(const tq_sampler_params *params, tq_sampler **out, tq_error *err);
void tq_sampler_free(tq_sampler *sampler);

/* Restart the random stream as if the sampler had just been created with this seed. */
void tq_sampler_reseed(tq_sampler *sampler, uint64_t seed);

/* Draw one token from n_vocab logits. history contains the n_history tokens seen so far
 * (prompt and output, oldest first), and the penalties read its last penalty_last_n entries.
 * Fails with TQ_ERR_INVALID when a logit is NaN or +infinity, when every logit is
 * -infinity, or when a token in the penalty window lies outside [0, n_vocab). */
tq_status tq_sampler_sample(tq_sampler *sampler, const float *logits, int32_t n_vocab, const int32_t *history,
                            size_t n_history, int32_t *token, tq_error *err);

/* Write the distribution that tq_sampler_sample draws from into probs (n_vocab values,
 * 0 for filtered tokens, summing to 1), without consuming random numbers. Greedy gives a
 * one-hot vector. Same errors as tq_sampler_sample. */
tq_status tq_sampler_probs(tq_sampler *sampler, const float *logits, int32_t n_vocab, const int32_t *history,
                           size_t n_history, double *probs, tq_error *err);

#endif /* TQ_SAMPLER_H */
