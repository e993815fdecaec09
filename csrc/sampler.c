#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

/* Top-p without top-k sorts only the tokens it may keep: a histogram of probability mass
 * over the logit gap (max_logit - logit) finds the gap that covers top_p of the mass.
 * Buckets are TQ_TOP_P_GAP_SPAN / TQ_TOP_P_BUCKETS = 1/16 logit wide; larger gaps share
 * one tail bucket. */
#define TQ_TOP_P_BUCKETS 1024
#define TQ_TOP_P_GAP_SPAN 64.0

typedef struct {
    float logit;
    int32_t id;
} tq_candidate;

struct tq_sampler {
    tq_sampler_params params;
    tq_rng rng;

    /* Work buffers, sized for `capacity` tokens and grown when a larger vocabulary arrives. */
    int32_t capacity;
    float *logits;            /* logits after the penalties */
    tq_candidate *candidates; /* kept tokens, best first once sorted */
    double *weights;          /* their final probabilities */

    int32_t *window;          /* sorted copy of the penalty window */
    size_t window_capacity;
};

void tq_sampler_params_default(tq_sampler_params *params)
{
    params->temperature = 0.0f;
    params->top_k = 0;
    params->top_p = 1.0f;
    params->min_p = 0.0f;
    params->repetition_penalty = 1.0f;
    params->presence_penalty = 0.0f;
    params->frequency_penalty = 0.0f;
    params->penalty_last_n = 64;
    params->seed = 0;
}

tq_status tq_sampler_params_check(const tq_sampler_params *p, tq_error *err)
{
    /* Each test is written so that NaN fails it. */
    if (!(p->temperature >= 0.0f) || isinf(p->temperature)) {
        return tq_error_set(err, TQ_ERR_INVALID, "temperature must be a finite number >= 0 (0 = greedy), got %g",
                            (double)p->temperature);
    }
    if (p->top_k < 0) {
        return tq_error_set(err, TQ_ERR_INVALID, "top_k must be >= 0 (0 = off), got %d", (int)p->top_k);
    }
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f)) {
        return tq_error_set(err, TQ_ERR_INVALID, "top_p must be in (0, 1] (1 = off), got %g", (double)p->top_p);
    }
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f)) {
        return tq_error_set(err, TQ_ERR_INVALID, "min_p must be in [0, 1] (0 = off), got %g", (double)p->min_p);
    }
    if (!(p->repetition_penalty > 0.0f) || isinf(p->repetition_penalty)) {
        return tq_error_set(err, TQ_ERR_INVALID, "repetition_penalty must be a finite number > 0 (1 = off), got %g",
                            (double)p->repetition_penalty);
    }
    if (!isfinite(p->presence_penalty)) {
        return tq_error_set(err, TQ_ERR_INVALID, "presence_penalty must be finite (0 = off), got %g",
                            (double)p->presence_penalty);
    }
    if (!isfinite(p->frequency_penalty)) {
        return tq_error_set(err, TQ_ERR_INVALID, "frequency_penalty must be finite (0 = off), got %g",
                            (double)p->frequency_penalty);
    }
    if (p->penalty_last_n < -1) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "penalty_last_n must be >= -1 (0 = no penalties, -1 = whole history), got %d",
                            (int)p->penalty_last_n);
    }
    return TQ_OK;
}

tq_status tq_sampler_create(const tq_sampler_params *params, tq_sampler **out, tq_error *err)
{
    *out = NULL;
    tq_status status = tq_sampler_params_check(params, err);
    if (status != TQ_OK) {
        return status;
    }
    tq_sampler *sampler = calloc(1, sizeof(*sampler));
    if (sampler == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating a sampler");
    }
    sampler->params = *params;
    tq_rng_seed(&sampler->rng, params->seed);
    *out = sampler;
    return TQ_OK;
}

void tq_sampler_free(tq_sampler *sampler)
{
    if (sampler == NULL) {
        return;
    }
    free(sampler->logits);
    free(sampler->candidates);
    free(sampler->weights);
    free(sampler->window);
    free(sampler);
}

void tq_sampler_reseed(tq_sampler *sampler, uint64_t seed)
{
    sampler->params.seed = seed;
    tq_rng_seed(&sampler->rng, seed);
}

