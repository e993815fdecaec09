"""Loading Gemma 3 and Gemma 4 from a Hugging Face model directory.

References: transformers' Gemma3ForCausalLM and Gemma4ForCausalLM with seeded random weights
(float32, eager attention), saved with ``save_pretrained`` as safetensors; the same weights
written to GGUF by the writers of test_gemma4.py, which follow llama.cpp's converter; and
transformers' PreTrainedTokenizerFast on a tokenizer.json trained for the test with the
``tokenizers`` library.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import turboquant
from turboquant import _core
from turboquant.hf_model import hf_model_arguments

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

sys.path.insert(0, os.path.dirname(__file__))
from test_gemma4 import gemma3_pair, gemma4_reference, prompt, reference_logits, write_gemma4_gguf  # noqa: E402

# Logits reach about 110 in magnitude; the observed difference to transformers is below 2e-5
# (float32 summation order). 2e-4 is the bound of test_gemma4.py: a wrong norm offset, RoPE
# table or tensor mapping moves logits by order 1.
ATOL = 2e-4
G3_LAYERS = 6
G3_QUERY_SCALAR = 16  # hidden / heads, unlike head_dim 32


def runtime_options():
    return dict(cache_type_k="f32", cache_type_v="f32", exact_matmul=True)


def greedy_ids(core, tokens, n_new):
    """Greedy continuation of tokens by a _core.Model, one decode step per token."""
    logits = core.eval(tokens, logits="last")
    generated = []
    for _ in range(n_new):
        token = int(np.argmax(logits.reshape(-1)))
        generated.append(token)
        logits = core.eval([token], logits="last")
    return generated


def reference_greedy_ids(model, tokens, n_new):
    with torch.no_grad():
        output = model.generate(torch.tensor([tokens]), max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                top_k=None, top_p=None, pad_token_id=None, eos_token_id=None)
    return output[0, len(tokens):].tolist()


# ---- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    """(reference model, directory, GGUF path) of a tiny Gemma 3 with linear RoPE scaling 8."""
    root = tmp_path_factory.mktemp("gemma3")
    model = gemma3_pair(root / "model.gguf", G3_LAYERS, G3_QUERY_SCALAR, write_query_scalar=True)
    model.save_pretrained(root / "hf")
    return model, root / "hf", root / "model.gguf"


@pytest.fixture(scope="module")
def gemma4(tmp_path_factory):
    """(reference model, sharded directory, GGUF path) of a tiny Gemma 4 with per-layer embeddings,
    shared KV layers of both kinds and a final logit softcap."""
    root = tmp_path_factory.mktemp("gemma4")
    model, config = gemma4_reference("ple_softcap")
    # About 1.4 MB of float32 weights in shards of at most 300 kB.
    model.save_pretrained(root / "hf", max_shard_size="300KB")
    write_gemma4_gguf(root / "model.gguf", model, config)
    return model, root / "hf", root / "model.gguf"


# ---- Gemma 3 ----------------------------------------------------------------------------------

def test_gemma3_directory_matches_transformers(gemma3):
    model, directory, _ = gemma3
    tokens = prompt(model.config.vocab_size, length=30, seed=6)
    loaded = turboquant.Model.load(directory, **runtime_options())
    assert loaded.config["query_pre_attn_scalar"] == G3_QUERY_SCALAR
    assert loaded.config["rope_scale_global"] == 8.0
    np.testing.assert_allclose(loaded.logits(tokens), reference_logits(model, tokens), rtol=0, atol=ATOL)


def test_gemma3_greedy_continuation_matches(gemma3):
    model, directory, _ = gemma3
    tokens = prompt(model.config.vocab_size, length=12, seed=8)
    core = _core.Model(str(directory), **runtime_options(),
                       **hf_model_arguments(directory))
    assert greedy_ids(core, tokens, 16) == reference_greedy_ids(model, tokens, 16)


def test_gemma3_directory_matches_gguf(gemma3):
    # Both formats hold the same float32 values (the GGUF writer adds 1 to norms in float32,
    # as the directory loader does), so the logits are identical.
    model, directory, gguf_path = gemma3
    tokens = prompt(model.config.vocab_size, length=30, seed=9)
    from_directory = turboquant.Model.load(directory, **runtime_options()).logits(tokens)
    from_gguf = turboquant.Model.load(gguf_path, **runtime_options()).logits(tokens)
    np.testing.assert_array_equal(from_directory, from_gguf)


# ---- Gemma 4 ----------------------------------------------------------------------------------

def test_gemma4_sharded_directory_has_index(gemma4):
    _, directory, _ = gemma4
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (directory / "model.safetensors").exists()


def test_gemma4_directory_matches_transformers(gemma4):
    model, directory, _ = gemma4
    tokens = prompt(model.config.vocab_size, length=40, seed=1)
    loaded = turboquant.Model.load(directory, **runtime_options())
    assert loaded.config["final_logit_softcap"] == 30.0
    assert loaded.config["n_kv_shared_layers"] == 2
    np.testing.assert_allclose(loaded.logits(tokens), reference_logits(model, tokens), rtol=0, atol=ATOL)


def test_gemma4_greedy_continuation_matches(gemma4):
    model, directory, _ = gemma4
    tokens = prompt(model.config.vocab_size, length=12, seed=3)
    core = _core.Model(str(directory), **runtime_options(),
                       **hf_model_arguments(directory))
    assert greedy_ids(core, tokens, 16) == reference_greedy_ids(model, tokens, 16)


def test_gemma4_directory_matches_gguf(gemma4):
    model, directory, gguf_path = gemma4
    tokens = prompt(model.config.vocab_size, length=40, seed=4)
    from_directory = turboquant.Model.load(directory, **runtime_options()).logits(tokens)
    from_gguf = turboquant.Model.load(gguf_path, **runtime_options()).logits(tokens)
    np.testing.assert_array_equal(from_directory, from_gguf)


def test_gemma4_plain_layer_pattern(tmp_path):
    # Global layers at 1 and 5 follow no fixed period, and there are no per-layer embeddings
    # and no softcap: the loader passes layer_types through as they are.
    model, _ = gemma4_reference("plain")
    model.save_pretrained(tmp_path)
    tokens = prompt(model.config.vocab_size, length=30, seed=2)
    loaded = turboquant.Model.load(tmp_path, **runtime_options())
    np.testing.assert_allclose(loaded.logits(tokens), reference_logits(model, tokens), rtol=0, atol=ATOL)


@pytest.mark.parametrize("exact_matmul", [True, False])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_weights(tmp_path, dtype, exact_matmul):
    # Matrices stay in the mapped shards as BF16 or F16. The reference is a fresh float32
    # model with the same rounded weights (converting the half model back would also round
    # its RoPE frequency buffers), so the tolerance is the float32 one. The default
    # products keep float activations for these types too, so both paths meet it.
    half, _ = gemma4_reference("ple_softcap")
    half.to(getattr(torch, dtype)).save_pretrained(tmp_path)
    model, _ = gemma4_reference("ple_softcap")
    rounded = {name: value.to(torch.float32) for name, value in half.state_dict().items()}
    model.load_state_dict(rounded)
    tokens = prompt(model.config.vocab_size, length=24, seed=5)
    loaded = turboquant.Model.load(tmp_path, cache_type_k="f32", cache_type_v="f32", exact_matmul=exact_matmul)
    np.testing.assert_allclose(loaded.logits(tokens), reference_logits(model, tokens), rtol=0, atol=ATOL)


# ---- tokenizer --------------------------------------------------------------------------------

SPACE_MARK = "\u2581"
TRAINING_TEXT = ("the quick brown fox jumps over the lazy dog while the small cat sleeps in the warm sun "
                 "and the birds sing songs about rivers, mountains and the sea. ") * 8
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]


def write_tokenizer_json(path, vocab_size):
    """Write a Gemma-style BPE tokenizer.json of exactly vocab_size tokens: <pad> 0, <eos> 1,
    <bos> 2, <unk> 3 (added special tokens), byte tokens <0x00> to <0xFF> at 4 to 259 (plain
    vocabulary entries, as in Gemma's vocabulary), then tokens trained on TRAINING_TEXT.
    Normalizer, pre-tokenizer, decoder and BOS template are the ones GemmaTokenizer sets."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    def pipeline(tokenizer):
        tokenizer.normalizer = normalizers.Replace(" ", SPACE_MARK)
        tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
        return tokenizer

    n_fixed = len(SPECIAL_TOKENS) + 256
    trained = pipeline(Tokenizer(models.BPE(unk_token="<unk>")))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - n_fixed + 1, special_tokens=["<unk>"], show_progress=False)
    trained.train_from_iterator([TRAINING_TEXT], trainer)
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"<0x{byte:02X}>": len(SPECIAL_TOKENS) + byte for byte in range(256)})
    for token, _ in sorted(trained.get_vocab().items(), key=lambda item: item[1]):
        if token not in vocab:
            vocab[token] = len(vocab)
    merges = [tuple(pair) for pair in json.loads(trained.to_str())["model"]["merges"]]
    assert len(vocab) == vocab_size

    tokenizer = pipeline(Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                                              fuse_unk=True)))
    tokenizer.decoder = decoders.Sequence([decoders.Replace(SPACE_MARK, " "), decoders.ByteFallback(),
                                           decoders.Fuse()])
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tokenizer.save(str(path))


