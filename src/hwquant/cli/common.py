"""Options and helpers shared by several ``hwquant`` subcommands.

Argument types validate at parse time, so a bad value is one line on stderr
(``hwquant CMD: error: argument --batch: ...``) and exit status 2:

>>> parse_shape("1,3,8,8")
(1, 3, 8, 8)
>>> positive_int("0")
Traceback (most recent call last):
argparse.ArgumentTypeError: must be a positive integer, got '0'
"""

from __future__ import annotations

import argparse

__all__ = [
    "INPUT_SHAPE_HELP",
    "Subparsers",
    "add_factory_option",
    "check_shape_convention",
    "input_shape",
    "parse_shape",
    "positive_int",
]

#: what ``add_subparsers()`` returns (argparse names its class privately; read it here once)
Subparsers = argparse._SubParsersAction

#: the one ``--input-shape`` convention of every command: the batch dimension first,
#: as ``hwquant.save_checkpoint`` stores it.
INPUT_SHAPE_HELP = (
    "input shape with the batch dimension first, e.g. 1,3,32,32 or 1,16 "
    "(the convention of hwquant.save_checkpoint; default: the shape the checkpoint stores)"
)


def add_factory_option(p: argparse.ArgumentParser) -> None:
    """``--factory MODULE:CALLABLE``: the user's own model builder, imported only
    when given here (a model file names it but is never trusted to import it)."""
    p.add_argument(
        "--factory",
        metavar="MODULE:CALLABLE",
        help="import this builder of your own model class (when the model file names it)",
    )


def positive_int(text: str) -> int:
    """argparse type: an int ≥ 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return n


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,8,8"`` (or ``1x3x8x8``) → (1, 3, 8, 8): positive ints, the batch first.

    A single number cannot hold a batch dimension: ``ValueError`` suggesting ``1,N``."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--input-shape must be comma-separated ints, got {text!r}") from None
    if not shape:
        raise ValueError("--input-shape is empty")
    if any(d < 1 for d in shape):
        raise ValueError(f"--input-shape dimensions must be positive, got {text!r}")
    if len(shape) == 1:
        raise ValueError(
            f"--input-shape {text} has no batch dimension: give the batch first, e.g. 1,{shape[0]}"
        )
    return shape


def input_shape(text: str) -> tuple[int, ...]:
    """argparse type for ``--input-shape`` (:func:`parse_shape`)."""
    try:
        return parse_shape(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--input-shape ")) from None


def check_shape_convention(given: tuple[int, ...] | None, stored: tuple[int, ...] | None) -> None:
    """``ValueError`` when ``given`` is the checkpoint's shape without its batch
    (the other convention), e.g. ``3,8,8`` for a model stored with ``(1, 3, 8, 8)``."""
    if given is not None and stored is not None and len(stored) > 1 and given == stored[1:]:
        fix = ",".join(str(d) for d in (stored[0], *given))
        raise ValueError(
            f"--input-shape {','.join(map(str, given))} is the checkpoint's input shape without "
            f"the batch dimension; --input-shape takes the batch first: {fix}"
        )
