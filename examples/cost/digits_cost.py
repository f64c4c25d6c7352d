"""Hardware cost of the digits CNN at several precisions (issue 5 example).

Trains DigitsCNN with QAT at W2A2, W4A4, W4A8, W8A4 and W8A8 on scikit-learn's
digits, costs each on the PYNQ-Z2 target (FINN MVAU model, automatic folding to
1000 cycles/frame), and writes next to this file:

- ``digits_w4a4.json`` / ``digits_w8a8.json``: the full CostReports;
- ``digits_w4a4.png`` / ``digits_w8a8.png``: per-layer LUT terms and memory;
- ``sweep.json`` and ``pareto_luts.png``: accuracy vs LUTs with the Pareto front.

Run: ``.venv/bin/python examples/cost/digits_cost.py`` (about a minute on 2 CPU cores).
The same numbers come from the CLI on a checkpoint, e.g.
``hwquant cost runs/demo/digits_w4a4.pt --target pynq-z2 --plot cost.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import hwquant
from hwquant.analysis import cost
from hwquant.analysis.plots import plot_cost, plot_pareto
from hwquant.datasets import DigitsData, digits
from hwquant.models import DigitsCNN
from hwquant.spec import IntFormat, QuantSpec, Recipe, ScaleSpec, per_channel
from hwquant.training import fit

HERE = Path(__file__).resolve().parent
CONFIGS = ((2, 2), (4, 4), (4, 8), (8, 4), (8, 8))
REPORTED = ((4, 4), (8, 8))
EPOCHS = 8
TARGET = "pynq-z2"


def train(w: int, a: int, data: DigitsData) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(0)
    weights = QuantSpec(IntFormat(w, narrow=True), per_channel(0), ScaleSpec(learned=True))
    acts = QuantSpec(IntFormat(a), scale=ScaleSpec("percentile", learned=True))
    model = hwquant.quantize(DigitsCNN(), Recipe.uniform(weights=weights, activations=acts))
    result = fit(model, data.train, data.test, epochs=EPOCHS, progress=False)
    return model.eval(), result.test_accuracy


def main() -> None:
    data = digits(seed=0)
    sweep = []
    for w, a in CONFIGS:
        model, acc = train(w, a, data)
        report = cost(model, (1, *data.input_shape), target=TARGET)
        label = f"W{w}A{a}"
        sweep.append(
            {
                "label": label,
                "accuracy": acc,
                "luts": report.luts,
                "dsps": report.dsps,
                "bram18": report.bram18,
                "bops_psqs": report.bops_psqs,
                "bops_qonnx": report.bops_qonnx,
                "weight_memory_bits": report.weight_memory_bits,
                "fits": report.fits,
            }
        )
        print(
            f"{label}: accuracy {acc:.4f}, {report.luts:,} LUT, {report.dsps} DSP, "
            f"{report.bram18} BRAM18, {report.bops_psqs / 1e6:.2f} MBOPs (Ps-and-Qs), fits={report.fits}"
        )
        if (w, a) in REPORTED:
            stem = f"digits_w{w}a{a}"
            d = report.to_dict() | {"accuracy": acc, "epochs": EPOCHS}
            (HERE / f"{stem}.json").write_text(json.dumps(d, indent=1) + "\n")
            plot_cost(report, HERE / f"{stem}.png", title=f"DigitsCNN {label} on {TARGET}")
    (HERE / "sweep.json").write_text(json.dumps(sweep, indent=1) + "\n")
    plot_pareto(
        sweep,
        HERE / "pareto_luts.png",
        cost_key="luts",
        title=f"DigitsCNN QAT ({EPOCHS} epochs), FINN estimate on {TARGET}",
    )


if __name__ == "__main__":
    main()
