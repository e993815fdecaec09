"""Model and runtime configuration: ``Gemma3Config`` and ``Gemma4Config``, with presets and YAML files.

YAML files are parsed by the C loader (libyaml). It checks every key's type and range and
raises ``ConfigError`` (a ``ValueError``) with the file's ``line`` and the ``key``. Keys absent
from a file take their value from the file's ``preset`` (for example ``gemma4-e2b``), or from
the class defaults, which are the smallest published model of the family::

    config = Gemma4Config.from_yaml("e2b.yaml")
    config.to_yaml("copy.yaml")          # written to a temporary file, then renamed

Field names are the YAML keys; ``docs/config.md`` lists them with their ranges.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import numbers
import os
import re
import tempfile
from dataclasses import dataclass
from typing import ClassVar

from . import _core
from ._core import ConfigError

__all__ = ["ConfigError", "Gemma3Config", "Gemma4Config", "load_config"]

# Message prefix "source:line:column: " that the C loader puts before each message.
_LOCATION_PREFIX = re.compile(r"^.*?:\d+:\d+: ")

# Type, families and nullability of every key, from the C loader's table.
_KEYS = _core.config_keys()


def _config_error(message, key=None, line=None, column=None):
    error = ConfigError(message)
    error.key = key
    error.line = line
    error.column = column
    return error


def _load_file(path):
    """Parse a YAML file with the C loader; FileNotFoundError names a missing file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "configuration file not found", path)
    return path, *_core.load_config(path)


def _yaml_scalar(value):
    """Format one value as YAML that the C loader reads back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return repr(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    if isinstance(value, str):
        # A JSON string is a valid YAML double-quoted scalar. Non-ASCII stays raw, because
        # libyaml rejects the surrogate pairs that JSON uses to escape it.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_yaml_scalar(item) for item in value) + "]"
    raise TypeError(f"cannot write a {type(value).__name__} to YAML: {value!r}")


def _read_hf_config(source) -> dict:
    """Return a Hugging Face config as a dict: source is a dict, a config.json path or a model directory."""
    if isinstance(source, dict):
        return source
    path = os.fspath(source)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    with open(path, "rb") as file:
        data = file.read()
    try:
        config = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid UTF-8 JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return config


def _hf_rope(text: dict) -> tuple:
    """Return the (sliding, full) RoPE parameter dicts of a text config in either transformers format:
    5.x "rope_parameters" per layer kind, or the older rope_theta, rope_local_base_freq and rope_scaling."""
    params = text.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:
        return dict(params.get("sliding_attention") or {}), dict(params["full_attention"])
    full = dict(text.get("rope_scaling") or {})
    full.setdefault("rope_type", full.pop("type", "default"))
    full["rope_theta"] = text.get("rope_theta", 1000000.0)
    return {"rope_type": "default", "rope_theta": text.get("rope_local_base_freq", 10000.0)}, full


def _hf_sliding_pattern(text: dict, num_layers: int, last_global: bool) -> int:
    """Return N such that every Nth layer is global, checked against the config's layer_types."""
    layer_types = text.get("layer_types")
    if not layer_types:
        return int(text.get("sliding_window_pattern", 6))
    global_layers = [i for i, kind in enumerate(layer_types) if kind == "full_attention"]
    pattern = global_layers[0] + 1 if global_layers else num_layers + 1
    expected = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(num_layers)]
    if last_global:
        expected[-1] = "full_attention"
    if list(layer_types) != expected:
        raise ValueError(f"layer_types {layer_types} is not 'every {pattern}th layer global'; this configuration "
                         "cannot describe it")
    return pattern


