/* Build a tokenizer from the tokenizer.ggml.* metadata of a GGUF file:
 * SentencePiece ("llama") or BPE with ranked merges ("gemma4"). */
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
    int ranked;
    if (model.len == 5 && memcmp(model.data, "llama", 5) == 0) {
        ranked = 0;
    } else if (model.len == 6 && memcmp(model.data, "gemma4", 6) == 0) {
        ranked = 1;
    } else {
        return tq_error_set(err, TQ_ERR_UNSUPPORTED,
                            "tokenizer.ggml.model is '%.*s', but only 'llama' (SentencePiece) and 'gemma4' (BPE with "
                            "ranked merges) are supported",
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

    /* Ranked BPE needs its merge list. Text splits into runs of newlines and
     * runs of other characters as in llama.cpp, the reference for this format.
     * NOTE: transformers' GemmaTokenizer, which it builds from such a file,
     * does not split, so the two differ where a merge would cross a newline. */
    tq_gguf_array merges = {0};
    if (ranked) {
        status = tq_gguf_get_array(gguf, "tokenizer.ggml.merges", &merges, err);
        if (status != TQ_OK) {
            return status;
        }
        if (merges.type != TQ_GGUF_STRING || merges.strings == NULL) {
            return tq_error_set(err, TQ_ERR_FORMAT, "tokenizer.ggml.merges is an array of %s, expected string",
                                tq_gguf_value_type_name(merges.type));
        }
        if (merges.count > (uint64_t)INT32_MAX) {
            return tq_error_set(err, TQ_ERR_FORMAT, "tokenizer.ggml.merges has %llu entries, at most %d are supported",
                                (unsigned long long)merges.count, (int)INT32_MAX);
        }
    }

    tq_tokenizer_spec spec;
    memset(&spec, 0, sizeof(spec));
    spec.model = ranked ? TQ_TOKENIZER_BPE : TQ_TOKENIZER_SPM;
    spec.byte_fallback = 1;
    spec.split_newlines = ranked ? TQ_SPLIT_NEWLINES_WHOLE : TQ_SPLIT_NONE;
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
    /* llama.cpp's defaults for a vocabulary that does not state them: BOS for
     * both kinds, a space prefix for SentencePiece only. */
    if (status == TQ_OK) {
        status = read_optional_bool(gguf, "tokenizer.ggml.add_bos_token", 1, &spec.add_bos, err);
    }
    if (status == TQ_OK) {
        status = read_optional_bool(gguf, "tokenizer.ggml.add_space_prefix", ranked ? 0 : 1, &spec.add_space_prefix,
                                    err);
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
    size_t n_merges = (size_t)merges.count;
    const char **pieces = malloc(n * sizeof(char *));
    uint64_t *piece_lens = malloc(n * sizeof(uint64_t));
    const char **merge_texts = malloc((n_merges > 0 ? n_merges : 1) * sizeof(char *));
    uint64_t *merge_lens = malloc((n_merges > 0 ? n_merges : 1) * sizeof(uint64_t));
    float *scores = scores_array.data ? malloc(n * sizeof(float)) : NULL;
    int32_t *types = types_array.data ? malloc(n * sizeof(int32_t)) : NULL;
    if (pieces == NULL || piece_lens == NULL || merge_texts == NULL || merge_lens == NULL ||
        (scores_array.data && scores == NULL) || (types_array.data && types == NULL)) {
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
    for (size_t i = 0; i < n_merges; i++) {
        tq_gguf_string merge = tq_gguf_array_string(&merges, i);
        merge_texts[i] = merge.data;
        merge_lens[i] = merge.len;
    }
    spec.pieces = pieces;
    spec.piece_lens = piece_lens;
    if (ranked) {
        spec.n_merges = (int64_t)n_merges;
        spec.merge_texts = merge_texts;
        spec.merge_text_lens = merge_lens;
    }
    spec.scores = scores;
    spec.types = types;
    status = tq_tokenizer_create(&spec, out, err);

done:
    free(pieces);
    free(piece_lens);
    free(merge_texts);
    free(merge_lens);
    free(scores);
    free(types);
    return status;
}
