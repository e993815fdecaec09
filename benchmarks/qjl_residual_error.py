"""Attention-score error of the 1-bit and the 2-bit QJL residual on real Gemma 3 270M keys and queries.

Keys and queries: transformers' Gemma3ForCausalLM runs the default model file (Gemma 3 270M
Q4_K_M, dequantized to float32 by transformers' GGUF loader, eager attention) on the first
--tokens tokens of "Alice's Adventures in Wonderland" (turboquant.datasets). A patched
eager_attention_forward records every layer's queries and keys as attention sees them (after
the q/k norms and RoPE). Each layer has 4 query heads sharing 1 KV head of head_dim 256.

For every cache format, each layer's keys are coded with a KVCodec of codec seed 0 (key
balancing is off: keys are coded as they are), and every query is scored against the codes
of the keys it sees causally (all of them fit in the 512-position window of the sliding
layers). Reported over all layers:

  score RMSE   root mean square of scale * (coded score - exact score), scale = 256^-0.5
  KL           mean over queries of KL(softmax of exact scores || softmax of coded scores), nats
  bits/value   stored bits per key value (8 * row bytes / head_dim)
  bytes/token  kv_bytes_per_token() of a model whose keys and values use the format (codes of
               all 18 layers, K and V): 1-bit rows, or rows with room for a 2-bit residual plus
               the one-byte precision flag per position

The timing part scores 4 query heads against 4096 random keys of head_dim 256 with
KVCodec.scores at 1 and 2 residual bits, on one thread, for every kernel variant the CPU
supports (TURBOQUANT_KERNELS picks the variant), and reports the best of 20 calls.

    python benchmarks/qjl_residual_error.py --tokens 512
    python benchmarks/qjl_residual_error.py --parts timing
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

# (format, residual bits); None marks a format without a QJL stage.
CONFIGURATIONS = [("tq3", None), ("tq3+qjl", 1), ("tq3+qjl", 2), ("tq4", None), ("tq4+qjl", 1), ("tq4+qjl", 2)]


def capture_keys_queries(path: str, tokens: list[int]):
    """Return per-layer (keys (T, D), queries (H, T, D)) of transformers' forward pass over tokens."""
    import torch
    import transformers
    from transformers.models.gemma3 import modeling_gemma3

    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32, attn_implementation="eager")
    captured = []
    original = modeling_gemma3.eager_attention_forward

    def recording_attention(module, query, key, value, attention_mask, **kwargs):
        # query (1, H, T, D) and key (1, 1, T, D); one KV head in Gemma 3 270M.
        captured.append((key[0, 0].numpy().copy(), query[0].numpy().copy()))
        return original(module, query, key, value, attention_mask, **kwargs)

    modeling_gemma3.eager_attention_forward = recording_attention
    try:
        with torch.no_grad():
            model(torch.tensor([tokens]))
    finally:
        modeling_gemma3.eager_attention_forward = original
    return captured


def coded_scores(codec, qjl_bits, keys, queries):
    """Scores (H, T, T) of every query against the coded keys; QJL formats read qjl_bits."""
    bits = {} if qjl_bits is None else {"qjl_bits": qjl_bits}
    rows = codec.encode(keys, **bits)
    n_heads, n_tokens, _ = queries.shape
    flat = queries.reshape(-1, queries.shape[-1])
    out = np.empty((flat.shape[0], n_tokens), np.float64)
    for start in range(0, flat.shape[0], 8):  # the codec scores up to 8 queries per call
        out[start:start + 8] = codec.scores(flat[start:start + 8], rows, **bits)
    return out.reshape(n_heads, n_tokens, n_tokens)


def score_errors(captured, name, qjl_bits, scale):
    """Return (score RMSE, mean KL) over every layer, head and causal (query, key) pair."""
    from turboquant import _core

    squared, pairs, kl_total, n_queries = 0.0, 0, 0.0, 0
    for keys, queries in captured:
        n_tokens, head_dim = keys.shape
        codec = _core.KVCodec(name, head_dim, 0, max_qjl_bits=qjl_bits or 1)
        exact = scale * np.einsum("htd,sd->hts", queries.astype(np.float64), keys.astype(np.float64))
        coded = scale * coded_scores(codec, qjl_bits, keys, queries)
        causal = np.tril(np.ones((n_tokens, n_tokens), bool))
        squared += float((((coded - exact) ** 2) * causal).sum())
        pairs += int(causal.sum()) * queries.shape[0]
        masked_exact = np.where(causal, exact, -np.inf)
        masked_coded = np.where(causal, coded, -np.inf)
        log_p = masked_exact - np.logaddexp.reduce(masked_exact, axis=-1, keepdims=True)
        log_q = masked_coded - np.logaddexp.reduce(masked_coded, axis=-1, keepdims=True)
        p = np.exp(log_p)
        with np.errstate(invalid="ignore"):  # -inf - -inf above the diagonal, masked out below
            kl_total += float(np.where(causal, p * (log_p - log_q), 0.0).sum())
        n_queries += queries.shape[0] * n_tokens
    return (squared / pairs) ** 0.5, kl_total / n_queries


