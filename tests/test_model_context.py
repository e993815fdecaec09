"""Tests of model contexts: several KV caches on one set of weights (Model.create_session).

The reference for every check is a second Model loaded separately from the same file and run
alone, so a context that shared or corrupted state with another would differ from it. Both
run the same C forward pass with the same thread count, whose reductions have a fixed order,
so outputs are compared exactly.
"""

import gc
import threading

import numpy as np
import pytest

from turboquant import Model, _core

CTX = 128
THREADS = 2
PROMPTS = ["The capital of France is", "def fibonacci(n):"]


@pytest.fixture(scope="module")
def model():
    return Model.load(threads=THREADS, ctx=CTX)


@pytest.fixture(scope="module")
def reference():
    """A separately loaded model: greedy continuations and logits of each prompt run alone."""
    alone = Model.load(threads=THREADS, ctx=CTX)
    texts = {}
    logits = {}
    for prompt in PROMPTS:
        alone.reset()
        texts[prompt] = alone.generate(prompt, max_tokens=12)
        logits[prompt] = alone.logits(alone.tokenize(prompt))
    return texts, logits


def test_session_logits_match_separate_model(model, reference):
    _, logits = reference
    session = model.create_session()
    for prompt in PROMPTS:
        np.testing.assert_array_equal(session.logits(session.tokenize(prompt)), logits[prompt])


def test_sessions_keep_separate_caches(model, reference):
    texts, _ = reference
    first = model.create_session()
    second = model.create_session()
    # Interleave the two streams token by token: each must see only its own cache.
    streams = [first.generate(PROMPTS[0], max_tokens=12, stream=True),
               second.generate(PROMPTS[1], max_tokens=12, stream=True)]
    outputs = ["", ""]
    active = [True, True]
    while any(active):
        for i, stream in enumerate(streams):
            if active[i]:
                piece = next(stream, None)
                if piece is None:
                    active[i] = False
                else:
                    outputs[i] += piece
    assert outputs[0] == texts[PROMPTS[0]]
    assert outputs[1] == texts[PROMPTS[1]]
    assert model._core.n_past == 0, "the parent's default cache must stay empty"


def test_sessions_run_in_parallel_threads(model, reference):
    texts, _ = reference
    sessions = [model.create_session() for _ in range(4)]
    results = [None] * len(sessions)
    errors = []

    def run(index):
        try:
            results[index] = sessions[index].generate(PROMPTS[index % 2], max_tokens=12)
        except Exception as exc:  # reported below with its thread index
            errors.append((index, exc))

    workers = [threading.Thread(target=run, args=(i,)) for i in range(len(sessions))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert not errors
    for index, text in enumerate(results):
        assert text == texts[PROMPTS[index % 2]], f"session {index}"


def test_session_settings():
    model = Model.load(threads=THREADS, ctx=CTX, cache_type_k="f16", cache_type_v="f16")
    session = model.create_session(threads=1, ctx=64, cache_type_k="q8_0")
    assert session.threads == 1
    assert session.n_ctx == 64
    assert session.cache_type_k == "q8_0"
    assert session.cache_type_v == model.cache_type_v
    # Bytes per position over all layers: a q8_0 row stores 34 bytes per 32 values, f16 2 per value.
    config = model.config
    row_values = config["n_kv_heads"] * config["head_dim"]
    expected = config["n_layers"] * (row_values // 32 * 34 + row_values * 2)
    assert session.kv_bytes_per_token() == expected
    inherited = model.create_session()
    assert inherited.n_ctx == CTX
    assert inherited.threads == THREADS


def test_session_keeps_weights_alive():
    parent = Model.load(threads=THREADS, ctx=32)
    session = parent.create_session()
    del parent
    gc.collect()
    assert session.generate("Hello", max_tokens=2) is not None


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"ctx": 0}, ValueError),
        ({"threads": 0}, ValueError),
        ({"threads": "2"}, TypeError),
        ({"cache_type_k": "q3_x"}, ValueError),
        ({"cache_type_v": 16}, TypeError),
    ],
)
def test_session_rejects_bad_settings(model, kwargs, error):
    with pytest.raises(error):
        model.create_session(**kwargs)


def test_core_context_not_constructible():
    with pytest.raises(TypeError):
        _core.Context()


def test_context_threads_setter(model, reference):
    texts, _ = reference
    session = model.create_session()
    session._core.threads = 1
    assert session.threads == 1
    # One thread changes how decode attention splits its positions, so logits may differ
    # in the last bits; the greedy text of this short prompt does not.
    assert session.generate(PROMPTS[0], max_tokens=12) == texts[PROMPTS[0]]
    with pytest.raises(ValueError):
        session._core.threads = -1
    with pytest.raises(TypeError):
        session._core.threads = 1.5


@pytest.mark.parametrize("balance", [False, True])
def test_session_inherits_key_balancing(balance):
    # kv_balance_keys changes how a tq4 cache codes the keys, so a session that dropped the
    # parent's setting would differ from a model loaded alone with it.
    settings = dict(threads=THREADS, ctx=32, cache_type_k="tq4", cache_type_v="tq4", kv_recent_f16=0,
                    kv_balance_keys=balance)
    parent = Model.load(**settings)
    session = parent.create_session()
    tokens = parent.tokenize(PROMPTS[0])
    expected = Model.load(**settings).logits(tokens)
    np.testing.assert_array_equal(session.logits(tokens), expected)
    other = Model.load(**{**settings, "kv_balance_keys": not balance}).logits(tokens)
    assert np.abs(other - expected).max() > 0, "key balancing must change tq4 logits"
