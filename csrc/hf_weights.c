/* Safetensors shards of a Hugging Face model as a tq_gguf view; see hf_weights.h. */
#include "hf_weights.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"
#include "weights.h"

struct tq_hf_weights {
    void *metadata; /* owned copy of the GGUF metadata bytes */
    tq_safetensors **shards;
    int n_shards;
    size_t n_tensors;
    tq_gguf_tensor *tensors; /* the table handed to the view */
    char **names;            /* owned tensor names */
    char **origins;          /* owned origin descriptions */
    void **copies;           /* owned data copies, NULL where the data is mapped */
    tq_gguf *view;
};

static char *copy_string(const char *text)
{
    size_t length = strlen(text);
    char *copy = malloc(length + 1);
    if (copy != NULL) {
        memcpy(copy, text, length + 1);
    }
    return copy;
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash != NULL ? slash + 1 : path;
}

/* GGML type of a safetensors dtype that the weight kernels read; -1 for others. */
static int ggml_type_of(tq_safetensors_dtype dtype)
{
    switch (dtype) {
    case TQ_ST_F32:
        return TQ_TYPE_F32;
    case TQ_ST_F16:
        return TQ_TYPE_F16;
    case TQ_ST_BF16:
        return TQ_TYPE_BF16;
    default:
        return -1;
    }
}

/* Fill entry i of weights from a spec that carries its values. */
static tq_status place_values(tq_hf_weights *weights, size_t i, const tq_hf_tensor_spec *spec, tq_error *err)
{
    tq_gguf_tensor *t = &weights->tensors[i];
    if (spec->n_values < 1 || (uint64_t)spec->n_values > SIZE_MAX / sizeof(float)) {
        return tq_error_set(err, TQ_ERR_INVALID, "tensor %s: n_values %lld must be positive", spec->name,
                            (long long)spec->n_values);
    }
    const size_t bytes = (size_t)spec->n_values * sizeof(float);
    float *copy = tq_aligned_alloc(bytes);
    if (copy == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory copying tensor %s (%zu bytes)", spec->name, bytes);
    }
    for (int64_t k = 0; k < spec->n_values; k++) {
        copy[k] = spec->values[k] + spec->offset;
    }
    weights->copies[i] = copy;
    t->n_dims = 1;
    t->ne[0] = (uint64_t)spec->n_values;
    t->type = TQ_TYPE_F32;
    t->nbytes = bytes;
    t->data = copy;
    return TQ_OK;
}

/* Fill entry i of weights from the safetensors tensor spec->source. */
static tq_status place_source(tq_hf_weights *weights, size_t i, const tq_hf_tensor_spec *spec,
                              const char *const *shard_paths, tq_error *err)
{
    tq_gguf_tensor *t = &weights->tensors[i];
    const char *file = base_name(shard_paths[spec->shard]);
    const tq_safetensors_tensor *source = tq_safetensors_find(weights->shards[spec->shard], spec->source);
    if (source == NULL) {
        return tq_error_set(err, TQ_ERR_FORMAT, "tensor %s is missing from %s", spec->source, file);
    }
    const int type = ggml_type_of(source->dtype);
    if (type < 0) {
        return tq_error_set(err, TQ_ERR_UNSUPPORTED,
                            "tensor %s in %s has dtype %s; supported dtypes are F32, F16 and BF16", spec->source,
                            file, tq_safetensors_dtype_name(source->dtype));
    }
    if (source->n_dims > 2) {
        return tq_error_set(err, TQ_ERR_UNSUPPORTED, "tensor %s in %s has %d dimensions; expected 1 or 2",
                            spec->source, file, source->n_dims);
    }
    /* safetensors lists the slowest dimension first, GGUF the contiguous one. */
    t->n_dims = (uint32_t)(source->n_dims > 0 ? source->n_dims : 1);
    for (int d = 0; d < source->n_dims; d++) {
        t->ne[d] = source->shape[source->n_dims - 1 - d];
    }
    const uint64_t count = t->ne[0] * t->ne[1];
    const size_t element = tq_safetensors_dtype_size(source->dtype);
    if (count == 0) {
        return tq_error_set(err, TQ_ERR_FORMAT, "tensor %s in %s has no elements", spec->source, file);
    }
    t->type = (tq_ggml_type)type;
    t->nbytes = source->nbytes;
    t->data = source->data;

    /* The kernels load whole elements, but a writer that did not pad its header leaves
     * the data misaligned: then copy the bytes as they are. */
    if (((uintptr_t)source->data % element) != 0) {
        void *copy = tq_aligned_alloc((size_t)source->nbytes);
        if (copy == NULL) {
            return tq_error_set(err, TQ_ERR_NOMEM, "out of memory copying tensor %s", spec->source);
        }
        memcpy(copy, source->data, (size_t)source->nbytes);
        weights->copies[i] = copy;
        t->data = copy;
    }
    if (spec->to_f32 || spec->offset != 0.0f) {
        if (count > SIZE_MAX / sizeof(float)) {
            return tq_error_set(err, TQ_ERR_NOMEM, "tensor %s in %s is too large to copy", spec->source, file);
        }
        float *copy = tq_aligned_alloc((size_t)count * sizeof(float));
        if (copy == NULL) {
            return tq_error_set(err, TQ_ERR_NOMEM, "out of memory copying tensor %s", spec->source);
        }
        tq_status status = tq_dequantize_row(type, t->data, copy, (int64_t)count, err);
        tq_aligned_free(weights->copies[i]);
        weights->copies[i] = copy;
        if (status != TQ_OK) {
            return status;
        }
        for (uint64_t k = 0; k < count; k++) {
            copy[k] += spec->offset;
        }
        t->type = TQ_TYPE_F32;
        t->nbytes = (uint64_t)count * sizeof(float);
        t->data = copy;
    }
    return TQ_OK;
}

