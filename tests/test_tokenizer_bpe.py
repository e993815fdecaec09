"""Tests of the ranked-BPE tokenizer (Gemma 4 kind) against independent implementations.

References:
- transformers' ``PreTrainedTokenizerFast`` and ``GemmaTokenizer`` (transformers' class for Gemma 4
  vocabularies) loading a tokenizer.json that ``tests/bpe_vocab.py`` trains with the
  ``tokenizers`` library and lays out like Gemma 4's vocabulary;
- the ``tokenizers`` library's BPE model on small hand-made vocabularies, for rank order,
  ``ignore_merges`` and unknown-token fusing;
- a GGUF file written with the ``gguf`` package's GGUFWriter from the same vocabulary;
- CPython's UTF-8 codec for byte fallback and streaming decode.
"""

import json
import os
import random
import sys
import time

import numpy as np
import pytest

from turboquant.tokenizer import StreamDecoder, Tokenizer

sys.path.insert(0, os.path.dirname(__file__))
from bpe_vocab import CONTROL_TOKENS, FIRST_BYTE_ID, build_tokenizer_json, write_gguf  # noqa: E402
from tokenizer_strings import all_strings  # noqa: E402

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

SPECIAL_TEXTS = [
    "<|turn>user\nHello<turn|>\n<|turn>model\n",
    "<|turn>system\n<|think|>Think first.<turn|>\n",
    "<|channel>thought\nstep one<channel|>The answer is 4.",
    "<bos><eos><pad><unk><mask>",
    "text<|turn>glued<turn|>text",
    "<|turn",
    "<|turn>>",
    "<<|turn>>",
    "<h1>Title</h1>\t\t\tindent",
    "<|audio><|audio|><|audio|><audio|> <|image><|image|><image|>",
]
ODD_TEXTS = [
    "\u0301 combining acute at the start",
    "e\u0301 a\u0308 decomposed accents",
    "\u200b\u200c\u200d zero-width characters",
    "\ufeffbyte order mark",
    "\ufffd replacement character",
    "\U0010ffff last code point, \uffff noncharacter",
    "\u2581 literal lower one eighth block \u2581\u2581",
    "👨‍👩‍👧‍👦 family emoji, 🏳️‍🌈 flag, 👍🏽 skin tone",
    "😀😀😀😀😀😀😀😀",
    "漢字かなカナ한글 mixed scripts",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 mathematical letters",
    "\x00\x01\x02 control bytes \x7f",
    " " * 200,
    "a" + " " * 1000 + "b",
    "\n" * 100 + "x",
    "\t \t \t",
]


@pytest.fixture(scope="module")
def english_text():
    from turboquant.datasets import english_text_path

    return english_text_path("alice29").read_text(encoding="latin-1")


@pytest.fixture(scope="module")
def json_path(tmp_path_factory, english_text):
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    build_tokenizer_json(english_text, path)
    return path


@pytest.fixture(scope="module")
def reference(json_path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(json_path))


@pytest.fixture(scope="module")
def tok(json_path):
    return Tokenizer.from_tokenizer_json(json_path)


def test_loaded_vocabulary_layout(tok, reference):
    assert tok.kind == "bpe"
    assert tok.n_vocab == len(reference)
    assert tok.bos_id == 2
    assert tok.eos_id == 1
    assert tok.unk_id == 3
    assert tok.pad_id == 0
    assert tok.add_bos
    assert tok.n_merges > 1000
    for token_id, content in CONTROL_TOKENS.items():
        assert tok.piece(token_id) == content.encode()
        assert tok.find(content) == token_id
    assert tok.token_type(98) == 3  # <|think|> is a control token
    assert tok.token_type(5) == 4  # <h1> is user-defined
    assert tok.token_type(FIRST_BYTE_ID + 0x41) == 6
    assert tok.token_type(3) == 2


