"""GGML weight formats: dequantize GGUF tensor data and multiply by quantized matrices.

The work runs in the C core (`turboquant._core`), on the raw block bytes of a GGUF
tensor, without expanding the matrix to float.
"""

from . import _core

# GGML type ids (as stored in GGUF tensor infos) of the types these functions accept.
GGML_TYPES = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q8_0": 8,
    "q4_k": 12,
    "q5_k": 13,
    "q6_k": 14,
    "bf16": 30,
}


def ggml_type_id(ggml_type):
    """Return the GGML type id for a name such as "q4_K" (any case) or an id such as 12."""
    if isinstance(ggml_type, str):
        try:
            return GGML_TYPES[ggml_type.lower()]
        except KeyError:
            names = ", ".join(GGML_TYPES)
            raise ValueError(f"unknown GGML type name {ggml_type!r}; expected one of {names}") from None
    return int(ggml_type)


def ggml_dequantize(ggml_type, raw, n_values):
    """Dequantize the first n_values values of raw (bytes of GGML blocks) to a float32 array."""
    return _core.dequantize(ggml_type_id(ggml_type), raw, n_values)


def ggml_matmul(ggml_type, raw, n_in, n_out, x, kernels=None, *, per_row=False):
    """Compute x @ W.T for W of n_out rows of n_in values, stored as GGML blocks in raw.

    x is float32 of shape (n_tokens, n_in) or (n_in,). The activations are quantized to
    8 bits per block (Q8_0 or Q8_K, as llama.cpp does) for the integer formats. kernels
    forces a variant ("scalar", "avx2", "avx512", "neon"); None picks TURBOQUANT_KERNELS
    or the best variant for this CPU. per_row=True gives each token's row bit for bit the
    result of a one-token call (the path that verifies draft trees); it never takes the
    blocked product that prompts of many tokens use.
    """
    return _core.matmul(ggml_type_id(ggml_type), raw, n_in, n_out, x, kernels=kernels, per_row=per_row)
