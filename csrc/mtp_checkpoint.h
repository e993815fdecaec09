/* Checkpoints of Medusa heads (mtp.h): a safetensors file with format
 * "turboquant-mtp-1".
 *
 * Tensors (no others allowed):
 *   heads.weight  F32 or F16 [n_heads, hidden, hidden]  (row = output)
 *   heads.bias    F32 or F16 [n_heads, hidden]
 *   adam.m.weight, adam.v.weight  F32 [n_heads, hidden, hidden]  } all four or none:
 *   adam.m.bias, adam.v.bias      F32 [n_heads, hidden]          } the AdamW moments
 *   heads.vocab   I32 [n_vocab_ids], optional: the draft vocabulary the heads were
 *                 trained to score (mtp.h, tq_mtp_vocab), strictly increasing token ids
 * __metadata__ (string values, all required):
 *   format         "turboquant-mtp-1"
 *   step           optimizer steps taken, decimal
 *   data_position  {"entry": E, "token": T}: the ZIM entry index and token offset
 *                  where training continues
 *   base_model     identity of the base model (turboquant.mtp.base_model_identity)
 *   settings       JSON object of the training settings
 *
 * The parser reads a memory buffer, so it can be fed arbitrary bytes: every size,
 * dtype, shape and metadata value is checked, and values must be finite.
 */
#ifndef TQ_MTP_CHECKPOINT_H
#define TQ_MTP_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "tq_common.h"

#define TQ_MTP_CHECKPOINT_FORMAT "turboquant-mtp-1"

/* Largest hidden size accepted, so that a forged shape cannot request a huge allocation
 * (Gemma 3 27B has 5376). */
#define TQ_MTP_CHECKPOINT_MAX_HIDDEN 16384

/* Largest draft vocabulary accepted (Gemma's whole vocabulary has 262144 tokens). */
#define TQ_MTP_CHECKPOINT_MAX_VOCAB (1 << 20)

typedef struct {
    int n_heads;
    int hidden;
    float *weight; /* [n_heads][hidden][hidden], converted to float32 */
    float *bias;   /* [n_heads][hidden] */
    /* AdamW moments with the same shapes; all NULL when the file has none. */
    float *adam_m_weight, *adam_v_weight, *adam_m_bias, *adam_v_bias;
    int32_t *vocab;        /* heads.vocab, or NULL for the whole vocabulary */
    int64_t n_vocab_ids;   /* its length */
    int64_t step;
    int64_t data_entry; /* data_position.entry */
    int64_t data_token; /* data_position.token */
    char *base_model;
    char *settings; /* JSON text as stored */
} tq_mtp_checkpoint;

/* Parse and validate a checkpoint of size bytes at data. The result owns copies of
 * everything it returns, so data may be freed afterwards; release it with
 * tq_mtp_checkpoint_free. Errors: TQ_ERR_FORMAT (not a valid checkpoint, with the
 * reason), TQ_ERR_NOMEM. */
tq_status tq_mtp_checkpoint_parse(const uint8_t *data, size_t size, tq_mtp_checkpoint **out, tq_error *err);

void tq_mtp_checkpoint_free(tq_mtp_checkpoint *checkpoint);

#endif /* TQ_MTP_CHECKPOINT_H */
