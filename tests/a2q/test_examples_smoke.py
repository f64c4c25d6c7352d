"""Smoke versions of the reference experiments in examples/a2q (seconds, not minutes):
the pipeline runs end to end and the accumulator guarantees show in the results."""

import importlib
import math
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "a2q"


@pytest.fixture(scope="module")
def examples():
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield importlib.import_module("digits_a2q"), importlib.import_module("espcn_a2q")
    finally:
        sys.path.remove(str(EXAMPLES))


def check_guarantees(rows, P_low):
    for r in rows:
        if r["method"] != "baseline":
            assert r["bounds_ok"] and r["guaranteed_P"] <= r["P"]
            assert r["worst_case_overflow_channels"] == 0 and r["data_overflows"] == 0
    low = [r for r in rows if r["method"] == "baseline" and r["P"] == P_low]
    assert low and low[0]["worst_case_overflow_channels"] > 0


def test_digits_smoke(examples):
    digits_a2q, _ = examples
    s = digits_a2q.Settings(
        configs=((4, 4, (16, 7)),), float_epochs=1, qat_epochs=1, channels=4, out=None
    )
    res = digits_a2q.run(s)
    rows = res["W4A4"]["qat"]
    assert {(r["method"], r["init"]) for r in rows} == {
        ("baseline", "-"),
        ("A2Q", "ep"),
        ("A2Q", "ptq"),
        ("A2Q+", "ep"),
        ("A2Q+", "ptq"),
    }
    check_guarantees(rows, 7)
    assert all(r["ep_ok"] and r["gptq_ok"] for r in res["W4A4"]["ptq"])
    assert any("| A2Q+ |" in line for line in s.log)


def test_espcn_smoke(examples):
    _, espcn_a2q = examples
    s = espcn_a2q.Settings(
        P=(11,),
        inits=("ep",),
        n_patches=64,
        float_steps=10,
        qat_steps=3,
        widths=(8, 4),
        test_crop=64,
        out=None,
    )
    res = espcn_a2q.run(s)
    assert math.isfinite(res["bicubic_psnr"]) and math.isfinite(res["float_psnr"])
    check_guarantees(res["rows"], 11)
    assert all(math.isfinite(r["psnr"]) for r in res["rows"])


def test_digits_bias_budget_smoke():
    sys.path.insert(0, str(EXAMPLES))
    try:
        bias_budget = importlib.import_module("digits_bias_budget")
    finally:
        sys.path.remove(str(EXAMPLES))
    rows = bias_budget.main(
        configs=((4, 4),), P_list=(10,), float_epochs=1, qat_epochs=1, channels=4
    )
    assert len(rows) == 2 and all(r["layers"] == 4 for r in rows)
    assert all(r["layers_over_range"] == 0 and r["worst_abs_acc"] <= 512 for r in rows)