static tq_status reserve_vocab(tq_sampler *s, int32_t n_vocab, tq_error *err)
{
    if (n_vocab <= s->capacity) {
        return TQ_OK;
    }
    size_t logits_bytes, candidates_bytes, weights_bytes;
    if (!tq_mul_size((size_t)n_vocab, sizeof(float), &logits_bytes) ||
        !tq_mul_size((size_t)n_vocab, sizeof(tq_candidate), &candidates_bytes) ||
        !tq_mul_size((size_t)n_vocab, sizeof(double), &weights_bytes)) {
        return tq_error_set(err, TQ_ERR_NOMEM, "sampler buffers for n_vocab=%d overflow size_t", (int)n_vocab);
    }
    float *logits = malloc(logits_bytes);
    tq_candidate *candidates = malloc(candidates_bytes);
    double *weights = malloc(weights_bytes);
    if (logits == NULL || candidates == NULL || weights == NULL) {
        free(logits);
        free(candidates);
        free(weights);
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory allocating sampler buffers for n_vocab=%d",
                            (int)n_vocab);
    }
    free(s->logits);
    free(s->candidates);
    free(s->weights);
    s->logits = logits;
    s->candidates = candidates;
    s->weights = weights;
    s->capacity = n_vocab;
    return TQ_OK;
}

