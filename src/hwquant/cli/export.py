"""``hwquant export``: write a checkpoint's model as QONNX or QCDQ.

``--input-shape`` takes the batch dimension first (as every ``hwquant`` command
and ``hwquant.save_checkpoint``); ``--batch`` overrides that first dimension.

>>> import argparse
>>> p = argparse.ArgumentParser(); sub = p.add_subparsers()
>>> add_parser(sub)
>>> a = p.parse_args(["export", "m.pt", "--input-shape", "1,3,8,8"])
>>> a.format, a.input_shape, a.batch
('qonnx', (1, 3, 8, 8), None)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hwquant.cli.common import (
    INPUT_SHAPE_HELP,
    Subparsers,
    add_factory_option,
    check_shape_convention,
    input_shape,
    parse_shape,
    positive_int,
)

__all__ = ["add_parser", "parse_shape", "run"]


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("export", help="export a quantized model to QONNX or QCDQ ONNX")
    p.add_argument("checkpoint", help="a hwquant model file (hwquant.save_checkpoint)")
    p.add_argument(
        "-o", "--output", help="output .onnx (default: checkpoint name + .<format>.onnx)"
    )
    p.add_argument("--format", choices=("qonnx", "qcdq"), default="qonnx")
    p.add_argument("--input-shape", type=input_shape, help=INPUT_SHAPE_HELP)
    p.add_argument(
        "--batch",
        type=positive_int,
        default=None,
        help="batch size of the graph: replaces the input shape's first dimension "
        "(default: that dimension, 1 for the usual checkpoint)",
    )
    p.add_argument(
        "--dynamic-batch",
        action="store_true",
        help="symbolic batch dimension (the input shape's batch is then only used to trace)",
    )
    p.add_argument("--int4", action="store_true", help="QCDQ: native int4/uint4 containers")
    add_factory_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from hwquant.checkpoint import load_checkpoint
    from hwquant.export import to_qcdq, to_qonnx

    model, stored = load_checkpoint(args.checkpoint, factory=args.factory)  # batch first
    check_shape_convention(args.input_shape, stored)
    shape = args.input_shape or stored
    if shape is None:
        raise ValueError(
            "the checkpoint stores no input shape: pass --input-shape with the batch first, "
            "e.g. 1,3,32,32"
        )
    out = args.output or str(Path(args.checkpoint).with_suffix("")) + f".{args.format}.onnx"
    x = torch.zeros((args.batch or shape[0], *shape[1:]))
    if args.format == "qcdq":
        path = to_qcdq(model, x, out, args.dynamic_batch, int4=args.int4)
    else:
        path = to_qonnx(model, x, out, args.dynamic_batch)
    print(
        f"wrote {path} ({args.format.upper()}, input {tuple(x.shape)}"
        f"{', dynamic batch' if args.dynamic_batch else ''})"
    )
    return 0
