"""``hwquant export``: write a checkpoint's model as QONNX or QCDQ.

>>> import argparse
>>> p = argparse.ArgumentParser(); sub = p.add_subparsers()
>>> add_parser(sub)
>>> p.parse_args(["export", "m.pt", "--input-shape", "3,8,8"]).format
'qonnx'
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hwquant.cli.common import add_factory_option

__all__ = ["add_parser", "parse_shape", "run"]


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3,32,32"`` → (3, 32, 32)."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise ValueError(f"bad shape {text!r}: expected comma-separated integers") from None
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"bad shape {text!r}: dimensions must be positive")
    return shape


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a quantized model to QONNX or QCDQ ONNX")
    p.add_argument("checkpoint", help="a hwquant model file (hwquant.save_checkpoint)")
    p.add_argument("-o", "--output", help="output .onnx (default: checkpoint name + .onnx)")
    p.add_argument("--format", choices=("qonnx", "qcdq"), default="qonnx")
    p.add_argument(
        "--input-shape",
        help="input shape without batch, e.g. 3,32,32 (default: the checkpoint's 'input_shape')",
    )
    p.add_argument("--batch", type=int, default=1, help="batch size of the graph (default 1)")
    p.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension")
    p.add_argument("--int4", action="store_true", help="QCDQ: native int4/uint4 containers")
    add_factory_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hwquant.checkpoint import load_checkpoint
    from hwquant.export import to_qcdq, to_qonnx

    # the stored shape includes the batch
    model, stored = load_checkpoint(args.checkpoint, factory=args.factory)
    shape = parse_shape(args.input_shape) if args.input_shape else (stored[1:] if stored else None)
    if shape is None:
        raise ValueError("the checkpoint stores no 'input_shape': pass --input-shape")
    out = args.output or str(Path(args.checkpoint).with_suffix("")) + f".{args.format}.onnx"
    x = torch.zeros((args.batch, *shape))
    if args.format == "qcdq":
        path = to_qcdq(model, x, out, args.dynamic_batch, int4=args.int4)
    else:
        path = to_qonnx(model, x, out, args.dynamic_batch)
    print(
        f"wrote {path} ({args.format.upper()}, input {tuple(x.shape)}"
        f"{', dynamic batch' if args.dynamic_batch else ''})"
    )
    return 0