static int compare_int32(const void *a, const void *b)
{
    const int32_t x = *(const int32_t *)a;
    const int32_t y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Candidate order: larger logit first, lower id first among equal logits. */
static int candidate_better(const tq_candidate *a, const tq_candidate *b)
{
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int compare_candidates(const void *a, const void *b)
{
    const tq_candidate *x = a;
    const tq_candidate *y = b;
    if (candidate_better(x, y)) {
        return -1;
    }
    return candidate_better(y, x) ? 1 : 0;
}

/* Copy the logits and apply the repetition, presence and frequency penalties. */
static tq_status apply_penalties(tq_sampler *s, const float *logits, int32_t n_vocab, const int32_t *history,
                                 size_t n_history, tq_error *err)
{
    const tq_sampler_params *p = &s->params;
    memcpy(s->logits, logits, (size_t)n_vocab * sizeof(float));

    const int active = p->penalty_last_n != 0 &&
                       (p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f);
    if (!active || n_history == 0) {
        return TQ_OK;
    }

    size_t n_window = n_history;
    if (p->penalty_last_n > 0 && (size_t)p->penalty_last_n < n_window) {
        n_window = (size_t)p->penalty_last_n;
    }
    const int32_t *window = history + (n_history - n_window);
    for (size_t i = 0; i < n_window; i++) {
        if (window[i] < 0 || window[i] >= n_vocab) {
            return tq_error_set(err, TQ_ERR_INVALID, "history[%zu] = %d is not a token id in [0, %d)",
                                n_history - n_window + i, (int)window[i], (int)n_vocab);
        }
    }

    if (n_window > s->window_capacity) {
        size_t bytes;
        if (!tq_mul_size(n_window, sizeof(int32_t), &bytes)) {
            return tq_error_set(err, TQ_ERR_NOMEM, "penalty window of %zu tokens overflows size_t", n_window);
        }
        int32_t *grown = realloc(s->window, bytes);
        if (grown == NULL) {
            return tq_error_set(err, TQ_ERR_NOMEM, "out of memory copying a penalty window of %zu tokens", n_window);
        }
        s->window = grown;
        s->window_capacity = n_window;
    }
    memcpy(s->window, window, n_window * sizeof(int32_t));
    qsort(s->window, n_window, sizeof(int32_t), compare_int32);

    /* Each run of equal ids in the sorted window is one token and its count. */
    size_t start = 0;
    while (start < n_window) {
        size_t end = start + 1;
        while (end < n_window && s->window[end] == s->window[start]) {
            end++;
        }
        const int32_t id = s->window[start];
        const float count = (float)(end - start);
        float logit = s->logits[id];
        /* Dividing a negative logit would raise its probability, so negative logits are
         * multiplied instead; both directions make the token less likely. */
        if (logit <= 0.0f) {
            logit *= p->repetition_penalty;
        } else {
            logit /= p->repetition_penalty;
        }
        logit -= count * p->frequency_penalty + p->presence_penalty;
        s->logits[id] = logit;
        start = end;
    }
    return TQ_OK;
}

/* Reject NaN and +infinity; -infinity marks a banned token and is allowed. */
static tq_status check_logits(const float *logits, int32_t n_vocab, tq_error *err)
{
    if (n_vocab <= 0) {
        return tq_error_set(err, TQ_ERR_INVALID, "logits must hold at least one value, got n_vocab=%d",
                            (int)n_vocab);
    }
    for (int32_t i = 0; i < n_vocab; i++) {
        const float x = logits[i];
        if (isnan(x) || (isinf(x) && x > 0.0f)) {
            return tq_error_set(err, TQ_ERR_INVALID,
                                "logits[%d] is %g; logits must be finite or -inf (a banned token)", (int)i, (double)x);
        }
    }
    return TQ_OK;
}

/* Index of the largest logit, the lower id among equals, or -1 when every logit is -inf. */
static int32_t argmax(const float *logits, int32_t n_vocab)
{
    int32_t best = -1;
    float best_logit = -INFINITY;
    for (int32_t i = 0; i < n_vocab; i++) {
        if (logits[i] > best_logit) {
            best_logit = logits[i];
            best = i;
        }
    }
    return best;
}

static void sift_down_worst_first(tq_candidate *heap, size_t size, size_t i)
{
    /* Min-heap in candidate order: the root is the worst candidate kept so far. */
    for (;;) {
        size_t worst = i;
        const size_t left = 2 * i + 1;
        const size_t right = left + 1;
        if (left < size && candidate_better(&heap[worst], &heap[left])) {
            worst = left;
        }
        if (right < size && candidate_better(&heap[worst], &heap[right])) {
            worst = right;
        }
        if (worst == i) {
            return;
        }
        const tq_candidate tmp = heap[i];
        heap[i] = heap[worst];
        heap[worst] = tmp;
        i = worst;
    }
}

/* Gather the best min(m, finite tokens) candidates into out, sorted best first; returns
 * their count. A bounded heap makes one pass over the vocabulary and rarely enters the
 * heap once it is full, so selecting the top few hundred of 262144 logits costs about as
 * much as reading them. */
static size_t select_top(const float *logits, int32_t n_vocab, size_t m, tq_candidate *out)
{
    size_t size = 0;
    if (m >= (size_t)n_vocab / 4) {
        for (int32_t i = 0; i < n_vocab; i++) {
            if (logits[i] != -INFINITY) {
                out[size].logit = logits[i];
                out[size].id = i;
                size++;
            }
        }
        qsort(out, size, sizeof(*out), compare_candidates);
        return size < m ? size : m;
    }

    for (int32_t i = 0; i < n_vocab; i++) {
        const tq_candidate c = {logits[i], i};
        if (c.logit == -INFINITY) {
            continue;
        }
        if (size < m) {
            /* Sift up. */
            size_t j = size++;
            out[j] = c;
            while (j > 0) {
                const size_t parent = (j - 1) / 2;
                if (!candidate_better(&out[parent], &out[j])) {
                    break;
                }
                const tq_candidate tmp = out[parent];
                out[parent] = out[j];
                out[j] = tmp;
                j = parent;
            }
        } else if (candidate_better(&c, &out[0])) {
            out[0] = c;
            sift_down_worst_first(out, size, 0);
        }
    }
    qsort(out, size, sizeof(*out), compare_candidates);
    return size;
}

static size_t top_p_bucket(double gap)
{
    const double scaled = gap * (TQ_TOP_P_BUCKETS / TQ_TOP_P_GAP_SPAN);
    return scaled < TQ_TOP_P_BUCKETS ? (size_t)scaled : TQ_TOP_P_BUCKETS;
}

/* Gather, sorted best first, a superset of the tokens that top-p keeps when top-k is off.
 * Returns their count. *total receives the softmax denominator over the whole vocabulary,
 * relative to max_logit. */
static size_t gather_top_p(const float *logits, int32_t n_vocab, double max_logit, double top_p, double *total,
                           tq_candidate *out)
{
    double mass[TQ_TOP_P_BUCKETS + 1] = {0.0};
    double sum = 0.0;
    for (int32_t i = 0; i < n_vocab; i++) {
        if (logits[i] == -INFINITY) {
            continue;
        }
        const double gap = max_logit - (double)logits[i];
        const double weight = exp(-gap);
        sum += weight;
        mass[top_p_bucket(gap)] += weight;
    }
    *total = sum;

    /* The kept prefix ends inside the first bucket where the mass reaches the target.
     * One more bucket absorbs the rounding difference between summing by bucket here and
     * summing in sorted order later. */
    const double target = top_p * sum;
    double cumulative = 0.0;
    size_t last = TQ_TOP_P_BUCKETS;
    for (size_t b = 0; b < TQ_TOP_P_BUCKETS; b++) {
        cumulative += mass[b];
        if (cumulative >= target) {
            last = b + 1;
            break;
        }
    }

    size_t n = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        if (logits[i] != -INFINITY && top_p_bucket(max_logit - (double)logits[i]) <= last) {
            out[n].logit = logits[i];
            out[n].id = i;
            n++;
        }
    }
    qsort(out, n, sizeof(*out), compare_candidates);
    return n;
}

/* Run the whole chain. On success s->candidates[0..*n_kept) are the kept tokens and
 * s->weights[0..*n_kept) their probabilities, which sum to 1. */
static tq_status filter(tq_sampler *s, const float *logits, int32_t n_vocab, const int32_t *history,
                        size_t n_history, size_t *n_kept, tq_error *err)
{
    const tq_sampler_params *p = &s->params;
    *n_kept = 0;

    tq_status status = check_logits(logits, n_vocab, err);
    if (status == TQ_OK) {
        status = reserve_vocab(s, n_vocab, err);
    }
    if (status == TQ_OK) {
        status = apply_penalties(s, logits, n_vocab, history, n_history, err);
    }
    if (status != TQ_OK) {
        return status;
    }

    const float *w = s->logits;
    const int32_t best = argmax(w, n_vocab);
    if (best < 0) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "every logit is -inf (after the penalties), so no token can be sampled");
    }
    const double max_logit = (double)w[best];

    if (p->temperature == 0.0f) {
        s->candidates[0].logit = w[best];
        s->candidates[0].id = best;
        s->weights[0] = 1.0;
        *n_kept = 1;
        return TQ_OK;
    }

    /* Stage 1: gather candidates, sorted best first whenever a later filter needs order. */
    size_t n = 0;
    double top_p_total = 0.0; /* softmax denominator that top-p uses, relative to max_logit */
    if (p->top_k > 0) {
        n = select_top(w, n_vocab, (size_t)p->top_k, s->candidates);
        for (size_t i = 0; i < n; i++) {
            top_p_total += exp((double)s->candidates[i].logit - max_logit);
        }
    } else if (p->top_p < 1.0f) {
        n = gather_top_p(w, n_vocab, max_logit, (double)p->top_p, &top_p_total, s->candidates);
    } else if (p->min_p > 0.0f) {
        const double threshold = max_logit + log((double)p->min_p);
        for (int32_t i = 0; i < n_vocab; i++) {
            if ((double)w[i] >= threshold) {
                s->candidates[n].logit = w[i];
                s->candidates[n].id = i;
                n++;
            }
        }
        qsort(s->candidates, n, sizeof(*s->candidates), compare_candidates);
    } else {
        /* No filter: every finite token, in id order (the draw does not need sorting). */
        for (int32_t i = 0; i < n_vocab; i++) {
            if (w[i] != -INFINITY) {
                s->candidates[n].logit = w[i];
                s->candidates[n].id = i;
                n++;
            }
        }
    }

    /* Stage 2: top-p over the softmax of the candidates at temperature 1. */
    if (p->top_p < 1.0f) {
        const double target = (double)p->top_p * top_p_total;
        double cumulative = 0.0;
        size_t keep = n;
        for (size_t i = 0; i < n; i++) {
            cumulative += exp((double)s->candidates[i].logit - max_logit);
            if (cumulative >= target) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
    }

    /* Stage 3: min-p relative to the most probable token, which candidates[0] is. */
    if (p->min_p > 0.0f) {
        const double threshold = max_logit + log((double)p->min_p);
        size_t keep = 1;
        while (keep < n && (double)s->candidates[keep].logit >= threshold) {
            keep++;
        }
        n = keep;
    }

    /* Stage 4: temperature and normalisation. */
    const double inv_temperature = 1.0 / (double)p->temperature;
    double total = 0.0;
    for (size_t i = 0; i < n; i++) {
        s->weights[i] = exp(((double)s->candidates[i].logit - max_logit) * inv_temperature);
        total += s->weights[i];
    }
    for (size_t i = 0; i < n; i++) {
        s->weights[i] /= total;
    }
    *n_kept = n;
    return TQ_OK;
}

