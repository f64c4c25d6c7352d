"""A2Q / A2Q+ on the digits CNN (issue 4, experiment 4a; accumulator-aware PTQ, item 5).

For W4A4 and W8A8 and accumulator widths P ∈ {32, 16, 14, 12, 10} (W8A8 also 20, 18):

- baseline QAT (per-channel learned scales, round half-even) — trained once, then run
  with bit-exact integer execution and P-bit *wrapping* accumulators;
- A2Q and A2Q+ QAT at each P with the A2Q penalty, initialized from the float model by
  EP-init (``ep``, the A2Q+ paper's) or by accumulator-aware PTQ codes (``ptq``);
- accumulator-aware PTQ without retraining: EP-init + round toward zero vs hwquant's
  L1-constrained GPTQ (:mod:`hwquant.algorithms.a2q_ptq`).

Each row reports the fake-quantized test accuracy, the accuracy of the integer model at
P bits (wrap), the guaranteed P (widest exact worst-case accumulator), weight sparsity,
dot products that overflowed on the test set and output channels that overflow on their
worst-case inputs. Writes ``digits_results.json`` and ``digits_tables.md`` next to this
file. Run: ``.venv/bin/python examples/a2q/digits_a2q.py`` (about 3.5 minutes on 2 cores).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import a2q_common as C

import hwquant
from hwquant.algorithms import a2q_ptq, fold_bn
from hwquant.datasets import DigitsData, digits
from hwquant.models import DigitsCNN
from hwquant.training import evaluate, fit

HERE = Path(__file__).resolve().parent


@dataclass
class Settings:
    # (weight bits, activation bits, accumulator widths P); W8A8 adds the P where it breaks
    configs: tuple[tuple[int, int, tuple[int, ...]], ...] = (
        (4, 4, (32, 16, 14, 12, 10)),
        (8, 8, (32, 20, 18, 16, 14, 12, 10)),
    )
    float_epochs: int = 8
    qat_epochs: int = 20
    lr: float = 3e-3
    channels: int = 16
    seed: int = 0
    out: Path | None = HERE
    log: list[str] = field(default_factory=list)


def say(s: Settings, text: str) -> None:
    s.log.append(text)
    print(text, flush=True)


def test_tensors(data: DigitsData) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.test.dataset.tensors
    return x, y


def float_model(s: Settings, data: DigitsData) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(s.seed)
    model = DigitsCNN(s.channels)
    fit(model, data.train, data.test, epochs=s.float_epochs, progress=False)
    model.eval()
    fold_bn.apply(model)
    return model, evaluate(model, data.test)


def qat(s: Settings, fm, data: DigitsData, method: str, w: int, a: int, P, init: str = "ep"):
    torch.manual_seed(s.seed)
    model = hwquant.quantize(fm, C.recipe(method, w, a, P))
    calib = data.calibration_batch(512)
    extra = C.setup(model, calib, method, init)
    fit(
        model, data.train, data.test, epochs=s.qat_epochs, lr=s.lr, progress=False, extra_loss=extra
    )
    return model.eval()


def row(model, x, y, P: int, acc: float, **extra) -> dict:
    def accuracy(out: torch.Tensor) -> float:
        return float((out.argmax(1) == y).float().mean())

    au = C.audit(model, x, P)
    return {
        "P": P,
        "accuracy": acc,
        "int_accuracy_wrap": C.integer_metric(model, x, P, accuracy),
        **asdict(au),
        **extra,
    }


def run(s: Settings) -> dict:
    t0 = time.time()
    data = digits(seed=s.seed)
    x, y = test_tensors(data)
    fm, facc = float_model(s, data)
    say(s, f"float DigitsCNN({s.channels}), BN folded: {C.fmt_pct(facc)} %")
    results: dict = {
        "float_accuracy": facc,
        "settings": {k: v for k, v in asdict(s).items() if k not in ("out", "log")},
    }
    for w, a, P_list in s.configs:
        key = f"W{w}A{a}"
        rows: list[dict] = []
        base = qat(s, fm, data, "baseline", w, a, None)
        bacc = evaluate(base, data.test)
        for P in P_list:
            rows.append(row(base, x, y, P, bacc, method="baseline", init="-"))
        for method in ("A2Q", "A2Q+"):
            for init in ("ep", "ptq"):
                for P in P_list:
                    m = qat(s, fm, data, method, w, a, P, init=init)
                    rows.append(row(m, x, y, P, evaluate(m, data.test), method=method, init=init))
        ptq_rows = []
        for method in ("A2Q", "A2Q+"):
            for P in P_list:
                r = {"method": method, "P": P}
                for how in ("ep", "gptq"):
                    m = hwquant.quantize(fm, C.recipe(method, w, a, P))
                    rep = a2q_ptq.apply(
                        m, data.calibration_batch(512), a2q_ptq.A2QPTQConfig(method=how)
                    )
                    r[how] = evaluate(m.eval(), data.test)
                    r[f"{how}_ok"] = rep.ok
                    r[f"{how}_sparsity"] = C.sparsity(m)
                ptq_rows.append(r)
        results[key] = {"qat": rows, "ptq": ptq_rows}
        for line in tables(key, results[key]):
            say(s, line)
    results["seconds"] = time.time() - t0
    say(s, f"total {results['seconds']:.0f} s")
    if s.out is not None:
        (s.out / "digits_results.json").write_text(json.dumps(results, indent=1) + "\n")
        (s.out / "digits_tables.md").write_text("\n".join(s.log) + "\n")
    return results


def tables(key: str, res: dict) -> list[str]:
    out = [
        "",
        f"### Digits CNN {key}: QAT",
        "",
        "| method | init | P | acc % (fake-quant) | acc % (integer, P-bit wrap) | guaranteed P "
        "| sparsity % | overflows on test set | worst-case overflowing channels |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["qat"]:
        out.append(
            f"| {r['method']} | {r['init']} | {r['P']} | {C.fmt_pct(r['accuracy'])} "
            f"| {C.fmt_pct(r['int_accuracy_wrap'])} | {r['guaranteed_P']} "
            f"| {C.fmt_pct(r['sparsity'])} | {r['data_overflows']} "
            f"| {r['worst_case_overflow_channels']} |"
        )
    out += [
        "",
        f"### Digits CNN {key}: accumulator-aware PTQ (no retraining)",
        "",
        "| method | P | EP-init + round toward zero: acc % | L1-constrained GPTQ: acc % "
        "| sparsity % (EP / GPTQ) | budgets met |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in res["ptq"]:
        out.append(
            f"| {r['method']} | {r['P']} | {C.fmt_pct(r['ep'])} | {C.fmt_pct(r['gptq'])} "
            f"| {C.fmt_pct(r['ep_sparsity'])} / {C.fmt_pct(r['gptq_sparsity'])} "
            f"| {r['ep_ok'] and r['gptq_ok']} |"
        )
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)  # tiny model: one thread is fastest (no OpenMP spin-waits)
    run(Settings())
