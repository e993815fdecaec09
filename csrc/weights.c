/* GGML type table, scalar dequantization, and the threaded matrix product. */
#include "weights.h"

#include <stdint.h>
#include <string.h>

#include "blocks.h"
#include "matmul_kernels.h"

/* Format that activation rows are converted to before the dot products. */
typedef enum {
    ACT_NONE = 0, /* type not supported */
    ACT_F32,      /* float weights: the activation stays float */
    ACT_Q8_0,
    ACT_Q8_K
} activation_format;

typedef struct {
    const char *name;
    int64_t block_size;
    size_t block_bytes;
    activation_format activation;
} type_traits;

/* Indexed by GGML type id. Q8_1, Q2_K, Q3_K and Q8_K are named for messages but
 * have no dequantizer or kernel here; Q8_K is only an activation format. */
static const type_traits traits[] = {
    [TQ_TYPE_F32] = {"f32", 1, 4, ACT_F32},
    [TQ_TYPE_F16] = {"f16", 1, 2, ACT_F32},
    [TQ_TYPE_Q4_0] = {"q4_0", TQ_QK4_0, sizeof(tq_block_q4_0), ACT_Q8_0},
    [TQ_TYPE_Q4_1] = {"q4_1", TQ_QK4_1, sizeof(tq_block_q4_1), ACT_Q8_0},
    [TQ_TYPE_Q5_0] = {"q5_0", TQ_QK5_0, sizeof(tq_block_q5_0), ACT_Q8_0},
    [TQ_TYPE_Q5_1] = {"q5_1", TQ_QK5_1, sizeof(tq_block_q5_1), ACT_Q8_0},
    [TQ_TYPE_Q8_0] = {"q8_0", TQ_QK8_0, sizeof(tq_block_q8_0), ACT_Q8_0},
    [TQ_TYPE_Q8_1] = {"q8_1", 0, 0, ACT_NONE},
    [TQ_TYPE_Q2_K] = {"q2_K", 0, 0, ACT_NONE},
    [TQ_TYPE_Q3_K] = {"q3_K", 0, 0, ACT_NONE},
    [TQ_TYPE_Q4_K] = {"q4_K", TQ_QK_K, sizeof(tq_block_q4_K), ACT_Q8_K},
    [TQ_TYPE_Q5_K] = {"q5_K", TQ_QK_K, sizeof(tq_block_q5_K), ACT_Q8_K},
    [TQ_TYPE_Q6_K] = {"q6_K", TQ_QK_K, sizeof(tq_block_q6_K), ACT_Q8_K},
    [TQ_TYPE_Q8_K] = {"q8_K", 0, 0, ACT_NONE},
    [TQ_TYPE_BF16] = {"bf16", 1, 2, ACT_F32},
};

#define N_TRAITS ((int)(sizeof(traits) / sizeof(traits[0])))

static const type_traits *lookup(int type)
{
    if (type < 0 || type >= N_TRAITS || traits[type].name == NULL) {
        return NULL;
    }
    return &traits[type];
}

const char *tq_type_name(int type)
{
    const type_traits *t = lookup(type);
    return t ? t->name : "unknown";
}

int64_t tq_type_block_size(int type)
{
    const type_traits *t = lookup(type);
    return (t && t->activation != ACT_NONE) ? t->block_size : 0;
}

size_t tq_type_block_bytes(int type)
{
    const type_traits *t = lookup(type);
    return (t && t->activation != ACT_NONE) ? t->block_bytes : 0;
}

int tq_type_supported(int type)
{
    const type_traits *t = lookup(type);
    return t != NULL && t->activation != ACT_NONE;
}

static tq_status check_supported(int type, tq_error *err)
{
    if (!tq_type_supported(type)) {
        return tq_error_set(err, TQ_ERR_UNSUPPORTED,
                            "GGML type %d (%s) is not supported; supported types are f32, f16, bf16, q4_0, q4_1, "
                            "q5_0, q5_1, q8_0, q4_K, q5_K and q6_K",
                            type, tq_type_name(type));
    }
    return TQ_OK;
}

