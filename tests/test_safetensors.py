"""Tests of the C safetensors reader (turboquant.SafetensorsFile) and the index resolver.

References: files written by the `safetensors` package (NumPy and torch writers) must read
back bit-exact, and a sharded checkpoint written by transformers' save_pretrained must resolve
through its index. Corrupt files are built byte by byte from the format: u64 little-endian
header length, the JSON header, then the data buffer.
"""

import json
import os
import random
import struct

import numpy as np
import pytest

from turboquant import SafetensorsFile, SafetensorsIndex, safetensors_info
from turboquant.safetensors import bf16_to_float32

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def raw_file(header, data=b"", header_len=None, pad=True):
    """Build a safetensors file from a header (dict, str or bytes) and a data buffer."""
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode()
    if pad:
        header += b" " * (-len(header) % 8)
    length = len(header) if header_len is None else header_len
    return struct.pack("<Q", length) + header + data


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


# ---- round trip against the safetensors package ----

NUMPY_DTYPES = [np.float32, np.float16, np.float64, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32,
                np.int64, np.uint64, np.bool_]


def test_numpy_writer_round_trip_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {}
    for i, dtype in enumerate(NUMPY_DTYPES):
        shape = (3, 5, 2) if i % 2 else (7,)
        if dtype == np.bool_:
            tensors[f"t{i}"] = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif np.issubdtype(dtype, np.floating):
            tensors[f"t{i}"] = rng.standard_normal(shape).astype(dtype)
        else:
            info = np.iinfo(dtype)
            tensors[f"t{i}"] = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    tensors["scalar"] = np.array(3.5, dtype=np.float32)
    tensors["empty"] = np.zeros((0, 4), dtype=np.float32)
    tensors["model.layers.0.self_attn.q_proj.weight"] = rng.standard_normal((16, 8)).astype(np.float32)
    tensors["\u00e9t\u00e9/\u6a21\u578b"] = np.arange(3, dtype=np.int32)
    path = tmp_path / "all.safetensors"
    safetensors_numpy.save_file(tensors, path, metadata={"format": "np", "note": "caf\u00e9"})

    with SafetensorsFile(path) as file:
        assert file.names() == sorted(tensors)
        assert len(file) == len(tensors)
        assert file.metadata == {"format": "np", "note": "caf\u00e9"}
        for name, expected in tensors.items():
            got = file.tensor(name)
            assert got.dtype == expected.dtype
            assert got.shape == expected.shape
            assert got.tobytes() == expected.tobytes()
            assert not got.flags.writeable
            del got


def test_torch_writer_bf16_and_f16(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(1)
    weights = {
        "bf16": torch.randn(33, 17, generator=generator).to(torch.bfloat16),
        "f16": torch.randn(5, 9, generator=generator).to(torch.float16),
        "f32": torch.randn(4, 4, generator=generator),
    }
    path = tmp_path / "torch.safetensors"
    save_file(weights, path)
    with SafetensorsFile(path) as file:
        assert file.info("bf16")["dtype"] == "BF16"
        bits = file.tensor("bf16")
        assert bits.tobytes() == weights["bf16"].view(torch.int16).numpy().tobytes()
        widened = file.tensor("bf16", as_float32=True)
        np.testing.assert_array_equal(widened, weights["bf16"].float().numpy())
        np.testing.assert_array_equal(file.tensor("f16"), weights["f16"].numpy())
        np.testing.assert_array_equal(file.tensor("f16", as_float32=True), weights["f16"].float().numpy())
        np.testing.assert_array_equal(file.tensor("f32"), weights["f32"].numpy())
        del bits, widened


def test_bf16_to_float32_exact():
    torch = pytest.importorskip("torch")
    values = torch.tensor([0.0, -0.0, 1.0, -2.5, 3.0e38, 1.0e-40, float("inf")], dtype=torch.bfloat16)
    bits = values.view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bf16_to_float32(bits), values.float().numpy())