tq_status tq_sampler_sample(tq_sampler *sampler, const float *logits, int32_t n_vocab, const int32_t *history,
                            size_t n_history, int32_t *token, tq_error *err)
{
    *token = -1;
    size_t n = 0;
    tq_status status = filter(sampler, logits, n_vocab, history, n_history, &n, err);
    if (status != TQ_OK) {
        return status;
    }
    if (n == 1) {
        /* Greedy and single-token results draw nothing, so the random stream stays
         * aligned with the number of real draws. */
        *token = sampler->candidates[0].id;
        return TQ_OK;
    }

    const double u = tq_rng_uniform(&sampler->rng);
    double cumulative = 0.0;
    for (size_t i = 0; i < n; i++) {
        cumulative += sampler->weights[i];
        if (u < cumulative) {
            *token = sampler->candidates[i].id;
            return TQ_OK;
        }
    }
    /* Rounding left the cumulative sum just below u: take the last kept token. */
    *token = sampler->candidates[n - 1].id;
    return TQ_OK;
}

tq_status tq_sampler_probs(tq_sampler *sampler, const float *logits, int32_t n_vocab, const int32_t *history,
                           size_t n_history, double *probs, tq_error *err)
{
    size_t n = 0;
    tq_status status = filter(sampler, logits, n_vocab, history, n_history, &n, err);
    if (status != TQ_OK) {
        return status;
    }
    memset(probs, 0, (size_t)n_vocab * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        probs[sampler->candidates[i].id] = sampler->weights[i];
    }
    return TQ_OK;
}
