/* Parser of Medusa head checkpoints; the format is described in mtp_checkpoint.h. */
#include "mtp_checkpoint.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blocks.h"
#include "mtp.h"
#include "safetensors.h"

void tq_mtp_checkpoint_free(tq_mtp_checkpoint *checkpoint)
{
    if (checkpoint == NULL) {
        return;
    }
    free(checkpoint->weight);
    free(checkpoint->bias);
    free(checkpoint->adam_m_weight);
    free(checkpoint->adam_v_weight);
    free(checkpoint->adam_m_bias);
    free(checkpoint->vocab);
    free(checkpoint->adam_v_bias);
    free(checkpoint->base_model);
    free(checkpoint->settings);
    free(checkpoint);
}

static const char *find_metadata(const tq_safetensors *file, const char *key)
{
    for (size_t i = 0; i < tq_safetensors_metadata_count(file); i++) {
        if (strcmp(tq_safetensors_metadata_key(file, i), key) == 0) {
            return tq_safetensors_metadata_value(file, i);
        }
    }
    return NULL;
}

/* A decimal integer in [0, 2^62] with no sign, spaces or leading zeros; returns 0 on success. */
static int parse_count(const char *text, size_t length, int64_t *out)
{
    if (length == 0 || length > 19 || (length > 1 && text[0] == '0')) {
        return -1;
    }
    /* Unsigned, because 19 digits can exceed INT64_MAX but never UINT64_MAX. */
    uint64_t value = 0;
    for (size_t i = 0; i < length; i++) {
        if (text[i] < '0' || text[i] > '9') {
            return -1;
        }
        value = value * 10 + (uint64_t)(text[i] - '0');
    }
    if (value > ((uint64_t)1 << 62)) {
        return -1;
    }
    *out = (int64_t)value;
    return 0;
}

/* data_position must be exactly {"entry": E, "token": T}, the form the Python writer emits. */
static int parse_position(const char *text, int64_t *entry, int64_t *token)
{
    static const char prefix[] = "{\"entry\": ";
    static const char middle[] = ", \"token\": ";
    if (strncmp(text, prefix, sizeof(prefix) - 1) != 0) {
        return -1;
    }
    const char *p = text + sizeof(prefix) - 1;
    const char *end = strchr(p, ',');
    if (end == NULL || parse_count(p, (size_t)(end - p), entry) != 0) {
        return -1;
    }
    if (strncmp(end, middle, sizeof(middle) - 1) != 0) {
        return -1;
    }
    p = end + sizeof(middle) - 1;
    end = strchr(p, '}');
    if (end == NULL || end[1] != '\0') {
        return -1;
    }
    return parse_count(p, (size_t)(end - p), token);
}

static char *copy_string(const char *text)
{
    const size_t length = strlen(text);
    char *copy = malloc(length + 1);
    if (copy != NULL) {
        memcpy(copy, text, length + 1);
    }
    return copy;
}

/* Copy tensor into a new float32 array after checking its dtype and shape; values
 * must be finite. allow_f16 admits F16 (converted). */
static tq_status copy_tensor(const tq_safetensors_tensor *tensor, int n_dims, const uint64_t *shape, int allow_f16,
                             float **out, tq_error *err)
{
    if (tensor->dtype != TQ_ST_F32 && !(allow_f16 && tensor->dtype == TQ_ST_F16)) {
        return tq_error_set(err, TQ_ERR_FORMAT, "tensor %s has dtype %s; expected F32%s", tensor->name,
                            tq_safetensors_dtype_name(tensor->dtype), allow_f16 ? " or F16" : "");
    }
    int same = tensor->n_dims == n_dims;
    for (int d = 0; same && d < n_dims; d++) {
        same = tensor->shape[d] == shape[d];
    }
    if (!same) {
        char found[160] = "";
        size_t used = 0;
        for (int d = 0; d < tensor->n_dims && used < sizeof(found) - 24; d++) {
            used += (size_t)snprintf(found + used, sizeof(found) - used, d == 0 ? "%" PRIu64 : ", %" PRIu64,
                                     tensor->shape[d]);
        }
        return tq_error_set(err, TQ_ERR_FORMAT, "tensor %s has shape [%s]; expected %d dimensions matching "
                            "heads.weight [%" PRIu64 ", %" PRIu64 ", ...]",
                            tensor->name, found, n_dims, shape[0], shape[1]);
    }
    size_t count = 1;
    for (int d = 0; d < n_dims; d++) {
        count *= (size_t)shape[d]; /* bounded by the caller's limits on n_heads and hidden */
    }
    float *values = malloc(count * sizeof(float));
    if (values == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "cannot allocate %zu floats for tensor %s", count, tensor->name);
    }
    if (tensor->dtype == TQ_ST_F32) {
        memcpy(values, tensor->data, count * sizeof(float)); /* the data may be unaligned */
    } else {
        const uint8_t *bytes = tensor->data;
        for (size_t i = 0; i < count; i++) {
            tq_fp16 h;
            memcpy(&h, bytes + 2 * i, sizeof(h));
            values[i] = tq_fp16_to_fp32(h);
        }
    }
    for (size_t i = 0; i < count; i++) {
        if (!isfinite(values[i])) {
            free(values);
            return tq_error_set(err, TQ_ERR_FORMAT, "tensor %s contains a non-finite value at index %zu",
                                tensor->name, i);
        }
    }
    *out = values;
    return TQ_OK;
}

