"""Export + verify time of a ResNet-8-sized quantized CNN, in one process.

The model: hwquant.export.zoo.ResNet8 (MLPerf Tiny's CIFAR-10 ResNet-8 shape:
16/32/64 channels, 3 residual stages, 3×32×32 input; INT8 input, INT4 per-channel
weights, UINT4 activations, Trunc average pooling), calibrated on random data.

Timed (median of ``--repeats`` runs): QONNX export, QCDQ export, both from one
capture (``to_qonnx_and_qcdq``; also with torch's ONNX exporter in place of
hwquant's own translation, the way every export went before), and verify on N
random inputs with qonnx's executor (QONNX file) and onnxruntime (QCDQ file),
each also as a ratio to one torch forward pass of the same N inputs (the
baseline). hls4ml is not timed: it does not take this model (per-channel
scales, Trunc), which the verify report says.

Run: ``python benchmarks/export_verify.py [--n 1000] [--repeats 3] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from hwquant.export import to_qcdq, to_qonnx, to_qonnx_and_qcdq, verify
from hwquant.export.zoo import calibrate, resnet8

SHAPE = (3, 32, 32)


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median seconds over ``repeats`` calls, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def run(n: int = 1000, repeats: int = 3) -> dict[str, Any]:
    torch.manual_seed(0)
    model = calibrate(resnet8(), SHAPE, n=64)
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as d:
        qpath, cpath = Path(d) / "resnet8.onnx", Path(d) / "resnet8.qcdq.onnx"
        with torch.no_grad():
            t_torch, _ = timed(lambda: model(x), repeats)
        t_qonnx, _ = timed(lambda: to_qonnx(model, x[:1], qpath, dynamic_batch=True), repeats)
        t_qcdq, _ = timed(lambda: to_qcdq(model, x[:1], cpath, dynamic_batch=True), repeats)

        def both() -> None:
            to_qonnx_and_qcdq(model, x[:1], qpath, cpath, dynamic_batch=True)

        t_both, _ = timed(both, repeats)
        with mock.patch("hwquant.export.translate.translate", lambda ep: None):
            t_both_torch, _ = timed(both, repeats)  # torch.onnx.export translates
        t_vq, rq = timed(lambda: verify(model, qpath, x, backends=("qonnx", "hls4ml")), repeats)
        t_vc, rc = timed(lambda: verify(model, cpath, x, backends=("onnxruntime",)), repeats)
    return {
        "params": params,
        "n_inputs": n,
        "torch_forward_s": t_torch,
        "export_qonnx_s": t_qonnx,
        "export_qcdq_s": t_qcdq,
        "export_both_s": t_both,
        "export_both_torch_onnx_s": t_both_torch,
        "verify_qonnx_s": t_vq,
        "verify_onnxruntime_s": t_vc,
        "qonnx_exec_s": rq["qonnx"].seconds,
        "onnxruntime_exec_s": rc["onnxruntime"].seconds,
        "qonnx_vs_torch": rq["qonnx"].seconds / t_torch,
        "onnxruntime_vs_torch": rc["onnxruntime"].seconds / t_torch,
        "qonnx_max_steps": rq["qonnx"].max_steps,
        "onnxruntime_max_steps": rc["onnxruntime"].max_steps,
        "hls4ml": rq["hls4ml"].note,
        "passed": rq.passed and rc.passed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="verification inputs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    r = run(args.n, args.repeats)
    print(
        f"ResNet-8 ({r['params']:,} parameters), {r['n_inputs']} inputs of {SHAPE}, "
        f"median of {args.repeats}"
    )
    print(f"  torch forward (baseline)   {r['torch_forward_s']:7.3f} s")
    print(f"  export QONNX               {r['export_qonnx_s']:7.3f} s")
    print(f"  export QCDQ                {r['export_qcdq_s']:7.3f} s")
    print(
        f"  export both, one capture   {r['export_both_s']:7.3f} s   (with torch's ONNX "
        f"exporter: {r['export_both_torch_onnx_s']:.3f} s = "
        f"{r['export_both_torch_onnx_s'] / r['export_both_s']:.1f}×)"
    )
    print(
        f"  verify QONNX (qonnx exec)  {r['verify_qonnx_s']:7.3f} s   execute_onnx "
        f"{r['qonnx_exec_s']:.3f} s = {r['qonnx_vs_torch']:.1f}× torch, "
        f"max {r['qonnx_max_steps']} steps"
    )
    print(
        f"  verify QCDQ (onnxruntime)  {r['verify_onnxruntime_s']:7.3f} s   session run "
        f"{r['onnxruntime_exec_s']:.3f} s = {r['onnxruntime_vs_torch']:.2f}× torch, "
        f"max {r['onnxruntime_max_steps']} steps"
    )
    print(f"  hls4ml: {r['hls4ml']}")
    print(f"  all passed: {r['passed']}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
