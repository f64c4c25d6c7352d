"""Smoke version of examples/pot/pot_digits.py (seconds): the study runs end to end, the
shift-add execution of every trained model equals its fake-quantized outputs, the
shift-PE estimate is below the multiplier design's, and a trained APoT model exports
with every weight on a level and verifies in qonnx's executor."""

import importlib
import sys
from pathlib import Path

import pytest

from hwquant.export import check_levels, to_qonnx, verify

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "pot"


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield importlib.import_module("pot_digits")
    finally:
        sys.path.remove(str(EXAMPLES))


def test_study_smoke(study, tmp_path):
    s = study.Settings(
        weight_bits=(4,), float_epochs=2, qat_epochs=1, channels=8, bench_repeats=1, out=None
    )
    res = study.run(s)
    rows = {r["scheme"]: r for r in res["rows"]}
    assert set(rows) == set(study.SCHEMES)
    for r in rows.values():
        assert r["float_ops"] == [] and r["max_code_diff"] < 1e-6
        assert abs(r["shift_accuracy"] - r["accuracy"]) <= 1 / 360 + 1e-9
        assert r["accuracy"] > 0.5
    assert [rows[k]["shift_terms"] for k in ("PoT", "APoT", "APoT-noWN", "MSQ")] == [1, 2, 2, 2]
    for k in ("PoT", "APoT", "APoT-noWN", "MSQ"):
        assert rows[k]["shift_luts"] < rows[k]["luts"] and rows[k]["shift_dsps"] <= rows[k]["dsps"]
    assert "shift_luts" not in rows["uniform"]
    b = res["bench"]
    assert b["terms"] == 2 and b["shift_add_s"] > 0 and b["int64_matmul_s"] > 0
    # a trained model exports exactly
    data = study.digits(seed=0)
    fm, _ = study.float_model(s, data)
    m = study.qat(s, fm, data, "MSQ", 4)
    x = data.test.dataset.tensors[0][:32]
    path = to_qonnx(m, x[:1], tmp_path / "msq.onnx")
    assert all(c.ok for c in check_levels(path)) and len(check_levels(path)) == 4
    assert verify(m, path, x, backends=("qonnx",)).passed
