/* Matrix products with unquantized activations (see tq_matmul_exact in weights.h). */
#include <stdlib.h>

#include "weights.h"

/* Dot product with 16 independent float accumulators, so the compiler can vectorise
 * it without -ffast-math. Its rounding error is that of a float32 BLAS dot product. */
static float dot_f32(const float *a, const float *b, int64_t n)
{
    enum { LANES = 16 };
    float lanes[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        for (int l = 0; l < LANES; l++) {
            lanes[l] += a[i + l] * b[i + l];
        }
    }
    double sum = 0.0;
    for (int l = 0; l < LANES; l++) {
        sum += lanes[l];
    }
    for (; i < n; i++) {
        sum += (double)a[i] * (double)b[i];
    }
    return (float)sum;
}

tq_status tq_matmul_exact(const tq_weight *w, const float *x, float *y, int64_t n_tokens, tq_error *err)
{
    if (w == NULL || x == NULL || y == NULL || n_tokens < 0) {
        return tq_error_set(err, TQ_ERR_INVALID, "tq_matmul_exact: invalid arguments (n_tokens %lld)",
                            (long long)n_tokens);
    }
    if (n_tokens == 0 || w->n_out == 0) {
        return TQ_OK;
    }

    const int64_t n_in = w->n_in;
    const int64_t n_out = w->n_out;
    int failed = 0;

#pragma omp parallel reduction(| : failed)
    {
        /* One dequantized row per thread, reused for every row that thread computes. */
        float *row = malloc((size_t)n_in * sizeof(float));
        if (row == NULL) {
            failed = 1;
        }

#pragma omp for schedule(static)
        for (int64_t o = 0; o < n_out; o++) {
            if (row == NULL) {
                continue;
            }
            if (tq_dequantize_row((int)w->type, (const uint8_t *)w->data + (size_t)o * w->row_bytes, row, n_in,
                                  NULL) != TQ_OK) {
                failed = 1;
                continue;
            }
            for (int64_t t = 0; t < n_tokens; t++) {
                y[t * n_out + o] = dot_f32(row, x + t * n_in, n_in);
            }
        }
        free(row);
    }

    if (failed) {
        return tq_error_set(err, TQ_ERR_NOMEM,
                            "tq_matmul_exact: out of memory or undecodable row (type %d, %lld values per row)",
                            (int)w->type, (long long)n_in);
    }
    return TQ_OK;
}