@dataclass(frozen=True)
class _GemmaConfig:
    """Fields shared by Gemma 3 and Gemma 4; see the subclasses."""

    family: ClassVar[str] = ""
    _presets: ClassVar[dict] = {}

    preset: str | None = None

    # Architecture.
    vocab_size: int = 262144
    num_layers: int = 18
    hidden_size: int = 640
    num_heads: int = 4
    num_kv_heads: int = 1
    head_dim: int = 256
    ffn_size: int = 2048
    ffn_sizes: tuple = ()  # one FFN width per layer; empty: derived from ffn_size
    sliding_window: int = 512
    sliding_pattern: int = 6  # layer i is global when (i + 1) % sliding_pattern == 0
    use_swa: bool = True  # False: full attention on every layer
    rope_base_local: float = 10000.0
    rope_base_global: float = 1000000.0
    final_logit_softcap: float | None = None
    rms_norm_eps: float = 1e-6
    context_length: int = 32768
    think_token_id: int | None = None
    audio_token_id: int | None = None
    image_token_id: int | None = None
    include_mtp: bool = False
    include_turbo: bool = True  # False: f16 KV cache, ignoring cache_type_k/v

    # Runtime. None, the value of a key absent from the file, leaves the setting to Model.load's
    # measured default (the compressed cache with its window and sink), so that a file written
    # for another key does not switch the cache to f16.
    cache_type_k: str | None = None
    cache_type_v: str | None = None
    kv_recent_f16: int | None = None
    # "f16" or "q8_0" rows for the kv_recent_f16 copies.
    kv_recent_type: str | None = None
    kv_sink_f16: int | None = None
    kv_f16_layers: tuple = ()
    qjl_bits: int = 1
    thinking_qjl_bits: int = 2
    audio_codebook: tuple = ()
    threads: int | None = None
    ctx: int | None = None
    speculative: str = "none"
    mtp_checkpoint: str | None = None
    tree_branching: tuple = ()

    def __post_init__(self):
        for name in ("ffn_sizes", "kv_f16_layers", "audio_codebook", "tree_branching"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))
        # The C loader's key table is the one definition of each key's type and range, so
        # check the fields by parsing their YAML form, then check the relations between fields.
        try:
            _core.parse_config(self.to_yaml_text(), type(self).__name__)
        except ConfigError as error:
            message = _LOCATION_PREFIX.sub("", str(error))
            raise _config_error(f"{type(self).__name__}: {message}", key=error.key) from None
        for name, value in self._float_fields():
            object.__setattr__(self, name, value)
        self._check_relations()

    def _float_fields(self):
        """Yield (name, value) of the float fields with ints converted, so that 30 and 30.0 compare equal."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if _KEYS[f.name]["type"] == "float" and value is not None:
                yield f.name, float(value)
            elif _KEYS[f.name]["type"] == "float_list":
                yield f.name, tuple(float(v) for v in value)

    def _check_relations(self):
        """Raise ConfigError for fields that are valid alone but not together."""
        name = type(self).__name__
        if self.num_heads % self.num_kv_heads:
            raise _config_error(f"{name}: num_heads {self.num_heads} is not a multiple of num_kv_heads "
                                f"{self.num_kv_heads}", key="num_kv_heads")
        if self.head_dim % 2:
            raise _config_error(f"{name}: head_dim {self.head_dim} must be even, because RoPE rotates pairs",
                                key="head_dim")
        if self.ffn_sizes and len(self.ffn_sizes) != self.num_layers:
            raise _config_error(f"{name}: ffn_sizes has {len(self.ffn_sizes)} entries but num_layers is "
                                f"{self.num_layers}; give one size per layer", key="ffn_sizes")
        for layer in self.kv_f16_layers:
            if not -self.num_layers <= layer < self.num_layers:
                raise _config_error(f"{name}: kv_f16_layers contains {layer}, outside -{self.num_layers} .. "
                                    f"{self.num_layers - 1} for num_layers {self.num_layers}", key="kv_f16_layers")
        for key in ("think_token_id", "audio_token_id", "image_token_id"):
            token = getattr(self, key)
            if token is not None and token >= self.vocab_size:
                raise _config_error(f"{name}: {key} {token} is not below vocab_size {self.vocab_size}", key=key)
        if self.mtp_checkpoint is not None and self.speculative != "mtp":
            raise _config_error(f"{name}: mtp_checkpoint is set but speculative is {self.speculative!r}; set "
                                "speculative='mtp' or mtp_checkpoint=None", key="mtp_checkpoint")
        if self.preset is not None and not self.preset.startswith(self.family):
            raise _config_error(f"{name}: preset {self.preset!r} is not a {self.family} model; choose one of "
                                f"{', '.join(sorted(self._presets))}", key="preset")

    # ------------------------------------------------------------ presets

    @classmethod
    def from_preset(cls, name: str):
        """Return the configuration of a published model, by preset name (``cls.preset_names()``)."""
        if name not in cls._presets:
            raise ValueError(f"unknown {cls.__name__} preset {name!r}; choose one of {', '.join(sorted(cls._presets))}")
        return cls(preset=name, **cls._presets[name])

    @classmethod
    def preset_names(cls) -> list:
        return sorted(cls._presets)

    # --------------------------------------------------------------- YAML

    @classmethod
    def from_yaml(cls, path):
        """Read a YAML configuration file.

        Raises OSError when the file cannot be read and ConfigError (a ValueError with
        ``line``, ``column`` and ``key``) for a syntax error, an unknown or duplicate key, a
        wrong type, a value out of range, or keys that contradict each other.
        """
        path, values, lines = _load_file(path)
        return cls._from_values(values, lines, path)

    @classmethod
    def from_yaml_text(cls, text, source=None):
        """Parse YAML configuration text, as ``from_yaml``; ``source`` names it in messages."""
        values, lines = _core.parse_config(text, source)
        return cls._from_values(values, lines, source or "<config>")

    @classmethod
    def from_hf(cls, source, **overrides):
        """Build a configuration from a Hugging Face config: a dict, a config.json path or a model
        directory. A multimodal config's "text_config" describes the text model, and its
        audio_token_id and image_token_id are used. Token ids the config lacks keep the class
        default when it is below vocab_size, else None. overrides replace fields afterwards.
        Raises ValueError for a structure these fields cannot describe."""
        config = _read_hf_config(source)
        text = config.get("text_config") or config
        values = cls._values_from_hf(text)
        for key in ("think_token_id", "audio_token_id", "image_token_id"):
            default = getattr(cls, key)
            # Gemma 3's multimodal configs spell the image token "image_token_index".
            token_id = config.get(key, config.get(key.replace("_id", "_index")))
            if token_id is not None:
                values[key] = int(token_id)
            else:
                values[key] = default if default is not None and default < values["vocab_size"] else None
        values.update(overrides)
        return cls(**values)

    @classmethod
    def _values_from_hf(cls, text: dict) -> dict:
        num_layers = int(text["num_hidden_layers"])
        ffn = text["intermediate_size"]
        values = dict(
            vocab_size=int(text["vocab_size"]),
            num_layers=num_layers,
            hidden_size=int(text["hidden_size"]),
            num_heads=int(text["num_attention_heads"]),
            num_kv_heads=int(text["num_key_value_heads"]),
            head_dim=int(text["head_dim"]),
            ffn_size=int(ffn[0] if isinstance(ffn, list) else ffn),
            ffn_sizes=tuple(int(f) for f in ffn) if isinstance(ffn, list) else (),
            sliding_window=int(text["sliding_window"]),
            sliding_pattern=_hf_sliding_pattern(text, num_layers, last_global=cls.family == "gemma4"),
            rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
            context_length=int(text.get("max_position_embeddings", cls.context_length)),
            final_logit_softcap=text.get("final_logit_softcapping"),
        )
        sliding_rope, full_rope = _hf_rope(text)
        values["rope_base_local"] = float(sliding_rope.get("rope_theta", 10000.0))
        values["rope_base_global"] = float(full_rope.get("rope_theta", 1000000.0))
        return values

    def to_hf(self) -> dict:
        """Return the keyword arguments of transformers' text config class (Gemma3TextConfig or
        Gemma4TextConfig) that describe this model's architecture."""
        if self.ffn_sizes:
            raise ValueError("ffn_sizes has no transformers equivalent; use ffn_size (and double_wide_ffn)")
        kinds = {"sliding": "sliding_attention", "global": "full_attention"}
        return dict(
            vocab_size=self.vocab_size,
            num_hidden_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            intermediate_size=self.ffn_size,
            sliding_window=self.sliding_window,
            layer_types=[kinds[kind] for kind in self.layer_types()],
            rms_norm_eps=self.rms_norm_eps,
            max_position_embeddings=self.context_length,
            final_logit_softcapping=self.final_logit_softcap,
        )

    @classmethod
    def _from_values(cls, values, lines, source):
        def error_at(key, message):
            # Keys of the flat mapping start in column 1, as in the C loader's relation checks.
            line = lines.get(key)
            where = f"{source}:{line}:1" if line else source
            return _config_error(f"{where}: {message}", key=key, line=line, column=1 if line else None)

        family = values.pop("family", cls.family)
        if family != cls.family:
            other = "Gemma3Config" if family == "gemma3" else "Gemma4Config"
            raise error_at("family", f"family is {family!r} but {cls.__name__} reads {cls.family} files; "
                                     f"use {other}.from_yaml or turboquant.load_config")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise error_at(key, f"key {key!r} does not apply to {cls.family} models")

        preset = values.get("preset")
        base = cls.from_preset(preset) if preset is not None else cls()
        try:
            return dataclasses.replace(base, **values)
        except ConfigError as error:
            message = str(error).split(": ", 1)[-1]
            raise error_at(error.key, message) from None

    def to_yaml_text(self) -> str:
        """Return every field as YAML, one ``key: value`` line each, that ``from_yaml_text`` reads back."""
        lines = [f"family: {self.family}"]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and not _KEYS[f.name]["nullable"]:
                continue  # unset runtime setting such as threads: the runtime default applies
            if isinstance(value, tuple) and not value and f.name != "kv_f16_layers":
                continue  # an empty list means "not given" for these keys
            lines.append(f"{f.name}: {_yaml_scalar(value)}")
        return "\n".join(lines) + "\n"

    def to_yaml(self, path):
        """Write the configuration to path atomically: a temporary file in the same directory,
        flushed to disk and renamed over path, so readers see the old file or the new one."""
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        text = f"# turboquant {type(self).__name__}\n" + self.to_yaml_text()
        fd, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".yaml", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
            raise

    # ------------------------------------------------------- derived facts

    def layer_types(self) -> list:
        """Return "sliding" or "global" for each layer: the kind of its weights and RoPE.

        With use_swa False the sliding layers keep their kind but attend to every position;
        ``layer_windows()`` gives the window actually used."""
        return ["global" if (i + 1) % self.sliding_pattern == 0 else "sliding" for i in range(self.num_layers)]

    def layer_windows(self) -> list:
        """Return the attention window of each layer in positions, 0 for full attention."""
        if not self.use_swa:
            return [0] * self.num_layers
        return [self.sliding_window if kind == "sliding" else 0 for kind in self.layer_types()]

    def layer_ffn_sizes(self) -> list:
        return list(self.ffn_sizes) if self.ffn_sizes else [self.ffn_size] * self.num_layers

    def layer_head_dims(self) -> list:
        return [self.head_dim] * self.num_layers

    def resolved_cache_types(self) -> tuple:
        """Return (cache_type_k, cache_type_v) as the runtime uses them: f16 when include_turbo is False,
        None for a type left to Model.load's default."""
        if not self.include_turbo:
            return ("f16", "f16")
        return (self.cache_type_k, self.cache_type_v)

    def model_load_options(self) -> dict:
        """Return the keyword arguments of ``Model.load`` that this configuration sets."""
        cache_type_k, cache_type_v = self.resolved_cache_types()
        # think_token_id null in the file means no think token, which Model.load spells -1.
        return dict(cache_type_k=cache_type_k, cache_type_v=cache_type_v, ctx=self.ctx, threads=self.threads,
                    kv_recent_f16=self.kv_recent_f16, kv_recent_type=self.kv_recent_type,
                    kv_sink_f16=self.kv_sink_f16,
                    kv_f16_layers=self.kv_f16_layers, qjl_bits=self.qjl_bits,
                    thinking_qjl_bits=self.thinking_qjl_bits,
                    think_token_id=-1 if self.think_token_id is None else self.think_token_id)