tq_status tq_type_row_bytes(int type, int64_t n, size_t *out, tq_error *err)
{
    tq_status status = check_supported(type, err);
    if (status != TQ_OK) {
        return status;
    }
    const type_traits *t = &traits[type];
    if (n < 0 || n % t->block_size != 0) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "row length %lld is not a multiple of the %s block size %lld; pad or pick another type",
                            (long long)n, t->name, (long long)t->block_size);
    }
    if (!tq_mul_size((size_t)(n / t->block_size), t->block_bytes, out)) {
        return tq_error_set(err, TQ_ERR_INVALID, "row of %lld %s values is too large for size_t", (long long)n,
                            t->name);
    }
    return TQ_OK;
}

/* ---- Dequantization (scalar reference). Operation order matches the gguf
 * package's NumPy dequantizers, so results are bit-exact with them. ---- */

static void dequantize_q4_0(const tq_block_q4_0 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += TQ_QK4_0) {
        const float d = tq_fp16_to_fp32(b[i].d);
        for (int j = 0; j < TQ_QK4_0 / 2; j++) {
            y[j] = d * (float)((b[i].qs[j] & 0xF) - 8);
            y[j + 16] = d * (float)((b[i].qs[j] >> 4) - 8);
        }
    }
}

static void dequantize_q4_1(const tq_block_q4_1 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += TQ_QK4_1) {
        const float d = tq_fp16_to_fp32(b[i].d);
        const float m = tq_fp16_to_fp32(b[i].m);
        for (int j = 0; j < TQ_QK4_1 / 2; j++) {
            y[j] = d * (float)(b[i].qs[j] & 0xF) + m;
            y[j + 16] = d * (float)(b[i].qs[j] >> 4) + m;
        }
    }
}

static void dequantize_q5_0(const tq_block_q5_0 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += TQ_QK5_0) {
        const float d = tq_fp16_to_fp32(b[i].d);
        const uint32_t qh = tq_load_u32_le(b[i].qh);
        for (int j = 0; j < TQ_QK5_0 / 2; j++) {
            const int q0 = (b[i].qs[j] & 0xF) | (int)(((qh >> j) & 1) << 4);
            const int q1 = (b[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            y[j] = d * (float)(q0 - 16);
            y[j + 16] = d * (float)(q1 - 16);
        }
    }
}

static void dequantize_q5_1(const tq_block_q5_1 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += TQ_QK5_1) {
        const float d = tq_fp16_to_fp32(b[i].d);
        const float m = tq_fp16_to_fp32(b[i].m);
        const uint32_t qh = tq_load_u32_le(b[i].qh);
        for (int j = 0; j < TQ_QK5_1 / 2; j++) {
            const int q0 = (b[i].qs[j] & 0xF) | (int)(((qh >> j) & 1) << 4);
            const int q1 = (b[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            y[j] = d * (float)q0 + m;
            y[j + 16] = d * (float)q1 + m;
        }
    }
}

static void dequantize_q8_0(const tq_block_q8_0 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += TQ_QK8_0) {
        const float d = tq_fp16_to_fp32(b[i].d);
        for (int j = 0; j < TQ_QK8_0; j++) {
            y[j] = d * (float)b[i].qs[j];
        }
    }
}

static void dequantize_q4_K(const tq_block_q4_K *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        const float d = tq_fp16_to_fp32(b[i].d);
        const float dmin = tq_fp16_to_fp32(b[i].dmin);
        for (int j = 0; j < 4; j++, y += 64) {
            uint8_t sc0, m0, sc1, m1;
            tq_get_scale_min_k4(2 * j, b[i].scales, &sc0, &m0);
            tq_get_scale_min_k4(2 * j + 1, b[i].scales, &sc1, &m1);
            const float d0 = d * (float)sc0, min0 = dmin * (float)m0;
            const float d1 = d * (float)sc1, min1 = dmin * (float)m1;
            const uint8_t *q = b[i].qs + 32 * j;
            for (int l = 0; l < 32; l++) {
                y[l] = d0 * (float)(q[l] & 0xF) - min0;
                y[l + 32] = d1 * (float)(q[l] >> 4) - min1;
            }
        }
    }
}

