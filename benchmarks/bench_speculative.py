"""Decode speed with and without tree speculative decoding, on the default model.

Steps:
1. Calibrate: plain greedy continuations of the prompts, then for every position the heads'
   top-k candidates from the hidden state there, compared with the tokens 2, 3 and 4 ahead.
   This gives accuracy[head][rank], the chance that a head's rank-r candidate is the token
   the base model chose (as Medusa measures it to shape its trees).
2. For each tree (chains of 1-3 candidates and trees built from the accuracies with
   ``DraftTree.from_accuracy``), generate the same continuations greedily and at
   temperature 0.7 (seeded), with and without speculation, in this process. Report decode
   tokens per second, accepted tokens per tree pass and the ratio to plain decoding, and
   check that greedy output is the same text.

Usage:
    python benchmarks/bench_speculative.py [--tokens 128] [--threads 2] [--mtp-checkpoint PATH]
        [--nodes 4,6,8,12,16] [--cache f16|default] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench_generate import cpu_name  # noqa: E402  (this directory is on sys.path)
from turboquant import Model, _core  # noqa: E402
from turboquant.speculative import DEFAULT_TREE, DraftTree  # noqa: E402

PROMPTS = [
    "The three laws of thermodynamics are",
    "Once upon a time, in a small village by the sea,",
    "The history of the Roman Empire begins",
    "Photosynthesis is the process by which",
    "To install the package on Linux, first",
    "The best way to learn a new language is",
    "In 1969, the Apollo 11 mission",
    "Machine learning models are trained by",
]


def calibrate(model: Model, heads, tokens: int, ranks: int) -> np.ndarray:
    """accuracy[k][r]: how often head k's rank-r candidate is the plain greedy token k + 2 ahead."""
    n_heads = heads.weight.shape[0]
    d = heads.weight.shape[-1]
    weight = np.ascontiguousarray(heads.weight.reshape(-1, d), dtype=np.float32)
    bias = np.ascontiguousarray(heads.bias, dtype=np.float32)
    hits = np.zeros((n_heads, ranks))
    trials = np.zeros(n_heads)
    core = model._core
    vocab = heads.draft_vocab(core) if getattr(heads, "vocab", None) is not None else None
    for prompt in PROMPTS:
        model.reset()
        text = model.generate(prompt, max_tokens=tokens)
        ids = model.tokenize(prompt) + model.tokenize(text, add_bos=False)
        core.reset()
        core.eval(ids[: len(model.tokenize(prompt)) - 1], logits="none")
        start = core.n_past
        for t in range(start, len(ids)):
            _, hidden = core.eval_tree([ids[t]], [-1], hidden=True)
            core.accept_path([0])
            candidates, _ = core.heads_topk(weight, bias, hidden[0], ranks, vocab=vocab)
            for k in range(n_heads):
                if t + 2 + k < len(ids):
                    trials[k] += 1
                    match = np.nonzero(candidates[k] == ids[t + 2 + k])[0]
                    if match.size:
                        hits[k, match[0]] += 1
    model.reset()
    return hits / np.maximum(trials, 1)[:, None]


def pass_costs(model: Model, heads, trees, repeats: int = 15):
    """Median seconds of one decode step, of heads_topk, and of one eval_tree per tree."""
    core = model._core
    model.reset()
    ids = model.tokenize("The history of science is long and full of surprises. " * 30)[:300]
    core.eval(ids, logits="none")
    base = core.n_past
    d = heads.weight.shape[-1]
    weight = np.ascontiguousarray(heads.weight.reshape(-1, d), dtype=np.float32)
    bias = np.ascontiguousarray(heads.bias, dtype=np.float32)
    hidden = np.zeros(d, np.float32)
    vocab = heads.draft_vocab(core) if getattr(heads, "vocab", None) is not None else None

    def median(call):
        times = []
        for _ in range(repeats):
            core.truncate(base)
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    decode = median(lambda: core.eval([1234], logits="last"))
    drafting = median(lambda: core.heads_topk(weight, bias, hidden, 4, vocab=vocab))
    trees_seconds = [median(lambda t=tree: core.eval_tree([1234] * t.n_nodes, t.parents)) for _, tree in trees]
    model.reset()
    return decode, drafting, trees_seconds


