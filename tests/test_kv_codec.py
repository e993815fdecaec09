"""KV-cache codecs (TurboQuant MSE, TurboQuant + QJL, PolarQuant) and attention on codes.

References used here are independent of the C code: the Lloyd-Max codebook of the sphere
coordinate density computed with SciPy's Beta distribution, the published MSE of Lloyd-Max
quantizers on unit vectors, NumPy float16 rounding, and NumPy attention on the decoded rows.
"""

import math

import numpy as np
import pytest
from scipy import special, stats

from turboquant import _core

MSE_FORMATS = {"tq4": (4, 4), "tq3.5": (4, 3), "tq3": (3, 3), "tq2.5": (3, 2), "tq2": (2, 2)}
# Fractional formats code each half of the channels as its own vector, with its own norm.
SPLIT_FORMATS = {"tq3.5", "tq2.5"}
QJL_FORMATS = {"tq3+qjl": (2, 2), "tq4+qjl": (3, 3)}
ALL_FORMATS = ["f16", *MSE_FORMATS, *QJL_FORMATS, "polar", "polar+qjl"]
CODE_FORMATS = [name for name in ALL_FORMATS if name != "f16"]

# Mean squared error of Lloyd-Max quantizers of N(0, 1/d) coordinates on unit vectors,
# as published in the TurboQuant paper (arXiv 2504.19874) for b = 2, 3, 4 bits.
PUBLISHED_UNIT_MSE = {2: 0.1175, 3: 0.0345, 4: 0.0095}

SUPPORTED_KERNELS = _core.build_info()["supported_kernels"]


