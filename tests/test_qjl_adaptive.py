"""The 2-bit QJL residual of the +qjl KV-cache codecs, and caches with mixed per-position
residual precision.

References: scores and value sums are checked against NumPy on the rows the codec decodes.
Unbiasedness and variance are measured over many codec seeds against the exact inner
products. The magnitude plane is checked against the 2-bit Lloyd-Max quantizer of N(0, 1),
computed here with math.erf. Mixed-precision attention is compared with float64 NumPy
attention over rows that are each decoded at their own precision.
"""

import math

import numpy as np
import pytest

from test_kv_cache_codec import attention_over_stored
from turboquant import _core

QJL_TYPES = ["tq3+qjl", "tq4+qjl", "polar+qjl"]
SEED = 5


def gaussian_2bit_threshold():
    """Outer threshold t of the 4-level Lloyd-Max quantizer of N(0, 1): levels +-a, +-b with
    a = E[u | 0 < u < t], b = E[u | u > t] and t = (a + b) / 2."""
    pdf = lambda u: math.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
    cdf = lambda u: 0.5 * math.erfc(-u / math.sqrt(2))
    a, b = 0.5, 1.5
    for _ in range(200):
        t = 0.5 * (a + b)
        a = (pdf(0) - pdf(t)) / (cdf(t) - 0.5)
        b = pdf(t) / (1 - cdf(t))
    return 0.5 * (a + b)


def random_rows(seed, n, head_dim=128):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, head_dim)).astype(np.float32)


