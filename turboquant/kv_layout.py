"""KV cache layout of Gemma models with per-layer head sizes and shared-KV layers, and its
memory as the runtime's allocator reports it."""

from collections.abc import Sequence
from dataclasses import dataclass

from . import _core

SLIDING = "sliding_attention"
FULL = "full_attention"


@dataclass(frozen=True)
class KVLayout:
    """Per-layer shape of a KV cache.

    head_dims: values per KV head of each layer.
    windows: sliding window in positions, 0 for a global layer.
    kv_sources: the layer itself when it stores keys and values. Otherwise it is the earlier
    layer whose rows this layer reads, and this layer stores nothing.
    """

    head_dims: tuple[int, ...]
    windows: tuple[int, ...]
    kv_sources: tuple[int, ...]
    n_kv_heads: int

    @property
    def storing_layers(self) -> int:
        """Return how many layers store keys and values."""
        return sum(1 for layer, source in enumerate(self.kv_sources) if source == layer)


def gemma4_kv_layout(
    layer_types: Sequence[str],
    head_dim: int,
    global_head_dim: int,
    sliding_window: int,
    n_kv_heads: int,
    n_kv_shared_layers: int = 0,
) -> KVLayout:
    """Build the KV layout of a Gemma 4 text model from its transformers configuration.

    layer_types: "sliding_attention" or "full_attention" per layer. Sliding layers have
    head_dim values per head and the window, global layers global_head_dim and no window.
    The last n_kv_shared_layers layers read the rows of the last earlier layer of their kind,
    as transformers' Gemma4TextConfig.kv_sharing_modes defines it.
    Raises ValueError for an unknown layer type or a shared layer without an earlier layer of
    its kind.
    """
    n_layers = len(layer_types)
    if not 0 <= n_kv_shared_layers < n_layers:
        raise ValueError(f"n_kv_shared_layers must be from 0 to {n_layers - 1}, got {n_kv_shared_layers}")
    for layer, kind in enumerate(layer_types):
        if kind not in (SLIDING, FULL):
            raise ValueError(f"layer_types[{layer}] is {kind!r}; expected {SLIDING!r} or {FULL!r}")

    first_shared = n_layers - n_kv_shared_layers
    last_of_kind = {}
    sources = []
    for layer, kind in enumerate(layer_types):
        if layer < first_shared:
            last_of_kind[kind] = layer
            sources.append(layer)
        elif kind in last_of_kind:
            sources.append(last_of_kind[kind])
        else:
            raise ValueError(f"shared-KV layer {layer} ({kind}) has no earlier {kind} layer that stores K/V")

    return KVLayout(
        head_dims=tuple(head_dim if kind == SLIDING else global_head_dim for kind in layer_types),
        windows=tuple(sliding_window if kind == SLIDING else 0 for kind in layer_types),
        kv_sources=tuple(sources),
        n_kv_heads=n_kv_heads,
    )


def kv_cache_memory(
    layout: KVLayout,
    positions: int,
    cache_type_k: str = "f16",
    cache_type_v: str | None = None,
    n_batch: int = 512,
    recent_f16: int = 0,
    max_qjl_bits: int = 1,
    sink_f16: int = 0,
    recent_type: str = "f16",
) -> int:
    """Return the bytes the runtime's KV cache stores for layout after positions tokens.

    The runtime allocator is filled n_batch positions at a time, as a prefill does (rows are
    allocated but not written). Sliding layers keep a ring of window + n_batch positions.
    cache_type_v defaults to cache_type_k. recent_f16 is the f16 window of the codec types and
    sink_f16 their f16 sink (Model.load's kv_recent_f16 and kv_sink_f16); recent_type ("f16"
    or "q8_0") is the row type of the window's copies (Model.load's kv_recent_type).
    max_qjl_bits=2 counts +qjl rows with room for a 2-bit residual and one precision byte per
    position, which a model allocates when thinking can switch on (Gemma 4 by default).
    """
    return _core.kv_cache_memory(
        list(layout.head_dims),
        list(layout.windows),
        list(layout.kv_sources),
        layout.n_kv_heads,
        positions,
        cache_type_k=cache_type_k,
        cache_type_v=cache_type_v or cache_type_k,
        n_batch=n_batch,
        recent_f16=recent_f16,
        max_qjl_bits=max_qjl_bits,
        sink_f16=sink_f16,
        recent_q8_0=_recent_q8_0(recent_type),
    )


def _recent_q8_0(recent_type: str) -> bool:
    if recent_type not in ("f16", "q8_0"):
        raise ValueError(f"recent_type must be 'f16' or 'q8_0', got {recent_type!r}")
    return recent_type == "q8_0"