def unit_rows(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def expected_row_bytes(name, d):
    """Row size counted from the format definition: codes plus f16 norms, no padding."""
    if name == "f16":
        return 2 * d
    if name in MSE_FORMATS:
        first, second = MSE_FORMATS[name]
        norms = 2 if name in SPLIT_FORMATS else 1
        return 2 * norms + (first + second) * (d // 2) // 8
    if name in QJL_FORMATS:
        first, second = QJL_FORMATS[name]
        return 2 + 2 + (first + second) * (d // 2) // 8 + d // 8
    pairs = d // 2
    polar = 2 + (4 + 3) * pairs // 8
    return polar + (2 + d // 8 if name == "polar+qjl" else 0)


def sphere_lloyd_max(d, levels):
    """Lloyd-Max centroids for one coordinate of a uniform unit vector in d dimensions.

    (x + 1) / 2 follows Beta((d-1)/2, (d-1)/2); the first moment of a cell has the closed
    form of the integral of x (1 - x^2)^m.
    """
    m = (d - 3) / 2
    normalizer = special.beta(0.5, (d - 1) / 2)
    beta = stats.beta((d - 1) / 2, (d - 1) / 2)
    centroids = np.linspace(-2.5, 2.5, levels) / math.sqrt(d)
    for _ in range(3000):
        edges = np.concatenate([[-1.0], (centroids[1:] + centroids[:-1]) / 2, [1.0]])
        mass = np.diff(beta.cdf((edges + 1) / 2))
        moment = ((1 - edges[:-1] ** 2) ** (m + 1) - (1 - edges[1:] ** 2) ** (m + 1)) / (2 * (m + 1)) / normalizer
        updated = moment / mass
        if np.max(np.abs(updated - centroids)) < 1e-15:
            break
        centroids = updated
    return centroids


def numpy_attention(q, keys, values, scale, n_kv_heads):
    """softmax(scale * q k^T) v in float64; keys and values have shape (n, n_kv_heads, d)."""
    group = q.shape[0] // n_kv_heads
    out = np.empty(q.shape, dtype=np.float64)
    for h in range(q.shape[0]):
        k = keys[:, h // group, :].astype(np.float64)
        v = values[:, h // group, :].astype(np.float64)
        s = scale * (k @ q[h].astype(np.float64))
        w = np.exp(s - s.max())
        out[h] = (w / w.sum()) @ v
    return out


@pytest.fixture
def kernels(monkeypatch):
    """Create codecs with a chosen kernel variant through TURBOQUANT_KERNELS."""

    def make(variant, name, d, seed=0):
        monkeypatch.setenv("TURBOQUANT_KERNELS", variant)
        codec = _core.KVCodec(name, d, seed)
        monkeypatch.delenv("TURBOQUANT_KERNELS")
        assert codec.kernels == variant
        return codec

    return make


# ---------------------------------------------------------------------------------------
# Sizes, codebooks and reconstruction error


@pytest.mark.parametrize("name", ALL_FORMATS)
@pytest.mark.parametrize("d", [64, 256, 1024])
def test_row_bytes_counted_honestly(name, d):
    codec = _core.KVCodec(name, d)
    assert codec.row_bytes == expected_row_bytes(name, d)
    assert codec.bits_per_value == pytest.approx(8 * expected_row_bytes(name, d) / d)
    rows = codec.encode(np.ones((3, d), dtype=np.float32))
    assert rows.shape == (3, codec.row_bytes)
    assert rows.dtype == np.uint8


def test_bits_per_value_gemma_head():
    # head_dim 256: 16 bits of norm per row add 1/16 bit per value; QJL and the split of the
    # fractional formats add a second norm.
    expected = {"tq4": 4.0625, "tq3.5": 3.625, "tq3": 3.0625, "tq2.5": 2.625, "tq2": 2.0625,
                "tq3+qjl": 3.125, "tq4+qjl": 4.125, "polar": 3.5625, "polar+qjl": 4.625, "f16": 16.0}
    for name, bits in expected.items():
        assert _core.KVCodec(name, 256).bits_per_value == bits, name


@pytest.mark.parametrize("d", [64, 256, 1024])
@pytest.mark.parametrize("name", ["tq2", "tq3", "tq4"])
def test_codebook_matches_scipy_lloyd_max(name, d):
    bits = MSE_FORMATS[name][0]
    reference = sphere_lloyd_max(d, 2**bits)
    # Centroids are stored as float32 (relative rounding 6e-8); the C quadrature error is
    # far smaller, so 4 float32 ulps bound the difference.
    np.testing.assert_allclose(_core.KVCodec(name, d).centroids, reference, rtol=2.5e-7, atol=0)


@pytest.mark.parametrize("name", ["tq2", "tq3", "tq4"])
def test_unit_mse_matches_published(name):
    bits = MSE_FORMATS[name][0]
    codec = _core.KVCodec(name, 256, seed=3)
    x = unit_rows(np.random.default_rng(1), 2000, 256)
    mse = np.mean(np.sum((codec.decode(codec.encode(x)) - x) ** 2, axis=1))
    # The published values are for Gaussian coordinates; the sphere density at d = 256 moves
    # them by under 1%, and the sampling error over 2000 rows is about 0.2%.
    assert mse == pytest.approx(PUBLISHED_UNIT_MSE[bits], rel=0.02)


def test_fractional_widths_between_neighbours():
    x = unit_rows(np.random.default_rng(2), 1000, 256)

    def mse(name):
        codec = _core.KVCodec(name, 256, seed=5)
        return np.mean(np.sum((codec.decode(codec.encode(x)) - x) ** 2, axis=1))

    # Half the coordinates at each width: the error is the mean of the two neighbours' errors.
    assert mse("tq3.5") == pytest.approx((mse("tq4") + mse("tq3")) / 2, rel=0.03)
    assert mse("tq2.5") == pytest.approx((mse("tq3") + mse("tq2")) / 2, rel=0.03)


@pytest.mark.parametrize("name", sorted(SPLIT_FORMATS))
@pytest.mark.parametrize("d", [64, 256])
def test_split_formats_code_each_half_as_a_vector(name, d):
    # tq3.5 and tq2.5 code channels [0, d/2) and [d/2, d) as two vectors of d/2 channels, each
    # with its own f16 norm, rotation and Lloyd-Max codebook for a unit vector in d/2 dimensions.
    codec = _core.KVCodec(name, d, seed=8)
    half = d // 2
    first_bits, second_bits = MSE_FORMATS[name]
    np.testing.assert_allclose(codec.centroids, sphere_lloyd_max(half, 2**first_bits), rtol=2.5e-7, atol=0)
    rotation = codec.rotate(np.eye(d, dtype=np.float32)).T.astype(np.float64)
    assert np.abs(rotation[:half, half:]).max() == 0
    assert np.abs(rotation[half:, :half]).max() == 0

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((50, d)) * np.r_[np.full(half, 3.0), np.ones(half)]).astype(np.float32)
    expected = np.empty((50, d))
    for part, bits in ((slice(0, half), first_bits), (slice(half, d), second_bits)):
        centroids = sphere_lloyd_max(half, 2**bits)
        block = rotation[part, part]
        norm = np.linalg.norm(x[:, part].astype(np.float64), axis=1, keepdims=True)
        y = (x[:, part] / norm) @ block.T
        nearest = centroids[np.abs(y[..., None] - centroids).argmin(axis=-1)]
        expected[:, part] = (nearest @ block) * norm.astype(np.float16).astype(np.float64)
    # float32 rotation and centroids against float64: relative error about 1e-6.
    np.testing.assert_allclose(codec.decode(codec.encode(x)), expected, rtol=0, atol=1e-5 * np.abs(x).max())


@pytest.mark.parametrize("name", sorted(MSE_FORMATS))
@pytest.mark.parametrize("d", [64, 256])
def test_norm_correction_matches_numpy(name, d):
    # With norm correction each coded vector stores ||x|| / ||c||, where c is its nearest
    # centroids in the rotated domain. The reference rebuilds c from the codec's rotation and
    # the SciPy codebook, and the decoded rows must have the input's length.
    codec = _core.KVCodec(name, d, seed=11, norm_correction=True)
    assert codec.norm_correction
    assert not _core.KVCodec(name, d).norm_correction
    parts = 2 if name in SPLIT_FORMATS else 1
    size = d // parts
    rotation = codec.rotate(np.eye(d, dtype=np.float32)).T.astype(np.float64)

    rng = np.random.default_rng(12)
    x = (rng.standard_normal((40, d)) * rng.uniform(0.1, 20, (40, 1))).astype(np.float32)
    decoded = codec.decode(codec.encode(x))
    expected = np.empty((40, d))
    for p, bits in enumerate(MSE_FORMATS[name][:parts]):
        part = slice(p * size, (p + 1) * size)
        centroids = sphere_lloyd_max(size, 2**bits)
        norm = np.linalg.norm(x[:, part].astype(np.float64), axis=1, keepdims=True)
        y = (x[:, part] / norm) @ rotation[part, part].T
        nearest = centroids[np.abs(y[..., None] - centroids).argmin(axis=-1)]
        stored = (norm / np.linalg.norm(nearest, axis=1, keepdims=True)).astype(np.float16).astype(np.float64)
        expected[:, part] = (nearest @ rotation[part, part]) * stored
        # The f16 norm rounds by at most 2^-11 relative.
        lengths = np.linalg.norm(decoded[:, part].astype(np.float64), axis=1)
        np.testing.assert_allclose(lengths, norm[:, 0], rtol=2**-11 + 1e-6)
    np.testing.assert_allclose(decoded, expected, rtol=0, atol=1e-5 * np.abs(x).max())


@pytest.mark.parametrize("name", ["tq3+qjl", "tq4+qjl", "polar", "polar+qjl", "f16"])
def test_norm_correction_leaves_other_formats(name):
    # The QJL residual needs the plain norm to stay unbiased, and polar and f16 rows do not
    # decode to Lloyd-Max conditional means, so their rows are unchanged.
    x = np.random.default_rng(13).standard_normal((20, 128)).astype(np.float32)
    plain = _core.KVCodec(name, 128, seed=2).encode(x)
    corrected = _core.KVCodec(name, 128, seed=2, norm_correction=True).encode(x)
    np.testing.assert_array_equal(corrected, plain)


def test_polar_mse_matches_radius_and_angle_error():
    d = 256
    codec = _core.KVCodec("polar", d, seed=7)
    radius = codec.centroids.astype(np.float64)
    # Pair radius r of a uniform unit vector: r^2 follows Beta(1, (d-2)/2). With the angle
    # uniform in a bin of width pi/4 and the point shortened by k = sin(pi/8)/(pi/8), the
    # pair error is E[r^2] - k^2 E[rhat^2], and E[r^2] = 2/d.
    edges = np.concatenate([[0.0], (radius[1:] + radius[:-1]) / 2, [1.0]])
    mass = np.diff(stats.beta(1, (d - 2) / 2).cdf(edges**2))
    shrink = math.sin(math.pi / 8) / (math.pi / 8)
    expected = (d / 2) * (2 / d - shrink**2 * np.sum(mass * radius**2))

    x = unit_rows(np.random.default_rng(3), 2000, d)
    mse = np.mean(np.sum((codec.decode(codec.encode(x)) - x) ** 2, axis=1))
    assert mse == pytest.approx(expected, rel=0.02)


def test_norm_scales_reconstruction():
    codec = _core.KVCodec("tq3", 256, seed=1)
    x = unit_rows(np.random.default_rng(4), 8, 256)
    scales = np.array([1e-3, 0.5, 1.0, 3.0, 40.0, 700.0, 9000.0, 60000.0], dtype=np.float32)[:, None]
    decoded_unit = codec.decode(codec.encode(x))
    decoded_scaled = codec.decode(codec.encode(x * scales))
    # Codes depend on the direction only; the f16 norm adds a relative rounding of 2^-11.
    np.testing.assert_allclose(decoded_scaled / scales, decoded_unit, rtol=1e-3, atol=1e-6)


def test_zero_row_decodes_to_zero():
    for name in ALL_FORMATS:
        codec = _core.KVCodec(name, 128)
        assert np.all(codec.decode(codec.encode(np.zeros((1, 128), np.float32))) == 0), name


def test_f16_rows_match_numpy_float16():
    codec = _core.KVCodec("f16", 256)
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((64, 256)) * np.exp(rng.uniform(-20, 8, (64, 256)))).astype(np.float32)
    x[0, :4] = [65504.0, -65504.0, 6e-8, 2.0**-24]
    rows = codec.encode(x)
    np.testing.assert_array_equal(rows.view(np.float16), x.astype(np.float16))
    np.testing.assert_array_equal(codec.decode(rows), x.astype(np.float16).astype(np.float32))


# ---------------------------------------------------------------------------------------
# Scores, value sums and attention on codes


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_scores_equal_dot_with_decoded(name):
    d = 256
    codec = _core.KVCodec(name, d, seed=11)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((300, d)).astype(np.float32) * rng.uniform(0.1, 30, (300, 1)).astype(np.float32)
    q = rng.standard_normal((4, d)).astype(np.float32)
    rows = codec.encode(x)
    expected = q.astype(np.float64) @ codec.decode(rows).astype(np.float64).T
    # Same math in another order (rotated domain, float32 sums of 256 terms): relative error
    # about sqrt(256) * 6e-8 of the sum of |terms|, bounded by |q| |x|.
    bound = 1e-5 * np.linalg.norm(q, axis=1)[:, None] * np.linalg.norm(x, axis=1)[None, :]
    assert np.all(np.abs(codec.scores(q, rows) - expected) <= bound)
    np.testing.assert_allclose(codec.scores(q[0], rows), codec.scores(q[:1], rows)[0], rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_weighted_sum_equals_decoded_sum(name):
    d = 128
    codec = _core.KVCodec(name, d, seed=12)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((200, d)).astype(np.float32)
    w = rng.random((3, 200)).astype(np.float32)
    rows = codec.encode(x)
    expected = w.astype(np.float64) @ codec.decode(rows).astype(np.float64)
    # float32 sums of 200 positive-weight terms; bound relative to sum_i w_i |x_i|.
    bound = 1e-5 * (w @ np.linalg.norm(x, axis=1))[:, None]
    assert np.all(np.abs(codec.weighted_sum(rows, w) - expected) <= bound)


ATTENTION_PAIRS = [("f16", "f16"), ("tq4", "tq4"), ("tq3.5", "tq2.5"), ("tq3", "tq3"), ("tq2", "tq2"),
                   ("tq3+qjl", "tq3"), ("tq4+qjl", "tq4+qjl"), ("polar", "tq3"), ("polar+qjl", "polar"),
                   ("f16", "tq2.5")]


@pytest.mark.parametrize("key_format,value_format", ATTENTION_PAIRS)
def test_attention_matches_numpy_on_decoded(key_format, value_format):
    d, n, n_heads, n_kv = 256, 777, 4, 1
    rng = np.random.default_rng(8)
    key_codec = _core.KVCodec(key_format, d, seed=21)
    value_codec = _core.KVCodec(value_format, d, seed=21)
    keys = key_codec.encode(rng.standard_normal((n, d)).astype(np.float32))
    values = value_codec.encode(rng.standard_normal((n, d)).astype(np.float32))
    q = (rng.standard_normal((n_heads, d)) * 2).astype(np.float32)
    scale = 1 / 16

    out = _core.kv_attention(q, keys, values, key_codec, value_codec, scale)
    expected = numpy_attention(q, key_codec.decode(keys)[:, None, :], value_codec.decode(values)[:, None, :],
                               scale, n_kv)
    # Scores differ from the float64 reference by about 1e-5 (float32 sums), which moves the
    # softmax weights by the same relative amount; outputs are O(0.1), so 2e-5 absolute
    # leaves a factor of a few over the float32 error.
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)


def test_attention_grouped_heads_and_names():
    d, n, n_heads, n_kv = 128, 300, 8, 2
    rng = np.random.default_rng(9)
    key_codec = _core.KVCodec("tq3.5", d, seed=4)
    value_codec = _core.KVCodec("tq2.5", d, seed=4)
    k = rng.standard_normal((n, n_kv, d)).astype(np.float32)
    v = rng.standard_normal((n, n_kv, d)).astype(np.float32)
    keys = key_codec.encode(k.reshape(-1, d)).reshape(n, n_kv, -1)
    values = value_codec.encode(v.reshape(-1, d)).reshape(n, n_kv, -1)
    q = rng.standard_normal((n_heads, d)).astype(np.float32)

    out = _core.kv_attention(q, keys, values, "tq3.5", "tq2.5", 0.1, seed=4)
    expected = numpy_attention(q, key_codec.decode(keys.reshape(n * n_kv, -1)).reshape(n, n_kv, d),
                               value_codec.decode(values.reshape(n * n_kv, -1)).reshape(n, n_kv, d), 0.1, n_kv)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("d", [64, 512, 1024])
def test_attention_other_head_dims(d):
    rng = np.random.default_rng(10)
    codec = _core.KVCodec("tq3", d, seed=2)
    keys = codec.encode(rng.standard_normal((150, d)).astype(np.float32))
    values = codec.encode(rng.standard_normal((150, d)).astype(np.float32))
    q = rng.standard_normal((2, d)).astype(np.float32)
    out = _core.kv_attention(q, keys, values, codec, codec, 1 / math.sqrt(d))
    expected = numpy_attention(q, codec.decode(keys)[:, None], codec.decode(values)[:, None], 1 / math.sqrt(d), 1)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)


def test_attention_single_position_returns_value():
    codec = _core.KVCodec("tq4", 256)
    rows = codec.encode(np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32))
    q = np.ones((4, 256), np.float32)
    out = _core.kv_attention(q, rows, rows, codec, codec, 1.0)
    np.testing.assert_allclose(out, np.repeat(codec.decode(rows), 4, axis=0), rtol=0, atol=1e-6)


def test_attention_large_scores_stay_finite():
    # Scores of several thousand would overflow exp() without subtracting the maximum.
    codec = _core.KVCodec("tq3", 256, seed=1)
    rng = np.random.default_rng(11)
    keys = codec.encode((rng.standard_normal((64, 256)) * 30).astype(np.float32))
    values = codec.encode(rng.standard_normal((64, 256)).astype(np.float32))
    q = (rng.standard_normal((4, 256)) * 30).astype(np.float32)
    out = _core.kv_attention(q, keys, values, codec, codec, 1.0)
    assert np.all(np.isfinite(out))
    expected = numpy_attention(q, codec.decode(keys)[:, None], codec.decode(values)[:, None], 1.0, 1)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------
# QJL: unbiased inner products


@pytest.mark.parametrize("name,base", [("tq3+qjl", "tq2"), ("tq4+qjl", "tq3"), ("polar+qjl", "polar")])
def test_qjl_scores_unbiased_over_seeds(name, base):
    d, seeds = 128, 300
    rng = np.random.default_rng(12)
    x = unit_rows(rng, 4, d)
    # Queries correlated with the keys, so a shrinking (biased) estimator shows clearly.
    q = (x + 0.5 * unit_rows(rng, 4, d)).astype(np.float32)
    exact = np.sum(q.astype(np.float64) * x, axis=1)

    def estimates(fmt):
        values = []
        for seed in range(seeds):
            codec = _core.KVCodec(fmt, d, seed)
            rows = codec.encode(x)
            values.append([codec.scores(q[i], rows[i : i + 1])[0] for i in range(4)])
        return np.array(values)

    qjl = estimates(name)
    error = qjl.mean(axis=0) - exact
    standard_error = qjl.std(axis=0, ddof=1) / math.sqrt(seeds)
    # Unbiased: the mean over 300 independent rotations and projections lies within 4
    # standard errors of the exact inner product (false alarm rate about 2.5e-4 per pair).
    assert np.all(np.abs(error) < 4 * standard_error), (error, standard_error)

    # The MSE stage alone shrinks inner products; the QJL term must remove that bias.
    mse_only = estimates(base).mean(axis=0)
    assert np.all(mse_only < exact - 4 * standard_error)


# ---------------------------------------------------------------------------------------
# Kernel variants


@pytest.mark.parametrize("variant", [v for v in SUPPORTED_KERNELS if v != "scalar"])
@pytest.mark.parametrize("name", ALL_FORMATS)
def test_kernel_variant_matches_scalar(kernels, variant, name):
    d = 256
    rng = np.random.default_rng(13)
    scalar = kernels("scalar", name, d, seed=9)
    simd = kernels(variant, name, d, seed=9)
    x = rng.standard_normal((130, d)).astype(np.float32)
    q = rng.standard_normal((8, d)).astype(np.float32)
    w = rng.random((5, 130)).astype(np.float32)

    rows = scalar.encode(x)
    np.testing.assert_array_equal(simd.encode(x), rows)

    # Float sums in another order: relative error about 1e-6 of |q| |x| per score.
    bound = 1e-5 * np.linalg.norm(q, axis=1)[:, None] * np.linalg.norm(x, axis=1)[None, :]
    for count in (1, 3, 4, 8):
        assert np.all(np.abs(simd.scores(q[:count], rows) - scalar.scores(q[:count], rows)) <= bound[:count])
    np.testing.assert_allclose(simd.weighted_sum(rows, w), scalar.weighted_sum(rows, w), rtol=0,
                               atol=1e-5 * np.max(w @ np.linalg.norm(x, axis=1)))

    out_simd = _core.kv_attention(q[:4], rows, rows, simd, simd, 0.05)
    out_scalar = _core.kv_attention(q[:4], rows, rows, scalar, scalar, 0.05)
    np.testing.assert_allclose(out_simd, out_scalar, rtol=0, atol=2e-5)


# ---------------------------------------------------------------------------------------
# Input checks


@pytest.mark.parametrize("name", ["tq5", "q4_0", "", "TQ3", "tq3+qjl2"])
def test_unknown_format_lists_valid_names(name):
    with pytest.raises(ValueError) as info:
        _core.KVCodec(name, 256)
    for valid in ALL_FORMATS:
        assert valid in str(info.value)


@pytest.mark.parametrize("d", [0, -1, 32, 48, 100, 2048, 384])
def test_bad_head_dim_raises(d):
    with pytest.raises(ValueError, match="power of two from 64 to 1024"):
        _core.KVCodec("tq3", d)


def test_bad_inputs_raise():
    codec = _core.KVCodec("tq3", 128)
    with pytest.raises(ValueError, match="columns"):
        codec.encode(np.zeros((2, 64), np.float32))
    with pytest.raises(TypeError, match="float32"):
        codec.encode(np.zeros((2, 128), np.float64))
    with pytest.raises(ValueError, match="finite"):
        codec.encode(np.full((1, 128), np.nan, np.float32))
    with pytest.raises(ValueError, match="f16"):
        codec.encode(np.full((1, 128), 1e4, np.float32))
    rows = codec.encode(np.ones((4, 128), np.float32))
    with pytest.raises(ValueError, match="shape"):
        codec.decode(rows[:, :-1].copy())
    with pytest.raises(TypeError, match="uint8"):
        codec.decode(rows.astype(np.int16))
    with pytest.raises(ValueError, match="1 to 8"):
        codec.scores(np.ones((9, 128), np.float32), rows)
    with pytest.raises(ValueError, match="columns"):
        codec.weighted_sum(rows, np.ones((1, 5), np.float32))


def test_attention_bad_inputs_raise():
    codec = _core.KVCodec("tq3", 128)
    rows = codec.encode(np.ones((4, 128), np.float32))
    q = np.ones((4, 128), np.float32)
    with pytest.raises(ValueError, match="valid formats"):
        _core.kv_attention(q, rows, rows, "tq9", "tq3", 1.0)
    with pytest.raises(ValueError, match="must match"):
        _core.kv_attention(q, rows, rows[:3].copy(), codec, codec, 1.0)
    with pytest.raises(ValueError, match="at least one position"):
        _core.kv_attention(q, rows[:0].copy(), rows[:0].copy(), codec, codec, 1.0)
    with pytest.raises(ValueError, match="head_dim"):
        _core.kv_attention(np.ones((4, 256), np.float32), rows, rows, codec, codec, 1.0)
    with pytest.raises(ValueError, match="maximum 8"):
        _core.kv_attention(np.ones((9, 128), np.float32), rows, rows, codec, codec, 1.0)
    with pytest.raises(TypeError, match="format name or a KVCodec"):
        _core.kv_attention(q, rows, rows, 3, codec, 1.0)
    with pytest.raises(ValueError, match="shape"):
        _core.kv_attention(q, rows, rows, codec, "tq4", 1.0)
