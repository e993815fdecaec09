"""Reconstruction error of the KV rows at audio positions: default codebook against one fitted
with turboquant.fit_audio_codebook.

The model runs sequences of text around a run of audio placeholders whose soft embeddings are
synthetic, with N(0.5, 3^2) entries. They differ in scale and mean from the scaled text
embedding rows of Gemma 3 270M, whose entries are about 0.5 to 1 in size. The codebook is fitted on one
set of sequences ("fit") and evaluated on those and on a second set with other soft rows
("held out"). The error is sum |decode(encode(row)) - row|^2 / sum |row|^2 over the exact
(f32 cache) keys and values of every layer at the audio positions, coded by KVCodec with the
model cache's seed; keys are coded as computed, without the key balancing that Model.load
applies to Gemma 3 caches.

    PYTHONPATH=. python benchmarks/audio_codebook.py
    PYTHONPATH=. python benchmarks/audio_codebook.py --model path/to/model.gguf --audio-token-id 258881
"""

import argparse

import numpy as np

import turboquant
from turboquant import _core
from turboquant.audio_codebook import CACHE_CODEC_SEED, audio_kv_rows

TYPES = ["polar", "tq4", "tq3", "tq2"]


def sequences(model, n_sequences, n_audio, seed):
    text = model.tokenize("The quick brown fox jumps over the lazy dog while the audio plays in the background.")
    rng = np.random.default_rng(seed)
    hidden = model.config["hidden"]
    ids = [text[:8] + [model.audio_token_id] * n_audio + text[8:] for _ in range(n_sequences)]
    rows = [(0.5 + 3.0 * rng.standard_normal((n_audio, hidden))).astype(np.float32) for _ in range(n_sequences)]
    return ids, rows


def relative_error(pairs, cache_type, codebook=None):
    error = total = 0.0
    for keys, values in pairs:
        for rows in (keys, values):
            codec = _core.KVCodec(cache_type, rows.shape[1], CACHE_CODEC_SEED, codebook=codebook)
            error += float(((codec.decode(codec.encode(rows)) - rows) ** 2).sum())
            total += float((rows ** 2).sum())
    return error / total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="GGUF file or model directory (default: Gemma 3 270M Q4_K_M)")
    parser.add_argument("--audio-token-id", type=int, default=258881,
                        help="token id used as the audio placeholder (default: 258881, Gemma 4's)")
    parser.add_argument("--sequences", type=int, default=3, help="sequences per set (default: 3)")
    parser.add_argument("--audio-positions", type=int, default=48, help="placeholders per sequence (default: 48)")
    parser.add_argument("--threads", type=int, help="OpenMP threads (default: all cores)")
    args = parser.parse_args()

    model = turboquant.Model.load(args.model, audio_token_id=args.audio_token_id, threads=args.threads)
    fit_set = sequences(model, args.sequences, args.audio_positions, seed=1)
    held_out_set = sequences(model, args.sequences, args.audio_positions, seed=2)
    fit_rows = audio_kv_rows(model, *fit_set)
    held_out_rows = audio_kv_rows(model, *held_out_set)
    print(f"{sum(len(k) for k, _ in fit_rows)} key rows and as many value rows per set")
    print("| cache type | fit: default | fit: fitted | held out: default | held out: fitted | held out change |")
    print("|---|---|---|---|---|---|")
    for cache_type in TYPES:
        codebook = turboquant.fit_audio_codebook(model, *fit_set, cache_type=cache_type)
        cells = [relative_error(rows, cache_type, book) for rows in (fit_rows, held_out_rows)
                 for book in (None, codebook)]
        change = 100.0 * (cells[3] / cells[2] - 1.0)
        print(f"| {cache_type} | " + " | ".join(f"{cell:.6f}" for cell in cells) + f" | {change:+.2f}% |", flush=True)


if __name__ == "__main__":
    main()
