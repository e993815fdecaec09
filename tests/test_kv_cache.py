"""KV cache storage types and attention kernels against a NumPy reference.

The reference stores keys and values with the `gguf` package's quantizers (bit-exact
ports of ggml's quantize_row_*_ref) or NumPy's float16, dequantizes them, and runs
causal (optionally sliding-window) softmax attention in float64.
"""

import gguf
import numpy as np
import pytest

from turboquant import _core

CACHE_TYPES = ["f32", "f16", "q8_0", "q4_0"]
SUPPORTED_KERNELS = _core.build_info()["supported_kernels"]


def stored(x, cache_type):
    """Return x as the cache stores it, decoded to float32 by an independent implementation."""
    if cache_type == "f32":
        return x
    if cache_type == "f16":
        return x.astype(np.float16).astype(np.float32)
    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[cache_type]
    return gguf.quants.dequantize(gguf.quants.quantize(x, qtype), qtype).reshape(x.shape)


def reference_attention(keys, values, queries, window):
    """Causal softmax attention over positions j <= i (and i - j < window if window > 0).

    queries has g rows per position: rows i * g .. i * g + g - 1 belong to position i.
    """
    n = keys.shape[0]
    group = queries.shape[0] // n
    scores = queries.astype(np.float64) @ keys.astype(np.float64).T
    i = np.repeat(np.arange(n), group)[:, None]
    j = np.arange(n)[None, :]
    visible = j <= i
    if window > 0:
        visible &= i - j < window
    scores = np.where(visible, scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return weights @ values.astype(np.float64)


def random_rows(seed, n=40, head_dim=64):
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((n, head_dim)).astype(np.float32)
    values = rng.standard_normal((n, head_dim)).astype(np.float32)
    # Scaled so that the softmax is neither flat nor one-hot.
    queries = (0.3 * rng.standard_normal((n, head_dim))).astype(np.float32)
    return keys, values, queries


@pytest.mark.parametrize("kernels", SUPPORTED_KERNELS)
@pytest.mark.parametrize("cache_type_k", CACHE_TYPES)
@pytest.mark.parametrize("cache_type_v", ["f16", "q4_0"])
def test_attention_matches_numpy(kernels, cache_type_k, cache_type_v):
    keys, values, queries = random_rows(seed=1)
    out = _core.kv_cache_attention(
        keys, values, queries, cache_type_k=cache_type_k, cache_type_v=cache_type_v, kernels=kernels
    )
    expected = reference_attention(stored(keys, cache_type_k), stored(values, cache_type_v), queries, window=0)
    # Same stored values on both sides, so only float32 summation order differs:
    # scores of about 64 products and sums of 40 weighted rows stay within 1e-5.
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kernels", SUPPORTED_KERNELS)
@pytest.mark.parametrize("window,n_batch", [(7, 5), (7, 1), (16, 40), (1, 3)])
def test_sliding_window_ring(kernels, window, n_batch):
    # n_batch < n makes the ring (window + n_batch slots) wrap several times.
    keys, values, queries = random_rows(seed=2)
    out = _core.kv_cache_attention(
        keys, values, queries, cache_type_k="q8_0", cache_type_v="f32", window=window, n_batch=n_batch,
        kernels=kernels,
    )
    expected = reference_attention(stored(keys, "q8_0"), values, queries, window=window)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kernels", SUPPORTED_KERNELS)
@pytest.mark.parametrize("group,splits", [(4, 1), (4, 3), (1, 5), (2, 64)])
def test_grouped_queries_and_splits(kernels, group, splits):
    # 600 positions with a 300-position window and micro-batches of 64: chunks of
    # 256 rows meet the ring's wrap point, and each query's range is split in up
    # to 64 parts, some of them empty for the first positions.
    rng = np.random.default_rng(7)
    n, head_dim = 600, 32
    keys = rng.standard_normal((n, head_dim)).astype(np.float32)
    values = rng.standard_normal((n, head_dim)).astype(np.float32)
    queries = (0.3 * rng.standard_normal((n * group, head_dim))).astype(np.float32)
    out = _core.kv_cache_attention(
        keys, values, queries, cache_type_k="f16", cache_type_v="q8_0", window=300, n_batch=64, splits=splits,
        kernels=kernels,
    )
    expected = reference_attention(stored(keys, "f16"), stored(values, "q8_0"), queries, window=300)
    # Sums over up to 300 rows in float32, with online softmax rescaling.
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("kernels", [k for k in SUPPORTED_KERNELS if k != "scalar"])
@pytest.mark.parametrize("cache_type", CACHE_TYPES)
def test_simd_matches_scalar(kernels, cache_type):
    keys, values, queries = random_rows(seed=3, n=33, head_dim=256)
    args = dict(cache_type_k=cache_type, cache_type_v=cache_type, window=9, n_batch=4)
    scalar = _core.kv_cache_attention(keys, values, queries, kernels="scalar", **args)
    simd = _core.kv_cache_attention(keys, values, queries, kernels=kernels, **args)
    # Identical stored rows; only the order of float additions differs.
    np.testing.assert_allclose(simd, scalar, rtol=0, atol=1e-5)


def test_unknown_cache_type_lists_names():
    keys, values, queries = random_rows(seed=4, n=2)
    with pytest.raises(ValueError, match="f32, f16, q8_0, q4_0"):
        _core.kv_cache_attention(keys, values, queries, cache_type_k="q5_1")


def test_head_dim_not_multiple_of_32():
    keys, values, queries = random_rows(seed=5, n=2, head_dim=48)
    with pytest.raises(NotImplementedError, match="multiple of 32"):
        _core.kv_cache_attention(keys, values, queries)


def test_mismatched_rows():
    keys, values, queries = random_rows(seed=6, n=4)
    with pytest.raises(ValueError, match="same nonzero number of rows"):
        _core.kv_cache_attention(keys, values[:3], queries)
    with pytest.raises(ValueError, match="1 to 64 times as many"):
        _core.kv_cache_attention(keys, values, queries[:3])


def test_invalid_splits():
    keys, values, queries = random_rows(seed=8, n=4)
    with pytest.raises(ValueError, match="splits must be between 1 and 64"):
        _core.kv_cache_attention(keys, values, queries, splits=0)
