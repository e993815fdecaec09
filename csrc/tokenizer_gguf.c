/* Build a tokenizer from the tokenizer.ggml.* metadata of a GGUF file. */
#include "gguf.h"
#include "tokenizer.h"

#include <stdlib.h>
#include <string.h>

/* Read an optional token id. An absent key gives -1. */
static tq_status read_optional_id(const tq_gguf *gguf, const char *key, int32_t n_vocab, int32_t *out, tq_error *err)
{
    *out = -1;
    if (tq_gguf_find_kv(gguf, key) == NULL) {
        return TQ_OK;
    }
    uint32_t value;
    tq_status status = tq_gguf_get_u32(gguf, key, &value, err);
    if (status != TQ_OK) {
        return status;
    }
    if (value >= (uint32_t)n_vocab) {
        return tq_error_set(err, TQ_ERR_FORMAT, "GGUF metadata key '%s' is %u, outside the vocabulary of %d tokens",
                            key, value, (int)n_vocab);
    }
    *out = (int32_t)value;
    return TQ_OK;
}

/* Read an optional bool. An absent key gives default_value. */
static tq_status read_optional_bool(const tq_gguf *gguf, const char *key, int default_value, int *out,
                                    tq_error *err)
{
    *out = default_value;
    if (tq_gguf_find_kv(gguf, key) == NULL) {
        return TQ_OK;
    }
    return tq_gguf_get_bool(gguf, key, out, err);
}

/* Read an optional array of count elements of the given type. An absent key
 * leaves arr->data NULL. */
static tq_status read_optional_array(const tq_gguf *gguf, const char *key, tq_gguf_value_type type, uint64_t count,
                                     tq_gguf_array *arr, tq_error *err)
{
    memset(arr, 0, sizeof(*arr));
    if (tq_gguf_find_kv(gguf, key) == NULL) {
        return TQ_OK;
    }
    tq_status status = tq_gguf_get_array(gguf, key, arr, err);
    if (status != TQ_OK) {
        return status;
    }
    if (arr->type != type) {
        return tq_error_set(err, TQ_ERR_FORMAT, "GGUF metadata key '%s' is an array of %s, expected %s", key,
                            tq_gguf_value_type_name(arr->type), tq_gguf_value_type_name(type));
    }
    if (arr->count != count) {
        return tq_error_set(err, TQ_ERR_FORMAT,
                            "GGUF metadata key '%s' has %llu entries but tokenizer.ggml.tokens has %llu", key,
                            (unsigned long long)arr->count, (unsigned long long)count);
    }
    return TQ_OK;
}

