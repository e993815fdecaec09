"""Tests of the blocked matmul path for prompt processing (4 or more tokens).

On CPUs with AVX-512 VNNI the avx512 variant repacks Q4_0, Q5_0, Q8_0, Q4_K and
Q6_K weights and computes 4-row x 3-token register tiles over 64-row chunks,
144-token blocks and 48-token result tiles. The shapes below leave remainders at
every one of those levels. Each result is checked as in test_weights.py: against
the same integer algorithm emulated in float64 (float32 rounding bound) and
against the float64 product of the dequantized weights (plus the activation
quantization bound).
"""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from turboquant import _core

from test_weights import (  # noqa: F401 (model_tensors is a fixture)
    SIMD_KERNELS,
    SUPPORTED_KERNELS,
    check_matmul,
    emulation_tolerance,
    gguf_dequantize,
    model_tensors,
    quantized_activation,
    random_raw,
)

BLOCKED_TYPES = [T.Q4_0, T.Q5_0, T.Q8_0, T.Q4_K, T.Q6_K]


def row_length(qtype):
    # 7 blocks of 32 leave an odd block for the 64-value pairs, and 3 super-blocks of
    # 256 give 24 Q4_K min terms, which the kernel pads to 32.
    return 768 if qtype in (T.Q4_K, T.Q6_K) else 224


@pytest.mark.parametrize("qtype", BLOCKED_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tokens", [4, 5, 149])
def test_blocked_matmul_remainders(qtype, n_tokens):
    # 70 rows: one full 64-row chunk and a chunk of 6, which is not a multiple of
    # the 4-row tile. 149 tokens: one 144-token block, then 5 tokens (one 3-token
    # tile and a 2-token rest).
    rng = np.random.default_rng(int(qtype) * 1000 + n_tokens)
    n_in, n_out = row_length(qtype), 70
    raw = random_raw(qtype, n_out, n_in, rng)
    x = rng.standard_normal((n_tokens, n_in)).astype(np.float32)
    x[:, rng.integers(0, n_in, 4)] *= 30  # a few large channels, as in Gemma hidden states
    scalar = check_matmul(qtype, raw, n_in, n_out, x, "scalar")
    weights = gguf_dequantize(raw, qtype, n_out, n_in).astype(np.float64)
    tol = emulation_tolerance(raw, qtype, weights, quantized_activation(x, qtype), n_in)
    for kernels in SIMD_KERNELS:
        simd = check_matmul(qtype, raw, n_in, n_out, x, kernels)
        # Both differ from the emulation by float32 rounding only.
        assert np.all(np.abs(simd - scalar) <= 2 * tol), kernels


def test_blocked_matmul_single_token_rest():
    # 7 tokens: two 3-token tiles and a 1-token rest.
    rng = np.random.default_rng(11)
    raw = random_raw(T.Q5_0, 9, 640, rng)
    x = rng.standard_normal((7, 640)).astype(np.float32)
    for kernels in SUPPORTED_KERNELS:
        check_matmul(T.Q5_0, raw, 640, 9, x, kernels)


def test_blocked_matmul_several_packed_ranges(model_tensors):
    # The kernel repacks at most 8 MiB of weights at a time: 7000 rows of the
    # Q8_0 embedding (640 inputs, 1280 packed bytes per row) need two ranges.
    tensor = model_tensors["token_embd.weight"]
    assert tensor.tensor_type == T.Q8_0
    raw = np.ascontiguousarray(np.asarray(tensor.data)[:7000])
    n_in = int(tensor.shape[0])
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, n_in)).astype(np.float32)
    for kernels in SIMD_KERNELS:
        check_matmul(T.Q8_0, raw, n_in, raw.shape[0], x, kernels)


def test_blocked_matmul_matches_per_token_calls():
    # A batch must give each token the result of a one-token call (which takes
    # the vec_dot path) up to float32 rounding.
    rng = np.random.default_rng(5)
    n_in, n_out = 1024, 33
    raw = random_raw(T.Q4_K, n_out, n_in, rng)
    x = rng.standard_normal((6, n_in)).astype(np.float32)
    weights = gguf_dequantize(raw, T.Q4_K, n_out, n_in).astype(np.float64)
    tol = emulation_tolerance(raw, T.Q4_K, weights, quantized_activation(x, T.Q4_K), n_in)
    for kernels in SUPPORTED_KERNELS:
        batch = _core.matmul(int(T.Q4_K), raw, n_in, n_out, x, kernels=kernels)
        single = np.stack([_core.matmul(int(T.Q4_K), raw, n_in, n_out, x[t : t + 1], kernels=kernels)[0]
                           for t in range(x.shape[0])])
        assert np.all(np.abs(batch - single) <= 2 * tol), kernels
