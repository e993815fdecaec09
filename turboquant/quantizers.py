"""TurboQuant quantizers, Lloyd-Max codebooks and seeded random rotations.

The work runs in the C core (``csrc/turboquant.c``, ``csrc/codebook.c``,
``csrc/rotation.c``); this module checks arguments, converts inputs and wraps the
packed codes in :class:`QuantizedVectors`.

Input conversion: float32 C-contiguous arrays are used without a copy. float64 and
float16 arrays, and non-contiguous float32 arrays, are converted with one copy.
Integer, complex, boolean and object arrays raise TypeError.
"""

import functools
import struct

import numpy as np

from . import _core

__all__ = [
    "DENSITIES",
    "QuantizedVectors",
    "Rotation",
    "TurboQuantMSE",
    "TurboQuantProd",
    "fit_codebook",
    "lloyd_max_codebook",
]

#: Density names accepted by :func:`lloyd_max_codebook`, with their C enum values.
DENSITIES = {"sphere": 0, "gaussian": 1, "pair_radius": 2}

_KIND_MSE = 0
_KIND_PROD = 1
_KIND_NAMES = {_KIND_MSE: "mse", _KIND_PROD: "prod"}

_MAGIC = b"TQQV"
_FORMAT_VERSION = 1
# magic, version u16, kind u8, reserved u8, dim u32, bits_x2 u16, reserved u16, seed u64, n u64
_HEADER = struct.Struct("<4sHBBIHHQQ")


def _as_float32_rows(x, name, dim):
    """Return x as a C-contiguous float32 array of shape (n, dim); a 1-D x is one row."""
    array = np.asarray(x)
    if array.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array (float32, float64 or float16), got dtype {array.dtype}")
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D (n, dim), got shape {array.shape}")
    if array.shape[1] != dim:
        raise ValueError(f"{name} has {array.shape[1]} columns but the quantizer expects dim={dim}")
    # The C binding rejects NaN and infinity, naming the first position.
    return np.ascontiguousarray(array, dtype=np.float32)


