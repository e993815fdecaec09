/* Medusa heads: forward pass, sparse self-distillation loss and gradient, AdamW.
 * See mtp.h for the head formula and the training target. */
#include "mtp.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

/* Rows whose logits are computed together. The logits buffer contains this many rows
 * of n_vocab floats (16 MB for Gemma's 262144 tokens), and tq_matmul reads the LM head
 * once for all of them. */
#define MTP_CHUNK_ROWS 16

const tq_weight *tq_mtp_lm_head(const tq_model *model)
{
    return &model->lm_head;
}

/* The rows that logits are computed over: a draft vocabulary's, or the whole LM head. */
static const tq_weight *scored_rows(const tq_model *model, const tq_mtp_vocab *vocab)
{
    return vocab != NULL ? &vocab->rows : &model->lm_head;
}

static tq_status lm_head_matmul(const tq_model *model, const tq_mtp_vocab *vocab, const float *x, float *y,
                                int64_t rows, tq_error *err)
{
    if (model->exact_matmul) {
        return tq_matmul_exact(scored_rows(model, vocab), x, y, rows, err);
    }
    return tq_matmul(model->isa, scored_rows(model, vocab), x, y, rows, err);
}

/* A draft vocabulary must hold rows of the LM head's type and width, for strictly
 * increasing token ids of the model. */
static tq_status check_vocab(const tq_model *model, const tq_mtp_vocab *vocab, tq_error *err)
{
    if (vocab == NULL) {
        return TQ_OK;
    }
    const tq_weight *lm_head = &model->lm_head;
    if (vocab->rows.data == NULL || vocab->ids == NULL || vocab->rows.n_out < 1) {
        return tq_error_set(err, TQ_ERR_INVALID, "the draft vocabulary has no rows or no ids");
    }
    if (vocab->rows.type != lm_head->type || vocab->rows.n_in != lm_head->n_in) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "draft vocabulary rows are %s x %lld but the LM head is %s x %lld; gather them from the "
                            "model's LM head", tq_type_name(vocab->rows.type), (long long)vocab->rows.n_in,
                            tq_type_name(lm_head->type), (long long)lm_head->n_in);
    }
    for (int64_t i = 0; i < vocab->rows.n_out; i++) {
        const int32_t id = vocab->ids[i];
        if (id < 0 || id >= model->config.n_vocab || (i > 0 && id <= vocab->ids[i - 1])) {
            return tq_error_set(err, TQ_ERR_INVALID,
                                "draft vocabulary id %d at index %lld is not a strictly increasing token id below %d",
                                id, (long long)i, model->config.n_vocab);
        }
    }
    return TQ_OK;
}

tq_status tq_mtp_vocab_create(const tq_model *model, const int32_t *ids, int64_t n, tq_mtp_vocab **out,
                              tq_error *err)
{
    *out = NULL;
    const tq_weight *lm_head = &model->lm_head;
    if (ids == NULL || n < 1 || n > lm_head->n_out) {
        return tq_error_set(err, TQ_ERR_INVALID, "a draft vocabulary needs 1 to %lld token ids, got %lld",
                            (long long)lm_head->n_out, (long long)n);
    }
    tq_mtp_vocab *vocab = calloc(1, sizeof(*vocab));
    int32_t *own_ids = malloc((size_t)n * sizeof(int32_t));
    uint8_t *rows = tq_aligned_alloc((size_t)n * lm_head->row_bytes);
    if (vocab == NULL || own_ids == NULL || rows == NULL) {
        free(vocab);
        free(own_ids);
        tq_aligned_free(rows);
        return tq_error_set(err, TQ_ERR_NOMEM, "cannot allocate a draft vocabulary of %lld rows", (long long)n);
    }
    memcpy(own_ids, ids, (size_t)n * sizeof(int32_t));
    vocab->ids = own_ids;
    vocab->rows = *lm_head;
    vocab->rows.n_out = n;
    vocab->rows.data = rows;
    tq_status status = check_vocab(model, vocab, err);
    if (status != TQ_OK) {
        tq_mtp_vocab_free(vocab);
        return status;
    }
    const uint8_t *source = (const uint8_t *)lm_head->data;
    for (int64_t i = 0; i < n; i++) {
        memcpy(rows + (size_t)i * lm_head->row_bytes, source + (size_t)ids[i] * lm_head->row_bytes,
               lm_head->row_bytes);
    }
    *out = vocab;
    return TQ_OK;
}

