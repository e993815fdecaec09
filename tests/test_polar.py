"""Tests of turboquant.PolarQuant against SciPy Lloyd-Max codebooks and a NumPy reference encoder."""

import concurrent.futures
import math

import numpy as np
import pytest
from scipy import special

from turboquant import TurboQuantMSE, _core, fit_codebook
from turboquant.qjl_polar import PackedCodes, PolarQuant


def pair_radius_moments(edges, dim):
    """Mass and first moment of the pair-radius density (dim-2) r (1-r^2)^((dim-4)/2) on each cell.

    With t = r^2 the mass up to a is 1 - (1 - a^2)^((dim-2)/2), and the first moment is
    ((dim-2)/2) B(3/2, (dim-2)/2) I_{a^2}(3/2, (dim-2)/2) with I the regularized incomplete beta.
    """
    half = (dim - 2) / 2
    cdf = 1 - (1 - edges**2) ** half
    first = half * special.beta(1.5, half) * special.betainc(1.5, half, edges**2)
    return np.diff(cdf), np.diff(first)


def reference_radius_codebook(dim, bits):
    """Lloyd-Max codebook of the pair radius, solved here from closed-form cell moments."""
    levels = 2**bits
    # Start from quantiles of the density, whose inverse CDF is sqrt(1 - (1 - p)^(2/(dim-2))).
    quantiles = (np.arange(levels) + 0.5) / levels
    centroids = np.sqrt(1 - (1 - quantiles) ** (2 / (dim - 2)))
    for _ in range(20000):
        edges = np.concatenate([[0.0], (centroids[1:] + centroids[:-1]) / 2, [1.0]])
        mass, first = pair_radius_moments(edges, dim)
        updated = first / mass
        if np.max(np.abs(updated - centroids)) < 1e-13:
            centroids = updated
            break
        centroids = updated
    edges = np.concatenate([[0.0], (centroids[1:] + centroids[:-1]) / 2, [1.0]])
    mass, _ = pair_radius_moments(edges, dim)
    # Centroid condition: E[(r - c)^2] = E[r^2] - sum_k c_k^2 P_k, and E[r^2] = 2 / dim.
    mse = 2 / dim - np.sum(centroids**2 * mass)
    return centroids, mse


def predicted_unit_mse(dim, radius_bits, angle_bits):
    """Expected ||u - u_hat||^2 for a uniform unit vector u.

    Per pair, the angle error is uniform on +-pi/L and independent of the radius, so
    E|p - p_hat|^2 = E[r^2] + E[r_hat^2] - 2 sinc(pi/L) E[r r_hat], and a Lloyd-Max codebook
    has E[r r_hat] = E[r_hat^2] = E[r^2] - mse_r.
    """
    _, radius_mse = reference_radius_codebook(dim, radius_bits)
    sinc = math.sin(math.pi / 2**angle_bits) / (math.pi / 2**angle_bits)
    second = 2 / dim
    return dim / 2 * (second - (2 * sinc - 1) * (second - radius_mse))


def reference_dequantize(polar, x):
    """Encode and decode x in NumPy with the quantizer's rotation and codebook (float64)."""
    x64 = x.astype(np.float64)
    norms = np.linalg.norm(x64, axis=1, keepdims=True)
    rotation = polar.rotate(np.eye(polar.dim, dtype=np.float32)).T.astype(np.float64)
    v = (x64 / norms) @ rotation.T
    half = polar.dim // 2
    radius = np.hypot(v[:, :half], v[:, half:])
    theta = np.mod(np.arctan2(v[:, half:], v[:, :half]), 2 * np.pi)
    angles = 2**polar.angle_bits
    cell = np.minimum(np.floor(theta * angles / (2 * np.pi)), angles - 1)
    centre = (cell + 0.5) * 2 * np.pi / angles
    codebook = polar.radius_codebook.astype(np.float64)
    nearest = np.argmin(np.abs(radius[..., None] - codebook), axis=-1)
    rebuilt = np.concatenate([codebook[nearest] * np.cos(centre), codebook[nearest] * np.sin(centre)], axis=1)
    return norms * (rebuilt @ rotation)