def test_info_and_offsets_match_reference(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(5, dtype=np.float16)}
    path = tmp_path / "x.safetensors"
    safetensors_numpy.save_file(tensors, path)
    data = path.read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_len])
    info = safetensors_info(path)
    assert info["metadata"] == {}
    for name, array in tensors.items():
        begin, end = header[name]["data_offsets"]
        assert info["tensors"][name] == {
            "dtype": header[name]["dtype"],
            "shape": array.shape,
            "file_offset": 8 + header_len + begin,
            "nbytes": end - begin,
        }


def test_bytes_source_equals_file(tmp_path):
    tensors = {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}
    path = tmp_path / "w.safetensors"
    safetensors_numpy.save_file(tensors, path)
    from_bytes = SafetensorsFile(path.read_bytes())
    np.testing.assert_array_equal(from_bytes.tensor("w"), tensors["w"])


def test_array_keeps_file_open_and_close_waits(tmp_path):
    path = tmp_path / "w.safetensors"
    safetensors_numpy.save_file({"w": np.arange(4, dtype=np.float32)}, path)
    file = SafetensorsFile(path)
    array = file.tensor("w")
    with pytest.raises(BufferError, match="arrays still use its memory"):
        file.close()
    del array
    file.close()
    with pytest.raises(ValueError, match="closed"):
        file.names()


def test_unknown_name_raises_keyerror(tmp_path):
    path = tmp_path / "w.safetensors"
    safetensors_numpy.save_file({"w": np.arange(4, dtype=np.float32)}, path)
    with SafetensorsFile(path) as file:
        with pytest.raises(KeyError, match="'v'"):
            file.tensor("v")


def test_empty_header_object_is_valid(tmp_path):
    with SafetensorsFile(raw_file({})) as file:
        assert len(file) == 0
        assert file.metadata == {}


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        SafetensorsFile(tmp_path / "none.safetensors")
    with pytest.raises(IsADirectoryError):
        SafetensorsFile(tmp_path)


# ---- corrupt files ----

F32_2 = entry("F32", [2], 0, 8)