def test_ids_match_transformers(tok, reference):
    strings = all_strings() + SPECIAL_TEXTS + ODD_TEXTS
    mismatches = [(text, reference.encode(text), tok.encode(text)) for text in strings
                  if reference.encode(text) != tok.encode(text)]
    assert mismatches == []


def random_texts(count, seed):
    """Return seeded random texts built from pieces that stress merges and fallbacks."""
    rng = random.Random(seed)
    alphabet = ["the", "he", "t", "h", "e", " ", "  ", "\n", "\t", "é", "ï", "日本", "こんにちは", "世界", "😀",
                "\U0001f9ec", "<", "|", ">", "<|turn>", "<turn|>", "<h1>", "\t\t", "\u2581", "Alice", "said",
                "'", ".", ",", "0", "12", "\x00", "\u0301"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40))) for _ in range(count)]


def test_random_texts_match_transformers(tok, reference):
    for text in random_texts(400, seed=5):
        assert tok.encode(text) == reference.encode(text), repr(text)


def test_ids_match_gemma_tokenizer_class(tok, json_path):
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

    gemma = GemmaTokenizer(tokenizer_file=str(json_path))
    for text in SPECIAL_TEXTS + ODD_TEXTS + ["Hello world", " x  y   z"]:
        assert tok.encode(text) == gemma.encode(text), text


def test_long_text_matches_transformers(tok, reference, english_text):
    text = english_text[:100_000]
    assert tok.encode(text) == reference.encode(text)
    spaced = "x " * 20_000
    assert tok.encode(spaced) == reference.encode(spaced)


def test_special_false_matches_split_special(tok, json_path):
    from transformers import PreTrainedTokenizerFast

    split = PreTrainedTokenizerFast(tokenizer_file=str(json_path), split_special_tokens=True)
    for text in SPECIAL_TEXTS:
        # User-defined tokens such as <h1> stay whole in both; control tokens become text.
        assert tok.encode(text, special=False) == split.encode(text), text


def test_add_bos_override(tok, json_path):
    assert tok.encode("Hi", add_bos=False) == tok.encode("Hi")[1:]
    no_bos = Tokenizer.from_tokenizer_json(json_path, add_bos=False)
    assert not no_bos.add_bos
    assert no_bos.encode("Hi") == tok.encode("Hi")[1:]


def test_directory_path_loads(tok, json_path):
    from_dir = Tokenizer.from_tokenizer_json(json_path.parent)
    assert from_dir.encode("Hello there") == tok.encode("Hello there")


def round_trips(text):
    return "\u2581" not in text and not any(content in text for content in CONTROL_TOKENS.values())


def test_decode_round_trip(tok, reference):
    for text in all_strings() + ODD_TEXTS:
        ids = tok.encode(text, add_bos=False)
        assert tok.decode(ids) == reference.decode(ids, skip_special_tokens=True), text
        # Control tokens written in the text decode to "" when skipped, and a literal U+2581
        # decodes to a space, so only texts without them come back whole.
        if round_trips(text):
            assert tok.decode(ids) == text


def test_decode_special_tokens(tok, reference):
    text = SPECIAL_TEXTS[0]
    ids = tok.encode(text)
    assert tok.decode(ids) == reference.decode(ids, skip_special_tokens=True)
    assert tok.decode(ids, skip_special=False) == "<bos>" + text


def test_stream_decode_equals_decode(tok):
    for text in ODD_TEXTS + ["naïve 日本 😀 end"]:
        ids = tok.encode(text, add_bos=False)
        stream = StreamDecoder(tok)
        pieces = [stream.push(token_id) for token_id in ids]
        pieces.append(stream.flush())
        assert "".join(pieces) == tok.decode(ids), text


def test_missing_characters_fall_back_to_bytes(tok):
    # Characters absent from the trained vocabulary become one <0xXX> token per UTF-8 byte.
    for character in ["\U0001f9ec", "\u0f00", "\U0001d518"]:
        assert tok.find(character) is None
        expected = [FIRST_BYTE_ID + byte for byte in character.encode("utf-8")]
        assert tok.encode(character, add_bos=False) == expected, character


