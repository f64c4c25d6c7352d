"""``hwquant accumulators MODEL``: accumulator widths of a quantized model.

Prints, per weight layer, K, N, M, the data-type / L1 / exact bounds, the A2Q target
and (with ``--data``) the largest accumulator seen on data; ``--audit`` adds the
worst-case overflow audit at ``--bits`` (default: each layer's A2Q target). MODEL is
a hwquant checkpoint or a QONNX file (``.onnx``, from any tool; read with
:mod:`hwquant.analysis.onnx_accumulators`, ``--audit`` then needs ``--bits``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hwquant.cli.common import Subparsers, add_factory_option, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("accumulators", help="accumulator bounds, A2Q targets and overflow audit")
    p.add_argument(
        "model",
        type=Path,
        help="a hwquant checkpoint (hwquant.save_checkpoint) or a QONNX file (.onnx) "
        "written by any tool (hwquant, Brevitas, qonnx, FINN)",
    )
    p.add_argument(
        "--data",
        choices=("none", "digits", "random"),
        default="none",
        help="inputs for observed maxima: the digits test set, or random normal inputs "
        "of the checkpoint's input shape",
    )
    p.add_argument(
        "--samples", type=positive_int, default=256, help="number of inputs (default 256)"
    )
    p.add_argument("--audit", action="store_true", help="worst-case overflow audit")
    p.add_argument(
        "--bits", type=positive_int, default=None, help="accumulator bits P for the audit (≥ 1)"
    )
    p.add_argument("--mode", choices=("wrap", "saturate"), default="wrap")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_factory_option(p)
    p.set_defaults(func=run)


def _data(kind: str, n: int, shape: tuple[int, ...] | None, model):
    """The ``--data`` inputs (None for ``none``), checked to fit the model."""
    import torch

    from hwquant.export.qonnx import check_example

    if kind == "none":
        return None
    if kind == "digits":
        from hwquant.datasets import digits

        flat = shape is not None and len(shape) == 2
        x = digits(flat=flat).test.dataset.tensors[0][:n]
        if shape is not None and tuple(x.shape[1:]) != tuple(shape[1:]):
            raise ValueError(
                f"--data digits gives inputs of shape {tuple(x.shape[1:])} (8×8 images), "
                f"the model takes {tuple(shape[1:])}"
            )
    elif shape is None:
        raise ValueError("--data random needs a checkpoint with an 'input_shape'")
    else:
        x = torch.randn((n, *shape[1:]), generator=torch.Generator().manual_seed(0))
    try:
        check_example(model, (x[:1],))
    except ValueError as e:
        raise ValueError(f"--data {kind}: {e}") from None
    return x


def run(args: argparse.Namespace) -> int:
    if args.model.suffix.lower() == ".onnx":
        return _run_onnx(args)
    from hwquant.analysis import accumulators, overflow_audit
    from hwquant.checkpoint import load_checkpoint

    model, shape = load_checkpoint(str(args.model), factory=args.factory)
    model.eval()
    report = accumulators(model, _data(args.data, args.samples, shape, model))
    audit = overflow_audit(model, args.bits, args.mode) if args.audit else None
    return _print(args, report, audit)


def _run_onnx(args: argparse.Namespace) -> int:
    """The QONNX branch: bounds from the weight codes in the graph (no data)."""
    from hwquant.analysis.onnx_accumulators import onnx_accumulators, onnx_overflow_audit

    if not args.model.exists():
        raise ValueError(f"no such file: {args.model}")
    if args.data != "none":
        raise ValueError("--data needs a hwquant checkpoint; a QONNX file is analysed without data")
    report = onnx_accumulators(args.model)
    audit = None
    if args.audit:
        audit = onnx_overflow_audit(args.model, args.bits, args.mode) if args.bits else []
    return _print(args, report, audit)


def _print(args: argparse.Namespace, report, audit) -> int:
    if args.json:
        d = report.to_dict()
        if audit is not None:
            d["audit"] = [a.to_dict() for a in audit]
        print(json.dumps(d, indent=1))
        return 0
    print(f"hwquant accumulators: {args.model} (widths in bits; in: s/u input signedness)")
    print(report.table())
    if audit is not None:
        print(f"\nworst-case audit ({args.mode}): overflowing channels per layer")
        for a in audit:
            print(
                f"  {a.name:<16} P={a.accumulator_bits:<3} {a.overflowing}/{a.channels} "
                f"channels overflow (worst |Σ x·q| = {a.worst_exact}, max error {a.max_error})"
            )
        if not audit:
            print("  no layer with a P to audit (give --bits or use A2Q layers)")
    return 0