void tq_mtp_vocab_free(tq_mtp_vocab *vocab)
{
    if (vocab == NULL) {
        return;
    }
    free((void *)vocab->ids);
    tq_aligned_free((void *)vocab->rows.data);
    free(vocab);
}

/* Entries of a logit row: the draft vocabulary's size, or n_vocab. */
static int64_t scored_entries(const tq_model *model, const tq_mtp_vocab *vocab)
{
    return vocab != NULL ? vocab->rows.n_out : model->config.n_vocab;
}

/* logits = cap * tanh(logits / cap), as the base model's forward pass applies it. */
static void apply_softcap(float *logits, int64_t count, float cap)
{
    if (cap <= 0.0f) {
        return;
    }
#pragma omp parallel for
    for (int64_t i = 0; i < count; i++) {
        logits[i] = tanhf(logits[i] / cap) * cap;
    }
}

static inline float sigmoid(float x)
{
    return 1.0f / (1.0f + expf(-x));
}

static tq_status check_heads(const tq_model *model, const tq_mtp_heads *heads, tq_error *err)
{
    if (heads == NULL || heads->weight == NULL || heads->bias == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "heads, their weight or their bias is NULL");
    }
    if (heads->n_heads < 1 || heads->n_heads > TQ_MTP_MAX_HEADS) {
        return tq_error_set(err, TQ_ERR_INVALID, "n_heads is %d; pass 1 to %d heads", heads->n_heads,
                            TQ_MTP_MAX_HEADS);
    }
    if (heads->hidden != model->config.hidden) {
        return tq_error_set(err, TQ_ERR_INVALID, "heads have hidden size %d but the model has %d", heads->hidden,
                            model->config.hidden);
    }
    return check_vocab(model, heads->vocab, err);
}

/* pre[r] = W h[r] + b and g[r] = h[r] + SiLU(pre[r]) for rows r < rows; W is
 * [hidden][hidden] with row = output. */
static void heads_residual(const float *weight, const float *bias, int hidden, const float *h, int64_t rows,
                           float *pre, float *g)
{
#pragma omp parallel for collapse(2)
    for (int64_t r = 0; r < rows; r++) {
        for (int o = 0; o < hidden; o++) {
            const float *w_row = weight + (size_t)o * hidden;
            const float *x = h + (size_t)r * hidden;
            float sum = bias[o];
            for (int i = 0; i < hidden; i++) {
                sum += w_row[i] * x[i];
            }
            pre[(size_t)r * hidden + o] = sum;
            g[(size_t)r * hidden + o] = x[o] + sum * sigmoid(sum);
        }
    }
}