def unit_rows(count, dim, seed):
    rows = np.random.default_rng(seed).standard_normal((count, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("dim", [8, 64, 256])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_radius_codebook_matches_scipy_lloyd_max(dim, bits):
    expected, _ = reference_radius_codebook(dim, bits)
    # Both solvers converge far below float32 resolution; 2e-6 relative is a few float32 ulps.
    np.testing.assert_allclose(PolarQuant(dim, radius_bits=bits).radius_codebook, expected, rtol=2e-6)


def test_two_dim_radius_is_one():
    polar = PolarQuant(2, radius_bits=2, angle_bits=8)
    np.testing.assert_array_equal(polar.radius_codebook, 1.0)
    x = np.array([[3.0, 4.0]], dtype=np.float32)
    rebuilt = polar.dequantize(polar.quantize(x))
    assert np.linalg.norm(rebuilt) == pytest.approx(5.0, rel=1e-6)


def test_rotation_is_orthogonal():
    for dim in (256, 96):  # Hadamard path and dense path
        rotation = PolarQuant(dim).rotate(np.eye(dim, dtype=np.float32)).astype(np.float64)
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(dim), atol=1e-5)


@pytest.mark.parametrize(
    "dim, radius_bits, angle_bits", [(256, 4, 3), (64, 2, 2), (40, 3, 5), (96, 1, 1), (16, 8, 8)]
)
def test_dequantize_matches_numpy_reference(dim, radius_bits, angle_bits):
    polar = PolarQuant(dim, radius_bits=radius_bits, angle_bits=angle_bits, seed=3)
    x = np.random.default_rng(dim).standard_normal((64, dim)).astype(np.float32) * 3
    rebuilt = polar.dequantize(polar.quantize(x))
    expected = reference_dequantize(polar, x)
    # Float32 rotation of unit vectors: entries agree to about 1e-6 of the norm. A pair that
    # lies on a cell boundary may round to the other cell, so allow up to one pair per 64 rows.
    error = np.abs(rebuilt - expected).max(axis=1) / np.linalg.norm(x, axis=1)
    assert np.sum(error > 1e-5) <= 1


def test_unit_vector_mse_matches_prediction():
    dim, radius_bits, angle_bits = 256, 4, 3
    polar = PolarQuant(dim, radius_bits=radius_bits, angle_bits=angle_bits, seed=1)
    u = unit_rows(4000, dim, seed=2)
    errors = np.sum((polar.dequantize(polar.quantize(u)).astype(np.float64) - u) ** 2, axis=1)
    predicted = predicted_unit_mse(dim, radius_bits, angle_bits)
    standard_error = errors.std() / math.sqrt(len(errors))
    # 5 standard errors; the prediction is exact for uniform unit vectors.
    assert abs(errors.mean() - predicted) < 5 * standard_error
    # Trivial bounds: reconstructing zero costs 1, and angle error alone costs about (pi/L)^2 / 3.
    assert errors.mean() < 1
    assert errors.mean() > (math.pi / 2**angle_bits) ** 2 / 3 * 0.9
    print_comparison_with_turboquant(u, errors.mean(), polar.quantize(u[:1]).bits_per_value)


def print_comparison_with_turboquant(u, polar_mse, polar_bits_per_value):
    """Print PolarQuant's unit-vector MSE beside TurboQuantMSE at about the same storage."""
    turbo = TurboQuantMSE(u.shape[1], bits=3.5, seed=1)
    turbo_codes = turbo.quantize(u)
    turbo_mse = np.mean(np.sum((turbo.dequantize(turbo_codes) - u) ** 2, axis=1))
    swapped = PolarQuant(u.shape[1], radius_bits=3, angle_bits=4, seed=1)
    swapped_mse = np.mean(np.sum((swapped.dequantize(swapped.quantize(u)) - u) ** 2, axis=1))
    print(
        f"\nunit-vector MSE at dim {u.shape[1]}: PolarQuant 4+3 bits {polar_mse:.4f} "
        f"({polar_bits_per_value:.3f} bits/value), PolarQuant 3+4 bits {swapped_mse:.4f} (same storage), "
        f"TurboQuantMSE 3.5 bits {turbo_mse:.4f} ({turbo_codes.bits_per_value:.3f} bits/value)"
    )


@pytest.mark.parametrize("dim, radius_bits, angle_bits", [(64, 2, 2), (128, 3, 4)])
def test_low_bit_mse_matches_prediction(dim, radius_bits, angle_bits):
    polar = PolarQuant(dim, radius_bits=radius_bits, angle_bits=angle_bits, seed=4)
    u = unit_rows(3000, dim, seed=5)
    errors = np.sum((polar.dequantize(polar.quantize(u)).astype(np.float64) - u) ** 2, axis=1)
    standard_error = errors.std() / math.sqrt(len(errors))
    assert abs(errors.mean() - predicted_unit_mse(dim, radius_bits, angle_bits)) < 5 * standard_error


@pytest.mark.parametrize("qjl_bits", [0, 1, 2])
@pytest.mark.parametrize("dim, radius_bits, angle_bits", [(256, 4, 3), (40, 1, 1), (96, 5, 8), (34, 8, 2)])
def test_inner_product_equals_dot_with_dequantized(dim, radius_bits, angle_bits, qjl_bits):
    polar = PolarQuant(dim, radius_bits=radius_bits, angle_bits=angle_bits, qjl_bits=qjl_bits, seed=9)
    rng = np.random.default_rng(dim + qjl_bits)
    x = rng.standard_normal((70, dim)).astype(np.float32)
    y = rng.standard_normal((5, dim)).astype(np.float32)
    codes = polar.quantize(x)
    expected = y.astype(np.float64) @ polar.dequantize(codes).astype(np.float64).T
    scale = np.outer(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1))
    # Both paths round float32 sums over dim terms; 2e-5 of ||x|| ||y|| covers dim <= 256.
    assert np.all(np.abs(polar.inner_product(codes, y) - expected) <= 2e-5 * scale)