static void dequantize_q5_K(const tq_block_q5_K *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        const float d = tq_fp16_to_fp32(b[i].d);
        const float dmin = tq_fp16_to_fp32(b[i].dmin);
        for (int j = 0; j < 4; j++, y += 64) {
            uint8_t sc0, m0, sc1, m1;
            tq_get_scale_min_k4(2 * j, b[i].scales, &sc0, &m0);
            tq_get_scale_min_k4(2 * j + 1, b[i].scales, &sc1, &m1);
            const float d0 = d * (float)sc0, min0 = dmin * (float)m0;
            const float d1 = d * (float)sc1, min1 = dmin * (float)m1;
            const uint8_t *q = b[i].qs + 32 * j;
            for (int l = 0; l < 32; l++) {
                const int q_lo = (q[l] & 0xF) | (((b[i].qh[l] >> (2 * j)) & 1) << 4);
                const int q_hi = (q[l] >> 4) | (((b[i].qh[l] >> (2 * j + 1)) & 1) << 4);
                y[l] = d0 * (float)q_lo - min0;
                y[l + 32] = d1 * (float)q_hi - min1;
            }
        }
    }
}

static void dequantize_q6_K(const tq_block_q6_K *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        const float d = tq_fp16_to_fp32(b[i].d);
        for (int half = 0; half < 2; half++, y += 128) {
            const uint8_t *ql = b[i].ql + 64 * half;
            const uint8_t *qh = b[i].qh + 32 * half;
            const int8_t *sc = b[i].scales + 8 * half;
            for (int k = 0; k < 4; k++) {
                const uint8_t *low = ql + ((k & 1) ? 32 : 0);
                const int shift = (k < 2) ? 0 : 4;
                for (int l = 0; l < 32; l++) {
                    const int q = ((low[l] >> shift) & 0xF) | (((qh[l] >> (2 * k)) & 3) << 4);
                    const float ds = d * (float)sc[2 * k + l / 16];
                    y[32 * k + l] = ds * (float)(q - 32);
                }
            }
        }
    }
}

tq_status tq_dequantize_row(int type, const void *src, float *dst, int64_t n, tq_error *err)
{
    size_t row_bytes;
    tq_status status = tq_type_row_bytes(type, n, &row_bytes, err);
    if (status != TQ_OK) {
        return status;
    }
    if (n > 0 && (src == NULL || dst == NULL)) {
        return tq_error_set(err, TQ_ERR_INVALID, "tq_dequantize_row: src and dst must not be NULL");
    }
    const int64_t nb = n / traits[type].block_size;
    switch ((tq_ggml_type)type) {
    case TQ_TYPE_F32:
        memcpy(dst, src, row_bytes);
        break;
    case TQ_TYPE_F16: {
        const tq_fp16 *h = (const tq_fp16 *)src;
        for (int64_t i = 0; i < n; i++) {
            dst[i] = tq_fp16_to_fp32(h[i]);
        }
        break;
    }
    case TQ_TYPE_BF16: {
        const tq_bf16 *h = (const tq_bf16 *)src;
        for (int64_t i = 0; i < n; i++) {
            dst[i] = tq_bf16_to_fp32(h[i]);
        }
        break;
    }
    case TQ_TYPE_Q4_0:
        dequantize_q4_0(src, dst, nb);
        break;
    case TQ_TYPE_Q4_1:
        dequantize_q4_1(src, dst, nb);
        break;
    case TQ_TYPE_Q5_0:
        dequantize_q5_0(src, dst, nb);
        break;
    case TQ_TYPE_Q5_1:
        dequantize_q5_1(src, dst, nb);
        break;
    case TQ_TYPE_Q8_0:
        dequantize_q8_0(src, dst, nb);
        break;
    case TQ_TYPE_Q4_K:
        dequantize_q4_K(src, dst, nb);
        break;
    case TQ_TYPE_Q5_K:
        dequantize_q5_K(src, dst, nb);
        break;
    case TQ_TYPE_Q6_K:
        dequantize_q6_K(src, dst, nb);
        break;
    default:
        return check_supported(-1, err);
    }
    return TQ_OK;
}