static tq_status place_tensor(tq_hf_weights *weights, size_t i, const tq_hf_tensor_spec *spec,
                              const char *const *shard_paths, tq_error *err)
{
    tq_gguf_tensor *t = &weights->tensors[i];
    if (spec->name == NULL || (spec->source == NULL) == (spec->values == NULL)) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "tensor spec %zu needs a name and exactly one of source and values", i);
    }
    if (spec->source != NULL && (spec->shard < 0 || spec->shard >= weights->n_shards)) {
        return tq_error_set(err, TQ_ERR_INVALID, "tensor %s: shard index %d is outside 0..%d", spec->source,
                            spec->shard, weights->n_shards - 1);
    }
    weights->names[i] = copy_string(spec->name);
    if (weights->names[i] == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory copying tensor names");
    }
    char origin[512];
    if (spec->source != NULL) {
        snprintf(origin, sizeof(origin), "%s in %s", spec->source, base_name(shard_paths[spec->shard]));
    } else {
        snprintf(origin, sizeof(origin), "%s (computed from config.json)", spec->name);
    }
    weights->origins[i] = copy_string(origin);
    if (weights->origins[i] == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory copying tensor names");
    }
    t->name.data = weights->names[i];
    t->name.len = strlen(weights->names[i]);
    for (int d = 0; d < 4; d++) {
        t->ne[d] = 1;
    }
    t->offset = 0;
    if (spec->values != NULL) {
        return place_values(weights, i, spec, err);
    }
    return place_source(weights, i, spec, shard_paths, err);
}

tq_status tq_hf_weights_open(const void *metadata, size_t metadata_size, const char *name,
                             const char *const *shard_paths, int n_shards, const tq_hf_tensor_spec *specs,
                             size_t n_specs, tq_hf_weights **out, tq_error *err)
{
    *out = NULL;
    if (metadata == NULL || metadata_size == 0 || n_shards < 0 || (n_shards > 0 && shard_paths == NULL) ||
        (n_specs > 0 && specs == NULL)) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "tq_hf_weights_open: metadata (%zu bytes), shard_paths (%d) or specs (%zu) is missing",
                            metadata_size, n_shards, n_specs);
    }
    tq_hf_weights *weights = calloc(1, sizeof(*weights));
    if (weights == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory opening the model directory");
    }
    tq_status status = TQ_OK;
    weights->metadata = malloc(metadata_size);
    weights->shards = calloc(n_shards > 0 ? (size_t)n_shards : 1, sizeof(tq_safetensors *));
    weights->tensors = calloc(n_specs > 0 ? n_specs : 1, sizeof(tq_gguf_tensor));
    weights->names = calloc(n_specs > 0 ? n_specs : 1, sizeof(char *));
    weights->origins = calloc(n_specs > 0 ? n_specs : 1, sizeof(char *));
    weights->copies = calloc(n_specs > 0 ? n_specs : 1, sizeof(void *));
    weights->n_tensors = n_specs;
    if (weights->metadata == NULL || weights->shards == NULL || weights->tensors == NULL || weights->names == NULL ||
        weights->origins == NULL || weights->copies == NULL) {
        status = tq_error_set(err, TQ_ERR_NOMEM, "out of memory for %zu tensor entries", n_specs);
    }
    if (status == TQ_OK) {
        memcpy(weights->metadata, metadata, metadata_size);
    }
    for (int s = 0; status == TQ_OK && s < n_shards; s++) {
        status = tq_safetensors_open(shard_paths[s], &weights->shards[s], err);
        weights->n_shards = s + 1;
    }
    for (size_t i = 0; status == TQ_OK && i < n_specs; i++) {
        status = place_tensor(weights, i, &specs[i], shard_paths, err);
    }
    if (status == TQ_OK) {
        status = tq_gguf_open_view(weights->metadata, metadata_size, name, weights->tensors,
                                   (const char *const *)weights->origins, n_specs, &weights->view, err);
    }
    if (status != TQ_OK) {
        tq_hf_weights_free(weights);
        return status;
    }
    *out = weights;
    return TQ_OK;
}

tq_gguf *tq_hf_weights_gguf(tq_hf_weights *weights)
{
    return weights->view;
}

void tq_hf_weights_free(tq_hf_weights *weights)
{
    if (weights == NULL) {
        return;
    }
    tq_gguf_close(weights->view);
    for (size_t i = 0; i < weights->n_tensors; i++) {
        if (weights->names != NULL) {
            free(weights->names[i]);
        }
        if (weights->origins != NULL) {
            free(weights->origins[i]);
        }
        if (weights->copies != NULL) {
            tq_aligned_free(weights->copies[i]);
        }
    }
    for (int s = 0; s < weights->n_shards; s++) {
        tq_safetensors_close(weights->shards[s]);
    }
    free(weights->shards);
    free(weights->names);
    free(weights->origins);
    free(weights->copies);
    free(weights->tensors);
    free(weights->metadata);
    free(weights);
}
