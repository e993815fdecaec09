"""Gemma 4 forward pass of _core.Model on tiny random-weight models, and the Gemma 3 query
scale and RoPE scaling cases.

Reference: transformers' Gemma 4 (and Gemma 3) PyTorch classes with the same seeded random
weights, float32, eager attention. The weights reach our runtime through a GGUF file written
with the `gguf` package in the layout of llama.cpp's converter (tensor names, metadata keys,
rope_freqs for proportional RoPE). Models are fed token ids directly, because the tiny
vocabulary has no tokenizer.
"""

import threading

import numpy as np
import pytest

import gguf
import turboquant
from turboquant import _core

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SLIDING, FULL = "sliding_attention", "full_attention"

# Two tiny shapes that together cover every Gemma 4 feature the runtime reads. Both have
# layers of both kinds with different head sizes and shared-KV layers of both kinds. The
# first adds per-layer embeddings, double-wide MLPs on shared layers, the final logit
# softcap and grouped-query attention; the second has none of these. Widths are multiples
# of 32, so the same weights also fit Q8_0 blocks.
SHAPES = {
    "ple_softcap": dict(
        vocab=96, hidden=64, ffn=96, heads=4, kv_heads=2, head_dim=32, global_head_dim=64, window=8,
        layer_types=[SLIDING, SLIDING, FULL, SLIDING, FULL], shared=2, per_layer=32, softcap=30.0,
        double_wide=True,
    ),
    "plain": dict(
        vocab=64, hidden=96, ffn=64, heads=2, kv_heads=1, head_dim=64, global_head_dim=128, window=5,
        layer_types=[SLIDING, FULL, SLIDING, SLIDING, SLIDING, FULL], shared=3, per_layer=0, softcap=None,
        double_wide=False,
    ),
}
CONTEXT = 128


def gemma4_reference(shape, seed=0, **config_overrides):
    """transformers' Gemma4ForCausalLM with every parameter drawn from N(0, 0.25^2) (norm
    weights and layer scalars around 1, the embedding at scale 1), float32.
    shape: a name in SHAPES or a dict with the same keys.
    config_overrides go to Gemma4TextConfig, vocab_size and tie_word_embeddings among them."""
    s = SHAPES[shape] if isinstance(shape, str) else shape
    vocab = config_overrides.pop("vocab_size", s["vocab"])
    tied = config_overrides.pop("tie_word_embeddings", True)
    config = transformers.Gemma4TextConfig(**config_overrides,
        vocab_size=vocab, hidden_size=s["hidden"], intermediate_size=s["ffn"],
        num_hidden_layers=len(s["layer_types"]), num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
        head_dim=s["head_dim"], global_head_dim=s["global_head_dim"], max_position_embeddings=CONTEXT,
        sliding_window=s["window"], layer_types=list(s["layer_types"]), num_kv_shared_layers=s["shared"],
        hidden_size_per_layer_input=s["per_layer"], vocab_size_per_layer_input=vocab,
        final_logit_softcapping=s["softcap"], use_double_wide_mlp=s["double_wide"], rms_norm_eps=1e-6,
        rope_parameters={
            SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
            FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1e6},
        },
        attn_implementation="eager", tie_word_embeddings=tied,
    )
    model = transformers.Gemma4ForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith("norm.weight"):
                parameter.copy_(1.0 + 0.25 * noise)
            elif name.endswith("embed_tokens.weight"):
                parameter.copy_(noise)
            else:
                parameter.copy_(0.25 * noise)
        for layer in model.model.layers:
            layer.layer_scalar.copy_(1.0 + 0.25 * torch.randn(1, generator=generator))
    model.tie_weights()
    return model, config


# transformers name (after "model.layers.N.") -> GGUF name (after "blk.N."), as llama.cpp's
# converter maps them.
LAYER_TENSORS = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "self_attn.o_proj": "attn_output", "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "post_feedforward_layernorm": "post_ffw_norm",
    "per_layer_input_gate": "inp_gate", "per_layer_projection": "proj",
    "post_per_layer_input_norm": "post_norm",
}
GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
    "model.embed_tokens_per_layer.weight": "per_layer_token_embd.weight",
    "model.per_layer_model_projection.weight": "per_layer_model_proj.weight",
    "model.per_layer_projection_norm.weight": "per_layer_proj_norm.weight",
}