# (name, file bytes, words the message must contain)
CORRUPT_FILES = [
    ("empty file", b"", "shorter than the 8-byte"),
    ("short length", b"\x02\x00\x00", "shorter than the 8-byte"),
    ("header past end", struct.pack("<Q", 100) + b"{}", "header length 100 but only 2 bytes follow"),
    ("huge header length", struct.pack("<Q", 1 << 63) + b"{}", "above the 100 MB limit"),
    ("header length 2^64-1", b"\xff" * 8 + b"{}", "above the 100 MB limit"),
    ("header length 0", struct.pack("<Q", 0), "too short for a JSON object"),
    ("header not object", raw_file("[]"), "must be a JSON object"),
    ("trailing comma", raw_file('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},}', b"\0" * 8),
     "expected a string"),
    ("single quotes", raw_file("{'a': 1}"), "expected a string"),
    ("unterminated object", raw_file('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}', b"\0" * 8),
     "expected ',' or '}'"),
    ("bytes after object", raw_file(b"{} x", pad=False), "unexpected bytes after the header object"),
    ("invalid UTF-8", raw_file(b'{"a\xff": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}'), "invalid UTF-8"),
    ("overlong UTF-8", raw_file(b'{"a\xc0\xaf": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}'),
     "invalid UTF-8"),
    ("UTF-8 surrogate", raw_file(b'{"\xed\xa0\x80": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}'),
     "invalid UTF-8"),
    ("lone surrogate escape", raw_file('{"\\ud800": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}'),
     "unpaired UTF-16 surrogate"),
    ("bad escape", raw_file('{"\\x41": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}'), "invalid escape"),
    ("NUL escape", raw_file('{"a\\u0000": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}'), "NUL"),
    ("raw control character", raw_file(b'{"a\nb": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}'),
     "control character"),
    ("unknown dtype", raw_file({"a": entry("F4", [2], 0, 1)}, b"\0"), "unknown dtype 'F4'"),
    ("missing offsets", raw_file({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8), "lacks data_offsets"),
    ("missing dtype", raw_file({"a": {"shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8), "lacks dtype"),
    ("unknown field", raw_file({"a": dict(F32_2, extra=1)}, b"\0" * 8), "unknown or repeated field 'extra'"),
    ("repeated field", raw_file('{"a": {"dtype": "F32", "dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
                                b"\0" * 8), "unknown or repeated field 'dtype'"),
    ("negative shape", raw_file({"a": entry("F32", [-2], 0, 8)}, b"\0" * 8), "shape must be a list"),
    ("float shape", raw_file({"a": entry("F32", [2.0], 0, 8)}, b"\0" * 8), "shape must be a list"),
    ("leading zero", raw_file('{"a": {"dtype": "F32", "shape": [02], "data_offsets": [0, 8]}}', b"\0" * 8),
     "shape must be a list"),
    ("nine dimensions", raw_file({"a": entry("F32", [1] * 9, 0, 4)}, b"\0" * 4), "too many array items"),
    ("shape not list", raw_file({"a": entry("F32", 2, 0, 8)}, b"\0" * 8), "shape must be a list"),
    ("one offset", raw_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, b"\0" * 8),
     "data_offsets must be [begin, end]"),
    ("offset beyond u64", raw_file('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 18446744073709551616]}}'),
     "larger than 2^64 - 1"),
    ("end before begin", raw_file({"a": entry("F32", [0], 8, 0)}, b"\0" * 8), "end before begin"),
    ("offsets past end", raw_file({"a": entry("F32", [4], 0, 16)}, b"\0" * 8), "past the end of the 8-byte data"),
    ("huge offsets", raw_file({"a": entry("U8", [8], 2**64 - 16, 2**64 - 8)}, b"\0" * 8), "past the end"),
    ("size mismatch", raw_file({"a": entry("F32", [3], 0, 8)}, b"\0" * 8), "give 3 elements of 4 bytes"),
    ("partial element", raw_file({"a": entry("F16", [2], 0, 3)}, b"\0" * 3), "data_offsets span 3 bytes"),
    ("shape overflow", raw_file({"a": entry("F32", [2**40, 2**40], 0, 8)}, b"\0" * 8), "overflows"),
    ("overlap", raw_file({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, b"\0" * 12), "overlaps"),
    ("same range twice", raw_file({"a": F32_2, "b": F32_2}, b"\0" * 8), "overlaps"),
    ("gap", raw_file({"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}, b"\0" * 12),
     "unused bytes [4, 8)"),
    ("gap at start", raw_file({"a": entry("F32", [1], 4, 8)}, b"\0" * 8), "unused bytes [0, 4)"),
    ("trailing bytes", raw_file({"a": F32_2}, b"\0" * 9), "trailing bytes"),
    ("duplicate name", raw_file('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                                '"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', b"\0" * 8),
     "appears twice"),
    ("metadata twice", raw_file('{"__metadata__": {}, "__metadata__": {}}'), "duplicate key __metadata__"),
    ("metadata number", raw_file('{"__metadata__": {"a": 1}}'), "__metadata__ values must be strings"),
    ("metadata not object", raw_file('{"__metadata__": "x"}'), "__metadata__ must be an object"),
    ("metadata duplicate key", raw_file('{"__metadata__": {"a": "1", "a": "2"}}'), "duplicate key in __metadata__"),
    ("tensor not object", raw_file('{"a": [1, 2]}'), "a tensor entry must be an object"),
]


@pytest.mark.parametrize("name, data, words", CORRUPT_FILES, ids=[case[0] for case in CORRUPT_FILES])
def test_corrupt_file_rejected(tmp_path, name, data, words):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(ValueError) as info:
        SafetensorsFile(path)
    assert words in str(info.value)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError):
        SafetensorsFile(data)


def test_corrupt_files_rejected_by_reference():
    # The safetensors package rejects the same structural faults, so the table is not stricter
    # than the format for these cases.
    from safetensors import SafetensorError
    from safetensors.numpy import load

    for name in ("header past end", "size mismatch", "overlap", "gap", "trailing bytes", "offsets past end"):
        data = dict((case[0], case[1]) for case in CORRUPT_FILES)[name]
        with pytest.raises(SafetensorError):
            load(data)


def test_random_corruption_never_crashes(tmp_path):
    rng = random.Random(7)
    tensors = {f"layer.{i}": np.full((i + 1, 3), i, dtype=np.float32) for i in range(6)}
    path = tmp_path / "good.safetensors"
    safetensors_numpy.save_file(tensors, path, metadata={"k": "v"})
    good = path.read_bytes()
    header_end = 8 + struct.unpack("<Q", good[:8])[0]
    opened = rejected = 0
    for _ in range(400):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(header_end)
            data[position] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        try:
            file = SafetensorsFile(bytes(data))
        except ValueError:
            rejected += 1
            continue
        opened += 1
        for name in file.names():
            info = file.info(name)
            assert info["file_offset"] + info["nbytes"] <= len(data)
        file.close()
    assert rejected > 0
    assert opened + rejected == 400


# ---- index resolver ----


def write_sharded(tmp_path):
    shards = {
        "model-00001-of-00002.safetensors": {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3)},
        "model-00002-of-00002.safetensors": {"b.weight": np.ones((4,), dtype=np.float16),
                                             "c.bias": np.zeros((2,), dtype=np.float32)},
    }
    weight_map = {}
    for shard, tensors in shards.items():
        safetensors_numpy.save_file(tensors, tmp_path / shard)
        weight_map.update({name: shard for name in tensors})
    index = {"metadata": {"total_size": 40}, "weight_map": weight_map}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    return shards, index


def test_index_resolves_shards(tmp_path):
    shards, _ = write_sharded(tmp_path)
    with SafetensorsIndex(tmp_path) as index:
        assert index.names() == ["a.weight", "b.weight", "c.bias"]
        for shard, tensors in shards.items():
            for name, expected in tensors.items():
                assert index.shard_of(name) == shard
                np.testing.assert_array_equal(index.tensor(name), expected)


def test_index_of_transformers_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    model = Gemma3ForCausalLM(config)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    with SafetensorsIndex(tmp_path) as index:
        assert len({index.shard_of(name) for name in index.names()}) >= 2
        for name in index.names():
            np.testing.assert_array_equal(index.tensor(name, as_float32=True), state[name].float().numpy())


def test_single_file_directory(tmp_path):
    safetensors_numpy.save_file({"w": np.arange(3, dtype=np.float32)}, tmp_path / "model.safetensors")
    with SafetensorsIndex(tmp_path) as index:
        assert index.names() == ["w"]
        assert index.shard_of("w") == "model.safetensors"


@pytest.mark.parametrize(
    "change, error, words",
    [
        (lambda index: index["weight_map"].update({"a.weight": "../model.safetensors"}), ValueError,
         "same directory"),
        (lambda index: index["weight_map"].update({"a.weight": "/tmp/x.safetensors"}), ValueError, "same directory"),
        (lambda index: index["weight_map"].update({"a.weight": 3}), ValueError, "same directory"),
        (lambda index: index["weight_map"].update({"zz": "model-00001-of-00002.safetensors"}), ValueError,
         "does not contain it"),
        (lambda index: index["weight_map"].update({"a.weight": "model-00003-of-00003.safetensors"}),
         FileNotFoundError, "is missing"),
        (lambda index: index.pop("weight_map"), ValueError, "weight_map"),
    ],
)
def test_invalid_index_rejected(tmp_path, change, error, words):
    _, index = write_sharded(tmp_path)
    change(index)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(error, match=words.replace("(", r"\(")):
        SafetensorsIndex(tmp_path)


def test_index_not_json(tmp_path):
    write_sharded(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_bytes(b"{\xff")
    with pytest.raises(ValueError, match="not valid UTF-8 JSON"):
        SafetensorsIndex(tmp_path)


def test_directory_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        SafetensorsIndex(tmp_path)
    assert os.listdir(tmp_path) == []