tq_status tq_mtp_forward(const tq_model *model, const tq_mtp_heads *heads, const float *hidden, int64_t n,
                         float *logits, float *residual, tq_error *err)
{
    tq_status status = check_heads(model, heads, err);
    if (status != TQ_OK) {
        return status;
    }
    if (n < 1 || hidden == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "hidden has %lld rows; pass at least one row", (long long)n);
    }
    const int H = heads->hidden;
    const int64_t V = scored_entries(model, heads->vocab);
    size_t chunk_bytes = 0;
    if (!tq_mul_size((size_t)MTP_CHUNK_ROWS * (size_t)H, 2 * sizeof(float), &chunk_bytes)) {
        return tq_error_set(err, TQ_ERR_NOMEM, "hidden size %d is too large", H);
    }
    float *pre = malloc(chunk_bytes);
    if (pre == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "cannot allocate %zu bytes of head activations", chunk_bytes);
    }
    float *g = pre + (size_t)MTP_CHUNK_ROWS * H;

    for (int k = 0; k < heads->n_heads && status == TQ_OK; k++) {
        const float *w = heads->weight + (size_t)k * H * H;
        const float *b = heads->bias + (size_t)k * H;
        for (int64_t r0 = 0; r0 < n && status == TQ_OK; r0 += MTP_CHUNK_ROWS) {
            const int64_t rows = n - r0 < MTP_CHUNK_ROWS ? n - r0 : MTP_CHUNK_ROWS;
            heads_residual(w, b, H, hidden + r0 * H, rows, pre, g);
            if (residual != NULL) {
                memcpy(residual + ((size_t)k * n + r0) * H, g, (size_t)rows * H * sizeof(float));
            }
            if (logits != NULL) {
                float *out = logits + ((size_t)k * n + r0) * V;
                status = lm_head_matmul(model, heads->vocab, g, out, rows, err);
                apply_softcap(out, rows * V, model->config.final_logit_softcap);
            }
        }
    }
    free(pre);
    return status;
}

/* ---- Top-k selection ----------------------------------------------------------- */

/* Min-heap on value (ties: the larger id is smaller, so the lower id is kept). */
static int heap_less(float va, int32_t ia, float vb, int32_t ib)
{
    return va < vb || (va == vb && ia > ib);
}

static void heap_sift_down(float *vals, int32_t *ids, int size, int i)
{
    for (;;) {
        int smallest = i;
        const int left = 2 * i + 1;
        const int right = left + 1;
        if (left < size && heap_less(vals[left], ids[left], vals[smallest], ids[smallest])) {
            smallest = left;
        }
        if (right < size && heap_less(vals[right], ids[right], vals[smallest], ids[smallest])) {
            smallest = right;
        }
        if (smallest == i) {
            return;
        }
        const float tv = vals[i];
        const int32_t ti = ids[i];
        vals[i] = vals[smallest];
        ids[i] = ids[smallest];
        vals[smallest] = tv;
        ids[smallest] = ti;
        i = smallest;
    }
}

/* The k largest of z[0..count) into ids and vals, sorted by value descending (ties by
 * id ascending). One pass with a min-heap of size k: O(count log k). */
static void select_top_k(const float *z, int64_t count, int k, int32_t *ids, float *vals)
{
    for (int i = 0; i < k; i++) {
        vals[i] = z[i];
        ids[i] = (int32_t)i;
    }
    for (int i = k / 2 - 1; i >= 0; i--) {
        heap_sift_down(vals, ids, k, i);
    }
    for (int64_t j = k; j < count; j++) {
        if (z[j] > vals[0]) {
            vals[0] = z[j];
            ids[0] = (int32_t)j;
            heap_sift_down(vals, ids, k, 0);
        }
    }
    /* Heap sort: moving the minimum to the end leaves a descending order. */
    for (int size = k; size > 1; size--) {
        const float tv = vals[0];
        const int32_t ti = ids[0];
        vals[0] = vals[size - 1];
        ids[0] = ids[size - 1];
        vals[size - 1] = tv;
        ids[size - 1] = ti;
        heap_sift_down(vals, ids, size - 1, 0);
    }
}

