"""Tests of turboquant._core.Sampler against a NumPy implementation of the same filter chain.

The reference below is written from the definitions (llama.cpp's order: penalties, top-k,
top-p, min-p, temperature), independently of the C code, and works on full sorted arrays
instead of partial selection.
"""

import math

import numpy as np
import pytest
from scipy import stats

from turboquant import _core


def reference_probs(
    logits,
    history=(),
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    min_p=0.0,
    repetition_penalty=1.0,
    presence_penalty=0.0,
    frequency_penalty=0.0,
    penalty_last_n=64,
):
    """Return the distribution that the chain defines, as float64 of shape (n_vocab,)."""
    w = np.array(logits, dtype=np.float32)
    n_vocab = w.size

    # Penalties, in float32 arithmetic like the C code.
    history = list(history)
    if penalty_last_n == 0:
        window = []
    elif penalty_last_n == -1:
        window = history
    else:
        window = history[-penalty_last_n:]
    ids, counts = np.unique(np.array(window, dtype=np.int64), return_counts=True)
    rep = np.float32(repetition_penalty)
    for token, count in zip(ids, counts):
        x = w[token]
        x = x * rep if x <= 0 else x / rep
        x = x - (np.float32(count) * np.float32(frequency_penalty) + np.float32(presence_penalty))
        w[token] = x

    probs = np.zeros(n_vocab)
    if temperature == 0.0:
        probs[int(np.argmax(w))] = 1.0
        return probs

    # Sort by logit descending, then by id ascending; -inf tokens are never kept.
    order = np.lexsort((np.arange(n_vocab), -w.astype(np.float64)))
    order = order[np.isfinite(w[order])]
    max_logit = float(w[order[0]])
    keep = order
    if top_k > 0:
        keep = keep[:top_k]
    if top_p < 1.0:
        p = np.exp(w[keep].astype(np.float64) - max_logit)
        cumulative = np.cumsum(p / p.sum())
        reached = np.nonzero(cumulative >= np.float32(top_p))[0]
        end = reached[0] + 1 if reached.size else keep.size
        keep = keep[:end]
    if min_p > 0.0:
        threshold = max_logit + math.log(np.float32(min_p))
        kept = w[keep].astype(np.float64) >= threshold
        kept[0] = True
        keep = keep[kept]
    weights = np.exp((w[keep].astype(np.float64) - max_logit) / np.float64(np.float32(temperature)))
    probs[keep] = weights / weights.sum()
    return probs


def random_logits(n_vocab, scale=3.0, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n_vocab) * scale).astype(np.float32)


# (parameters) covering each filter alone and in combination.
FILTER_CASES = [
    dict(temperature=1.0),
    dict(temperature=0.7),
    dict(temperature=1.5, top_k=1),
    dict(temperature=1.0, top_k=40),
    dict(temperature=1.0, top_p=0.9),
    dict(temperature=1.0, top_p=0.3),
    dict(temperature=1.0, min_p=0.05),
    dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),
    dict(temperature=1.0, top_k=100, top_p=0.5),
    dict(temperature=1.2, top_p=0.8, min_p=0.2),
    dict(temperature=1.0, repetition_penalty=1.3),
    dict(temperature=1.0, presence_penalty=0.5, frequency_penalty=0.25),
    dict(temperature=0.9, top_k=50, repetition_penalty=1.1, frequency_penalty=0.1, penalty_last_n=8),
    dict(temperature=1.0, repetition_penalty=1.5, penalty_last_n=-1),
    dict(temperature=1.0, repetition_penalty=1.5, penalty_last_n=0),
]

# Relative tolerance on kept probabilities: both sides sum in float64 but in different
# orders, which changes the last few bits only.
PROB_RTOL = 1e-9


