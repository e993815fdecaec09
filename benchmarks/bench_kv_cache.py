"""Decode speed and KV cache size of every cache type, against llama-cpp-python, on Gemma 3 270M.

Two parts, each run in its own worker processes with --threads OpenMP threads:

decode: for each context length and each configuration, a fresh worker loads the model with
a cache of context + decode + 16 positions, evaluates the first `context` tokens of
"Alice's Adventures in Wonderland" (turboquant.datasets) in one call (prefill, timed), then
decodes --decode greedy tokens one call each (timed). turboquant rows report
kv_bytes_per_token() and kv_cache_bytes() after the run. llama-cpp-python rows get the same
token ids. Their KV sizes are computed from the ggml type sizes (the gguf package's
GGML_QUANT_SIZES) and the cell and layer counts that llama.cpp logs for each cache it
allocates. Peak RSS (getrusage ru_maxrss) is per worker, so it covers one context.

attention: one decode step of one layer (4 query heads share 1 KV head of head_dim 256),
`_core.kv_attention` on rows of every KVCodec format (f16 and the TurboQuant codecs; it has
no q8_0 or q4_0 rows), plus a NumPy float16 attention for scale. "hot" repeats one layer,
whose rows then stay in the CPU caches. "cold" visits --layers separate copies in turn, as
a decode step does with the 18 layers of Gemma 3 270M.

A configuration is NAME (keys and values of one type) or KEYS/VALUES, optionally followed by
:RECENT, the newest positions also kept uncompressed (kv_recent_f16), :SINK, the first positions
also kept in f16 (kv_sink_f16), and :TYPE, the row type of the recent copies, f16 or q8_0
(kv_recent_type). When either side is a TurboQuant codec they default to Model.load's defaults
(DEFAULT_KV_RECENT_F16, DEFAULT_KV_SINK_F16, DEFAULT_KV_RECENT_TYPE); otherwise RECENT and SINK
are 0.

    python benchmarks/bench_kv_cache.py --threads 2 --contexts 2048 8192 16384 --decode 32 \\
        --config tq3.5/tq3:128 --config q8_0/tq3 --write docs/benchmarks.md
    python benchmarks/bench_kv_cache.py --parts attention --contexts 2048 --threads 1

Set TURBOQUANT_KERNELS=scalar|avx2|avx512 to time one kernel variant.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Cache types stored as plain ggml-style blocks. Every other name is a TurboQuant codec.
BLOCK_TYPES = ("f32", "f16", "q8_0", "q4_0")
DEFAULT_CONFIGS = ["f16", "q8_0", "q4_0", "tq4", "tq3.5", "tq3", "tq2.5", "tq2", "tq3+qjl", "tq4+qjl", "polar"]
ATTENTION_FORMATS = ["f16", "tq4", "tq3.5", "tq3", "tq2.5", "tq2", "tq3+qjl", "tq4+qjl", "polar", "polar+qjl"]
N_HEADS = 4
HEAD_DIM = 256
# Positions allocated past context + decode, so the last decoded token always fits.
CTX_MARGIN = 16
SECTION_NAME = "bench_kv_cache"
SECTION_HEADING = "### Decode speed with each KV cache type"


# ----------------------------------------------------------------------------- helpers


def cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mib():
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def parse_positions(name, value, text):
    """Return the integer of a :RECENT or :SINK field. Raises ValueError unless it is >= 0."""
    try:
        positions = int(value)
    except ValueError:
        raise ValueError(f"invalid {name} {value!r} in configuration {text!r}; expected positions >= 0") from None
    if positions < 0:
        raise ValueError(f"invalid {name} {positions} in configuration {text!r}; expected positions >= 0")
    return positions


def parse_config(text):
    """Parse NAME or KEYS/VALUES, optionally with :RECENT, :SINK and :TYPE, into a dict. Raises
    ValueError for invalid text."""
    from turboquant.model import DEFAULT_KV_RECENT_F16, DEFAULT_KV_RECENT_TYPE, DEFAULT_KV_SINK_F16, KV_RECENT_TYPES

    spec, *fields = text.split(":")
    names = spec.split("/")
    if len(names) == 1:
        names = names * 2
    if len(names) != 2 or not all(names) or len(fields) > 3:
        raise ValueError(f"invalid configuration {text!r}; expected NAME or KEYS/VALUES[:RECENT[:SINK[:TYPE]]], "
                         "e.g. tq3.5/tq3:32:4:q8_0")
    is_codec = any(name not in BLOCK_TYPES for name in names)
    recent = DEFAULT_KV_RECENT_F16 if is_codec else 0
    sink = DEFAULT_KV_SINK_F16 if is_codec else 0
    if len(fields) > 0 and fields[0]:
        recent = parse_positions("RECENT", fields[0], text)
    if len(fields) > 1 and fields[1]:
        sink = parse_positions("SINK", fields[1], text)
    recent_type = DEFAULT_KV_RECENT_TYPE
    if len(fields) > 2 and fields[2]:
        recent_type = fields[2]
        if recent_type not in KV_RECENT_TYPES:
            raise ValueError(f"invalid TYPE {recent_type!r} in configuration {text!r}; expected one of "
                             f"{', '.join(KV_RECENT_TYPES)}")
    return {"cache_type_k": names[0], "cache_type_v": names[1], "kv_recent_f16": recent if is_codec else 0,
            "kv_sink_f16": sink if is_codec else 0, "kv_recent_type": recent_type if is_codec else "f16"}


def config_label(config):
    return f"{config['cache_type_k']}/{config['cache_type_v']}"


def llama_kv_bytes(log_text, n_kv_heads, key_length, value_length, type_k, type_v):
    """Compute the bytes of every KV cache that llama.cpp logged as allocated.

    llama.cpp logs one line per cache, for example
    "llama_kv_cache: size =   3.59 MiB (  2304 cells,   3 layers,  1/1 seqs), K (q8_0): ...".
    Gemma 3 gets one cache for its global layers and one for its sliding-window layers.
    Each cell holds n_kv_heads rows of key_length keys and value_length values, stored in
    blocks whose sizes come from gguf's GGML_QUANT_SIZES. Returns (bytes computed, bytes
    logged, rounded to 0.01 MiB per cache); (None, None) when the log has no such line.
    """
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    def row_bytes(type_id, values):
        block_values, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
        return values // block_values * block_bytes

    per_cell_layer = n_kv_heads * (row_bytes(type_k, key_length) + row_bytes(type_v, value_length))
    pattern = re.compile(r"llama_kv_cache: size =\s*([0-9.]+) MiB \(\s*(\d+) cells,\s*(\d+) layers")
    matches = pattern.findall(log_text)
    if not matches:
        return None, None
    computed = sum(int(cells) * int(layers) * per_cell_layer for _, cells, layers in matches)
    logged = sum(float(mib) for mib, _, _ in matches) * 1024 * 1024
    return computed, logged


def replace_marked_section(text, body):
    """Return text with the marked bench_kv_cache section replaced by body.

    The section runs from its heading through the end marker. Without markers it goes at the
    end of the "## KV cache" section when the file has one, else at the end of the file.
    """
    begin = f"<!-- {SECTION_NAME}: begin (written by benchmarks/bench_kv_cache.py --write) -->"
    end = f"<!-- {SECTION_NAME}: end -->"
    section = f"{SECTION_HEADING}\n\n{begin}\n\n{body.strip()}\n\n{end}\n"
    if not text:
        text = "# Benchmarks\n"

    start = text.find(begin)
    if start >= 0:
        stop = text.find(end, start)
        if stop < 0:
            raise ValueError(f"the file has the marker {begin!r} but not {end!r}; restore the end marker")
        heading_start = text.rfind(SECTION_HEADING, 0, start)
        if heading_start >= 0 and not text[heading_start + len(SECTION_HEADING):start].strip():
            start = heading_start
        stop += len(end)
        if text[stop:stop + 1] == "\n":
            stop += 1
        return text[:start] + section + text[stop:]

    kv_start = text.find("\n## KV cache\n")
    if kv_start >= 0:
        next_section = text.find("\n## ", kv_start + 1)
        if next_section >= 0:
            return text[:next_section].rstrip("\n") + "\n\n" + section + text[next_section:]
    return text.rstrip("\n") + "\n\n" + section


def write_section(path, body):
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    text = replace_marked_section(text, body)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# ----------------------------------------------------------------------------- decode workers


def decode_turboquant(job, tokens):
    from turboquant import _core

    config = job["config"]
    model = _core.Model(
        job["model"], threads=job["threads"], ctx=job["context"] + job["decode"] + CTX_MARGIN,
        cache_type_k=config["cache_type_k"], cache_type_v=config["cache_type_v"],
        kv_recent_f16=config["kv_recent_f16"], kv_sink_f16=config["kv_sink_f16"],
        kv_recent_q8_0=config.get("kv_recent_type") == "q8_0",
    )
    model.eval(tokens[:8], logits="last")  # warm-up: page in the weights
    model.reset()

    start = time.perf_counter()
    logits = model.eval(tokens[:job["context"]], logits="last")
    prefill = time.perf_counter() - start

    start = time.perf_counter()
    for _ in range(job["decode"]):
        logits = model.eval([int(np.argmax(logits))], logits="last")
    decode = time.perf_counter() - start
    return {
        "prefill_s": prefill,
        "decode_s": decode,
        "kv_bytes_per_token": model.kv_bytes_per_token(),
        "kv_cache_bytes": model.kv_cache_bytes(),
    }


def decode_llama_cpp(job, tokens):
    import llama_cpp

    config = job["config"]
    type_ids = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}
    type_k, type_v = type_ids[config["cache_type_k"]], type_ids[config["cache_type_v"]]
    # verbose=True sends llama.cpp's log to stderr, where the driver reads the KV cache sizes.
    llm = llama_cpp.Llama(
        model_path=job["model"],
        n_ctx=job["context"] + job["decode"] + CTX_MARGIN,
        n_threads=job["threads"],
        n_threads_batch=job["threads"],
        type_k=type_k,
        type_v=type_v,
        flash_attn=config["flash_attn"],
        swa_full=job["llama_swa_full"],
        logits_all=False,
        verbose=True,
    )
    n_vocab = llm.n_vocab()

    def last_logits():
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    llm.eval(tokens[:8])  # warm-up: page in the weights
    llm.reset()

    start = time.perf_counter()
    llm.eval(tokens[:job["context"]])
    logits = last_logits()
    prefill = time.perf_counter() - start

    start = time.perf_counter()
    for _ in range(job["decode"]):
        llm.eval([int(np.argmax(logits))])
        logits = last_logits()
    decode = time.perf_counter() - start

    arch = llm.metadata["general.architecture"]
    n_layers = int(llm.metadata[f"{arch}.block_count"])
    n_kv_heads = int(llm.metadata[f"{arch}.attention.head_count_kv"])
    key_length = int(llm.metadata[f"{arch}.attention.key_length"])
    value_length = int(llm.metadata[f"{arch}.attention.value_length"])
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    per_token = 0
    for type_id, length in ((type_k, key_length), (type_v, value_length)):
        block_values, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
        per_token += n_layers * n_kv_heads * length // block_values * block_bytes
    return {
        "prefill_s": prefill,
        "decode_s": decode,
        "kv_bytes_per_token": per_token,
        "n_ctx": llm.n_ctx(),
        "kv_shape": [n_kv_heads, key_length, value_length, type_k, type_v],
    }


# ----------------------------------------------------------------------------- attention worker


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


def time_attention(job):
    """Time kv_attention for each format and context, and return one dict per row."""
    from turboquant import _core

    rng = np.random.default_rng(0)
    scale = 1.0 / 16.0
    rows = []
    for n in job["contexts"]:
        k = rng.standard_normal((n, HEAD_DIM)).astype(np.float32)
        v = rng.standard_normal((n, HEAD_DIM)).astype(np.float32)
        q = rng.standard_normal((N_HEADS, HEAD_DIM)).astype(np.float32)

        for name in job["formats"]:
            codec = _core.KVCodec(name, HEAD_DIM, seed=1)
            keys, values = codec.encode(k), codec.encode(v)
            hot = best_time(lambda: _core.kv_attention(q, keys, values, codec, codec, scale), job["min_seconds"])
            copies = [(keys.copy(), values.copy()) for _ in range(job["layers"])]

            def decode_step():
                for layer_keys, layer_values in copies:
                    _core.kv_attention(q, layer_keys, layer_values, codec, codec, scale)

            cold = best_time(decode_step, job["min_seconds"]) / job["layers"]
            copies.clear()
            rows.append({"positions": n, "format": name, "bits": codec.bits_per_value, "hot_s": hot,
                         "cold_s": cold, "bytes": keys.nbytes + values.nbytes})

        k16, v16 = k.astype(np.float16), v.astype(np.float16)
        numpy_s = best_time(lambda: numpy_f16_attention(q, k16, v16, scale), job["min_seconds"])
        rows.append({"positions": n, "format": "numpy f16", "bits": 16.0, "hot_s": numpy_s, "cold_s": None,
                     "bytes": k16.nbytes + v16.nbytes})
    return rows


def worker(job_text):
    job = json.loads(job_text)
    if job["kind"] == "attention":
        result = {"rows": time_attention(job)}
    else:
        with open(job["tokens_file"], encoding="utf-8") as f:
            tokens = json.load(f)
        runner = decode_turboquant if job["kind"] == "turboquant" else decode_llama_cpp
        result = runner(job, tokens)
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))


# ----------------------------------------------------------------------------- driver


def spawn(job, threads):
    """Run one job in a fresh worker process, and return its result and its stderr."""
    command = [sys.executable, os.path.abspath(__file__), "--worker-job", json.dumps(job)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        tail = "\n".join(completed.stderr.strip().splitlines()[-20:])
        raise RuntimeError(f"{job['kind']} worker failed with exit status {completed.returncode}:\n{tail}")
    return json.loads(completed.stdout.strip().splitlines()[-1]), completed.stderr


def run_decode_row(kind, config, context, args, tokens_file):
    job = {"kind": kind, "config": config, "context": context, "decode": args.decode, "threads": args.threads,
           "model": args.model, "tokens_file": tokens_file, "llama_swa_full": args.llama_swa_full}
    result, log = spawn(job, args.threads)
    row = {
        "context": context,
        "engine": "turboquant" if kind == "turboquant" else "llama.cpp",
        "label": config_label(config),
        "recent": recent_label(config),
        "sink": config.get("kv_sink_f16", 0),
        "flash_attn": config.get("flash_attn"),
        "prefill": context / result["prefill_s"],
        "decode": args.decode / result["decode_s"],
        "per_token": result["kv_bytes_per_token"],
        "rss": result["peak_rss_mib"],
    }
    if kind == "turboquant":
        row["cache_bytes"] = result["kv_cache_bytes"]
    else:
        computed, logged = llama_kv_bytes(log, *result["kv_shape"])
        row["cache_bytes"] = computed
        # The log rounds each of Gemma 3's two caches to 0.01 MiB, so the sum is off by at most
        # 0.01 MiB. A larger gap means the size formula no longer matches llama.cpp.
        if computed is not None and abs(computed - logged) > 0.01 * 2**20:
            print(f"warning: computed llama.cpp KV bytes {computed} differ from its log ({logged:.0f})",
                  file=sys.stderr)
    return row


def recent_label(config):
    """Return the recent window of a configuration in positions, with its row type when not f16: "128 q8_0"."""
    recent = config.get("kv_recent_f16", 0)
    recent_type = config.get("kv_recent_type", "f16")
    return f"{recent} {recent_type}" if recent and recent_type != "f16" else str(recent)


def format_ratio(numerator, denominator):
    if numerator is None or not denominator:
        return ""
    return f"{numerator / denominator:.2f}"


def format_decode_table(rows, contexts):
    lines = [
        "| context | engine | keys/values | recent | sink f16 | prefill tok/s | decode tok/s | vs f16 "
        "| vs llama.cpp f16 | KV bytes/token | token f16/row | KV MiB | total f16/row | peak RSS MiB |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for context in contexts:
        block = [r for r in rows if r["context"] == context]
        ours_f16 = next((r for r in block if r["engine"] == "turboquant" and r["label"] == "f16/f16"), None)
        llama_f16 = next((r for r in block if r["engine"] == "llama.cpp" and r["label"] == "f16/f16"), None)
        for r in block:
            engine = r["engine"] + (" (flash attn)" if r["flash_attn"] else "")
            cache_mib = f"{r['cache_bytes'] / 2**20:.2f}" if r["cache_bytes"] is not None else "n/a"
            lines.append(
                f"| {context} | {engine} | {r['label']} | {r['recent']} | {r['sink']} | {r['prefill']:.1f} "
                f"| {r['decode']:.1f} "
                f"| {format_ratio(r['decode'], ours_f16 and ours_f16['decode'])} "
                f"| {format_ratio(r['decode'], llama_f16 and llama_f16['decode'])} "
                f"| {r['per_token']} | {format_ratio(ours_f16 and ours_f16['per_token'], r['per_token'])} "
                f"| {cache_mib} | {format_ratio(ours_f16 and ours_f16['cache_bytes'], r['cache_bytes'])} "
                f"| {r['rss']:.0f} |"
            )
    return "\n".join(lines)


def format_targets(rows, contexts):
    """List, for each compressed turboquant configuration, the targets it meets at 8192 positions and beyond."""
    long_contexts = [c for c in contexts if c >= 8192]
    if not long_contexts:
        return "Targets are checked at contexts of 8192 and more; this run has none."
    lines = ["Targets at contexts of 8192 and more (decode at least as fast as our f16 cache and as the faster "
             "llama.cpp row, KV bytes per token and the whole cache at least 4x below our f16 cache):", ""]
    keys = []
    for r in rows:
        key = (r["label"], r["recent"], r["sink"])
        if r["engine"] == "turboquant" and r["label"] != "f16/f16" and key not in keys:
            keys.append(key)
    for key in keys:
        label, recent, sink = key
        checks = []
        for context in long_contexts:
            block = [r for r in rows if r["context"] == context]
            row = next((r for r in block if r["engine"] == "turboquant" and (r["label"], r["recent"], r["sink"]) == key),
                       None)
            ours_f16 = next((r for r in block if r["engine"] == "turboquant" and r["label"] == "f16/f16"), None)
            llama = [r["decode"] for r in block if r["engine"] == "llama.cpp"]
            if row is None or ours_f16 is None:
                continue
            verdict = [f"vs f16 {'met' if row['decode'] >= ours_f16['decode'] else 'missed'}"]
            if llama:
                verdict.append(f"vs llama.cpp {'met' if row['decode'] >= max(llama) else 'missed'}")
            if row["cache_bytes"] and ours_f16["cache_bytes"]:
                whole = ours_f16["cache_bytes"] / row["cache_bytes"]
                verdict.append(f"whole cache {whole:.2f}x smaller {'met' if whole >= 4 else 'missed'}")
            checks.append(f"{context}: " + ", ".join(verdict))
        if not checks:
            continue
        f16_row = next(r for r in rows if r["engine"] == "turboquant" and r["label"] == "f16/f16")
        row_per_token = next(r["per_token"] for r in rows
                             if r["engine"] == "turboquant" and (r["label"], r["recent"], r["sink"]) == key)
        ratio = f16_row["per_token"] / row_per_token
        lines.append(f"- {label} (recent {recent}, sink f16 {sink}): " + "; ".join(checks)
                     + f"; KV {ratio:.2f}x smaller {'met' if ratio >= 4 else 'missed'}")
    return "\n".join(lines)


def format_attention_table(rows):
    lines = ["| positions | format | bits/value | hot ms | vs f16 | cold ms | vs f16 | K+V bytes |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    baseline = {}
    for r in rows:
        if r["format"] == "f16":
            baseline[r["positions"]] = r
        base = baseline.get(r["positions"])
        cold = f"{1e3 * r['cold_s']:.3f}" if r["cold_s"] is not None else ""
        cold_ratio = format_ratio(base and base["cold_s"], r["cold_s"]) if r["cold_s"] is not None else ""
        lines.append(
            f"| {r['positions']} | {r['format']} | {r['bits']:.3f} | {1e3 * r['hot_s']:.3f} "
            f"| {format_ratio(base and base['hot_s'], r['hot_s'])} | {cold} | {cold_ratio} | {r['bytes']} |"
        )
    return "\n".join(lines)


def load_tokens(model_path, n_tokens):
    from turboquant.datasets import english_text
    from turboquant.model import Model

    # Token ids come from turboquant's tokenizer, so both engines see exactly the same ids.
    tokenizer_model = Model.load(model_path, ctx=64)
    tokens = tokenizer_model.tokenize(english_text("alice29"), add_bos=True, special=False)
    if len(tokens) < n_tokens:
        raise SystemExit(f"the benchmark text has {len(tokens)} tokens, fewer than the longest context {n_tokens}; "
                         "pass shorter --contexts")
    return tokens[:n_tokens]


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="GGUF file (default: the turboquant default model, Gemma 3 270M Q4_K_M)")
    parser.add_argument("--parts", nargs="+", choices=["decode", "attention"], default=["decode", "attention"],
                        help="parts to run (default: both)")
    parser.add_argument("--threads", type=int, default=2, help="OpenMP and llama.cpp threads per worker (default: 2)")
    parser.add_argument("--contexts", "--lengths", dest="contexts", type=int, nargs="+", default=[2048, 8192, 16384],
                        help="context lengths in tokens (positions in the cache); default: 2048 8192 16384")
    parser.add_argument("--decode", type=int, default=32, help="greedy tokens decoded after each prefill (default: 32)")
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                        help="turboquant configurations NAME or KEYS/VALUES[:RECENT[:SINK[:TYPE]]] (default: f16, "
                             "q8_0, q4_0 and every codec)")
    parser.add_argument("--config", action="append", default=[], metavar="KEYS/VALUES[:RECENT[:SINK[:TYPE]]]",
                        help="add one turboquant configuration, e.g. tq3.5/tq3:32:4 or q8_0/tq3; repeatable")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every decode row this many times, interleaved, and report medians (default: 1)")
    parser.add_argument("--llama-configs", nargs="*", default=["f16", "q8_0"], choices=["f16", "q8_0", "q4_0"],
                        help="llama.cpp cache types, keys and values alike (default: f16 q8_0; none to skip)")
    parser.add_argument("--llama-flash-attn", action="store_true",
                        help="turn flash attention on for llama.cpp f16 rows too (always on for quantized caches)")
    parser.add_argument("--llama-swa-full", action="store_true",
                        help="give llama.cpp's sliding-window layers a full-size cache (library default of "
                             "llama_context_default_params); off by default as in llama-cli and llama-server")
    parser.add_argument("--formats", nargs="+", default=ATTENTION_FORMATS, help="KVCodec formats of the attention part")
    parser.add_argument("--min-seconds", type=float, default=0.3, help="minimum time per attention measurement, seconds")
    parser.add_argument("--layers", type=int, default=18, help="layer copies visited in turn for the cold attention timing")
    parser.add_argument("--write", metavar="MARKDOWN", help="replace the marked bench_kv_cache section of this file")
    parser.add_argument("--worker-job", help=argparse.SUPPRESS)
    return parser


def run_decode_part(args, configs, llama_configs):
    """Run one worker per context and configuration, and return the decode rows in table order."""
    tokens = load_tokens(args.model, max(args.contexts))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(tokens, f)
        tokens_file = f.name
    rows = []
    try:
        for context in args.contexts:
            jobs = [("turboquant", c) for c in configs] + [("llama.cpp", c) for c in llama_configs]
            # Rounds run every job once in turn, so that a slow minute of the machine hits every
            # row alike. Each row then reports its median over the rounds.
            runs = [[] for _ in jobs]
            for round_index in range(args.rounds):
                for j, (kind, config) in enumerate(jobs):
                    print(f"context {context}, round {round_index + 1}: {kind} {config_label(config)}...",
                          file=sys.stderr)
                    runs[j].append(run_decode_row(kind, config, context, args, tokens_file))
            rows.extend(median_row(r) for r in runs)
    finally:
        os.unlink(tokens_file)
    return rows


def median_row(runs):
    """Return the first run of a row with its prefill and decode speeds replaced by their medians."""
    row = dict(runs[0])
    for key in ("prefill", "decode"):
        row[key] = float(statistics.median(r[key] for r in runs))
    return row


def run_attention_part(args):
    """Time attention alone in one worker, and return its rows and its peak RSS in MiB."""
    print("attention part...", file=sys.stderr)
    job = {"kind": "attention", "contexts": args.contexts, "formats": args.formats,
           "min_seconds": args.min_seconds, "layers": args.layers}
    result, _ = spawn(job, args.threads)
    return result["rows"], result["peak_rss_mib"]


def describe_decode(args, have_llama):
    text = (
        f"Decode: prefill of `context` tokens in one call, then {args.decode} greedy tokens one call each, "
        "in a fresh worker process per row. "
        f"Each row ran {args.rounds} time(s), the rows of a context in turn, "
        "and shows its median prefill and decode speeds. \"vs f16\" and \"vs llama.cpp f16\" divide the row's decode speed "
        "by that row's at the same context (above 1 is faster). \"token f16/row\" and \"total f16/row\" divide "
        "our f16 cache's bytes by the row's (above 1 is smaller). turboquant KV bytes are kv_bytes_per_token() "
        "and kv_cache_bytes() after the run. kv_cache_bytes() counts the positions held and, for codec types, "
        "a ring of \"recent\" positions plus one 32-position attention group per layer (f16 rows, or q8_0 "
        "rows where the column says q8_0), and f16 copies of the first \"sink f16\" positions."
    )
    if not have_llama:
        return text
    if args.llama_swa_full:
        swa = "llama.cpp ran with swa_full=True, so its sliding-window layers hold n_ctx cells too."
    else:
        swa = ("llama.cpp ran with swa_full=False, the default of llama-cli and llama-server, so its "
               "sliding-window layers hold the window plus one 512-token micro-batch, padded to 256 cells.")
    return text + (
        " llama.cpp KV bytes/token is layers x KV heads x (key length x K type size + value length x V type "
        "size), with type sizes from gguf's GGML_QUANT_SIZES. Its KV MiB applies the same sizes to the cells "
        "and layers that llama.cpp logs for the caches it allocates at start, with n_ctx padded to 256 cells. "
        f"{swa} llama.cpp needs flash attention for a quantized V cache, so its q8_0 and q4_0 rows run with "
        "flash_attn=True. Rows marked \"(flash attn)\" have it on."
    )


def describe_attention(args, peak_rss):
    return (
        f"Attention alone, one layer (4 query heads, 1 KV head, head_dim {HEAD_DIM}): one decode step of "
        f"`_core.kv_attention` on random rows. \"hot\" repeats one layer, \"cold\" visits {args.layers} copies "
        "in turn, and \"vs f16\" is the f16 time divided by the row's time (above 1 is faster). The numpy f16 "
        f"row is a NumPy float16 attention for scale. Worker peak RSS {peak_rss:.0f} MiB."
    )


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.worker_job:
        worker(args.worker_job)
        return 0

    if args.threads < 1 or args.decode < 1 or min(args.contexts) < 16 or args.layers < 1:
        parser.error("--threads, --decode and --layers must be >= 1 and every --contexts value >= 16")
    from turboquant import _core

    try:
        configs = [parse_config(text) for text in args.configs + args.config]
        for name in {c[side] for c in configs for side in ("cache_type_k", "cache_type_v")} - set(BLOCK_TYPES):
            try:
                _core.KVCodec(name, HEAD_DIM)
            except ValueError as exc:
                raise ValueError(f"{exc}, and the block types {', '.join(BLOCK_TYPES)}") from None
    except ValueError as exc:
        parser.error(str(exc))
    if "f16/f16" not in [config_label(c) for c in configs]:
        # Every ratio is taken against our f16 cache measured in the same run.
        configs.insert(0, parse_config("f16"))
    llama_configs = [{"cache_type_k": name, "cache_type_v": name, "flash_attn": name != "f16" or args.llama_flash_attn}
                     for name in args.llama_configs]
    if "f16" not in args.formats:
        args.formats = ["f16"] + args.formats

    if args.model is None:
        from turboquant.model import default_model_path

        args.model = default_model_path()
    llama_version = None
    if "decode" in args.parts and llama_configs:
        try:
            import llama_cpp

            llama_version = llama_cpp.__version__
        except ImportError as exc:
            llama_configs = []
            print(f"llama_cpp is not importable ({exc}); measuring turboquant only. "
                  "Install it with: pip install llama-cpp-python", file=sys.stderr)

    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    decode_rows = run_decode_part(args, configs, llama_configs) if "decode" in args.parts else []
    attention_rows, attention_rss = run_attention_part(args) if "attention" in args.parts else ([], None)
    load_after = os.getloadavg()

    command = "python benchmarks/bench_kv_cache.py " + " ".join(argv if argv is not None else sys.argv[1:])
    parts = [
        f"Command: `{command.strip()}`",
        "",
        f"CPU: {cpu_name()}, {os.cpu_count()} logical cores, {args.threads} threads per worker, "
        f"turboquant kernels {_core.build_info()['kernels']}; Python {platform.python_version()}; "
        f"llama-cpp-python {llama_version or 'not run'}; model {os.path.basename(args.model)}; "
        f"started {started:%Y-%m-%d %H:%M} UTC.",
        "",
        f"Load average (1, 5, 15 minutes) at start: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
        f"at end: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}. A load above the core count means "
        "other processes shared the CPU, which makes the speeds noisy.",
    ]
    if decode_rows:
        parts += ["", describe_decode(args, bool(llama_configs)), "", format_decode_table(decode_rows, args.contexts), "",
                  format_targets(decode_rows, args.contexts)]
    if attention_rows:
        parts += ["", describe_attention(args, attention_rss), "", format_attention_table(attention_rows)]
    body = "\n".join(parts)
    print(body)
    if args.write:
        write_section(args.write, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