static tq_status read_metadata(const tq_safetensors *file, tq_mtp_checkpoint *c, tq_error *err)
{
    static const char *const required[] = {"format", "step", "data_position", "base_model", "settings"};
    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
        if (find_metadata(file, required[i]) == NULL) {
            return tq_error_set(err, TQ_ERR_FORMAT, "metadata key %s is missing; this is not a %s checkpoint",
                                required[i], TQ_MTP_CHECKPOINT_FORMAT);
        }
    }
    for (size_t i = 0; i < tq_safetensors_metadata_count(file); i++) {
        const char *key = tq_safetensors_metadata_key(file, i);
        int known = 0;
        for (size_t j = 0; j < sizeof(required) / sizeof(required[0]); j++) {
            known |= strcmp(key, required[j]) == 0;
        }
        if (!known) {
            return tq_error_set(err, TQ_ERR_FORMAT, "metadata key %.64s is unknown in format %s", key,
                                TQ_MTP_CHECKPOINT_FORMAT);
        }
    }
    const char *format = find_metadata(file, "format");
    if (strcmp(format, TQ_MTP_CHECKPOINT_FORMAT) != 0) {
        return tq_error_set(err, TQ_ERR_FORMAT, "format is '%.64s'; expected '%s'", format,
                            TQ_MTP_CHECKPOINT_FORMAT);
    }
    const char *step = find_metadata(file, "step");
    if (parse_count(step, strlen(step), &c->step) != 0) {
        return tq_error_set(err, TQ_ERR_FORMAT, "step is '%.64s'; expected a non-negative decimal integer", step);
    }
    const char *position = find_metadata(file, "data_position");
    if (parse_position(position, &c->data_entry, &c->data_token) != 0) {
        return tq_error_set(err, TQ_ERR_FORMAT,
                            "data_position is '%.100s'; expected {\"entry\": E, \"token\": T} with counts E and T",
                            position);
    }
    const char *base_model = find_metadata(file, "base_model");
    if (base_model[0] == '\0') {
        return tq_error_set(err, TQ_ERR_FORMAT, "base_model is empty; the checkpoint must name its base model");
    }
    const char *settings = find_metadata(file, "settings");
    const size_t settings_length = strlen(settings);
    if (settings_length < 2 || settings[0] != '{' || settings[settings_length - 1] != '}') {
        return tq_error_set(err, TQ_ERR_FORMAT, "settings is '%.64s'; expected a JSON object", settings);
    }
    c->base_model = copy_string(base_model);
    c->settings = copy_string(settings);
    if (c->base_model == NULL || c->settings == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "cannot copy the checkpoint metadata");
    }
    return TQ_OK;
}

/* heads.vocab: I32 token ids, strictly increasing from 0 or more. The ids are checked
 * against the model's vocabulary when the heads are used (tq_mtp_vocab_create). */
static tq_status read_vocab(const tq_safetensors_tensor *tensor, tq_mtp_checkpoint *c, tq_error *err)
{
    if (tensor->dtype != TQ_ST_I32 || tensor->n_dims != 1 || tensor->shape[0] < 1 ||
        tensor->shape[0] > TQ_MTP_CHECKPOINT_MAX_VOCAB) {
        return tq_error_set(err, TQ_ERR_FORMAT, "heads.vocab must be I32 of shape [n] with n in [1, %d]",
                            TQ_MTP_CHECKPOINT_MAX_VOCAB);
    }
    const size_t n = (size_t)tensor->shape[0];
    c->vocab = malloc(n * sizeof(int32_t));
    if (c->vocab == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "cannot allocate %zu draft vocabulary ids", n);
    }
    memcpy(c->vocab, tensor->data, n * sizeof(int32_t)); /* the data may be unaligned */
    c->n_vocab_ids = (int64_t)n;
    for (size_t i = 0; i < n; i++) {
        if (c->vocab[i] < 0 || (i > 0 && c->vocab[i] <= c->vocab[i - 1])) {
            return tq_error_set(err, TQ_ERR_FORMAT,
                                "heads.vocab id %d at index %zu is negative or not above the one before", c->vocab[i],
                                i);
        }
    }
    return TQ_OK;
}

