"""hwquant side by side with Brevitas, in one process (issue: the peer benchmark).

1. **Step speed.** Four workloads, each run as float torch, hwquant and Brevitas,
   interleaved step by step in one single-threaded process; medians of thread CPU
   time, ratio to float:

   - ``mlp_w4a4``: MLP 64-128-128-10 (ReLU, biases), batch 64, Adam; 4-bit narrow
     per-tensor weights with learned scales, 4-bit activations at every layer input
     (signed at the model input, unsigned after a ReLU), 32-bit biases on the
     accumulator scale. Brevitas: ``QuantIdentity`` / ``QuantReLU`` at 4 bits with
     ``return_quant_tensor=True``, ``Int8WeightPerTensorFloat`` at 4 bits, ``Int32Bias``.
   - ``mlp_a2q``: the same MLP with A2Q at P = 16 (4-bit weights, unsigned 4-bit
     inputs). Brevitas: ``Int8AccumulatorAwareWeightQuant`` at 4 bits.
   - ``cnn_w4a4``: conv(1→16)-ReLU-pool-conv(16→32)-ReLU-pool-linear on 1×28×28,
     batch 64, SGD with momentum; 4-bit per-channel weights, 4-bit activations.
   - ``cnn_eval``: that CNN's forward in eval mode, batch 256, no gradients.

   glibc's malloc hands large freed blocks back to the kernel and page-faults them in
   again on the next step: on the small CNN about 2000 faults a step, 2–3 ms of its
   8 ms, and more the more a model allocates, which moved the hwquant / float ratio
   between 0.8× and 1.4× from run to run. The benchmark therefore keeps freed memory
   in the process (:func:`hwquant.training.steady_malloc`, which the ``hwquant``
   command uses too: no trimming, no mmap below 32 MiB; what ``MALLOC_TRIM_THRESHOLD_``
   / ``MALLOC_MMAP_THRESHOLD_`` or jemalloc do) for all libraries alike; ``--default-malloc`` measures without it (the JSON records
   page faults per step either way).

   All models start from the same float weights (one seed). hwquant is also timed
   under ``torch.compile`` (``fit(compile=True)``'s path) for the training
   workloads. Every model first runs 310 steps (past hwquant's 100-batch scale
   warm-up and Brevitas' 300-step statistics phase), then the timed steps.

2. **A2Q / A2Q+ accuracy on digits.** The MLP 64-128-128-10 without biases, 4-bit
   weights, unsigned 4-bit inputs (pixels scaled to [0, 1]) and hidden activations,
   trained by one loop for both libraries (Adam 3e-3, cosine decay, batch 64, seeded
   shuffles, the same stratified split): plain per-channel QAT and A2Q / A2Q+ at each
   P, over seeds; mean and min–max of test accuracy. Each trained model's worst-case
   accumulator width comes from its integer weight codes through one function,
   :func:`worst_case_bits` (both libraries' codes, the same formula).

Both libraries start A2Q from the float weights (Brevitas' defaults: s = max|w|/q_max,
g = ‖w‖₁; hwquant's are the same).

Run: ``python benchmarks/peers.py [--only speed|accuracy] [--epochs 60] [--seeds 3]
[--bits 16 14 12 11 10] [--steps 200] [--no-compile] [--default-malloc]
[--json out.json]``. Needs the ``bench`` extra (Brevitas); without it, it says so and
exits.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import hwquant
from hwquant.core import kernels
from hwquant.core.accumulator import worst_case_range
from hwquant.nn import A2QWeightQuantizer, QuantLinear
from hwquant.spec import A2Q, A4, A4U, PER_TENSOR, W4, A2QPlus, IntFormat, Recipe
from hwquant.training import steady_malloc

W4_FORMAT = IntFormat(4, narrow=True)
WARM_STEPS = 310
_WHO = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)  # page faults of this thread


def have_brevitas() -> bool:
    return importlib.util.find_spec("brevitas") is not None


# ---------------------------------------------------------------- the one bits function
def worst_case_bits(codes: Tensor, input_bits: int, input_signed: bool) -> int:
    """The signed accumulator width P that Σ x·q needs for every input x of the
    ``input_bits``-bit format, per row of integer codes ``codes`` [C, K] (the worst row):
    the exact extremes of the dot product (``hwquant.core.accumulator.worst_case_range``)
    must lie in [−2^(P−1), 2^(P−1) − 1].

    >>> worst_case_bits(torch.tensor([[1, -2, 3]]), 4, False)   # y in [−30, 60] ⊂ [−64, 63]
    7
    """
    if input_signed:
        x_min, x_max = -(2 ** (input_bits - 1)), 2 ** (input_bits - 1) - 1
    else:
        x_min, x_max = 0, 2**input_bits - 1
    y_min, y_max = worst_case_range(codes.double(), x_min, x_max)
    need = max(int(-y_min.min()), int(y_max.max()) + 1, 1)
    return 1 + math.ceil(math.log2(need))


# ---------------------------------------------------------------- models
def _mlp(bias: bool = True) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, 128, bias=bias),
        nn.ReLU(),
        nn.Linear(128, 128, bias=bias),
        nn.ReLU(),
        nn.Linear(128, 10, bias=bias),
    )


def _cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )


def hwquant_model(kind: str, P: int = 16, bias: bool = True) -> nn.Module:
    """hwquant's model for a workload or table row: ``mlp_w4a4``, ``mlp_a2q``,
    ``cnn_w4a4``, ``qat`` (digits, per-channel), ``a2q`` / ``a2q+`` (digits, P bits)."""
    if kind == "mlp_w4a4":
        w = replace(W4, granularity=PER_TENSOR)
        return hwquant.quantize(_mlp(bias), Recipe.uniform(weights=w, activations=A4))
    if kind == "cnn_w4a4":
        return hwquant.quantize(_cnn(), Recipe.uniform(weights=W4, activations=A4))
    if kind == "qat":
        return hwquant.quantize(_mlp(bias), Recipe.uniform(weights=W4, activations=A4U))
    spec = {"mlp_a2q": A2Q, "a2q": A2Q, "a2q+": A2QPlus}[kind]
    weights = spec(W4_FORMAT, accumulator_bits=P)
    return hwquant.quantize(_mlp(bias), Recipe.uniform(weights=weights, activations=A4U))


def brevitas_model(kind: str, P: int = 16, bias: bool = True) -> nn.Module:
    """Brevitas' model for the same workload or row (module docstring)."""
    import brevitas.nn as qnn
    from brevitas.quant import (
        Int8ActPerTensorFloat,
        Int8WeightPerChannelFloat,
        Int8WeightPerTensorFloat,
        Int32Bias,
        Uint8ActPerTensorFloat,
    )
    from brevitas.quant.scaled_int import (
        Int8AccumulatorAwareWeightQuant,
        Int8AccumulatorAwareZeroCenterWeightQuant,
    )

    def act(signed: bool = False) -> nn.Module:
        quant = Int8ActPerTensorFloat if signed else Uint8ActPerTensorFloat
        return qnn.QuantIdentity(act_quant=quant, bit_width=4, return_quant_tensor=True)

    def relu() -> nn.Module:
        return qnn.QuantReLU(
            act_quant=Uint8ActPerTensorFloat, bit_width=4, return_quant_tensor=True
        )

    weight = {
        "mlp_w4a4": Int8WeightPerTensorFloat,
        "cnn_w4a4": Int8WeightPerChannelFloat,
        "qat": Int8WeightPerChannelFloat,
        "mlp_a2q": Int8AccumulatorAwareWeightQuant,
        "a2q": Int8AccumulatorAwareWeightQuant,
        "a2q+": Int8AccumulatorAwareZeroCenterWeightQuant,
    }[kind]
    kw: dict = {"weight_quant": weight, "weight_bit_width": 4, "bias": bias}
    if kind in ("mlp_a2q", "a2q", "a2q+"):
        kw["weight_accumulator_bit_width"] = P
    if bias:
        kw["bias_quant"] = Int32Bias
    if kind == "cnn_w4a4":
        return nn.Sequential(
            act(signed=True),
            qnn.QuantConv2d(1, 16, 3, padding=1, **kw),
            relu(),
            nn.MaxPool2d(2),
            qnn.QuantConv2d(16, 32, 3, padding=1, **kw),
            relu(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            qnn.QuantLinear(32 * 7 * 7, 10, **kw),
        )
    return nn.Sequential(
        act(signed=kind == "mlp_w4a4"),
        qnn.QuantLinear(64, 128, **kw),
        relu(),
        qnn.QuantLinear(128, 128, **kw),
        relu(),
        qnn.QuantLinear(128, 10, **kw),
    )


def _value(out) -> Tensor:
    return getattr(out, "value", out)  # Brevitas returns QuantTensors


# ---------------------------------------------------------------- 1. step speed
WORKLOADS = {
    # name: (input shape, batch, optimizer, training?)
    "mlp_w4a4": ((64,), 64, "adam", True),
    "mlp_a2q": ((64,), 64, "adam", True),
    "cnn_w4a4": ((1, 28, 28), 64, "sgd", True),
    "cnn_eval": ((1, 28, 28), 256, None, False),
}


def _stepper(model: nn.Module, x: Tensor, y: Tensor, opt_name: str | None) -> Callable[[], None]:
    if opt_name is None:
        model.eval()

        def forward() -> None:
            with torch.no_grad():
                model(x)

        return forward
    model.train()
    params = list(model.parameters())
    opt = (
        torch.optim.Adam(params, 1e-3) if opt_name == "adam" else torch.optim.SGD(params, 0.01, 0.9)
    )

    def step() -> None:
        loss = F.cross_entropy(_value(model(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _seeded(build: Callable[..., nn.Module], *args) -> nn.Module:
    """build(*args) from seed 0: every model of a workload starts from the same float
    weights, so their activations (and data-dependent kernels such as max-pool's
    compares) are alike."""
    torch.manual_seed(0)
    return build(*args)


def speed(steps: int = 200, warm: int = WARM_STEPS, compile_: bool = True) -> dict:
    """Median thread-CPU ms per step of each workload for float, hwquant (eager and,
    with ``compile_``, compiled) and Brevitas, interleaved; ratios to float."""
    torch.set_num_threads(1)
    results = {}
    for name, (shape, batch, opt_name, training) in WORKLOADS.items():
        gen = torch.Generator().manual_seed(0)
        x = torch.rand((batch, *shape), generator=gen)
        y = torch.randint(0, 10, (batch,), generator=gen)
        base = name.replace("_eval", "_w4a4")
        runs: dict[str, Callable[[], None]] = {
            "float": _stepper(_seeded(_cnn if base.startswith("cnn") else _mlp), x, y, opt_name),
            "hwquant": _stepper(_seeded(hwquant_model, base), x, y, opt_name),
            "brevitas": _stepper(_seeded(brevitas_model, base), x, y, opt_name),
        }
        compiled = None
        if compile_ and training:
            compiled = _seeded(hwquant_model, base)
            runs["hwquant_compiled"] = _stepper(compiled, x, y, opt_name)
        for i in range(warm):
            for key, run in runs.items():
                if key == "hwquant_compiled" and i == warm - 1:
                    runs[key] = _stepper(torch.compile(compiled), x, y, opt_name)
                    for _ in range(3):  # compile now, outside the timed steps
                        runs[key]()
                run()
        times: dict[str, list[float]] = {k: [] for k in runs}
        faults = dict.fromkeys(runs, 0)
        for _ in range(steps):
            for key, run in runs.items():
                f0 = resource.getrusage(_WHO).ru_minflt
                t = time.thread_time()
                run()
                times[key].append(time.thread_time() - t)
                faults[key] += resource.getrusage(_WHO).ru_minflt - f0
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        row = {f"{k}_ms": m for k, m in med.items()}
        row |= {f"{k}_page_faults": n / steps for k, n in faults.items()}
        row |= {f"{k}_vs_float": m / med["float"] for k, m in med.items() if k != "float"}
        row["brevitas_vs_hwquant"] = med["brevitas"] / med["hwquant"]
        results[name] = row
    return results


# ---------------------------------------------------------------- 2. A2Q accuracy
def digits_01(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's digits as 64-vectors in [0, 1] (pixels / 16), a stratified 80/20
    split fixed by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.data.astype(np.float32) / 16.0
    xtr, xte, ytr, yte = train_test_split(
        x, d.target, test_size=0.2, stratify=d.target, random_state=seed
    )
    return torch.tensor(xtr), torch.tensor(ytr), torch.tensor(xte), torch.tensor(yte)


def train(model: nn.Module, data: tuple, seed: int, epochs: int, lr: float = 3e-3) -> float:
    """The one training loop of both libraries: Adam + cosine decay, batch 64, shuffles
    from a generator seeded by ``seed``; returns the test accuracy in %."""
    xtr, ytr, xte, yte = data
    n = len(xtr)
    opt = torch.optim.Adam(model.parameters(), lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * math.ceil(n / 64))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(_value(model(xtr[idx])), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        return float((_value(model(xte)).argmax(1) == yte).double().mean()) * 100


def integer_codes(model: nn.Module, probe: Tensor) -> list[Tensor]:
    """Each linear layer's integer weight codes [C, K], as the library computes them."""
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        out = []
        for m in model.modules():
            if isinstance(m, QuantLinear):
                q = m.weight_quant
                if isinstance(q, A2QWeightQuantizer):
                    out.append(q.code_rows(m.weight))
                else:
                    out.append(q.codes(m.weight).codes.reshape(len(m.weight), -1))
        return out
    import brevitas.nn as qnn

    layers = [m for m in model.modules() if isinstance(m, qnn.QuantLinear)]
    for m in layers:  # A2Q weight quantizers read the input format of the last forward
        m.weight_quant.cache_inference_quant_act = True
    model.eval()
    with torch.no_grad():
        model(probe)
        return [m.quant_weight().int().float() for m in layers]


def accuracy(
    epochs: int = 60, seeds: int = 3, bits: tuple[int, ...] = (16, 14, 12, 11, 10), progress=print
) -> list[dict]:
    """Rows {method, P, library, accuracies, mean, min, max, worst_bits, seconds}."""
    data = digits_01()
    rows = []
    configs = [("qat", None)] + [(m, p) for p in bits for m in ("a2q", "a2q+")]
    for method, P in configs:
        for lib, build in (("hwquant", hwquant_model), ("brevitas", brevitas_model)):
            accs, worst, t = [], 0, time.perf_counter()
            for seed in range(seeds):
                torch.manual_seed(seed)
                model = build(method, P or 16, bias=False)
                if lib == "hwquant":
                    model.train()(data[0][:256])  # initialize the activation scales
                accs.append(train(model, data, seed, epochs))
                codes = integer_codes(model, data[2][:8])
                worst = max([worst] + [worst_case_bits(c, 4, False) for c in codes])
            row = {
                "method": method,
                "P": P,
                "library": lib,
                "accuracies": accs,
                "mean": statistics.mean(accs),
                "min": min(accs),
                "max": max(accs),
                "worst_bits": worst,
                "seconds": time.perf_counter() - t,
            }
            rows.append(row)
            progress(_acc_line(row))
    return rows


# ---------------------------------------------------------------- output
def _acc_line(r: dict) -> str:
    p = "-" if r["P"] is None else str(r["P"])
    return (
        f"{r['method']:>5} P={p:>2} {r['library']:>8}: {r['mean']:6.2f} "
        f"[{r['min']:.1f}–{r['max']:.1f}]  worst-case bits {r['worst_bits']:>2}  "
        f"({r['seconds']:.0f} s)"
    )


def speed_table(res: dict) -> str:
    lines = [
        f"{'workload':<10} {'float ms':>9} {'hwquant':>16} {'compiled':>16} {'brevitas':>16} "
        f"{'brev/hwq':>9}"
    ]
    for name, r in res.items():

        def cell(k: str, r=r) -> str:
            return f"{r[k + '_ms']:.3f} ({r[k + '_vs_float']:.2f}×)" if k + "_ms" in r else "-"

        lines.append(
            f"{name:<10} {r['float_ms']:>9.3f} {cell('hwquant'):>16} {cell('hwquant_compiled'):>16} "
            f"{cell('brevitas'):>16} {r['brevitas_vs_hwquant']:>8.2f}×"
        )
    return "\n".join(lines)


def accuracy_table(rows: list[dict]) -> str:
    by = {(r["method"], r["P"], r["library"]): r for r in rows}
    lines = [f"{'method':<6} {'P':>3} {'hwquant %':>20} {'brevitas %':>20} {'bits h/b':>9}"]
    for method, P in dict.fromkeys((r["method"], r["P"]) for r in rows):
        h, b = by[(method, P, "hwquant")], by[(method, P, "brevitas")]

        def cell(r: dict) -> str:
            return f"{r['mean']:.2f} [{r['min']:.1f}–{r['max']:.1f}]"

        lines.append(
            f"{method:<6} {'-' if P is None else P:>3} {cell(h):>20} {cell(b):>20} "
            f"{h['worst_bits']:>4}/{b['worst_bits']:<4}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["speed", "accuracy"])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--bits", type=int, nargs="+", default=[16, 14, 12, 11, 10])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--default-malloc", action="store_true", help="keep glibc's trimming")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    if not have_brevitas():
        print("peers: Brevitas is not installed: pip install -e '.[bench]'")
        return 0
    out: dict = {"torch": torch.__version__, "threads": 1, "kernels": kernels.describe()}
    if a.default_malloc:
        out["malloc"] = "default"
    else:  # False: MALLOC_* already set by the user, or not glibc
        out["malloc"] = "steady" if steady_malloc() else "as configured"
    print(f"hwquant CPU kernels: {out['kernels']}; malloc: {out['malloc']}")
    if a.only != "accuracy":
        out["speed"] = speed(a.steps, compile_=not a.no_compile)
        print(speed_table(out["speed"]), flush=True)
    if a.only != "speed":
        print(
            f"digits MLP 64-128-128-10, W4A4, {a.epochs} epochs, {a.seeds} seeds (mean [min–max])"
        )
        out["accuracy"] = accuracy(a.epochs, a.seeds, tuple(a.bits))
        print(accuracy_table(out["accuracy"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
