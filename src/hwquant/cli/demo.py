"""``hwquant demo``: QAT of a small CNN on scikit-learn's digits, from scratch."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a W4A4 CNN on digits (the main end-to-end job)")
    p.add_argument("--weight-bits", type=int, default=4)
    p.add_argument("--act-bits", type=int, default=4)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where results are written")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    import hwquant
    from hwquant.datasets import digits
    from hwquant.models import DigitsCNN
    from hwquant.spec import IntFormat, QuantSpec, Recipe, ScaleSpec, per_channel
    from hwquant.training import fit

    console = Console(width=max(Console().width, 110))
    torch.manual_seed(args.seed)
    data = digits(seed=args.seed)
    weights = QuantSpec(
        IntFormat(args.weight_bits, narrow=True), per_channel(0), ScaleSpec(learned=True)
    )
    acts = QuantSpec(IntFormat(args.act_bits), scale=ScaleSpec("percentile", learned=True))
    float_model = DigitsCNN()
    model = hwquant.quantize(float_model, Recipe.uniform(weights=weights, activations=acts))
    console.print(
        f"[bold]QAT W{args.weight_bits}A{args.act_bits}[/] DigitsCNN on scikit-learn digits "
        f"({len(data.train.dataset)} train / {len(data.test.dataset)} test images)"
    )
    t0 = time.perf_counter()
    result = fit(model, data.train, data.test, epochs=args.epochs)
    seconds = time.perf_counter() - t0
    console.print("[bold]float baseline[/] (same model, same schedule)")
    baseline = fit(float_model, data.train, data.test, epochs=args.epochs, progress=False)
    console.print(model.hwquant_report.table())
    console.print(
        f"W{args.weight_bits}A{args.act_bits} test accuracy [bold green]"
        f"{result.test_accuracy:.4f}[/] ({seconds:.1f} s); float {baseline.test_accuracy:.4f}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / f"digits_w{args.weight_bits}a{args.act_bits}.pt"
    torch.save({"model": model, "input_shape": (1, *data.input_shape)}, ckpt)
    summary = {
        "test_accuracy": result.test_accuracy,
        "float_accuracy": baseline.test_accuracy,
        "seconds": seconds,
        "checkpoint": str(ckpt),
        "history": result.history,
        "layers": model.hwquant_report.to_dict(),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"checkpoint: {ckpt}  summary: {args.out / 'summary.json'}")
    return 0
