/* Weights of a Hugging Face model directory (safetensors shards) presented as a
 * tq_gguf view, so the GGUF model loaders read them unchanged.
 *
 * The caller (the Python layer, which parses config.json) supplies the metadata
 * as a GGUF byte string without tensors and one tq_hf_tensor_spec per tensor: the
 * name the loaders look up ("blk.0.attn_q.weight") and the safetensors tensor it
 * comes from. Matrices of dtype F32, F16 and BF16 point into the mapped shards
 * without a copy. A tensor is copied to float32 only when the spec requests it
 * (norms, which the forward pass reads as float32, and Gemma 3 norms, which
 * transformers applies as 1 + w), when its data is not aligned to its element
 * size, or when the spec carries the values itself (tables that Hugging Face
 * checkpoints do not store, such as rope_freqs).
 *
 * Every shape is checked against the spec's expected rank; the model loader then
 * checks each dimension against the configuration, and its errors name the
 * safetensors tensor through tq_gguf_tensor_origin.
 *
 * Ownership: tq_hf_weights_open() copies the metadata and the specs; the object
 * owns the shard mappings, the float32 copies and the tq_gguf view, all released
 * by tq_hf_weights_free(). It is read-only after opening.
 */
#ifndef TQ_HF_WEIGHTS_H
#define TQ_HF_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "tq_common.h"

typedef struct {
    const char *name;   /* name in the view, in llama.cpp's GGUF convention */
    const char *source; /* safetensors tensor name; NULL when values is set */
    int shard;          /* index into the shard paths of tq_hf_weights_open */
    int to_f32;         /* 1: store a float32 copy (required for norms) */
    float offset;       /* added to every value of a float32 copy (1 for Gemma 3 norms) */
    const float *values; /* values of a tensor absent from the checkpoint, n_values floats, copied */
    int64_t n_values;
} tq_hf_tensor_spec;

typedef struct tq_hf_weights tq_hf_weights;

/* Open the shards and build the view. metadata: metadata_size bytes of a GGUF file
 * with no tensors, described in messages as name (the model directory).
 * Errors: TQ_ERR_IO when a shard cannot be opened, TQ_ERR_FORMAT for an invalid shard
 * or a missing source tensor, and TQ_ERR_UNSUPPORTED for a dtype other than F32, F16
 * and BF16 or more than 2 dimensions. TQ_ERR_INVALID reports a shard index out of
 * range or a name listed twice. */
tq_status tq_hf_weights_open(const void *metadata, size_t metadata_size, const char *name,
                             const char *const *shard_paths, int n_shards, const tq_hf_tensor_spec *specs,
                             size_t n_specs, tq_hf_weights **out, tq_error *err);

/* The view: metadata and tensors, valid until tq_hf_weights_free. */
tq_gguf *tq_hf_weights_gguf(tq_hf_weights *weights);

void tq_hf_weights_free(tq_hf_weights *weights);

#endif /* TQ_HF_WEIGHTS_H */
