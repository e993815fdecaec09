"""Lloyd-Max codebooks against published values, closed forms and scipy quadrature."""

import math

import numpy as np
import pytest
from scipy import integrate

from turboquant import fit_codebook, lloyd_max_codebook

# Published MSE of TurboQuantMSE on unit vectors (sum over the dim coordinates) for
# bits 1..4. They are given to 5 decimals, so they are exact to +-5e-6.
PUBLISHED_UNIT_MSE = {
    256: [0.36214, 0.11674, 0.03426, 0.00941],
    128: [0.36089, 0.11600, 0.03397, 0.00931],
}
PUBLISHED_DECIMALS_TOLERANCE = 5e-6

# Lloyd-Max MSE of a unit-variance Gaussian for bits 1..4, given to 4 decimals (+-5e-5).
GAUSSIAN_UNIT_VARIANCE_MSE = [0.3634, 0.1175, 0.0345, 0.0095]


@pytest.mark.parametrize("dim", sorted(PUBLISHED_UNIT_MSE))
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_sphere_mse_matches_published(dim, bits):
    _, mse = lloyd_max_codebook("sphere", dim, bits)
    assert mse * dim == pytest.approx(PUBLISHED_UNIT_MSE[dim][bits - 1], abs=PUBLISHED_DECIMALS_TOLERANCE)


def test_sphere_centroids_match_published_dim_256():
    # Published centroids times sqrt(256), given to 4 decimals (+-5e-5).
    one_bit, _ = lloyd_max_codebook("sphere", 256, 1)
    assert one_bit * 16 == pytest.approx([-0.7987, 0.7987], abs=5e-5)

    two_bits, _ = lloyd_max_codebook("sphere", 256, 2)
    assert two_bits * 16 == pytest.approx([-1.5078, -0.4526, 0.4526, 1.5078], abs=5e-5)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_gaussian_mse_matches_published(bits):
    dim = 64
    _, mse = lloyd_max_codebook("gaussian", dim, bits)
    assert mse * dim == pytest.approx(GAUSSIAN_UNIT_VARIANCE_MSE[bits - 1], abs=5e-5)


def test_gaussian_one_bit_closed_form():
    # For N(0, s^2) the 1-bit optimum is +-s sqrt(2/pi) with MSE s^2 (1 - 2/pi).
    dim = 100
    centroids, mse = lloyd_max_codebook("gaussian", dim, 1)
    sigma = 1 / math.sqrt(dim)
    expected = sigma * math.sqrt(2 / math.pi)
    # float32 centroids: relative rounding 6e-8.
    assert centroids[1] == pytest.approx(expected, rel=1e-7)
    assert centroids[0] == pytest.approx(-expected, rel=1e-7)
    assert mse == pytest.approx(sigma**2 * (1 - 2 / math.pi), rel=1e-10)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_sphere_dim_3_is_uniform_quantizer(bits):
    # At dim 3 one coordinate of a unit vector is uniform on [-1, 1] (Archimedes), and
    # the Lloyd-Max quantizer of a uniform density is the uniform quantizer.
    levels = 2**bits
    centroids, mse = lloyd_max_codebook("sphere", 3, bits)
    expected = -1 + (2 * np.arange(levels) + 1) / levels
    assert centroids == pytest.approx(expected, abs=1e-7)
    assert mse == pytest.approx((2 / levels) ** 2 / 12, rel=1e-10)


def _sphere_density(dim):
    return lambda x: (1 - x * x) ** ((dim - 3) / 2)


def _pair_radius_density(dim):
    return lambda r: r * (1 - r * r) ** ((dim - 4) / 2)


@pytest.mark.parametrize(
    "density, dim, bits, support, make_pdf",
    [
        ("sphere", 256, 2, (-1.0, 1.0), _sphere_density),
        ("sphere", 128, 3, (-1.0, 1.0), _sphere_density),
        ("sphere", 8, 2, (-1.0, 1.0), _sphere_density),
        ("pair_radius", 64, 2, (0.0, 1.0), _pair_radius_density),
        ("pair_radius", 8, 3, (0.0, 1.0), _pair_radius_density),
        ("sphere", 64, 6, (-1.0, 1.0), _sphere_density),
        ("pair_radius", 32, 6, (0.0, 1.0), _pair_radius_density),
    ],
)
def test_codebook_fixed_point_scipy_quad(density, dim, bits, support, make_pdf):
    """Each centroid equals the conditional mean of its cell under scipy.integrate.quad."""
    pdf = make_pdf(dim)
    centroids, mse = lloyd_max_codebook(density, dim, bits)
    c = centroids.astype(np.float64)
    edges = np.concatenate([[support[0]], (c[1:] + c[:-1]) / 2, [support[1]]])
    options = {"epsabs": 1e-14, "epsrel": 1e-12, "limit": 200}
    total = integrate.quad(pdf, *support, **options)[0]
    squared_error = 0.0
    for i in range(c.size):
        mass = integrate.quad(pdf, edges[i], edges[i + 1], **options)[0]
        first = integrate.quad(lambda x: x * pdf(x), edges[i], edges[i + 1], **options)[0]
        # The centroids are float32, so the fixed point is exact to float32 rounding.
        assert first / mass == pytest.approx(c[i], rel=2e-7, abs=1e-9)
        squared_error += integrate.quad(lambda x: (x - c[i]) ** 2 * pdf(x), edges[i], edges[i + 1], **options)[0]
    # mse was computed from the double-precision centroids; the float32 rounding
    # moves it only at second order.
    assert mse == pytest.approx(squared_error / total, rel=1e-6)