def estimates_over_seeds(x, y, qjl_bits, seeds):
    """Estimates of <x, y> at 1 + 1 bits, one PolarQuant per seed."""
    # Passing the default codebook skips solving it again for each quantizer.
    codebook = PolarQuant(32, radius_bits=1).radius_codebook
    values = np.empty(len(seeds))
    for index, seed in enumerate(seeds):
        polar = PolarQuant(32, radius_bits=1, angle_bits=1, qjl_bits=qjl_bits, seed=seed, radius_codebook=codebook)
        values[index] = polar.inner_product(polar.quantize(x), y)[0, 0]
    return values


def correlated_pair():
    rng = np.random.default_rng(17)
    x = rng.standard_normal((1, 32)).astype(np.float32)
    y = (x + 0.5 * rng.standard_normal((1, 32))).astype(np.float32)
    return x, y, float(x.astype(np.float64)[0] @ y.astype(np.float64)[0])


@pytest.mark.parametrize("qjl_bits", [1, 2])
def test_qjl_residual_makes_estimate_unbiased(qjl_bits):
    x, y, truth = correlated_pair()
    values = estimates_over_seeds(x, y, qjl_bits, range(1000))
    standard_error = values.std() / math.sqrt(len(values))
    # 4 standard errors: a false failure has probability about 6e-5.
    assert abs(values.mean() - truth) < 4 * standard_error


def test_estimate_without_qjl_is_biased():
    # At 1 + 1 bits the reconstruction shrinks towards zero, so the plain estimate is biased,
    # and the QJL term must visibly change it.
    x, y, truth = correlated_pair()
    values = estimates_over_seeds(x, y, 0, range(300))
    standard_error = values.std() / math.sqrt(len(values))
    assert truth - values.mean() > 10 * standard_error


@pytest.mark.parametrize("qjl_bits", [0, 2])
@pytest.mark.parametrize("dim", [256, 40])
def test_simd_variants_equal_scalar(monkeypatch, dim, qjl_bits):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((50, dim)).astype(np.float32)
    y = rng.standard_normal((4, dim)).astype(np.float32)
    monkeypatch.setenv("TURBOQUANT_KERNELS", "scalar")
    scalar = PolarQuant(dim, qjl_bits=qjl_bits, seed=4)
    codes = scalar.quantize(x)
    scalar_scores = scalar.inner_product(codes, y)
    scale = np.outer(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1))
    for variant in _core.build_info()["supported_kernels"]:
        monkeypatch.setenv("TURBOQUANT_KERNELS", variant)
        polar = PolarQuant(dim, qjl_bits=qjl_bits, seed=4)
        assert polar.kernels == variant
        if dim == 256:
            # The Hadamard rotation gives the same bits with every variant, so codes match exactly.
            np.testing.assert_array_equal(polar.quantize(x).arrays["codes"], codes.arrays["codes"])
        # Float32 sums in another order: 2e-5 of ||x|| ||y|| (see the dequantize comparison).
        assert np.all(np.abs(polar.inner_product(codes, y) - scalar_scores) <= 2e-5 * scale), variant


