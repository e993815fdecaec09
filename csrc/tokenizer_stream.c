/* Streaming decoder: releases decoded text in whole UTF-8 characters, so a
 * character split over several byte tokens (an emoji is four <0xXX> tokens)
 * comes out whole once its last byte arrives. */
#include "tokenizer_internal.h"

#include <string.h>

#include "utf8.h"

static const char REPLACEMENT_CHARACTER[3] = {(char)0xEF, (char)0xBF, (char)0xBD}; /* U+FFFD */

void tq_detok_stream_init(tq_detok_stream *stream)
{
    memset(stream, 0, sizeof(*stream));
}

/* Run the UTF-8 scanner over pending bytes followed by piece. Writes released
 * text to out unless out is NULL (a dry run that only measures) and returns its
 * length. The incomplete tail, at most 3 bytes, goes to tail. */
static size_t release_characters(const unsigned char *pending, size_t n_pending, const unsigned char *piece,
                                 size_t piece_len, char *out, unsigned char *tail, size_t *tail_len)
{
    size_t total = n_pending + piece_len;
    size_t i = 0;
    size_t n_out = 0;
    while (i < total) {
        unsigned char window[4];
        size_t avail = total - i < 4 ? total - i : 4;
        for (size_t k = 0; k < avail; k++) {
            size_t at = i + k;
            window[k] = at < n_pending ? pending[at] : piece[at - n_pending];
        }
        int scanned = tq_utf8_scan(window, avail);
        if (scanned == 0) {
            break; /* the rest is the valid start of a character, so wait for more */
        }
        if (scanned > 0) {
            if (out != NULL) {
                memcpy(out + n_out, window, (size_t)scanned);
            }
            n_out += (size_t)scanned;
            i += (size_t)scanned;
        } else {
            if (out != NULL) {
                memcpy(out + n_out, REPLACEMENT_CHARACTER, sizeof(REPLACEMENT_CHARACTER));
            }
            n_out += sizeof(REPLACEMENT_CHARACTER);
            i += (size_t)(-scanned);
        }
    }
    *tail_len = total - i;
    for (size_t k = 0; k < *tail_len; k++) {
        size_t at = i + k;
        tail[k] = at < n_pending ? pending[at] : piece[at - n_pending];
    }
    return n_out;
}

tq_status tq_detok_stream_push(const tq_tokenizer *tok, tq_detok_stream *stream, int32_t id, int render_special,
                               char *out, size_t cap, size_t *out_len, tq_error *err)
{
    *out_len = 0;
    if (id < 0 || id >= tok->n_vocab) {
        return tq_error_set(err, TQ_ERR_INVALID, "stream decode: token id %d is outside the vocabulary [0, %d)",
                            (int)id, (int)tok->n_vocab);
    }
    if (stream->n_pending > 3) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "stream decode: the stream has %zu pending bytes but at most 3 are possible. "
                            "Initialize it with tq_detok_stream_init",
                            stream->n_pending);
    }
    size_t piece_len;
    const unsigned char *piece = (const unsigned char *)tq_tok_piece_decoded(tok, id, render_special, &piece_len);

    /* Measure first, so a too small buffer leaves the stream unchanged. */
    unsigned char tail[4];
    size_t tail_len;
    size_t needed = release_characters(stream->pending, stream->n_pending, piece, piece_len, NULL, tail, &tail_len);
    if (needed > cap) {
        return tq_error_set(err, TQ_ERR_RANGE,
                            "stream decode: token %d releases %zu bytes but the output buffer has room for %zu", (int)id,
                            needed, cap);
    }
    *out_len = release_characters(stream->pending, stream->n_pending, piece, piece_len, out, tail, &tail_len);
    memcpy(stream->pending, tail, tail_len);
    stream->n_pending = tail_len;
    return TQ_OK;
}

tq_status tq_detok_stream_flush(tq_detok_stream *stream, char *out, size_t cap, size_t *out_len, tq_error *err)
{
    *out_len = 0;
    if (stream->n_pending == 0) {
        return TQ_OK;
    }
    /* The pending bytes are always one incomplete character, so one U+FFFD
     * replaces them, as a whole-text decode with replacement would. */
    if (cap < sizeof(REPLACEMENT_CHARACTER)) {
        return tq_error_set(err, TQ_ERR_RANGE, "stream flush: needs 3 bytes of output but the buffer has room for %zu",
                            cap);
    }
    memcpy(out, REPLACEMENT_CHARACTER, sizeof(REPLACEMENT_CHARACTER));
    *out_len = sizeof(REPLACEMENT_CHARACTER);
    stream->n_pending = 0;
    return TQ_OK;
}
