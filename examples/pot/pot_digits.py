"""Power-of-two, APoT and MSQ quantization-aware training on the digits CNN (issue 14).

For W4A8 and W3A8 the same float DigitsCNN (BN folded) is fine-tuned with four weight
schemes, all per output channel with a learned scale / clipping level α and 8-bit
activations:

- ``uniform``: narrow signed integers (``IntFormat(b, narrow=True)``, LSQ);
- ``PoT``: ±2^e, e ∈ [e_min, 0], no zero level (``PoTWeight(PowerOfTwoFormat(b))``);
- ``APoT``: sums of two powers of two with weight normalization and the RCF-trained α
  (``PoTWeight(APoTFormat(b), weight_norm=True)``), and ``APoT-noWN`` without the
  weight normalization (it drops each row's mean, which a BN-folded model without BN
  after the conv cannot recover: see the README);
- ``MSQ``: half the rows SP2, half fixed point (``PoTWeight(MSQFormat(b), sp2_fraction=0.5)``).

Per model: test accuracy after PTQ (α from max|w|, activations calibrated) and after
QAT (fake-quantized), accuracy of the shift-add integer execution
(:func:`hwquant.analysis.shift_exec.run_shift_add`, 32-bit accumulators) and whether
its logits equal the fake-quantized model's in output codes (float64), and the cost
model's LUT / DSP estimate with multipliers and with the PoTAcc-calibrated shift PE.
Then a same-process CPU micro-benchmark of the shift-add kernel against an int64 and a
float32 matmul on the largest layer's im2col shape (the point of the kernel is
bit-exactness and the hardware estimate, not CPU speed).

Writes ``pot_results.json`` and ``pot_tables.md`` next to this file. Run:
``.venv/bin/python examples/pot/pot_digits.py`` (about 4 minutes on 2 cores).
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import hwquant
from hwquant.algorithms import fold_bn
from hwquant.analysis.cost import cost
from hwquant.analysis.shift_exec import run_shift_add, shift_codes, shift_dot
from hwquant.core.pot import shift_terms
from hwquant.datasets import digits
from hwquant.models import DigitsCNN
from hwquant.nn.codes import weight_codes
from hwquant.spec import (
    A8,
    APoTFormat,
    IntFormat,
    MSQFormat,
    PoTWeight,
    PowerOfTwoFormat,
    QuantSpec,
    Recipe,
    ScaleSpec,
    per_channel,
)
from hwquant.training import evaluate, fit

HERE = Path(__file__).resolve().parent
SCHEMES = ("uniform", "PoT", "APoT", "APoT-noWN", "MSQ")


@dataclass
class Settings:
    weight_bits: tuple[int, ...] = (4, 3)
    schemes: tuple[str, ...] = SCHEMES
    float_epochs: int = 10
    qat_epochs: int = 20
    lr: float = 2e-3
    channels: int = 16
    seed: int = 0
    bench_repeats: int = 7
    out: Path | None = HERE
    log: list[str] = field(default_factory=list)


def say(s: Settings, text: str) -> None:
    s.log.append(text)
    print(text, flush=True)


def weight_spec(scheme: str, bits: int) -> QuantSpec:
    if scheme == "uniform":
        return QuantSpec(IntFormat(bits, narrow=True), per_channel(0), ScaleSpec(learned=True))
    if scheme == "PoT":
        return PoTWeight(PowerOfTwoFormat(bits))
    if scheme == "APoT":
        return PoTWeight(APoTFormat(bits), weight_norm=True)
    if scheme == "APoT-noWN":
        return PoTWeight(APoTFormat(bits))
    if scheme == "MSQ":
        return PoTWeight(MSQFormat(bits), sp2_fraction=0.5)
    raise ValueError(f"unknown scheme {scheme!r}; known: {list(SCHEMES)}")


def float_model(s: Settings, data) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(s.seed)
    model = DigitsCNN(s.channels)
    fit(model, data.train, data.test, epochs=s.float_epochs, progress=False)
    model.eval()
    fold_bn.apply(model)
    return model, evaluate(model, data.test)


def ptq(s: Settings, fm: torch.nn.Module, data, scheme: str, bits: int) -> torch.nn.Module:
    """Post-training quantization: α from max|w| per row, activations calibrated."""
    torch.manual_seed(s.seed)
    model = hwquant.quantize(copy.deepcopy(fm), Recipe.uniform(weight_spec(scheme, bits), A8))
    with hwquant.calibration(model):
        model(data.calibration_batch(512))
    return model.eval()


def qat(s: Settings, fm: torch.nn.Module, data, scheme: str, bits: int) -> torch.nn.Module:
    """PTQ, then quantization-aware training of weights, α and activation scales."""
    model = ptq(s, fm, data, scheme, bits).train()
    fit(model, data.train, data.test, epochs=s.qat_epochs, lr=s.lr, progress=False)
    return model.eval()


def integer_check(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Shift-add accuracy, and the largest logit difference from the fake-quantized
    float64 model in output codes (the classifier's accumulator step)."""
    m = copy.deepcopy(model).double()
    with torch.no_grad():
        ref = m(x.double())
    run = run_shift_add(m, x.double())
    fc = m.classifier
    step = (fc.input_quant.scale().detach() * weight_codes(fc).scale.reshape(-1)).double()
    diff = float(((run.outputs - ref) / step).abs().max())
    return {
        "shift_accuracy": float((run.outputs.argmax(1) == y).float().mean()),
        "max_code_diff": diff,
        "float_ops": run.float_ops,
        "shift_terms": max((shift_codes(mod).terms for _, mod in _weight_layers(m)), default=0),
    }