tq_status tq_weight_init(tq_weight *w, int type, int64_t n_in, int64_t n_out, const void *data, tq_error *err)
{
    if (w == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "tq_weight_init: w must not be NULL");
    }
    memset(w, 0, sizeof(*w));
    size_t row_bytes;
    tq_status status = tq_type_row_bytes(type, n_in, &row_bytes, err);
    if (status != TQ_OK) {
        return status;
    }
    if (n_in <= 0 || n_out <= 0) {
        return tq_error_set(err, TQ_ERR_INVALID, "weight shape n_in=%lld, n_out=%lld must be positive",
                            (long long)n_in, (long long)n_out);
    }
    size_t total;
    if (!tq_mul_size(row_bytes, (size_t)n_out, &total)) {
        return tq_error_set(err, TQ_ERR_INVALID, "weight of %lld rows of %zu bytes is too large for size_t",
                            (long long)n_out, row_bytes);
    }
    if (data == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "tq_weight_init: data must not be NULL");
    }
    w->type = (tq_ggml_type)type;
    w->n_in = n_in;
    w->n_out = n_out;
    w->row_bytes = row_bytes;
    w->data = data;
    return TQ_OK;
}

tq_status tq_weight_get_row(const tq_weight *w, int64_t row, float *dst, tq_error *err)
{
    if (w == NULL || w->data == NULL || dst == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "tq_weight_get_row: w, its data and dst must not be NULL");
    }
    if (row < 0 || row >= w->n_out) {
        return tq_error_set(err, TQ_ERR_RANGE, "row %lld is out of range for a weight with %lld rows",
                            (long long)row, (long long)w->n_out);
    }
    const uint8_t *src = (const uint8_t *)w->data + (size_t)row * w->row_bytes;
    return tq_dequantize_row(w->type, src, dst, w->n_in, err);
}

/* ---- Matrix product ---- */

#define MAX_CHUNK_ROWS 64

/* Rows per work item: enough that a chunk of weights stays in a 32 KiB L1 data
 * cache while every token of a tile passes over it, but small enough that both
 * threads get many chunks. */
static int64_t rows_per_chunk(const tq_weight *w)
{
    int64_t rows = (int64_t)(16384 / (w->row_bytes ? w->row_bytes : 1));
    if (rows < 4) {
        rows = 4;
    }
    if (rows > MAX_CHUNK_ROWS) {
        rows = MAX_CHUNK_ROWS;
    }
    while (rows > 4 && w->n_out / rows < 16) {
        rows /= 2;
    }
    return rows;
}

/* Tokens per tile: the quantized activation rows of one tile (16 x 680 bytes for
 * n_in = 640 with Q8_0) stay in L1 next to the weight chunk while every row of the
 * chunk passes over them. */
#define TOKENS_PER_TILE 16

/* Blocking of the blocked product, sized for a 1 MiB L2 per core. Packed rows
 * of 640 inputs take 1280 bytes for weights and 1920 bytes for activations.
 * - A work item is a chunk of GEMM_CHUNK_ROWS rows (80 KiB packed) times one
 *   block of GEMM_BLOCK_TOKENS tokens (270 KiB packed), so both stay in L2
 *   while the register tiles pass over them. Without token blocks, every chunk
 *   would stream all activations (15 MiB at 8192 tokens) from memory.
 * - Weights are repacked once per call, up to GEMM_PACKED_BYTES at a time.
 * - Results go through a tile of GEMM_TILE_TOKENS tokens, because writing y
 *   directly touches one line per token at a stride of n_out floats, which for
 *   power-of-two n_out maps all tokens to a few cache sets.
 * Both token counts are multiples of the kernel's 3-token register tile. */
