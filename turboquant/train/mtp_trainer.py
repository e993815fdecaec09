"""Training of Medusa heads by self-distillation on the articles of a ZIM file.

The base model is frozen. For each sequence it runs once (``eval(..., hidden=True)``) and returns
its output-normed hidden states h. The C core (``turboquant._core.mtp_*``) then computes the
teacher, which is the base model's own top-K next-token distribution at every position. It also
computes the heads' loss and gradient, clips the gradient and runs the AdamW update.

Checkpoints are written every ``save_every`` steps and at the end. A run started on a directory
that has checkpoints resumes from the newest one: heads, AdamW moments, step and the position in
the ZIM file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .. import _core
from ..model import Model
from ..mtp import MTPHeads, latest_checkpoint, save_checkpoint
from .zim import TokenStream, ZimArticles

__all__ = ["train_mtp", "evaluate_mtp"]


def _load(model, ctx: int, threads=None) -> Model:
    """model as a turboquant.Model: a Model is used as it is, a path or None is loaded."""
    if isinstance(model, Model):
        return model
    if model is None or isinstance(model, (str, os.PathLike)):
        return Model.load(model, ctx=ctx, threads=threads, cache_type_k="f16", cache_type_v="f16")
    raise TypeError(f"model must be a turboquant.Model, a GGUF path or None, got {type(model).__name__}")


def _hidden_states(context, sequences) -> np.ndarray:
    """Output-normed final hidden states of each sequence, run from an empty cache, stacked."""
    rows = []
    for tokens in sequences:
        context.reset()
        _, hidden = context.eval(tokens, logits="none", hidden=True)
        rows.append(hidden)
    context.reset()
    return np.ascontiguousarray(np.concatenate(rows, axis=0))


def _bos(model: Model) -> int:
    ids = model.tokenize("", add_bos=True)
    if not ids:
        raise ValueError("the model's tokenizer adds no BOS token; cannot start training sequences")
    return ids[0]


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError as error:
        raise ImportError("the progress bar needs tqdm; install it with: pip install 'turboquant[train]' "
                          "or pass progress=False") from error
    return tqdm(total=total, initial=initial, desc="train-mtp", unit="step", dynamic_ncols=True)


def train_mtp(model, zim, checkpoint_dir, steps: int = 1000, seq_len: int = 128, batch_tokens: int = 512,
              lr: float = 1e-3, warmup: int | None = None, save_every: int = 50, progress: bool = True,
              n_heads: int = 3, top_k: int = 32, student_top_m: int = 4096, head_decay: float = 0.8,
              weight_decay: float = 0.0, max_grad_norm: float = 1.0, lr_min_ratio: float = 0.1,
              max_seconds: float | None = None, threads: int | None = None, vocab_size: int = 32768,
              vocab_tokens: int = 2_000_000) -> dict:
    """Train Medusa heads on the articles of the ZIM file zim and write checkpoints to checkpoint_dir.

    model: a turboquant.Model, a GGUF path, or None for the default model. steps: total optimizer
    steps (a resumed run continues up to the same total). Each step runs batch_tokens // seq_len
    sequences of seq_len tokens (BOS and seq_len - 1 text tokens). lr: peak learning rate, reached
    after warmup steps (default steps // 20) of linear warm-up, then cosine decay to
    lr * lr_min_ratio. top_k: teacher entries kept per position; student_top_m: the student's
    entries added to the sparse backward (see csrc/mtp.c). max_grad_norm: global gradient norm
    clipping (<= 0: off). max_seconds: stop early (and save) after this much wall time.
    vocab_size: the heads' draft vocabulary, the vocab_size most frequent tokens of the first
    vocab_tokens tokens of the ZIM (see ``draft_vocab_from_zim``); 0 scores the whole vocabulary.
    The heads and the teacher then score only those tokens, which makes a step several times
    faster, and drafting with the heads reads only their LM-head rows. A resumed run keeps the
    vocabulary of its checkpoint.

    Returns a summary dict: steps run, final step, per-step loss and per-head top-1 accuracy
    (head k's argmax equal to the base model's argmax at t + 1 + k), the teacher's kept mass,
    tokens, seconds and the last checkpoint path.
    """
    for name, value, minimum in (("steps", steps, 1), ("seq_len", seq_len, n_heads + 1),
                                 ("batch_tokens", batch_tokens, seq_len), ("save_every", save_every, 1),
                                 ("top_k", top_k, 1), ("student_top_m", student_top_m, 1),
                                 ("vocab_size", vocab_size, 0), ("vocab_tokens", vocab_tokens, 1)):
        if not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} is {value!r}; pass an integer >= {minimum}")
    if not lr > 0:
        raise ValueError(f"lr is {lr!r}; pass a positive learning rate")
    warmup = max(1, steps // 20) if warmup is None else int(warmup)
    if warmup < 0:
        raise ValueError(f"warmup is {warmup}; pass a step count >= 0")
    checkpoint_dir = Path(checkpoint_dir)
    articles = ZimArticles(zim)  # checks the file before the model is loaded
    model = _load(model, ctx=seq_len, threads=threads)
    context = model._core.create_context(ctx=seq_len, threads=threads, cache_type_k="f16", cache_type_v="f16")
    core = model._core

    settings = {"zim": Path(zim).name, "steps": steps, "seq_len": seq_len, "batch_tokens": batch_tokens, "lr": lr,
                "warmup": warmup, "n_heads": n_heads, "top_k": top_k, "student_top_m": student_top_m,
                "head_decay": head_decay, "weight_decay": weight_decay, "max_grad_norm": max_grad_norm,
                "lr_min_ratio": lr_min_ratio, "vocab_size": vocab_size, "vocab_tokens": vocab_tokens}
    if latest_checkpoint(checkpoint_dir) is not None:
        heads = MTPHeads.load(checkpoint_dir, model)
        if heads.n_heads != n_heads:
            raise ValueError(f"{heads.path} has {heads.n_heads} heads but n_heads is {n_heads}; use another "
                             "checkpoint directory or the same n_heads")
        adam = heads.adam
        if adam is None:
            raise ValueError(f"{heads.path} has no AdamW state, so training cannot resume from it; start in an "
                             "empty directory")
        position = heads.data_position
    else:
        vocab = None
        if vocab_size > 0:
            vocab = draft_vocab_from_zim(model, articles, vocab_size, vocab_tokens)
        heads = MTPHeads.zeros(model, n_heads, vocab=vocab)
        adam = {name: np.zeros_like(heads.weight if name.endswith("weight") else heads.bias)
                for name in ("m.weight", "v.weight", "m.bias", "v.bias")}
        position = (0, 0)

    stream = TokenStream(articles, lambda text: model.tokenize(text, add_bos=False, special=False), _bos(model),
                         position)
    vocab = heads.draft_vocab(core)
    n_seqs = batch_tokens // seq_len
    grad_weight = np.zeros_like(heads.weight)
    grad_bias = np.zeros_like(heads.bias)
    history = {"loss": [], "accuracy": [], "kl": [], "kept_mass": [], "dropped_mass": [], "grad_norm": [], "lr": []}
    start_step = heads.step
    started = time.monotonic()
    last_path = None
    bar = _progress_bar(steps, start_step, progress)

    def save():
        return save_checkpoint(checkpoint_dir, heads, adam=adam, data_position=stream.position, settings=settings)

    try:
        while heads.step < steps:
            sequences = [stream.next_sequence(seq_len) for _ in range(n_seqs)]
            hidden = _hidden_states(context, sequences)
            teacher_ids, teacher_probs, kept = _core.mtp_teacher(core, hidden, top_k, vocab=vocab)
            grad_weight.fill(0.0)
            grad_bias.fill(0.0)
            stats = _core.mtp_loss_grad(core, heads.weight, heads.bias, hidden, seq_len, teacher_ids, teacher_probs,
                                        grad_weight, grad_bias, student_top_m=student_top_m, head_decay=head_decay,
                                        vocab=vocab)
            norm = _core.mtp_clip_grad_norm([grad_weight, grad_bias], max_grad_norm)
            rate = _core.mtp_learning_rate(heads.step, warmup, steps, lr, lr * lr_min_ratio)
            update = heads.step + 1
            _core.mtp_adamw_update(heads.weight, grad_weight, adam["m.weight"], adam["v.weight"], update, rate,
                                   weight_decay=weight_decay)
            _core.mtp_adamw_update(heads.bias, grad_bias, adam["m.bias"], adam["v.bias"], update, rate)
            heads.step = update

            accuracy = [c / r for c, r in zip(stats["correct"], stats["rows"])]
            history["loss"].append(stats["loss"])
            history["accuracy"].append(accuracy)
            history["kl"].append(stats["kl"])
            history["kept_mass"].append(float(kept.mean()))
            history["dropped_mass"].append(stats["dropped_mass"])
            history["grad_norm"].append(norm)
            history["lr"].append(rate)
            if bar is not None:
                bar.update(1)
                postfix = {"loss": f"{stats['loss']:.3f}"}
                postfix.update({f"acc{k}": f"{a:.2f}" for k, a in enumerate(accuracy)})
                bar.set_postfix(postfix)

            out_of_time = max_seconds is not None and time.monotonic() - started >= max_seconds
            if heads.step % save_every == 0 or heads.step == steps or out_of_time:
                last_path = save()
            if out_of_time:
                break
    finally:
        if bar is not None:
            bar.close()

    steps_run = heads.step - start_step
    return {
        "steps_run": steps_run,
        "step": heads.step,
        "epoch": stream.epoch,
        "data_position": stream.position,
        "tokens": steps_run * n_seqs * seq_len,
        "seconds": time.monotonic() - started,
        "checkpoint": str(last_path) if last_path else None,
        **history,
    }


def draft_vocab_from_zim(model, zim, size: int, max_tokens: int = 2_000_000) -> np.ndarray:
    """Return the size most frequent token ids (ties to the lower id) of the first max_tokens tokens of
    the ZIM file's articles, tokenized as training reads them, sorted ascending (int32).

    Fewer ids come back when the text has fewer distinct tokens."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"draft vocabulary size is {size!r}; pass a positive integer")
    model = _load(model, ctx=128)
    articles = zim if isinstance(zim, ZimArticles) else ZimArticles(zim)
    n_vocab = model.config["vocab"]
    counts = np.zeros(n_vocab, np.int64)
    seen = 0
    for _, title, text in articles.articles(0):
        ids = model.tokenize(f"{title}\n\n{text}\n\n", add_bos=False, special=False)
        counts += np.bincount(np.asarray(ids, dtype=np.int64), minlength=n_vocab)
        seen += len(ids)
        if seen >= max_tokens:
            break
    if seen == 0:
        raise ValueError(f"{articles.path} has no article text to count tokens in")
    order = np.argsort(-counts, kind="stable")[:size]
    return np.sort(order[counts[order] > 0]).astype(np.int32)


def _evaluation_sequences(model: Model, source, seq_len: int, max_tokens: int):
    """Sequences of BOS plus seq_len - 1 tokens from a text or the articles of a ZIM file."""
    bos = _bos(model)
    tokenize = lambda text: model.tokenize(text, add_bos=False, special=False)  # noqa: E731
    if isinstance(source, ZimArticles) or (isinstance(source, (str, os.PathLike)) and
                                           str(source).endswith(".zim")):
        articles = source if isinstance(source, ZimArticles) else ZimArticles(source)
        stream = TokenStream(articles, tokenize, bos)
        sequences = []
        while (len(sequences) + 1) * (seq_len - 1) <= max_tokens and stream.epoch == 0:
            sequence = stream.next_sequence(seq_len)
            if stream.epoch == 0 or not sequences:
                sequences.append(sequence)
        return sequences
    if not isinstance(source, str):
        raise TypeError(f"text_or_zim must be a str of text, a .zim path or ZimArticles, got {type(source).__name__}")
    tokens = tokenize(source)[:max_tokens]
    body = seq_len - 1
    return [[bos] + tokens[i:i + body] for i in range(0, len(tokens) - body + 1, body)]


def evaluate_mtp(model, heads: MTPHeads, text_or_zim, seq_len: int = 128, max_tokens: int = 4096,
                 top_k: int = 32, threads: int | None = None) -> dict:
    """Measure the heads' per-head top-1 accuracy and KL divergence on held-out text.

    text_or_zim: a str of text, or a ZIM file (path ending in .zim, or ZimArticles) whose articles
    are read in order. Up to max_tokens tokens are cut into sequences of BOS plus seq_len - 1
    tokens. Accuracy of head k: how often its argmax at position t equals the base model's argmax
    at t + 1 + k over the whole vocabulary, also for heads with a draft vocabulary. KL: mean
    KL(p_base || q_k) in nats with the base distribution kept to its top_k tokens (for heads with
    a draft vocabulary, the base softmax over that vocabulary). Returns a dict with accuracy, kl,
    rows (per head), tokens and teacher_kept_mass (the mean probability the teacher's top_k tokens
    have before renormalizing), and for heads with a draft vocabulary vocab_coverage, the share of
    positions whose base argmax is in it.
    """
    model = _load(model, ctx=seq_len, threads=threads)
    sequences = _evaluation_sequences(model, text_or_zim, seq_len, max_tokens)
    if not sequences:
        raise ValueError(f"the text has fewer than {seq_len - 1} tokens; pass more text or a smaller seq_len")
    context = model._core.create_context(ctx=seq_len, threads=threads, cache_type_k="f16", cache_type_v="f16")
    core = model._core
    correct = np.zeros(heads.n_heads, np.int64)
    rows = np.zeros(heads.n_heads, np.int64)
    kl = np.zeros(heads.n_heads)
    kept_mass = []
    scratch_weight = np.zeros_like(heads.weight)
    scratch_bias = np.zeros_like(heads.bias)
    vocab = heads.draft_vocab(core)
    covered = 0
    # A few sequences per call keep the hidden states small; the gradient is discarded.
    for first in range(0, len(sequences), 4):
        group = sequences[first:first + 4]
        hidden = _hidden_states(context, group)
        teacher_ids, teacher_probs, kept = _core.mtp_teacher(core, hidden, top_k, vocab=vocab)
        kept_mass.append(kept)
        stats = _core.mtp_loss_grad(core, heads.weight, heads.bias, hidden, seq_len, teacher_ids, teacher_probs,
                                    scratch_weight, scratch_bias, student_top_m=1, vocab=vocab)
        rows += stats["rows"]
        kl += np.asarray(stats["kl"]) * np.asarray(stats["rows"])
        if vocab is None:
            correct += stats["correct"]
            continue
        # The teacher above is the argmax within the vocabulary; score against the whole one.
        base = _core.mtp_teacher(core, hidden, 1)[0][:, 0].reshape(len(group), seq_len)
        covered += int(np.isin(base[:, 1:], heads.vocab).sum())
        drafts = heads.vocab[heads.logits(core, hidden).argmax(axis=-1)].reshape(heads.n_heads, len(group), seq_len)
        for k in range(heads.n_heads):
            correct[k] += int((drafts[k, :, :seq_len - 1 - k] == base[:, 1 + k:]).sum())
    result = {
        "accuracy": (correct / rows).tolist(),
        "kl": (kl / rows).tolist(),
        "rows": rows.tolist(),
        "tokens": len(sequences) * (seq_len - 1),
        "teacher_kept_mass": float(np.concatenate(kept_mass).mean()),
    }
    if vocab is not None:
        result["vocab_coverage"] = covered / (len(sequences) * (seq_len - 1))
    return result