/* log(sum exp z) over count values, in double. */
static double log_sum_exp(const float *z, int64_t count)
{
    float max = z[0];
    for (int64_t j = 1; j < count; j++) {
        max = z[j] > max ? z[j] : max;
    }
    double sum = 0.0;
    for (int64_t j = 0; j < count; j++) {
        sum += exp((double)z[j] - max);
    }
    return max + log(sum);
}
tq_status tq_mtp_top_k(const tq_model *model, const tq_mtp_heads *heads, const float *hidden, int top_k,
                       int32_t *ids, float *logprobs, tq_error *err)
{
    tq_status status = check_heads(model, heads, err);
    if (status != TQ_OK) {
        return status;
    }
    const int64_t V = scored_entries(model, heads->vocab);
    if (top_k < 1 || top_k > V) {
        return tq_error_set(err, TQ_ERR_INVALID, "top_k is %d; pass 1 to %lld", top_k, (long long)V);
    }
    size_t count;
    if (!tq_mul_size((size_t)heads->n_heads, (size_t)V, &count) || count > SIZE_MAX / sizeof(float) - (size_t)top_k) {
        return tq_error_set(err, TQ_ERR_NOMEM, "%d heads of %lld logits overflow size_t", heads->n_heads,
                            (long long)V);
    }
    float *logits = malloc((count + (size_t)top_k) * sizeof(float));
    if (logits == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for the logits of %d heads", heads->n_heads);
    }
    float *values = logits + count;

    status = tq_mtp_forward(model, heads, hidden, 1, logits, NULL, err);
    for (int k = 0; k < heads->n_heads && status == TQ_OK; k++) {
        const float *row = logits + (size_t)k * (size_t)V;
        int32_t *head_ids = ids + (size_t)k * (size_t)top_k;
        select_top_k(row, V, top_k, head_ids, values);
        if (heads->vocab != NULL) {
            for (int j = 0; j < top_k; j++) {
                head_ids[j] = heads->vocab->ids[head_ids[j]];
            }
        }
        if (logprobs != NULL) {
            const double lse = log_sum_exp(row, V);
            for (int j = 0; j < top_k; j++) {
                logprobs[(size_t)k * (size_t)top_k + (size_t)j] = (float)(values[j] - lse);
            }
        }
    }
    free(logits);
    return status;
}


tq_status tq_mtp_teacher(const tq_model *model, const tq_mtp_vocab *vocab, const float *hidden, int64_t n, int top_k,
                         int32_t *ids, float *probs, float *kept_mass, tq_error *err)
{
    const int H = model->config.hidden;
    tq_status status = check_vocab(model, vocab, err);
    if (status != TQ_OK) {
        return status;
    }
    const int64_t V = scored_entries(model, vocab);
    if (n < 1 || hidden == NULL || ids == NULL || probs == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "hidden has %lld rows or an output is NULL; pass at least one row",
                            (long long)n);
    }
    if (top_k < 1 || top_k > V) {
        return tq_error_set(err, TQ_ERR_INVALID, "top_k is %d; pass a value in [1, %lld]", top_k, (long long)V);
    }
    size_t logits_bytes = 0;
    if (!tq_mul_size((size_t)MTP_CHUNK_ROWS * (size_t)V, sizeof(float), &logits_bytes)) {
        return tq_error_set(err, TQ_ERR_NOMEM, "vocabulary of %lld tokens is too large", (long long)V);
    }
    float *logits = malloc(logits_bytes);
    if (logits == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "cannot allocate %zu bytes of teacher logits", logits_bytes);
    }

    for (int64_t r0 = 0; r0 < n && status == TQ_OK; r0 += MTP_CHUNK_ROWS) {
        const int64_t rows = n - r0 < MTP_CHUNK_ROWS ? n - r0 : MTP_CHUNK_ROWS;
        status = lm_head_matmul(model, vocab, hidden + r0 * H, logits, rows, err);
        if (status != TQ_OK) {
            break;
        }
        apply_softcap(logits, rows * V, model->config.final_logit_softcap);
#pragma omp parallel for
        for (int64_t r = 0; r < rows; r++) {
            const float *z = logits + r * V;
            int32_t *row_ids = ids + (r0 + r) * top_k;
            float *row_probs = probs + (r0 + r) * top_k;
            const double lse = log_sum_exp(z, V);
            select_top_k(z, V, top_k, row_ids, row_probs);
            double kept = 0.0;
            for (int i = 0; i < top_k; i++) {
                kept += exp((double)row_probs[i] - lse);
            }
            for (int i = 0; i < top_k; i++) {
                row_probs[i] = (float)(exp((double)row_probs[i] - lse) / kept);
            }
            if (kept_mass != NULL) {
                kept_mass[r0 + r] = (float)kept;
            }
        }
    }
    free(logits);
    return status;
}