#define GEMM_CHUNK_ROWS 64
#define GEMM_BLOCK_TOKENS 144
#define GEMM_TILE_TOKENS 48
#define GEMM_PACKED_BYTES ((size_t)8 << 20)

/* Computes the rows of chunk c of a packed row range starting at row s0. */
static void gemm_chunk(const tq_gemm_kernels *gemm, const tq_weight *w, const uint8_t *packed_w, size_t packed_w_row,
                       int64_t s0, int64_t range_rows, int64_t c, const uint8_t *packed_x, size_t packed_x_row,
                       int64_t t_begin, int64_t t_end, float *y)
{
    float tile[GEMM_TILE_TOKENS * GEMM_CHUNK_ROWS];
    const int64_t n_out = w->n_out;
    const int64_t r0 = c * GEMM_CHUNK_ROWS;
    const int64_t rows = r0 + GEMM_CHUNK_ROWS < range_rows ? GEMM_CHUNK_ROWS : range_rows - r0;
    const uint8_t *chunk_w = packed_w + (size_t)r0 * packed_w_row;
    for (int64_t t0 = t_begin; t0 < t_end; t0 += GEMM_TILE_TOKENS) {
        const int64_t tokens = t0 + GEMM_TILE_TOKENS < t_end ? GEMM_TILE_TOKENS : t_end - t0;
        gemm->gemm_rows(w->type, w->n_in, chunk_w, rows, packed_x + (size_t)t0 * packed_x_row, tokens, tile, rows);
        for (int64_t t = 0; t < tokens; t++) {
            memcpy(y + (t0 + t) * n_out + s0 + r0, &tile[t * rows], (size_t)rows * sizeof(float));
        }
    }
}

/* Matrix product through a blocked kernel. Each activation row of x is quantized
 * into act_rows (act_row_bytes per row, n_tokens rows) and then packed. */
