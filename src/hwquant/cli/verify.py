"""``hwquant verify``: run an exported graph against its torch model.

>>> import argparse
>>> p = argparse.ArgumentParser(); sub = p.add_subparsers()
>>> add_parser(sub)
>>> p.parse_args(["verify", "m.pt", "m.onnx"]).n
1000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from hwquant.checkpoint import load_checkpoint, load_data
from hwquant.cli.common import Subparsers, add_factory_option, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "verify", help="compare an exported graph with torch (qonnx, onnxruntime, hls4ml)"
    )
    p.add_argument("checkpoint", help="the model the graph was exported from")
    p.add_argument("graph", help="the exported .onnx (QONNX or QCDQ)")
    p.add_argument(
        "-n", "--n", type=positive_int, default=1000, help="random N(0,1) inputs (default 1000)"
    )
    p.add_argument("--inputs", help="inputs as .npy or .pt instead of random ones")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--backends",
        default="qonnx,onnxruntime,onnxruntime-noopt,hls4ml",
        help="comma-separated subset of qonnx,onnxruntime (a default session),"
        "onnxruntime-noopt (graph optimizations off),hls4ml",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="boundary flips (values on a rounding boundary rounded the other way) fail too",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_factory_option(p)
    p.set_defaults(func=run)


def _input_shape(graph: str) -> tuple[int, ...]:
    """The graph's input shape without the batch (random inputs are drawn with it)."""
    from hwquant.export.verify import read_graph

    dims = read_graph(graph).graph.input[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value for d in dims[1:])
    if any(d < 1 for d in shape):
        raise ValueError(
            f"{graph}: the input has symbolic dimensions besides the batch "
            f"({', '.join(d.dim_param or '?' for d in dims[1:])}): pass --inputs"
        )
    return shape


def _load_inputs(path: str) -> torch.Tensor:
    """Inputs from ``.npy`` (no pickled objects) or a tensor saved with torch.save."""
    if not Path(path).is_file():
        raise ValueError(f"no inputs file at {path}")
    if path.endswith(".npy"):
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False)).float()
        except (OSError, ValueError, EOFError) as e:
            first = str(e).strip().splitlines()
            raise ValueError(
                f"cannot read inputs {path}: {first[0] if first else type(e).__name__}"
            ) from None
    obj = load_data(
        path, failed=f"cannot read inputs {path}", kind="a .npy file or a torch.save of a tensor"
    )
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"{path} holds no tensor")
    return obj.float()


def run(args: argparse.Namespace) -> int:
    from hwquant.export import verify

    if not Path(args.graph).is_file():
        raise ValueError(f"no exported graph at {args.graph}")
    model, _ = load_checkpoint(args.checkpoint, factory=args.factory)
    if args.inputs:
        x = _load_inputs(args.inputs)
    else:
        gen = torch.Generator().manual_seed(args.seed)
        x = torch.randn((args.n, *_input_shape(args.graph)), generator=gen)
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    report = verify(model, args.graph, x, backends=backends, strict=args.strict)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0 if report.passed else 1
