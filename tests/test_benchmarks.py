"""Fast smoke versions of the benchmarks (the real runs live in benchmarks/)."""

import importlib.util
from pathlib import Path

import torch


def _load(name):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_qat_step_benchmark_smoke():
    b = _load("qat_step")
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    res = b.pair(b.mlp, x, y, steps=2, compile_=False)
    assert res["float_ms"] > 0 and res["ratio"] > 0
    assert b.cnn()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    fq = b.fake_quant_throughput(n=1 << 12, reps=1)
    assert fq["int4_vs_clone"] > 0


def test_ptq_benchmark_smoke():
    out = _load("ptq").run(size=64, rows=128)
    assert out["gptq_seconds"] > 0 and out["gptq_rel_error"] < out["rtn_rel_error"]


def test_rnn_benchmark_smoke():
    out = _load("rnn").run(T=4, B=2, H=8, features=3, steps=1)
    assert out["float_ms"] > 0 and out["ratio"] > 0 and out["quantizers"] >= 10
