"""The audio codebook in a model: fitting it to the keys and values at audio positions,
storing it in the configuration, and the model's cache coding audio rows with it.

Model: the tiny random-weight Gemma 4 "plain" shape of test_gemma4.py (head sizes 64 and 128,
which the codec types support). Soft tokens are synthetic: N(0.5, 3^2) entries, unlike the
scaled embedding rows of text positions. Reconstruction errors are computed by encoding and
decoding through KVCodec; the cached rows are compared with the NumPy codec of
test_kv_cache_audio.py.
"""

import numpy as np
import pytest

import turboquant
from turboquant import _core
from turboquant.audio_codebook import audio_kv_rows

pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_gemma4 import G3, gemma3_pair, gemma4_reference, write_gemma4_gguf  # noqa: E402
from test_kv_cache_audio import reference_rows as seeded_reference_rows  # noqa: E402

AUDIO = 60
N_AUDIO = 24


def reference_rows(x, name, audio_codebook=None):
    """Rows as the model's cache codes them: its codecs use seed 0."""
    return seeded_reference_rows(x, name, audio_codebook, seed=0)


@pytest.fixture(scope="module")
def plain_path(tmp_path_factory):
    model, config = gemma4_reference("plain")
    path = tmp_path_factory.mktemp("audio") / "plain.gguf"
    write_gemma4_gguf(path, model, config)
    return path, config


def sample_sequences(hidden, seed, n=3):
    """n sequences of text around a run of N_AUDIO audio placeholders, with their soft rows."""
    rng = np.random.default_rng(seed)
    ids, rows = [], []
    for _ in range(n):
        text = rng.integers(1, AUDIO, size=10).tolist()
        ids.append(text[:4] + [AUDIO] * N_AUDIO + text[4:])
        rows.append((0.5 + 3.0 * rng.standard_normal((N_AUDIO, hidden))).astype(np.float32))
    return ids, rows


def relative_error(pairs, cache_type, codebook=None):
    """Squared reconstruction error of every key and value row over their squared norms."""
    error = total = 0.0
    for keys, values in pairs:
        for rows in (keys, values):
            codec = _core.KVCodec(cache_type, rows.shape[1], 0, codebook=codebook)
            error += float(((codec.decode(codec.encode(rows)) - rows) ** 2).sum())
            total += float((rows ** 2).sum())
    return error / total


@pytest.mark.parametrize("cache_type", ["polar", "tq4", "tq3"])
def test_fitted_codebook_lowers_error(plain_path, cache_type):
    path, config = plain_path
    model = turboquant.Model.load(path, cache_type_k=cache_type, cache_type_v=cache_type, audio_token_id=AUDIO,
                                  exact_matmul=True)
    train = sample_sequences(config.hidden_size, seed=1)
    codebook = turboquant.fit_audio_codebook(model, *train)
    assert len(codebook) == len(_core.KVCodec(cache_type, 64).centroids)
    assert all(b > a for a, b in zip(codebook, codebook[1:]))

    fitted_rows = audio_kv_rows(model, *train)
    assert sum(len(keys) for keys, _ in fitted_rows) == 3 * 3 * N_AUDIO  # 3 layers store rows, 1 KV head
    assert relative_error(fitted_rows, cache_type, codebook) < relative_error(fitted_rows, cache_type)
    # The randomized Hadamard rotation already brings the coordinates close to the sphere
    # density that the default codebook is built for. On other soft rows of the same
    # distribution the fitted codebook therefore gains little, and it must not lose over 0.5%.
    held_out = audio_kv_rows(model, *sample_sequences(config.hidden_size, seed=2))
    assert relative_error(held_out, cache_type, codebook) < 1.005 * relative_error(held_out, cache_type)


def test_codebook_yaml_round_trip(plain_path, tmp_path):
    path, config = plain_path
    model = turboquant.Model.load(path, cache_type_k="polar", cache_type_v="polar", audio_token_id=AUDIO)
    codebook = turboquant.fit_audio_codebook(model, *sample_sequences(config.hidden_size, seed=3))
    settings = turboquant.Gemma4Config(vocab_size=config.vocab_size, think_token_id=None, audio_token_id=AUDIO,
                                       image_token_id=None,
                                       audio_codebook=codebook, cache_type_k="polar", cache_type_v="polar")
    settings.to_yaml(tmp_path / "model.yaml")
    loaded = turboquant.load_config(tmp_path / "model.yaml")
    assert loaded == settings
    assert loaded.audio_codebook == codebook

    runtime = turboquant.Model.load(path, config=loaded)
    assert runtime.audio_token_id == AUDIO
    assert runtime.image_token_id is None
    assert runtime.cache_type_k == "polar"
    # The runtime stores float32 centroids.
    np.testing.assert_array_equal(np.float32(runtime.audio_codebook), np.float32(codebook))


