"""Throughput of the TurboQuant quantizers against a NumPy implementation of the same algorithm.

For dim 128 and 256 and bits 2, 2.5, 3, 3.5 and 4 it measures quantize, dequantize
and inner product (one query against all codes) in vectors per second and input
GB/s, with 1 and 2 OpenMP threads. Each thread count runs in its own subprocess
with OMP_NUM_THREADS set, because OpenMP reads it once at start-up. The NumPy
baseline does the same steps (randomized Hadamard transform by butterflies,
searchsorted on the cell boundaries, bit packing with numpy.packbits) and runs with
BLAS limited to one thread. A last table compares scoring 3-bit codes of 32768 x 256
keys with the float32 product keys @ q on one thread.

    python benchmarks/bench_quantizers.py [--rows 16384] [--repeats 5]
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np

DIMS = (128, 256)
BITS = (2, 2.5, 3, 3.5, 4)
THREADS = (1, 2)


def best_time(function, repeats):
    """Return the minimum wall time of `repeats` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


# ---- NumPy implementation of TurboQuantMSE ------------------------------------


def fwht_numpy(x):
    """Unnormalised Walsh-Hadamard transform of each row (dim a power of two)."""
    n, dim = x.shape
    y = x.copy()
    half = 1
    while half < dim:
        blocks = y.reshape(n, dim // (2 * half), 2, half)
        a = blocks[:, :, 0, :].copy()
        b = blocks[:, :, 1, :]
        blocks[:, :, 0, :] += b
        blocks[:, :, 1, :] = a - b
        half *= 2
    return y


class NumpyTurboQuantMSE:
    """The MSE quantizer in NumPy, with the rotation signs and codebooks of the C one."""

    def __init__(self, quantizer, rotation):
        dim = quantizer.dim
        self.dim = dim
        matrix = rotation.matrix()
        # R = H D / sqrt(dim) and row 0 of H is all ones, so row 0 of R is D / sqrt(dim).
        self.signs = np.round(matrix[0] * math.sqrt(dim)).astype(np.float32)
        self.scale = np.float32(1 / math.sqrt(dim))
        layout = quantizer._layout
        self.dim_high = layout["dim_high"]
        self.bits_high = layout["bits_high"]
        self.bits_low = layout["bits_low"]
        self.books = (np.asarray(quantizer.codebook), np.asarray(quantizer.codebook_low))
        self.bounds = tuple((book[1:] + book[:-1]) / 2 for book in self.books)

    def _segments(self):
        return ((0, self.dim_high, self.bits_high, 0), (self.dim_high, self.dim, self.bits_low, 1))

    def quantize(self, x):
        norms = np.linalg.norm(x, axis=1).astype(np.float32)
        safe = np.where(norms > 0, norms, 1).astype(np.float32)
        rotated = fwht_numpy((x / safe[:, None]) * self.signs) * self.scale
        parts = []
        for start, end, bits, which in self._segments():
            if end > start:
                codes = np.searchsorted(self.bounds[which], rotated[:, start:end]).astype(np.uint8)
                bit_matrix = ((codes[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(len(x), -1)
                parts.append(np.packbits(bit_matrix, axis=1, bitorder="little"))
        parts.append(norms[:, None].view(np.uint8))
        return np.concatenate(parts, axis=1)

    def _values(self, packed):
        values = []
        offset = 0
        for start, end, bits, which in self._segments():
            if end > start:
                nbytes = ((end - start) * bits + 7) // 8
                bit_matrix = np.unpackbits(packed[:, offset : offset + nbytes], axis=1, bitorder="little")
                bit_matrix = bit_matrix[:, : (end - start) * bits].reshape(len(packed), end - start, bits)
                codes = (bit_matrix << np.arange(bits, dtype=np.uint8)).sum(axis=2)
                values.append(self.books[which][codes])
                offset += nbytes
        norms = packed[:, offset : offset + 4].copy().view(np.float32)[:, 0]
        return np.concatenate(values, axis=1), norms

    def dequantize(self, packed):
        values, norms = self._values(packed)
        return fwht_numpy(values) * (self.signs * self.scale) * norms[:, None]

    def inner_product(self, packed, query):
        rotated = fwht_numpy((query * self.signs)[None, :])[0] * self.scale
        values, norms = self._values(packed)
        return (values @ rotated) * norms


# ---- one measurement process ----------------------------------------------------


def measure(rows, repeats, with_numpy):
    import turboquant
    from turboquant import Rotation, TurboQuantMSE

    results = []
    rng = np.random.default_rng(0)
    for dim in DIMS:
        x = rng.standard_normal((rows, dim)).astype(np.float32)
        query = rng.standard_normal(dim).astype(np.float32)
        input_bytes = x.nbytes
        for bits in BITS:
            quantizer = TurboQuantMSE(dim, bits, seed=1)
            codes = quantizer.quantize(x)
            row = {"dim": dim, "bits": bits, "bits_per_value": codes.bits_per_value}
            row["quantize_s"] = best_time(lambda: quantizer.quantize(x), repeats)
            row["dequantize_s"] = best_time(lambda: quantizer.dequantize(codes), repeats)
            row["inner_product_s"] = best_time(lambda: quantizer.inner_product(codes, query), repeats)
            if with_numpy:
                reference = NumpyTurboQuantMSE(quantizer, Rotation(dim, seed=1))
                packed = reference.quantize(x)
                # The NumPy codes must equal ours, or the comparison would be meaningless;
                # a few coordinates within float32 rounding of a boundary may differ.
                ours = np.frombuffer(bytes(codes.data), np.uint8).reshape(rows, -1)
                row["numpy_codes_equal"] = float(np.mean(packed == ours))
                numpy_repeats = max(1, repeats // 2)
                row["numpy_quantize_s"] = best_time(lambda: reference.quantize(x), numpy_repeats)
                row["numpy_dequantize_s"] = best_time(lambda: reference.dequantize(packed), numpy_repeats)
                row["numpy_inner_product_s"] = best_time(lambda: reference.inner_product(packed, query), numpy_repeats)
            row["input_bytes"] = input_bytes
            results.append(row)

    scoring = None
    if with_numpy:
        keys = rng.standard_normal((32768, 256)).astype(np.float32)
        quantizer = TurboQuantMSE(256, 3, seed=1)
        codes = quantizer.quantize(keys)
        scoring = {
            "codes_s": best_time(lambda: quantizer.inner_product(codes, query), repeats * 4),
            "matvec_s": best_time(lambda: keys @ query, repeats * 4),
            "codes_bytes": codes.nbytes,
            "keys_bytes": keys.nbytes,
        }
    build = turboquant._core.build_info()
    return {"rows": rows, "results": results, "scoring": scoring, "kernels": build["kernels"],
            "openmp_threads": build["openmp_threads"]}


def run_child(threads, rows, repeats):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [sys.executable, __file__, "--child", "--rows", str(rows), "--repeats", str(repeats)]
    if threads == 1:
        command.append("--with-numpy")
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(output)


def cpu_model():
    try:
        output = subprocess.run(["lscpu"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in output.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def format_tables(runs, command):
    lines = [f"Command: `{command}`", "", f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs visible)", ""]
    single = runs[1]
    lines.append(f"Kernels: {single['kernels']}; {single['rows']} vectors per call; best of the repeats.")
    lines.append("")

    header = ("| dim | bits | bits/value | op | threads | vectors/s | input GB/s | NumPy vectors/s | ratio |")
    lines += [header, "|---|---|---|---|---|---|---|---|---|"]
    for index, row in enumerate(single["results"]):
        for op in ("quantize", "dequantize", "inner_product"):
            numpy_rate = single["rows"] / row[f"numpy_{op}_s"]
            for threads in THREADS:
                measured = runs[threads]["results"][index]
                rate = runs[threads]["rows"] / measured[f"{op}_s"]
                gigabytes = row["input_bytes"] / measured[f"{op}_s"] / 1e9
                lines.append(
                    f"| {row['dim']} | {row['bits']} | {row['bits_per_value']:.3f} | {op} | {threads} | "
                    f"{rate:,.0f} | {gigabytes:.2f} | {numpy_rate:,.0f} | {rate / numpy_rate:.1f}x |"
                )
    lines.append("")

    agreement = min(row["numpy_codes_equal"] for row in single["results"])
    lines.append(f"NumPy and C code bytes agree on at least {agreement:.4%} of bytes in every configuration.")

    scoring = single["scoring"]
    lines += [
        "",
        "Scoring one query against 32768 keys of dim 256, one thread:",
        "",
        "| method | time (ms) | bytes read | speed-up |",
        "|---|---|---|---|",
        f"| NumPy float32 `keys @ q` | {scoring['matvec_s'] * 1e3:.3f} | {scoring['keys_bytes']:,} | 1.0x |",
        f"| TurboQuantMSE 3-bit `inner_product` | {scoring['codes_s'] * 1e3:.3f} | {scoring['codes_bytes']:,} | "
        f"{scoring['matvec_s'] / scoring['codes_s']:.2f}x |",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16384, help="vectors per call (default 16384)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement; the best counts")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--with-numpy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        print(json.dumps(measure(args.rows, args.repeats, args.with_numpy)))
        return
    runs = {threads: run_child(threads, args.rows, args.repeats) for threads in THREADS}
    command = "python benchmarks/bench_quantizers.py " + " ".join(sys.argv[1:])
    print(format_tables(runs, command.strip()))


if __name__ == "__main__":
    main()