static tq_status matmul_blocked(const tq_gemm_kernels *gemm, tq_quantize_row_fn quantize, const tq_weight *w,
                                const float *x, uint8_t *act_rows, size_t act_row_bytes, float *y, int64_t n_tokens,
                                tq_error *err)
{
    const int64_t n_in = w->n_in;
    const int64_t n_out = w->n_out;
    const size_t packed_x_row = gemm->packed_activation_row_bytes(w->type, n_in);
    const size_t packed_w_row = gemm->packed_weight_row_bytes(w->type, n_in);

    /* Rows repacked at a time: a multiple of the chunk size, at least one chunk. */
    int64_t range_rows = (int64_t)(GEMM_PACKED_BYTES / packed_w_row) / GEMM_CHUNK_ROWS * GEMM_CHUNK_ROWS;
    if (range_rows < GEMM_CHUNK_ROWS) {
        range_rows = GEMM_CHUNK_ROWS;
    }
    const int64_t all_rows = (n_out + GEMM_CHUNK_ROWS - 1) / GEMM_CHUNK_ROWS * GEMM_CHUNK_ROWS;
    if (range_rows > all_rows) {
        range_rows = all_rows;
    }
    size_t packed_x_total, packed_w_total;
    if (!tq_mul_size(packed_x_row, (size_t)n_tokens, &packed_x_total) ||
        !tq_mul_size(packed_w_row, (size_t)range_rows, &packed_w_total)) {
        return tq_error_set(err, TQ_ERR_INVALID, "%lld activation rows of %lld values are too many for size_t",
                            (long long)n_tokens, (long long)n_in);
    }
    uint8_t *packed_x = tq_aligned_alloc(packed_x_total);
    uint8_t *packed_w = tq_aligned_alloc(packed_w_total);
    if (packed_x == NULL || packed_w == NULL) {
        tq_aligned_free(packed_x);
        tq_aligned_free(packed_w);
        return tq_error_set(err, TQ_ERR_NOMEM, "cannot allocate %zu bytes for packed operands",
                            packed_x_total + packed_w_total);
    }

    /* One parallel region with one barrier per packed range. On a busy machine
     * a barrier can cost a scheduler time slice, because a thread waits there
     * for a descheduled partner. */
#pragma omp parallel
    {
        for (int64_t s0 = 0; s0 < n_out; s0 += range_rows) {
            const int64_t rows = s0 + range_rows < n_out ? range_rows : n_out - s0;
            const int64_t n_chunks = (rows + GEMM_CHUNK_ROWS - 1) / GEMM_CHUNK_ROWS;
            if (s0 == 0) {
#pragma omp for schedule(static) nowait
                for (int64_t t = 0; t < n_tokens; t++) {
                    uint8_t *q = act_rows + (size_t)t * act_row_bytes;
                    quantize(x + t * w->n_in, q, n_in);
                    gemm->pack_activation_row(w->type, q, n_in, packed_x + (size_t)t * packed_x_row);
                }
            }
#pragma omp for schedule(static)
            for (int64_t c = 0; c < n_chunks; c++) {
                const int64_t r0 = c * GEMM_CHUNK_ROWS;
                const int64_t chunk_rows = r0 + GEMM_CHUNK_ROWS < rows ? GEMM_CHUNK_ROWS : rows - r0;
                const int64_t padded = (chunk_rows + gemm->row_multiple - 1) / gemm->row_multiple * gemm->row_multiple;
                gemm->pack_weight_rows(w->type, (const uint8_t *)w->data + (size_t)(s0 + r0) * w->row_bytes,
                                       w->row_bytes, chunk_rows, padded, n_in, packed_w + (size_t)r0 * packed_w_row);
            }
            /* The loop above ends with a barrier, so every packed row is ready. The
             * token blocks need no barrier between them because they only read
             * packed data, and the barrier below keeps the next range intact. */
            for (int64_t t0 = 0; t0 < n_tokens; t0 += GEMM_BLOCK_TOKENS) {
                const int64_t t1 = t0 + GEMM_BLOCK_TOKENS < n_tokens ? t0 + GEMM_BLOCK_TOKENS : n_tokens;
#pragma omp for schedule(dynamic, 1) nowait
                for (int64_t c = 0; c < n_chunks; c++) {
                    gemm_chunk(gemm, w, packed_w, packed_w_row, s0, rows, c, packed_x, packed_x_row, t0, t1, y);
                }
            }
            if (s0 + range_rows < n_out) {
#pragma omp barrier
            }
        }
    }
    tq_aligned_free(packed_x);
    tq_aligned_free(packed_w);
    return TQ_OK;
}

/* Computes the rows of chunk c (chunk_rows rows from row c * chunk_rows) for every token,
 * through the quantized activation rows acts. */