# Published Hugging Face configurations (config.json, or its "text_config" for the multimodal
# checkpoints) of google/gemma-3-270m, -1b-pt, -4b-pt, -12b-pt and -27b-pt. Every Gemma 3 size
# uses RoPE bases 1e4 (sliding) and 1e6 (global), RMSNorm eps 1e-6, and makes every sixth
# layer global.
_GEMMA3_PRESETS = {
    "gemma3-270m": dict(vocab_size=262144, num_layers=18, hidden_size=640, num_heads=4, num_kv_heads=1, head_dim=256,
                        ffn_size=2048, sliding_window=512, query_pre_attn_scalar=256.0, context_length=32768),
    "gemma3-1b": dict(vocab_size=262144, num_layers=26, hidden_size=1152, num_heads=4, num_kv_heads=1, head_dim=256,
                      ffn_size=6912, sliding_window=512, query_pre_attn_scalar=256.0, context_length=32768),
    "gemma3-4b": dict(vocab_size=262208, num_layers=34, hidden_size=2560, num_heads=8, num_kv_heads=4, head_dim=256,
                      ffn_size=10240, sliding_window=1024, query_pre_attn_scalar=256.0, context_length=131072,
                      rope_scaling_factor=8.0),
    "gemma3-12b": dict(vocab_size=262208, num_layers=48, hidden_size=3840, num_heads=16, num_kv_heads=8,
                       head_dim=256, ffn_size=15360, sliding_window=1024, query_pre_attn_scalar=256.0,
                       context_length=131072, rope_scaling_factor=8.0),
    "gemma3-27b": dict(vocab_size=262208, num_layers=62, hidden_size=5376, num_heads=32, num_kv_heads=16,
                       head_dim=128, ffn_size=21504, sliding_window=1024, query_pre_attn_scalar=168.0,
                       context_length=131072, rope_scaling_factor=8.0),
}