# ---- Codec ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", QJL_TYPES)
def test_2bit_rows_add_magnitude_plane(name):
    # A 2-bit row is the 1-bit row (same norm, main codes, residual norm and signs) followed
    # by head_dim / 8 bytes of magnitude bits, which a 1-bit write leaves at zero.
    d = 128
    x = random_rows(1, 64, d)
    one_bit_codec = _core.KVCodec(name, d, SEED)
    codec = _core.KVCodec(name, d, SEED, max_qjl_bits=2)
    assert one_bit_codec.max_qjl_bits == 1
    assert codec.max_qjl_bits == 2
    assert codec.row_bytes == one_bit_codec.row_bytes + d // 8
    rows_1 = codec.encode(x, qjl_bits=1)
    rows_2 = codec.encode(x, qjl_bits=2)
    np.testing.assert_array_equal(rows_1[:, : -d // 8], one_bit_codec.encode(x))
    np.testing.assert_array_equal(rows_2[:, : -d // 8], rows_1[:, : -d // 8])
    assert not rows_1[:, -d // 8:].any()

    # Each projected residual entry u is N(0, 1) over the projection, so a fraction
    # P(|u| >= t) of the magnitude bits is set. 8192 bits give a standard error of 0.005.
    t = gaussian_2bit_threshold()
    expected = math.erfc(t / math.sqrt(2))
    fraction = np.unpackbits(rows_2[:, -d // 8:]).mean()
    assert abs(fraction - expected) < 0.03


@pytest.mark.parametrize("name", QJL_TYPES)
@pytest.mark.parametrize("qjl_bits", [1, 2])
def test_scores_match_decoded_rows(name, qjl_bits):
    # The kernels score on codes; NumPy takes the dot products of the decoded rows.
    d = 128
    x = random_rows(2, 96, d)
    q = random_rows(3, 4, d)
    codec = _core.KVCodec(name, d, SEED, max_qjl_bits=2)
    rows = codec.encode(x, qjl_bits=qjl_bits)
    decoded = codec.decode(rows, qjl_bits=qjl_bits).astype(np.float64)
    expected = q.astype(np.float64) @ decoded.T
    # Float32 sums of 2 x 128 products of size about 1: errors near 1e-5 of |q| |x| = 128.
    np.testing.assert_allclose(codec.scores(q, rows, qjl_bits=qjl_bits), expected, rtol=0, atol=2e-3)

    weights = np.random.default_rng(4).random((3, 96)).astype(np.float32)
    np.testing.assert_allclose(codec.weighted_sum(rows, weights, qjl_bits=qjl_bits), weights @ decoded, rtol=0,
                               atol=2e-3)


def test_2bit_reads_differ_from_1bit():
    # Guard against a 2-bit read that ignores the magnitude plane.
    d = 128
    x = random_rows(5, 16, d)
    codec = _core.KVCodec("tq3+qjl", d, SEED, max_qjl_bits=2)
    rows = codec.encode(x, qjl_bits=2)
    assert np.abs(codec.decode(rows, qjl_bits=2) - codec.decode(rows, qjl_bits=1)).max() > 1e-2


@pytest.mark.parametrize("name", QJL_TYPES)
def test_residual_unbiased_and_2bit_variance_lower(name):
    # Over N_SEEDS codecs (each a new rotation and projection), the mean score error of every
    # (row, query) pair must be 0 within 4.5 standard errors, at 1 and at 2 bits. The f16
    # norms add a bias near 1e-3 of a score, far below the standard error of about 0.2.
    # For nearly orthogonal rows and queries the QJL variance is (pi / 2) |r|^2 |q|^2 / m at
    # 1 bit and |r|^2 |q|^2 / (m E[u Q(u)]) = 1.13 |r|^2 |q|^2 / m at 2 bits (0.72 times as
    # large); the pooled ratio must stay below 0.8.
    n_seeds = 400
    d = 128
    x = random_rows(6, 8, d)
    q = random_rows(7, 1, d)
    exact = (x.astype(np.float64) @ q[0].astype(np.float64))
    errors = {1: np.empty((n_seeds, 8)), 2: np.empty((n_seeds, 8))}
    for seed in range(n_seeds):
        codec = _core.KVCodec(name, d, seed, max_qjl_bits=2)
        for bits in (1, 2):
            errors[bits][seed] = codec.scores(q, codec.encode(x, qjl_bits=bits), qjl_bits=bits)[0] - exact
    for bits in (1, 2):
        standard_error = errors[bits].std(axis=0) / math.sqrt(n_seeds)
        z = errors[bits].mean(axis=0) / standard_error
        assert np.abs(z).max() < 4.5, (bits, z)
    assert errors[2].var() / errors[1].var() < 0.8


def test_qjl_bits_checked():
    codec = _core.KVCodec("tq3+qjl", 64, SEED)
    x = random_rows(8, 2, 64)
    with pytest.raises(ValueError, match="max_qjl_bits=2"):
        codec.encode(x, qjl_bits=2)
    with pytest.raises(ValueError, match="qjl_bits must be 1 to 1"):
        codec.scores(x, codec.encode(x), qjl_bits=0)
    with pytest.raises(ValueError, match="max_qjl_bits 3 is not supported"):
        _core.KVCodec("tq3+qjl", 64, SEED, max_qjl_bits=3)
    # Formats without a QJL stage have no residual, so their rows stay 1-bit.
    assert _core.KVCodec("tq3", 64, SEED, max_qjl_bits=2).max_qjl_bits == 1


# ---- Cache with mixed per-position precision ----------------------------------------------

def stored(x, cache_type, bits):
    """Rows as the cache stores them, each decoded at its own residual precision."""
    codec = _core.KVCodec(cache_type, x.shape[1], SEED, max_qjl_bits=2)
    if codec.max_qjl_bits == 1:
        return codec.decode(codec.encode(x))  # no residual stage: every row as written
    out = np.empty_like(x)
    for b in (1, 2):
        chosen = bits == b
        if chosen.any():
            out[chosen] = codec.decode(codec.encode(x[chosen], qjl_bits=b), qjl_bits=b)
    return out


def reference_attention(keys, values, queries, bits, cache_type_k, cache_type_v, window=0, recent_f16=0):
    """Causal float64 attention; position j is read from f16 when i - j < recent_f16."""
    return attention_over_stored(keys, values, queries, stored(keys, cache_type_k, bits),
                                 stored(values, cache_type_v, bits), window, recent_f16)


def mixed_bits(n, seed):
    """Runs of 1 and 2 of random lengths, as thinking switches on and off."""
    rng = np.random.default_rng(seed)
    bits = np.ones(n, dtype=np.uint8)
    start = 0
    value = 1
    while start < n:
        length = int(rng.integers(1, 9))
        bits[start:start + length] = value
        value = 3 - value
        start += length
    return bits


# Float32 sums over at most 48 rows of 128 values against a float64 reference: 2e-5 absolute
# on outputs of size about 0.3, as for the 1-bit codec cache.
TOLERANCE = 2e-5


@pytest.mark.parametrize("cache_type_k,cache_type_v", [("tq3+qjl", "tq3+qjl"), ("tq4+qjl", "polar+qjl"),
                                                       ("polar+qjl", "tq3"), ("f16", "tq4+qjl")])
@pytest.mark.parametrize("window,n_batch,splits,recent_f16", [(0, 0, 1, 0), (0, 5, 3, 0), (11, 4, 2, 0),
                                                              (7, 3, 1, 5)])
def test_mixed_precision_attention_matches_reference(cache_type_k, cache_type_v, window, n_batch, splits,
                                                     recent_f16):
    n, d = 48, 128
    rng = np.random.default_rng(9)
    keys = rng.standard_normal((n, d)).astype(np.float32)
    values = rng.standard_normal((n, d)).astype(np.float32)
    queries = (0.2 * rng.standard_normal((n, d))).astype(np.float32)
    bits = mixed_bits(n, seed=10)
    out = _core.kv_cache_attention(keys, values, queries, cache_type_k=cache_type_k, cache_type_v=cache_type_v,
                                   window=window, n_batch=n_batch, splits=splits, recent_f16=recent_f16, seed=SEED,
                                   qjl_bits=bits)
    expected = reference_attention(keys, values, queries, bits, cache_type_k, cache_type_v, window, recent_f16)
    np.testing.assert_allclose(out, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("kernels", [k for k in _core.build_info()["supported_kernels"] if k != "scalar"])
@pytest.mark.parametrize("cache_type_k,cache_type_v", [("tq3+qjl", "tq4+qjl"), ("polar+qjl", "tq3+qjl")])
def test_mixed_precision_simd_matches_scalar(kernels, cache_type_k, cache_type_v):
    n, d = 48, 128
    rng = np.random.default_rng(11)
    keys, values = rng.standard_normal((2, n, d)).astype(np.float32)
    queries = (0.2 * rng.standard_normal((2 * n, d))).astype(np.float32)
    args = dict(cache_type_k=cache_type_k, cache_type_v=cache_type_v, window=9, n_batch=4, seed=SEED,
                qjl_bits=mixed_bits(n, seed=12))
    scalar = _core.kv_cache_attention(keys, values, queries, kernels="scalar", **args)
    simd = _core.kv_cache_attention(keys, values, queries, kernels=kernels, **args)
    np.testing.assert_allclose(simd, scalar, rtol=0, atol=1e-5)


def test_mixed_precision_bits_checked():
    keys = random_rows(13, 8, 64)
    with pytest.raises(ValueError, match="one entry"):
        _core.kv_cache_attention(keys, keys, keys, cache_type_k="tq3+qjl", qjl_bits=np.ones(7, np.uint8))
    with pytest.raises(ValueError, match="precision 3 of position 2 is invalid"):
        _core.kv_cache_attention(keys, keys, keys, cache_type_k="tq3+qjl",
                                 qjl_bits=np.array([1, 2, 3, 1, 1, 1, 1, 1], np.uint8))