static void matmul_chunk(const tq_weight *w, const uint8_t *acts, size_t act_row_bytes, float *y, int64_t n_tokens,
                         int64_t chunk_rows, int64_t c, tq_vec_dot_fn vec_dot, tq_vec_dot_x4_fn vec_dot_x4,
                         tq_vec_dot_rows_fn vec_dot_rows)
{
    const uint8_t *weights = (const uint8_t *)w->data;
    const size_t row_bytes = w->row_bytes;
    const int64_t n_in = w->n_in;
    const int64_t n_out = w->n_out;
    const int64_t r0 = c * chunk_rows;
    const int64_t rows = r0 + chunk_rows < n_out ? chunk_rows : n_out - r0;
    const uint8_t *chunk_weights = weights + (size_t)r0 * row_bytes;
    /* Results go to a small tile first: writing y directly would touch one line
     * per token at a stride of n_out floats, which for large power-of-two n_out
     * maps every token to the same cache set. */
    float tile[TOKENS_PER_TILE * MAX_CHUNK_ROWS];
    for (int64_t t0 = 0; t0 < n_tokens; t0 += TOKENS_PER_TILE) {
        const int64_t tokens = t0 + TOKENS_PER_TILE < n_tokens ? TOKENS_PER_TILE : n_tokens - t0;
        const uint8_t *tile_acts = acts + (size_t)t0 * act_row_bytes;
        if (vec_dot_rows != NULL) {
            /* Groups of at most TQ_VEC_DOT_ROWS_MAX_TOKENS tokens, as even as possible (5 tokens
             * as 3 + 2), each reading the chunk's weights once. */
            const int64_t n_groups = (tokens + TQ_VEC_DOT_ROWS_MAX_TOKENS - 1) / TQ_VEC_DOT_ROWS_MAX_TOKENS;
            int64_t t = 0;
            for (int64_t g = 0; g < n_groups; g++) {
                const int64_t groups_left = n_groups - g;
                const int64_t group_tokens = (tokens - t + groups_left - 1) / groups_left;
                vec_dot_rows(n_in, &tile[t * rows], (size_t)rows, chunk_weights, row_bytes, rows, n_out - r0 - rows,
                             tile_acts + (size_t)t * act_row_bytes, act_row_bytes, group_tokens);
                t += group_tokens;
            }
        } else {
            int64_t t = 0;
            if (vec_dot_x4 != NULL) {
                for (; t + 4 <= tokens; t += 4) {
                    const void *a = tile_acts + (size_t)t * act_row_bytes;
                    for (int64_t r = 0; r < rows; r++) {
                        vec_dot_x4(n_in, &tile[t * rows + r], (size_t)rows, chunk_weights + (size_t)r * row_bytes, a,
                                   act_row_bytes);
                    }
                }
            }
            for (; t < tokens; t++) {
                const void *a = tile_acts + (size_t)t * act_row_bytes;
                for (int64_t r = 0; r < rows; r++) {
                    vec_dot(n_in, &tile[t * rows + r], chunk_weights + (size_t)r * row_bytes, a);
                }
            }
        }
        for (int64_t t = 0; t < tokens; t++) {
            memcpy(y + (t0 + t) * n_out + r0, &tile[t * rows], (size_t)rows * sizeof(float));
        }
    }
}

/* Up to this many activation rows, one thread quantizes them instead of a parallel loop. A row
 * of 2048 values takes about 2 us, less than the closing barrier of a parallel region costs
 * when another process shares the cores, because the barrier then waits for a descheduled
 * thread. This was measured on the 2-core Xeon of docs/benchmarks.md with Gemma 3 270M and 2
 * threads while a training job loaded both cores. eval_tree of 2 nodes took 111 to 120 ms with
 * the serial loop and 158 to 163 ms with the parallel one. On the idle machine both took about
 * 21 ms. */
#define QUANTIZE_SERIAL_MAX_TOKENS 8

