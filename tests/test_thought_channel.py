"""Tests of thought-channel splitting in generation (Model.generate(thought_channel=True),
Model.chat on Gemma 4) and in ``turboquant generate --chat --think``.

The model is the tiny Gemma 4 of tests/gemma4_reply_model.py, whose weights force one reply
with a thought channel. The reference for the split is ``turboquant.chat.split_thought_channel``
applied to the reply decoded with its control tokens.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import gemma4_reply_model as reply  # noqa: E402
from turboquant import Model, _core  # noqa: E402
from turboquant.chat import ReplyDelta, encode_gemma4_chat, split_thought_channel  # noqa: E402
from turboquant.model import _ThoughtChannelSplitter  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("reply_model") / "gemma4_reply.gguf"
    reply.build_reply_model(path)
    return path


@pytest.fixture(scope="module")
def library(model_path):
    return Model.load(model_path, threads=1)


def test_generate_splits_reply(library):
    ids = encode_gemma4_chat(library.tokenizer, QUESTION, enable_thinking=True)
    library.reset()
    result = library.generate(ids, max_tokens=64, temperature=0.0, thought_channel=True)
    assert result == ReplyDelta(reply.REASONING, reply.ANSWER)
    assert library.last_stats.reasoning_tokens == reply.REASONING_TOKENS
    assert library.last_stats.completion_tokens == len(reply.REPLY_PIECES) - 1
    assert library.last_stats.finish_reason == "stop"


def test_stream_pieces_join_to_whole(library):
    ids = encode_gemma4_chat(library.tokenizer, QUESTION, enable_thinking=True)
    library.reset()
    pieces = list(library.generate(ids, max_tokens=64, temperature=0.0, thought_channel=True, stream=True))
    for piece in pieces:
        assert isinstance(piece, ReplyDelta)
        assert bool(piece.reasoning) != bool(piece.content), piece
    assert "".join(piece.reasoning for piece in pieces) == reply.REASONING
    assert "".join(piece.content for piece in pieces) == reply.ANSWER


@pytest.mark.parametrize("split", range(len(reply.OTHER_SPLITS)))
def test_other_token_splits_same_reply(tmp_path, split):
    pieces = reply.OTHER_SPLITS[split]
    reference = reply.build_reply_model(tmp_path / "split.gguf", pieces)
    model = Model.load(tmp_path / "split.gguf", threads=1)
    ids = encode_gemma4_chat(model.tokenizer, QUESTION, enable_thinking=True)
    expected_ids = reply.reply_ids(pieces)
    assert reply.reference_greedy_reply(reference, ids, len(expected_ids) + 4) == expected_ids
    decoded = model.detokenize(expected_ids[:-1], skip_special=False)
    assert split_thought_channel(decoded) == (reply.REASONING, reply.ANSWER)

    streamed = list(model.generate(ids, max_tokens=64, temperature=0.0, thought_channel=True, stream=True))
    for piece in streamed:
        for marker in ("<|channel>", "<channel|>", "thought", "<|", "|>"):
            assert marker not in piece.reasoning + piece.content, piece
    assert "".join(piece.reasoning for piece in streamed) == reply.REASONING
    assert "".join(piece.content for piece in streamed) == reply.ANSWER
    assert model.last_stats.reasoning_tokens == pieces.index("<channel|>") + 1


def test_chat_uses_gemma4_template(library):
    assert library.chat_format == "gemma4"
    library.reset()
    result = library.chat(QUESTION, enable_thinking=True, temperature=0.0)
    assert result == ReplyDelta(reply.REASONING, reply.ANSWER)
    expected_ids = encode_gemma4_chat(library.tokenizer, QUESTION, enable_thinking=True)
    assert library.encode_chat(QUESTION, enable_thinking=True) == expected_ids
    assert library.last_stats.prompt_tokens == len(expected_ids)


def test_stop_string_in_reasoning_ignored(library):
    library.reset()
    result = library.chat(QUESTION, temperature=0.0, stop=["capital", "France)"])
    assert result == ReplyDelta(reply.REASONING, "Paris (")
    assert library.last_stats.finish_reason == "stop"


def test_gemma3_vocabulary_rejects_thinking():
    gemma3 = Model.load(threads=1, ctx=64)
    assert gemma3.chat_format == "gemma3"
    with pytest.raises(ValueError, match="<|channel>"):
        gemma3.generate("Hello", max_tokens=2, thought_channel=True)
    with pytest.raises(ValueError, match="no thinking mode"):
        gemma3.encode_chat(QUESTION, enable_thinking=True)
    with pytest.raises(TypeError, match="enable_thinking must be a bool"):
        gemma3.encode_chat(QUESTION, enable_thinking="yes")


def split_by_splitter(tokenizer, ids):
    decoder = _core.StreamDecoder(tokenizer, skip_special=True)
    splitter = _ThoughtChannelSplitter(tokenizer, decoder)
    reasoning, content = [], []
    for token in ids:
        delta = splitter.push(token, decoder.push(token))
        reasoning.append(delta.reasoning)
        content.append(delta.content)
    delta = splitter.finish(decoder.flush())
    reasoning.append(delta.reasoning)
    content.append(delta.content)
    return "".join(reasoning), "".join(content), splitter.reasoning_tokens


def test_splitter_matches_parser_on_random_replies(library):
    # Random sequences of markers, newlines, words and lone UTF-8 bytes (so that a character can
    # be cut off by a marker). Reference: the parser over the whole decoded text.
    tokenizer = library.tokenizer
    pool = [100, 101] * 3 + [tokenizer.find(piece) for piece in
                             ("thought", "<0x0A>", ".\n", "▁Paris", "France", "<0xC3>", "<0xA9>", "<0xE2>", "<", "|")]
    rng = np.random.default_rng(0)
    for _ in range(300):
        ids = [int(token) for token in rng.choice(pool, size=int(rng.integers(1, 14)))]
        reasoning, content, counted = split_by_splitter(tokenizer, ids)
        assert (reasoning, content) == split_thought_channel(tokenizer.decode(ids, skip_special=False)), ids
        inside = False
        expected_count = 0
        for token in ids:
            inside = inside or token == 100
            expected_count += inside
            inside = inside and token != 101
        assert counted == expected_count, ids


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "turboquant", "generate", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_think_json(model_path):
    result = run_cli("--weights", str(model_path), "--chat", "--think", "--json", "--prompt", "Capital of France?")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["text"] == reply.ANSWER
    assert facts["reasoning"] == reply.REASONING
    assert facts["reasoning_tokens"] == reply.REASONING_TOKENS


def test_cli_think_streams_reasoning_to_stderr(model_path):
    result = run_cli("--weights", str(model_path), "--chat", "--think", "--prompt", "Capital of France?")
    assert result.returncode == 0, result.stderr
    assert result.stdout == reply.ANSWER + "\n"
    assert result.stderr.startswith(reply.REASONING + "\n")


def test_cli_think_needs_chat(model_path):
    result = run_cli("--weights", str(model_path), "--think", "--prompt", "x")
    assert result.returncode != 0
    assert "--think needs --chat" in result.stderr