@pytest.mark.parametrize("density", ["sphere", "gaussian", "pair_radius"])
def test_eight_bit_codebook_high_resolution_limit(density):
    # For many levels the Lloyd-Max MSE approaches the Panter-Dite value
    # (integral of f^(1/3))^3 / (12 * 4^bits). At 8 bits the gap is far below 1%.
    dim = 64
    centroids, mse = lloyd_max_codebook(density, dim, 8)
    support = {"sphere": (-1.0, 1.0), "gaussian": (-1.0, 1.0), "pair_radius": (0.0, 1.0)}[density]
    pdf = {
        "sphere": _sphere_density(dim),
        "gaussian": lambda x: math.exp(-dim * x * x / 2),
        "pair_radius": _pair_radius_density(dim),
    }[density]
    options = {"epsabs": 1e-14, "epsrel": 1e-12, "limit": 200}
    total = integrate.quad(pdf, *support, **options)[0]
    cube_root_integral = integrate.quad(lambda x: (pdf(x) / total) ** (1 / 3), *support, **options)[0]
    assert np.all(np.diff(centroids) > 0)
    assert mse == pytest.approx(cube_root_integral**3 / (12 * 4**8), rel=0.01)


def test_codebook_ascending_and_cached():
    first, _ = lloyd_max_codebook("sphere", 64, 4)
    second, _ = lloyd_max_codebook("sphere", 64, 4)
    assert np.all(np.diff(first) > 0)
    assert first is second
    assert not first.flags.writeable


def test_codebook_rejects_bad_arguments():
    with pytest.raises(ValueError, match="density"):
        lloyd_max_codebook("laplace", 64, 2)
    with pytest.raises(ValueError, match="bits"):
        lloyd_max_codebook("sphere", 64, 9)
    with pytest.raises(ValueError, match="bits"):
        lloyd_max_codebook("sphere", 64, 0)
    with pytest.raises(ValueError, match="dim"):
        lloyd_max_codebook("sphere", 1, 2)
    with pytest.raises(ValueError, match="pair-radius"):
        lloyd_max_codebook("pair_radius", 2, 2)
    with pytest.raises(TypeError, match="dim"):
        lloyd_max_codebook("sphere", 64.0, 2)


def test_fit_codebook_gaussian_samples():
    # 400k N(0, 1) samples: the sampling error of each centroid is about
    # 1.5 / sqrt(100k) ~ 0.005 per cell, so 0.02 is four standard errors.
    samples = np.random.default_rng(0).standard_normal(400_000).astype(np.float32)
    centroids = fit_codebook(samples, 2)
    reference, _ = lloyd_max_codebook("gaussian", 1, 2)
    assert centroids.dtype == np.float32
    assert centroids == pytest.approx(reference, abs=0.02)


def test_fit_codebook_recovers_clusters():
    rng = np.random.default_rng(1)
    centers = np.array([-3.0, -1.0, 0.5, 4.0])
    samples = (rng.choice(centers, 10_000) + rng.uniform(-0.1, 0.1, 10_000)).astype(np.float32)
    centroids = fit_codebook(samples, 2)
    # Symmetric noise of half-width 0.1 around each center: the cluster means lie
    # within 3 standard errors (0.1 / sqrt(3 * 2500) * 3 ~ 0.004) of the centers.
    assert centroids == pytest.approx(centers, abs=0.005)


def test_fit_codebook_float64_and_constant_input():
    centroids = fit_codebook(np.full(10, 2.5), 1)
    assert centroids.tolist() == [2.5, 2.5]


def test_fit_codebook_rejects_bad_samples():
    with pytest.raises(ValueError, match="empty"):
        fit_codebook(np.array([], dtype=np.float32), 2)
    with pytest.raises(ValueError, match="finite"):
        fit_codebook(np.array([1.0, np.nan], dtype=np.float32), 1)
    with pytest.raises(TypeError, match="dtype"):
        fit_codebook(np.arange(10), 1)
    with pytest.raises(ValueError, match="bits"):
        fit_codebook(np.ones(4, dtype=np.float32), 9)