static tq_status read_tensors(const tq_safetensors *file, tq_mtp_checkpoint *c, tq_error *err)
{
    const tq_safetensors_tensor *weight = tq_safetensors_find(file, "heads.weight");
    const tq_safetensors_tensor *bias = tq_safetensors_find(file, "heads.bias");
    if (weight == NULL || bias == NULL) {
        return tq_error_set(err, TQ_ERR_FORMAT, "tensor %s is missing", weight == NULL ? "heads.weight" : "heads.bias");
    }
    if (weight->n_dims != 3 || weight->shape[0] < 1 || weight->shape[0] > TQ_MTP_MAX_HEADS || weight->shape[1] < 1 ||
        weight->shape[1] > TQ_MTP_CHECKPOINT_MAX_HIDDEN || weight->shape[2] != weight->shape[1]) {
        return tq_error_set(err, TQ_ERR_FORMAT,
                            "heads.weight must have shape [n_heads, hidden, hidden] with n_heads in [1, %d] and "
                            "hidden in [1, %d]",
                            TQ_MTP_MAX_HEADS, TQ_MTP_CHECKPOINT_MAX_HIDDEN);
    }
    c->n_heads = (int)weight->shape[0];
    c->hidden = (int)weight->shape[1];
    const uint64_t matrix_shape[3] = {weight->shape[0], weight->shape[1], weight->shape[2]};
    const uint64_t vector_shape[2] = {weight->shape[0], weight->shape[1]};
    tq_status status = copy_tensor(weight, 3, matrix_shape, 1, &c->weight, err);
    if (status == TQ_OK) {
        status = copy_tensor(bias, 2, vector_shape, 1, &c->bias, err);
    }
    if (status != TQ_OK) {
        return status;
    }

    static const char *const adam_names[4] = {"adam.m.weight", "adam.v.weight", "adam.m.bias", "adam.v.bias"};
    float **adam_outputs[4] = {&c->adam_m_weight, &c->adam_v_weight, &c->adam_m_bias, &c->adam_v_bias};
    int present = 0;
    for (int i = 0; i < 4; i++) {
        present += tq_safetensors_find(file, adam_names[i]) != NULL;
    }
    if (present != 0 && present != 4) {
        return tq_error_set(err, TQ_ERR_FORMAT,
                            "the checkpoint has %d of the 4 AdamW tensors (adam.m.weight, adam.v.weight, "
                            "adam.m.bias, adam.v.bias); expected all or none",
                            present);
    }
    const tq_safetensors_tensor *vocab = tq_safetensors_find(file, "heads.vocab");
    if (tq_safetensors_count(file) != 2 + (size_t)present + (vocab != NULL)) {
        for (size_t i = 0; i < tq_safetensors_count(file); i++) {
            const char *name = tq_safetensors_tensor_at(file, i)->name;
            int known = strcmp(name, "heads.weight") == 0 || strcmp(name, "heads.bias") == 0 ||
                        strcmp(name, "heads.vocab") == 0;
            for (int j = 0; j < 4; j++) {
                known |= strcmp(name, adam_names[j]) == 0;
            }
            if (!known) {
                return tq_error_set(err, TQ_ERR_FORMAT, "tensor %.64s is unknown in format %s", name,
                                    TQ_MTP_CHECKPOINT_FORMAT);
            }
        }
    }
    for (int i = 0; i < 4 && present == 4; i++) {
        const tq_safetensors_tensor *tensor = tq_safetensors_find(file, adam_names[i]);
        const int is_matrix = i < 2;
        status = copy_tensor(tensor, is_matrix ? 3 : 2, is_matrix ? matrix_shape : vector_shape, 0, adam_outputs[i],
                             err);
        if (status != TQ_OK) {
            return status;
        }
    }
    for (size_t i = 0; c->adam_v_weight != NULL && i < (size_t)c->n_heads * c->hidden * c->hidden; i++) {
        if (c->adam_v_weight[i] < 0.0f) {
            return tq_error_set(err, TQ_ERR_FORMAT, "adam.v.weight contains a negative second moment at index %zu", i);
        }
    }
    for (size_t i = 0; c->adam_v_bias != NULL && i < (size_t)c->n_heads * c->hidden; i++) {
        if (c->adam_v_bias[i] < 0.0f) {
            return tq_error_set(err, TQ_ERR_FORMAT, "adam.v.bias contains a negative second moment at index %zu", i);
        }
    }
    return vocab != NULL ? read_vocab(vocab, c, err) : TQ_OK;
}

tq_status tq_mtp_checkpoint_parse(const uint8_t *data, size_t size, tq_mtp_checkpoint **out, tq_error *err)
{
    *out = NULL;
    if (data == NULL && size > 0) {
        return tq_error_set(err, TQ_ERR_INVALID, "data is NULL but size is %zu", size);
    }
    tq_safetensors *file = NULL;
    tq_status status = tq_safetensors_open_memory(data, size, &file, err);
    if (status != TQ_OK) {
        return status;
    }
    tq_mtp_checkpoint *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        tq_safetensors_close(file);
        return tq_error_set(err, TQ_ERR_NOMEM, "cannot allocate a checkpoint");
    }
    status = read_metadata(file, c, err);
    if (status == TQ_OK) {
        status = read_tensors(file, c, err);
    }
    tq_safetensors_close(file);
    if (status != TQ_OK) {
        tq_mtp_checkpoint_free(c);
        return status;
    }
    *out = c;
    return TQ_OK;
}