def run(model: Model, tokens: int, temperature: float, tree, heads):
    """Total completion tokens, decode seconds, tree passes and texts over the prompts."""
    total = passes = 0
    seconds = 0.0
    texts = []
    for i, prompt in enumerate(PROMPTS):
        model.reset()
        kwargs = dict(max_tokens=tokens, temperature=temperature, seed=1000 + i)
        if tree is not None:
            kwargs.update(speculative=True, mtp_checkpoint=heads, draft_tree=tree)
        texts.append(model.generate(prompt, **kwargs))
        total += model.last_stats.completion_tokens
        seconds += model.last_stats.decode_seconds
        passes += model.last_stats.tree_passes
    return total, seconds, passes, texts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128, help="tokens generated per prompt (default: 128)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mtp-checkpoint", help="heads to draft with (default: the shipped ones)")
    parser.add_argument("--nodes", default="4,6,8,12,16", help="sizes of the accuracy-shaped trees")
    parser.add_argument("--cache", choices=["default", "f16"], default="default",
                        help="KV cache: the default (tq3.5 keys, tq2.5 values, 128 recent positions in q8_0 rows, "
                             "4 sink positions in f16) or f16")
    parser.add_argument("--temperatures", default="0,0.7")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of every tree per temperature; the tables show medians (default: 3)")
    args = parser.parse_args(argv)

    cache = {} if args.cache == "default" else dict(cache_type_k="f16", cache_type_v="f16")
    model = Model.load(threads=args.threads, **cache)
    heads = model._mtp_heads(args.mtp_checkpoint)
    accuracy = calibrate(model, heads, min(args.tokens, 64), ranks=4)
    print("head accuracy by candidate rank (greedy continuations of the prompts):")
    for k, row in enumerate(accuracy):
        print(f"  head {k}: " + "  ".join(f"rank {r} {p:.3f}" for r, p in enumerate(row)))

    trees = [("chain 1", DraftTree.chain(1)), ("chain 2", DraftTree.chain(2)), ("chain 3", DraftTree.chain(3)),
             ("default", DEFAULT_TREE)]
    for n in (int(x) for x in args.nodes.split(",")):
        trees.append((f"measured {n}", DraftTree.from_accuracy(accuracy, n)))

    decode, drafting, trees_seconds = pass_costs(model, heads, trees)
    print()
    scored = len(heads.vocab) if getattr(heads, "vocab", None) is not None else model.config["vocab"]
    print(f"One decode step at 300 positions: {decode * 1e3:.2f} ms; the heads' draft (3 heads over {scored} "
          f"LM-head rows, top-4): {drafting * 1e3:.2f} ms = {drafting / decode:.2f} steps.")
    print("| tree | nodes | verification pass | in decode steps |")
    print("|---|---|---|---|")
    for (name, tree), seconds in zip(trees, trees_seconds):
        print(f"| {name} | {tree.n_nodes} | {seconds * 1e3:.2f} ms | {seconds / decode:.2f} |")

    print()
    print(f"Medians of {args.rounds} rounds; each round runs plain decoding, then every tree, and a tree's ratio "
          "divides its speed by that round's plain speed.")
    print(f"| temperature | tree | nodes | accepted tokens/pass | decode tokens/s | vs plain | same text |")
    print(f"|---|---|---|---|---|---|---|")
    for temperature in (float(t) for t in args.temperatures.split(",")):
        plain_rates = []
        rates = {name: [] for name, _ in trees}
        accepted = {}
        same = {name: 0 for name, _ in trees}
        for _ in range(args.rounds):
            total, seconds, _, plain_texts = run(model, args.tokens, temperature, None, heads)
            plain_rates.append(total / seconds)
            for name, tree in trees:
                total, seconds, passes, texts = run(model, args.tokens, temperature, tree, heads)
                rates[name].append(total / seconds)
                accepted[name] = total / max(passes, 1)  # the same in every round
                same[name] += sum(a == b for a, b in zip(texts, plain_texts))
        plain_rate = float(np.median(plain_rates))
        print(f"| {temperature:g} | plain | 1 | 1.00 | {plain_rate:.1f} | 1.00x | - |")
        for name, tree in trees:
            ratio = float(np.median([r / p for r, p in zip(rates[name], plain_rates)]))
            print(f"| {temperature:g} | {name} {list(tree.paths)} | {tree.n_nodes} | {accepted[name]:.2f} | "
                  f"{np.median(rates[name]):.1f} | {ratio:.2f}x | {same[name]}/{len(PROMPTS) * args.rounds} |",
                  flush=True)

    print()
    print(f"Command: python benchmarks/bench_speculative.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"Machine: {cpu_name()}, {os.cpu_count()} logical cores, {args.threads} threads; kernels "
          f"{_core.build_info()['kernels']}; cache {model.cache_type_k}/{model.cache_type_v}; "
          f"{len(PROMPTS)} prompts x {args.tokens} tokens; {time.strftime('%Y-%m-%d')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