TOKENIZER_VOCAB = 320


@pytest.fixture(scope="module")
def gemma3_with_tokenizer(tmp_path_factory):
    """(reference model, directory) of a tiny Gemma 3 with a tokenizer.json of its vocabulary size."""
    directory = tmp_path_factory.mktemp("gemma3_tokenizer")
    config = transformers.Gemma3TextConfig(
        vocab_size=TOKENIZER_VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, sliding_window=6, max_position_embeddings=128,
        attn_implementation="eager", tie_word_embeddings=True)
    model = transformers.Gemma3ForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(directory)
    write_tokenizer_json(directory / "tokenizer.json", TOKENIZER_VOCAB)
    return model, directory


def test_tokenizer_ids_match_transformers(gemma3_with_tokenizer):
    from transformers import PreTrainedTokenizerFast

    _, directory = gemma3_with_tokenizer
    reference = PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))
    loaded = turboquant.Model.load(directory, **runtime_options())
    assert loaded.tokenizer is not None
    assert loaded.tokenizer.n_vocab == TOKENIZER_VOCAB
    for text in ["the lazy dog sleeps", "rivers and mountains, and the sea.", "zebra ünïcode 日本"]:
        assert loaded.tokenize(text) == reference.encode(text)


def test_generate_text_from_directory(gemma3_with_tokenizer):
    # Greedy text generation runs the attached tokenizer and model; the continuation's ids
    # equal transformers' greedy ids for the same prompt.
    from transformers import PreTrainedTokenizerFast

    model, directory = gemma3_with_tokenizer
    reference = PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))
    prompt_ids = reference.encode("the quick brown fox")
    expected = reference_greedy_ids(model, prompt_ids, 8)
    loaded = turboquant.Model.load(directory, **runtime_options())
    text = loaded.generate("the quick brown fox", max_tokens=8, temperature=0.0, stop=[])
    assert text == reference.decode(expected, skip_special_tokens=True)