def test_concurrent_calls_share_one_quantizer():
    # The methods release the GIL and the C objects are read-only after creation, so calls
    # from several Python threads on one quantizer must give the single-threaded results.
    polar = PolarQuant(128, qjl_bits=1, seed=2)
    x = unit_rows(300, 128, seed=11)
    queries = unit_rows(6, 128, seed=12)
    codes = polar.quantize(x)
    expected_scores = polar.inner_product(codes, queries)
    expected_codes = codes.arrays["codes"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        scores = list(pool.map(lambda _: polar.inner_product(codes, queries), range(8)))
        encoded = list(pool.map(lambda _: polar.quantize(x).arrays["codes"], range(8)))
    for result in scores:
        np.testing.assert_array_equal(result, expected_scores)
    for result in encoded:
        np.testing.assert_array_equal(result, expected_codes)


def test_same_seed_gives_same_codes():
    x = unit_rows(20, 64, seed=8)
    first = PolarQuant(64, seed=5, qjl_bits=1).quantize(x)
    second = PolarQuant(64, seed=5, qjl_bits=1).quantize(x)
    other = PolarQuant(64, seed=6, qjl_bits=1).quantize(x)
    for name in first.arrays:
        np.testing.assert_array_equal(first.arrays[name], second.arrays[name])
    assert not np.array_equal(first.arrays["codes"], other.arrays["codes"])


@pytest.mark.parametrize(
    "radius_bits, angle_bits, qjl_bits, row_bytes",
    [
        (4, 3, 0, 64 + 48 + 4),  # radius and angle streams, norm
        (4, 3, 1, 64 + 48 + 32 + 4 + 4),  # plus 1-bit sketch of 256 entries and residual norm
        (4, 3, 2, 64 + 48 + 64 + 4 + 4),
        (3, 3, 0, 48 + 48 + 4),
    ],
)
def test_bits_per_value_counts_everything(radius_bits, angle_bits, qjl_bits, row_bytes):
    polar = PolarQuant(256, radius_bits=radius_bits, angle_bits=angle_bits, qjl_bits=qjl_bits)
    codes = polar.quantize(unit_rows(3, 256, seed=1))
    assert codes.nbytes == 3 * row_bytes
    assert codes.bits_per_value == pytest.approx(8 * row_bytes / 256)


def test_odd_pair_count_bit_stream():
    # 5 pairs at 7 + 5 bits: streams of 35 and 25 bits cross byte boundaries.
    polar = PolarQuant(10, radius_bits=7, angle_bits=5, seed=2)
    x = np.random.default_rng(3).standard_normal((30, 10)).astype(np.float32)
    codes = polar.quantize(x)
    assert codes.arrays["codes"].shape == (30, 5 + 4)
    error = np.abs(polar.dequantize(codes) - reference_dequantize(polar, x)).max(axis=1)
    assert np.sum(error > 1e-5 * np.linalg.norm(x, axis=1)) <= 1


def test_custom_radius_codebook():
    samples = np.random.default_rng(4).uniform(0.0, 0.5, 10000).astype(np.float32)
    fitted = fit_codebook(samples, 3)
    polar = PolarQuant(64, radius_bits=3, radius_codebook=fitted)
    np.testing.assert_array_equal(polar.radius_codebook, fitted)
    x = unit_rows(30, 64, seed=3)
    codes = polar.quantize(x)
    rebuilt = polar.dequantize(codes)
    error = np.abs(rebuilt - reference_dequantize(polar, x)).max(axis=1)
    assert np.sum(error > 1e-5) <= 1
    with pytest.raises(ValueError, match="different quantizer"):
        PolarQuant(64, radius_bits=3).dequantize(codes)
    # float64 input is converted to float32 centroids.
    assert PolarQuant(64, radius_bits=3, radius_codebook=fitted.astype(np.float64)).quantize(x).params == codes.params


def test_serialization_round_trip():
    polar = PolarQuant(64, seed=8, qjl_bits=2)
    x = unit_rows(11, 64, seed=9)
    y = unit_rows(2, 64, seed=10)
    codes = polar.quantize(x)
    restored = PackedCodes.from_bytes(codes.to_bytes())
    assert (restored.kind, restored.dim, restored.bits, restored.seed, restored.n) == ("polar", 64, 7, 8, 11)
    assert restored.params == codes.params
    for name, array in codes.arrays.items():
        np.testing.assert_array_equal(restored.arrays[name], array)
    np.testing.assert_array_equal(polar.inner_product(restored, y), polar.inner_product(codes, y))


def test_empty_batches():
    polar = PolarQuant(16, qjl_bits=1)
    codes = polar.quantize(np.zeros((0, 16), dtype=np.float32))
    assert codes.n == 0
    assert polar.dequantize(codes).shape == (0, 16)
    assert polar.inner_product(codes, np.ones((2, 16), dtype=np.float32)).shape == (2, 0)
    some = polar.quantize(np.ones((3, 16), dtype=np.float32))
    assert polar.inner_product(some, np.zeros((0, 16), dtype=np.float32)).shape == (0, 3)


def test_zero_row():
    polar = PolarQuant(16, qjl_bits=2)
    codes = polar.quantize(np.zeros((1, 16), dtype=np.float32))
    np.testing.assert_array_equal(polar.dequantize(codes), 0)
    np.testing.assert_array_equal(polar.inner_product(codes, np.ones(16, dtype=np.float32)), 0)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"dim": 7}, ValueError, "dim=7 must be even"),
        ({"dim": 0}, ValueError, "dim=0"),
        ({"dim": 64, "radius_bits": 0}, ValueError, "radius_bits=0"),
        ({"dim": 64, "radius_bits": 9}, ValueError, "radius_bits=9"),
        ({"dim": 64, "angle_bits": 0}, ValueError, "angle_bits=0"),
        ({"dim": 64, "angle_bits": 9}, ValueError, "angle_bits=9"),
        ({"dim": 64, "qjl_bits": 3}, ValueError, "qjl_bits=3"),
        ({"dim": 64, "qjl_bits": -1}, ValueError, "qjl_bits=-1"),
        ({"dim": 64, "seed": 2**64}, ValueError, "seed="),
        ({"dim": 64, "angle_bits": 2.0}, TypeError, "angle_bits must be an integer"),
        ({"dim": 64, "radius_bits": 1, "radius_codebook": [0.1, 0.2, 0.3]}, ValueError, "needs 2 values"),
        ({"dim": 64, "radius_bits": 1, "radius_codebook": [0.2, 0.1]}, ValueError, r"radius_codebook\[1\] = 0.1"),
        ({"dim": 64, "radius_bits": 1, "radius_codebook": [0.1, np.nan]}, ValueError, r"radius_codebook\[1\] is nan"),
        ({"dim": 64, "radius_bits": 1, "radius_codebook": [-0.1, 0.2]}, ValueError, r"radius_codebook\[0\] is -0.1"),
        ({"dim": 64, "radius_bits": 1, "radius_codebook": ["a", "b"]}, TypeError, "real-valued"),
    ],
)
def test_invalid_parameters_rejected(kwargs, error, message):
    with pytest.raises(error, match=message):
        PolarQuant(**kwargs)


