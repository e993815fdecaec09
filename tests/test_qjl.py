"""Tests of turboquant.QJL against closed-form statistics and a NumPy reference of the estimator."""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from turboquant import _core
from turboquant.qjl_polar import QJL, PackedCodes

# Float32 sums of m terms in a different order differ by at most about m * 2^-23 times the
# sum of absolute terms; 4x that covers the rounding of the scale and the norm.
FLOAT32_EPS = 2.0**-23


def sketch_matrix(qjl):
    """Recover S (sketch_dim, dim) from the C core: the projection of e_k is column k of S."""
    return qjl.project(np.eye(qjl.dim, dtype=np.float32)).T.astype(np.float64)


def reference_levels(bits):
    """Lloyd-Max levels of N(0, 1) computed here with SciPy, independently of the C core."""
    if bits == 1:
        return np.array([-math.sqrt(2 / math.pi), math.sqrt(2 / math.pi)])
    inner, outer = 0.4, 1.6
    for _ in range(500):
        t = (inner + outer) / 2
        inner = (stats.norm.pdf(0) - stats.norm.pdf(t)) / (stats.norm.cdf(t) - 0.5)
        outer = stats.norm.pdf(t) / stats.norm.sf(t)
    return np.array([-outer, -inner, inner, outer])


def reference_moments(levels):
    """E[u Q(u)] and E[u^2 Q(u)^2] for u ~ N(0, 1), by numerical integration cell by cell."""
    edges = np.concatenate([[-np.inf], (levels[1:] + levels[:-1]) / 2, [np.inf]])
    gain = sum(
        level * integrate.quad(lambda u: u * stats.norm.pdf(u), lo, hi)[0]
        for level, lo, hi in zip(levels, edges[:-1], edges[1:])
    )
    fourth = sum(
        level**2 * integrate.quad(lambda u: u * u * stats.norm.pdf(u), lo, hi)[0]
        for level, lo, hi in zip(levels, edges[:-1], edges[1:])
    )
    return gain, fourth