def _check_int(value, name, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _check_seed(seed):
    seed = _check_int(seed, "seed", 0)
    if seed >= 2**64:
        raise ValueError(f"seed must be below 2**64, got {seed}")
    return seed


@functools.lru_cache(maxsize=256)
def _cached_codebook(density_code, dim, bits):
    centroids = np.empty(2**bits, dtype=np.float32)
    mse = _core.lloyd_max_codebook(density_code, dim, bits, centroids)
    centroids.setflags(write=False)
    return centroids, mse


def lloyd_max_codebook(density, dim, bits):
    """Solve the Lloyd-Max quantizer with ``2**bits`` levels for a coordinate density.

    density is ``"sphere"`` (one coordinate of a uniform unit vector in dim
    dimensions), ``"gaussian"`` (N(0, 1/dim)) or ``"pair_radius"`` (the radius of two
    coordinates of a uniform unit vector). Returns ``(centroids, mse)``: ascending
    float32 centroids (read-only, cached per (density, dim, bits)) and the expected
    squared error per coordinate. bits is 1..8.
    """
    if density not in DENSITIES:
        raise ValueError(f"density must be one of {sorted(DENSITIES)}, got {density!r}")
    dim = _check_int(dim, "dim", 1)
    bits = _check_int(bits, "bits", 1)
    if bits > 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    return _cached_codebook(DENSITIES[density], dim, bits)


def fit_codebook(samples, bits):
    """Fit ``2**bits`` centroids to samples by empirical Lloyd-Max (1-D k-means).

    The iteration starts from sample quantiles. Returns ascending float32 centroids.
    """
    bits = _check_int(bits, "bits", 1)
    if bits > 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    array = np.asarray(samples)
    if array.dtype.kind != "f":
        raise TypeError(f"samples must be a float array, got dtype {array.dtype}")
    array = np.ascontiguousarray(array.reshape(-1), dtype=np.float32)
    if array.size == 0:
        raise ValueError("samples is empty; fit_codebook needs at least one sample")
    centroids = np.empty(2**bits, dtype=np.float32)
    _core.fit_codebook(array, bits, centroids)
    return centroids


class Rotation:
    """Seeded random orthogonal rotation of R^dim.

    A power-of-two dim uses the randomized Hadamard transform ``H D / sqrt(dim)``
    (random signs D, then a fast Walsh-Hadamard transform in O(dim log dim)). Other
    dims use a dense Haar-random orthogonal matrix (QR of a Gaussian matrix).
    """

    def __init__(self, dim, seed=0):
        self.dim = _check_int(dim, "dim", 2)
        self.seed = _check_seed(seed)
        self._rotation = _core.Rotation(self.dim, self.seed)

    @property
    def is_hadamard(self):
        """True for the randomized Hadamard path."""
        return self._rotation.is_hadamard

    def forward(self, x):
        """Return R x for each row of x (float32, shape (n, dim))."""
        rows = _as_float32_rows(x, "x", self.dim)
        out = np.empty_like(rows)
        self._rotation.forward(rows, out)
        return out

    def inverse(self, y):
        """Return R^T y for each row of y (float32, shape (n, dim))."""
        rows = _as_float32_rows(y, "y", self.dim)
        out = np.empty_like(rows)
        self._rotation.inverse(rows, out)
        return out

    def matrix(self):
        """Return R as a float32 (dim, dim) array (column j is R e_j)."""
        return self.forward(np.eye(self.dim, dtype=np.float32)).T.copy()


class QuantizedVectors:
    """Packed codes of n vectors: one contiguous byte buffer, row_bytes per vector.

    ``nbytes`` counts everything stored per vector (codes and float32 norms), so
    ``bits_per_value`` is the full storage cost. ``to_bytes()`` adds a 32-byte
    header (magic, format version, kind, dim, bits, seed, n) and
    ``QuantizedVectors.from_bytes`` checks it.
    """

    __slots__ = ("kind", "dim", "bits", "seed", "n", "data", "row_bytes")

    def __init__(self, kind, dim, bits, seed, n, data):
        layout = _core.turboquant_layout(_kind_code(kind), dim, int(round(bits * 2)))
        if len(data) != n * layout["row_bytes"]:
            raise ValueError(f"data must be {n * layout['row_bytes']} bytes for {n} rows, got {len(data)}")
        self.kind = kind
        self.dim = dim
        self.bits = bits
        self.seed = seed
        self.n = n
        self.data = data
        self.row_bytes = layout["row_bytes"]

    def __len__(self):
        return self.n

    def __repr__(self):
        return (
            f"QuantizedVectors(kind={self.kind!r}, dim={self.dim}, bits={self.bits}, n={self.n}, "
            f"bits_per_value={self.bits_per_value:.4f})"
        )

    @property
    def nbytes(self):
        """Bytes stored for all vectors: codes and norms, without the serialization header."""
        return len(self.data)

    @property
    def bits_per_value(self):
        """Stored bits per vector coordinate, norms included (nan for an empty batch)."""
        if self.n == 0:
            return float("nan")
        return self.nbytes * 8 / (self.n * self.dim)

    def to_bytes(self):
        """Serialize to bytes: a little-endian header followed by the packed rows."""
        header = _HEADER.pack(
            _MAGIC, _FORMAT_VERSION, _kind_code(self.kind), 0, self.dim, int(round(self.bits * 2)), 0, self.seed, self.n
        )
        return header + bytes(self.data)

    @classmethod
    def from_bytes(cls, blob):
        """Parse the output of :meth:`to_bytes`; raise ValueError on a corrupt or truncated buffer."""
        blob = bytes(blob)
        if len(blob) < _HEADER.size:
            raise ValueError(f"buffer of {len(blob)} bytes is shorter than the {_HEADER.size}-byte header")
        magic, version, kind_code, _, dim, bits_x2, _, seed, n = _HEADER.unpack_from(blob)
        if magic != _MAGIC:
            raise ValueError(f"invalid magic {magic!r}; expected {_MAGIC!r} (not serialized QuantizedVectors)")
        if version != _FORMAT_VERSION:
            raise ValueError(f"unsupported format version {version}; this library reads version {_FORMAT_VERSION}")
        if kind_code not in _KIND_NAMES:
            raise ValueError(f"unknown quantizer kind {kind_code} in header; expected 0 (mse) or 1 (prod)")
        layout = _core.turboquant_layout(kind_code, dim, bits_x2)
        payload = len(blob) - _HEADER.size
        if payload != n * layout["row_bytes"]:
            raise ValueError(
                f"truncated or corrupt buffer: the header declares {n} rows of {layout['row_bytes']} bytes "
                f"({n * layout['row_bytes']} bytes) but {payload} bytes follow"
            )
        bits = bits_x2 // 2 if bits_x2 % 2 == 0 else bits_x2 / 2
        return cls(_KIND_NAMES[kind_code], dim, bits, seed, n, blob[_HEADER.size :])


def _kind_code(kind):
    for code, name in _KIND_NAMES.items():
        if name == kind:
            return code
    raise ValueError(f"unknown quantizer kind {kind!r}; expected 'mse' or 'prod'")


class _TurboQuantBase:
    _kind = None
    _valid_bits = ()

    def __init__(self, dim, bits, seed=0):
        self.dim = _check_int(dim, "dim", 2)
        self.seed = _check_seed(seed)
        if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, float, np.integer, np.floating)):
            raise TypeError(f"bits must be a number, got {type(bits).__name__}")
        if bits not in self._valid_bits:
            valid = ", ".join(str(b) for b in self._valid_bits)
            raise ValueError(f"{type(self).__name__} bits must be one of {valid}; got {bits}")
        bits_x2 = int(round(bits * 2))
        self.bits = bits_x2 // 2 if bits_x2 % 2 == 0 else bits_x2 / 2
        self._bits_x2 = bits_x2
        layout = _core.turboquant_layout(_kind_code(self._kind), self.dim, bits_x2)
        high = None
        low = None
        if layout["bits_high"] > 0:
            high = lloyd_max_codebook("sphere", self.dim, layout["bits_high"])[0]
        if layout["dim_high"] < self.dim:
            low = lloyd_max_codebook("sphere", self.dim, layout["bits_low"])[0]
        self._layout = layout
        self._codebook_high = high
        self._codebook_low = low if low is not None else high
        self._core = _core.TurboQuant(_kind_code(self._kind), self.dim, bits_x2, self.seed, high, low)

    def __repr__(self):
        return f"{type(self).__name__}(dim={self.dim}, bits={self.bits}, seed={self.seed})"

    @property
    def codebook(self):
        """Centroids of the (first or only) code width, for unit vectors in the rotated basis.

        None for TurboQuantProd at 1 bit, which has no MSE stage.
        """
        return self._codebook_high

    @property
    def codebook_low(self):
        """Centroids of the lower width of a fractional bit width (equal to codebook otherwise)."""
        return self._codebook_low

    @property
    def row_bytes(self):
        """Bytes stored per vector."""
        return self._layout["row_bytes"]

    @property
    def kernels(self):
        """SIMD kernel variant in use (chosen from TURBOQUANT_KERNELS at creation)."""
        return self._core.kernels

    def quantize(self, x):
        """Quantize float rows (shape (n, dim), or (dim,) for one row) into QuantizedVectors."""
        rows = _as_float32_rows(x, "x", self.dim)
        data = bytearray(rows.shape[0] * self.row_bytes)
        if rows.shape[0] > 0:
            self._core.encode(rows, data)
        return QuantizedVectors(self._kind, self.dim, self.bits, self.seed, rows.shape[0], data)

    def _check_codes(self, codes):
        if not isinstance(codes, QuantizedVectors):
            raise TypeError(f"codes must be QuantizedVectors, got {type(codes).__name__}")
        mine = (self._kind, self.dim, self._bits_x2, self.seed)
        theirs = (codes.kind, codes.dim, int(round(codes.bits * 2)), codes.seed)
        if mine != theirs:
            raise ValueError(
                f"codes were made by a quantizer with (kind, dim, bits x2, seed) = {theirs}, "
                f"but this one has {mine}"
            )

    def dequantize(self, codes):
        """Reconstruct float32 rows, shape (n, dim), from codes made by this quantizer."""
        self._check_codes(codes)
        out = np.empty((codes.n, self.dim), dtype=np.float32)
        if codes.n > 0:
            self._core.decode(codes.data, codes.n, out)
        return out

    def inner_product(self, codes, queries):
        """Estimate <query, x> for every query and stored vector, from the codes directly.

        Returns float32 of shape (n_queries, n); a 1-D query counts as one row. Each
        query is rotated once and scored against the packed codes with per-code table
        lookups, without reconstructing the vectors.
        """
        self._check_codes(codes)
        rows = _as_float32_rows(queries, "queries", self.dim)
        out = np.empty((rows.shape[0], codes.n), dtype=np.float32)
        if codes.n > 0 and rows.shape[0] > 0:
            self._core.inner_product(codes.data, codes.n, rows, out)
        return out


