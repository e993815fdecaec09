"""Perplexity and KL divergence of KV cache types against an f16 cache, on English text.

Windows follow `turboquant perplexity` (turboquant/perplexity.py, after llama.cpp): windows of
ctx tokens starting with BOS, an empty cache per window, and the second half scored. Unlike
the CLI, which reruns the f16 reference next to every model, this script runs the reference
and every configuration side by side over the same windows, so the reference is evaluated
once for all of them.

    OMP_NUM_THREADS=2 python benchmarks/kv_cache_quality.py --ctx 2048 --windows 1 \\
        --config f16/f16 --config tq3.5/tq2.5 --config tq4/tq3:128:0,-1

A configuration is KEYS/VALUES[:RECENT_F16[:F16_LAYERS[:FLAG...]]], for example tq3/tq3:128:0,-1
keeps the newest 128 positions and layers 0 and 17 in f16. Flags after them: "raw" turns key
balancing off (Model.load(kv_balance_keys=False)), "plainnorm" stores the plain norms of the
MSE types (Model.load(kv_norm_correction=False)), "sinkN" keeps the first N positions in f16
(Model.load(kv_sink_f16=N)), "q8recent" keeps the recent window in q8_0 rows instead of f16
(Model.load(kv_recent_type="q8_0")); for example tq2.5/tq2.5:128::sink4:q8recent. Without that
flag the window is f16, as in the runs recorded before Model.load's default became q8_0.
"""

import argparse
import math
import time

import numpy as np

from turboquant.datasets import english_text_path
from turboquant.model import Model
from turboquant.perplexity import perplexity_windows

ROWS_PER_CALL = 32
# Cache types whose norms kv_norm_correction changes.
MSE_TYPES = ("tq4", "tq3.5", "tq3", "tq2.5", "tq2")


def parse_config(text):
    parts = text.split(":")
    names = parts[0].split("/")
    if len(names) != 2 or not all(names):
        raise SystemExit(f"invalid configuration {text!r}; expected KEYS/VALUES[:RECENT_F16[:F16_LAYERS[:FLAG...]]], "
                         "e.g. tq4/tq3:128::sink4")
    keys, values = names
    recent = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    layers = tuple(int(x) for x in parts[2].split(",")) if len(parts) > 2 and parts[2] else ()
    balance = True
    norm_correction = True
    sink = 0
    recent_type = "f16"
    for flag in parts[3:]:
        if flag == "raw":
            balance = False
        elif flag == "plainnorm":
            norm_correction = False
        elif flag.startswith("sink") and flag[4:].isdigit():
            sink = int(flag[4:])
        elif flag == "q8recent":
            recent_type = "q8_0"
        else:
            raise SystemExit(f"invalid flag {flag!r} in configuration {text!r}; expected raw, plainnorm, sinkN or "
                             "q8recent, e.g. sink4")
    return {"text": text, "cache_type_k": keys, "cache_type_v": values, "kv_recent_f16": recent,
            "kv_f16_layers": layers, "kv_balance_keys": balance, "kv_sink_f16": sink,
            "kv_norm_correction": norm_correction, "kv_recent_type": recent_type}