@pytest.mark.parametrize("params", FILTER_CASES, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_probs_match_reference(params):
    logits = random_logits(1000, seed=1)
    history = np.random.default_rng(2).integers(0, 60, size=100).astype(np.int32)
    got = _core.Sampler(seed=0, **params).probs(logits, history)
    expected = reference_probs(logits, history, **params)
    assert got.dtype == np.float64
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got > 0, expected > 0)
    np.testing.assert_allclose(got, expected, rtol=PROB_RTOL, atol=0)
    assert got.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("scale", [0.5, 3.0, 12.0])
@pytest.mark.parametrize("top_p", [0.2, 0.9, 0.999])
def test_top_p_full_vocab_matches_reference(scale, top_p):
    # Gemma's vocabulary size; flat (scale 0.5) and peaked (scale 12) distributions take
    # different paths through the partial selection.
    logits = random_logits(262144, scale=scale, seed=3)
    got = _core.Sampler(temperature=1.0, top_p=top_p).probs(logits)
    expected = reference_probs(logits, temperature=1.0, top_p=top_p)
    np.testing.assert_array_equal(got > 0, expected > 0)
    np.testing.assert_allclose(got, expected, rtol=PROB_RTOL, atol=0)


def test_top_k_full_vocab_matches_reference():
    logits = random_logits(262144, seed=4)
    got = _core.Sampler(temperature=0.8, top_k=64).probs(logits)
    expected = reference_probs(logits, temperature=0.8, top_k=64)
    np.testing.assert_array_equal(np.nonzero(got)[0], np.nonzero(expected)[0])
    np.testing.assert_allclose(got, expected, rtol=PROB_RTOL, atol=0)


def test_top_k_ties_keep_lower_ids():
    logits = np.zeros(10, dtype=np.float32)
    got = _core.Sampler(temperature=1.0, top_k=3).probs(logits)
    np.testing.assert_allclose(got[:3], 1 / 3, rtol=1e-15)
    assert not got[3:].any()


@pytest.mark.parametrize("seed", range(5))
def test_greedy_is_argmax(seed):
    logits = random_logits(262144, seed=seed)
    sampler = _core.Sampler()
    assert sampler.sample(logits) == int(np.argmax(logits))


def test_greedy_tie_takes_lowest_id():
    logits = np.array([0.0, 2.0, 1.0, 2.0], dtype=np.float32)
    assert _core.Sampler(temperature=0.0).sample(logits) == 1


def test_greedy_applies_penalties():
    logits = np.array([1.0, 3.0, 2.5], dtype=np.float32)
    # 3.0 / 1.5 = 2.0 < 2.5, so the repeated token 1 loses to token 2.
    assert _core.Sampler(repetition_penalty=1.5).sample(logits, [1]) == 2


def test_penalties_match_formula():
    logits = np.array([2.0, -1.0, 0.5, 3.0, 0.0], dtype=np.float32)
    history = [0, 1, 1, 3, 3, 3, 2]
    params = dict(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25, penalty_last_n=6)
    # The window is the last 6 tokens: counts 1 -> 2, 3 -> 3, 2 -> 1; token 0 is outside.
    expected_logits = np.array(
        [
            2.0,
            -1.0 * 2.0 - (2 * 0.25 + 0.5),
            0.5 / 2.0 - (1 * 0.25 + 0.5),
            3.0 / 2.0 - (3 * 0.25 + 0.5),
            0.0,
        ]
    )
    expected = np.exp(expected_logits - expected_logits.max())
    expected /= expected.sum()
    got = _core.Sampler(temperature=1.0, **params).probs(logits, history)
    # float32 penalty arithmetic against float64 formula: a few float32 ulps of the logits.
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_empirical_frequencies_chi_square():
    logits = random_logits(24, scale=1.0, seed=5)
    params = dict(temperature=0.9, top_k=16, top_p=0.95, min_p=0.02)
    expected = reference_probs(logits, **params)
    sampler = _core.Sampler(seed=1234, **params)
    n_draws = 40000
    counts = np.bincount([sampler.sample(logits) for _ in range(n_draws)], minlength=logits.size)
    kept = expected > 0
    assert counts[~kept].sum() == 0
    # Fixed seed, so the outcome is deterministic; p > 1e-3 fails only for a biased sampler.
    result = stats.chisquare(counts[kept], expected[kept] * n_draws)
    assert result.pvalue > 1e-3