class TurboQuantMSE(_TurboQuantBase):
    """TurboQuant for mean squared error: norm, random rotation, Lloyd-Max codes.

    Per vector the quantizer stores the L2 norm (float32, 32 bits per vector). It
    quantizes each coordinate of the rotated unit vector to the nearest centroid of
    the Lloyd-Max codebook, which is optimal for one coordinate of a uniform unit
    vector in dim dimensions. bits is 1, 1.5, 2, 2.5, 3, 3.5 or 4. A fractional width b + 0.5
    codes the first dim // 2 rotated coordinates with b + 1 bits and the others
    with b bits. After a random rotation every coordinate has the same
    distribution, so which half gets the extra bit is arbitrary.

    Inner products from these codes are biased: at 1 bit the estimate of <y, x>
    shrinks by about 2/pi. Use :class:`TurboQuantProd` for unbiased estimates.
    """

    _kind = "mse"
    _valid_bits = (1, 1.5, 2, 2.5, 3, 3.5, 4)


class TurboQuantProd(_TurboQuantBase):
    """TurboQuant for inner products: MSE stage at bits - 1, then 1-bit QJL of the residual.

    Per vector it stores the MSE codes of the unit vector at bits - 1 bits (none at
    bits = 1), sign(S r) for the residual r with S a dim x dim matrix of i.i.d.
    N(0, 1) entries drawn from the seed, and two float32 norms (||x|| and ||r||).
    The estimate ||x|| (<y, u_mse> + sqrt(pi/2) / dim * ||r|| * <S y, sign(S r)>)
    is unbiased. bits is 1, 2, 3 or 4.
    """

    _kind = "prod"
    _valid_bits = (1, 2, 3, 4)
