/* Medusa heads on a frozen base model: forward pass, self-distillation loss with
 * its gradient, and the AdamW optimizer that trains them.
 *
 * Head k (k = 0, 1, ...) reads h, the base model's final hidden state after the
 * output norm at position t, and predicts the token at t + 2 + k (the base LM head
 * predicts t + 1 from the same h):
 *
 *     g = h + SiLU(W_k h + b_k),  logits = softcap(E g)
 *
 * where W_k is [hidden][hidden] (row = output), E is the base model's LM head in
 * its stored quantized form (the tied token embedding of Gemma) applied through
 * tq_matmul, and softcap is the base model's final logit softcap when it has one.
 * With W = 0 and b = 0, g = h and every head returns the base next-token logits.
 *
 * Training target (self-distillation): head k at position t learns the base
 * model's own distribution at position t + 1 + k, the teacher p, by minimizing
 * KL(p || q_k) where q_k is the head's softmax. The teacher is kept sparse: its
 * top_k probabilities, renormalized to sum to 1 (tq_mtp_teacher reports the mass
 * they keep before renormalization).
 *
 * Ownership: the functions borrow every array; head weights stay in the caller's
 * memory (float32), so Python can keep them in NumPy arrays. Nothing is shared
 * between calls, so calls on different outputs may run concurrently.
 */
#ifndef TQ_MTP_H
#define TQ_MTP_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "tq_common.h"
#include "weights.h"

/* Upper bound on heads per set, so per-head statistics fit in fixed arrays. */
#define TQ_MTP_MAX_HEADS 16

/* A draft vocabulary: the LM-head rows of chosen tokens, which the heads score instead of
 * the whole vocabulary. Drafting only needs candidates among likely tokens, and 32768 of
 * Gemma's 262144 rows read an eighth of the LM head. rows is a borrowed [n_rows][hidden]
 * matrix in the LM head's own type whose row i is the LM-head row of token ids[i]; ids are
 * strictly increasing. A logit row over a draft vocabulary has rows.n_out entries, and its
 * entry i is token ids[i]. */
typedef struct tq_mtp_vocab_s {
    tq_weight rows;
    const int32_t *ids;
} tq_mtp_vocab;

/* Gather the LM-head rows of n token ids (strictly increasing, below n_vocab) into a new
 * draft vocabulary that owns its rows and ids. Free it with tq_mtp_vocab_free.
 * Errors: TQ_ERR_INVALID (n < 1, ids), TQ_ERR_NOMEM. */
tq_status tq_mtp_vocab_create(const tq_model *model, const int32_t *ids, int64_t n, tq_mtp_vocab **out,
                              tq_error *err);
void tq_mtp_vocab_free(tq_mtp_vocab *vocab);

/* Borrowed view of a set of heads. */
typedef struct {
    int n_heads;
    int hidden;                /* the base model's hidden size */
    const float *weight;       /* [n_heads][hidden][hidden], row = output */
    const float *bias;         /* [n_heads][hidden] */
    const tq_mtp_vocab *vocab; /* NULL: the whole vocabulary */
} tq_mtp_heads;

/* The LM head of model (token_embd when the file has no output.weight): the matrix
 * that the heads share with the base model. Owned by the model. */
const tq_weight *tq_mtp_lm_head(const tq_model *model);

/* Run every head on n rows of hidden ([n][hidden], output-normed final hidden
 * states). logits receives [n_heads][n][entries] floats when not NULL, where entries is
 * n_vocab or the size of the heads' draft vocabulary. residual receives g,
 * [n_heads][n][hidden] floats, when not NULL. Threads with OpenMP.
 * Errors: TQ_ERR_INVALID (shapes that do not match the model, n < 1),
 * TQ_ERR_NOMEM. */
tq_status tq_mtp_forward(const tq_model *model, const tq_mtp_heads *heads, const float *hidden, int64_t n,
                         float *logits, float *residual, tq_error *err);

/* Run every head on one row of hidden and write its top_k token ids, best first (ties to the
 * lower id), into ids[head * top_k ..]; with a draft vocabulary the ids are its tokens.
 * logprobs (NULL to skip) gets their log-probabilities under the head's softmax. Errors as
 * tq_mtp_forward, and TQ_ERR_INVALID for top_k outside [1, entries]. */
tq_status tq_mtp_top_k(const tq_model *model, const tq_mtp_heads *heads, const float *hidden, int top_k,
                       int32_t *ids, float *logprobs, tq_error *err);