@dataclass(frozen=True)
class Gemma3Config(_GemmaConfig):
    """Gemma 3 text model and runtime settings. The defaults are Gemma 3 270M.

    Gemma 3 specific: ``rope_scaling_factor`` (linear RoPE scaling of the global layers, 1 =
    none) and ``query_pre_attn_scalar`` (queries are scaled by 1/sqrt of it).
    """

    family: ClassVar[str] = "gemma3"
    _presets: ClassVar[dict] = _GEMMA3_PRESETS

    rope_scaling_factor: float = 1.0
    query_pre_attn_scalar: float = 256.0

    @classmethod
    def _values_from_hf(cls, text: dict) -> dict:
        values = super()._values_from_hf(text)
        _, full_rope = _hf_rope(text)
        rope_type = full_rope.get("rope_type", "default")
        if rope_type not in ("default", "linear"):
            raise ValueError(f"RoPE type {rope_type!r} of the global layers is not supported; expected default or "
                             "linear")
        values["rope_scaling_factor"] = float(full_rope.get("factor", 1.0)) if rope_type == "linear" else 1.0
        values["query_pre_attn_scalar"] = float(text.get("query_pre_attn_scalar", values["head_dim"]))
        return values

    def to_hf(self) -> dict:
        hf = super().to_hf()
        # transformers types query_pre_attn_scalar as int; a fractional value would not round-trip.
        if self.query_pre_attn_scalar != int(self.query_pre_attn_scalar):
            raise ValueError(f"query_pre_attn_scalar {self.query_pre_attn_scalar} is not a whole number, which "
                             "transformers' Gemma3TextConfig requires")
        full = {"rope_type": "default", "rope_theta": self.rope_base_global}
        if self.rope_scaling_factor != 1.0:
            full = {"rope_type": "linear", "factor": self.rope_scaling_factor, "rope_theta": self.rope_base_global}
        hf.update(
            query_pre_attn_scalar=int(self.query_pre_attn_scalar),
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": self.rope_base_local},
                             "full_attention": full},
        )
        return hf

    @classmethod
    def gemma3_270m(cls):
        return cls.from_preset("gemma3-270m")

    @classmethod
    def gemma3_1b(cls):
        return cls.from_preset("gemma3-1b")

    @classmethod
    def gemma3_4b(cls):
        return cls.from_preset("gemma3-4b")

    @classmethod
    def gemma3_12b(cls):
        return cls.from_preset("gemma3-12b")

    @classmethod
    def gemma3_27b(cls):
        return cls.from_preset("gemma3-27b")


