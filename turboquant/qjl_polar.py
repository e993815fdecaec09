"""QJL (1- and 2-bit Gaussian sketches) and PolarQuant (radius and angle per coordinate pair).

Both quantizers compress rows of float32 vectors, typically attention keys, and estimate
inner products with queries directly from the codes. The numerical work runs in the C
extension ``turboquant._core``; this module validates arguments, allocates the outputs
and packs the results into :class:`PackedCodes`.
"""

import json
import math
import numbers
import struct
import zlib

import numpy as np

from . import _core

__all__ = ["PackedCodes", "QJL", "PolarQuant"]

_UINT64_MAX = 2**64 - 1


def _check_int(name, value, low, high):
    """Return value as int when it is an integer in [low, high], else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{name}={value} is out of range; use {low} to {high}")
    return value


def _as_rows(array, name, dim):
    """Return array as a C-contiguous float32 matrix (rows, dim) without copying when possible."""
    if not isinstance(array, np.ndarray):
        array = np.asarray(array)
    if array.dtype != np.float32:
        raise TypeError(
            f"{name} must have dtype float32, got {array.dtype}; convert with {name}.astype(numpy.float32)"
        )
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D (rows, {dim}), got shape {array.shape}")
    if array.shape[1] != dim:
        raise ValueError(f"{name} has {array.shape[1]} columns but this quantizer expects dim={dim}")
    return np.ascontiguousarray(array)


class PackedCodes:
    """Codes of n rows from one quantizer, with everything needed to score or rebuild them.

    Attributes:
        kind: quantizer name, ``"qjl"`` or ``"polar"``.
        dim: length of each original row.
        bits: nominal bits of the quantizer (QJL: bits per sketch entry; PolarQuant:
            radius_bits + angle_bits per pair).
        seed: seed of the quantizer's random matrices.
        n: number of rows.
        params: the remaining quantizer settings, which must match when decoding.
        arrays: the stored arrays in a fixed order, each with n rows.
    """

    _MAGIC = b"TQCODES\0"
    _VERSION = 1
    _DTYPES = {"uint8": np.dtype(np.uint8), "float32": np.dtype("<f4")}

    def __init__(self, kind, dim, bits, seed, n, params, arrays):
        self.kind = kind
        self.dim = dim
        self.bits = bits
        self.seed = seed
        self.n = n
        self.params = dict(params)
        self.arrays = dict(arrays)

    @property
    def nbytes(self):
        """Bytes of all stored arrays: codes, norms and residual norms."""
        return sum(array.nbytes for array in self.arrays.values())

    @property
    def bits_per_value(self):
        """Stored bits per original float value, counting codes and every norm."""
        row_bytes = sum(array.dtype.itemsize * int(np.prod(array.shape[1:])) for array in self.arrays.values())
        return 8.0 * row_bytes / self.dim

    def __len__(self):
        return self.n

    def __repr__(self):
        return (
            f"PackedCodes(kind={self.kind!r}, dim={self.dim}, bits={self.bits}, n={self.n}, "
            f"bits_per_value={self.bits_per_value:.3f})"
        )

    def to_bytes(self):
        """Serialize as magic, version, a JSON header and the raw little-endian arrays."""
        header = {
            "kind": self.kind,
            "dim": self.dim,
            "bits": self.bits,
            "seed": self.seed,
            "n": self.n,
            "params": self.params,
            "arrays": [
                {"name": name, "dtype": array.dtype.name, "shape": list(array.shape)}
                for name, array in self.arrays.items()
            ],
        }
        header_bytes = json.dumps(header, sort_keys=True).encode("utf-8")
        parts = [self._MAGIC, struct.pack("<II", self._VERSION, len(header_bytes)), header_bytes]
        for array in self.arrays.values():
            parts.append(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data):
        """Parse bytes written by :meth:`to_bytes`; raise ValueError on any inconsistency."""
        data = bytes(data)
        prefix = len(cls._MAGIC) + 8
        if len(data) < prefix or data[: len(cls._MAGIC)] != cls._MAGIC:
            raise ValueError("data is not turboquant packed codes (missing TQCODES magic)")
        version, header_length = struct.unpack_from("<II", data, len(cls._MAGIC))
        if version != cls._VERSION:
            raise ValueError(f"packed codes version {version} is not supported; expected {cls._VERSION}")
        if header_length > len(data) - prefix:
            raise ValueError(f"packed codes header length {header_length} exceeds the {len(data)} bytes given")
        try:
            header = json.loads(data[prefix : prefix + header_length].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"packed codes header is not valid JSON: {error}") from None
        if not isinstance(header, dict):
            raise ValueError("packed codes header must be a JSON object")

        required = (
            ("kind", str),
            ("dim", int),
            ("bits", int),
            ("seed", int),
            ("n", int),
            ("params", dict),
            ("arrays", list),
        )
        for key, kind in required:
            if key not in header:
                raise ValueError(f"packed codes header is missing '{key}'")
            if not isinstance(header[key], kind) or isinstance(header[key], bool):
                raise ValueError(f"packed codes header field '{key}' has invalid value {header[key]!r}")
        n = header["n"]
        if n < 0 or header["dim"] < 1 or not 0 <= header["seed"] <= _UINT64_MAX:
            raise ValueError(
                f"packed codes header has invalid n={n}, dim={header['dim']} or seed={header['seed']}"
            )

        offset = prefix + header_length
        arrays = {}
        for entry in header["arrays"]:
            if not isinstance(entry, dict) or set(entry) != {"name", "dtype", "shape"}:
                raise ValueError(f"packed codes array entry {entry!r} must have name, dtype and shape")
            name, dtype_name, shape = entry["name"], entry["dtype"], entry["shape"]
            if dtype_name not in cls._DTYPES:
                raise ValueError(f"packed codes array '{name}' has unsupported dtype {dtype_name!r}")
            valid_shape = (
                isinstance(shape, list)
                and 1 <= len(shape) <= 2
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
                and shape[0] == n
            )
            if not valid_shape:
                raise ValueError(f"packed codes array '{name}' has invalid shape {shape!r} for n={n}")
            dtype = cls._DTYPES[dtype_name]
            size = dtype.itemsize * math.prod(shape)
            if offset + size > len(data):
                raise ValueError(f"packed codes are truncated: array '{name}' needs {size} bytes at offset {offset}")
            array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
            arrays[name] = array.astype(dtype.newbyteorder("="), copy=True)
            offset += size
        if offset != len(data):
            raise ValueError(f"packed codes have {len(data) - offset} unexpected trailing bytes")
        return cls(header["kind"], header["dim"], header["bits"], header["seed"], n, header["params"], arrays)


class QJL:
    """Quantized Johnson-Lindenstrauss sketch with 1 or 2 bits per sketch entry.

    A row x is stored as ||x|| (float32) and Q(u) for u = S x / ||x||, where S is a
    ``sketch_dim`` x ``dim`` matrix of i.i.d. N(0, 1) entries drawn from ``seed`` and Q is the
    Lloyd-Max quantizer of N(0, 1): Q(u) = sign(u) sqrt(2/pi) at 1 bit, four levels
    (+-0.4528, +-1.5104) at 2 bits. With z = S y for a query y and c = E[u Q(u)]:

        <x, y> ~ ||x|| / (m c) * sum_i z_i Q(u_i)

    Each z_i is Gaussian with Cov(z_i, u_i) = <x, y> / ||x||, so z_i = (<x, y> / ||x||) u_i + w_i
    with w_i independent of u_i, and E[z_i Q(u_i)] = (<x, y> / ||x||) c. The estimate is
    therefore unbiased over the draw of S. For a Lloyd-Max quantizer each level is the
    mean of u over its cell, so c = E[Q(u)^2] = 1 - MSE: c = 2/pi at 1 bit (which gives the
    usual sqrt(pi/2) / m * ||x|| * <S y, sign(S x)>) and c = 0.8825 at 2 bits. The variance is

        Var = (||x||^2 ||y||^2 / c + <x, y>^2 (E[u^2 Q(u)^2] / c^2 - 1 / c - 1)) / m,

    which at 1 bit is ((pi/2) ||x||^2 ||y||^2 - <x, y>^2) / m; :meth:`estimator_variance`
    evaluates it. When x and y are orthogonal the 2-bit estimate has 72% of the 1-bit variance
    (1/c is 1.133 against pi/2). The advantage shrinks as |cos(x, y)| grows and reverses
    above about 0.58; for parallel vectors the 2-bit variance is 2.5 times the 1-bit one,
    because sign(u) |u| varies less than u Q(u).
    """

    kind = "qjl"

    def __init__(self, dim, bits=1, seed=0, sketch_dim=None):
        dim = _check_int("dim", dim, 1, 16384)
        if bits not in (1, 2) or isinstance(bits, bool):
            raise ValueError(f"QJL bits={bits!r} is not supported; use 1 or 2")
        seed = _check_int("seed", seed, 0, _UINT64_MAX)
        sketch_dim = dim if sketch_dim is None else _check_int("sketch_dim", sketch_dim, 1, 16384)
        self._core = _core.QJL(dim, sketch_dim, int(bits), seed)

    dim = property(lambda self: self._core.dim, doc="Row length.")
    bits = property(lambda self: self._core.bits, doc="Bits per sketch entry (1 or 2).")
    seed = property(lambda self: self._core.seed, doc="Seed of the sketch matrix S.")
    sketch_dim = property(lambda self: self._core.sketch_dim, doc="Number m of sketch rows.")
    kernels = property(lambda self: self._core.kernels, doc="SIMD kernel variant in use.")
    levels = property(lambda self: self._core.levels, doc="Quantizer levels for N(0, 1) input, ascending.")
    gain = property(lambda self: self._core.gain, doc="c = E[u Q(u)] for u ~ N(0, 1).")
    fourth_moment = property(lambda self: self._core.fourth_moment, doc="E[u^2 Q(u)^2] for u ~ N(0, 1).")

    def __repr__(self):
        return f"QJL(dim={self.dim}, bits={self.bits}, seed={self.seed}, sketch_dim={self.sketch_dim})"

    def _params(self):
        return {"sketch_dim": self.sketch_dim}

    def quantize(self, x):
        """Quantize rows x (n, dim) float32 into PackedCodes with codes and norms."""
        x = _as_rows(x, "x", self.dim)
        n = x.shape[0]
        codes = np.empty((n, self._core.code_bytes), dtype=np.uint8)
        norms = np.empty(n, dtype=np.float32)
        self._core.quantize(x, codes, norms)
        arrays = {"codes": codes, "norms": norms}
        return PackedCodes(self.kind, self.dim, self.bits, self.seed, n, self._params(), arrays)

    def _check_codes(self, codes):
        if not isinstance(codes, PackedCodes):
            raise TypeError(f"codes must be PackedCodes from QJL.quantize, got {type(codes).__name__}")
        expected = (self.kind, self.dim, self.bits, self.seed, self._params())
        found = (codes.kind, codes.dim, codes.bits, codes.seed, codes.params)
        if found != expected:
            raise ValueError(
                f"codes were made by a different quantizer: (kind, dim, bits, seed, params) {found} != "
                f"{expected}; decode them with the quantizer that produced them"
            )
        if list(codes.arrays) != ["codes", "norms"]:
            raise ValueError(f"QJL codes must contain arrays ['codes', 'norms'], got {list(codes.arrays)}")
        return codes.arrays["codes"], codes.arrays["norms"]

    def project(self, queries):
        """Return S y for each query row, shape (n_queries, sketch_dim)."""
        queries = _as_rows(queries, "queries", self.dim)
        projected = np.empty((queries.shape[0], self.sketch_dim), dtype=np.float32)
        self._core.project(queries, projected)
        return projected

    def inner_product(self, codes, queries):
        """Estimate <x_i, y_q> for every stored row and query, shape (n_queries, n)."""
        packed, norms = self._check_codes(codes)
        projected = self.project(queries)
        out = np.empty((projected.shape[0], codes.n), dtype=np.float32)
        self._core.inner_product(packed, norms, codes.n, projected, out)
        return out

    def dequantize(self, codes):
        """Return the estimator's reconstruction ||x|| / (m c) * S^T Q(u), shape (n, dim).

        Its dot product with y equals the inner-product estimate, so it is unbiased but noisy:
        use it to check scores, not as a low-error copy of x.
        """
        packed, norms = self._check_codes(codes)
        out = np.empty((codes.n, self.dim), dtype=np.float32)
        self._core.dequantize(packed, norms, codes.n, out)
        return out

    def estimator_variance(self, x_norm, y_norm, dot):
        """Closed-form variance of the inner-product estimate over the draw of S."""
        c = self.gain
        per_row = x_norm**2 * y_norm**2 / c + dot**2 * (self.fourth_moment / c**2 - 1.0 / c - 1.0)
        return per_row / self.sketch_dim


class PolarQuant:
    """PolarQuant in pairwise form: a radius code and an angle code per coordinate pair.

    A row x (even ``dim``) is stored as ||x|| (float32) and, for the rotated unit vector
    v = R x / ||x||, one (radius, angle) code per pair (v_j, v_{j + dim/2}). That is the NeoX
    RoPE pairing, so keys after RoPE pair naturally. The radius goes through
    ``radius_codebook``. By default that is the Lloyd-Max codebook of the radius of a
    coordinate pair of a uniform unit vector in ``dim`` dimensions, whose density is
    proportional to r (1 - r^2)^((dim-4)/2). The angle goes through 2^angle_bits equal cells
    with centroids at the cell centres.

    The angle error usually dominates: on uniform unit vectors at dim 256 the default
    4 radius + 3 angle bits give an MSE of 0.053, while 3 + 4 bits give 0.019 at the same
    storage, below TurboQuantMSE at 3.5 bits (0.022); ``tests/test_polar.py`` prints these.

    With ``qjl_bits`` 1 or 2 the residual x - x_hat is also stored as a QJL sketch
    (``sketch_dim = dim``) with its norm, and the inner-product estimate becomes unbiased;
    without it the estimate <x_hat, y> is biased towards zero. Inner products use a table of
    q_rot . (cos theta_a, sin theta_a) per pair and angle code, built once per query.
    """

    kind = "polar"

    def __init__(self, dim, radius_bits=4, angle_bits=3, seed=0, radius_codebook=None, qjl_bits=0):
        dim = _check_int("dim", dim, 2, 16384)
        if dim % 2:
            raise ValueError(f"PolarQuant dim={dim} must be even, because coordinate j pairs with j + dim/2")
        radius_bits = _check_int("radius_bits", radius_bits, 1, 8)
        angle_bits = _check_int("angle_bits", angle_bits, 1, 8)
        qjl_bits = _check_int("qjl_bits", qjl_bits, 0, 2)
        seed = _check_int("seed", seed, 0, _UINT64_MAX)
        if radius_codebook is not None:
            radius_codebook = np.asarray(radius_codebook)
            if radius_codebook.dtype.kind not in "fiu":
                raise TypeError(f"radius_codebook must be a real-valued array, got dtype {radius_codebook.dtype}")
            if radius_codebook.shape != (2**radius_bits,):
                raise ValueError(
                    f"radius_codebook has shape {radius_codebook.shape} but radius_bits={radius_bits} "
                    f"needs {2**radius_bits} values"
                )
            radius_codebook = np.ascontiguousarray(radius_codebook, dtype=np.float32)
        self._core = _core.PolarQuant(dim, radius_bits, angle_bits, radius_codebook, qjl_bits, seed)
        self._codebook_crc32 = zlib.crc32(np.asarray(self._core.radius_codebook, dtype="<f4").tobytes())

    dim = property(lambda self: self._core.dim, doc="Row length (even).")
    radius_bits = property(lambda self: self._core.radius_bits, doc="Bits per radius code.")
    angle_bits = property(lambda self: self._core.angle_bits, doc="Bits per angle code.")
    qjl_bits = property(lambda self: self._core.qjl_bits, doc="Bits per residual QJL entry (0: no residual).")
    seed = property(lambda self: self._core.seed, doc="Seed of the rotation and the residual sketch.")
    kernels = property(lambda self: self._core.kernels, doc="SIMD kernel variant in use.")

    @property
    def bits(self):
        """Nominal bits per pair: radius_bits + angle_bits."""
        return self.radius_bits + self.angle_bits

    @property
    def radius_codebook(self):
        """Radius centroids for unit-norm rows, ascending, as float32."""
        return np.array(self._core.radius_codebook, dtype=np.float32)

    def __repr__(self):
        return (
            f"PolarQuant(dim={self.dim}, radius_bits={self.radius_bits}, angle_bits={self.angle_bits}, "
            f"seed={self.seed}, qjl_bits={self.qjl_bits})"
        )

    def _params(self):
        return {
            "radius_bits": self.radius_bits,
            "angle_bits": self.angle_bits,
            "qjl_bits": self.qjl_bits,
            "radius_codebook_crc32": self._codebook_crc32,
        }

    def quantize(self, x):
        """Quantize rows x (n, dim) float32 into PackedCodes (codes, norms, residual norms)."""
        x = _as_rows(x, "x", self.dim)
        n = x.shape[0]
        arrays = {
            "codes": np.empty((n, self._core.code_bytes), dtype=np.uint8),
            "norms": np.empty(n, dtype=np.float32),
        }
        if self.qjl_bits:
            arrays["residual_norms"] = np.empty(n, dtype=np.float32)
        self._core.quantize(x, arrays["codes"], arrays["norms"], arrays.get("residual_norms"))
        return PackedCodes(self.kind, self.dim, self.bits, self.seed, n, self._params(), arrays)

    def _check_codes(self, codes):
        if not isinstance(codes, PackedCodes):
            raise TypeError(f"codes must be PackedCodes from PolarQuant.quantize, got {type(codes).__name__}")
        expected = (self.kind, self.dim, self.bits, self.seed, self._params())
        found = (codes.kind, codes.dim, codes.bits, codes.seed, codes.params)
        if found != expected:
            raise ValueError(
                f"codes were made by a different quantizer: (kind, dim, bits, seed, params) {found} != "
                f"{expected}; decode them with the quantizer that produced them"
            )
        names = ["codes", "norms"] + (["residual_norms"] if self.qjl_bits else [])
        if list(codes.arrays) != names:
            raise ValueError(f"PolarQuant codes must contain arrays {names}, got {list(codes.arrays)}")
        return codes.arrays["codes"], codes.arrays["norms"], codes.arrays.get("residual_norms")

    def dequantize(self, codes):
        """Return the reconstructed rows (n, dim).

        With qjl_bits > 0 the QJL reconstruction of the residual is added, so that
        ``dequantize(codes) @ y`` equals :meth:`inner_product`. That term is unbiased but
        noisy and raises the squared error; for the lowest MSE use qjl_bits=0.
        """
        packed, norms, residual_norms = self._check_codes(codes)
        out = np.empty((codes.n, self.dim), dtype=np.float32)
        self._core.dequantize(packed, norms, residual_norms, codes.n, out)
        return out

    def rotate(self, x):
        """Return R x for each row of x (n, dim), R being the orthogonal rotation applied before pairing."""
        x = _as_rows(x, "x", self.dim)
        out = np.empty_like(x)
        self._core.rotate(x, out)
        return out

    def inner_product(self, codes, queries):
        """Estimate <x_i, y_q> for every stored row and query from the codes, shape (n_queries, n)."""
        packed, norms, residual_norms = self._check_codes(codes)
        queries = _as_rows(queries, "queries", self.dim)
        out = np.empty((queries.shape[0], codes.n), dtype=np.float32)
        self._core.inner_product(packed, norms, residual_norms, codes.n, queries, out)
        return out