/* ---- Loss and gradient ------------------------------------------------------- */

/* Per-row scratch of the backward pass: the sparse set of vocabulary entries and the
 * dequantized LM-head row of one entry. */
typedef struct {
    int32_t *student_ids;
    float *student_vals;
    float *embedding_row;
} row_scratch;

/* Loss of head k on the train rows of one chunk and dL/dpre for them.
 *
 * Sparse LM-head backward. For logits z = E g and the loss KL(p || softmax(z)), the
 * exact gradient is dL/dz = q - p over the whole vocabulary, so dL/dg = E^T (q - p).
 * The teacher p is zero outside its top_k entries by construction, so the only terms
 * left out are q_j E_j for entries j outside the teacher's top_k and the student's
 * student_top_m. Their total weight is the student probability outside that set,
 * which is measured for every row and reported as dropped_mass. The sparse backward
 * reads (top_k + student_top_m) rows of E per row instead of all n_vocab of them.
 * On Gemma 3 270M with random heads (W ~ N(0, 0.02^2)), student_top_m = 64 left out
 * 15-18% of the mass and gave a 57% maximum relative error in dL/dW against the exact
 * gradient, 512 left out 4-5% (15% error), and 4096 left out under 1% (2% error)
 * at no measurable extra time next to the LM-head product, hence the default of 4096. */
static void chunk_backward(const tq_model *model, const tq_mtp_vocab *vocab, int64_t rows, const float *logits,
                           const float *pre, const int32_t *teacher_ids, const float *teacher_probs,
                           const int64_t *teacher_rows, const tq_mtp_loss_params *params, double coefficient,
                           row_scratch *scratch, float *d_pre, double *row_kl, int *row_correct, double *row_dropped,
                           int *row_failed)
{
    const int H = model->config.hidden;
    const int64_t V = scored_entries(model, vocab);
    const tq_weight *embedding = scored_rows(model, vocab);
    const float cap = model->config.final_logit_softcap;
    const int K = params->top_k;
    const int M = params->student_top_m;

#pragma omp parallel for schedule(dynamic)
    for (int64_t r = 0; r < rows; r++) {
        const float *z = logits + r * V;
        const int32_t *p_ids = teacher_ids + teacher_rows[r] * K;
        const float *p_vals = teacher_probs + teacher_rows[r] * K;
        row_scratch *s = &scratch[r];
        const double lse = log_sum_exp(z, V);

        /* The student's top M; its first entry is the argmax. */
        select_top_k(z, V, M, s->student_ids, s->student_vals);
        row_correct[r] = s->student_ids[0] == p_ids[0];

        double kl = 0.0;
        double covered = 0.0;
        float *dg = d_pre + r * H; /* dL/dg first, turned into dL/dpre below */
        memset(dg, 0, (size_t)H * sizeof(float));
        for (int i = 0; i < K + M; i++) {
            int32_t id;
            double p = 0.0;
            if (i < K) {
                id = p_ids[i];
                p = p_vals[i];
            } else {
                id = s->student_ids[i - K];
                int in_teacher = 0;
                for (int j = 0; j < K && !in_teacher; j++) {
                    in_teacher = p_ids[j] == id;
                }
                if (in_teacher) {
                    continue;
                }
            }
            const double log_q = (double)z[id] - lse;
            const double q = exp(log_q);
            covered += q;
            if (p > 0.0) {
                kl += p * (log(p) - log_q);
            }
            double dz = coefficient * (q - p);
            if (cap > 0.0f) {
                /* z = cap * tanh(raw / cap), so dz/draw = 1 - (z / cap)^2. */
                const double t = (double)z[id] / cap;
                dz *= 1.0 - t * t;
            }
            if (tq_weight_get_row(embedding, id, s->embedding_row, NULL) != TQ_OK) {
                row_failed[r] = 1;
                continue;
            }
            for (int o = 0; o < H; o++) {
                dg[o] += (float)dz * s->embedding_row[o];
            }
        }
        row_kl[r] = kl;
        row_dropped[r] = 1.0 - covered > 0.0 ? 1.0 - covered : 0.0;

        /* g = h + SiLU(pre): dg/dpre = s (1 + pre (1 - s)) with s = sigmoid(pre). */
        const float *a = pre + r * H;
        for (int o = 0; o < H; o++) {
            const float sg = sigmoid(a[o]);
            dg[o] *= sg * (1.0f + a[o] * (1.0f - sg));
        }
    }
}