/* tq_matmul, and with allow_gemm = 0 tq_matmul_per_row. */
static tq_status matmul(tq_isa isa, const tq_weight *w, const float *x, float *y, int64_t n_tokens, int allow_gemm,
                        tq_error *err)
{
    if (w == NULL || w->data == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "tq_matmul: weight is NULL or was not initialised");
    }
    if (n_tokens < 0) {
        return tq_error_set(err, TQ_ERR_INVALID, "n_tokens=%lld must not be negative", (long long)n_tokens);
    }
    if (n_tokens == 0) {
        return TQ_OK;
    }
    if (x == NULL || y == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "tq_matmul: x and y must not be NULL");
    }
    tq_status status = check_supported(w->type, err);
    if (status != TQ_OK) {
        return status;
    }
    const tq_matmul_kernels *kernels = tq_matmul_kernels_for(isa);
    if (kernels == NULL || !tq_isa_supported(isa)) {
        return tq_error_set(err, TQ_ERR_INVALID, "kernel variant '%s' is not available in this build or on this CPU",
                            tq_isa_name(isa));
    }
    const tq_vec_dot_fn vec_dot = kernels->vec_dot[w->type];
    const tq_vec_dot_x4_fn vec_dot_x4 = kernels->vec_dot_x4[w->type];
    const tq_vec_dot_rows_fn vec_dot_rows = kernels->vec_dot_rows[w->type];
    if (vec_dot == NULL) {
        return tq_error_set(err, TQ_ERR_UNSUPPORTED, "no %s kernel for %s weights", tq_isa_name(isa),
                            tq_type_name(w->type));
    }

    const int64_t n_in = w->n_in;
    const int64_t n_out = w->n_out;
    const activation_format act = traits[w->type].activation;

    /* Quantize every activation row once into a scratch buffer owned by this call,
     * so concurrent calls share nothing. Float weights read x directly. */
    const void *act_rows = x;
    size_t act_row_bytes = (size_t)n_in * sizeof(float);
    void *scratch = NULL;
    if (act == ACT_Q8_0 || act == ACT_Q8_K) {
        const int act_type = act == ACT_Q8_0 ? TQ_TYPE_Q8_0 : TQ_TYPE_Q8_K;
        const int64_t block = act == ACT_Q8_0 ? TQ_QK8_0 : TQ_QK_K;
        const size_t block_bytes = act == ACT_Q8_0 ? sizeof(tq_block_q8_0) : sizeof(tq_block_q8_K);
        size_t total;
        act_row_bytes = (size_t)(n_in / block) * block_bytes;
        if (!tq_mul_size(act_row_bytes, (size_t)n_tokens, &total)) {
            return tq_error_set(err, TQ_ERR_INVALID, "%lld activation rows are too many for size_t",
                                (long long)n_tokens);
        }
        scratch = tq_aligned_alloc(total);
        if (scratch == NULL) {
            return tq_error_set(err, TQ_ERR_NOMEM, "cannot allocate %zu bytes for quantized activations", total);
        }
        const tq_quantize_row_fn quantize =
            act_type == TQ_TYPE_Q8_0 ? kernels->quantize_row_q8_0 : kernels->quantize_row_q8_K;
        const tq_gemm_kernels *gemm = tq_gemm_kernels_for(isa);
        if (allow_gemm && gemm != NULL && gemm->supported[w->type] && n_tokens >= gemm->min_tokens) {
            status = matmul_blocked(gemm, quantize, w, x, scratch, act_row_bytes, y, n_tokens, err);
            tq_aligned_free(scratch);
            return status;
        }
#pragma omp parallel for schedule(static) if (n_tokens > QUANTIZE_SERIAL_MAX_TOKENS)
        for (int64_t t = 0; t < n_tokens; t++) {
            quantize(x + t * n_in, (uint8_t *)scratch + (size_t)t * act_row_bytes, n_in);
        }
        act_rows = scratch;
    }


    const uint8_t *acts = (const uint8_t *)act_rows;
    const int64_t chunk_rows = rows_per_chunk(w);
    const int64_t n_chunks = (n_out + chunk_rows - 1) / chunk_rows;

    /* Each work item is a chunk of output rows for every token: its weights are
     * read from memory once and reused from cache for all tokens of a tile. One token
     * (decode) is bound by memory bandwidth, so each thread streams one contiguous
     * range that the hardware prefetchers can follow. With more tokens, chunks are
     * handed out dynamically to balance the compute. */
    if (n_tokens == 1) {
#pragma omp parallel for schedule(static)
        for (int64_t c = 0; c < n_chunks; c++) {
            matmul_chunk(w, acts, act_row_bytes, y, n_tokens, chunk_rows, c, vec_dot, vec_dot_x4, vec_dot_rows);
        }
    } else {
#pragma omp parallel for schedule(dynamic, 1)
        for (int64_t c = 0; c < n_chunks; c++) {
            matmul_chunk(w, acts, act_row_bytes, y, n_tokens, chunk_rows, c, vec_dot, vec_dot_x4, vec_dot_rows);
        }
    }

    tq_aligned_free(scratch);
    return TQ_OK;
}

tq_status tq_matmul(tq_isa isa, const tq_weight *w, const float *x, float *y, int64_t n_tokens, tq_error *err)
{
    return matmul(isa, w, x, y, n_tokens, 1, err);
}

tq_status tq_matmul_per_row(tq_isa isa, const tq_weight *w, const float *x, float *y, int64_t n_tokens,
                            tq_error *err)
{
    return matmul(isa, w, x, y, n_tokens, 0, err);
}
