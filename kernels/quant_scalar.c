/* Scalar reference kernels of the quantizer module (see quant_kernels.h). */
#include "quant_kernels.h"

#include <string.h>

static void fwht_scalar(float *x, size_t n)
{
    for (size_t half = 1; half < n; half <<= 1) {
        for (size_t start = 0; start < n; start += 2 * half) {
            for (size_t j = start; j < start + half; j++) {
                const float a = x[j];
                const float b = x[j + half];
                x[j] = a + b;
                x[j + half] = a - b;
            }
        }
    }
}

static double sum_squares_scalar(const float *x, size_t n)
{
    double partial[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int k = 0; k < 8; k++) {
            partial[k] += (double)x[i + k] * (double)x[i + k];
        }
    }
    for (; i < n; i++) {
        partial[0] += (double)x[i] * (double)x[i];
    }
    return ((partial[0] + partial[1]) + (partial[2] + partial[3])) + ((partial[4] + partial[5]) + (partial[6] + partial[7]));
}

static void matvec_scalar(const float *m, const float *x, float *y, size_t rows, size_t cols)
{
    for (size_t r = 0; r < rows; r++) {
        const float *row = m + r * cols;
        float sum = 0.0f;
        for (size_t c = 0; c < cols; c++) {
            sum += row[c] * x[c];
        }
        y[r] = sum;
    }
}

static void encode_scalar(const float *x, size_t count, int bits, const float *boundaries, uint8_t *out)
{
    const int n_boundaries = (1 << bits) - 1;
    memset(out, 0, (count * (size_t)bits + 7) / 8);
    for (size_t i = 0; i < count; i++) {
        unsigned code = 0;
        for (int k = 0; k < n_boundaries; k++) {
            code += x[i] > boundaries[k];
        }
        const size_t bit = i * (size_t)bits;
        /* A code of at most 4 bits spans at most two bytes. */
        const unsigned shifted = code << (bit & 7);
        out[bit >> 3] |= (uint8_t)(shifted & 0xFF);
        if ((bit & 7) + (size_t)bits > 8) {
            out[(bit >> 3) + 1] |= (uint8_t)(shifted >> 8);
        }
    }
}

static unsigned read_code(const uint8_t *codes, size_t i, int bits)
{
    const size_t bit = i * (size_t)bits;
    unsigned word = codes[bit >> 3];
    if ((bit & 7) + (size_t)bits > 8) {
        word |= (unsigned)codes[(bit >> 3) + 1] << 8;
    }
    return (word >> (bit & 7)) & ((1u << bits) - 1u);
}

static void decode_scalar(const uint8_t *codes, size_t count, int bits, const float *table, float *out)
{
    for (size_t i = 0; i < count; i++) {
        out[i] = table[read_code(codes, i, bits)];
    }
}

static float dot_scalar(const uint8_t *codes, size_t count, int bits, const float *table, const float *q)
{
    float sum = 0.0f;
    for (size_t i = 0; i < count; i++) {
        sum += q[i] * table[read_code(codes, i, bits)];
    }
    return sum;
}

static void dot_rows_scalar(const uint8_t *codes, size_t row_bytes, size_t n_rows, size_t count, int bits,
                            const float *table, const float *q, float *out)
{
    for (size_t r = 0; r < n_rows; r++) {
        out[r] = dot_scalar(codes + r * row_bytes, count, bits, table, q);
    }
}

const tq_quant_kernels tq_quant_kernels_scalar = {
    .fwht = fwht_scalar,
    .sum_squares = sum_squares_scalar,
    .matvec = matvec_scalar,
    .encode = encode_scalar,
    .decode = decode_scalar,
    .dot = dot_scalar,
    .dot_rows = dot_rows_scalar,
};