tq_status tq_mtp_loss_grad(const tq_model *model, const tq_mtp_heads *heads, const float *hidden, int64_t n_seqs,
                           int64_t seq_len, const int32_t *teacher_ids, const float *teacher_probs,
                           const tq_mtp_loss_params *params, float *grad_weight, float *grad_bias,
                           tq_mtp_stats *stats, tq_error *err)
{
    tq_status status = check_heads(model, heads, err);
    if (status != TQ_OK) {
        return status;
    }
    const int H = heads->hidden;
    const int64_t V = scored_entries(model, heads->vocab);
    if (params == NULL || hidden == NULL || teacher_ids == NULL || teacher_probs == NULL || grad_weight == NULL ||
        grad_bias == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "an input or output array of tq_mtp_loss_grad is NULL");
    }
    if (n_seqs < 1) {
        return tq_error_set(err, TQ_ERR_INVALID, "n_seqs is %lld; pass at least one sequence", (long long)n_seqs);
    }
    if (seq_len < heads->n_heads + 1) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "seq_len is %lld but %d heads need at least %d positions per sequence",
                            (long long)seq_len, heads->n_heads, heads->n_heads + 1);
    }
    const int K = params->top_k;
    if (K < 1 || K > V || params->student_top_m < 1) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "top_k is %d and student_top_m is %d; pass top_k in [1, %lld] and student_top_m >= 1", K,
                            params->student_top_m, (long long)V);
    }
    /* A set larger than the vocabulary is the whole vocabulary (an exact gradient). */
    const int M = params->student_top_m < V ? params->student_top_m : (int)V;
    tq_mtp_loss_params clamped = *params;
    clamped.student_top_m = M;
    params = &clamped;
    if (!(params->head_decay > 0.0f) || !isfinite(params->head_decay)) {
        return tq_error_set(err, TQ_ERR_INVALID, "head_decay is %g; pass a positive finite weight",
                            (double)params->head_decay);
    }
    const int64_t n = n_seqs * seq_len;
    for (int64_t i = 0; i < n * K; i++) {
        if (teacher_ids[i] < 0 || teacher_ids[i] >= V) {
            return tq_error_set(err, TQ_ERR_INVALID,
                                "teacher id %d at index %lld is outside the scored entries [0, %lld)", teacher_ids[i],
                                (long long)i, (long long)V);
        }
        if (!(teacher_probs[i] >= 0.0f) || !isfinite(teacher_probs[i])) {
            return tq_error_set(err, TQ_ERR_INVALID, "teacher probability %g at index %lld is not in [0, 1]",
                                (double)teacher_probs[i], (long long)i);
        }
    }

    /* One block for every buffer of a chunk. */
    const size_t R = MTP_CHUNK_ROWS;
    size_t logits_floats = 0;
    if (!tq_mul_size(R, (size_t)V, &logits_floats)) {
        return tq_error_set(err, TQ_ERR_NOMEM, "vocabulary of %lld tokens is too large", (long long)V);
    }
    const size_t row_floats = R * (size_t)H;
    float *logits = malloc(logits_floats * sizeof(float));
    float *buffers = malloc(4 * row_floats * sizeof(float));
    int64_t *teacher_rows = malloc(R * sizeof(int64_t));
    row_scratch *scratch = calloc(R, sizeof(row_scratch));
    double *row_kl = malloc(R * sizeof(double));
    double *row_dropped = malloc(R * sizeof(double));
    int *row_correct = malloc(R * sizeof(int));
    int *row_failed = calloc(R, sizeof(int));
    int32_t *student_ids = malloc(R * (size_t)M * sizeof(int32_t));
    float *student_vals = malloc(R * (size_t)M * sizeof(float));
    float *embedding_rows = malloc(row_floats * sizeof(float));
    if (logits == NULL || buffers == NULL || teacher_rows == NULL || scratch == NULL || row_kl == NULL ||
        row_dropped == NULL || row_correct == NULL || row_failed == NULL || student_ids == NULL ||
        student_vals == NULL || embedding_rows == NULL) {
        status = tq_error_set(err, TQ_ERR_NOMEM, "cannot allocate the buffers of a training step (%zu logits)",
                              logits_floats);
        goto done;
    }
    for (size_t r = 0; r < R; r++) {
        scratch[r].student_ids = student_ids + r * M;
        scratch[r].student_vals = student_vals + r * M;
        scratch[r].embedding_row = embedding_rows + r * H;
    }
    float *h_rows = buffers;
    float *pre = buffers + row_floats;
    float *g = buffers + 2 * row_floats;
    float *d_pre = buffers + 3 * row_floats;

    tq_mtp_stats local;
    memset(&local, 0, sizeof(local));
    double head_weight = 1.0;
    for (int k = 0; k < heads->n_heads; k++, head_weight *= params->head_decay) {
        const float *w = heads->weight + (size_t)k * H * H;
        const float *b = heads->bias + (size_t)k * H;
        float *gw = grad_weight + (size_t)k * H * H;
        float *gb = grad_bias + (size_t)k * H;
        const int64_t per_seq = seq_len - 1 - k;
        const int64_t total = n_seqs * per_seq;
        const double coefficient = head_weight / (double)total;
        double kl_sum = 0.0, dropped_sum = 0.0;
        int64_t correct = 0;

        for (int64_t first = 0; first < total; first += (int64_t)R) {
            const int64_t rows = total - first < (int64_t)R ? total - first : (int64_t)R;
            for (int64_t r = 0; r < rows; r++) {
                const int64_t index = first + r;
                const int64_t row = (index / per_seq) * seq_len + index % per_seq;
                memcpy(h_rows + r * H, hidden + row * H, (size_t)H * sizeof(float));
                teacher_rows[r] = row + 1 + k;
            }
            heads_residual(w, b, H, h_rows, rows, pre, g);
            if ((status = lm_head_matmul(model, heads->vocab, g, logits, rows, err)) != TQ_OK) {
                goto done;
            }
            apply_softcap(logits, rows * V, model->config.final_logit_softcap);
            chunk_backward(model, heads->vocab, rows, logits, pre, teacher_ids, teacher_probs, teacher_rows, params,
                           coefficient, scratch, d_pre, row_kl, row_correct, row_dropped, row_failed);
            for (int64_t r = 0; r < rows; r++) {
                if (row_failed[r]) {
                    status = tq_error_set(err, TQ_ERR_FORMAT, "cannot read a row of the LM head");
                    goto done;
                }
                kl_sum += row_kl[r];
                dropped_sum += row_dropped[r];
                correct += row_correct[r];
            }

            /* dW[o][i] += sum_r dpre[r][o] h[r][i] and db[o] += sum_r dpre[r][o]. */
#pragma omp parallel for
            for (int o = 0; o < H; o++) {
                float *gw_row = gw + (size_t)o * H;
                for (int64_t r = 0; r < rows; r++) {
                    const float d = d_pre[r * H + o];
                    const float *x = h_rows + r * H;
                    for (int i = 0; i < H; i++) {
                        gw_row[i] += d * x[i];
                    }
                    gb[o] += d;
                }
            }
        }
        local.kl[k] = kl_sum / (double)total;
        local.dropped_mass[k] = dropped_sum / (double)total;
        local.rows[k] = total;
        local.correct[k] = correct;
        local.loss += head_weight * local.kl[k];
    }
    if (stats != NULL) {
        *stats = local;
    }

