"""Read GGUF model files with the C reader of turboquant.

``GGUFFile(path)`` memory-maps the file read-only and validates its header, metadata
and tensor table when it opens, so a truncated or corrupt file fails at once with a
ValueError that names the field and its offset. Tensor data and numeric metadata
arrays come back as read-only NumPy arrays over the mapping, without copies::

    from turboquant.gguf import GGUFFile

    with GGUFFile("model.gguf") as f:
        print(f.get("general.architecture"))  # one key; f.metadata converts them all
        for info in f.tensors:
            print(info["name"], info["shape"], info["type_name"], info["nbytes"])
        raw = f.tensor_data("token_embd.weight")  # uint8 array of the stored blocks

``GGUFFile.from_buffer(data)`` parses a file that is already in memory (bytes or a
read-only mmap) in the same way, without copying it.

Strings in metadata are decoded from UTF-8 with the 'surrogateescape' error handler,
so ``s.encode("utf-8", "surrogateescape")`` returns the bytes of the file. Arrays
returned by the object stay valid after ``close()``, because each keeps the mapping
alive until it is deleted.
"""

from ._core import GGUFFile

__all__ = ["GGUFFile"]
