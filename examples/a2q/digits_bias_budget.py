"""Does the A2Q guarantee cover the whole accumulator, bias included? (issue 8, part 4)

Trains the digits CNN (BN folded, so every conv carries a bias on the accumulator
scale) with A2Q and A2Q+ QAT at P ∈ {10, 12}, then counts, per constrained layer, the
channels whose worst case *including the bias code* leaves the P-bit register:

    acc_max = b + Σ q_i·(x_max if q_i > 0 else x_min) ≤ 2^(P−1) − 1,
    acc_min = b + Σ q_i·(x_min if q_i > 0 else x_max) ≥ −2^(P−1).

The count is computed here from the layer's own codes (``weight_codes``) and bias
(``quant_bias() / s_acc``), independently of :mod:`hwquant.analysis.accumulators`, so
the script measures any version of the library. Also reports the fake-quantized and
integer (P-bit wrap) accuracy. Run: ``.venv/bin/python examples/a2q/digits_bias_budget.py``
(about two minutes on 2 cores).

Measured (8 float + 10 QAT epochs, EP-init, DigitsCNN(16)); layers over range with the
bias counted, of 4 per model, before → after the bias clip:

    W4A4  A2Q   P=10: 0 → 0  (acc 10.0 %, collapsed either way)
    W4A4  A2Q   P=12: 0 → 0  (95.0 %)
    W4A4  A2Q+  P=10: 2 → 0  (77.5 → 78.6 %)
    W4A4  A2Q+  P=12: 0 → 0  (97.8 %)
    W8A8  A2Q / A2Q+  P=10, 12: 4, 3, 4, 3 → 0 (≈10 %: T ≤ 8 leaves 8-bit inputs no budget)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import a2q_common as C

import hwquant
from hwquant.algorithms import fold_bn
from hwquant.analysis import run_integer
from hwquant.analysis.integer_exec import weight_codes
from hwquant.datasets import digits
from hwquant.models import DigitsCNN
from hwquant.nn import QuantWeightLayer
from hwquant.nn.a2q import a2q_layers
from hwquant.training import evaluate, fit


def bias_codes(layer: QuantWeightLayer) -> torch.Tensor:
    """Integer bias codes on the accumulator scale (zeros without a bias)."""
    n = layer.weight.shape[0]
    if layer.bias is None:
        return torch.zeros(n, dtype=torch.long)
    with torch.no_grad():
        s_acc = layer.input_quant.scale() * layer.weight_quant.scale_for(layer.weight)
        return torch.round(layer.quant_bias().double() / s_acc.double().reshape(-1)).long()


def over_range(model: torch.nn.Module) -> tuple[int, int, int, int]:
    """(layers over range, constrained layers, channels over range, largest |acc|)."""
    layers = bad_layers = bad_channels = worst = 0
    for _, layer, wq in a2q_layers(model):
        P, fmt = wq.accumulator_bits, wq.input_format
        q = weight_codes(layer)[0].reshape(layer.weight.shape[0], -1)
        pos, neg = q.clamp(min=0).sum(1), q.clamp(max=0).sum(1)
        b = bias_codes(layer)
        hi = b + pos * fmt.max_int + neg * fmt.min_int
        lo = b + pos * fmt.min_int + neg * fmt.max_int
        bad = (hi > 2 ** (P - 1) - 1) | (lo < -(2 ** (P - 1)))
        layers += 1
        bad_layers += int(bad.any())
        bad_channels += int(bad.sum())
        worst = max(worst, int(hi.max()), int(-lo.min()))
    return bad_layers, layers, bad_channels, worst


def main(
    configs: tuple[tuple[int, int], ...] = ((4, 4), (8, 8)),
    P_list: tuple[int, ...] = (10, 12),
    float_epochs: int = 8,
    qat_epochs: int = 10,
    channels: int = 16,
) -> list[dict]:
    """One row per (config, method, P): layers / channels over the P-bit range with the
    bias counted, the largest |acc|, fake-quantized and integer (P-bit wrap) accuracy."""
    torch.set_num_threads(1)
    data = digits(seed=0)
    x, y = data.test.dataset.tensors
    torch.manual_seed(0)
    fm = DigitsCNN(channels)
    fit(fm, data.train, data.test, epochs=float_epochs, progress=False)
    fm.eval()
    fold_bn.apply(fm)
    rows = []
    for w, a in configs:
        for method in ("A2Q", "A2Q+"):
            for P in P_list:
                torch.manual_seed(0)
                m = hwquant.quantize(fm, C.recipe(method, w, a, P))
                extra = C.setup(m, data.calibration_batch(512), method)
                fit(m, data.train, data.test, epochs=qat_epochs, progress=False, extra_loss=extra)
                m.eval()
                bad, n, ch, worst = over_range(m)
                out = run_integer(m, x, P, "wrap")
                r = {
                    "config": f"W{w}A{a}",
                    "method": method,
                    "P": P,
                    "layers_over_range": bad,
                    "layers": n,
                    "channels_over_range": ch,
                    "worst_abs_acc": worst,
                    "accuracy": evaluate(m, data.test),
                    "int_accuracy_wrap": float((out.outputs.argmax(1) == y).float().mean()),
                }
                rows.append(r)
                print(json.dumps(r), flush=True)
    bad = sum(r["layers_over_range"] for r in rows)
    print(f"layers over the P-bit range, bias counted: {bad} of {sum(r['layers'] for r in rows)}")
    return rows


if __name__ == "__main__":
    main()
