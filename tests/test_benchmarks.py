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


def test_peers_benchmark_smoke():
    """Both libraries train and step; every A2Q row's integer codes fit its P bits."""
    import pytest

    pytest.importorskip("brevitas")
    b = _load("peers")
    rows = b.accuracy(epochs=1, seeds=1, bits=(11,), progress=lambda _: None)
    assert {r["library"] for r in rows} == {"hwquant", "brevitas"}
    assert {(r["method"], r["P"]) for r in rows} == {("qat", None), ("a2q", 11), ("a2q+", 11)}
    for r in rows:
        assert 0 <= r["mean"] <= 100 and len(r["accuracies"]) == 1
        if r["P"] is not None:
            assert r["worst_bits"] <= r["P"], r
    speed = b.speed(steps=1, warm=1, compile_=False)
    assert set(speed) == set(b.WORKLOADS)
    assert all(r["hwquant_ms"] > 0 and r["brevitas_ms"] > 0 for r in speed.values())
    assert all(r["float_page_faults"] >= 0 for r in speed.values())


def test_worst_case_bits_by_hand():
    b = _load("peers")
    # unsigned 4-bit x: Σ x·q ∈ [15·(−2), 15·(1 + 3)] = [−30, 60] → 7 bits (−64…63)
    assert b.worst_case_bits(torch.tensor([[1.0, -2.0, 3.0]]), 4, False) == 7
    # 1-bit unsigned x ∈ {0, 1}: the edges of the 8-bit range −128…127
    for q, bits in ((127, 8), (128, 9), (-128, 8), (-129, 9)):
        assert b.worst_case_bits(torch.tensor([[float(q)]]), 1, False) == bits
    # signed 4-bit x ∈ [−8, 7]: q = [2] gives [−16, 14] → 5 bits (−16…15)
    assert b.worst_case_bits(torch.tensor([[2.0]]), 4, True) == 5
    assert b.worst_case_bits(torch.zeros(2, 3), 4, False) == 1
