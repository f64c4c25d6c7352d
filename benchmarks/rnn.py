"""Quantized BiLSTM training step vs float ``nn.LSTM``, in one process.

Sequence 64 × batch 64 × hidden 128 (input 32), bidirectional, forward + backward,
W4A4 with every internal quantizer on (input, ih / hh weights, biases on the
accumulator scale, gate pre-activations, sigmoid / tanh outputs, 16-bit cell state,
hidden state), against float ``torch.nn.LSTM`` on the CPU (its fused C++ loop;
cuDNN-free). Median of N steps after warm-up; prints the ratio and, to show what
limits it, the same layer with its quantizers switched off (the per-step Python loop
of ``QuantLSTM``, without any quantization) against the fused float kernel.

Run: ``python benchmarks/rnn.py [--steps 10] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

import hwquant
from hwquant.nn import QuantLSTM
from hwquant.spec import A4, W4, LayerSpec


def step_ms(model: nn.Module, x: torch.Tensor, steps: int, warmup: int = 3) -> float:
    """Median milliseconds of forward + backward (sum of squares loss)."""
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        y, _ = model(x)
        y.square().mean().backward()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def run(T: int = 64, B: int = 64, H: int = 128, features: int = 32, steps: int = 10) -> dict:
    torch.manual_seed(0)
    f = nn.LSTM(features, H, bidirectional=True)
    q = QuantLSTM.from_float(f, LayerSpec(input=A4, weight=W4))
    x = torch.randn(T, B, features)
    q(x)  # first batch: learned activation scales
    float_ms, quant_ms = step_ms(f, x, steps), step_ms(q, x, steps)
    hwquant.set_quantization(q, False)
    loop_ms = step_ms(q, x, steps)
    return {
        "shape": {"T": T, "B": B, "H": H, "features": features, "bidirectional": True},
        "float_ms": round(float_ms, 2),
        "quant_ms": round(quant_ms, 2),
        "ratio": round(quant_ms / float_ms, 2),
        "loop_only_ms": round(loop_ms, 2),
        "loop_only_ratio": round(loop_ms / float_ms, 2),
        "quantizers": sum(1 for m in q.modules() if hasattr(m, "spec")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args()
    res = run(steps=args.steps)
    print(
        f"BiLSTM T={res['shape']['T']} B={res['shape']['B']} H={res['shape']['H']}: "
        f"float {res['float_ms']:.1f} ms, W4A4 (all {res['quantizers']} quantizers) "
        f"{res['quant_ms']:.1f} ms → {res['ratio']:.2f}× float; the Python loop alone "
        f"(quantizers off) {res['loop_only_ms']:.1f} ms = {res['loop_only_ratio']:.2f}× float"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