def bytes_per_token(path: str, name: str, qjl_bits):
    """kv_bytes_per_token of a model whose keys and values use name; 2-bit rows need thinking."""
    from turboquant import _core

    if qjl_bits is None:
        return _core.Model(path, ctx=64, cache_type_k=name, cache_type_v=name).kv_bytes_per_token()
    # Token 2 (BOS) as the think token makes rows with room for thinking_qjl_bits.
    model = _core.Model(path, ctx=64, cache_type_k=name, cache_type_v=name, think_token_id=2, qjl_bits=1,
                        thinking_qjl_bits=qjl_bits)
    return model.kv_bytes_per_token()


def scoring_times(name: str, repeats: int = 20):
    """Return {kernel variant: (1-bit seconds, 2-bit seconds)} of one KVCodec.scores call."""
    from turboquant import _core

    keys = np.random.default_rng(0).standard_normal((4096, 256)).astype(np.float32)
    queries = np.random.default_rng(1).standard_normal((4, 256)).astype(np.float32)
    times = {}
    for kernels in _core.build_info()["supported_kernels"]:
        os.environ["TURBOQUANT_KERNELS"] = kernels
        codec = _core.KVCodec(name, 256, 0, max_qjl_bits=2)
        best = []
        for qjl_bits in (1, 2):
            rows = codec.encode(keys, qjl_bits=qjl_bits)
            seconds = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                codec.scores(queries, rows, qjl_bits=qjl_bits)
                seconds = min(seconds, time.perf_counter() - start)
            best.append(seconds)
        times[kernels] = tuple(best)
    os.environ.pop("TURBOQUANT_KERNELS")
    return times


def print_timing():
    print("Scoring 4 query heads against 4096 keys (head_dim 256), one thread, best of 20 calls:")
    print()
    print("| keys | kernels | 1-bit residual (ms) | 2-bit residual (ms) | 2-bit / 1-bit |")
    print("|---|---|---:|---:|---:|")
    for name in ("tq3+qjl", "tq4+qjl"):
        for kernels, (one, two) in scoring_times(name).items():
            print(f"| {name} | {kernels} | {one * 1e3:.3f} | {two * 1e3:.3f} | {two / one:.2f} |")


def print_errors(n_tokens: int):
    import turboquant
    from turboquant import _core
    from turboquant.datasets import english_text
    from turboquant.model import default_model_path

    path = default_model_path()
    tokenizer = turboquant.Model.load(path, ctx=64, cache_type_k="f16", cache_type_v="f16").tokenizer
    tokens = tokenizer.encode(english_text("alice29"))[:n_tokens]
    captured = capture_keys_queries(path, tokens)
    scale = captured[0][0].shape[1] ** -0.5

    print(f"Gemma 3 270M, {len(captured)} layers, {len(tokens)} tokens of alice29, codec seed 0, keys not balanced")
    print()
    print("| keys | QJL residual | bits/value | bytes/token (K+V) | score RMSE | KL (nats) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, qjl_bits in CONFIGURATIONS:
        rmse, kl = score_errors(captured, name, qjl_bits, scale)
        codec = _core.KVCodec(name, 256, 0, max_qjl_bits=qjl_bits or 1)
        residual = "none" if qjl_bits is None else f"{qjl_bits}-bit"
        print(f"| {name} | {residual} | {codec.bits_per_value:.3f} | {bytes_per_token(path, name, qjl_bits)} | "
              f"{rmse:.4f} | {kl:.5f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tokens", type=int, default=512, help="prompt tokens (default: 512, at most 512)")
    parser.add_argument("--parts", nargs="+", choices=("error", "timing"), default=["error", "timing"],
                        help="what to measure (default: both)")
    args = parser.parse_args(argv)
    if not 2 <= args.tokens <= 512:
        parser.error(f"--tokens must be 2 to 512 so that every key is in the sliding window, got {args.tokens}")

    if "timing" in args.parts:
        print_timing()
        print()
    if "error" in args.parts:
        print_errors(args.tokens)


if __name__ == "__main__":
    main()
