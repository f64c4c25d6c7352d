"""Minifloat PTQ of a residual CNN (skip connections through ``+``) on digits, with
every PTQ method: weights AND activations in FP4 E2M1, FP6 E3M2 and FP8 E4M3.

Brevitas' minifloat PTQ breaks on residual models (brevitas issue #897); this runs
each of hwquant's PTQ algorithms on a small ResNet whose skip connections are
``torch`` ``+`` in the forward (``hwquant.quantize`` turns them into ``QuantAdd``
with the activation format on both operands).

Columns (every one starts from a fresh copy of the same float model, BatchNorm
unfolded; the structural transforms fold_bn / equalize / smoothquant run on that
float copy, then it is quantized with the same recipe, activations are calibrated
with per-tensor ``max`` scales on 512 training images, then the rounding methods
run on the quantized model):

- ``rtn``: round-to-nearest, BatchNorm left float (``quantize`` keeps it float);
- ``fold_bn``: BatchNorm folded into the quantized convolutions, re-calibrated;
- ``fold_bn+X`` for X in calibrate (MSE clipping), equalize, smoothquant,
  bias_correction, adaround, gptq: X alone after the BN fold (equalize needs the
  fold: a BatchNorm between two convolutions is not positive-homogeneous);
- ``all``: fold_bn → equalize → smoothquant → calibrate (MSE) → gptq → bias_correction.

Cells are test accuracy and logit SQNR against the float model (test set).

Run: ``python examples/ptq/residual_minifloat.py``
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import hwquant
from hwquant.algorithms import equalize, fold_bn, pipeline
from hwquant.algorithms.smoothquant import SmoothQuantWarning
from hwquant.analysis.sqnr import sqnr_db
from hwquant.datasets import digits
from hwquant.spec import (
    FP4_E2M1,
    FP6_E3M2,
    FP8_E4M3,
    PER_TENSOR,
    QuantSpec,
    Recipe,
    ScaleSpec,
    per_channel,
)
from hwquant.training import evaluate, fit

FORMATS = {"FP4_E2M1": FP4_E2M1, "FP6_E3M2": FP6_E3M2, "FP8_E4M3": FP8_E4M3}
MSE = ("calibrate", {"method": "mse"})
#: column → (steps before the activation calibration, steps after it)
METHODS: dict[str, tuple[list, list]] = {
    "rtn": ([], []),
    "fold_bn": (["fold_bn"], []),
    "fold_bn+calibrate": (["fold_bn"], [MSE]),
    "fold_bn+equalize": (["fold_bn", "equalize"], []),
    "fold_bn+smoothquant": (["fold_bn", "smoothquant"], []),
    "fold_bn+bias_correction": (["fold_bn"], ["bias_correction"]),
    "fold_bn+adaround": (["fold_bn"], ["adaround"]),
    "fold_bn+gptq": (["fold_bn"], ["gptq"]),
    "all": (["fold_bn", "equalize", "smoothquant"], [MSE, "gptq", "bias_correction"]),
}


class ResidualBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); the shortcut is the
    identity, or a strided 1×1 convolution + BN when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class DigitsResNet(nn.Module):
    """stem conv·BN·ReLU (1→c) → block(c→c) → block(c→2c, stride 2) → global average
    pool → linear(2c → 10), for 1×8×8 inputs."""

    def __init__(self, channels: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        c = channels
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.stem_relu = nn.ReLU()
        self.block1 = ResidualBlock(c, c)
        self.block2 = ResidualBlock(c, 2 * c, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.block2(self.block1(self.stem_relu(self.stem(x))))
        return self.head(self.pool(h).flatten(1))


@dataclass
class Settings:
    """What to run; the defaults are the full experiment."""

    epochs: int = 15
    channels: int = 16
    formats: tuple[str, ...] = tuple(FORMATS)
    methods: tuple[str, ...] = tuple(METHODS)
    n_calib: int = 512
    cache: Path | None = Path("runs/ptq")


def float_model(s: Settings, data) -> DigitsResNet:
    """The trained float DigitsResNet (BatchNorm unfolded), trained once and cached
    (a plain state dict: the class lives in this script)."""
    path = s.cache / f"resnet_c{s.channels}_e{s.epochs}.pt" if s.cache is not None else None
    torch.manual_seed(0)
    model = DigitsResNet(s.channels)
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    fit(model, data.train, data.test, epochs=s.epochs, progress=False)
    model.eval()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model


def recipe_for(fmt) -> Recipe:
    """Minifloat weights per output channel and activations per tensor, max scales."""
    w = QuantSpec(fmt, per_channel(0), ScaleSpec("max"))
    a = QuantSpec(fmt, PER_TENSOR, ScaleSpec("max"))
    return Recipe.uniform(weights=w, activations=a)


def on_grid(m: nn.Module) -> bool:
    """Every quantized weight equals its quantizer's output (it is on the grid)."""
    from hwquant.nn.kinds import is_quantized

    for mod in m.modules():
        wq = getattr(mod, "weight_quant", None)
        if is_quantized(mod) and isinstance(wq, nn.Module):
            with torch.no_grad():
                w = wq(mod.weight)
                if not torch.equal(wq(w), w):
                    return False
    return True