def gguf_tensors(model):
    """The model's tensors under their GGUF names, as float32 arrays (rows = outputs)."""
    tensors = {}
    for name, value in model.state_dict().items():
        array = value.detach().numpy().astype(np.float32)
        if name in GLOBAL_TENSORS:
            tensors[GLOBAL_TENSORS[name]] = array
            continue
        if name == "lm_head.weight" and not model.config.tie_word_embeddings:
            tensors["output.weight"] = array
            continue
        if not name.startswith("model.layers."):
            continue  # a tied lm_head is the embedding
        layer, rest = name[len("model.layers."):].split(".", 1)
        if rest == "layer_scalar":
            tensors[f"blk.{layer}.layer_output_scale.weight"] = array
            continue
        tensors[f"blk.{layer}.{LAYER_TENSORS[rest.removesuffix('.weight')]}.weight"] = array
    return tensors


def write_gemma4_gguf(path, model, config, weight_type="f32", drop_keys=(), overrides=None, shape=None):
    """Write model as a GGUF file with the metadata keys and tensor names of llama.cpp's
    converter. weight_type: "f32", "f16" or "q8_0" for the matrices (norms stay F32).
    shape: the dict model was built from, needed when it is not in SHAPES.
    Returns the weights as the runtime reads them (rounded to weight_type), by GGUF name."""
    if shape is None:
        shape = [s for s in SHAPES.values() if s["hidden"] == config.hidden_size][0]
    n_layers = config.num_hidden_layers
    writer = gguf.GGUFWriter(str(path), "gemma4")
    keys = {
        "block_count": lambda w: w.add_block_count(n_layers),
        "embedding_length": lambda w: w.add_embedding_length(config.hidden_size),
        "feed_forward_length": lambda w: w.add_feed_forward_length(
            [config.intermediate_size * (2 if shape["double_wide"] and layer >= n_layers - shape["shared"] else 1)
             for layer in range(n_layers)]),
        "head_count": lambda w: w.add_head_count(config.num_attention_heads),
        "head_count_kv": lambda w: w.add_head_count_kv(config.num_key_value_heads),
        "key_length": lambda w: w.add_key_length(shape["global_head_dim"]),
        "value_length": lambda w: w.add_value_length(shape["global_head_dim"]),
        "key_length_swa": lambda w: w.add_key_length_swa(shape["head_dim"]),
        "value_length_swa": lambda w: w.add_value_length_swa(shape["head_dim"]),
        "context_length": lambda w: w.add_context_length(CONTEXT),
        "rms_eps": lambda w: w.add_layer_norm_rms_eps(1e-6),
        "rope_freq_base": lambda w: w.add_rope_freq_base(1e6),
        "rope_freq_base_swa": lambda w: w.add_rope_freq_base_swa(1e4),
        "sliding_window": lambda w: w.add_sliding_window(shape["window"]),
        "sliding_window_pattern": lambda w: w.add_sliding_window_pattern(
            [t == SLIDING for t in shape["layer_types"]]),
        "shared_kv_layers": lambda w: w.add_shared_kv_layers(shape["shared"]),
        "per_layer_input": lambda w: w.add_embedding_length_per_layer_input(shape["per_layer"]),
        "rope_dimension_count": lambda w: w.add_rope_dimension_count(shape["global_head_dim"]),
        "rope_dimension_count_swa": lambda w: w.add_rope_dimension_count_swa(shape["head_dim"]),
    }
    if shape["softcap"]:
        keys["softcap"] = lambda w: w.add_final_logit_softcapping(shape["softcap"])
    keys.update(overrides or {})
    for key, add in keys.items():
        if key not in drop_keys:
            add(writer)

    tensors = gguf_tensors(model)
    # Proportional RoPE: the first quarter of the global pairs rotate, the converter marks
    # the others with frequency factor 1e30.
    half = shape["global_head_dim"] // 2
    rotated = half // 4
    tensors["rope_freqs.weight"] = np.array([1.0] * rotated + [1e30] * (half - rotated), dtype=np.float32)

    seen = {}
    for name, array in tensors.items():
        if array.ndim == 2 and weight_type == "f16":
            array = array.astype(np.float16)
            seen[name] = array.astype(np.float32)
            writer.add_tensor(name, array)
        elif array.ndim == 2 and weight_type == "q8_0":
            packed = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            seen[name] = gguf.quants.dequantize(packed, gguf.GGMLQuantizationType.Q8_0).reshape(array.shape)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            seen[name] = array
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return seen