tq_status tq_tokenizer_create_from_gguf(const tq_gguf *gguf, tq_tokenizer **out, tq_error *err)
{
    if (gguf == NULL || out == NULL) {
        return tq_error_set(err, TQ_ERR_INVALID, "tokenizer: gguf and out must not be NULL");
    }
    *out = NULL;

    tq_gguf_string model;
    tq_status status = tq_gguf_get_string(gguf, "tokenizer.ggml.model", &model, err);
    if (status != TQ_OK) {
        return status;
    }
    if (model.len != 5 || memcmp(model.data, "llama", 5) != 0) {
        return tq_error_set(err, TQ_ERR_UNSUPPORTED,
                            "tokenizer.ggml.model is '%.*s', but only the SentencePiece type 'llama' is supported",
                            (int)(model.len < 64 ? model.len : 64), model.data);
    }

    tq_gguf_array tokens;
    status = tq_gguf_get_array(gguf, "tokenizer.ggml.tokens", &tokens, err);
    if (status != TQ_OK) {
        return status;
    }
    if (tokens.type != TQ_GGUF_STRING || tokens.strings == NULL) {
        return tq_error_set(err, TQ_ERR_FORMAT, "tokenizer.ggml.tokens is an array of %s, expected string",
                            tq_gguf_value_type_name(tokens.type));
    }
    if (tokens.count == 0 || tokens.count > (uint64_t)INT32_MAX) {
        return tq_error_set(err, TQ_ERR_FORMAT, "tokenizer.ggml.tokens has %llu entries, expected 1 to %d",
                            (unsigned long long)tokens.count, (int)INT32_MAX);
    }
    size_t n = (size_t)tokens.count;

    tq_gguf_array scores_array;
    tq_gguf_array types_array;
    status = read_optional_array(gguf, "tokenizer.ggml.scores", TQ_GGUF_FLOAT32, tokens.count, &scores_array, err);
    if (status == TQ_OK) {
        status = read_optional_array(gguf, "tokenizer.ggml.token_type", TQ_GGUF_INT32, tokens.count, &types_array,
                                     err);
    }
    if (status != TQ_OK) {
        return status;
    }

    tq_tokenizer_spec spec;
    memset(&spec, 0, sizeof(spec));
    spec.n_vocab = (int32_t)n;
    status = read_optional_id(gguf, "tokenizer.ggml.bos_token_id", spec.n_vocab, &spec.bos_id, err);
    if (status == TQ_OK) {
        status = read_optional_id(gguf, "tokenizer.ggml.eos_token_id", spec.n_vocab, &spec.eos_id, err);
    }
    if (status == TQ_OK) {
        status = read_optional_id(gguf, "tokenizer.ggml.unknown_token_id", spec.n_vocab, &spec.unk_id, err);
    }
    if (status == TQ_OK) {
        status = read_optional_id(gguf, "tokenizer.ggml.padding_token_id", spec.n_vocab, &spec.pad_id, err);
    }
    /* llama.cpp's defaults for a SentencePiece vocabulary that does not state them. */
    if (status == TQ_OK) {
        status = read_optional_bool(gguf, "tokenizer.ggml.add_bos_token", 1, &spec.add_bos, err);
    }
    if (status == TQ_OK) {
        status = read_optional_bool(gguf, "tokenizer.ggml.add_space_prefix", 1, &spec.add_space_prefix, err);
    }
    if (status != TQ_OK) {
        return status;
    }
    if (spec.unk_id < 0 && types_array.data != NULL) {
        /* Without unknown_token_id, fall back to the first piece of type unknown. */
        for (size_t i = 0; i < n; i++) {
            int32_t type;
            memcpy(&type, types_array.data + i * sizeof(int32_t), sizeof(type));
            if (type == TQ_TOKEN_UNKNOWN) {
                spec.unk_id = (int32_t)i;
                break;
            }
        }
    }
    if (spec.add_bos && spec.bos_id < 0) {
        return tq_error_set(err, TQ_ERR_FORMAT,
                            "tokenizer.ggml.add_bos_token is true but tokenizer.ggml.bos_token_id is missing");
    }

    /* GGUF metadata is packed without alignment, so copy the numbers out. */
    const char **pieces = malloc(n * sizeof(char *));
    uint64_t *piece_lens = malloc(n * sizeof(uint64_t));
    float *scores = scores_array.data ? malloc(n * sizeof(float)) : NULL;
    int32_t *types = types_array.data ? malloc(n * sizeof(int32_t)) : NULL;
    if (pieces == NULL || piece_lens == NULL || (scores_array.data && scores == NULL) ||
        (types_array.data && types == NULL)) {
        status = tq_error_set(err, TQ_ERR_NOMEM, "tokenizer: out of memory for %zu GGUF tokens", n);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        tq_gguf_string piece = tq_gguf_array_string(&tokens, i);
        pieces[i] = piece.data;
        piece_lens[i] = piece.len;
    }
    if (scores != NULL) {
        memcpy(scores, scores_array.data, n * sizeof(float));
    }
    if (types != NULL) {
        memcpy(types, types_array.data, n * sizeof(int32_t));
    }
    spec.pieces = pieces;
    spec.piece_lens = piece_lens;
    spec.scores = scores;
    spec.types = types;
    status = tq_tokenizer_create(&spec, out, err);

done:
    free(pieces);
    free(piece_lens);
    free(scores);
    free(types);
    return status;
}
