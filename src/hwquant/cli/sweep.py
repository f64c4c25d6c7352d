"""``hwquant sweep``: integer vs minifloat PTQ over weight × activation bit widths.

Every point (model, weight format, activation format) is quantized with each
technique, the best kept (highest output SQNR on held-out training images); its test
accuracy and LUT cost go to ``OUT/results.{json,csv}``; heatmaps and the Pareto plot
to ``OUT/*.png``; every Pareto point is exported to QONNX and verified
(``OUT/pareto.json``). A re-run skips finished points. ``--jobs N`` runs points in N
local processes; ``--ray ADDRESS`` on a Ray cluster (``local`` starts one here).

>>> import argparse
>>> p = argparse.ArgumentParser(); sub = p.add_subparsers()
>>> add_parser(sub)
>>> a = p.parse_args(["sweep", "--w-bits", "3-5", "--a-bits", "8", "--techniques", "rtn,gptq"])
>>> a.w_bits, a.a_bits, a.techniques
([3, 4, 5], [8], ['rtn', 'gptq'])
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hwquant.cli.common import Subparsers, positive_int

__all__ = ["add_parser", "bits", "run"]


def bits(text: str) -> list[int]:
    """``3-8`` or ``4,6,8`` → a list of bit widths."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            out += list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bit widths {text!r}: use 3-8 or 4,6,8") from None
    if not out:
        raise argparse.ArgumentTypeError(f"bit widths {text!r}: none given")
    return out


def _list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("sweep", help="integer vs minifloat PTQ design-space sweep")
    p.add_argument("--models", type=_list, default=["digits-cnn"],
                   help="digits-cnn, digits-transformer (comma-separated)")  # fmt: skip
    p.add_argument("--w-bits", type=bits, default=list(range(3, 9)), help="3-8")
    p.add_argument("--a-bits", type=bits, default=list(range(3, 9)), help="3-8")
    p.add_argument("--families", type=_list, default=["int", "fp", "fp-nosub"],
                   help="int, fp (ExMy with subnormals + OCP FP8), fp-nosub")  # fmt: skip
    p.add_argument("--techniques", type=_list, default=None,
                   help="rtn or algorithms joined by + (default: rtn,equalize,"
                   "bias_correction,gptq,gptq+bias_correction)")  # fmt: skip
    p.add_argument(
        "--act-scale", default="mse", help="activation calibration: max, percentile, mse"
    )
    p.add_argument("--jobs", type=positive_int, default=1, help="local worker processes")
    p.add_argument("--ray", metavar="ADDRESS", help="run on Ray: local, auto or ray://HOST:PORT")
    p.add_argument("-o", "--out", type=Path, default=Path("runs/sweep"), help="output folder")
    p.add_argument("--cache", default=None, help="float model cache (default OUT/models)")
    p.add_argument("--epochs", type=positive_int, default=None, help="float training epochs")
    p.add_argument("--no-export", action="store_true", help="skip exporting the Pareto points")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hwquant.sweep import Settings, design_space, run_sweep
    from hwquant.sweep.models import MODELS
    from hwquant.sweep.point import DEFAULT_TECHNIQUES
    from hwquant.sweep.report import comparison, export_front, plot, write_summary

    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown sweep model {unknown[0]!r}; known: {', '.join(sorted(MODELS))}")
    settings = Settings(
        techniques=tuple(args.techniques or DEFAULT_TECHNIQUES),
        seed=args.seed,
        act_scale=args.act_scale,
        epochs=args.epochs,
        cache=str(args.cache or args.out / "models"),
    )
    points = design_space(args.models, args.w_bits, args.a_bits, args.families)
    print(f"sweep: {len(points)} points → {args.out}")
    rows = run_sweep(points, settings, args.out, jobs=args.jobs, ray_address=args.ray,
                     progress=not args.quiet)  # fmt: skip
    write_summary(rows, args.out)
    for model in args.models:
        plot(rows, model, args.out)
        c, db = comparison(rows, model), comparison(rows, model, "test_sqnr_db")
        print(f"{model}: cells where the best minifloat / integer wins: accuracy {c['tally']}, "
              f"SQNR {db['tally']}; Pareto front by family: {c['front_families']}")  # fmt: skip
    if not args.no_export:
        records = export_front(rows, points, settings, args.out)
        ok = sum(r["verified"] for r in records)
        print(f"Pareto points exported to QONNX and verified in qonnx: {ok}/{len(records)}")
        if ok < len(records):
            return 1
    print(f"results: {args.out / 'results.csv'}")
    return 0
