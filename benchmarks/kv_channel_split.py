"""Score error of fractional-width key codes: one rotation against channel splits, in NumPy.

A model of the tq2.5 and tq3.5 codecs, to compare bit allocations before building them.
Keys and queries: transformers' Gemma3ForCausalLM runs the default model file (Gemma 3 270M
Q4_K_M, dequantized to float32 by transformers' GGUF loader, eager attention) on the first
--tokens tokens of "Alice's Adventures in Wonderland" (turboquant.datasets). A patched
eager_attention_forward records every layer's keys and queries as attention receives them.

Each layer's keys are balanced as the cache does (csrc/model.c): scaled per RoPE pair by
sqrt(wq / wk) from the q and k norm weights, after subtracting the mean of the first 64 keys.
Then they are coded in one of these ways, all with Lloyd-Max codebooks of a Gaussian
coordinate and dense random rotations:

  one rotation      one rotation of all channels, one norm, half of the coordinates at the
                    wider width (the first version of tq3.5 and tq2.5)
  halves            the RoPE pairs with the largest wq * wk (half of the channels) as one vector
                    at the wider width, the rest as another, each with its own norm and
                    rotation (tq3.5 and tq2.5 now)
  quarter at 4 bits the top quarter of the channels at 4 bits and the rest at 2 bits (2.5 bits)

Reported: mean over layers of KL(softmax of exact scores || softmax of coded scores) over the
causal queries of the 4 query heads, in nats.

    python benchmarks/kv_channel_split.py --tokens 512
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def lloyd_max_gaussian(bits: int, iterations: int = 200) -> np.ndarray:
    """Lloyd-Max centroids of N(0, 1) with 2^bits levels, on a fine grid."""
    grid = np.linspace(-6.0, 6.0, 20001)
    density = np.exp(-grid**2 / 2)
    levels = np.linspace(-2.0, 2.0, 2**bits)
    for _ in range(iterations):
        cell = np.searchsorted((levels[1:] + levels[:-1]) / 2, grid)
        levels = np.array([(grid[cell == i] * density[cell == i]).sum() / density[cell == i].sum()
                           for i in range(2**bits)])
    return levels


CODEBOOKS = {bits: lloyd_max_gaussian(bits) for bits in (2, 3, 4)}


def random_rotation(n: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def code_vector(x: np.ndarray, widths: np.ndarray, seed: int) -> np.ndarray:
    """Code rows x (n, g) as unit vectors times their norms, rotated coordinate i at widths[i] bits."""
    g = x.shape[1]
    rotation = random_rotation(g, seed)
    norm = np.linalg.norm(x, axis=1, keepdims=True) + 1e-30
    rotated = (x / norm) @ rotation.T * np.sqrt(g)
    coded = np.empty_like(rotated)
    for bits in np.unique(widths):
        columns = widths == bits
        book = CODEBOOKS[int(bits)]
        coded[:, columns] = book[np.searchsorted((book[1:] + book[:-1]) / 2, rotated[:, columns])]
    return (coded / np.sqrt(g)) @ rotation * norm


def code_one_rotation(x: np.ndarray, wide: int, narrow: int, seed: int) -> np.ndarray:
    d = x.shape[1]
    return code_vector(x, np.array([wide] * (d // 2) + [narrow] * (d - d // 2)), seed)


def code_split(x: np.ndarray, order: np.ndarray, n_wide: int, wide: int, narrow: int, seed: int) -> np.ndarray:
    """Code the channels order[:n_wide] as one vector at wide bits and the rest at narrow bits."""
    first, rest = order[:n_wide], order[n_wide:]
    out = np.empty_like(x)
    out[:, first] = code_vector(x[:, first], np.full(len(first), wide), seed)
    out[:, rest] = code_vector(x[:, rest], np.full(len(rest), narrow), seed + 1)
    return out


def score_kl(queries: np.ndarray, keys: np.ndarray, coded: np.ndarray) -> float:
    """Mean KL of causal softmax scores (scale head_dim^-0.5) of queries (H, T, D) over T keys."""
    scale = keys.shape[1] ** -0.5
    exact = np.einsum("htd,sd->hts", queries, keys) * scale
    approx = np.einsum("htd,sd->hts", queries, coded) * scale
    n = keys.shape[0]
    future = np.triu(np.ones((n, n), bool), 1)
    exact[:, future] = -np.inf
    approx[:, future] = -np.inf
    log_p = exact - exact.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    log_q = approx - approx.max(-1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(-1, keepdims=True))
    # Future keys have probability 0 under both, so they add nothing (and -inf - -inf is nan).
    log_p[:, future] = 0.0
    log_q[:, future] = 0.0
    terms = np.exp(log_p) * (log_p - log_q)
    terms[:, future] = 0.0
    return float(terms.sum(-1).mean())


def capture(path: str, n_tokens: int):
    """Return the tokens' per-layer (keys (T, D), queries (H, T, D)) and the q and k norm weights."""
    import torch
    import transformers
    from transformers.models.gemma3 import modeling_gemma3

    from turboquant import datasets

    directory, name = os.path.dirname(path), os.path.basename(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
    text = datasets.english_text_path().read_text(encoding="utf-8")
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :n_tokens]
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32,
                                                              attn_implementation="eager")
    captured = []
    original = modeling_gemma3.eager_attention_forward

    def recording_attention(module, query, key, value, attention_mask, **kwargs):
        # query (1, H, T, D) and key (1, 1, T, D): one KV head in Gemma 3 270M.
        captured.append((key[0, 0].numpy().astype(np.float64), query[0].numpy().astype(np.float64)))
        return original(module, query, key, value, attention_mask, **kwargs)

    modeling_gemma3.eager_attention_forward = recording_attention
    try:
        with torch.no_grad():
            model(ids)
    finally:
        modeling_gemma3.eager_attention_forward = original
    # Gemma's RMSNorm multiplies by (1 + weight).
    norms = [(1.0 + layer.self_attn.q_norm.weight.detach().numpy().astype(np.float64),
              1.0 + layer.self_attn.k_norm.weight.detach().numpy().astype(np.float64))
             for layer in model.model.layers]
    return captured, norms


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512, help="tokens of text to run (default 512)")
    args = parser.parse_args(argv)

    from turboquant.model import default_model_path

    start = time.time()
    captured, norms = capture(default_model_path(), args.tokens)
    methods = {
        "tq3.5 one rotation": lambda kb, order, seed: code_one_rotation(kb, 4, 3, seed),
        "tq3.5 halves": lambda kb, order, seed: code_split(kb, order, kb.shape[1] // 2, 4, 3, seed),
        "tq2.5 one rotation": lambda kb, order, seed: code_one_rotation(kb, 3, 2, seed),
        "tq2.5 halves": lambda kb, order, seed: code_split(kb, order, kb.shape[1] // 2, 3, 2, seed),
        "tq2.5 quarter at 4 bits": lambda kb, order, seed: code_split(kb, order, kb.shape[1] // 4, 4, 2, seed),
    }
    kl = {name: [] for name in methods}
    for layer, ((keys, queries), (wq, wk)) in enumerate(zip(captured, norms)):
        half = keys.shape[1] // 2
        pair_q = np.sqrt(0.5 * (wq[:half] ** 2 + wq[half:] ** 2)) + 1e-3 * np.abs(wq).max()
        pair_k = np.sqrt(0.5 * (wk[:half] ** 2 + wk[half:] ** 2)) + 1e-3 * np.abs(wk).max()
        scale = np.tile(np.sqrt(pair_q / pair_k), 2)
        scale /= np.exp(np.log(scale).mean())
        mean = keys[:64].mean(axis=0)
        balanced = (keys - mean) * scale
        # Channels ranked by their pair's share of the score, as the cache orders them.
        order = np.argsort(-np.tile(pair_q * pair_k, 2), kind="stable")
        for name, code in methods.items():
            kl[name].append(score_kl(queries, keys, code(balanced, order, layer) / scale + mean))

    print(f"Gemma 3 270M Q4_K_M keys, {args.tokens} tokens, {len(captured)} layers; "
          f"{platform.machine()}, {time.time() - start:.0f} s")
    print(f"command: python benchmarks/kv_channel_split.py --tokens {args.tokens}")
    baseline = {"tq3.5": np.mean(kl["tq3.5 one rotation"]), "tq2.5": np.mean(kl["tq2.5 one rotation"])}
    print(f"{'coding':>26} {'score KL':>9} {'vs one rotation':>16}")
    for name, values in kl.items():
        mean_kl = float(np.mean(values))
        print(f"{name:>26} {mean_kl:>9.4f} {mean_kl / baseline[name.split()[0]]:>15.2f}x")


if __name__ == "__main__":
    main()
