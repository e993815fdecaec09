"""Time attention on a compressed KV cache against an f16 cache, for one Gemma 3 270M layer.

One decode step of one layer: 4 query heads share 1 KV head of head_dim 256. For each
context length the script times `_core.kv_attention` with f16 rows (the baseline) and with
every TurboQuant format, plus a NumPy float16 attention for scale. It prints milliseconds,
ratios against the C f16 path measured in the same run, and cache bytes.

Two timings per row: "hot" repeats one layer, whose rows then stay in the CPU caches;
"cold" visits --layers separate copies in turn, as a decode step does with the 18 layers
of Gemma 3 270M, so rows come from memory once their total exceeds the last-level cache.

    OMP_NUM_THREADS=1 python benchmarks/bench_kv_cache.py
    OMP_NUM_THREADS=2 python benchmarks/bench_kv_cache.py --lengths 2048 8192 16384

Set TURBOQUANT_KERNELS=scalar|avx2|avx512 to time one kernel variant.
"""

import argparse
import os
import platform
import sys
import time

import numpy as np

from turboquant import _core

FORMATS = ["f16", "tq4", "tq3.5", "tq3", "tq2.5", "tq2", "tq3+qjl", "tq4+qjl", "polar", "polar+qjl"]
N_HEADS = 4
HEAD_DIM = 256


def cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def best_time(function, min_seconds):
    """Run function repeatedly for at least min_seconds (and 3 runs); return the fastest run in seconds."""
    times = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        function()
        times.append(time.perf_counter() - t0)
    return min(times)


def numpy_f16_attention(q, keys, values, scale):
    scores = (q @ keys.T.astype(np.float32)) * scale
    scores -= scores.max(axis=1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=1, keepdims=True)
    return weights @ values.astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 16384],
                        help="context lengths (positions in the cache) to time")
    parser.add_argument("--formats", nargs="+", default=FORMATS, help="KV cache formats to time")
    parser.add_argument("--min-seconds", type=float, default=0.3, help="minimum time spent on each measurement")
    parser.add_argument("--layers", type=int, default=18, help="layer copies visited in turn for the cold timing")
    args = parser.parse_args(argv)

    info = _core.build_info()
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"cpu: {cpu_name()}, kernels {info['kernels']}, OpenMP threads {info['openmp_threads']}")
    print(f"layer: {N_HEADS} query heads, 1 KV head, head_dim {HEAD_DIM}; time of one decode step")
    print()
    header = (f"{'positions':>9} {'format':>10} {'bits':>6} {'hot ms':>8} {'vs f16':>7} {'cold ms':>8} "
              f"{'vs f16':>7} {'KV bytes':>10}")
    print(header)
    print("-" * len(header))

    rng = np.random.default_rng(0)
    scale = 1.0 / 16.0
    for n in args.lengths:
        k = rng.standard_normal((n, HEAD_DIM)).astype(np.float32)
        v = rng.standard_normal((n, HEAD_DIM)).astype(np.float32)
        q = rng.standard_normal((N_HEADS, HEAD_DIM)).astype(np.float32)

        k16, v16 = k.astype(np.float16), v.astype(np.float16)
        numpy_ms = 1e3 * best_time(lambda: numpy_f16_attention(q, k16, v16, scale), args.min_seconds)

        baseline = None
        for name in args.formats:
            codec = _core.KVCodec(name, HEAD_DIM, seed=1)
            keys, values = codec.encode(k), codec.encode(v)
            hot = 1e3 * best_time(lambda: _core.kv_attention(q, keys, values, codec, codec, scale), args.min_seconds)
            copies = [(keys.copy(), values.copy()) for _ in range(args.layers)]

            def decode_step():
                for layer_keys, layer_values in copies:
                    _core.kv_attention(q, layer_keys, layer_values, codec, codec, scale)

            cold = 1e3 * best_time(decode_step, args.min_seconds) / args.layers
            del copies
            if baseline is None:
                baseline = (hot, cold)
            print(f"{n:>9} {name:>10} {codec.bits_per_value:>6.3f} {hot:>8.3f} {baseline[0] / hot:>6.2f}x "
                  f"{cold:>8.3f} {baseline[1] / cold:>6.2f}x {keys.nbytes + values.nbytes:>10}")
        print(f"{n:>9} {'numpy f16':>10} {16.0:>6.3f} {numpy_ms:>8.3f} {baseline[0] / numpy_ms:>6.2f}x "
              f"{'':>8} {'':>7} {k16.nbytes + v16.nbytes:>10}")
        print()
    print("'vs f16' is the C f16 time divided by the row's time: above 1 is faster than f16.")
    print("All formats run the same attention code (kv_attention); only the row codec differs.")


if __name__ == "__main__":
    main()
