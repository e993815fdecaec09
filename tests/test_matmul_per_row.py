"""Tests of the per-row matmul path (`per_row=True`, tq_matmul_per_row in C).

Verifying a draft tree multiplies every weight with several tokens at once, and each token's
result must equal, bit for bit, what decoding that token alone gives. Otherwise a tree node's
logits would differ from plain decoding in the last bits, and now and then a greedy token
would change. The kernels of this path read each weight row once for several tokens and
must repeat the one-token arithmetic for every token. These tests compare each row of a per-row product of 1 to 9 tokens with a one-token product, on
every kernel variant this CPU runs, and the per-row product with the dequantized weights.

The row lengths cover a whole number of four-block groups (640 and 2048 values), three blocks
after the last group (224 values) and, for Q8_0, more blocks (257) than the AVX-512 kernels
prepare on the stack. The row counts leave a partial chunk of rows at the end, and 1000 rows
give many chunks, so a rows kernel prefetches across chunk boundaries.
"""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from turboquant import _core

from test_weights import SUPPORTED_KERNELS, check_matmul, random_raw, same_bits

# Row lengths per type: for the K-quants, 256-value super-blocks (1024 is attn_output of Gemma
# 3 270M, 2048 its ffn_down).
ROW_LENGTHS = {
    T.Q8_0: [640, 2048, 224, 8224],
    T.Q5_0: [640, 2048, 224],
    T.Q4_K: [1024, 2048, 768],
    T.Q6_K: [1024, 2048, 768],
}
CASES = [(qtype, n_in) for qtype, lengths in ROW_LENGTHS.items() for n_in in lengths]
ROW_COUNTS = [1, 77, 1000]
MAX_TOKENS = 9


def case_id(case):
    qtype, n_in = case
    return f"{qtype.name}-{n_in}"


def random_activations(rng, n_tokens, n_in):
    """Gaussian rows with a few large channels, as Gemma hidden states have."""
    x = rng.standard_normal((n_tokens, n_in)).astype(np.float32)
    x[:, rng.integers(0, n_in, 4)] *= 30
    return x


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("n_out", ROW_COUNTS)
@pytest.mark.parametrize("kernels", SUPPORTED_KERNELS)
def test_per_row_equals_one_token(case, n_out, kernels):
    qtype, n_in = case
    rng = np.random.default_rng(int(qtype) * 10000 + n_in + n_out)
    raw = random_raw(qtype, n_out, n_in, rng)
    x = random_activations(rng, MAX_TOKENS, n_in)
    one_token = [_core.matmul(int(qtype), raw, n_in, n_out, x[i : i + 1], kernels=kernels)[0]
                 for i in range(MAX_TOKENS)]
    for n_tokens in range(1, MAX_TOKENS + 1):
        y = _core.matmul(int(qtype), raw, n_in, n_out, x[:n_tokens], kernels=kernels, per_row=True)
        assert y.shape == (n_tokens, n_out)
        for i in range(n_tokens):
            assert same_bits(y[i], one_token[i]), f"{n_tokens} tokens, token {i}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("n_tokens", [2, 3, 4, 5, 9])
def test_per_row_matches_dequantized(case, n_tokens):
    # The same bounds as the other matmul tests: float32 rounding against the integer algorithm
    # emulated in float64, plus the activation quantization error against the float64 product.
    qtype, n_in = case
    rng = np.random.default_rng(int(qtype) * 100 + n_tokens)
    n_out = 77
    raw = random_raw(qtype, n_out, n_in, rng)
    x = random_activations(rng, n_tokens, n_in)
    for kernels in SUPPORTED_KERNELS:
        check_matmul(qtype, raw, n_in, n_out, x, kernels, per_row=True)


def test_per_row_skips_blocked_product():
    # From 4 tokens on, the default path may take the blocked product, whose float sums run in
    # another order. per_row never takes it, so every row must equal a one-token call.
    rng = np.random.default_rng(17)
    n_in, n_out = 640, 300
    raw = random_raw(T.Q8_0, n_out, n_in, rng)
    x = random_activations(rng, 16, n_in)
    y = _core.matmul(int(T.Q8_0), raw, n_in, n_out, x, per_row=True)
    for i in range(16):
        assert same_bits(y[i], _core.matmul(int(T.Q8_0), raw, n_in, n_out, x[i : i + 1])[0]), i


def test_per_row_one_dimensional_x():
    rng = np.random.default_rng(19)
    raw = random_raw(T.Q5_0, 40, 640, rng)
    x = rng.standard_normal(640).astype(np.float32)
    y = _core.matmul(int(T.Q5_0), raw, 640, 40, x, per_row=True)
    assert y.shape == (40,)
    assert same_bits(y, _core.matmul(int(T.Q5_0), raw, 640, 40, x))


def test_ggml_matmul_per_row_keyword():
    import turboquant

    rng = np.random.default_rng(23)
    raw = random_raw(T.Q6_K, 5, 1024, rng)
    x = rng.standard_normal((3, 1024)).astype(np.float32)
    ours = turboquant.ggml_matmul("q6_K", raw, 1024, 5, x, per_row=True)
    assert same_bits(ours, _core.matmul(int(T.Q6_K), raw, 1024, 5, x, per_row=True))
    with pytest.raises(TypeError):
        _core.matmul(int(T.Q6_K), raw, 1024, 5, x, None, True)  # per_row is keyword-only