def test_directory_without_tokenizer_runs_ids(gemma3):
    model, directory, _ = gemma3
    loaded = turboquant.Model.load(directory, **runtime_options())
    assert loaded.tokenizer is None
    assert loaded.logits([2, 5, 7]).shape == (3, model.config.vocab_size)
    with pytest.raises(ValueError, match="has no tokenizer"):
        loaded.generate("hello")


# ---- command line -----------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--model", "--weights"])
def test_cli_generate_from_directory(gemma3_with_tokenizer, flag):
    _, directory = gemma3_with_tokenizer
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-m", "turboquant", "generate", flag, str(directory), "--prompt", "the quick brown fox",
         "-n", "4", "--json"],
        capture_output=True, text=True, cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["model"] == str(directory)
    assert 1 <= output["completion_tokens"] <= 4


# ---- bad directories --------------------------------------------------------------------------

def copy_directory(source, target):
    target.mkdir()
    for name in os.listdir(source):
        (target / name).write_bytes((source / name).read_bytes())
    return target


def test_missing_config(gemma3, tmp_path):
    directory = copy_directory(gemma3[1], tmp_path / "model")
    (directory / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        turboquant.Model.load(directory)


def test_missing_shard(gemma4, tmp_path):
    directory = copy_directory(gemma4[1], tmp_path / "model")
    shard = sorted(json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"].values())[0]
    (directory / shard).unlink()
    with pytest.raises(FileNotFoundError, match=shard):
        turboquant.Model.load(directory)


def test_missing_weights(gemma3, tmp_path):
    directory = copy_directory(gemma3[1], tmp_path / "model")
    (directory / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        turboquant.Model.load(directory)


def test_unknown_architecture(gemma3, tmp_path):
    directory = copy_directory(gemma3[1], tmp_path / "model")
    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = "llama"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type 'llama' is not supported"):
        turboquant.Model.load(directory)


def rewrite_tensors(directory, change):
    """Apply change(dict of name -> array) to model.safetensors and write it back."""
    path = str(directory / "model.safetensors")
    tensors = dict(safetensors_numpy.load_file(path))
    change(tensors)
    safetensors_numpy.save_file(tensors, path, metadata={"format": "pt"})


def test_tensor_of_wrong_shape(gemma3, tmp_path):
    directory = copy_directory(gemma3[1], tmp_path / "model")
    name = "model.layers.1.mlp.up_proj.weight"

    def drop_row(tensors):
        tensors[name] = tensors[name][:-1]

    rewrite_tensors(directory, drop_row)
    with pytest.raises(ValueError, match=rf"{name} in model.safetensors has shape \[95, 64\]; .* expects \[96, 64\]"):
        turboquant.Model.load(directory)


def test_missing_tensor(gemma3, tmp_path):
    directory = copy_directory(gemma3[1], tmp_path / "model")
    name = "model.layers.3.self_attn.k_norm.weight"
    rewrite_tensors(directory, lambda tensors: tensors.pop(name))
    with pytest.raises(ValueError, match=f"tensor {name} is missing"):
        turboquant.Model.load(directory)


def test_unsupported_dtype(gemma3, tmp_path):
    directory = copy_directory(gemma3[1], tmp_path / "model")
    name = "model.layers.0.self_attn.q_proj.weight"

    def to_float64(tensors):
        tensors[name] = tensors[name].astype(np.float64)

    rewrite_tensors(directory, to_float64)
    with pytest.raises(NotImplementedError, match=f"{name} in model.safetensors has dtype F64"):
        turboquant.Model.load(directory)


def test_tokenizer_larger_than_model(gemma3, gemma3_with_tokenizer, tmp_path):
    # The 320-token tokenizer.json next to a model with 64 embedding rows.
    directory = copy_directory(gemma3[1], tmp_path / "model")
    (directory / "tokenizer.json").write_bytes((gemma3_with_tokenizer[1] / "tokenizer.json").read_bytes())
    with pytest.raises(ValueError, match="tokenizer has 320 tokens but the embedding has only 64 rows"):
        turboquant.Model.load(directory)


def test_unsupported_activation(gemma3, tmp_path):
    directory = copy_directory(gemma3[1], tmp_path / "model")
    config = json.loads((directory / "config.json").read_text())
    config["hidden_activation"] = "silu"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hidden_activation 'silu' is not supported"):
        turboquant.Model.load(directory)


def test_multimodal_checkpoint_layout(gemma3, tmp_path):
    # Multimodal checkpoints nest the text config in "text_config" and prefix the text model's
    # tensors with "model.language_model."; the vision tower's tensors are skipped.
    model, source, _ = gemma3
    directory = copy_directory(source, tmp_path / "model")
    text_config = json.loads((directory / "config.json").read_text())
    config = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
              "text_config": text_config, "vision_config": {"model_type": "siglip_vision_model"}}
    (directory / "config.json").write_text(json.dumps(config))

    def rename(tensors):
        for name in list(tensors):
            tensors["model.language_model." + name.removeprefix("model.")] = tensors.pop(name)
        tensors["model.vision_tower.patch_embedding.weight"] = np.ones((4, 3), dtype=np.float32)

    rewrite_tensors(directory, rename)
    tokens = prompt(model.config.vocab_size, length=20, seed=12)
    loaded = turboquant.Model.load(directory, **runtime_options())
    np.testing.assert_allclose(loaded.logits(tokens), reference_logits(model, tokens), rtol=0, atol=ATOL)


def core_with_specs(directory, specs):
    """A _core.Model on directory's config.json and shards with the given tensor specs."""
    metadata, shards, _ = hf_model_arguments(directory)["hf_weights"]
    return _core.Model(str(directory), hf_weights=(metadata, shards, specs))


@pytest.mark.parametrize("specs,error,message", [
    ([("token_embd.weight", "model.embed_tokens.weight", 0, False, 0.0, None)] * 2, ValueError,
     "tensor 'token_embd.weight' is listed twice"),
    ([("token_embd.weight", None, 0, False, 0.0, None)], ValueError, "exactly one of source and values"),
    ([("token_embd.weight", "model.embed_tokens.weight", 3, False, 0.0, None)], ValueError,
     r"shard index 3 is outside 0\.\.0"),
    ([("token_embd.weight", "model.no_such.weight", 0, False, 0.0, None)], ValueError,
     "tensor model.no_such.weight is missing from model.safetensors"),
    ([("rope_freqs.weight", None, 0, True, 0.0, np.ones(4, dtype=np.float64))], TypeError, "float32"),
])
def test_bad_tensor_specs(gemma3, specs, error, message):
    with pytest.raises(error, match=message):
        core_with_specs(gemma3[1], specs)