def reference_codes(qjl, x):
    """Pack Q(S x / ||x||) the documented way: LSB first, 1 bit or 2 bits per entry."""
    projected = x.astype(np.float64) @ sketch_matrix(qjl).T
    if qjl.bits == 1:
        return np.packbits(projected >= 0, axis=1, bitorder="little")
    levels = np.array(qjl.levels, dtype=np.float64)
    thresholds = (levels[1:] + levels[:-1]) / 2
    u = projected / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    code = np.searchsorted(thresholds, u, side="right")
    padded = np.zeros((x.shape[0], -(-qjl.sketch_dim // 4) * 4), dtype=np.uint8)
    padded[:, : qjl.sketch_dim] = code
    groups = padded.reshape(x.shape[0], -1, 4)
    return (groups[..., 0] | groups[..., 1] << 2 | groups[..., 2] << 4 | groups[..., 3] << 6).astype(np.uint8)


def reference_estimate(qjl, x, y):
    """The estimator ||x|| / (m c) * <S y, Q(u)> evaluated in float64 with the C core's S."""
    sketch = sketch_matrix(qjl)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    norms = np.linalg.norm(x64, axis=1)
    levels = reference_levels(qjl.bits)
    gain, _ = reference_moments(levels)
    u = (x64 @ sketch.T) / norms[:, None]
    thresholds = (levels[1:] + levels[:-1]) / 2
    quantized = levels[np.searchsorted(thresholds, u, side="right")]
    return (y64 @ sketch.T) @ (quantized * norms[:, None]).T / (qjl.sketch_dim * gain)


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(1234)
    return rng.standard_normal((20, 48)).astype(np.float32), rng.standard_normal((3, 48)).astype(np.float32)


@pytest.mark.parametrize("bits", [1, 2])
def test_levels_and_moments_match_scipy(bits):
    qjl = QJL(8, bits=bits)
    levels = reference_levels(bits)
    gain, fourth = reference_moments(levels)
    np.testing.assert_allclose(qjl.levels, levels, rtol=1e-6)  # float32 storage of the levels
    assert qjl.gain == pytest.approx(gain, rel=1e-9)
    assert qjl.fourth_moment == pytest.approx(fourth, rel=1e-9)


def test_two_bit_gain_is_one_minus_published_mse():
    # The 4-level Lloyd-Max quantizer of N(0, 1) has MSE 0.1175 to 4 digits (a standard table value).
    assert QJL(8, bits=2).gain == pytest.approx(1 - 0.1175, abs=5e-5)


def test_sketch_entries_are_standard_normal():
    sketch = sketch_matrix(QJL(256, seed=5)).ravel()
    count = sketch.size
    # Mean and variance of 65536 N(0, 1) draws lie within 5 standard errors of 0 and 1.
    assert abs(sketch.mean()) < 5 / math.sqrt(count)
    assert abs(sketch.var() - 1) < 5 * math.sqrt(2 / count)
    assert stats.kstest(sketch, "norm").pvalue > 1e-4


@pytest.mark.parametrize("bits", [1, 2])
def test_codes_match_numpy_reference(bits, vectors):
    x, _ = vectors
    qjl = QJL(48, bits=bits, seed=7, sketch_dim=37)
    codes = qjl.quantize(x)
    np.testing.assert_array_equal(codes.arrays["codes"], reference_codes(qjl, x))
    np.testing.assert_allclose(codes.arrays["norms"], np.linalg.norm(x.astype(np.float64), axis=1), rtol=1e-6)


@pytest.mark.parametrize("bits", [1, 2])
def test_inner_product_matches_numpy_estimator(bits, vectors):
    x, y = vectors
    qjl = QJL(48, bits=bits, seed=11, sketch_dim=64)
    estimate = qjl.inner_product(qjl.quantize(x), y)
    expected = reference_estimate(qjl, x, y)
    # Float32 accumulation over 48 and 64 terms: relative error well below 1e-4 of the scale.
    scale = np.abs(expected).max()
    np.testing.assert_allclose(estimate, expected, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("bits", [1, 2])
def test_dequantize_dot_equals_inner_product(bits, vectors):
    x, y = vectors
    qjl = QJL(48, bits=bits, seed=2)
    codes = qjl.quantize(x)
    via_reconstruction = y.astype(np.float64) @ qjl.dequantize(codes).astype(np.float64).T
    scale = np.abs(via_reconstruction).max()
    np.testing.assert_allclose(qjl.inner_product(codes, y), via_reconstruction, rtol=0, atol=1e-4 * scale)


def estimates_over_seeds(bits, x, y, seeds, sketch_dim):
    values = np.empty(len(seeds))
    for index, seed in enumerate(seeds):
        qjl = QJL(x.size, bits=bits, seed=seed, sketch_dim=sketch_dim)
        values[index] = qjl.inner_product(qjl.quantize(x), y)[0, 0]
    return values


def pair_cases():
    rng = np.random.default_rng(99)
    x = rng.standard_normal(32).astype(np.float32)
    nearly_orthogonal = rng.standard_normal(32).astype(np.float32)
    correlated = (x + 0.3 * rng.standard_normal(32)).astype(np.float32)
    return {"independent": (x, nearly_orthogonal), "correlated": (x, correlated)}


SEEDS = range(3000)
SKETCH_DIM = 16


@pytest.fixture(scope="module")
def seed_study():
    """Estimates of <x, y> for 3000 independent sketches, per bit width and pair of vectors."""
    results = {}
    for case, (x, y) in pair_cases().items():
        for bits in (1, 2):
            results[case, bits] = estimates_over_seeds(bits, x, y, SEEDS, SKETCH_DIM)
    return results


@pytest.mark.parametrize("case", ["independent", "correlated"])
@pytest.mark.parametrize("bits", [1, 2])
def test_estimate_is_unbiased(seed_study, case, bits):
    x, y = pair_cases()[case]
    values = seed_study[case, bits]
    truth = float(x.astype(np.float64) @ y.astype(np.float64))
    variance = QJL(32, bits=bits, sketch_dim=SKETCH_DIM).estimator_variance(
        np.linalg.norm(x.astype(np.float64)), np.linalg.norm(y.astype(np.float64)), truth
    )
    standard_error = math.sqrt(variance / len(values))
    # 4 standard errors: a false failure has probability about 6e-5 per case.
    assert abs(values.mean() - truth) < 4 * standard_error


@pytest.mark.parametrize("case", ["independent", "correlated"])
@pytest.mark.parametrize("bits", [1, 2])
def test_variance_matches_closed_form(seed_study, case, bits):
    x, y = pair_cases()[case]
    values = seed_study[case, bits]
    truth = float(x.astype(np.float64) @ y.astype(np.float64))
    expected = QJL(32, bits=bits, sketch_dim=SKETCH_DIM).estimator_variance(
        np.linalg.norm(x.astype(np.float64)), np.linalg.norm(y.astype(np.float64)), truth
    )
    if bits == 1:
        closed_form_1bit = (
            math.pi / 2 * np.sum(x.astype(np.float64) ** 2) * np.sum(y.astype(np.float64) ** 2) - truth**2
        ) / SKETCH_DIM
        assert expected == pytest.approx(closed_form_1bit, rel=1e-9)
    centred = values - values.mean()
    sample_variance = np.mean(centred**2)
    # Standard error of a sample variance: sqrt((m4 - s^4) / N) with m4 the fourth central moment.
    standard_error = math.sqrt((np.mean(centred**4) - sample_variance**2) / len(values))
    assert abs(sample_variance - expected) < 4 * standard_error


def cosine_squared(x, y):
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    return float(x64 @ y64) ** 2 / float(x64 @ x64) / float(y64 @ y64)


def variance_crossover():
    """cos^2 of the angle between x and y where the 2-bit and 1-bit variances are equal.

    Per sketch row, in units of ||x||^2 ||y||^2, the variance is 1/c + k (F/c^2 - 1/c - 1)
    with k = cos^2 and F = E[u^2 Q(u)^2]; at 1 bit that is pi/2 - k.
    """
    gain, fourth = reference_moments(reference_levels(2))
    return (math.pi / 2 - 1 / gain) / (fourth / gain**2 - 1 / gain)


def test_two_bit_variance_crossover_value():
    # 2 bits win for |cos| below about 0.58. For nearly parallel vectors sign(u) |u| varies
    # less than u Q(u), so 1 bit has the lower variance there.
    crossover = variance_crossover()
    assert 0.33 < crossover < 0.35
    one_bit = QJL(8, bits=1)
    two_bit = QJL(8, bits=2)
    dot = math.sqrt(crossover)
    assert two_bit.estimator_variance(1.0, 1.0, dot) == pytest.approx(one_bit.estimator_variance(1.0, 1.0, dot))


def test_two_bit_variance_below_one_bit_when_nearly_orthogonal(seed_study):
    x, y = pair_cases()["independent"]
    assert cosine_squared(x, y) < variance_crossover()
    norms = np.linalg.norm(x.astype(np.float64)), np.linalg.norm(y.astype(np.float64))
    truth = float(x.astype(np.float64) @ y.astype(np.float64))
    one_bit = QJL(32, bits=1, sketch_dim=SKETCH_DIM).estimator_variance(*norms, truth)
    two_bit = QJL(32, bits=2, sketch_dim=SKETCH_DIM).estimator_variance(*norms, truth)
    assert two_bit < one_bit
    assert np.var(seed_study["independent", 2]) < np.var(seed_study["independent", 1])


def test_two_bit_variance_above_one_bit_when_parallel(seed_study):
    x, y = pair_cases()["correlated"]
    assert cosine_squared(x, y) > variance_crossover()
    assert np.var(seed_study["correlated", 2]) > np.var(seed_study["correlated", 1])


def test_two_bit_variance_ratio_for_orthogonal_pair():
    # With <x, y> = 0 the variances are ||x||^2 ||y||^2 / (m c); c = 2/pi and 1 - 0.1175.
    one_bit = QJL(8, bits=1).estimator_variance(1.0, 1.0, 0.0)
    two_bit = QJL(8, bits=2).estimator_variance(1.0, 1.0, 0.0)
    assert one_bit == pytest.approx(math.pi / 2 / 8, rel=1e-9)
    assert two_bit / one_bit == pytest.approx(2 / math.pi / (1 - 0.1175), abs=1e-4)


def test_zero_row_scores_zero():
    qjl = QJL(16, bits=2)
    codes = qjl.quantize(np.zeros((2, 16), dtype=np.float32))
    np.testing.assert_array_equal(codes.arrays["norms"], 0)
    np.testing.assert_array_equal(qjl.inner_product(codes, np.ones(16, dtype=np.float32)), 0)
    np.testing.assert_array_equal(qjl.dequantize(codes), 0)


@pytest.mark.parametrize("bits", [1, 2])
def test_simd_variants_equal_scalar(monkeypatch, bits):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 100)).astype(np.float32)
    y = rng.standard_normal((4, 100)).astype(np.float32)
    monkeypatch.setenv("TURBOQUANT_KERNELS", "scalar")
    scalar = QJL(100, bits=bits, seed=4, sketch_dim=77)
    scalar_codes = scalar.quantize(x)
    scalar_scores = scalar.inner_product(scalar_codes, y)
    projected = np.abs(scalar.project(y).astype(np.float64))
    for variant in _core.build_info()["supported_kernels"]:
        monkeypatch.setenv("TURBOQUANT_KERNELS", variant)
        qjl = QJL(100, bits=bits, seed=4, sketch_dim=77)
        assert qjl.kernels == variant
        codes = qjl.quantize(x)
        np.testing.assert_array_equal(codes.arrays["codes"], scalar_codes.arrays["codes"])
        np.testing.assert_array_equal(codes.arrays["norms"], scalar_codes.arrays["norms"])
        scores = qjl.inner_product(codes, y)
        # Each score sums 77 terms of size at most ||x|| |z_i| max|level| / (m c).
        bound = (
            4 * 77 * FLOAT32_EPS * max(np.abs(qjl.levels)) / (77 * qjl.gain)
            * np.outer(projected.sum(axis=1), codes.arrays["norms"])
        )
        assert np.all(np.abs(scores - scalar_scores) <= bound), variant


@pytest.mark.parametrize("bits", [1, 2])
def test_row_codes_independent_of_batch(monkeypatch, bits):
    # Rows are projected four at a time; a row must get the same codes alone or in a batch.
    x = np.random.default_rng(12).standard_normal((11, 100)).astype(np.float32)
    for variant in _core.build_info()["supported_kernels"]:
        monkeypatch.setenv("TURBOQUANT_KERNELS", variant)
        qjl = QJL(100, bits=bits, seed=3, sketch_dim=77)
        batch = qjl.quantize(x)
        projected_batch = qjl.project(x)
        for row in range(len(x)):
            single = qjl.quantize(x[row : row + 1])
            np.testing.assert_array_equal(single.arrays["codes"][0], batch.arrays["codes"][row])
            np.testing.assert_array_equal(qjl.project(x[row]), projected_batch[row : row + 1])


def test_same_seed_gives_same_codes(vectors):
    x, _ = vectors
    first = QJL(48, bits=2, seed=21).quantize(x)
    second = QJL(48, bits=2, seed=21).quantize(x)
    other = QJL(48, bits=2, seed=22).quantize(x)
    np.testing.assert_array_equal(first.arrays["codes"], second.arrays["codes"])
    assert not np.array_equal(first.arrays["codes"], other.arrays["codes"])


@pytest.mark.parametrize("bits, sketch_dim", [(1, 48), (2, 48), (1, 13), (2, 13)])
def test_bits_per_value_counts_codes_and_norm(bits, sketch_dim, vectors):
    x, _ = vectors
    codes = QJL(48, bits=bits, sketch_dim=sketch_dim).quantize(x)
    row_bytes = math.ceil(sketch_dim * bits / 8) + 4  # packed codes plus the float32 norm
    assert codes.nbytes == len(x) * row_bytes
    assert codes.bits_per_value == pytest.approx(8 * row_bytes / 48)


def test_serialization_round_trip(vectors):
    x, y = vectors
    qjl = QJL(48, bits=2, seed=8)
    codes = qjl.quantize(x)
    restored = PackedCodes.from_bytes(codes.to_bytes())
    assert (restored.kind, restored.dim, restored.bits, restored.seed, restored.n) == ("qjl", 48, 2, 8, len(x))
    for name, array in codes.arrays.items():
        np.testing.assert_array_equal(restored.arrays[name], array)
    np.testing.assert_array_equal(qjl.inner_product(restored, y), qjl.inner_product(codes, y))


def test_from_bytes_rejects_corrupt_data(vectors):
    x, _ = vectors
    data = QJL(48).quantize(x).to_bytes()
    with pytest.raises(ValueError, match="magic"):
        PackedCodes.from_bytes(b"XXXXXXXX" + data[8:])
    with pytest.raises(ValueError, match="truncated"):
        PackedCodes.from_bytes(data[:-1])
    with pytest.raises(ValueError, match="trailing"):
        PackedCodes.from_bytes(data + b"\0")
    with pytest.raises(ValueError, match="version"):
        PackedCodes.from_bytes(data[:8] + (2).to_bytes(4, "little") + data[12:])
    with pytest.raises(ValueError, match="header length"):
        PackedCodes.from_bytes(data[:12] + (10**6).to_bytes(4, "little") + data[16:])
    with pytest.raises(ValueError, match="JSON"):
        PackedCodes.from_bytes(data[:16] + b"!" + data[17:])


def test_codes_from_other_quantizer_rejected(vectors):
    x, y = vectors
    codes = QJL(48, seed=1).quantize(x)
    with pytest.raises(ValueError, match="different quantizer"):
        QJL(48, seed=2).inner_product(codes, y)
    with pytest.raises(ValueError, match="different quantizer"):
        QJL(48, bits=2, seed=1).dequantize(codes)
    with pytest.raises(TypeError, match="PackedCodes"):
        QJL(48).dequantize(x)
    arrays = {"codes": codes.arrays["codes"]}
    missing_norms = PackedCodes(codes.kind, codes.dim, codes.bits, codes.seed, codes.n, codes.params, arrays)
    with pytest.raises(ValueError, match="must contain arrays"):
        QJL(48, seed=1).dequantize(missing_norms)


def test_empty_batches():
    qjl = QJL(16, bits=2)
    codes = qjl.quantize(np.zeros((0, 16), dtype=np.float32))
    assert codes.n == 0
    assert codes.nbytes == 0
    assert qjl.inner_product(codes, np.ones((3, 16), dtype=np.float32)).shape == (3, 0)
    assert qjl.dequantize(codes).shape == (0, 16)
    some = qjl.quantize(np.ones((2, 16), dtype=np.float32))
    assert qjl.inner_product(some, np.zeros((0, 16), dtype=np.float32)).shape == (0, 2)
    restored = PackedCodes.from_bytes(codes.to_bytes())
    assert restored.n == 0


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"dim": 0}, ValueError, "dim=0"),
        ({"dim": 16384 + 1}, ValueError, "dim=16385"),
        ({"dim": 2.5}, TypeError, "dim must be an integer"),
        ({"dim": 8, "bits": 3}, ValueError, "bits=3"),
        ({"dim": 8, "bits": True}, ValueError, "bits=True"),
        ({"dim": 8, "seed": -1}, ValueError, "seed=-1"),
        ({"dim": 8, "sketch_dim": 0}, ValueError, "sketch_dim=0"),
    ],
)
def test_invalid_parameters_rejected(kwargs, error, message):
    with pytest.raises(error, match=message):
        QJL(**kwargs)


