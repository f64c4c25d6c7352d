"""``hwquant export``: write a checkpoint's model as QONNX or QCDQ (``--format both``:
both files from one trace of the model, the QCDQ one beside the QONNX one as
``<name>.qcdq.onnx``).

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
    p.add_argument(
        "--format",
        choices=("qonnx", "qcdq", "both"),
        default="qonnx",
        help="both: the QONNX file at --output and the QCDQ file beside it (one trace)",
    )
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
    from hwquant.export import to_qcdq, to_qonnx, to_qonnx_and_qcdq

    model, stored = load_checkpoint(args.checkpoint, factory=args.factory)  # batch first
    check_shape_convention(args.input_shape, stored)
    shape = args.input_shape or stored
    if shape is None:
        raise ValueError(
            "the checkpoint stores no input shape: pass --input-shape with the batch first, "
            "e.g. 1,3,32,32"
        )
    if args.int4 and args.format == "qonnx":
        raise ValueError("--int4 is for QCDQ files: use it with --format qcdq or both")
    fmt = "qonnx" if args.format == "both" else args.format
    out = args.output or str(Path(args.checkpoint).with_suffix("")) + f".{fmt}.onnx"
    x = torch.zeros((args.batch or shape[0], *shape[1:]))
    if args.format == "both":
        base = out.removesuffix(".onnx").removesuffix(".qonnx")
        paths = to_qonnx_and_qcdq(
            model, x, out, base + ".qcdq.onnx", args.dynamic_batch, int4=args.int4
        )
        written = zip(paths, ("QONNX", "QCDQ"), strict=True)
    elif args.format == "qcdq":
        written = [(to_qcdq(model, x, out, args.dynamic_batch, int4=args.int4), "QCDQ")]
    else:
        written = [(to_qonnx(model, x, out, args.dynamic_batch), "QONNX")]
    for path, name in written:
        print(
            f"wrote {path} ({name}, input {tuple(x.shape)}"
            f"{', dynamic batch' if args.dynamic_batch else ''})"
        )
    return 0
