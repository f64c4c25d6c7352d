"""``hwquant`` command: each subcommand lives in ``hwquant/cli/<name>.py`` and
defines ``add_parser(subparsers)`` (which sets ``func``) — one library call each.

>>> build_parser().prog
'hwquant'
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["build_parser", "main"]

#: subcommand modules, in help order; a module that is not present is skipped.
COMMANDS = ("demo", "export", "verify", "accumulators", "cost")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hwquant", description="Quantization for neural networks on custom hardware."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"hwquant.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"hwquant.cli.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as e:
        print(f"hwquant {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