def test_same_seed_same_tokens():
    logits = random_logits(5000, scale=1.0, seed=6)
    a = _core.Sampler(temperature=1.0, seed=42)
    b = _core.Sampler(temperature=1.0, seed=42)
    first = [a.sample(logits) for _ in range(50)]
    assert first == [b.sample(logits) for _ in range(50)]
    c = _core.Sampler(temperature=1.0, seed=43)
    assert first != [c.sample(logits) for _ in range(50)]
    a.reseed(42)
    assert first == [a.sample(logits) for _ in range(50)]


def test_seed_none_is_recorded():
    logits = random_logits(5000, scale=1.0, seed=7)
    a = _core.Sampler(temperature=1.0)
    b = _core.Sampler(temperature=1.0, seed=a.seed)
    assert [a.sample(logits) for _ in range(20)] == [b.sample(logits) for _ in range(20)]


def test_banned_tokens_never_drawn():
    logits = np.zeros(8, dtype=np.float32)
    logits[::2] = -np.inf
    sampler = _core.Sampler(temperature=1.0, seed=3)
    drawn = {sampler.sample(logits) for _ in range(200)}
    assert drawn == {1, 3, 5, 7}


def test_history_accepts_array_and_list():
    logits = random_logits(100, seed=8)
    sampler = _core.Sampler(temperature=1.0, repetition_penalty=1.4)
    from_list = sampler.probs(logits, [5, 6, 7])
    from_array = sampler.probs(logits, np.array([5, 6, 7], dtype=np.int32))
    np.testing.assert_array_equal(from_list, from_array)


@pytest.mark.parametrize(
    "name, value",
    [
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("temperature", float("inf")),
        ("top_k", -1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_p", float("nan")),
        ("min_p", -0.1),
        ("min_p", 1.1),
        ("min_p", float("nan")),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.0),
        ("repetition_penalty", float("nan")),
        ("presence_penalty", float("nan")),
        ("frequency_penalty", float("inf")),
        ("penalty_last_n", -2),
    ],
)
def test_bad_parameter_raises(name, value):
    with pytest.raises(ValueError, match=name):
        _core.Sampler(**{name: value})


def test_bad_seed_raises():
    with pytest.raises(ValueError, match="seed"):
        _core.Sampler(seed=-1)
    with pytest.raises(TypeError, match="seed"):
        _core.Sampler(seed="1")


def test_bad_logits_raise():
    sampler = _core.Sampler(temperature=1.0)
    with pytest.raises(ValueError, match="logits"):
        sampler.sample(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(ValueError, match="logits"):
        sampler.sample(np.array([0.0, np.inf], dtype=np.float32))
    with pytest.raises(ValueError, match="-inf"):
        sampler.sample(np.full(4, -np.inf, dtype=np.float32))
    with pytest.raises(TypeError, match="float32"):
        sampler.sample(np.zeros(4, dtype=np.float64))
    with pytest.raises(ValueError, match="1-D"):
        sampler.sample(np.zeros((2, 4), dtype=np.float32))


def test_bad_history_raises():
    sampler = _core.Sampler(temperature=1.0, repetition_penalty=1.2)
    logits = np.zeros(4, dtype=np.float32)
    with pytest.raises(ValueError, match="history"):
        sampler.sample(logits, [0, 4])
    with pytest.raises(ValueError, match="history"):
        sampler.sample(logits, [-1])
    with pytest.raises(TypeError, match="history"):
        sampler.sample(logits, np.zeros(2, dtype=np.int64))
    with pytest.raises(TypeError, match="history"):
        sampler.sample(logits, ["a"])
