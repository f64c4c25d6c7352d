"""``hwquant`` command: each subcommand lives in ``hwquant/cli/<name>.py`` and
defines ``add_parser(subparsers)`` (which sets ``func``) — one library call each.

Every user error is one line on stderr, ``hwquant CMD: error: MESSAGE``, and exit
status 2: bad arguments (argparse), a library ``ValueError``, a path that cannot
be read or written (``OSError``) and a missing optional package of the
``export`` extra. Anything else is a bug and keeps its traceback.

>>> build_parser().prog
'hwquant'
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

__all__ = ["EXPORT_PACKAGES", "build_parser", "main", "missing_export_package"]

#: subcommand modules, in help order; a module that is not present is skipped.
COMMANDS = ("demo", "ptq", "apply", "sweep", "export", "verify", "accumulators", "cost")
#: the packages of ``pip install 'hwquant[export]'``.
EXPORT_PACKAGES = frozenset({"onnx", "onnxruntime", "onnxscript", "qonnx", "hls4ml"})
EXPORT_HINT = "install the export extra: pip install 'hwquant[export]'"


class _Parser(argparse.ArgumentParser):
    """An argument error is one line (no usage block): ``PROG: error: MESSAGE``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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


def missing_export_package(e: BaseException) -> str | None:
    """The export-extra package whose import failed in ``e`` or in the exceptions it
    was raised from (the chain a traceback shows), else None.

    >>> missing_export_package(ModuleNotFoundError("no onnx", name="onnx.helper"))
    'onnx'
    >>> missing_export_package(ModuleNotFoundError("no foo", name="foo")) is None
    True
    """
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ModuleNotFoundError):
            root = (cur.name or "").split(".")[0]
            if root in EXPORT_PACKAGES:
                return root
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
    return None


def _os_message(e: OSError) -> str:
    if e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (2 for a user error, printed as one
    line on stderr), also for argument errors and ``--help`` (no ``SystemExit``)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a bad argument (2, already printed)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        return int(args.func(args) or 0)
    except (ValueError, ModuleNotFoundError) as e:
        pkg = missing_export_package(e)
        if pkg is None and isinstance(e, ModuleNotFoundError):
            raise  # not an optional package: a bug
        msg = f"this needs the '{pkg}' package; {EXPORT_HINT}" if pkg else str(e)
    except OSError as e:  # safety net: a path that cannot be read or written
        msg = _os_message(e)
    print(f"hwquant {args.command}: error: {_one_line(msg)}", file=sys.stderr)
    return 2


def _one_line(msg: str) -> str:
    lines = [s.strip() for s in str(msg).strip().splitlines() if s.strip()]
    return " ".join(lines) if lines else "failed"


def entry() -> int:
    """The ``hwquant`` command: :func:`main` with steady malloc
    (:func:`hwquant.training.steady_malloc`: no page faults per training step)."""
    from hwquant.training import steady_malloc

    steady_malloc()
    return main()


if __name__ == "__main__":
    sys.exit(entry())