def test_invalid_inputs_rejected():
    polar = PolarQuant(8, qjl_bits=1)
    with pytest.raises(TypeError, match="float32"):
        polar.quantize(np.zeros((2, 8), dtype=np.float16))
    with pytest.raises(ValueError, match="dim=8"):
        polar.quantize(np.zeros((2, 6), dtype=np.float32))
    bad = np.ones((2, 8), dtype=np.float32)
    bad[1, 3] = -np.inf
    with pytest.raises(ValueError, match=r"x\[1, 3\] is -inf"):
        polar.quantize(bad)
    codes = polar.quantize(np.ones((2, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"queries\[0, 2\] is nan"):
        polar.inner_product(codes, np.array([0, 0, np.nan, 0, 0, 0, 0, 0], dtype=np.float32))
    with pytest.raises(ValueError, match="different quantizer"):
        PolarQuant(8, qjl_bits=2).inner_product(codes, np.ones(8, dtype=np.float32))
    with pytest.raises(ValueError, match="different quantizer"):
        PolarQuant(8, qjl_bits=1).dequantize(QJLCodesLike(codes))
    with pytest.raises(TypeError, match="PackedCodes"):
        polar.dequantize(codes.arrays["codes"])


def QJLCodesLike(codes):
    """Relabel PolarQuant codes as QJL codes, which a PolarQuant must reject."""
    return PackedCodes("qjl", codes.dim, codes.bits, codes.seed, codes.n, codes.params, codes.arrays)


def test_core_rejects_wrapping_row_count():
    # With n = 2^62 + 1 every byte count n * c (c a multiple of 4) wraps around 2^64 to c,
    # so buffers sized for one row would match; the binding must reject n instead.
    core = _core.PolarQuant(256, 4, 3, None, 0, 0)
    n = 2**62 + 1
    codes = np.zeros(core.code_bytes, dtype=np.uint8)
    norms = np.zeros(1, dtype=np.float32)
    out = np.zeros(256, dtype=np.float32)
    with pytest.raises(ValueError, match="too large"):
        core.dequantize(codes, norms, None, n, out)


def test_core_checks_residual_argument():
    core = _core.PolarQuant(8, 4, 3, None, 1, 0)
    x = np.ones((1, 8), dtype=np.float32)
    codes = np.empty(core.code_bytes, dtype=np.uint8)
    norms = np.empty(1, dtype=np.float32)
    with pytest.raises(ValueError, match="residual_norms must be a float32 array for qjl_bits=1"):
        core.quantize(x, codes, norms, None)
    with pytest.raises(ValueError, match="codes has"):
        core.quantize(x, np.empty(1, dtype=np.uint8), norms, np.empty(1, dtype=np.float32))