def _weight_layers(model):
    return [(n, mod) for n, mod in model.named_modules() if weight_codes(mod) is not None]


def hardware(model: torch.nn.Module) -> dict:
    r = cost(model, (1, 1, 8, 8))
    out = {"luts": r.luts, "dsps": r.dsps}
    if r.shift_pe is not None:
        out |= {"shift_luts": r.shift_pe["luts"], "shift_dsps": r.shift_pe["dsps"]}
    return out


def bench(s: Settings, model: torch.nn.Module, x: torch.Tensor) -> dict:
    """Median seconds of one dot-product block: x [M, K] (the largest conv's im2col
    input codes) with its weight codes q [C, K], by shift-add, int64 matmul and float32
    matmul; all three give the same integers."""
    layer = [m for _, m in _weight_layers(model)][1]  # conv(c → 2c) at 8×8: the most MACs
    q = weight_codes(layer).codes.reshape(layer.out_channels, -1)
    g = torch.Generator().manual_seed(0)
    cols = torch.randint(0, 256, (x.shape[0] * 64, q.shape[1]), generator=g)
    sign, shift = shift_terms(q)
    qf, cf = q.float(), cols.float()
    assert torch.equal(shift_dot(cols, sign, shift), cols @ q.T)

    def timed(fn) -> float:
        times = []
        for _ in range(s.bench_repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    res = {
        "M": int(cols.shape[0]),
        "K": int(q.shape[1]),
        "C": int(q.shape[0]),
        "terms": int(sign.shape[0]),
        "shift_add_s": timed(lambda: shift_dot(cols, sign, shift)),
        "int64_matmul_s": timed(lambda: cols @ q.T),
        "float32_matmul_s": timed(lambda: cf @ qf.T),
        "threads": torch.get_num_threads(),
    }
    res["shift_vs_int64"] = res["shift_add_s"] / res["int64_matmul_s"]
    return res


def run(s: Settings) -> dict:
    t0 = time.time()
    data = digits(seed=s.seed)
    x, y = data.test.dataset.tensors
    fm, facc = float_model(s, data)
    say(s, f"float DigitsCNN({s.channels}), BN folded: {100 * facc:.2f} %")
    results: dict = {
        "float_accuracy": facc,
        "settings": {k: v for k, v in asdict(s).items() if k not in ("out", "log")},
        "rows": [],
    }
    for bits in s.weight_bits:
        for scheme in s.schemes:
            t1 = time.time()
            m = qat(s, fm, data, scheme, bits)
            row = {
                "config": f"W{bits}A8",
                "scheme": scheme,
                "format": weight_spec(scheme, bits).format.name,
                "ptq_accuracy": evaluate(ptq(s, fm, data, scheme, bits), data.test),
                "accuracy": evaluate(m, data.test),
                **integer_check(m, x, y),
                **hardware(m),
                "seconds": time.time() - t1,
            }
            if scheme == "APoT" and bits == max(s.weight_bits):
                results["bench"] = bench(s, m, x)
            results["rows"].append(row)
            say(s, f"  {row['config']} {scheme:8s} {100 * row['accuracy']:.2f} %")
    results["seconds"] = time.time() - t0
    for line in tables(results):
        say(s, line)
    if s.out is not None:
        (s.out / "pot_results.json").write_text(json.dumps(results, indent=1) + "\n")
        (s.out / "pot_tables.md").write_text("\n".join(s.log) + "\n")
    return results


def tables(res: dict) -> list[str]:
    out = [
        "",
        f"float accuracy {100 * res['float_accuracy']:.2f} %",
        "",
        "| config | scheme | format | PTQ % | QAT % | shift-add QAT % | max code diff "
        "| terms | LUT (mult) | DSP (mult) | LUT (shift PE) | DSP (shift PE) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        shift = (
            (str(r.get("shift_luts", "–")), str(r.get("shift_dsps", "–")))
            if "shift_luts" in r
            else ("–", "–")
        )
        out.append(
            f"| {r['config']} | {r['scheme']} | {r['format']} | {100 * r['ptq_accuracy']:.2f} "
            f"| {100 * r['accuracy']:.2f} "
            f"| {100 * r['shift_accuracy']:.2f} | {r['max_code_diff']:.1e} | {r['shift_terms']} "
            f"| {r['luts']} | {r['dsps']} | {shift[0]} | {shift[1]} |"
        )
    b = res.get("bench")
    if b:
        out += [
            "",
            f"micro-benchmark (one process, {b['threads']} threads): x [{b['M']}×{b['K']}] int64 "
            f"codes · APoT weights [{b['C']}×{b['K']}], {b['terms']} terms per weight",
            "",
            "| kernel | median ms |",
            "|---|---|",
            f"| shift-add (shift_dot) | {1e3 * b['shift_add_s']:.2f} |",
            f"| int64 matmul | {1e3 * b['int64_matmul_s']:.2f} |",
            f"| float32 matmul | {1e3 * b['float32_matmul_s']:.2f} |",
            "",
            f"shift-add / int64 matmul: {b['shift_vs_int64']:.1f}×",
        ]
    out.append(f"\ntotal {res['seconds']:.0f} s")
    return out


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    run(Settings(float_epochs=2, qat_epochs=1, out=None) if quick else Settings())