def load_runtime_weights(model, seen):
    """Copy the weights as the runtime reads them (after F16 or Q8_0 rounding) into model."""
    inverse_global = {v: k for k, v in GLOBAL_TENSORS.items()}
    inverse_layer = {v: k for k, v in LAYER_TENSORS.items()}
    state = {}
    for name, array in seen.items():
        if name in inverse_global:
            state[inverse_global[name]] = array
        elif name.startswith("blk."):
            _, layer, kind, _ = name.split(".")
            if kind == "layer_output_scale":
                continue
            state[f"model.layers.{layer}.{inverse_layer[kind]}.weight"] = array
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=False)


def reference_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


def prompt(vocab, length=40, seed=1):
    return np.random.default_rng(seed).integers(0, vocab, size=length).tolist()


@pytest.fixture(scope="module", params=list(SHAPES))
def tiny(request, tmp_path_factory):
    """(shape name, reference model, config, GGUF path) of a tiny F32 Gemma 4."""
    model, config = gemma4_reference(request.param)
    path = tmp_path_factory.mktemp("gemma4") / f"{request.param}.gguf"
    write_gemma4_gguf(path, model, config)
    return request.param, model, config, path


# ---- Logits and greedy continuations ------------------------------------------------------

# Logits of these models stay below 30 in magnitude (softcap) or reach about 110 (plain).
# The observed difference to transformers is 1.3e-5 and 3.1e-5 (float32 summation order);
# 2e-4 leaves a margin of 6 or more, while a wrong window, RoPE pairing, norm, PLE or
# shared-KV source moves logits by order 1.
ATOL = 2e-4


@pytest.mark.parametrize("n_batch", [0, 7])
def test_gemma4_logits_match_transformers(tiny, n_batch):
    # 40 tokens exceed the sliding windows (8 and 5). n_batch 7 splits the prompt into
    # micro-batches, so later ones read K/V (own and shared) written by earlier ones.
    shape, model, config, path = tiny
    tokens = prompt(config.vocab_size)
    expected = reference_logits(model, tokens)
    runtime = _core.Model(str(path), cache_type_k="f32", cache_type_v="f32", n_batch=n_batch, exact_matmul=True)
    logits = runtime.eval(tokens, logits="all")
    np.testing.assert_allclose(logits, expected, rtol=0, atol=ATOL)


def test_gemma4_long_micro_batch(tiny):
    # A micro-batch of 200 tokens is longer than the 128 positions that Gemma 3 layers
    # write at a time plus the window. A shared-KV layer reads its source layer's ring
    # after that layer wrote the whole micro-batch, so the ring must keep all of it.
    shape, model, config, path = tiny
    tokens = prompt(config.vocab_size, length=200, seed=3)
    expected = reference_logits(model, tokens)
    runtime = _core.Model(str(path), cache_type_k="f32", cache_type_v="f32", ctx=256, exact_matmul=True)
    np.testing.assert_allclose(runtime.eval(tokens, logits="all"), expected, rtol=0, atol=ATOL)


def test_gemma4_greedy_continuation_matches(tiny):
    shape, model, config, path = tiny
    tokens = prompt(config.vocab_size, length=12, seed=2)
    with torch.no_grad():
        generated = model.generate(torch.tensor([tokens]), max_new_tokens=20, do_sample=False,
                                   pad_token_id=0, eos_token_id=None)[0, len(tokens):].tolist()
    runtime = _core.Model(str(path), cache_type_k="f32", cache_type_v="f32", exact_matmul=True)
    logits = runtime.eval(tokens, logits="last")
    ours = []
    for _ in range(20):
        ours.append(int(np.argmax(logits)))
        logits = runtime.eval([ours[-1]], logits="last")
    assert ours == generated


def test_gemma4_config_from_metadata(tiny):
    shape, model, config, path = tiny
    s = SHAPES[shape]
    runtime = _core.Model(str(path), cache_type_k="f32", cache_type_v="f32")
    got = runtime.config
    assert got["architecture"] == "gemma4"
    assert got["head_dim"] == s["global_head_dim"]
    assert got["head_dim_local"] == s["head_dim"]
    assert got["rope_dims_global"] == s["global_head_dim"] // 4
    assert got["n_kv_shared_layers"] == s["shared"]
    assert got["per_layer_input"] == s["per_layer"]
    assert got["final_logit_softcap"] == (s["softcap"] or 0.0)
    assert got["global_layers"] == [i for i, t in enumerate(s["layer_types"]) if t == FULL]
    assert got["query_pre_attn_scalar"] == 1.0
    assert runtime.tokenizer is None


