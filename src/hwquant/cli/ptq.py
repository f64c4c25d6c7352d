"""``hwquant ptq``: post-training quantization of a float model on scikit-learn's digits.

The model is a built-in one (``digits-cnn`` / ``digits-mlp``, trained in float first)
or a float model file. ``fold_bn`` in ``--algorithms`` folds the float model before
quantization; the other algorithms run in order on the quantized model, after the
activations are calibrated on the calibration images. Prints the test accuracy
(float and quantized) and each weight layer's output SQNR; writes the quantized model
file and, with ``--export``, its QONNX graph verified against qonnx's executor.

>>> import argparse
>>> p = argparse.ArgumentParser(); sub = p.add_subparsers()
>>> add_parser(sub)
>>> a = p.parse_args(["ptq", "digits-cnn", "--weights", "e2m1", "--algorithms", "fold_bn,gptq"])
>>> a.weights.name, a.algorithms
('FP4_E2M1', ['fold_bn', 'gptq'])
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from hwquant.cli.common import Subparsers, positive_int

__all__ = ["BUILTIN", "add_parser", "run"]

BUILTIN = ("digits-cnn", "digits-mlp")


def _format(text: str):
    from hwquant.spec.formats import parse_format

    try:
        return parse_format(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _algorithms(text: str) -> list[str]:
    from hwquant.algorithms import names

    steps = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in steps if s not in names()]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown algorithm {unknown[0]!r}; known: {', '.join(names())}"
        )
    return steps


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("ptq", help="post-training quantization of a float model on digits")
    p.add_argument("model", help=f"{' or '.join(BUILTIN)}, or a float model file")
    p.add_argument("--weights", type=_format, default="int4n", help="weight format (int4n)")
    p.add_argument("--acts", type=_format, default="int8", help="activation format (int8)")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per layer")
    p.add_argument(
        "--algorithms",
        type=_algorithms,
        default=["fold_bn", "gptq"],
        help="comma-separated, run in order (default fold_bn,gptq)",
    )
    p.add_argument("--epochs", type=positive_int, default=10, help="float training (built-in)")
    p.add_argument("-o", "--output", help="quantized model file (default: runs/ptq/<name>.pt)")
    p.add_argument("--export", help="also write (and verify) this QONNX file")
    p.add_argument("--json", help="write the summary as JSON here")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _float_model(args, data):
    import torch

    from hwquant.checkpoint import load_checkpoint
    from hwquant.models import MLP, DigitsCNN
    from hwquant.training import fit

    if args.model not in BUILTIN:
        if not Path(args.model).is_file():
            raise ValueError(
                f"{args.model} is neither a built-in model ({', '.join(BUILTIN)}) nor a file"
            )
        return load_checkpoint(args.model)[0]
    torch.manual_seed(args.seed)
    model = DigitsCNN() if args.model == "digits-cnn" else MLP((64, 64, 32, 10))
    fit(model, data.train, data.test, epochs=args.epochs, progress=False)
    return model.eval()


def run(args: argparse.Namespace) -> int:

    import hwquant
    from hwquant.algorithms import fold_bn, pipeline
    from hwquant.analysis.sqnr import layer_sqnr
    from hwquant.datasets import digits
    from hwquant.spec import PER_TENSOR, QuantSpec, Recipe, ScaleSpec, per_channel
    from hwquant.training import evaluate

    data = digits(seed=args.seed, flat=args.model == "digits-mlp")
    float_model = _float_model(args, data)
    steps = list(args.algorithms)
    if "fold_bn" in steps:  # structural and float-exact: fold before quantizing
        steps.remove("fold_bn")
        fold_bn.apply(float_model)
    reference = copy.deepcopy(float_model).eval()
    g = PER_TENSOR if args.per_tensor else per_channel(0)
    recipe = Recipe.uniform(
        weights=QuantSpec(args.weights, g, ScaleSpec("max")), activations=QuantSpec(args.acts)
    )
    model = hwquant.quantize(float_model, recipe).eval()
    calib = list(data.calibration_batch(512).split(128))
    with hwquant.calibration(model):
        for x in calib:
            model(x)
    reports = pipeline(model, calib, steps)
    model.eval()
    x_test = data.test.dataset.tensors[0]
    summary = {
        "model": args.model,
        "weights": args.weights.name,
        "acts": args.acts.name,
        "algorithms": args.algorithms,
        "float_accuracy": evaluate(reference, data.test),
        "accuracy": evaluate(model, data.test),
        "layer_sqnr_db": layer_sqnr(reference, model, x_test),
        "reports": {name: r.to_dict() for name, r in reports},
    }
    out = Path(args.output or f"runs/ptq/{Path(args.model).stem}_{args.weights.name}.pt")
    out.parent.mkdir(parents=True, exist_ok=True)
    hwquant.save_checkpoint(model, out, (1, *x_test.shape[1:]))
    summary["model_file"] = str(out)
    if args.export:
        from hwquant.export import to_qonnx, verify

        path = to_qonnx(model, x_test[:1], args.export, dynamic_batch=True)
        summary["export"] = verify(model, path, x_test, backends=("qonnx",)).to_dict()
    _print(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
    return 0 if summary.get("export", {}).get("passed", True) else 1


def _print(summary: dict) -> None:
    print(
        f"{summary['model']} W {summary['weights']} A {summary['acts']} "
        f"({', '.join(summary['algorithms']) or 'round-to-nearest'}): test accuracy "
        f"{summary['accuracy']:.4f} (float {summary['float_accuracy']:.4f})"
    )
    for name, db in summary["layer_sqnr_db"].items():
        print(f"  {name:<24} output SQNR {db:6.1f} dB")
    print(f"model file: {summary['model_file']}")
    if "export" in summary:
        print(f"QONNX: {summary['export'].get('path', '')} verified: {summary['export']['passed']}")