# Gemma 4 E2B and E4B, from the published config.json "text_config" of google/gemma-4-E2B-it
# and -E4B-it. The Gemma 4 model configs in gemma.cpp restate the FFN widths (E2B 6144, and
# 12288 on the KV-shared layers; E4B 10240 on every layer) and the final logit softcap of 30.
# NVIDIA Megatron Bridge's E4B recipe restates 42 layers, hidden 2560, 8 heads, 2 KV heads and
# the last 18 layers sharing KV. The other values are transformers 5.x Gemma4TextConfig
# defaults: global head_dim 512, proportional RoPE at base 1e6 rotating a quarter of the
# pairs, per-layer embedding width 256, window 512. Token ids: <|think|> 98, audio soft token
# 258881, image soft token 258880.
_GEMMA4_PRESETS = {
    "gemma4-e2b": dict(vocab_size=262144, num_layers=35, hidden_size=1536, num_heads=8, num_kv_heads=1,
                       head_dim=256, global_head_dim=512, ffn_size=6144, double_wide_ffn=True, sliding_window=512,
                       sliding_pattern=5, num_kv_shared_layers=20, per_layer_embedding_dim=256,
                       final_logit_softcap=30.0, context_length=131072, think_token_id=98,
                       audio_token_id=258881, image_token_id=258880),
    "gemma4-e4b": dict(vocab_size=262144, num_layers=42, hidden_size=2560, num_heads=8, num_kv_heads=2,
                       head_dim=256, global_head_dim=512, ffn_size=10240, double_wide_ffn=False, sliding_window=512,
                       sliding_pattern=6, num_kv_shared_layers=18, per_layer_embedding_dim=256,
                       final_logit_softcap=30.0, context_length=131072, think_token_id=98,
                       audio_token_id=258881, image_token_id=258880),
}