@pytest.mark.parametrize("weight_type", ["f16", "q8_0"])
def test_gemma4_rounded_weights_match_transformers(tmp_path, weight_type):
    # The reference gets the same rounded weights (NumPy's F16 cast, gguf's Q8_0
    # dequantizer). exact_matmul keeps activations in float32, so the tolerance is the
    # one of the F32 test.
    model, config = gemma4_reference("ple_softcap", seed=3)
    path = tmp_path / f"tiny_{weight_type}.gguf"
    seen = write_gemma4_gguf(path, model, config, weight_type=weight_type)
    load_runtime_weights(model, seen)
    tokens = prompt(config.vocab_size, seed=4)
    expected = reference_logits(model, tokens)
    runtime = _core.Model(str(path), cache_type_k="f32", cache_type_v="f32", exact_matmul=True)
    np.testing.assert_allclose(runtime.eval(tokens, logits="all"), expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("cache_type", ["f16", "q8_0"])
def test_gemma4_cache_types_close(tiny, cache_type):
    # f16 keeps 11 significant bits, q8_0 8 bits per value with a scale per 32 values.
    # The observed max logit errors are 0.004 and 0.008 (f16) and 0.16 and 0.22 (q8_0) on
    # logits up to 30 and 110. The bounds are 2 to 6 times that. A wrong cache layout (a
    # shared layer reading the wrong rows) moves logits by several units.
    shape, model, config, path = tiny
    tokens = prompt(config.vocab_size)
    expected = reference_logits(model, tokens)
    runtime = _core.Model(str(path), cache_type_k=cache_type, cache_type_v=cache_type, n_batch=7,
                          exact_matmul=True)
    bound = {"f16": 0.05, "q8_0": 0.5}[cache_type]
    assert np.abs(runtime.eval(tokens, logits="all") - expected).max() < bound


def test_gemma4_keys_as_values(tmp_path):
    # attention_k_eq_v: global layers have no v_proj and use the K projection as V, with
    # the V norm but neither the K norm nor RoPE. The converter then writes no attn_v.
    model, config = gemma4_reference("plain", seed=8, attention_k_eq_v=True)
    assert model.model.layers[1].self_attn.v_proj is None
    path = tmp_path / "k_eq_v.gguf"
    write_gemma4_gguf(path, model, config)
    tokens = prompt(config.vocab_size, seed=9)
    runtime = _core.Model(str(path), cache_type_k="f32", cache_type_v="f32", n_batch=7, exact_matmul=True)
    np.testing.assert_allclose(runtime.eval(tokens, logits="all"), reference_logits(model, tokens), rtol=0,
                               atol=ATOL)


def test_gemma4_quantized_activations_close(tmp_path):
    # The default path rounds activations to 8 bits per block (as llama.cpp does) before
    # the Q8_0 weight products, so logits drift from the float reference. Over seeds 3 to 7
    # the observed max error was 0.25 to 0.55 and the mean error 0.05 to 0.075, on logits up
    # to 30, with every greedy choice equal. The bounds are about 3 times that; a wrong
    # quantized kernel gives errors of several units.
    model, config = gemma4_reference("ple_softcap", seed=3)
    path = tmp_path / "tiny_q8_0.gguf"
    seen = write_gemma4_gguf(path, model, config, weight_type="q8_0")
    load_runtime_weights(model, seen)
    tokens = prompt(config.vocab_size, seed=4)
    expected = reference_logits(model, tokens)
    logits = _core.Model(str(path), cache_type_k="f32", cache_type_v="f32", n_batch=7).eval(tokens, logits="all")
    error = np.abs(logits - expected)
    assert error.max() < 1.5
    assert error.mean() < 0.2
    assert (logits.argmax(1) == expected.argmax(1)).mean() >= 0.9


def add_placeholder_vocabulary(writer, size):
    """Add a SentencePiece-type vocabulary of placeholder pieces, which llama.cpp needs to load
    a file (the runtime does not)."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(specials + [f"tok{i}" for i in range(len(specials), size)])
    writer.add_token_scores([0.0] * size)
    writer.add_token_types([3, 3, 3, 2] + [1] * (size - len(specials)))
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)


def test_gemma4_gguf_matches_llama_cpp(tmp_path):
    # llama.cpp (through llama-cpp-python) reads the same file, which checks that the tensor
    # names and metadata keys written here are those of llama.cpp's gemma4 loader. With an
    # f32 KV cache llama.cpp differs from transformers by 0.0025 (its gelu reads an f16
    # table); 0.01 leaves a margin of 4.
    # Only the "ple_softcap" shape: llama-cpp-python 0.3.36 aborts the process when the last
    # layer that stores K/V is not global (as in "plain"), while transformers and this
    # runtime pick the last stored layer of each kind. E2B and E4B end their stored layers
    # with a sliding layer then a global one, where both rules agree.
    llama_cpp = pytest.importorskip("llama_cpp")
    model, config = gemma4_reference("ple_softcap")
    path = tmp_path / "with_vocabulary.gguf"
    write_gemma4_gguf(path, model, config,
                      overrides={"vocabulary": lambda w: add_placeholder_vocabulary(w, config.vocab_size)})
    tokens = prompt(config.vocab_size, length=20)
    try:
        reference = llama_cpp.Llama(str(path), n_ctx=CONTEXT, logits_all=True, verbose=False, n_threads=2,
                                    type_k=0, type_v=0)
    except ValueError as error:
        pytest.skip(f"this llama.cpp build does not load gemma4 files: {error}")
    reference.eval(tokens)
    expected = np.array(reference.scores[: len(tokens)])
    runtime = _core.Model(str(path), cache_type_k="f32", cache_type_v="f32", exact_matmul=True)
    np.testing.assert_allclose(runtime.eval(tokens, logits="all"), expected, rtol=0, atol=0.01)


# ---- KV cache memory ----------------------------------------------------------------------

def expected_cache_bytes(shape, n_tokens, row_bytes, n_batch):
    """Bytes of K and V from the layer shapes: layers that store rows, each holding every
    position (global) or a ring of window + n_batch positions (sliding)."""
    s = SHAPES[shape]
    n_layers = len(s["layer_types"])
    total = 0
    for layer, kind in enumerate(s["layer_types"]):
        if layer >= n_layers - s["shared"]:
            continue  # shared-KV layers store nothing
        head_dim = s["head_dim"] if kind == SLIDING else s["global_head_dim"]
        held = n_tokens if kind == FULL else min(n_tokens, s["window"] + n_batch)
        total += 2 * held * s["kv_heads"] * row_bytes(head_dim)
    return total


@pytest.mark.parametrize("cache_type,row_bytes", [("f32", lambda d: 4 * d), ("f16", lambda d: 2 * d),
                                                  ("q8_0", lambda d: d // 32 * 34)])
def test_gemma4_shared_layers_store_nothing(tiny, cache_type, row_bytes):
    shape, model, config, path = tiny
    runtime = _core.Model(str(path), cache_type_k=cache_type, cache_type_v=cache_type, n_batch=4)
    runtime.eval(prompt(config.vocab_size, length=30), logits="none")
    assert runtime.kv_cache_bytes() == expected_cache_bytes(shape, 30, row_bytes, 4)


@pytest.mark.parametrize("cache_type", ["f16", "q8_0", "tq3"])
def test_kv_cache_memory_matches_model(tiny, cache_type):
    # kv_cache_memory builds the cache from the transformers configuration alone; the model
    # builds it from GGUF metadata. Both must give the same layout, so the same bytes.
    shape, model, config, path = tiny
    s = SHAPES[shape]
    if cache_type == "tq3" and s["head_dim"] < 64:
        pytest.skip("codec cache types need head_dim >= 64")
    layout = turboquant.gemma4_kv_layout(s["layer_types"], s["head_dim"], s["global_head_dim"], s["window"],
                                         s["kv_heads"], s["shared"])
    assert layout.storing_layers == len(s["layer_types"]) - s["shared"]
    runtime = _core.Model(str(path), cache_type_k=cache_type, cache_type_v=cache_type, n_batch=4)
    runtime.eval(prompt(config.vocab_size, length=30), logits="none")
    assert turboquant.kv_cache_memory(layout, 30, cache_type, n_batch=4) == runtime.kv_cache_bytes()


def test_gemma4_kv_layout_sources():
    # E2B's pattern (four sliding layers, then a global one) with its 20 shared layers:
    # layers 15..34 read layer 13 (sliding) or layer 14 (global).
    layer_types = ([SLIDING] * 4 + [FULL]) * 7
    layout = turboquant.gemma4_kv_layout(layer_types, 256, 512, 512, 1, 20)
    assert layout.kv_sources[:15] == tuple(range(15))
    assert layout.kv_sources[15:] == tuple(14 if t == FULL else 13 for t in layer_types[15:])
    assert layout.head_dims[4] == 512
    assert layout.windows[4] == 0
    assert layout.windows[3] == 512


def test_gemma4_kv_layout_errors():
    with pytest.raises(ValueError, match=r"layer_types\[1\] is 'global'"):
        turboquant.gemma4_kv_layout([SLIDING, "global"], 32, 64, 8, 1)
    with pytest.raises(ValueError, match="shared-KV layer 2 .full_attention. has no earlier"):
        turboquant.gemma4_kv_layout([SLIDING, SLIDING, FULL], 32, 64, 8, 1, 1)
    with pytest.raises(ValueError, match="n_kv_shared_layers must be from 0 to 2"):
        turboquant.gemma4_kv_layout([SLIDING, SLIDING, FULL], 32, 64, 8, 1, 3)


def test_kv_cache_memory_bad_tables():
    with pytest.raises(ValueError, match="windows has 1 entries; expected one per layer .2."):
        _core.kv_cache_memory([32, 64], [8], [0, 1], 1, 16)
    with pytest.raises(ValueError, match="layer 0 reads the KV rows of layer 1; it must be an earlier layer"):
        _core.kv_cache_memory([32, 32], [8, 8], [1, 1], 1, 16)
    with pytest.raises(ValueError, match=r"layer 1 \(head_dim 64, window 0\) cannot read the KV rows of layer 0"):
        _core.kv_cache_memory([32, 64], [8, 0], [0, 0], 1, 16)


def test_gemma4_codec_cache_runs(tiny):
    # The TurboQuant codecs need head sizes of at least 64, which only the "plain" shape
    # has on both layer kinds (64 and 128). With 4 bits per value the observed max logit
    # error is 3.9 on logits up to 108 (3.6%); the bound is 10%. The cache must also be
    # smaller than f16.
    shape, model, config, path = tiny
    if SHAPES[shape]["head_dim"] < 64:
        pytest.skip("codec cache types need head_dim >= 64")
    tokens = prompt(config.vocab_size)
    expected = reference_logits(model, tokens)
    runtime = _core.Model(str(path), cache_type_k="tq4", cache_type_v="tq4", exact_matmul=True)
    logits = runtime.eval(tokens, logits="all")
    assert np.isfinite(logits).all()
    relative = np.abs(logits - expected).max() / np.abs(expected).max()
    assert relative < 0.1
    assert runtime.kv_cache_bytes() < expected_cache_bytes(shape, len(tokens), lambda d: 2 * d, 512)


# ---- Contexts ---------------------------------------------------------------------------

# Contexts of one model share its weights and tables but must own every per-sequence
# buffer (KV cache, activations, per-layer embedding inputs, RoPE tables). The reference
# is one separately loaded model per sequence, which shares nothing. Both run the same C
# code with the same thread count and micro-batches, so the sums run in the same order and
# the logits are compared exactly.
CONTEXT_RUN = dict(cache_type_k="f32", cache_type_v="f32", n_batch=7, exact_matmul=True)


def sequence_chunks(vocab):
    """Two prompts in chunks of 9 tokens: longer than n_batch and the windows, so chunks
    span micro-batches and read rows that the earlier chunks wrote."""
    prompts = [prompt(vocab, length=36, seed=11), prompt(vocab, length=27, seed=12)]
    return [[tokens[i:i + 9] for i in range(0, len(tokens), 9)] for tokens in prompts]


def test_gemma4_contexts_interleaved(tiny):
    shape, model, config, path = tiny
    chunks = sequence_chunks(config.vocab_size)
    shared = _core.Model(str(path), **CONTEXT_RUN)
    contexts = [shared.create_context(), shared.create_context()]
    separate = [_core.Model(str(path), **CONTEXT_RUN), _core.Model(str(path), **CONTEXT_RUN)]
    for step in range(max(len(c) for c in chunks)):
        for sequence in (0, 1):
            if step >= len(chunks[sequence]):
                continue
            tokens = chunks[sequence][step]
            ours = contexts[sequence].eval(tokens, logits="all")
            expected = separate[sequence].eval(tokens, logits="all")
            np.testing.assert_array_equal(ours, expected, err_msg=f"sequence {sequence}, chunk {step}")


def test_gemma4_contexts_on_threads(tiny):
    # The forward pass releases the GIL, so the two contexts run at the same time.
    shape, model, config, path = tiny
    chunks = sequence_chunks(config.vocab_size)
    shared = _core.Model(str(path), threads=1, **CONTEXT_RUN)
    contexts = [shared.create_context(), shared.create_context()]
    results = [[], []]
    start = threading.Barrier(2)

    def run(sequence):
        start.wait()
        for tokens in chunks[sequence]:
            results[sequence].append(contexts[sequence].eval(tokens, logits="all"))

    threads = [threading.Thread(target=run, args=(sequence,)) for sequence in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for sequence in (0, 1):
        alone = _core.Model(str(path), threads=1, **CONTEXT_RUN)
        assert len(results[sequence]) == len(chunks[sequence])
        for step, tokens in enumerate(chunks[sequence]):
            np.testing.assert_array_equal(results[sequence][step], alone.eval(tokens, logits="all"),
                                          err_msg=f"sequence {sequence}, chunk {step}")


# ---- Bad files ----------------------------------------------------------------------------

def test_gemma4_missing_layer_pattern(tmp_path):
    model, config = gemma4_reference("plain")
    path = tmp_path / "no_pattern.gguf"
    write_gemma4_gguf(path, model, config, drop_keys=("sliding_window_pattern",))
    with pytest.raises(ValueError, match="gemma4.attention.sliding_window_pattern"):
        _core.Model(str(path))


def test_gemma4_too_many_shared_layers(tmp_path):
    model, config = gemma4_reference("plain")
    path = tmp_path / "all_shared.gguf"
    write_gemma4_gguf(path, model, config, overrides={"shared_kv_layers": lambda w: w.add_shared_kv_layers(6)})
    with pytest.raises(ValueError, match="shared_kv_layers 6 must be below block_count 6"):
        _core.Model(str(path))


@pytest.mark.parametrize("key,add,error,message", [
    ("sliding_window_pattern", lambda w: w.add_sliding_window_pattern([True, False]), ValueError,
     r"sliding_window_pattern has 2 bool values; expected 6 bools"),
    ("feed_forward_length", lambda w: w.add_feed_forward_length([64] * 5), ValueError,
     r"feed_forward_length is an array of 5 int32 values; expected one integer or 6 integers"),
    ("head_count_kv", lambda w: w.add_head_count_kv([1, 2, 1, 1, 1, 2]), NotImplementedError,
     r"head_count_kv differs between layers \(1 in layer 0, 2 in layer 1\)"),
])
def test_gemma4_bad_per_layer_metadata(tmp_path, key, add, error, message):
    model, config = gemma4_reference("plain")
    path = tmp_path / f"bad_{key}.gguf"
    write_gemma4_gguf(path, model, config, overrides={key: add})
    with pytest.raises(error, match=message):
        _core.Model(str(path))


def test_gemma4_wrong_head_size(tmp_path):
    # key_length 64 disagrees with every global-layer tensor; rope_freqs (64 pairs for
    # head_dim 128) is the first one read.
    model, config = gemma4_reference("plain")
    path = tmp_path / "wrong_head.gguf"
    write_gemma4_gguf(path, model, config, overrides={
        "key_length": lambda w: w.add_key_length(64), "value_length": lambda w: w.add_value_length(64),
        "rope_dimension_count": lambda w: w.add_rope_dimension_count(64)})
    with pytest.raises(ValueError, match=r"rope_freqs\.weight has shape \[64, 1, 1, 1\].*expects \[32, 1\]"):
        _core.Model(str(path))


# ---- Gemma 3: query scale and linear RoPE scaling ------------------------------------------

G3 = dict(vocab=64, hidden=64, ffn=96, heads=4, kv_heads=2, head_dim=32, window=6)


def gemma3_pair(path, n_layers, query_scalar, write_query_scalar, seed=5):
    """A tiny transformers Gemma 3 with linear RoPE scaling 8 on global layers, and the
    same weights in a GGUF file written as llama.cpp's converter does (norms as 1 + w)."""
    config = transformers.Gemma3TextConfig(
        vocab_size=G3["vocab"], hidden_size=G3["hidden"], intermediate_size=G3["ffn"], num_hidden_layers=n_layers,
        num_attention_heads=G3["heads"], num_key_value_heads=G3["kv_heads"], head_dim=G3["head_dim"],
        query_pre_attn_scalar=query_scalar, sliding_window=G3["window"], max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-6, rope_parameters={SLIDING: {"rope_type": "default", "rope_theta": 1e4},
                                            FULL: {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}},
        attn_implementation="eager", tie_word_embeddings=True,
    )
    model = transformers.Gemma3ForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 1.0 if name.endswith("embed_tokens.weight") else 0.25
            parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))
    model.tie_weights()

    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_block_count(n_layers)
    writer.add_embedding_length(G3["hidden"])
    writer.add_feed_forward_length(G3["ffn"])
    writer.add_head_count(G3["heads"])
    writer.add_head_count_kv(G3["kv_heads"])
    writer.add_key_length(G3["head_dim"])
    writer.add_value_length(G3["head_dim"])
    writer.add_context_length(CONTEXT)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1e6)
    writer.add_sliding_window(G3["window"])
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(8.0)
    if write_query_scalar:
        writer.add_float32("gemma3.attention.query_pre_attn_scalar", float(query_scalar))
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
             "self_attn.o_proj": "attn_output", "post_attention_layernorm": "post_attention_norm",
             "pre_feedforward_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "post_feedforward_layernorm": "post_ffw_norm"}
    for name, value in model.state_dict().items():
        array = value.numpy().astype(np.float32)
        if name.endswith("norm.weight"):
            array = array + 1.0  # Gemma3RMSNorm multiplies by (1 + w)
        if name == "model.embed_tokens.weight":
            writer.add_tensor("token_embd.weight", array)
        elif name == "model.norm.weight":
            writer.add_tensor("output_norm.weight", array)
        elif name.startswith("model.layers."):
            layer, rest = name[len("model.layers."):].split(".", 1)
            writer.add_tensor(f"blk.{layer}.{names[rest.removesuffix('.weight')]}.weight", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.mark.parametrize("n_layers,write_query_scalar", [(62, False), (6, True)])
def test_gemma3_query_scale_and_rope_scaling(tmp_path, n_layers, write_query_scalar):
    # query_pre_attn_scalar = hidden / heads = 16 differs from head_dim 32. GGUF files from
    # llama.cpp's converter do not store it, and llama.cpp derives it for 62-layer models
    # (27B), so the 62-layer case checks that rule. The 6-layer case sets it with the
    # optional gemma3.attention.query_pre_attn_scalar key. Tolerance as for Gemma 4.
    query_scalar = G3["hidden"] // G3["heads"]
    path = tmp_path / "gemma3.gguf"
    model = gemma3_pair(path, n_layers, query_scalar, write_query_scalar)
    tokens = prompt(G3["vocab"], length=30, seed=6)
    expected = reference_logits(model, tokens)
    runtime = _core.Model(str(path), cache_type_k="f32", cache_type_v="f32", n_batch=7, exact_matmul=True)
    assert runtime.config["query_pre_attn_scalar"] == query_scalar
    assert runtime.config["rope_scale_global"] == 8.0
    np.testing.assert_allclose(runtime.eval(tokens, logits="all"), expected, rtol=0, atol=ATOL)


# ---- Python API ---------------------------------------------------------------------------

def test_model_load_runs_token_ids(tiny):
    # A test model has no vocabulary: turboquant.Model loads it, returns logits for token
    # ids, and rejects text with a message that names the file.
    shape, model, config, path = tiny
    tokens = prompt(config.vocab_size, length=16, seed=7)
    loaded = turboquant.Model.load(path, cache_type_k="f32", cache_type_v="f32", exact_matmul=True)
    assert loaded.tokenizer is None
    np.testing.assert_allclose(loaded.logits(tokens), reference_logits(model, tokens), rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="has no tokenizer metadata"):
        loaded.generate("hello")
    with pytest.raises(ValueError, match="has no tokenizer metadata"):
        loaded.generate(tokens)