def log_softmax(logits):
    # float32 keeps log-probabilities within about 1e-5 of float64 for logits below 100,
    # far below the KL divergences reported, at half the time of float64.
    x = logits - logits.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True, dtype=np.float64)).astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctx", type=int, default=2048, help="window length in tokens")
    parser.add_argument("--windows", type=int, default=1, help="number of windows to score")
    parser.add_argument("--text", default="alice29", help="name of the English text (turboquant.datasets)")
    parser.add_argument("--config", action="append", required=True,
                        help="KEYS/VALUES[:RECENT_F16[:F16_LAYERS[:FLAG...]]] with flags raw, plainnorm, sinkN, "
                             "q8recent")
    parser.add_argument("--threads", type=int, default=0, help="OpenMP threads (0: default)")
    args = parser.parse_args(argv)

    configs = [parse_config(text) for text in args.config]
    path = str(english_text_path(args.text))
    # The reference names its cache types: Model.load's default is a compressed cache.
    reference = Model.load(threads=args.threads or None, ctx=args.ctx, cache_type_k="f16", cache_type_v="f16")
    models = [Model.load(threads=args.threads or None, ctx=args.ctx, cache_type_k=c["cache_type_k"],
                         cache_type_v=c["cache_type_v"], kv_recent_f16=c["kv_recent_f16"],
                         kv_f16_layers=c["kv_f16_layers"], kv_balance_keys=c["kv_balance_keys"],
                         kv_sink_f16=c["kv_sink_f16"], kv_norm_correction=c["kv_norm_correction"],
                         kv_recent_type=c["kv_recent_type"])
              for c in configs]
    with open(path, encoding="utf-8") as f:
        tokens = reference.tokenize(f.read(), add_bos=False, special=False)
    windows = perplexity_windows(tokens, args.ctx, int(reference.tokenizer.bos_id))[: args.windows]

    reference_nll = []
    nll = [[] for _ in configs]
    kl = [[] for _ in configs]
    top1 = [[] for _ in configs]
    start_time = time.time()
    first = args.ctx // 2
    for window in windows:
        everyone = [reference] + models
        for model in everyone:
            model._core.reset()
            model._core.eval(np.asarray(window[:first], dtype=np.int32), logits="none")
        for start in range(first, args.ctx - 1, ROWS_PER_CALL):
            stop = min(start + ROWS_PER_CALL, args.ctx - 1)
            chunk = np.asarray(window[start:stop], dtype=np.int32)
            targets = np.asarray(window[start + 1 : stop + 1])
            rows = np.arange(len(chunk))
            ref = log_softmax(np.asarray(reference._core.eval(chunk, logits="all")).reshape(len(chunk), -1))
            reference_nll.extend(-ref[rows, targets])
            p = np.exp(ref)
            for i, model in enumerate(models):
                own = log_softmax(np.asarray(model._core.eval(chunk, logits="all")).reshape(len(chunk), -1))
                nll[i].extend(-own[rows, targets])
                kl[i].extend(np.sum(p * (ref - own), axis=1))
                top1[i].extend(ref.argmax(axis=1) == own.argmax(axis=1))

    base = math.exp(np.mean(reference_nll))
    print(f"text {args.text}, ctx {args.ctx}, {len(windows)} window(s), {len(reference_nll)} scored tokens, "
          f"{time.time() - start_time:.0f} s")
    print(f"{'keys/values':>12} {'recent':>10} {'sink f16':>8} {'f16 layers':>10} {'bits/value':>10} "
          f"{'norms':>9} {'memory':>7} {'perplexity':>10} {'vs f16':>8} {'KL':>8} {'top-1':>7}")
    print(f"{'f16/f16':>12} {0:>10} {0:>8} {'-':>10} {16.0:>10.3f} {'-':>9} {1.0:>7.3f} {base:>10.4f} {'':>8} "
          f"{'':>8} {'':>7}")
    for i, (config, model) in enumerate(zip(configs, models)):
        ppl = math.exp(np.mean(nll[i]))
        # bits/value: stored bits per cached value of one position (codes and norms, f16 layers
        # included). memory: bytes held after the window, f16 ring included, relative to f16.
        bits = 16.0 * model.kv_bytes_per_token() / reference.kv_bytes_per_token()
        memory = model.kv_cache_bytes() / reference.kv_cache_bytes()
        layers = ",".join(str(x) for x in config["kv_f16_layers"]) or "-"
        # norms: how the MSE types (tq4 .. tq2) store row norms; "-" when neither side is one.
        norms = "-"
        if any(config[side] in MSE_TYPES for side in ("cache_type_k", "cache_type_v")):
            norms = "corrected" if config["kv_norm_correction"] else "plain"
        # recent: the window in positions, and its row type when it is not f16 ("128q8_0").
        recent = str(config["kv_recent_f16"])
        if config["kv_recent_f16"] and config["kv_recent_type"] != "f16":
            recent += config["kv_recent_type"]
        print(f"{config['cache_type_k'] + '/' + config['cache_type_v']:>12} {recent:>10} "
              f"{config['kv_sink_f16']:>8} {layers:>10} {bits:>10.3f} {norms:>9} {memory:>7.3f} {ppl:>10.4f} "
              f"{100 * (ppl / base - 1):>+7.2f}% {np.mean(kl[i]):>8.4f} {100 * np.mean(top1[i]):>6.1f}%")


if __name__ == "__main__":
    main()
