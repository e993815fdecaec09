"""Medusa heads for a frozen base model: the heads, their checkpoints and their identity check.

Head k (k = 0, 1, 2) reads the final hidden state h_t after the output norm and predicts the
token at t + 2 + k, one step further than the base LM head::

    g = h + SiLU(W_k h + b_k),   logits = softcap(E g)

where E is the base model's LM head (Gemma's tied token embedding, in its stored quantized form)
and softcap is the base model's final logit softcap when it has one. W and b start at zero, so
untrained heads repeat the base next-token distribution. Heads may have a draft vocabulary: a
sorted set of token ids whose LM-head rows alone are scored, which makes drafting and training
cheaper by the ratio of the vocabulary sizes. The heads run in C (``turboquant._core.mtp_forward``);
training is in ``turboquant.train``.

A checkpoint is one safetensors file (format ``turboquant-mtp-1``, described in
``docs/mtp.md``) that names the base model it was trained on. ``MTPHeads.load`` rejects a
checkpoint of another model or of another quantization of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from . import _core

__all__ = ["MTPHeads", "base_model_identity", "default_checkpoint", "save_checkpoint", "latest_checkpoint",
           "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "turboquant-mtp-1"
CHECKPOINT_PATTERN = re.compile(r"^mtp-step-(\d{8})\.safetensors$")

# Checkpoints shipped in the package, by base model identity.
_DATA_DIR = Path(__file__).resolve().parent / "data" / "mtp"
_SHIPPED = {"gemma-3-270m-q4_k_m": _DATA_DIR / "gemma-3-270m-q4_k_m.safetensors"}


def _core_model(model):
    """Return the ``_core.Model`` or ``_core.Context`` behind a ``turboquant.Model``, or model itself."""
    core = getattr(model, "_core", model)
    if not isinstance(core, (_core.Model, _core.Context)):
        raise TypeError(f"model must be a turboquant.Model or turboquant._core.Model, got {type(model).__name__}")
    return core


def base_model_identity(model) -> str:
    """Return the identity string of model that checkpoints record and compare.

    It combines the architecture, layer count, hidden size, vocabulary size, the LM head's ggml
    type and the SHA-256 of the LM-head bytes as stored, so another model, or another
    quantization of the same model, gives another identity.
    """
    core = _core_model(model)
    config = core.config
    data, ggml_type, n_in, n_out = _core.mtp_lm_head(core)
    digest = hashlib.sha256(data).hexdigest()
    return (f"{config['architecture']};layers={config['n_layers']};hidden={config['hidden']};"
            f"vocab={config['vocab']};lm_head=type{ggml_type}:{n_out}x{n_in}:sha256={digest}")


def latest_checkpoint(directory) -> Path | None:
    """Return the newest complete checkpoint ``mtp-step-XXXXXXXX.safetensors`` in directory, or None.

    Temporary files of an interrupted save have other names and are ignored.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = [(int(match.group(1)), entry) for entry in directory.iterdir()
             if (match := CHECKPOINT_PATTERN.match(entry.name)) and entry.is_file()]
    return max(found)[1] if found else None


def _encode_safetensors(tensors: dict, metadata: dict) -> bytes:
    """Serialize float arrays and string metadata as safetensors bytes (header padded to 8 bytes)."""
    header = {"__metadata__": metadata}
    offset = 0
    blobs = []
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        dtype = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int32): "I32"}[array.dtype]
        blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def _format_position(entry: int, token: int) -> str:
    # The C parser accepts exactly this form.
    return f'{{"entry": {int(entry)}, "token": {int(token)}}}'


