"""turboquant: KV-cache compression (TurboQuant, QJL, PolarQuant) and CPU inference of Gemma models.

The numerical work runs in the C extension ``turboquant._core``; this package contains the
Python API and the command line.
"""

__version__ = "0.1.0"

import os as _os

# libgomp reads GOMP_SPINCOUNT when the extension loads. Its default makes idle threads
# spin for 300,000 iterations at every barrier, which stalls each parallel region of the
# forward pass when another process runs on a core (decode fell from 30 to 1-3 tokens/s at
# 2 threads on a shared 2-core machine). 10,000 iterations still bridge the short serial
# gaps between back-to-back regions. Set the variable yourself to override this.
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from ._info import info
from .weights import ggml_dequantize, ggml_matmul

from .gguf import GGUFFile

# Text generation API.
from .model import GenerationStats, Model

__all__ = ["__version__", "info"]

# Quantizers: rotation, Lloyd-Max codebooks, TurboQuant MSE and Prod.
from .quantizers import QuantizedVectors, Rotation, TurboQuantMSE, TurboQuantProd, fit_codebook, lloyd_max_codebook

__all__ += ["QuantizedVectors", "Rotation", "TurboQuantMSE", "TurboQuantProd", "fit_codebook", "lloyd_max_codebook"]
__all__ += ["GGUFFile"]
__all__ += ["ggml_dequantize", "ggml_matmul"]
# QJL and PolarQuant quantizers.
from .qjl_polar import QJL, PolarQuant  # noqa: E402

__all__ += ["QJL", "PolarQuant"]
# tokenizer
from .chat import encode_gemma3_chat, format_gemma3_chat  # noqa: E402
from .tokenizer import StreamDecoder, Tokenizer  # noqa: E402

__all__ += ["Tokenizer", "StreamDecoder", "format_gemma3_chat", "encode_gemma3_chat"]
__all__ += ["Model", "GenerationStats"]
# KV-cache codecs and attention on their codes.
from ._core import KVCodec, kv_attention

__all__ += ["KVCodec", "kv_attention"]
# Codebook of the KV rows at audio positions, fitted to the model's keys and values there.
from .audio_codebook import fit_audio_codebook  # noqa: E402

__all__ += ["fit_audio_codebook"]
# Gemma 4 chat format and thought-channel parser (the tokenizer is Tokenizer above).
from .chat import ThoughtChannelParser, encode_gemma4_chat, format_gemma4_chat, split_thought_channel  # noqa: E402

__all__ += ["ThoughtChannelParser", "encode_gemma4_chat", "format_gemma4_chat", "split_thought_channel"]
# KV cache layout of Gemma 4 (per-layer head sizes, shared-KV layers) and its memory.
from .kv_layout import KVLayout, gemma4_kv_layout, kv_cache_memory  # noqa: E402

__all__ += ["KVLayout", "gemma4_kv_layout", "kv_cache_memory"]
# Model and runtime configuration, YAML files.
# Model and runtime configuration (YAML files), safetensors files and sharded checkpoints.
from .config import ConfigError, Gemma3Config, Gemma4Config, load_config  # noqa: E402
from .safetensors import SafetensorsFile, SafetensorsIndex, safetensors_info  # noqa: E402

__all__ += ["ConfigError", "Gemma3Config", "Gemma4Config", "load_config", "SafetensorsFile", "SafetensorsIndex",
            "safetensors_info"]
# Medusa heads (speculative decoding drafts) and their checkpoints; training is in turboquant.train.
from .mtp import MTPHeads, base_model_identity, default_checkpoint  # noqa: E402

__all__ += ["MTPHeads", "base_model_identity", "default_checkpoint"]
