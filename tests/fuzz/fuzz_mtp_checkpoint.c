/* Fuzz target for the checkpoint parser of the Medusa heads
 * (csrc/mtp_checkpoint.c): a safetensors buffer with format "turboquant-mtp-1",
 * whose shapes, dtypes, values and metadata are all checked. On success the
 * parsed sizes must agree with each other and every array is read in full. */
#include <math.h>

#include "fuzz_common.h"
#include "mtp_checkpoint.h"

static volatile float sink;

static void read_all(const float *values, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        FUZZ_CHECK(isfinite(values[i]), "non-finite value at %zu passed the parser", i);
        sink += values[i];
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tq_error err;
    tq_error_clear(&err);
    tq_mtp_checkpoint *checkpoint = NULL;
    const tq_status st = tq_mtp_checkpoint_parse(data, size, &checkpoint, &err);
    if (st != TQ_OK) {
        fuzz_check_failure(st, &err, "tq_mtp_checkpoint_parse");
        FUZZ_CHECK(checkpoint == NULL, "a failed parse returned a checkpoint");
        return 0;
    }

    const tq_mtp_checkpoint *c = checkpoint;
    FUZZ_CHECK(c->n_heads > 0 && c->hidden > 0 && c->hidden <= TQ_MTP_CHECKPOINT_MAX_HIDDEN,
               "n_heads %d, hidden %d", c->n_heads, c->hidden);
    FUZZ_CHECK(c->step >= 0 && c->data_entry >= 0 && c->data_token >= 0, "negative counter");
    FUZZ_CHECK(c->base_model != NULL && c->settings != NULL, "metadata strings missing");
    const size_t weights = (size_t)c->n_heads * (size_t)c->hidden * (size_t)c->hidden;
    const size_t biases = (size_t)c->n_heads * (size_t)c->hidden;
    read_all(c->weight, weights);
    read_all(c->bias, biases);
    const int moments = (c->adam_m_weight != NULL) + (c->adam_v_weight != NULL) + (c->adam_m_bias != NULL) +
                        (c->adam_v_bias != NULL);
    FUZZ_CHECK(moments == 0 || moments == 4, "%d of the 4 AdamW moments present", moments);
    if (moments == 4) {
        read_all(c->adam_m_weight, weights);
        read_all(c->adam_v_weight, weights);
        read_all(c->adam_m_bias, biases);
        read_all(c->adam_v_bias, biases);
    }
    tq_mtp_checkpoint_free(checkpoint);
    return 0;
}
