"""PTQ speed, in one process: GPTQ of one 1024×1024 linear layer (W4 per channel,
512 calibration rows) against round-to-nearest of the same layer (a forward with the
weight quantizer), and the output error of each.

Run: ``python benchmarks/ptq.py [--size 1024] [--rows 512] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

import hwquant
from hwquant.algorithms import gptq
from hwquant.spec import A8, IntFormat, QuantSpec, Recipe, ScaleSpec, per_channel


def layer(size: int) -> nn.Module:
    torch.manual_seed(0)
    spec = QuantSpec(IntFormat(4, narrow=True), per_channel(0), ScaleSpec("max"))
    return hwquant.quantize(nn.Sequential(nn.Linear(size, size)), Recipe.uniform(spec, A8))


def run(size: int, rows: int) -> dict:
    x = torch.randn(rows, size)
    m = layer(size)
    t0 = time.perf_counter()
    with torch.no_grad():
        m[0].weight_quant(m[0].weight)
    rtn_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = gptq.apply(m, x, gptq.GPTQConfig(max_batches=1))
    gptq_s = time.perf_counter() - t0
    (r,) = report.layers
    return {
        "size": size,
        "rows": rows,
        "threads": torch.get_num_threads(),
        "rtn_seconds": rtn_s,
        "gptq_seconds": gptq_s,
        "gptq_over_rtn": gptq_s / max(rtn_s, 1e-9),
        "rtn_rel_error": r.rtn_error,
        "gptq_rel_error": r.gptq_error,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--json")
    a = p.parse_args()
    out = run(a.size, a.rows)
    print(
        f"GPTQ {a.size}x{a.size}, {a.rows} rows, W4 per channel: {out['gptq_seconds']:.3f} s "
        f"(round-to-nearest {out['rtn_seconds'] * 1e3:.2f} ms, ratio {out['gptq_over_rtn']:.0f}x); "
        f"output error {out['rtn_rel_error']:.4f} -> {out['gptq_rel_error']:.4f}"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
