"""Perplexity of a model over a token sequence, and KL divergence against a reference model.

Windowing follows llama.cpp's perplexity tool (tools/perplexity/perplexity.cpp). The tokens
are cut into consecutive windows of ``ctx`` tokens, and a shorter tail is dropped. The first
token of each window is replaced by BOS, and the KV cache starts empty for every window. Only
the second half is scored: the logits at positions ctx // 2 .. ctx - 2 predict the tokens at
ctx // 2 + 1 .. ctx - 1, which is ctx - 1 - ctx // 2 predictions per window. Perplexity is
exp(mean negative log-likelihood) over all scored positions.

With a reference model (the same weights with an f16 KV cache), both models run the same
windows side by side, and the mean KL divergence KL(P_reference || P_model) of the full
next-token distributions is computed exactly at every scored position.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Sequence

import numpy as np

__all__ = ["PerplexityResult", "perplexity_windows", "evaluate_perplexity"]

# Positions whose logits are requested from the runtime at once: 32 rows of 262144 float32
# logits are 32 MiB, and the float64 log-softmax of them 64 MiB.
_LOGIT_ROWS_PER_CALL = 32


@dataclasses.dataclass
class PerplexityResult:
    """Perplexity and, with a reference model, the divergence from it."""

    perplexity: float
    perplexity_stderr: float
    nll_mean: float
    scored_tokens: int
    windows: int
    ctx: int
    seconds: float
    reference_perplexity: float | None = None
    kl_divergence: float | None = None
    top1_agreement: float | None = None

    def to_dict(self) -> dict:
        """Return the result as a JSON-ready dict."""
        return dataclasses.asdict(self)


def perplexity_windows(tokens: Sequence[int], ctx: int, bos_id: int) -> list[list[int]]:
    """Return the windows that ``evaluate_perplexity`` scores: ctx tokens each, BOS first."""
    if ctx < 4:
        raise ValueError(f"ctx must be >= 4 so that each window scores at least one token, got {ctx}")
    n_windows = len(tokens) // ctx
    windows = []
    for w in range(n_windows):
        window = [int(t) for t in tokens[w * ctx : (w + 1) * ctx]]
        window[0] = bos_id
        windows.append(window)
    return windows


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
    return x


def _scored_log_probs(model, window: list[int]):
    """Yield (log-softmax rows, target ids) for the scored positions of one window, in slices."""
    core = model._core
    model.reset()
    first = len(window) // 2
    # Positions before `first` only fill the KV cache: their logits are not scored.
    core.eval(window[:first], logits="none")
    model._cached = list(window[:first])
    last = len(window) - 1  # position len - 1 has no target inside the window
    for start in range(first, last, _LOGIT_ROWS_PER_CALL):
        stop = min(start + _LOGIT_ROWS_PER_CALL, last)
        chunk = window[start:stop]
        logits = np.asarray(core.eval(chunk, logits="all"), dtype=np.float32).reshape(len(chunk), -1)
        model._cached.extend(chunk)
        yield _log_softmax(logits), np.asarray(window[start + 1 : stop + 1])


def evaluate_perplexity(model, tokens: Sequence[int], ctx: int, reference=None) -> PerplexityResult:
    """Score tokens with model in llama.cpp's windows of ctx tokens (see the module docstring).

    model, reference: ``turboquant.Model`` objects whose context holds at least ctx tokens.
    Raises ValueError when tokens do not fill one window.
    """
    if len(tokens) < ctx:
        raise ValueError(
            f"the text has {len(tokens)} tokens, fewer than one window of ctx={ctx}; use a longer text or a smaller ctx"
        )
    for name, m in (("model", model), ("reference", reference)):
        if m is not None and m.n_ctx < ctx:
            raise ValueError(f"{name} was loaded with a context of {m.n_ctx} tokens, smaller than ctx={ctx}")
    bos_id = int(model.tokenizer.bos_id)
    windows = perplexity_windows(tokens, ctx, bos_id)

    start_time = time.perf_counter()
    nll_sum = 0.0
    nll_sq_sum = 0.0
    ref_nll_sum = 0.0
    kl_sum = 0.0
    agree = 0
    count = 0
    for window in windows:
        model_slices = _scored_log_probs(model, window)
        ref_slices = _scored_log_probs(reference, window) if reference is not None else None
        for log_probs, targets in model_slices:
            rows = np.arange(len(targets))
            nll = -log_probs[rows, targets]
            nll_sum += float(nll.sum())
            nll_sq_sum += float((nll * nll).sum())
            count += len(targets)
            if ref_slices is not None:
                ref_log_probs, _ = next(ref_slices)
                ref_nll_sum += float(-ref_log_probs[rows, targets].sum())
                kl = (np.exp(ref_log_probs) * (ref_log_probs - log_probs)).sum(axis=1)
                kl_sum += float(kl.sum())
                agree += int((ref_log_probs.argmax(axis=1) == log_probs.argmax(axis=1)).sum())
    seconds = time.perf_counter() - start_time

    nll_mean = nll_sum / count
    ppl = math.exp(nll_mean)
    # Standard error of the perplexity from the spread of per-token NLL, as llama.cpp reports it.
    variance = nll_sq_sum / count - nll_mean * nll_mean
    stderr = ppl * math.sqrt(variance / (count - 1)) if count > 1 and variance > 0 else 0.0
    result = PerplexityResult(
        perplexity=ppl,
        perplexity_stderr=stderr,
        nll_mean=nll_mean,
        scored_tokens=count,
        windows=len(windows),
        ctx=ctx,
        seconds=seconds,
    )
    if reference is not None:
        result.reference_perplexity = math.exp(ref_nll_sum / count)
        result.kl_divergence = kl_sum / count
        result.top1_agreement = agree / count
    return result