def test_model_cache_codes_audio_rows(plain_path):
    path, config = plain_path
    codebook = tuple(np.linspace(0.15, 3.9, 16).round(4))
    model = turboquant.Model.load(path, cache_type_k="polar", cache_type_v="polar", kv_recent_f16=0,
                                  audio_token_id=AUDIO, audio_codebook=codebook, exact_matmul=True)
    exact = model.create_session(cache_type_k="f32", cache_type_v="f32")
    (ids,), (soft,) = sample_sequences(config.hidden_size, seed=4, n=1)
    model.logits(ids, soft_embeddings=soft)
    exact.logits(ids, soft_embeddings=soft)
    audio = np.asarray(ids) == AUDIO
    n = len(ids)
    # Layer 0's keys and values do not depend on the cache, so the f32 session computes the same.
    raw_keys, raw_values = (rows[:, 0] for rows in exact._core.read_kv(0, 0, n))
    keys, values = (rows[:, 0] for rows in model._core.read_kv(0, 0, n))
    for stored, raw in ((keys, raw_keys), (values, raw_values)):
        expected = np.where(audio[:, None], reference_rows(raw, "polar", codebook), reference_rows(raw, "polar"))
        # The rows come from the same float32 forward pass; 1e-4 covers the float64 reference.
        np.testing.assert_allclose(stored, expected, rtol=0, atol=1e-4)

    # Truncating into the audio run and writing text there clears the audio flags.
    model._core.truncate(10)
    model._core.eval(ids[30:34], logits="none")
    raw_keys = exact._core.read_kv(0, 0, n)[0][:, 0]
    session_keys = model._core.read_kv(0, 10, 4)[0][:, 0]
    exact.reset()
    exact._core.eval(ids[:10] + ids[30:34], logits="none", soft_embeddings=soft[:6])
    text_keys = exact._core.read_kv(0, 10, 4)[0][:, 0]
    np.testing.assert_allclose(session_keys, reference_rows(text_keys, "polar"), rtol=0, atol=1e-4)
    assert not np.allclose(text_keys, raw_keys[10:14])  # the positions now hold other rows


def test_audio_codebook_checked_at_load(plain_path):
    path, _ = plain_path
    with pytest.raises(ValueError, match="audio codebook has 8 entries, which fits neither KV cache type"):
        turboquant.Model.load(path, cache_type_k="polar", cache_type_v="tq4", audio_token_id=AUDIO,
                              audio_codebook=tuple(range(8)))
    with pytest.raises(ValueError, match="no audio_token_id"):
        turboquant.fit_audio_codebook(turboquant.Model.load(path), [1, 2], np.zeros((0, 96), np.float32))


def test_tree_rows_keep_audio_prefix(tmp_path, monkeypatch):
    # A speculative pass writes draft rows after an audio prefix and moves the accepted ones
    # (tq_kv_cache_move). The prefix keeps its audio codebook and the moved rows the default:
    # the cache ends up as after plain decoding of the accepted tokens. Layer 0's rows depend
    # only on token and position, so both caches must hold the same codes there.
    monkeypatch.setitem(G3, "head_dim", 64)  # the codec types need head_dim >= 64
    path = tmp_path / "gemma3.gguf"
    gemma3_pair(path, 6, G3["hidden"] // G3["heads"], True)
    codebook = tuple(np.linspace(0.15, 3.9, 16).round(4))
    ids, rows = sample_sequences(G3["hidden"], seed=5, n=1)
    prefix, soft = ids[0][:12], rows[0][:8]

    def load():
        return _core.Model(str(path), cache_type_k="polar", cache_type_v="polar", exact_matmul=True,
                           audio_token_id=AUDIO, audio_codebook=codebook)

    speculative, plain = load(), load()
    for runtime in (speculative, plain):
        runtime.eval(prefix, logits="none", soft_embeddings=soft)
    speculative.eval_tree([7, 8, 9], [-1, 0, 0])
    speculative.accept_path([0, 2])
    plain.eval([7, 9], logits="none")
    assert speculative.n_past == plain.n_past == 14
    for side in (0, 1):
        np.testing.assert_array_equal(speculative.read_kv(0, 0, 14)[side], plain.read_kv(0, 0, 14)[side])
    # Values: Gemma 3 keys are coded after key balancing, which the NumPy codec does not model.
    values = plain.read_kv(0, 0, 14)[1]
    exact = _core.Model(str(path), cache_type_k="f32", cache_type_v="f32", exact_matmul=True, audio_token_id=AUDIO)
    exact.eval(prefix + [7, 9], logits="none", soft_embeddings=soft)
    raw = exact.read_kv(0, 0, 14)[1]
    audio = np.asarray(prefix + [7, 9]) == AUDIO
    for head in range(raw.shape[1]):
        head_rows = np.ascontiguousarray(raw[:, head])
        expected = np.where(audio[:, None], reference_rows(head_rows, "polar", codebook),
                            reference_rows(head_rows, "polar"))
        np.testing.assert_allclose(values[:, head], expected, rtol=0, atol=1e-4)


def test_read_kv_checks_positions(plain_path):
    path, _ = plain_path
    runtime = _core.Model(str(path))
    runtime.eval([1, 2, 3], logits="none")
    with pytest.raises(ValueError, match=r"cannot read positions 2 \.\. 4 of layer 0: it holds positions 0 \.\. 2"):
        runtime.read_kv(0, 2, 3)
    with pytest.raises(ValueError, match=r"cannot read positions -1 \.\. 0"):
        runtime.read_kv(0, -1, 2)
    with pytest.raises(ValueError, match=r"layer must be in 0 \.\. 5"):
        runtime.read_kv(6, 0, 1)
    keys, values = runtime.read_kv(4, 0, 3)  # a shared layer reads the rows of its source
    assert keys.shape == values.shape == (3, 1, 64)