def save_checkpoint(directory, heads: "MTPHeads", *, adam=None, data_position=(0, 0), settings=None,
                    dtype=np.float32, _before_rename=None) -> Path:
    """Write heads (and the AdamW moments adam, a dict of four arrays, when given) as the checkpoint
    ``directory/mtp-step-XXXXXXXX.safetensors`` of heads.step and return its path.

    The bytes go to a temporary file in directory, which is flushed and fsynced, then renamed over
    the final name, and the directory is fsynced. An interrupted save therefore leaves the previous
    checkpoints as they were. data_position is (ZIM entry index, token offset) where training continues.
    dtype float16 halves the size of the heads (the AdamW moments stay float32).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {"heads.weight": heads.weight.astype(dtype), "heads.bias": heads.bias.astype(dtype)}
    if heads.vocab is not None:
        tensors["heads.vocab"] = heads.vocab
    if adam is not None:
        for name in ("m.weight", "v.weight", "m.bias", "v.bias"):
            tensors[f"adam.{name}"] = np.asarray(adam[name], dtype=np.float32)
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "step": str(int(heads.step)),
        "data_position": _format_position(*data_position),
        "base_model": heads.base_model,
        "settings": json.dumps(settings or {}, sort_keys=True),
    }
    data = _encode_safetensors(tensors, metadata)

    final = directory / f"mtp-step-{int(heads.step):08d}.safetensors"
    temporary = directory / f".{final.name}.{os.getpid()}.tmp"
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if _before_rename is not None:
            _before_rename(temporary)  # lets tests interrupt a save between write and rename
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)
    return final


class MTPHeads:
    """Set of Medusa heads for one base model.

    Attributes: ``weight`` float32 (n_heads, hidden, hidden) with row = output, ``bias`` float32
    (n_heads, hidden), ``vocab`` (int32 strictly increasing token ids that the heads score, or None
    for the whole vocabulary), ``base_model`` (the identity of ``base_model_identity``), ``step``
    (optimizer steps taken), and after ``load`` also ``data_position`` (ZIM entry, token offset),
    ``settings`` (dict), ``adam`` (the AdamW moments, or None) and ``path``.
    """

    def __init__(self, weight, bias, base_model: str, step: int = 0, vocab=None):
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        if self.weight.ndim != 3 or self.weight.shape[1] != self.weight.shape[2]:
            raise ValueError(f"weight has shape {self.weight.shape}; expected (n_heads, hidden, hidden)")
        if self.bias.shape != self.weight.shape[:2]:
            raise ValueError(f"bias has shape {self.bias.shape}; expected {self.weight.shape[:2]}")
        if vocab is not None:
            vocab = np.ascontiguousarray(vocab, dtype=np.int32)
            if vocab.ndim != 1 or vocab.size == 0 or np.any(vocab < 0) or np.any(np.diff(vocab) <= 0):
                raise ValueError("vocab must be a non-empty 1-D array of strictly increasing token ids")
        self.vocab = vocab
        self._gathered = None  # (core model, vocab array, _core.mtp_vocab capsule) of the last draft_vocab call
        self.base_model = base_model
        self.step = int(step)
        self.data_position = (0, 0)
        self.settings: dict = {}
        self.adam = None
        self.path: Path | None = None

    @property
    def n_heads(self) -> int:
        return self.weight.shape[0]

    @property
    def hidden(self) -> int:
        return self.weight.shape[1]

    @classmethod
    def zeros(cls, model, n_heads: int = 3, vocab=None) -> "MTPHeads":
        """Untrained heads (W = 0, b = 0) for model: each returns the base next-token distribution
        (over the token ids vocab, when given)."""
        if not 1 <= int(n_heads) <= 16:
            raise ValueError(f"n_heads is {n_heads}; pass 1 to 16 heads")
        hidden = _core_model(model).config["hidden"]
        heads = cls(np.zeros((n_heads, hidden, hidden), np.float32), np.zeros((n_heads, hidden), np.float32),
                    base_model_identity(model), vocab=vocab)
        heads.draft_vocab(model)  # checks the ids against the model's vocabulary
        return heads

    def draft_vocab(self, model):
        """Return the ``_core.mtp_vocab`` of the heads' vocab for model (gathered once), or None when
        the heads score the whole vocabulary."""
        if self.vocab is None:
            return None
        core = _core_model(model)
        if self._gathered is None or self._gathered[0] is not core or self._gathered[1] is not self.vocab:
            self._gathered = (core, self.vocab, _core.mtp_vocab(core, self.vocab))
        return self._gathered[2]

    @classmethod
    def load(cls, path, model) -> "MTPHeads":
        """Load the heads from a checkpoint file, or from the newest checkpoint in a directory.

        Raises OSError for a missing path or a directory without checkpoints, ValueError for a
        corrupt or truncated file (with the reason), and ValueError naming the file and both
        identities when the checkpoint was trained on another base model.
        """
        path = Path(path)
        if path.is_dir():
            found = latest_checkpoint(path)
            if found is None:
                raise OSError(f"no checkpoint mtp-step-XXXXXXXX.safetensors in directory {path}")
            path = found
        data = path.read_bytes()
        try:
            parsed = _core.mtp_checkpoint_parse(data)
        except ValueError as error:
            raise ValueError(f"{path} is not a valid {CHECKPOINT_FORMAT} checkpoint: {error}") from None
        try:
            settings = json.loads(parsed["settings"])
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} has invalid settings metadata: {error}") from None

        identity = base_model_identity(model)
        if parsed["base_model"] != identity:
            raise ValueError(f"{path} was trained on base model {parsed['base_model']!r}, but the model given is "
                             f"{identity!r}; train heads for this model or load it with the matching GGUF file")
        heads = cls(parsed["weight"], parsed["bias"], parsed["base_model"], parsed["step"], vocab=parsed["vocab"])
        if heads.vocab is not None and heads.vocab[-1] >= _core_model(model).config["vocab"]:
            raise ValueError(f"{path} has a draft vocabulary with token id {heads.vocab[-1]}, outside the model's "
                             f"{_core_model(model).config['vocab']} tokens")
        heads.data_position = (parsed["data_entry"], parsed["data_token"])
        heads.settings = settings
        heads.path = path
        if parsed["adam_m_weight"] is not None:
            heads.adam = {"m.weight": parsed["adam_m_weight"], "v.weight": parsed["adam_v_weight"],
                          "m.bias": parsed["adam_m_bias"], "v.bias": parsed["adam_v_bias"]}
        return heads

    def save(self, directory, **kwargs) -> Path:
        """Write the heads as a checkpoint in directory (see ``save_checkpoint``) and return its path."""
        return save_checkpoint(directory, self, **kwargs)

    def logits(self, model, hidden) -> np.ndarray:
        """Logits float32 (n_heads, n, entries) of every head for hidden (n, hidden) final hidden states
        after the output norm (``model.eval(..., hidden=True)`` returns them). entries is n_vocab, or
        len(vocab) with entry i for token vocab[i] when the heads have a draft vocabulary."""
        hidden = np.ascontiguousarray(hidden, dtype=np.float32)
        if hidden.ndim == 1:
            hidden = hidden[None, :]
        return _core.mtp_forward(_core_model(model), self.weight, self.bias, hidden, vocab=self.draft_vocab(model))


def default_checkpoint(model) -> Path | None:
    """Return the path of the checkpoint shipped in the package for model, or None.

    Only the default model (Gemma 3 270M, Q4_K_M GGUF) has one. The identity stored in the
    shipped file must equal the model's, so another quantization returns None.
    """
    for path in _SHIPPED.values():
        if not path.is_file():
            continue
        parsed = _core.mtp_checkpoint_parse(path.read_bytes())
        if parsed["base_model"] == base_model_identity(model):
            return path
    return None
