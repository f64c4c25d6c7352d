"""QAT step cost vs float, in one process (the foundation issue's benchmark).

1. One training step (forward, backward, Adam) of a 4-conv CNN on 1×28×28
   inputs, batch 128, W4A4 with per-channel weights, against the same float
   model: median of N steps after warm-up (the QAT model first runs the 100
   batches of its activation scales' statistics warm-up, so the steps are steady-state
   QAT); eager and torch.compile ratios.
2. A tiny MLP (FPGA-sized, 64→32→32→10, batch 32): QAT vs float step, where
   per-call Python overhead dominates.
3. Fake-quantization throughput of a 16M-element tensor vs ``x.clone()``
   (the memory-bound limit), int4 and FP8.

Run: ``python benchmarks/qat_step.py [--steps 30] [--json out.json] [--no-compile]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import hwquant
from hwquant.core import kernels
from hwquant.core.grid import fake_quantize, make_grid
from hwquant.spec import A4, FP8_E4M3FN, W4, IntFormat, Recipe


def cnn() -> nn.Module:
    def block(i: int, o: int, pool: bool) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.ReLU()] + ([nn.MaxPool2d(2)] if pool else [])

    return nn.Sequential(
        *block(1, 16, False),
        *block(16, 32, True),
        *block(32, 32, False),
        *block(32, 64, True),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 10),
    )


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
    )


def step_time(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int = 5
) -> float:
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def pair(make, x, y, steps: int, compile_: bool) -> dict[str, float]:
    torch.manual_seed(0)
    f = make()
    q = hwquant.quantize(f, Recipe.uniform(weights=W4, activations=A4))  # signed: N(0, 1) inputs
    with torch.no_grad():  # initialize the activation scales and finish their warm-up
        for _ in range(A4.scale.warmup + 1):  # (statistics per batch): time steady QAT
            q(x)
    if compile_:
        torch._dynamo.reset()
        tf = step_time(torch.compile(f), x, y, steps, warmup=10)
        torch._dynamo.reset()
        tq = step_time(torch.compile(q), x, y, steps, warmup=10)
    else:
        tf, tq = step_time(f, x, y, steps), step_time(q, x, y, steps)
    return {"float_ms": tf * 1e3, "qat_ms": tq * 1e3, "ratio": tq / tf}


def fake_quant_throughput(n: int = 1 << 24, reps: int = 10) -> dict[str, float]:
    x = torch.randn(n)

    def best(fn) -> float:
        fn()
        return min(_timed(fn) for _ in range(reps))

    clone = best(lambda: x.clone())
    out = {"numel": n, "clone_ms": clone * 1e3}
    for name, fmt in (("int4", IntFormat(4)), ("fp8_e4m3fn", FP8_E4M3FN)):
        g = make_grid(fmt)
        with torch.no_grad():
            t = best(lambda g=g: fake_quantize(x, 0.1, None, g))
        out[f"{name}_ms"] = t * 1e3
        out[f"{name}_vs_clone"] = t / clone
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--json", type=str, default=None)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    torch.manual_seed(0)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    xm, ym = torch.randn(32, 64), torch.randint(0, 10, (32,))
    res = {"threads": torch.get_num_threads(), "kernels": kernels.describe()}
    print(f"hwquant CPU kernels: {res['kernels']}")
    res["cnn_eager"] = pair(cnn, x, y, args.steps, False)
    print(
        f"CNN W4A4 step (eager): float {res['cnn_eager']['float_ms']:.1f} ms, "
        f"QAT {res['cnn_eager']['qat_ms']:.1f} ms, ratio {res['cnn_eager']['ratio']:.2f}x"
    )
    # FPGA-sized models run single-threaded: with 2 OpenMP threads the tiny kernels
    # (eager and inductor-generated) stall for milliseconds on a shared 2-core VM.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    res["mlp_eager"] = pair(mlp, xm, ym, args.steps * 10, False)
    print(
        f"tiny MLP W4A4 step (eager): float {res['mlp_eager']['float_ms']:.3f} ms, "
        f"QAT {res['mlp_eager']['qat_ms']:.3f} ms, ratio {res['mlp_eager']['ratio']:.2f}x"
    )
    if not args.no_compile:
        res["mlp_compiled"] = pair(mlp, xm, ym, args.steps * 10, True)
        print(
            f"tiny MLP W4A4 step (torch.compile): float {res['mlp_compiled']['float_ms']:.3f} ms, "
            f"QAT {res['mlp_compiled']['qat_ms']:.3f} ms, ratio {res['mlp_compiled']['ratio']:.2f}x; "
            f"vs eager float {res['mlp_compiled']['qat_ms'] / res['mlp_eager']['float_ms']:.2f}x"
        )
    torch.set_num_threads(threads)
    if not args.no_compile:
        res["cnn_compiled"] = pair(cnn, x, y, args.steps, True)
        print(
            f"CNN W4A4 step (torch.compile): float {res['cnn_compiled']['float_ms']:.1f} ms, "
            f"QAT {res['cnn_compiled']['qat_ms']:.1f} ms, ratio {res['cnn_compiled']['ratio']:.2f}x"
        )
    fq = fake_quant_throughput()
    res["fake_quant_16M"] = fq
    print(
        f"fake-quant 16M elements: clone {fq['clone_ms']:.1f} ms; int4 {fq['int4_ms']:.1f} ms "
        f"({fq['int4_vs_clone']:.1f}x clone); fp8 {fq['fp8_e4m3fn_ms']:.1f} ms "
        f"({fq['fp8_e4m3fn_vs_clone']:.1f}x clone)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
