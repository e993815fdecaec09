"""Load Gemma 3 and Gemma 4 from a Hugging Face model directory.

A directory contains ``config.json``, the weights as ``model.safetensors`` or as shards listed in
``model.safetensors.index.json``, and optionally ``tokenizer.json``. This module turns
``config.json`` into the GGUF metadata keys that the C model loader reads, and maps each
transformers tensor name to the GGUF name of llama.cpp's converter. The C core then reads the
tensors from the mapped shards without copying F32, F16 and BF16 matrices
(``csrc/hf_weights.h``); only norms are copied to float32.

Norms: transformers' Gemma 3 RMSNorm multiplies by ``1 + w``, so Gemma 3 norm weights get 1
added while loading (llama.cpp's converter adds it when writing GGUF). Gemma 4's RMSNorm
multiplies by ``w`` directly, so its norms are used as stored.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from .config import _hf_rope
from .safetensors import SafetensorsIndex

__all__ = ["hf_model_arguments"]

CONFIG_NAME = "config.json"
TOKENIZER_NAME = "tokenizer.json"

# model_type of config.json (or of its text_config) -> GGUF architecture.
_ARCHITECTURES = {"gemma3": "gemma3", "gemma3_text": "gemma3", "gemma4": "gemma4", "gemma4_text": "gemma4"}

# Prefixes of the text model's tensors: causal LM checkpoints, then the multimodal
# checkpoints of transformers 5.x and 4.x.
_PREFIXES = ("model.", "model.language_model.", "language_model.model.")

# transformers name after "model.layers.N." (without ".weight") -> GGUF name after "blk.N.".
_LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "post_feedforward_layernorm": "post_ffw_norm",
    "per_layer_input_gate": "inp_gate",
    "per_layer_projection": "proj",
    "post_per_layer_input_norm": "post_norm",
}
_GLOBAL_TENSORS = {
    "embed_tokens": "token_embd",
    "norm": "output_norm",
    "embed_tokens_per_layer": "per_layer_token_embd",
    "per_layer_model_projection": "per_layer_model_proj",
    "per_layer_projection_norm": "per_layer_proj_norm",
}
_ATTENTION = ("self_attn.q_proj", "self_attn.q_norm", "self_attn.o_proj")
_KEY_VALUE = ("self_attn.k_proj", "self_attn.k_norm", "self_attn.v_proj")
_BLOCK = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "mlp.gate_proj",
          "mlp.up_proj", "mlp.down_proj", "post_feedforward_layernorm")
_PER_LAYER_INPUT = ("per_layer_input_gate", "per_layer_projection", "post_per_layer_input_norm")

# rope_freqs factor of a frequency pair that does not rotate (llama.cpp's converter writes
# 1e30 for the pairs that Gemma 4's proportional RoPE leaves unrotated).
_UNROTATED_FACTOR = 1e30


# ---- GGUF metadata ---------------------------------------------------------------------------

_GGUF_UINT32, _GGUF_FLOAT32, _GGUF_BOOL, _GGUF_STRING, _GGUF_ARRAY = 4, 6, 7, 8, 9


def _gguf_string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _gguf_value(value) -> bytes:
    """Encode a metadata value: str, bool, int (uint32), float (float32) or a list of bool or int."""
    if isinstance(value, str):
        return struct.pack("<I", _GGUF_STRING) + _gguf_string(value)
    if isinstance(value, bool):
        return struct.pack("<IB", _GGUF_BOOL, value)
    if isinstance(value, int):
        return struct.pack("<II", _GGUF_UINT32, value)
    if isinstance(value, float):
        return struct.pack("<If", _GGUF_FLOAT32, value)
    if all(isinstance(item, bool) for item in value):
        return struct.pack("<IIQ", _GGUF_ARRAY, _GGUF_BOOL, len(value)) + bytes(int(item) for item in value)
    return struct.pack("<IIQ", _GGUF_ARRAY, _GGUF_UINT32, len(value)) + struct.pack(f"<{len(value)}I", *value)


def gguf_metadata_bytes(metadata: dict) -> bytes:
    """Return a GGUF (version 3) file with the given metadata and no tensors."""
    parts = [b"GGUF", struct.pack("<IQQ", 3, 0, len(metadata))]
    for key, value in metadata.items():
        parts.append(_gguf_string(key) + _gguf_value(value))
    data = b"".join(parts)
    # The data section starts at the next multiple of the default alignment, 32.
    return data + b"\0" * (-len(data) % 32)


# ---- config.json ---------------------------------------------------------------------------

def _read_config(directory: str) -> tuple:
    """Return (architecture, text config) of config.json in directory."""
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} is missing; a Hugging Face model directory needs {CONFIG_NAME}")
    with open(path, "rb") as file:
        try:
            config = json.loads(file.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not valid UTF-8 JSON: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    text = config.get("text_config") or config
    model_type = text.get("model_type", config.get("model_type"))
    architecture = _ARCHITECTURES.get(model_type)
    if architecture is None:
        raise ValueError(f"{path}: model_type {model_type!r} is not supported; this runtime loads Gemma 3 "
                         f"and Gemma 4 models ({', '.join(sorted(_ARCHITECTURES))})")
    return architecture, text, path


def _check_common(text: dict, path: str) -> None:
    """Reject settings of both families that the C forward pass does not implement."""
    activation = text.get("hidden_activation", "gelu_pytorch_tanh")
    if activation != "gelu_pytorch_tanh":
        raise ValueError(f"{path}: hidden_activation {activation!r} is not supported; the runtime computes "
                         "'gelu_pytorch_tanh'")
    if text.get("attention_bias"):
        raise ValueError(f"{path}: attention_bias is true; the runtime has no attention biases")


def _require(text: dict, key: str, path: str):
    if text.get(key) is None:
        raise ValueError(f"{path}: {key} is missing")
    return text[key]


def _gemma3_metadata(text: dict, path: str) -> dict:
    from .config import Gemma3Config

    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if text.get(key) is not None:
            raise ValueError(f"{path}: {key} = {text[key]} is not supported for Gemma 3; expected null")
    # Gemma3Config checks the structure: every sliding_pattern-th layer global, RoPE types.
    config = Gemma3Config.from_hf(text)
    sliding_rope, _ = _hf_rope(text)
    metadata = {
        "general.architecture": "gemma3",
        "gemma3.block_count": config.num_layers,
        "gemma3.embedding_length": config.hidden_size,
        "gemma3.feed_forward_length": config.ffn_size,
        "gemma3.attention.head_count": config.num_heads,
        "gemma3.attention.head_count_kv": config.num_kv_heads,
        "gemma3.attention.key_length": config.head_dim,
        "gemma3.attention.value_length": config.head_dim,
        "gemma3.context_length": config.context_length,
        "gemma3.attention.sliding_window": config.sliding_window,
        "gemma3.attention.sliding_window_pattern": config.sliding_pattern,
        "gemma3.attention.layer_norm_rms_epsilon": config.rms_norm_eps,
        "gemma3.attention.query_pre_attn_scalar": config.query_pre_attn_scalar,
        "gemma3.rope.freq_base": config.rope_base_global,
        "gemma3.rope.freq_base_swa": float(sliding_rope.get("rope_theta", config.rope_base_local)),
    }
    if config.rope_scaling_factor != 1.0:
        metadata["gemma3.rope.scaling.type"] = "linear"
        metadata["gemma3.rope.scaling.factor"] = config.rope_scaling_factor
    return metadata


def _gemma4_layer_settings(text: dict, n_layers: int, path: str) -> tuple:
    """Return (layer_types, head size, global head size, KV heads per layer) of a Gemma 4 text config."""
    layer_types = list(_require(text, "layer_types", path))
    if len(layer_types) != n_layers or set(layer_types) - {"sliding_attention", "full_attention"}:
        raise ValueError(f"{path}: layer_types must list 'sliding_attention' or 'full_attention' for each of the "
                         f"{n_layers} layers, got {layer_types}")
    head_dim = int(_require(text, "head_dim", path))
    kv_heads = [int(_require(text, "num_key_value_heads", path))] * n_layers
    global_head_dim = text.get("global_head_dim")
    overrides = text.get("per_layer_config") or {}
    for layer, override in overrides.items():
        index = int(layer)
        if not 0 <= index < n_layers or not isinstance(override, dict):
            raise ValueError(f"{path}: per_layer_config entry {layer!r} is not a layer index with settings")
        unknown = set(override) - {"head_dim", "num_key_value_heads"}
        if unknown:
            raise ValueError(f"{path}: per_layer_config[{layer}] sets {sorted(unknown)}; only head_dim and "
                             "num_key_value_heads are supported")
        if "head_dim" in override:
            if layer_types[index] != "full_attention":
                raise ValueError(f"{path}: per_layer_config[{layer}] sets head_dim on a sliding layer; only global "
                                 "layers may differ")
            if global_head_dim is not None and int(override["head_dim"]) != int(global_head_dim):
                raise ValueError(f"{path}: global layers have different head sizes ({override['head_dim']} and "
                                 f"{global_head_dim}); expected one size")
            global_head_dim = int(override["head_dim"])
        if "num_key_value_heads" in override:
            kv_heads[index] = int(override["num_key_value_heads"])
    return layer_types, head_dim, int(global_head_dim or head_dim), kv_heads


def _gemma4_metadata(text: dict, path: str) -> tuple:
    """Return (metadata, rope_freqs values) of a Gemma 4 text config."""
    for flag in ("enable_moe_block", "attention_k_eq_v", "use_bidirectional_attention"):
        if text.get(flag):
            raise ValueError(f"{path}: {flag} = {text[flag]!r} is not supported; this runtime runs the dense "
                             "causal Gemma 4 text models (E2B, E4B)")
    n_layers = int(_require(text, "num_hidden_layers", path))
    layer_types, head_dim, global_head_dim, kv_heads = _gemma4_layer_settings(text, n_layers, path)
    shared = int(text.get("num_kv_shared_layers") or 0)
    ffn = _require(text, "intermediate_size", path)
    ffn_sizes = [int(size) for size in ffn] if isinstance(ffn, list) else [int(ffn)] * n_layers
    if len(ffn_sizes) != n_layers:
        raise ValueError(f"{path}: intermediate_size lists {len(ffn_sizes)} sizes for {n_layers} layers")
    if text.get("use_double_wide_mlp"):
        # transformers doubles the MLP of the KV-shared layers.
        ffn_sizes = [size * (2 if layer >= n_layers - shared else 1) for layer, size in enumerate(ffn_sizes)]

    sliding_rope, full_rope = _hf_rope(text)
    for kind, rope, allowed in (("sliding", sliding_rope, ("default",)),
                                ("global", full_rope, ("default", "proportional"))):
        if rope.get("rope_type", "default") not in allowed:
            raise ValueError(f"{path}: RoPE type {rope.get('rope_type')!r} of the {kind} layers is not supported; "
                             f"expected {' or '.join(allowed)}")
    partial = float(full_rope.get("partial_rotary_factor", 1.0)) if full_rope.get("rope_type") == "proportional" \
        else 1.0
    # transformers' proportional RoPE rotates the first partial * head_dim / 2 pairs, with the
    # frequencies of the full head size. llama.cpp's converter marks the others in rope_freqs.
    half = global_head_dim // 2
    rotated = int(partial * global_head_dim // 2)
    rope_freqs = np.array([1.0] * rotated + [_UNROTATED_FACTOR] * (half - rotated), dtype=np.float32)

    metadata = {
        "general.architecture": "gemma4",
        "gemma4.block_count": n_layers,
        "gemma4.embedding_length": int(_require(text, "hidden_size", path)),
        "gemma4.feed_forward_length": ffn_sizes,
        "gemma4.attention.head_count": int(_require(text, "num_attention_heads", path)),
        "gemma4.attention.head_count_kv": kv_heads if len(set(kv_heads)) > 1 else kv_heads[0],
        "gemma4.attention.key_length": global_head_dim,
        "gemma4.attention.value_length": global_head_dim,
        "gemma4.attention.key_length_swa": head_dim,
        "gemma4.attention.value_length_swa": head_dim,
        "gemma4.context_length": int(text.get("max_position_embeddings") or 131072),
        "gemma4.attention.layer_norm_rms_epsilon": float(text.get("rms_norm_eps", 1e-6)),
        "gemma4.rope.freq_base": float(full_rope.get("rope_theta", 1e6)),
        "gemma4.rope.freq_base_swa": float(sliding_rope.get("rope_theta", 1e4)),
        "gemma4.attention.sliding_window": int(_require(text, "sliding_window", path)),
        "gemma4.attention.sliding_window_pattern": [kind == "sliding_attention" for kind in layer_types],
        "gemma4.attention.shared_kv_layers": shared,
        "gemma4.embedding_length_per_layer_input": int(text.get("hidden_size_per_layer_input") or 0),
        "gemma4.rope.dimension_count": global_head_dim,
        "gemma4.rope.dimension_count_swa": head_dim,
    }
    if text.get("final_logit_softcapping") is not None:
        metadata["gemma4.final_logit_softcapping"] = float(text["final_logit_softcapping"])
    return metadata, rope_freqs


# ---- tensors -------------------------------------------------------------------------------

def _text_prefix(index: SafetensorsIndex) -> str:
    for prefix in _PREFIXES:
        if f"{prefix}embed_tokens.weight" in index:
            return prefix
    raise ValueError(f"{index.directory!r}: no embedding table found; expected one of "
                     f"{', '.join(prefix + 'embed_tokens.weight' for prefix in _PREFIXES)}")


def _required_names(architecture: str, metadata: dict, prefix: str) -> list:
    """Return the transformers names of the tensors the model loader needs."""
    n_layers = metadata[f"{architecture}.block_count"]
    shared = metadata.get("gemma4.attention.shared_kv_layers", 0)
    per_layer = metadata.get("gemma4.embedding_length_per_layer_input", 0)
    names = [f"{prefix}embed_tokens.weight", f"{prefix}norm.weight"]
    if per_layer:
        names += [f"{prefix}embed_tokens_per_layer.weight", f"{prefix}per_layer_model_projection.weight",
                  f"{prefix}per_layer_projection_norm.weight"]
    for layer in range(n_layers):
        parts = _BLOCK + _ATTENTION
        if layer < n_layers - shared:
            parts += _KEY_VALUE
        if per_layer:
            parts += _PER_LAYER_INPUT
        names += [f"{prefix}layers.{layer}.{part}.weight" for part in parts]
    return names


def _tensor_specs(architecture: str, index: SafetensorsIndex, shards: list, prefix: str) -> list:
    """Return the specs of Model's hf_weights argument for every text-model tensor of index."""
    shard_number = {name: number for number, name in enumerate(shards)}
    norm_offset = 1.0 if architecture == "gemma3" else 0.0
    specs = []
    layer_prefix = f"{prefix}layers."
    for name in index.names():
        if not name.startswith(prefix):
            continue  # vision or audio towers of a multimodal checkpoint
        rest = name[len(prefix):]
        if rest.startswith("layers."):
            layer, part = name[len(layer_prefix):].split(".", 1)
            if part == "layer_scalar":
                gguf_name, is_norm = f"blk.{layer}.layer_output_scale.weight", True
            elif part.removesuffix(".weight") in _LAYER_TENSORS:
                kind = part.removesuffix(".weight")
                gguf_name, is_norm = f"blk.{layer}.{_LAYER_TENSORS[kind]}.weight", kind.endswith("norm")
            else:
                continue
            offset = norm_offset if is_norm and part != "layer_scalar" else 0.0
        elif rest.removesuffix(".weight") in _GLOBAL_TENSORS:
            kind = rest.removesuffix(".weight")
            gguf_name, is_norm = f"{_GLOBAL_TENSORS[kind]}.weight", kind.endswith("norm")
            offset = norm_offset if is_norm else 0.0
        else:
            continue
        specs.append((gguf_name, name, shard_number[index.shard_of(name)], is_norm, offset, None))
    for head in ("lm_head.weight", "language_model.lm_head.weight"):
        if head in index:
            specs.append(("output.weight", head, shard_number[index.shard_of(head)], False, 0.0, None))
            break
    return specs