done:
    free(logits);
    free(buffers);
    free(teacher_rows);
    free(scratch);
    free(row_kl);
    free(row_dropped);
    free(row_correct);
    free(row_failed);
    free(student_ids);
    free(student_vals);
    free(embedding_rows);
    return status;
}

/* ---- Optimizer ----------------------------------------------------------------- */

double tq_mtp_learning_rate(int64_t step, int64_t warmup, int64_t total_steps, double lr_max, double lr_min)
{
    if (step < warmup) {
        return lr_max * (double)(step + 1) / (double)warmup;
    }
    const int64_t decay_steps = total_steps - warmup;
    if (decay_steps <= 0 || step >= total_steps) {
        return lr_min;
    }
    const double progress = (double)(step - warmup) / (double)decay_steps;
    return lr_min + 0.5 * (lr_max - lr_min) * (1.0 + cos(M_PI * progress));
}

double tq_mtp_clip_grad_norm(float *const *grads, const int64_t *sizes, int count, double max_norm)
{
    double sum = 0.0;
    for (int a = 0; a < count; a++) {
        for (int64_t i = 0; i < sizes[a]; i++) {
            sum += (double)grads[a][i] * grads[a][i];
        }
    }
    const double norm = sqrt(sum);
    if (max_norm > 0.0 && norm > max_norm) {
        const float scale = (float)(max_norm / (norm + 1e-6));
        for (int a = 0; a < count; a++) {
            for (int64_t i = 0; i < sizes[a]; i++) {
                grads[a][i] *= scale;
            }
        }
    }
    return norm;
}

