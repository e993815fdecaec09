"""Audio positions in the KV cache: rows stored with their own codebook.

The reference is NumPy. Each row is normalized and rotated by the codec's orthogonal rotation,
whose matrix is read once through KVCodec.rotate. Every coordinate (tq formats) or coordinate
pair radius (polar) is replaced by the nearest centroid of the codebook in use. The result is
rotated back and scaled by the f16-rounded norm. Audio positions use the audio
codebook, the others the default Lloyd-Max codebook (KVCodec.centroids). Attention over a
mixed cache is compared with float64 softmax attention over those reference rows.
"""

import math

import numpy as np
import pytest

from turboquant import _core

from test_kv_cache_codec import reference_attention as codec_cache_attention

SEED = 5
HEAD_DIM = 128
SUPPORTED_KERNELS = _core.build_info()["supported_kernels"]

# Audio codebooks in units of sqrt(head_dim) times a rotated unit-vector coordinate: wider
# than the default ones (a coordinate has variance about 1 at this scale), so audio rows
# decode visibly differently.
AUDIO_TQ4 = tuple(np.linspace(-3.2, 3.2, 16).round(4))
AUDIO_TQ3 = tuple(np.linspace(-2.8, 2.8, 8).round(4))
AUDIO_POLAR = tuple(np.linspace(0.15, 3.9, 16).round(4))


def rotation_matrix(codec):
    """R with codec.rotate(x) = R x / |x|: column i is the rotated basis vector e_i."""
    return codec.rotate(np.eye(codec.head_dim, dtype=np.float32)).T.astype(np.float64)


def nearest(values, centroids):
    centroids = np.asarray(centroids, dtype=np.float64)
    return centroids[np.abs(values[..., None] - centroids).argmin(axis=-1)]


def reference_rows(x, name, audio_codebook=None, seed=SEED):
    """Rows of x as a tq4, tq3 or polar cache with codec seed seed stores them, with
    audio_codebook (scaled units) in place of the default codebook when given."""
    d = x.shape[1]
    codec = _core.KVCodec(name, d, seed)
    rotation = rotation_matrix(codec)
    centroids = (np.asarray(audio_codebook) / math.sqrt(d) if audio_codebook is not None
                 else codec.centroids.astype(np.float64))
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    rotated = codec.rotate(x).astype(np.float64)  # the same float32 values the encoder quantizes
    if name == "polar":
        half = d // 2
        a, b = rotated[:, :half], rotated[:, half:]
        radius = nearest(np.hypot(a, b), centroids)
        width = 2 * math.pi / 8
        bins = np.clip(np.floor((np.arctan2(b, a) + math.pi) / width), 0, 7)
        centre = -math.pi + (bins + 0.5) * width
        shrink = math.sin(width / 2) / (width / 2)
        quantized = np.concatenate([radius * shrink * np.cos(centre), radius * shrink * np.sin(centre)], axis=1)
    else:
        quantized = nearest(rotated, centroids)
    stored_norms = norms.astype(np.float16).astype(np.float64)
    return (quantized @ rotation) * stored_norms[:, None]


def random_rows(seed, n=40, d=HEAD_DIM):
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((n, d)).astype(np.float32)
    values = rng.standard_normal((n, d)).astype(np.float32)
    queries = (0.2 * rng.standard_normal((n, d))).astype(np.float32)
    return keys, values, queries


def audio_flags(n):
    """Text, a run of audio positions, text, a shorter audio run, text."""
    flags = np.zeros(n, dtype=np.uint8)
    flags[5:17] = 1
    flags[25:31] = 1
    return flags


def reference_attention(keys, values, queries, window=0):
    """Causal float64 softmax attention over rows that are already decoded."""
    return codec_cache_attention(keys, values, queries, "f32", "f32", window=window)


def mixed_rows(x, name, flags, codebook):
    return np.where(flags[:, None].astype(bool), reference_rows(x, name, codebook), reference_rows(x, name))


# As test_kv_cache_codec.py: float32 sums over at most 40 rows of 128 values against a float64
# reference stay near 1e-6.
TOLERANCE = 2e-5


