"""PTQ speed, in one process: GPTQ and AdaRound of one 1024×1024 linear layer (W4
per channel, 512 calibration rows) against round-to-nearest of the same layer (a
forward with the weight quantizer): the time of each, its ratio to round-to-nearest,
and the relative output error ‖(W − Ŵ)X‖² / ‖WX‖² of each and its ratio to RTN's.

Run: ``python benchmarks/ptq.py [--size 1024] [--rows 512] [--iterations 500] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

import hwquant
from hwquant.algorithms import adaround, gptq
from hwquant.spec import A8, IntFormat, QuantSpec, Recipe, ScaleSpec, per_channel


def layer(size: int) -> nn.Module:
    torch.manual_seed(0)
    spec = QuantSpec(IntFormat(4, narrow=True), per_channel(0), ScaleSpec("max"))
    return hwquant.quantize(nn.Sequential(nn.Linear(size, size)), Recipe.uniform(spec, A8))


def run(size: int, rows: int, iterations: int | None = None) -> dict:
    """Seconds and errors of RTN, GPTQ and AdaRound (``iterations``: its config's
    default when None) on the same layer and inputs."""
    x = torch.randn(rows, size)
    m = layer(size)
    t0 = time.perf_counter()
    with torch.no_grad():
        m[0].weight_quant(m[0].weight)
    rtn_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    (g,) = gptq.apply(m, x, gptq.GPTQConfig(max_batches=1)).layers
    gptq_s = time.perf_counter() - t0
    extra = {} if iterations is None else {"iterations": iterations}
    config = adaround.AdaRoundConfig(max_batches=1, **extra)
    t0 = time.perf_counter()
    (a,) = adaround.apply(layer(size), x, config).layers
    ada_s = time.perf_counter() - t0
    rtn_s = max(rtn_s, 1e-9)
    return {
        "size": size,
        "rows": rows,
        "threads": torch.get_num_threads(),
        "adaround_iterations": config.iterations,
        "rtn_seconds": rtn_s,
        "gptq_seconds": gptq_s,
        "adaround_seconds": ada_s,
        "gptq_over_rtn": gptq_s / rtn_s,
        "adaround_over_rtn": ada_s / rtn_s,
        "rtn_rel_error": g.rtn_error,
        "gptq_rel_error": g.gptq_error,
        "adaround_rel_error": a.adaround_error,
        "gptq_error_over_rtn": g.gptq_error / g.rtn_error,
        "adaround_error_over_rtn": a.adaround_error / a.rtn_error,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--iterations", type=int, help="AdaRound steps (default: its config's)")
    p.add_argument("--json")
    a = p.parse_args()
    o = run(a.size, a.rows, a.iterations)
    print(f"{a.size}x{a.size} linear, {a.rows} rows, W4 per channel, {o['threads']} threads")
    print(f"  round-to-nearest  {o['rtn_seconds'] * 1e3:9.2f} ms  error {o['rtn_rel_error']:.5f}")
    for name in ("gptq", "adaround"):
        print(
            f"  {name:<16} {o[name + '_seconds']:9.3f} s  ({o[name + '_over_rtn']:.0f}x RTN)  "
            f"error {o[name + '_rel_error']:.5f} ({o[name + '_error_over_rtn']:.3f}x RTN)"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(o, f, indent=2)


if __name__ == "__main__":
    main()