/* The base model's distribution at n rows of hidden, kept sparse: for each row,
 * ids[row][0..top_k) are the top_k token ids by probability (descending, so
 * ids[row][0] is the base argmax) and probs[row][..] their probabilities
 * renormalized to sum to 1. kept_mass (n floats, may be NULL) receives the
 * probability the top_k entries had before renormalization. With a draft vocabulary
 * (vocab not NULL) the distribution is the base softmax over its tokens only, and ids are
 * entries of vocab (row indices), as tq_mtp_loss_grad takes them for heads with that
 * vocabulary. Errors: TQ_ERR_INVALID (top_k outside [1, entries], n < 1), TQ_ERR_NOMEM. */
tq_status tq_mtp_teacher(const tq_model *model, const tq_mtp_vocab *vocab, const float *hidden, int64_t n, int top_k,
                         int32_t *ids, float *probs, float *kept_mass, tq_error *err);

typedef struct {
    int top_k;        /* teacher entries per row, as given to tq_mtp_teacher */
    int student_top_m; /* the student's most likely entries added to the sparse backward (4096 is
                        * the default of the binding: see chunk_backward in mtp.c) */
    float head_decay; /* head k's loss is weighted by head_decay^k (Medusa uses 0.8) */
} tq_mtp_loss_params;

typedef struct {
    double loss;                        /* sum over heads of head_decay^k * mean KL of head k */
    double kl[TQ_MTP_MAX_HEADS];        /* mean KL(p || q_k) in nats over the rows of head k */
    int64_t rows[TQ_MTP_MAX_HEADS];     /* rows that trained head k */
    int64_t correct[TQ_MTP_MAX_HEADS];  /* rows where head k's argmax equals the teacher's */
    double dropped_mass[TQ_MTP_MAX_HEADS]; /* mean student probability outside the sparse backward set */
} tq_mtp_stats;

/* Compute the self-distillation loss of n_seqs sequences of seq_len consecutive
 * positions each and add its gradient to grad_weight ([n_heads][hidden][hidden])
 * and grad_bias ([n_heads][hidden]), which the caller zeroes before a step.
 *
 * hidden is [n_seqs * seq_len][hidden]; teacher_ids and teacher_probs are
 * [n_seqs * seq_len][top_k] from tq_mtp_teacher on the same rows (with the heads' draft
 * vocabulary, whose entries the ids then are). Head k at row t
 * of a sequence learns the teacher row t + 1 + k of the same sequence, so it trains
 * on seq_len - 1 - k rows per sequence. The loss is the sum over heads of
 * head_decay^k times the mean KL over those rows; stats (may be NULL) receives it.
 * A student_top_m above n_vocab means the whole vocabulary (the exact gradient).
 * Errors: TQ_ERR_INVALID (shapes, seq_len < n_heads + 1, top_k outside
 * [1, n_vocab], student_top_m < 1), TQ_ERR_NOMEM. */
tq_status tq_mtp_loss_grad(const tq_model *model, const tq_mtp_heads *heads, const float *hidden, int64_t n_seqs,
                           int64_t seq_len, const int32_t *teacher_ids, const float *teacher_probs,
                           const tq_mtp_loss_params *params, float *grad_weight, float *grad_bias,
                           tq_mtp_stats *stats, tq_error *err);

/* Learning rate at step (0-based): linear warm-up from lr_max / warmup to lr_max over
 * the first warmup steps, then cosine decay to lr_min at total_steps (and lr_min after). */
double tq_mtp_learning_rate(int64_t step, int64_t warmup, int64_t total_steps, double lr_max, double lr_min);

/* Scale the count arrays grads[i] (sizes[i] floats each) together so that their
 * global L2 norm is at most max_norm (no change when max_norm <= 0 or the norm is
 * smaller). Returns the norm before clipping. */
double tq_mtp_clip_grad_norm(float *const *grads, const int64_t *sizes, int count, double max_norm);

typedef struct {
    double lr;
    double beta1, beta2, eps;
    double weight_decay; /* decoupled: param -= lr * weight_decay * param */
} tq_mtp_adamw;

/* One AdamW update of size parameters with their gradient and moments m, v (updated
 * in place). step is the 1-based count of updates including this one, for the bias
 * correction. Errors: TQ_ERR_INVALID (step < 1, size < 0, non-finite settings). */
tq_status tq_mtp_adamw_update(float *param, const float *grad, float *m, float *v, int64_t size,
                              const tq_mtp_adamw *opt, int64_t step, tq_error *err);

#endif /* TQ_MTP_H */
