#!/usr/bin/env python3
"""Measure the per-head top-1 accuracy of Medusa heads on held-out text and print it as JSON.

The sources are Alice's Adventures in Wonderland (``turboquant.datasets.english_text``) and
the articles of each --zim file given. Head k is right at position t when its argmax equals the
base model's argmax at t + 1 + k. Examples:

    python scripts/evaluate_mtp.py --heads zeros --zim nomicon.zim
    python scripts/evaluate_mtp.py --heads turboquant/data/mtp/gemma-3-270m-q4_k_m.safetensors --zim nomicon.zim
"""

import argparse
import json
import sys
import time

import turboquant
from turboquant.datasets import english_text
from turboquant.mtp import MTPHeads
from turboquant.train import evaluate_mtp


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", required=True,
                        help="checkpoint file or directory, or 'zeros' for untrained heads")
    parser.add_argument("--zim", action="append", default=[], metavar="FILE", help="held-out ZIM file (repeatable)")
    parser.add_argument("--model", metavar="PATH", help="GGUF file (default: Gemma 3 270M Q4_K_M)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence, BOS included (default: 128)")
    parser.add_argument("--max-tokens", type=int, default=2048, help="tokens per source (default: 2048)")
    parser.add_argument("--threads", type=int, help="OpenMP threads (default: all)")
    args = parser.parse_args(argv)

    model = turboquant.Model.load(args.model, ctx=args.seq_len, threads=args.threads, cache_type_k="f16",
                                  cache_type_v="f16")
    heads = MTPHeads.zeros(model) if args.heads == "zeros" else MTPHeads.load(args.heads, model)
    results = {"heads": args.heads, "step": heads.step}
    sources = [("alice29", english_text("alice29"))] + [(path, path) for path in args.zim]
    for name, source in sources:
        started = time.monotonic()
        result = evaluate_mtp(model, heads, source, seq_len=args.seq_len, max_tokens=args.max_tokens,
                              threads=args.threads)
        result["seconds"] = round(time.monotonic() - started, 1)
        results[name] = result
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
