"""Smoke run of benchmarks/export_verify.py (the real run prints the timings)."""

import importlib.util
from pathlib import Path


def test_export_verify_benchmark_smoke():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "export_verify.py"
    spec = importlib.util.spec_from_file_location("export_verify", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = mod.run(n=4, repeats=1)
    assert r["passed"] and r["qonnx_max_steps"] < 0.5 and r["onnxruntime_max_steps"] < 0.5
    assert 70_000 < r["params"] < 90_000  # ResNet-8 sized
    assert "Trunc" in r["hls4ml"]
    assert r["export_both_s"] > 0 and r["export_both_torch_onnx_s"] > 0
