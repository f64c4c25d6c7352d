"""``hwquant apply``: run a registered algorithm (``hwquant.algorithms``) on a model file.

``--set FIELD=VALUE`` fills the algorithm's config (values read as JSON when they
parse); ``--data`` gives calibration batches to algorithms that need them:
``digits`` (scikit-learn's digits, shaped as the model file's input) or a ``.npy`` /
``torch.save`` tensor file. The report is printed as JSON.

>>> import argparse
>>> p = argparse.ArgumentParser(); sub = p.add_subparsers()
>>> add_parser(sub)
>>> a = p.parse_args(["apply", "a2q_ptq", "m.pt", "-o", "n.pt", "--set", "method=ep"])
>>> a.algorithm, a.set, a.batches
('a2q_ptq', ['method=ep'], 4)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hwquant.cli.common import Subparsers, add_factory_option, positive_int

__all__ = ["add_parser", "calibration_data", "run"]


def add_parser(sub: Subparsers) -> None:
    from hwquant.algorithms import get, names

    p = sub.add_parser(
        "apply",
        help="run an algorithm (fold_bn, a2q_ptq, …) on a model file",
        description="Algorithms: " + "; ".join(f"{n}: {get(n).summary}" for n in names()),
    )
    p.add_argument("algorithm", choices=names(), help="a registered algorithm")
    p.add_argument("checkpoint", help="a hwquant model file (hwquant.save_checkpoint)")
    p.add_argument("-o", "--output", required=True, help="the model file to write")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a config field of the algorithm (repeatable), e.g. method=ep",
    )
    p.add_argument("--data", help="calibration data: 'digits' or a .npy / torch.save tensor file")
    p.add_argument("--batches", type=positive_int, default=4, help="calibration batches (4)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="batch size (64)")
    add_factory_option(p)
    p.set_defaults(func=run)


def _fields(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ValueError(f"--set takes FIELD=VALUE, got {pair!r}")
        out[key.strip()] = value
    return out


def calibration_data(source: str, shape: tuple[int, ...] | None, n: int, size: int):
    """``n`` batches of ``size`` inputs from ``source`` ('digits' or a tensor file),
    reshaped to the model's input ``shape`` (batch first) when one is stored."""
    import torch

    from hwquant.checkpoint import load_data

    if source == "digits":
        from hwquant.datasets import digits

        x = digits().calibration_batch(n * size)
    else:
        if not Path(source).is_file():
            raise ValueError(f"no calibration data file at {source}")
        x = load_data(source, failed=f"cannot read {source}", kind="a tensor file")
        x = torch.as_tensor(x).float() if not torch.is_tensor(x) else x.float()
    if shape is not None:
        per_sample = int(torch.tensor(shape[1:]).prod())
        if x[0].numel() != per_sample:
            raise ValueError(
                f"calibration inputs hold {x[0].numel()} values each, the model takes "
                f"{tuple(shape[1:])} ({per_sample})"
            )
        x = x.reshape(-1, *shape[1:])
    return list(x[: n * size].split(size))


def run(args: argparse.Namespace) -> int:
    from hwquant.algorithms import get
    from hwquant.checkpoint import load_checkpoint, save_checkpoint

    algo = get(args.algorithm)
    config = _fields(args.set)
    model, shape = load_checkpoint(args.checkpoint, factory=args.factory)
    data = None
    if args.data is not None:
        data = calibration_data(args.data, shape, args.batches, args.batch_size)
    elif algo.needs_data:
        raise ValueError(f"{algo.name} needs calibration data: pass --data digits or a file")
    report = algo.run(model, data, config)
    save_checkpoint(model, args.output, shape, architecture=args.factory)
    print(json.dumps({"algorithm": algo.name, "output": args.output, "report": report.to_dict()}))
    return 0
