"""safetensors files and sharded checkpoints (``model.safetensors.index.json``).

The header is parsed and checked in C (``_core.SafetensorsFile``): offsets inside the file,
no overlaps or gaps, byte lengths equal to shape times dtype size, strict JSON and UTF-8.
Tensors come back as read-only NumPy arrays over the memory-mapped file, without copies.
"""

from __future__ import annotations

import json
import os

import numpy as np

from . import _core

__all__ = ["SafetensorsFile", "SafetensorsIndex", "safetensors_info", "open_safetensors"]

# NumPy dtypes of the safetensors dtypes that NumPy has. BF16 comes back as its uint16 bit
# patterns unless the caller asks for float32; F8 types come back as uint8 bit patterns.
_NUMPY_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "F8_E5M2": np.uint8, "F8_E4M3": np.uint8,
    "I16": np.int16, "U16": np.uint16, "F16": np.float16, "BF16": np.uint16, "I32": np.int32,
    "U32": np.uint32, "F32": np.float32, "F64": np.float64, "I64": np.int64, "U64": np.uint64,
}


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16) to float32 exactly: bfloat16 is the top half of a float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


class SafetensorsFile:
    """One .safetensors file, memory-mapped, or a bytes object.

    ``file.tensor(name)`` returns a read-only array that shares the file's memory (the file
    stays mapped while any such array exists). Use as a context manager or call ``close()``.
    Raises OSError when the file cannot be read and ValueError when it is not a valid
    safetensors file.
    """

    def __init__(self, source):
        if not isinstance(source, bytes):
            source = os.fspath(source)
            if os.path.isdir(source):
                raise IsADirectoryError(f"{source!r} is a directory; pass a .safetensors file or use "
                                        "SafetensorsIndex for a model directory")
            if not os.path.exists(source):
                raise FileNotFoundError(f"safetensors file not found: {source!r}")
        self._core = _core.SafetensorsFile(source)
        self.path = source if isinstance(source, str) else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._core.close()

    def __len__(self):
        return len(self._core)

    def __contains__(self, name):
        try:
            self._core.info(name)
        except (KeyError, TypeError):
            return False
        return True

    def names(self) -> list:
        return self._core.names()

    @property
    def metadata(self) -> dict:
        return self._core.metadata

    def info(self, name: str) -> dict:
        """Return dtype ("F32", ...), shape, file_offset and nbytes of a tensor; KeyError if absent."""
        return self._core.info(name)

    def tensor(self, name: str, as_float32: bool = False) -> np.ndarray:
        """Return a tensor as a read-only array over the file's memory.

        BF16 tensors are their uint16 bit patterns, or float32 (a copy) with as_float32=True,
        which also widens F16. Raises KeyError for an unknown name.
        """
        info = self._core.info(name)
        dtype = np.dtype(_NUMPY_DTYPES[info["dtype"]])
        count = info["nbytes"] // dtype.itemsize
        array = np.frombuffer(self._core, dtype=dtype, count=count, offset=info["file_offset"])
        array = array.reshape(info["shape"])
        if as_float32 and info["dtype"] == "BF16":
            return bf16_to_float32(array)
        if as_float32 and info["dtype"] == "F16":
            return array.astype(np.float32)
        return array


def safetensors_info(path) -> dict:
    """Return the header of a .safetensors file: {"metadata": {...}, "tensors": {name: {dtype,
    shape, file_offset, nbytes}}}. Errors as SafetensorsFile."""
    with SafetensorsFile(path) as file:
        return {"metadata": file.metadata, "tensors": {name: file.info(name) for name in file.names()}}


class SafetensorsIndex:
    """The tensors of a Hugging Face model directory: ``model.safetensors``, or the shards listed
    in ``model.safetensors.index.json`` (its ``weight_map`` maps each tensor name to a shard
    file in the same directory).

    Every shard is opened and checked when the index is created, and every tensor the index
    lists must be in its shard. Raises FileNotFoundError when the directory has neither file,
    ValueError for an invalid index.
    """

    INDEX_NAME = "model.safetensors.index.json"
    SINGLE_NAME = "model.safetensors"

    def __init__(self, path):
        path = os.fspath(path)
        directory = path if os.path.isdir(path) else os.path.dirname(path)
        index_path = path if not os.path.isdir(path) else os.path.join(path, self.INDEX_NAME)
        self.directory = directory
        self._files = {}
        self._where = {}
        if path.endswith(".safetensors") and os.path.isfile(path):
            self._open_single(path)
        elif os.path.isfile(index_path):
            self._open_index(index_path)
        elif os.path.isfile(os.path.join(directory, self.SINGLE_NAME)):
            self._open_single(os.path.join(directory, self.SINGLE_NAME))
        else:
            raise FileNotFoundError(f"{path!r} has neither {self.INDEX_NAME} nor {self.SINGLE_NAME}")

    def _open_single(self, file_path):
        file = SafetensorsFile(file_path)
        name = os.path.basename(file_path)
        self._files[name] = file
        self._where = {tensor: name for tensor in file.names()}

    def _open_index(self, index_path):
        try:
            with open(index_path, "rb") as f:
                index = json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{index_path}: not valid UTF-8 JSON: {exc}") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index_path}: expected an object with a non-empty \"weight_map\" of tensor name to "
                             "shard file")
        for tensor, shard in weight_map.items():
            if not isinstance(shard, str) or not shard.endswith(".safetensors") or os.path.basename(shard) != shard \
                    or shard.startswith("."):
                raise ValueError(f"{index_path}: tensor {tensor!r} maps to {shard!r}; expected a .safetensors file "
                                 "name in the same directory")
        try:
            for shard in sorted(set(weight_map.values())):
                shard_path = os.path.join(self.directory, shard)
                if not os.path.isfile(shard_path):
                    raise FileNotFoundError(f"{index_path}: shard {shard!r} is missing from {self.directory!r}")
                self._files[shard] = SafetensorsFile(shard_path)
            for tensor, shard in weight_map.items():
                if tensor not in self._files[shard].names():
                    raise ValueError(f"{index_path}: tensor {tensor!r} is listed in shard {shard!r} but that file "
                                     "does not contain it")
        except BaseException:
            self.close()
            raise
        self._where = dict(weight_map)

    def close(self):
        for file in self._files.values():
            file.close()
        self._files = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self):
        return len(self._where)

    def __contains__(self, name):
        return name in self._where

    def names(self) -> list:
        return sorted(self._where)

    def shard_of(self, name: str) -> str:
        """Return the name of the shard file that contains a tensor; KeyError if absent."""
        if name not in self._where:
            raise KeyError(f"no tensor named {name!r} in {self.directory!r}")
        return self._where[name]

    def info(self, name: str) -> dict:
        return self._files[self.shard_of(name)].info(name)

    def tensor(self, name: str, as_float32: bool = False) -> np.ndarray:
        return self._files[self.shard_of(name)].tensor(name, as_float32=as_float32)


def open_safetensors(path):
    """Open a .safetensors file, an index file or a model directory as a SafetensorsIndex."""
    return SafetensorsIndex(path)