def point(base: nn.Module, fmt, method: str, data, calib, s: Settings) -> dict[str, Any]:
    """One (format, method) point from a fresh copy of ``base``."""
    pre, post = METHODS[method]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    reports: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always", SmoothQuantWarning)
        f = copy.deepcopy(base)
        reports.update(pipeline(f, calib, pre))  # structural transforms on the float model
        m = hwquant.quantize(f, recipe_for(fmt), inplace=True).eval()
        with hwquant.calibration(m):
            for x in calib:
                m(x)
        reports.update(pipeline(m, calib, post))
    notes = sorted({str(w.message) for w in got if issubclass(w.category, SmoothQuantWarning)})
    x = data.test.dataset.tensors[0]
    with torch.no_grad():
        sqnr = sqnr_db(base(x), m(x))
    row: dict[str, Any] = {
        "accuracy": evaluate(m, data.test),
        "sqnr_db": sqnr,
        "seconds": time.perf_counter() - t0,
        "weights_on_grid": on_grid(m),
    }
    if "smoothquant" in reports:
        row["smoothquant_layers"] = reports["smoothquant"].layers
        row["smoothquant_skipped"] = reports["smoothquant"].skipped
    if "equalize" in reports:
        row["equalized"] = reports["equalize"].equalized
    if "fold_bn" in reports:
        row["bn_folded"] = reports["fold_bn"].folded
    if notes:
        row["notes"] = notes
    return row


def transforms_on_quantized(base: nn.Module, fmt) -> dict[str, Any]:
    """What fold_bn and equalize find on the float model vs on the *quantized* model
    (``quantize`` returns a torch.fx GraphModule here, because it rewrote the adds)."""
    f = copy.deepcopy(base)
    q = hwquant.quantize(copy.deepcopy(base), recipe_for(fmt)).eval()
    out = {"float_fold_bn": fold_bn.apply(f).folded, "quantized_fold_bn": fold_bn.apply(q).folded}
    qf = hwquant.quantize(f, recipe_for(fmt)).eval()
    out["float_equalize"] = equalize.apply(copy.deepcopy(f)).equalized
    out["quantized_equalize"] = equalize.apply(qf).equalized
    return out


def run(s: Settings) -> dict[str, Any]:
    """Every (format, method) point; the results as a dict."""
    torch.set_num_threads(1)  # tiny kernels: one thread is fastest (tests/conftest.py)
    data = digits(seed=0)
    calib = list(data.calibration_batch(s.n_calib).split(128))
    base = float_model(s, data)
    rows: dict[str, dict] = {}
    for fname in s.formats:
        rows[fname] = {}
        for meth in s.methods:
            try:
                rows[fname][meth] = point(base, FORMATS[fname], meth, data, calib, s)
            except Exception as e:  # a failing method is a result to report, not a crash
                rows[fname][meth] = {"error": f"{type(e).__name__}: {e}"[:300]}
            r = rows[fname][meth]
            cell = r.get("error") or f"{r['accuracy']:.4f} ({r['sqnr_db']:.1f} dB)"
            print(f"W{fname} A{fname} {meth}: {cell}", flush=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(s).items()}
    return {
        "settings": settings,
        "float_accuracy": evaluate(base, data.test),
        "points": rows,
        "transforms_on_quantized_model": transforms_on_quantized(base, FORMATS[s.formats[0]]),
    }


def markdown(res: dict[str, Any]) -> str:
    """The results as a markdown table (accuracy % / SQNR dB per cell)."""
    formats = list(res["points"])
    methods = list(res["points"][formats[0]])
    lines = [
        "# Residual CNN (DigitsResNet): minifloat weights and activations, every PTQ method",
        "",
        f"Float accuracy {100 * res['float_accuracy']:.2f} %. Weights per output channel, "
        "activations (every conv / linear input and both operands of each residual add) per "
        "tensor, in the same minifloat format, max scales. Cells: test accuracy % / logit "
        "SQNR dB against the float model. Generated by `examples/ptq/residual_minifloat.py`.",
        "",
        "| method | " + " | ".join(f"W/A {f}" for f in formats) + " |",
        "|---|" + "---|" * len(formats),
    ]
    for meth in methods:
        cells = []
        for f in formats:
            r = res["points"][f][meth]
            ok = "error" not in r
            cells.append(f"{100 * r['accuracy']:.1f} / {r['sqnr_db']:.1f}" if ok else "FAILED")
        lines.append(f"| {meth} | " + " | ".join(cells) + " |")
    first = res["points"][formats[0]]
    sq = first.get("fold_bn+smoothquant", {})
    if "smoothquant_skipped" in sq:
        smoothed = sq.get("smoothquant_layers", [])
        lines += [
            "",
            f"SmoothQuant smoothed {smoothed or 'no layer'}; skipped (no LayerNorm / Linear "
            "producer to fold 1/s into, so nothing changes): "
            + "; ".join(f"`{k}`: {v}" for k, v in sq["smoothquant_skipped"].items()),
        ]
    eq = first.get("fold_bn+equalize", {})
    if "equalized" in eq:
        lines += ["", f"Equalized pairs: {', '.join(eq['equalized']) or 'none'}."]
    tq = res["transforms_on_quantized_model"]
    lines += [
        "",
        "fold_bn / equalize on the float model find "
        f"{len(tq['float_fold_bn'])} BN folds / {len(tq['float_equalize'])} pairs; on the "
        f"quantized model (a GraphModule) {len(tq['quantized_fold_bn'])} / "
        f"{len(tq['quantized_equalize'])}, so this script runs them before `quantize`.",
    ]
    errors = [
        (f, m, r["error"]) for f in formats for m, r in res["points"][f].items() if "error" in r
    ]
    for f, m, e in errors:
        lines += ["", f"- {m} at {f} failed: `{e}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, default=Path("examples/ptq/residual_minifloat.json"))
    p.add_argument("--md", type=Path, default=Path("examples/ptq/residual_minifloat.md"))
    p.add_argument("--cache", type=Path, default=Path("runs/ptq"))
    a = p.parse_args()
    res = run(Settings(cache=a.cache))
    a.json.write_text(json.dumps(res, indent=2))
    a.md.write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
