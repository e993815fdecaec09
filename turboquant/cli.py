"""The ``turboquant`` command line: one command with subcommands."""

import argparse
import sys


def cmd_info(args):
    from ._info import info

    info()
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="turboquant", description="KV-cache compression and CPU inference of Gemma models.")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND")
    subcommands.required = True

    info_parser = subcommands.add_parser("info", help="print version, SIMD kernels, OpenMP threads and libyaml version")
    info_parser.set_defaults(handler=cmd_info)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError, OSError, NotImplementedError, IndexError) as exc:
        # Bad input (a file, a setting, an environment variable) gets one line, not a traceback.
        print(f"turboquant {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