# ------------------------------------------------------------ GGUF


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory, json_path):
    pytest.importorskip("gguf")
    return write_gguf(tmp_path_factory.mktemp("bpe_gguf") / "vocab.gguf", json_path)


@pytest.fixture(scope="module")
def gguf_tok(gguf_path):
    return Tokenizer.from_gguf(str(gguf_path))


def test_gguf_ids_match_tokenizer_json(gguf_tok, tok):
    # The GGUF reader splits at newline runs as llama.cpp does and the tokenizer.json here does
    # not, so only texts without newlines must agree.
    assert gguf_tok.kind == "bpe"
    assert gguf_tok.n_merges == tok.n_merges
    assert gguf_tok.add_bos
    for text in all_strings() + SPECIAL_TEXTS + ODD_TEXTS:
        if "\n" not in text:
            assert gguf_tok.encode(text) == tok.encode(text), text


def test_gguf_ids_match_llama_cpp(gguf_tok, gguf_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    llama = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    mismatches = []
    for text in all_strings() + SPECIAL_TEXTS + ODD_TEXTS + random_texts(200, seed=6):
        expected = llama.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        if gguf_tok.encode(text) != expected:
            mismatches.append((text, expected, gguf_tok.encode(text)))
    assert mismatches == []


def test_newline_split_json_matches_transformers(tmp_path, english_text):
    from transformers import PreTrainedTokenizerFast

    path = tmp_path / "tokenizer.json"
    build_tokenizer_json(english_text, path, vocab_size=1500, split_newlines=True)
    ours = Tokenizer.from_tokenizer_json(path)
    reference = PreTrainedTokenizerFast(tokenizer_file=str(path))
    for text in all_strings() + SPECIAL_TEXTS + ODD_TEXTS + [english_text[:20000]]:
        assert ours.encode(text) == reference.encode(text), text


def test_gguf_merge_with_unknown_piece(tmp_path, json_path):
    pytest.importorskip("gguf")
    path = write_gguf(tmp_path / "bad.gguf", json_path, merges=["\u2581t h", "no_such_piece x"])
    with pytest.raises(ValueError, match="merge 1 .*no_such_piece x"):
        Tokenizer.from_gguf(str(path))


def test_gguf_missing_merges(tmp_path, json_path):
    pytest.importorskip("gguf")
    path = write_gguf(tmp_path / "nomerges.gguf", json_path, merges=False)
    with pytest.raises(ValueError, match="tokenizer.ggml.merges"):
        Tokenizer.from_gguf(str(path))


def test_gguf_merges_of_wrong_type(tmp_path, json_path):
    pytest.importorskip("gguf")
    path = write_gguf(tmp_path / "intmerges.gguf", json_path, merges=[1, 2, 3])
    with pytest.raises(ValueError, match="tokenizer.ggml.merges is an array of .*expected string"):
        Tokenizer.from_gguf(str(path))


def test_gguf_unsupported_model(tmp_path, json_path):
    pytest.importorskip("gguf")
    path = write_gguf(tmp_path / "gpt2.gguf", json_path, model="gpt2")
    with pytest.raises(NotImplementedError, match="'gpt2'"):
        Tokenizer.from_gguf(str(path))


# ------------------------------------------- small vocabularies against tokenizers


def small_bpe(vocab, merges, **options):
    """Return (ours, reference) for a hand-made vocabulary with the space normalizer and no added tokens."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, normalizers

    reference = HFTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", **options))
    reference.normalizer = normalizers.Replace(" ", "\u2581")
    pieces = [None] * len(vocab)
    for content, token_id in vocab.items():
        pieces[token_id] = content
    types = np.ones(len(pieces), dtype=np.int32)
    types[vocab["<unk>"]] = 2
    for token_id, content in enumerate(pieces):
        if content.startswith("<0x"):
            types[token_id] = 6
    merge_ids = np.array([[vocab[left], vocab[right]] for left, right in merges], dtype=np.int32).reshape(-1, 2)
    ours = Tokenizer(pieces, types=types, unk_id=vocab["<unk>"], merges=merge_ids,
                     byte_fallback=options.get("byte_fallback", False),
                     ignore_merges=options.get("ignore_merges", False))
    return ours, reference


def test_rank_order_not_score_order():
    # "bc" has the better rank, so "abc" becomes a + bc, although "ab" is a token too.
    vocab = {"<unk>": 0, "a": 1, "b": 2, "c": 3, "ab": 4, "bc": 5, "abc": 6}
    ours, reference = small_bpe(vocab, [("b", "c"), ("a", "b"), ("a", "bc")], fuse_unk=True)
    for text in ["abc", "ab", "abcabc", "aabbcc", "cba", "abab"]:
        assert ours.encode(text) == reference.encode(text).ids, text
    assert ours.encode("abc") == [6]


def test_repeated_merge_keeps_last_rank():
    vocab = {"<unk>": 0, "a": 1, "b": 2, "c": 3, "ab": 4, "bc": 5}
    ours, reference = small_bpe(vocab, [("b", "c"), ("a", "b"), ("b", "c")], fuse_unk=True)
    assert ours.encode("abc") == reference.encode("abc").ids
    assert ours.encode("abc") == [4, 3]


def test_equal_ranks_merge_leftmost():
    vocab = {"<unk>": 0, "a": 1, "aa": 2, "aaa": 3}
    ours, reference = small_bpe(vocab, [("a", "a"), ("aa", "a")], fuse_unk=True)
    for length in range(1, 12):
        assert ours.encode("a" * length) == reference.encode("a" * length).ids, length


def test_unknown_characters_fuse():
    vocab = {"<unk>": 0, "a": 1, "b": 2, "ab": 3}
    ours, reference = small_bpe(vocab, [("a", "b")], fuse_unk=True)
    for text in ["xyz", "abxyzab", "ax\u00e9\U0001f600b", "q"]:
        assert ours.encode(text) == reference.encode(text).ids, text


def test_ignore_merges_option():
    # "abc" is a token but no merge chain builds it from its characters.
    vocab = {"<unk>": 0, "a": 1, "b": 2, "c": 3, "ab": 4, "abc": 5}
    ours, reference = small_bpe(vocab, [("a", "b")], fuse_unk=True, ignore_merges=True)
    for text in ["abc", "ab", "abcc", "c"]:
        assert ours.encode(text) == reference.encode(text).ids, text
    assert ours.encode("abc") == [5]


def test_byte_fallback_small_vocab():
    vocab = {"<unk>": 0, "a": 1}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    ours, reference = small_bpe(vocab, [], fuse_unk=True, byte_fallback=True)
    for text in ["a\u00e9a", "\U0001f600", "aa"]:
        assert ours.encode(text) == reference.encode(text).ids, text


# ------------------------------------------------------------ errors


def constructor_errors():
    pieces = ["<unk>", "a", "b", "ab"]
    types = np.array([2, 1, 1, 1], dtype=np.int32)
    return [
        (dict(merges=np.array([[1, 9]], dtype=np.int32)), ValueError, r"merge 0 is the pair \(1, 9\)"),
        (dict(merges=np.array([[2, 1]], dtype=np.int32)), ValueError, "merge 0 joins pieces 2 and 1 into 'ba'"),
        (dict(merges=np.array([1, 2], dtype=np.int32)), ValueError, r"shape \(n, 2\)"),
        (dict(merges=np.array([[1, 2]], dtype=np.int64)), TypeError, "int32"),
        (dict(merges=[[1, 2]]), TypeError, "int32 array"),
        (dict(split_newlines=1), ValueError, "split_newlines=1 is invalid"),
        (dict(merges=np.array([[1, 2]], dtype=np.int32), split_newlines=5), ValueError, "split_newlines=5"),
    ], pieces, types


def test_constructor_rejects_bad_merges():
    cases, pieces, types = constructor_errors()
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            Tokenizer(pieces, types=types, unk_id=0, **kwargs)


def edit_json(json_path, tmp_path, edit):
    data = json.loads(json_path.read_text(encoding="utf-8"))
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


JSON_ERRORS = [
    (lambda d: d["model"].update(type="WordPiece"), "model.type"),
    (lambda d: d["model"].update(dropout=0.1), "model.dropout"),
    (lambda d: d["model"].update(fuse_unk=False), "model.fuse_unk"),
    (lambda d: d["model"].update(continuing_subword_prefix="##"), "model.continuing_subword_prefix"),
    (lambda d: d.update(normalizer={"type": "Lowercase"}), "normalizer"),
    (lambda d: d.update(normalizer=None), "normalizer"),
    (lambda d: d.update(pre_tokenizer={"type": "Metaspace", "replacement": "\u2581"}), "pre_tokenizer"),
    (lambda d: d.update(decoder={"type": "Strip", "content": " ", "start": 1, "stop": 0}), "decoder step 0"),
    (lambda d: d.update(post_processor={"type": "BertProcessing"}), "post_processor"),
    (lambda d: d["added_tokens"][0].update(lstrip=True), r"added_tokens\[0\].lstrip"),
    (lambda d: d["model"]["merges"].append(["\u2581t", "no_such_piece"]), "no_such_piece"),
    (lambda d: d["model"]["vocab"].pop("<unused50>"), "no token has id 50"),
    (lambda d: d["model"].update(unk_token="<missing>"), "model.unk_token"),
    (lambda d: d["added_tokens"][0].pop("content"), r"added_tokens\[0\]"),
    (lambda d: d["added_tokens"][0].update(id=-2), r"added_tokens\[0\].id"),
    (lambda d: d["model"]["merges"].append(7), r"model.merges\[\d+\]"),
    (lambda d: d["model"].update(merges="a b"), "model.merges"),
    (lambda d: d.update(decoder="Replace"), "decoder"),
    (lambda d: d.update(decoder={"type": "Sequence", "decoders": [5]}), "malformed tokenizer.json"),
]


@pytest.mark.parametrize("edit, field", JSON_ERRORS, ids=[f"{index}-{field}" for index, (_, field) in
                                                         enumerate(JSON_ERRORS)])
def test_tokenizer_json_rejects_unsupported(json_path, tmp_path, edit, field):
    path = edit_json(json_path, tmp_path, edit)
    with pytest.raises(ValueError, match=field):
        Tokenizer.from_tokenizer_json(path)


def test_tokenizer_json_syntax_error(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": {\n  "type": "BPE",,\n}', encoding="utf-8")
    with pytest.raises(ValueError, match="invalid JSON at line 2"):
        Tokenizer.from_tokenizer_json(path)


def test_tokenizer_json_missing_file(tmp_path):
    with pytest.raises(OSError):
        Tokenizer.from_tokenizer_json(tmp_path / "absent.json")


# ------------------------------------------------------------ speed


def test_long_input_speed_near_tokenizers(tok, json_path):
    # The tokenizers library merges a long word with a priority queue in O(n log n). Both slow
    # down alike once the working set leaves the CPU caches, so the ratio to it in the same run
    # catches a quadratic merge loop (about 1000x slower at 100 KB) without depending on the
    # machine. Timings use the best of 3 runs to damp noise from other processes.
    from tokenizers import Tokenizer as HFTokenizer

    reference = HFTokenizer.from_file(str(json_path))
    text = "the quick brown fox jumps over the lazy dog. " * 2300  # about 100 KB

    def best_time(function):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        return min(times)

    ours = best_time(lambda: tok.encode(text))
    theirs = best_time(lambda: reference.encode(text))
    assert ours < 3 * theirs