@dataclass(frozen=True)
class Gemma4Config(_GemmaConfig):
    """Gemma 4 text model and runtime settings. The defaults are Gemma 4 E2B.

    Gemma 4 specific: ``global_head_dim`` (head width of the global layers),
    ``global_rope_partial_factor`` (fraction of frequency pairs that rotate on global layers),
    ``num_kv_shared_layers`` (the last layers reuse the K/V of the last earlier layer of their
    kind), ``per_layer_embedding_dim`` (0 = no per-layer embeddings) and ``double_wide_ffn``
    (KV-shared layers use twice ``ffn_size``).
    """

    family: ClassVar[str] = "gemma4"
    _presets: ClassVar[dict] = _GEMMA4_PRESETS

    vocab_size: int = 262144
    num_layers: int = 35
    hidden_size: int = 1536
    num_heads: int = 8
    num_kv_heads: int = 1
    ffn_size: int = 6144
    sliding_pattern: int = 5
    final_logit_softcap: float | None = 30.0
    context_length: int = 131072
    think_token_id: int | None = 98
    audio_token_id: int | None = 258881
    image_token_id: int | None = 258880

    global_head_dim: int = 512
    global_rope_partial_factor: float = 0.25
    num_kv_shared_layers: int = 20
    per_layer_embedding_dim: int = 256
    double_wide_ffn: bool = True

    @classmethod
    def _values_from_hf(cls, text: dict) -> dict:
        for flag in ("enable_moe_block", "attention_k_eq_v"):
            if text.get(flag):
                raise ValueError(f"{flag} is set; Gemma4Config describes the dense E2B/E4B architecture only")
        values = super()._values_from_hf(text)
        _, full_rope = _hf_rope(text)
        rope_type = full_rope.get("rope_type", "default")
        if rope_type not in ("default", "proportional"):
            raise ValueError(f"RoPE type {rope_type!r} of the global layers is not supported; expected default or "
                             "proportional")
        partial = full_rope.get("partial_rotary_factor", 1.0) if rope_type == "proportional" else 1.0
        global_head_dim = text.get("global_head_dim")
        for layer_config in (text.get("per_layer_config") or {}).values():
            if global_head_dim is None and isinstance(layer_config, dict) and "head_dim" in layer_config:
                global_head_dim = layer_config["head_dim"]
        values.update(
            global_head_dim=int(global_head_dim or values["head_dim"]),
            global_rope_partial_factor=float(partial),
            num_kv_shared_layers=int(text.get("num_kv_shared_layers") or 0),
            per_layer_embedding_dim=int(text.get("hidden_size_per_layer_input") or 0),
            double_wide_ffn=bool(text.get("use_double_wide_mlp", False)),
        )
        return values

    def to_hf(self) -> dict:
        hf = super().to_hf()
        hf.update(
            global_head_dim=self.global_head_dim,
            num_kv_shared_layers=self.num_kv_shared_layers,
            hidden_size_per_layer_input=self.per_layer_embedding_dim,
            vocab_size_per_layer_input=self.vocab_size,
            use_double_wide_mlp=self.double_wide_ffn,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": self.rope_base_local},
                "full_attention": {"rope_type": "proportional", "partial_rotary_factor": self.global_rope_partial_factor,
                                   "rope_theta": self.rope_base_global},
            },
        )
        return hf

    @classmethod
    def e2b(cls):
        return cls.from_preset("gemma4-e2b")

    @classmethod
    def e4b(cls):
        return cls.from_preset("gemma4-e4b")

    def _check_relations(self):
        super()._check_relations()
        name = type(self).__name__
        if self.global_head_dim % 2:
            raise _config_error(f"{name}: global_head_dim {self.global_head_dim} must be even, because RoPE "
                                "rotates pairs", key="global_head_dim")
        if self.num_kv_shared_layers >= self.num_layers:
            raise _config_error(f"{name}: num_kv_shared_layers {self.num_kv_shared_layers} must be below num_layers "
                                f"{self.num_layers}", key="num_kv_shared_layers")
        if self.ffn_sizes and self.double_wide_ffn:
            raise _config_error(f"{name}: set either ffn_sizes or double_wide_ffn=True, not both", key="ffn_sizes")
        # Every kind of layer that shares K/V needs an earlier layer of its kind that stores them.
        first_shared = self.num_layers - self.num_kv_shared_layers
        kinds = self.layer_types()
        missing = set(kinds[first_shared:]) - set(kinds[:first_shared])
        if missing:
            raise _config_error(f"{name}: the KV-shared layers include {', '.join(sorted(missing))} layers but no "
                                f"earlier layer of that kind stores K/V; lower num_kv_shared_layers "
                                f"({self.num_kv_shared_layers})", key="num_kv_shared_layers")

    def layer_types(self) -> list:
        kinds = super().layer_types()
        # Gemma 4 always makes the last layer global (transformers' Gemma4TextConfig forces it).
        kinds[-1] = "global"
        return kinds

    def layer_head_dims(self) -> list:
        return [self.global_head_dim if kind == "global" else self.head_dim for kind in self.layer_types()]

    def kv_source_layers(self) -> list:
        """Return, for each layer, the layer whose K/V it attends to: itself, or for one of the
        last num_kv_shared_layers layers the last earlier non-shared layer of the same kind."""
        first_shared = self.num_layers - self.num_kv_shared_layers
        kinds = self.layer_types()
        last_of_kind = {kinds[i]: i for i in range(first_shared)}
        return [i if i < first_shared else last_of_kind[kinds[i]] for i in range(self.num_layers)]

    def layer_ffn_sizes(self) -> list:
        if self.ffn_sizes:
            return list(self.ffn_sizes)
        first_shared = self.num_layers - self.num_kv_shared_layers
        wide = 2 if self.double_wide_ffn else 1
        return [self.ffn_size * (wide if i >= first_shared else 1) for i in range(self.num_layers)]


def load_config(path):
    """Read a YAML configuration file into a Gemma3Config or Gemma4Config, chosen by its
    ``family`` key or, without one, by the family of its ``preset``. A file with neither
    reads as Gemma3Config. Errors as ``Gemma3Config.from_yaml``."""
    path, values, lines = _load_file(path)
    family = values.get("family") or (values.get("preset") or "gemma3").split("-")[0]
    cls = Gemma4Config if family == "gemma4" else Gemma3Config
    return cls._from_values(values, lines, path)
