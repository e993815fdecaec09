"""Codebook of the KV cache rows at audio positions, fitted to the model's own keys and values.

Audio soft tokens come from an encoder, not from the embedding table, so the keys and values a
model computes at audio positions can follow other statistics than those at text positions.
The KV cache codes every row as a norm plus a rotated unit vector, and quantizes each rotated
coordinate (tq formats) or coordinate-pair radius (polar) with a Lloyd-Max codebook computed for
uniformly distributed unit vectors. ``fit_audio_codebook`` fits a codebook for audio positions
to sample rows with ``fit_codebook``. Store it in ``Gemma4Config(audio_codebook=...)``, which
round-trips through YAML, or pass it to ``Model.load(audio_codebook=...)``.
"""

from __future__ import annotations

import math

import numpy as np

from . import _core
from .quantizers import fit_codebook

__all__ = ["fit_audio_codebook", "audio_kv_rows", "codebook_samples"]

# Seed of the rotation of the model's KV cache codecs (tq_kv_cache_config.codec_seed: the
# model leaves it at 0).
CACHE_CODEC_SEED = 0


def _sequences(token_ids, soft_embeddings):
    """Return [(ids, rows)]: one pair for a single sequence, else one per sequence."""
    if token_ids and isinstance(token_ids[0], (int, np.integer)):
        return [(list(token_ids), soft_embeddings)]
    if isinstance(soft_embeddings, np.ndarray):
        raise ValueError("soft_embeddings must be a list with one array per sequence when token_ids is a list of "
                         "sequences")
    if len(token_ids) != len(soft_embeddings):
        raise ValueError(f"token_ids has {len(token_ids)} sequences but soft_embeddings has {len(soft_embeddings)} "
                         "arrays; pass one array per sequence")
    return [(list(ids), rows) for ids, rows in zip(token_ids, soft_embeddings)]


def audio_kv_rows(model, token_ids, soft_embeddings) -> list:
    """Run the model on sequences with audio placeholders and return the exact keys and values
    it computes at the audio positions.

    model: a ``turboquant.Model`` loaded with audio_token_id. token_ids: one sequence of ids,
    or a list of them. soft_embeddings: the float32 rows of the sequence's placeholders as
    ``Model.logits`` takes them, or a list with one array per sequence. The rows come from a
    session with a float32 cache, so no quantization touches them.
    Returns one (keys, values) pair per layer that stores its own rows, each an array
    (n_audio_positions * n_kv_heads, head_dim of the layer).
    Raises ValueError when the model has no audio token or the sequences no audio position.
    """
    if model.audio_token_id is None:
        raise ValueError("the model has no audio_token_id; load it with Model.load(audio_token_id=...)")
    config = model.config
    n_layers = config["n_layers"]
    # Gemma 4's last n_kv_shared_layers layers read the rows of earlier layers.
    storing = range(n_layers - config.get("n_kv_shared_layers", 0))
    # A sliding layer keeps its last window positions (plus a micro-batch), so the rows are read
    # back after every window-sized chunk.
    chunk = max(1, min(int(config["sliding_window"]) or 256, 256))
    session = model.create_session(cache_type_k="f32", cache_type_v="f32")
    keys = {layer: [] for layer in storing}
    values = {layer: [] for layer in storing}
    found = 0
    for ids, rows in _sequences(token_ids, soft_embeddings):
        session._check_soft_embeddings(ids, rows)
        session.reset()
        used = 0
        for start in range(0, len(ids), chunk):
            piece = ids[start:start + chunk]
            count = session._placeholder_count(piece)
            session._core.eval(piece, logits="none", soft_embeddings=None if count == 0 else rows[used:used + count])
            used += count
            audio = [start + i for i, token in enumerate(piece) if token == model.audio_token_id]
            if not audio:
                continue
            found += len(audio)
            offsets = np.asarray(audio) - start
            for layer in storing:
                layer_keys, layer_values = session._core.read_kv(layer, start, len(piece))
                keys[layer].append(layer_keys[offsets].reshape(-1, layer_keys.shape[-1]))
                values[layer].append(layer_values[offsets].reshape(-1, layer_values.shape[-1]))
        session.reset()
    if found == 0:
        raise ValueError(f"the sequences contain no audio placeholder (token id {model.audio_token_id})")
    return [(np.concatenate(keys[layer]), np.concatenate(values[layer])) for layer in storing]


def codebook_samples(rows, cache_type: str) -> np.ndarray:
    """Return the values the codebook of cache_type quantizes for rows (n, head_dim): the
    rotated unit-vector coordinates (tq formats) or coordinate-pair radii (polar), times
    sqrt(dim), the scale of ``tq_kv_codec_create_with_codebook``. dim is head_dim, or
    head_dim / 2 for the split formats (tq3.5, tq2.5), which code each half of the channels
    as a unit vector of its own. Rows of zero norm are skipped."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    head_dim = rows.shape[1]
    rows = rows[np.linalg.norm(rows, axis=1) > 0]
    codec = _core.KVCodec(cache_type, head_dim, CACHE_CODEC_SEED)
    rotated = codec.rotate(rows).astype(np.float64)
    if cache_type.startswith("polar"):
        half = head_dim // 2
        rotated = np.hypot(rotated[:, :half], rotated[:, half:])
    coded_dim = head_dim // 2 if codec.split else head_dim
    return (rotated * math.sqrt(coded_dim)).reshape(-1)


def fit_audio_codebook(model, token_ids, soft_embeddings, cache_type: str | None = None,
                       sides: str = "kv") -> tuple:
    """Fit the codebook of the KV rows at audio positions to the rows the model computes there.

    model, token_ids, soft_embeddings: as ``audio_kv_rows`` (sample sequences with audio
    placeholders and their soft rows). cache_type: the codec format the codebook is for
    ("polar", "tq4", "tq3", ...); None takes the model's key cache type. sides: "kv", "k" or
    "v", the rows whose samples are pooled; the cache applies the codebook to every side whose
    format takes its size.
    Returns strictly increasing floats in units of sqrt(head_dim) times a rotated unit-vector
    coordinate: 16 radii for polar formats, 2^bits centroids for tq formats (bits of their first
    coordinate half). Pass them as ``Model.load(audio_codebook=...)`` or
    ``Gemma4Config(audio_codebook=...)``.
    NOTE: keys are fitted as the model computes them. A Gemma 3 cache with key balancing (the
    default of Model.load) codes (k - mean) * scale instead, so its keys see a shifted sample.
    Raises ValueError for a format without codebook, bad sides, or too few distinct samples.
    """
    cache_type = cache_type if cache_type is not None else model.cache_type_k
    if sides not in ("kv", "k", "v"):
        raise ValueError(f"sides must be 'kv', 'k' or 'v', got {sides!r}")
    probe = _core.KVCodec(cache_type, 64, CACHE_CODEC_SEED)
    levels = len(probe.centroids)
    if levels == 0:
        raise ValueError(f"cache type {cache_type!r} has no codebook to fit; use a tq or polar format")
    samples = []
    for keys, values in audio_kv_rows(model, token_ids, soft_embeddings):
        if "k" in sides:
            samples.append(codebook_samples(keys, cache_type))
        if "v" in sides:
            samples.append(codebook_samples(values, cache_type))
    samples = np.concatenate(samples).astype(np.float32)
    centroids = fit_codebook(samples, int(math.log2(levels)))
    codebook = tuple(float(c) for c in centroids)
    if any(b <= a for a, b in zip(codebook, codebook[1:])):
        raise ValueError(f"the {samples.size} samples give repeated centroids {codebook}; fit on more audio "
                         "positions")
    return codebook
