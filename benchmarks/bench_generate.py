"""Prefill and decode speed of turboquant against llama-cpp-python on the same GGUF file.

For each engine and thread count, a separate worker process loads the model with an f16 KV
cache, evaluates prompts of each length from an empty cache (prefill), then decodes greedy
tokens one at a time. Both engines get the same token ids, taken from "Alice's Adventures in
Wonderland" (turboquant.datasets). The worker's peak RSS (getrusage ru_maxrss) covers its
largest prompt, so it is the memory one engine needs for that context.

llama-cpp-python runs with its own defaults apart from the f16 cache types and
logits_all=False; it disables flash attention unless flash_attn=True is passed, and it
evaluates the prompt in batches of n_batch=512.

Usage:
    python benchmarks/bench_generate.py [--model PATH] [--threads 1,2] [--prompts 128,2048,8192]
        [--decode 64] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- workers


def run_turboquant(path, tokens, prompts, n_decode, threads, n_ctx):
    from turboquant import _core

    model = _core.Model(path, threads=threads, cache_type_k="f16", cache_type_v="f16", ctx=n_ctx)
    model.eval(tokens[:8], logits="last")  # warm-up: page in the weights
    results = []
    for length in prompts:
        model.reset()
        start = time.perf_counter()
        logits = model.eval(tokens[:length], logits="last")
        prefill = time.perf_counter() - start

        start = time.perf_counter()
        for _ in range(n_decode):
            logits = model.eval([int(np.argmax(logits))], logits="last")
        decode = time.perf_counter() - start
        results.append({"prompt": length, "prefill_s": prefill, "decode_s": decode})
    return results


def run_llama_cpp(path, tokens, prompts, n_decode, threads, n_ctx):
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        type_k=llama_cpp.GGML_TYPE_F16,
        type_v=llama_cpp.GGML_TYPE_F16,
        logits_all=False,
        verbose=False,
    )
    n_vocab = llm.n_vocab()

    def last_logits():
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    llm.eval(tokens[:8])  # warm-up: page in the weights
    results = []
    for length in prompts:
        llm.reset()
        start = time.perf_counter()
        llm.eval(tokens[:length])
        logits = last_logits()
        prefill = time.perf_counter() - start

        start = time.perf_counter()
        for _ in range(n_decode):
            llm.eval([int(np.argmax(logits))])
            logits = last_logits()
        decode = time.perf_counter() - start
        results.append({"prompt": length, "prefill_s": prefill, "decode_s": decode})
    return results


def worker(args):
    with open(args.tokens_file, encoding="utf-8") as f:
        tokens = json.load(f)
    prompts = [int(p) for p in args.prompts.split(",")]
    n_ctx = max(prompts) + args.decode + 16
    runner = run_turboquant if args.worker == "turboquant" else run_llama_cpp
    results = runner(args.model, tokens, prompts, args.decode, args.worker_threads, n_ctx)
    print(json.dumps({"results": results, "peak_rss_mib": peak_rss_mib()}))


# ----------------------------------------------------------------------------- driver


def spawn(engine, args, tokens_file, threads):
    command = [
        sys.executable, os.path.abspath(__file__), "--worker", engine, "--worker-threads", str(threads),
        "--tokens-file", tokens_file, "--model", args.model, "--prompts", args.prompts, "--decode", str(args.decode),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        raise RuntimeError(f"{engine} worker with {threads} threads failed:\n{completed.stderr.strip()}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def format_table(rows, n_decode, have_llama):
    header = "| threads | prompt tokens | engine | prefill tokens/s | decode tokens/s | peak RSS MiB |"
    lines = [header, "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['threads']} | {row['prompt']} | {row['engine']} | {row['prefill']:.1f} | "
            f"{row['decode']:.1f} | {row['rss']:.0f} |"
        )
    if have_llama:
        lines += ["", "Ratios turboquant / llama.cpp (above 1 means turboquant is faster or, for RSS, larger):", ""]
        lines += ["| threads | prompt tokens | prefill | decode | peak RSS |", "|---|---|---|---|---|"]
        ours = {(r["threads"], r["prompt"]): r for r in rows if r["engine"] == "turboquant"}
        theirs = {(r["threads"], r["prompt"]): r for r in rows if r["engine"] == "llama.cpp"}
        for key in sorted(ours):
            if key in theirs:
                a, b = ours[key], theirs[key]
                lines.append(
                    f"| {key[0]} | {key[1]} | {a['prefill'] / b['prefill']:.2f} | {a['decode'] / b['decode']:.2f} | "
                    f"{a['rss'] / b['rss']:.2f} |"
                )
    lines += ["", f"Decode: {n_decode} greedy tokens after the prompt, one token per call."]
    return "\n".join(lines)


def write_section(path, body):
    """Replace or append the "Generation" section of a Markdown file, leaving other sections alone."""
    heading = "## Generation"
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    if not text:
        text = "# Benchmarks\n"
    section = f"{heading}\n\n{body.strip()}\n"
    start = text.find(heading + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[end:] if end >= 0 else "")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="GGUF file (default: the turboquant default model)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: 1,2)")
    parser.add_argument("--prompts", default="128,2048,8192", help="comma-separated prompt lengths in tokens")
    parser.add_argument("--decode", type=int, default=64, help="greedy tokens decoded after each prompt (default: 64)")
    parser.add_argument("--write", metavar="MARKDOWN", help="write the table into this file's Generation section")
    parser.add_argument("--worker", choices=["turboquant", "llama.cpp"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tokens-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        worker(args)
        return 0

    from turboquant import Model
    from turboquant.datasets import english_text

    if args.model is None:
        from turboquant.model import default_model_path

        args.model = default_model_path()
    prompts = [int(p) for p in args.prompts.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]

    # Token ids come from turboquant's tokenizer, so both engines see exactly the same ids.
    tokenizer_model = Model.load(args.model, ctx=64)
    tokens = tokenizer_model.tokenize(english_text("alice29"), add_bos=True, special=False)
    del tokenizer_model
    if len(tokens) < max(prompts):
        raise SystemExit(f"the benchmark text has {len(tokens)} tokens, fewer than the longest prompt {max(prompts)}")

    engines = ["turboquant"]
    try:
        import llama_cpp

        engines.append("llama.cpp")
        llama_version = llama_cpp.__version__
    except ImportError as exc:
        llama_version = None
        print(f"llama_cpp is not importable ({exc}); measuring turboquant only. "
              "Install it with: pip install llama-cpp-python", file=sys.stderr)

    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(tokens[: max(prompts)], f)
        tokens_file = f.name
    try:
        for threads in thread_counts:
            for engine in engines:
                print(f"running {engine} with {threads} threads...", file=sys.stderr)
                report = spawn(engine, args, tokens_file, threads)
                for result in report["results"]:
                    rows.append({
                        "engine": engine,
                        "threads": threads,
                        "prompt": result["prompt"],
                        "prefill": result["prompt"] / result["prefill_s"],
                        "decode": args.decode / result["decode_s"],
                        "rss": report["peak_rss_mib"],
                    })
    finally:
        os.unlink(tokens_file)

    load_after = os.getloadavg()[0]
    command = "python benchmarks/bench_generate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body = "\n".join([
        f"Command: `{command.strip()}`",
        "",
        f"CPU: {cpu_name()}, {os.cpu_count()} logical cores; Python {platform.python_version()}; "
        f"llama-cpp-python {llama_version or 'not installed'}; model {os.path.basename(args.model)}; "
        "KV cache f16 on both engines.",
        "",
        f"Load average (1 minute) before and after the run: {load_before:.1f} and {load_after:.1f}. "
        "A load above the core count means other processes shared the CPU, which makes the speeds noisy.",
        "",
        format_table(rows, args.decode, len(engines) > 1),
    ])
    print(body)
    if args.write:
        write_section(args.write, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