tq_status tq_mtp_adamw_update(float *param, const float *grad, float *m, float *v, int64_t size,
                              const tq_mtp_adamw *opt, int64_t step, tq_error *err)
{
    if (step < 1) {
        return tq_error_set(err, TQ_ERR_INVALID, "step is %lld; AdamW counts updates from 1", (long long)step);
    }
    if (size < 0) {
        return tq_error_set(err, TQ_ERR_INVALID, "size is %lld; pass a count >= 0", (long long)size);
    }
    if (!isfinite(opt->lr) || !isfinite(opt->beta1) || !isfinite(opt->beta2) || !isfinite(opt->eps) ||
        !isfinite(opt->weight_decay) || opt->beta1 < 0.0 || opt->beta1 >= 1.0 || opt->beta2 < 0.0 ||
        opt->beta2 >= 1.0 || opt->eps <= 0.0) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "AdamW settings lr=%g beta1=%g beta2=%g eps=%g weight_decay=%g are invalid; betas must "
                            "be in [0, 1) and eps positive",
                            opt->lr, opt->beta1, opt->beta2, opt->eps, opt->weight_decay);
    }
    const double correction1 = 1.0 - pow(opt->beta1, (double)step);
    const double correction2 = 1.0 - pow(opt->beta2, (double)step);
    const float b1 = (float)opt->beta1, b2 = (float)opt->beta2;
    const float step_size = (float)(opt->lr / correction1);
    const float inv_sqrt_c2 = (float)(1.0 / sqrt(correction2));
    const float eps = (float)opt->eps;
    const float decay = (float)(1.0 - opt->lr * opt->weight_decay);
#pragma omp parallel for if (size > 65536)
    for (int64_t i = 0; i < size; i++) {
        const float gi = grad[i];
        m[i] = b1 * m[i] + (1.0f - b1) * gi;
        v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        param[i] = param[i] * decay - step_size * m[i] / (sqrtf(v[i]) * inv_sqrt_c2 + eps);
    }
    return TQ_OK;
}
