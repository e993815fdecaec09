"""Seeded random rotations: orthogonality, Hadamard structure, determinism, kernel variants."""

import numpy as np
import pytest
import scipy.linalg

from turboquant import Rotation, _core

SUPPORTED_KERNELS = _core.build_info()["supported_kernels"]


@pytest.mark.parametrize("dim", [2, 8, 64, 256, 3, 96, 640])
def test_rotation_orthogonal(dim):
    rotation = Rotation(dim, seed=7)
    matrix = rotation.matrix().astype(np.float64)
    assert rotation.is_hadamard == (dim & (dim - 1) == 0)
    assert np.abs(matrix @ matrix.T - np.eye(dim)).max() < 1e-5
    assert np.abs(matrix.T @ matrix - np.eye(dim)).max() < 1e-5


@pytest.mark.parametrize("dim", [2, 16, 128, 256])
def test_hadamard_matches_scipy_times_signs(dim):
    rotation = Rotation(dim, seed=3)
    scaled = rotation.matrix().astype(np.float64) * np.sqrt(dim)
    hadamard = scipy.linalg.hadamard(dim).astype(np.float64)
    signs = scaled[0] / hadamard[0]
    # R = H D / sqrt(dim): every column j is column j of H times the sign d_j.
    assert set(np.round(signs).tolist()) <= {-1.0, 1.0}
    assert np.abs(scaled - hadamard * signs).max() < 1e-5
    # Both signs occur, so D is not the identity (probability 2^-dim + 2^-dim of failing by chance).
    if dim >= 16:
        assert (signs > 0).any()
        assert (signs < 0).any()


@pytest.mark.parametrize("dim", [128, 96])
def test_rotation_inverse_round_trip(dim):
    rotation = Rotation(dim, seed=11)
    x = np.random.default_rng(0).standard_normal((50, dim)).astype(np.float32)
    y = rotation.forward(x)
    # Float32 rounding over log2(dim) butterflies or a dim-term sum: 1e-5 relative.
    assert np.linalg.norm(y, axis=1) == pytest.approx(np.linalg.norm(x, axis=1), rel=1e-5)
    assert np.abs(rotation.inverse(y) - x).max() < 1e-5 * np.abs(x).max() * 10


@pytest.mark.parametrize("dim", [256, 96])
def test_rotation_deterministic_by_seed(dim):
    first = Rotation(dim, seed=42).matrix()
    again = Rotation(dim, seed=42).matrix()
    other = Rotation(dim, seed=43).matrix()
    assert np.array_equal(first, again)
    assert not np.allclose(first, other)


def test_rotated_coordinates_have_variance_one_over_dim():
    dim = 256
    x = np.random.default_rng(5).standard_normal((4000, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = Rotation(dim, seed=1).forward(x)
    # 4000 * 256 samples of variance 1/256: the relative standard error of the
    # variance estimate is sqrt(2 / 1e6) ~ 0.0014, so 1% is about 7 errors.
    assert y.var() * dim == pytest.approx(1.0, rel=0.01)


@pytest.mark.parametrize("kernels", SUPPORTED_KERNELS)
@pytest.mark.parametrize("dim", [256, 1024, 96])
def test_rotation_kernel_variants_match_scalar(monkeypatch, kernels, dim):
    x = np.random.default_rng(2).standard_normal((20, dim)).astype(np.float32)
    monkeypatch.setenv("TURBOQUANT_KERNELS", "scalar")
    reference = Rotation(dim, seed=9)
    monkeypatch.setenv("TURBOQUANT_KERNELS", kernels)
    variant = Rotation(dim, seed=9)
    if reference.is_hadamard:
        # The butterflies do the same additions in every variant: bit-exact.
        assert np.array_equal(variant.forward(x), reference.forward(x))
        assert np.array_equal(variant.inverse(x), reference.inverse(x))
    else:
        # The dense product sums dim terms in another order: float32 reassociation
        # error is below dim * 2^-24 * max|x| ~ 1e-5 * 4 for these inputs.
        assert np.abs(variant.forward(x) - reference.forward(x)).max() < 5e-5
        assert np.abs(variant.inverse(x) - reference.inverse(x)).max() < 5e-5


def test_rotation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dim"):
        Rotation(1)
    with pytest.raises(ValueError, match="power of two"):
        Rotation(5000)
    with pytest.raises(ValueError, match="columns"):
        Rotation(8).forward(np.zeros((2, 7), dtype=np.float32))
    with pytest.raises(TypeError, match="dtype"):
        Rotation(8).forward(np.zeros((2, 8), dtype=np.int32))
    with pytest.raises(ValueError, match="seed"):
        Rotation(8, seed=-1)