def test_invalid_inputs_rejected():
    qjl = QJL(8)
    with pytest.raises(TypeError, match="float32"):
        qjl.quantize(np.zeros((2, 8)))
    with pytest.raises(ValueError, match="dim=8"):
        qjl.quantize(np.zeros((2, 9), dtype=np.float32))
    with pytest.raises(ValueError, match="1-D or 2-D"):
        qjl.quantize(np.zeros((2, 2, 8), dtype=np.float32))
    bad = np.zeros((3, 8), dtype=np.float32)
    bad[2, 5] = np.nan
    with pytest.raises(ValueError, match=r"x\[2, 5\] is nan"):
        qjl.quantize(bad)
    bad[2, 5] = np.inf
    with pytest.raises(ValueError, match=r"x\[2, 5\] is inf"):
        qjl.quantize(bad)
    codes = qjl.quantize(np.ones((2, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"queries\[0, 0\] is nan"):
        qjl.inner_product(codes, np.full(8, np.nan, dtype=np.float32))


def test_core_rejects_wrong_buffer_sizes():
    core = _core.QJL(8, 8, 1, 0)
    x = np.ones((2, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="codes has 1 items but 2 were expected"):
        core.quantize(x, np.empty(1, dtype=np.uint8), np.empty(2, dtype=np.float32))
    with pytest.raises(TypeError, match="norms must have dtype float32"):
        core.quantize(x, np.empty(2, dtype=np.uint8), np.empty(2, dtype=np.float64))
    with pytest.raises(ValueError, match="n=-1 is invalid"):
        core.dequantize(np.empty(0, dtype=np.uint8), np.empty(0, dtype=np.float32), -1, np.empty(0, dtype=np.float32))
