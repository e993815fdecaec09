"""Inputs that the fuzz harnesses found, replayed through the Python API.

Each file under tests/fuzz/regressions/TARGET/ once crashed, exhausted memory in,
or broke a contract of the C core. tests/test_fuzz_harnesses.py replays them
through the harnesses under AddressSanitizer. These tests check the exception
that a Python caller gets, with the expected values taken from the gguf package's
reader and the GGUF format.
"""

import pathlib

import gguf
import pytest

import turboquant as tq
from turboquant.gguf import GGUFFile

REGRESSIONS = pathlib.Path(__file__).resolve().parent / "fuzz" / "regressions"


def test_model_huge_block_count_rejected():
    # gemma3.block_count = 8912898 in a 160 KB file: creating the model once
    # allocated a 2.9 GB layer table before it looked at a tensor.
    path = REGRESSIONS / "model" / "huge_block_count.gguf"
    reader = gguf.GGUFReader(str(path))
    field = reader.fields["gemma3.block_count"]
    block_count = int(field.parts[field.data[0]][0])
    n_tensors = len(reader.tensors)
    assert block_count > n_tensors

    with pytest.raises(ValueError, match=f"gemma3.block_count = {block_count} exceeds the {n_tensors} tensors"):
        tq.Model.load(path, cache_type_k="f16", cache_type_v="f16", ctx=8)


def test_gguf_without_tensors_or_padding():
    # A header (magic, version, tensor count 0, metadata count 0: 24 bytes) and 5
    # stray bytes. The data section would start at the next multiple of the
    # default alignment, 32, past the 29-byte file, but there is no tensor data.
    path = REGRESSIONS / "gguf" / "no_tensors_no_padding.gguf"
    assert path.stat().st_size == 29
    with GGUFFile(path) as file:
        assert file.tensors == []
        assert file.metadata == {}
        assert file.alignment == 32
        assert file.data_offset == 32
        assert file.file_size == 29


@pytest.mark.parametrize("path", sorted((REGRESSIONS / "model").glob("*")), ids=lambda p: p.name)
def test_model_regression_raises_clear_error(path):
    with pytest.raises((ValueError, NotImplementedError)) as raised:
        tq.Model.load(path, cache_type_k="f16", cache_type_v="f16", ctx=8)
    assert str(raised.value)


@pytest.mark.parametrize("name,key", [("step_19_digits", "step"), ("entry_19_digits", "data_position")])
def test_checkpoint_counter_past_int64_rejected(name, key):
    # 9999999999999999999 has 19 digits, the most the parser reads, and exceeds
    # 2^63 - 1: accumulating it in int64_t was signed overflow (UBSan).
    from safetensors import safe_open

    from turboquant import _core

    path = REGRESSIONS / "mtp_checkpoint" / f"{name}.safetensors"
    with safe_open(str(path), "np") as handle:
        assert "9999999999999999999" in handle.metadata()[key]
    with pytest.raises(ValueError, match=f"{key} is '.*9999999999999999999"):
        _core.mtp_checkpoint_parse(path.read_bytes())


@pytest.mark.parametrize("step_text,expected", [("9223372036854775807", None), ("4611686018427387904", 2**62)])
def test_checkpoint_step_bounds(step_text, expected):
    # The parser accepts counts up to 2^62 (a bound of the format), so 2^63 - 1 is
    # rejected and 2^62 is the largest accepted step.
    import numpy as np
    from safetensors.numpy import save

    from turboquant import _core

    metadata = {"format": "turboquant-mtp-1", "step": step_text, "data_position": '{"entry": 0, "token": 0}',
                "base_model": "m", "settings": "{}"}
    data = save({"heads.weight": np.zeros((1, 4, 4), np.float32), "heads.bias": np.zeros((1, 4), np.float32)},
                metadata=metadata)
    if expected is None:
        with pytest.raises(ValueError, match="step is"):
            _core.mtp_checkpoint_parse(data)
    else:
        assert _core.mtp_checkpoint_parse(data)["step"] == expected


def test_gguf_empty_tensor_matches_gguf_package():
    # A tensor of shape (3616, 0) has rows of 3616 halves but no bytes: the reader
    # must report nbytes 0 and return no data, as the gguf package does.
    path = REGRESSIONS / "gguf" / "empty_tensor_long_row.gguf"
    expected = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors}
    with GGUFFile(path) as file:
        sizes = {t["name"]: t["nbytes"] for t in file.tensors}
        assert sizes == expected
        assert file.tensor_data("f16").size == 0
    assert expected["f16"] == 0