@pytest.mark.parametrize("name,codebook", [("tq4", AUDIO_TQ4), ("tq3", AUDIO_TQ3), ("polar", AUDIO_POLAR)])
def test_audio_rows_use_audio_codebook(name, codebook):
    keys, values, queries = random_rows(seed=1)
    flags = audio_flags(len(keys))
    out, stored_keys, stored_values = _core.kv_cache_attention(
        keys, values, queries, cache_type_k=name, cache_type_v=name, seed=SEED, audio_positions=flags,
        audio_codebook=codebook, read_rows=True)
    expected_keys = mixed_rows(keys, name, flags, codebook)
    expected_values = mixed_rows(values, name, flags, codebook)
    # Decoded rows: float32 rotation against the float64 reference.
    np.testing.assert_allclose(stored_keys, expected_keys, rtol=0, atol=1e-5)
    np.testing.assert_allclose(stored_values, expected_values, rtol=0, atol=1e-5)
    # The two codebooks really differ on the audio rows.
    assert np.abs(reference_rows(keys, name, codebook) - reference_rows(keys, name))[flags == 1].max() > 0.05
    np.testing.assert_allclose(out, reference_attention(expected_keys, expected_values, queries), rtol=0,
                               atol=TOLERANCE)


@pytest.mark.parametrize("window,n_batch", [(9, 4), (0, 7), (6, 1)])
def test_audio_flags_in_sliding_ring(window, n_batch):
    # Later positions reuse ring slots, so each row must be read with the codebook of the
    # position it holds. Chunks of attention split where the flag changes.
    keys, values, queries = random_rows(seed=2)
    flags = audio_flags(len(keys))
    out = _core.kv_cache_attention(keys, values, queries, cache_type_k="polar", cache_type_v="polar", seed=SEED,
                                   window=window, n_batch=n_batch, audio_positions=flags,
                                   audio_codebook=AUDIO_POLAR)
    expected = reference_attention(mixed_rows(keys, "polar", flags, AUDIO_POLAR),
                                   mixed_rows(values, "polar", flags, AUDIO_POLAR), queries, window)
    np.testing.assert_allclose(out, expected, rtol=0, atol=TOLERANCE)


def test_audio_codebook_only_on_fitting_side():
    # A 16-entry codebook fits tq4 keys but not tq3 values, which keep the default codebook.
    keys, values, queries = random_rows(seed=3)
    flags = audio_flags(len(keys))
    out, stored_keys, stored_values = _core.kv_cache_attention(
        keys, values, queries, cache_type_k="tq4", cache_type_v="tq3", seed=SEED, audio_positions=flags,
        audio_codebook=AUDIO_TQ4, read_rows=True)
    np.testing.assert_allclose(stored_keys, mixed_rows(keys, "tq4", flags, AUDIO_TQ4), rtol=0, atol=1e-5)
    np.testing.assert_allclose(stored_values, reference_rows(values, "tq3"), rtol=0, atol=1e-5)
    np.testing.assert_allclose(out, reference_attention(stored_keys, stored_values, queries), rtol=0, atol=TOLERANCE)


