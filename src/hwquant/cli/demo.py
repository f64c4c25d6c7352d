"""``hwquant demo``: QAT of a small CNN on scikit-learn's digits, from scratch."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hwquant.cli.common import Subparsers

__all__ = ["add_parser", "run"]


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("demo", help="train a W4A4 CNN on digits (the main end-to-end job)")
    p.add_argument("--weight-bits", type=int, default=4)
    p.add_argument("--act-bits", type=int, default=4)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--finetune-epochs", type=int, default=4, help="after folding BatchNorm")
    p.add_argument("--no-export", action="store_true", help="skip the QONNX / QCDQ export")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where results are written")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    import hwquant
    from hwquant.algorithms import fold_bn
    from hwquant.datasets import digits
    from hwquant.models import DigitsCNN
    from hwquant.spec import IntFormat, QuantSpec, Recipe, ScaleSpec, per_channel
    from hwquant.training import fit

    console = Console(width=max(Console().width, 110))
    torch.manual_seed(args.seed)
    data = digits(seed=args.seed)
    # Power-of-two scales: re-scaling is a shift in hardware, and the exported
    # graph then runs bit-exactly in every backend.
    pow2 = ScaleSpec(learned=True, power_of_two=True)
    weights = QuantSpec(IntFormat(args.weight_bits, narrow=True), per_channel(0), pow2)
    acts = QuantSpec(
        IntFormat(args.act_bits), scale=ScaleSpec("percentile", learned=True, power_of_two=True)
    )
    float_model = DigitsCNN()
    model = hwquant.quantize(float_model, Recipe.uniform(weights=weights, activations=acts))
    console.print(
        f"[bold]QAT W{args.weight_bits}A{args.act_bits}[/] DigitsCNN on scikit-learn digits "
        f"({len(data.train.dataset)} train / {len(data.test.dataset)} test images)"
    )
    t0 = time.perf_counter()
    result = fit(model, data.train, data.test, epochs=args.epochs)
    model.eval()
    folded = fold_bn.apply(model)
    console.print(f"folded BatchNorm into {len(folded.folded)} layers; fine-tuning")
    result = fit(model, data.train, data.test, epochs=args.finetune_epochs, lr=1e-3)
    model.eval()
    seconds = time.perf_counter() - t0
    console.print("[bold]float baseline[/] (the same float model and schedule, no quantization)")
    baseline = fit(float_model, data.train, data.test, epochs=args.epochs)
    console.print(
        f"[bold]the quantized W{args.weight_bits}A{args.act_bits} model[/], layer by layer"
    )
    console.print(model.hwquant_report.table())
    console.print(
        f"W{args.weight_bits}A{args.act_bits} test accuracy [bold green]"
        f"{result.test_accuracy:.4f}[/] ({seconds:.1f} s); float {baseline.test_accuracy:.4f}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / f"digits_w{args.weight_bits}a{args.act_bits}.pt"
    hwquant.save_checkpoint(model, str(ckpt), (1, *data.input_shape))
    summary = {
        "test_accuracy": result.test_accuracy,
        "float_accuracy": baseline.test_accuracy,
        "seconds": seconds,
        "checkpoint": str(ckpt),
        "history": result.history,
        "layers": model.hwquant_report.to_dict(),
    }
    if not args.no_export:
        summary["export"] = _export_and_verify(model, data, args.out, console)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"checkpoint: {ckpt}  summary: {args.out / 'summary.json'}")
    return 0 if summary.get("export", {}).get("passed", True) else 1


def _export_and_verify(model, data, out: Path, console) -> dict:
    """QONNX and QCDQ export of the trained model, verified on the test set."""
    from hwquant.export import to_qcdq, to_qonnx, verify

    x = data.test.dataset.tensors[0]
    result = {}
    for name, export in (("qonnx", to_qonnx), ("qcdq", to_qcdq)):
        path = export(model, x[:1], out / f"digits.{name}.onnx", dynamic_batch=True)
        report = verify(model, path, x)
        console.print(report.table())
        result[name] = {"path": str(path), **report.to_dict()}
    result["passed"] = all(result[k]["passed"] for k in ("qonnx", "qcdq"))
    return result
