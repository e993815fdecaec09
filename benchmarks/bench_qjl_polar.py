"""Throughput of QJL and PolarQuant against a NumPy implementation of the same algorithms.

The script measures quantize and inner_product (queries against all codes) in rows per
second for QJL at 1 and 2 bits and PolarQuant at 4 + 3 bits without residual sketch. The
NumPy side computes the same codes and scores from the quantizer's own sketch, rotation
and codebook. Its results are checked against the C results before timing, so both sides
do the same work. BLAS gets the same thread count as OpenMP.

    OMP_NUM_THREADS=1 python benchmarks/bench_qjl_polar.py [--rows 8192] [--queries 16] [--repeats 5]
"""

import argparse
import os
import platform
import sys
import time

# BLAS reads its thread count at import, so match it to OpenMP before importing NumPy.
THREADS = os.environ.setdefault("OMP_NUM_THREADS", "1")
for variable in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, THREADS)

import numpy as np  # noqa: E402

# Run from a source checkout without installing: the repository root contains the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from turboquant import PolarQuant, QJL, _core  # noqa: E402


def best_time(function, repeats):
    """Return the minimum wall time of `repeats` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def pack_fields(codes, bits):
    """Pack integer codes (rows, count) with `bits` each into an LSB-first byte stream per row."""
    shifts = np.arange(bits, dtype=np.uint8)
    field_bits = ((codes[..., None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(field_bits.reshape(codes.shape[0], -1), axis=1, bitorder="little")


def unpack_fields(stream, count, bits):
    """Inverse of pack_fields."""
    field_bits = np.unpackbits(stream, axis=1, bitorder="little")[:, : count * bits]
    weights = (1 << np.arange(bits)).astype(np.int32)
    return field_bits.reshape(stream.shape[0], count, bits).astype(np.int32) @ weights


class NumpyQJL:
    """QJL in NumPy with the sketch matrix of a C QJL object."""

    def __init__(self, qjl):
        self.sketch = qjl.project(np.eye(qjl.dim, dtype=np.float32)).T.copy()
        self.bits = qjl.bits
        self.levels = np.array(qjl.levels, dtype=np.float32)
        self.thresholds = (self.levels[1:] + self.levels[:-1]) / 2
        # 1 bit: sqrt(pi/2) / m, folded as level / (m c); 2 bits: 1 / (m c).
        scale = 1.0 / (qjl.sketch_dim * qjl.gain)
        self.scale = scale * (self.levels[1] if self.bits == 1 else 1.0)

    def quantize(self, x):
        norms = np.linalg.norm(x, axis=1)
        projected = x @ self.sketch.T
        if self.bits == 1:
            return np.packbits(projected >= 0, axis=1, bitorder="little"), norms
        safe = np.where(norms > 0, norms, 1.0)
        codes = np.searchsorted(self.thresholds, projected / safe[:, None], side="right").astype(np.uint8)
        return pack_fields(codes, 2), norms

    def inner_product(self, packed, norms, queries):
        m = self.sketch.shape[0]
        projected = queries @ self.sketch.T
        if self.bits == 1:
            values = np.unpackbits(packed, axis=1, bitorder="little")[:, :m].astype(np.float32) * 2 - 1
        else:
            values = self.levels[unpack_fields(packed, m, 2)]
        return (projected @ values.T) * (norms * self.scale)


class NumpyPolar:
    """PolarQuant without residual sketch in NumPy, with the rotation and codebook of a C object."""

    def __init__(self, polar):
        self.rotation = polar.rotate(np.eye(polar.dim, dtype=np.float32)).T.copy()
        self.radius = polar.radius_codebook
        self.radius_thresholds = (self.radius[1:] + self.radius[:-1]) / 2
        self.radius_bits = polar.radius_bits
        self.angle_bits = polar.angle_bits
        centres = (np.arange(2**polar.angle_bits) + 0.5) * 2 * np.pi / 2**polar.angle_bits
        self.cos = np.cos(centres).astype(np.float32)
        self.sin = np.sin(centres).astype(np.float32)
        self.half = polar.dim // 2

    def quantize(self, x):
        norms = np.linalg.norm(x, axis=1)
        v = (x / np.where(norms > 0, norms, 1.0)[:, None]) @ self.rotation.T
        radius = np.hypot(v[:, : self.half], v[:, self.half :])
        theta = np.mod(np.arctan2(v[:, self.half :], v[:, : self.half]), 2 * np.pi)
        angles = 2**self.angle_bits
        angle_codes = np.minimum((theta * (angles / (2 * np.pi))).astype(np.int32), angles - 1)
        radius_codes = np.searchsorted(self.radius_thresholds, radius, side="left")
        packed = [pack_fields(radius_codes, self.radius_bits), pack_fields(angle_codes, self.angle_bits)]
        return np.concatenate(packed, axis=1), norms

    def inner_product(self, packed, norms, queries):
        radius_bytes = (self.half * self.radius_bits + 7) // 8
        radius_codes = unpack_fields(packed[:, :radius_bytes], self.half, self.radius_bits)
        angle_codes = unpack_fields(packed[:, radius_bytes:], self.half, self.angle_bits)
        rotated = queries @ self.rotation.T
        tables = rotated[:, : self.half, None] * self.cos + rotated[:, self.half :, None] * self.sin
        pair_index = np.arange(self.half)
        out = np.empty((len(queries), len(norms)), dtype=np.float32)
        radius = self.radius[radius_codes]
        for q, table in enumerate(tables):
            out[q] = norms * np.sum(radius * table[pair_index, angle_codes], axis=1)
        return out


def cpu_name():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(name, quantizer, reference, x, queries, repeats):
    """Time quantize and inner_product of the C quantizer and the NumPy reference; return table rows."""
    codes = quantizer.quantize(x)
    packed, norms = reference.quantize(x)
    # Codes may differ where a value sits within float rounding of a cell boundary.
    mismatch = np.mean(packed != codes.arrays["codes"])
    if mismatch > 1e-3:
        raise SystemExit(f"{name}: NumPy codes differ from the C codes in {mismatch:.2%} of bytes")
    scores = quantizer.inner_product(codes, queries)
    expected = reference.inner_product(codes.arrays["codes"], codes.arrays["norms"], queries)
    if not np.allclose(scores, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max()):
        raise SystemExit(f"{name}: NumPy scores differ from the C scores")

    rows = []
    for op, c_call, numpy_call in (
        ("quantize", lambda: quantizer.quantize(x), lambda: reference.quantize(x)),
        (
            f"inner_product x{len(queries)}",
            lambda: quantizer.inner_product(codes, queries),
            lambda: reference.inner_product(codes.arrays["codes"], codes.arrays["norms"], queries),
        ),
    ):
        c_rate = len(x) / best_time(c_call, repeats)
        numpy_rate = len(x) / best_time(numpy_call, repeats)
        rows.append((name, f"{codes.bits_per_value:.3f}", op, c_rate, numpy_rate, c_rate / numpy_rate))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256, help="row length (default 256, the Gemma 3 head size)")
    parser.add_argument("--rows", type=int, default=8192, help="keys per call (default 8192)")
    parser.add_argument("--queries", type=int, default=16, help="queries per inner_product call (default 16)")
    parser.add_argument("--repeats", type=int, default=5, help="calls per measurement; the best is kept")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.dim)).astype(np.float32)
    queries = rng.standard_normal((args.queries, args.dim)).astype(np.float32)

    rows = []
    for bits in (1, 2):
        qjl = QJL(args.dim, bits=bits, seed=1)
        rows += measure(f"QJL {bits}-bit", qjl, NumpyQJL(qjl), x, queries, args.repeats)
    polar = PolarQuant(args.dim, radius_bits=4, angle_bits=3, seed=1)
    rows += measure("PolarQuant 4+3", polar, NumpyPolar(polar), x, queries, args.repeats)

    print(f"Command: OMP_NUM_THREADS={THREADS} python {' '.join(sys.argv)}")
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical CPUs visible)")
    print(f"Kernels: {_core.build_info()['kernels']}; {args.rows} keys of dim {args.dim}; best of {args.repeats}")
    print()
    print("| quantizer | bits/value | op | C rows/s | NumPy rows/s | ratio |")
    print("|---|---|---|---|---|---|")
    for name, bits_per_value, op, c_rate, numpy_rate, ratio in rows:
        print(f"| {name} | {bits_per_value} | {op} | {c_rate:,.0f} | {numpy_rate:,.0f} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