def test_audio_with_recent_f16_window():
    # The newest positions are read from the f16 copy whatever their flag.
    keys, values, queries = random_rows(seed=4)
    flags = audio_flags(len(keys))
    recent = 4
    out = _core.kv_cache_attention(keys, values, queries, cache_type_k="tq4", cache_type_v="tq4", seed=SEED,
                                   recent_f16=recent, n_batch=3, audio_positions=flags, audio_codebook=AUDIO_TQ4)
    coded_keys = mixed_rows(keys, "tq4", flags, AUDIO_TQ4)
    coded_values = mixed_rows(values, "tq4", flags, AUDIO_TQ4)
    n = len(keys)
    expected = np.empty((n, HEAD_DIM))
    for i in range(n):
        is_recent = (i - np.arange(i + 1) < recent)[:, None]
        k = np.where(is_recent, keys[: i + 1].astype(np.float16).astype(np.float64), coded_keys[: i + 1])
        v = np.where(is_recent, values[: i + 1].astype(np.float16).astype(np.float64), coded_values[: i + 1])
        scores = k @ queries[i].astype(np.float64)
        weights = np.exp(scores - scores.max())
        expected[i] = weights @ v / weights.sum()
    np.testing.assert_allclose(out, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("kernels", [k for k in SUPPORTED_KERNELS if k != "scalar"])
@pytest.mark.parametrize("name,codebook", [("tq4", AUDIO_TQ4), ("tq3", AUDIO_TQ3), ("polar", AUDIO_POLAR)])
def test_audio_simd_matches_scalar(kernels, name, codebook):
    keys, values, queries = random_rows(seed=5)
    args = dict(cache_type_k=name, cache_type_v=name, seed=SEED, audio_positions=audio_flags(len(keys)),
                audio_codebook=codebook, n_batch=6)
    scalar = _core.kv_cache_attention(keys, values, queries, kernels="scalar", **args)
    simd = _core.kv_cache_attention(keys, values, queries, kernels=kernels, **args)
    np.testing.assert_allclose(simd, scalar, rtol=0, atol=1e-5)


def test_audio_codebook_size_checked():
    keys, values, queries = random_rows(seed=6, n=4)
    with pytest.raises(ValueError, match="audio codebook has 5 entries, which fits neither KV cache type"):
        _core.kv_cache_attention(keys, values, queries, cache_type_k="tq4", cache_type_v="polar",
                                 audio_codebook=(0.1, 0.2, 0.3, 0.4, 0.5))
    with pytest.raises(ValueError, match="strictly increasing"):
        _core.kv_cache_attention(keys, values, queries, cache_type_k="tq3", cache_type_v="tq3",
                                 audio_codebook=(0.1, 0.3, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8))
    with pytest.raises(ValueError, match="radius codebook of 16 entries >= 0"):
        _core.kv_cache_attention(keys, values, queries, cache_type_k="polar", cache_type_v="polar",
                                 audio_codebook=AUDIO_TQ4)
    # A cache without codec types has no codebook to replace.
    _core.kv_cache_attention(keys, values, queries, cache_type_k="f16", cache_type_v="q8_0",
                             audio_codebook=(0.1, 0.5), audio_positions=np.ones(4, dtype=np.uint8))


def test_codec_codebook_argument():
    codec = _core.KVCodec("tq3.5", HEAD_DIM, SEED, codebook=AUDIO_TQ3)
    # tq3.5 codes its first half of channels at 4 bits (default codebook) and its second half,
    # a vector of HEAD_DIM / 2 channels with its own norm and rotation, at 3 bits. Codebooks
    # are in units of sqrt(HEAD_DIM / 2) there.
    np.testing.assert_allclose(codec.centroids, _core.KVCodec("tq3.5", HEAD_DIM, SEED).centroids)
    half = HEAD_DIM // 2
    rows = random_rows(seed=7, n=8)[0]
    rotation = rotation_matrix(codec)
    decoded_rotated = codec.decode(codec.encode(rows)).astype(np.float64) @ rotation.T
    second_norm = np.linalg.norm(rows[:, half:], axis=1).astype(np.float16).astype(np.float64)
    unit = decoded_rotated[:, half:] / second_norm[:, None]
    np.testing.assert_allclose(unit, nearest(codec.rotate(rows)[:, half:], np.asarray(AUDIO_TQ3) / math.sqrt(half)),
                               rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="codebook of 4 entries does not fit format 'tq3'"):
        _core.KVCodec("tq3", HEAD_DIM, SEED, codebook=(-1.0, -0.3, 0.3, 1.0))
    with pytest.raises(ValueError, match="format 'f16' has no codebook"):
        _core.KVCodec("f16", HEAD_DIM, SEED, codebook=(-1.0, 1.0))


def test_rotation_is_orthogonal():
    rotation = rotation_matrix(_core.KVCodec("tq4", HEAD_DIM, SEED))
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(HEAD_DIM), rtol=0, atol=1e-6)