def hf_model_arguments(directory) -> dict:
    """Return the keyword arguments of ``_core.Model`` that load a Hugging Face model directory:
    ``hf_weights`` (GGUF metadata from config.json, shard paths, tensor specs) and ``tokenizer``
    (a ``Tokenizer`` from tokenizer.json, or None when the directory has none).

    Raises FileNotFoundError for a missing config.json, weights file or shard, and ValueError
    for an unsupported architecture or configuration, or a missing tensor (naming it).
    """
    directory = os.fspath(directory)
    architecture, text, config_path = _read_config(directory)
    _check_common(text, config_path)
    rope_freqs = None
    if architecture == "gemma3":
        metadata = _gemma3_metadata(text, config_path)
    else:
        metadata, rope_freqs = _gemma4_metadata(text, config_path)

    index = SafetensorsIndex(directory)
    try:
        prefix = _text_prefix(index)
        for name in _required_names(architecture, metadata, prefix):
            if name not in index:
                raise ValueError(f"tensor {name} is missing from {directory!r}; the configuration in "
                                 f"{CONFIG_NAME} needs it")
        shards = sorted({index.shard_of(name) for name in index.names()})
        specs = _tensor_specs(architecture, index, shards, prefix)
    finally:
        index.close()
    if rope_freqs is not None:
        specs.append(("rope_freqs.weight", None, 0, True, 0.0, rope_freqs))

    tokenizer = None
    if os.path.isfile(os.path.join(directory, TOKENIZER_NAME)):
        from .tokenizer import Tokenizer

        tokenizer = Tokenizer.from_tokenizer_json(os.path.join(directory, TOKENIZER_NAME))
    shard_paths = [os.path.join(directory, shard) for shard in shards]
    return {"hf_weights": (gguf_metadata_bytes(metadata), shard_paths, specs), "tokenizer": tokenizer}
