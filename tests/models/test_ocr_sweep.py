"""examples/ocr/ocr_sweep.py: the seconds-long smoke run (CI) and the full sweep (slow)."""

import dataclasses
import importlib
import json
import math
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "ocr"


@pytest.fixture(scope="module")
def sweep():
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield importlib.import_module("ocr_sweep")
    finally:
        sys.path.remove(str(EXAMPLES))


def _check_rows(rows, configs):
    assert [r["config"] for r in rows] == ["float", *(f"W{w}A{a}" for w, a in configs)]
    for r in rows:
        assert math.isfinite(r["cer"]) and r["cer"] >= 0
        assert r["luts"] > 0 and r["weight_memory_bits"] > 0 and "classifier" in r["counted_layers"]
    for r in rows[1:]:
        assert r["lstm"] == "QuantLSTM"  # hwquant.quantize swapped the nn.LSTM
        assert len(r["history"]) >= 1
    by = {r["config"]: r for r in rows}
    # fewer bits, cheaper hardware: the cost model sees the precisions
    if "W2A2" in by and "W8A8" in by:
        lo, hi = by["W2A2"], by["W8A8"]
        assert lo["weight_memory_bits"] < hi["weight_memory_bits"] and lo["luts"] < hi["luts"]
        assert lo["weight_memory_bits"] < by["float"]["weight_memory_bits"]


def test_quick_sweep_writes_results_and_caches_the_float_model(sweep, tmp_path):
    result = sweep.main(["--quick", "--out", str(tmp_path / "out"), "--cache", str(tmp_path)])
    _check_rows(result["rows"], sweep.QUICK.configs)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["rows"][0]["cer"] == result["rows"][0]["cer"]
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| W2A2 | QuantLSTM |" in table and "| float |" in table
    assert result["rows"][0]["train_seconds"] > 0
    assert len(list(tmp_path.glob("float_*.pt"))) == 1
    again = sweep.run(dataclasses.replace(sweep.QUICK, cache=tmp_path))
    assert again["rows"][0]["train_seconds"] == 0.0  # loaded, not retrained
    assert again["rows"][0]["cer"] == result["rows"][0]["cer"]


@pytest.mark.slow
def test_full_sweep(sweep, tmp_path):
    """The reference experiment (≈ 20 min on 2 cores): float CER below 5 %, W8A8 within
    two points of float, every precision trained and costed."""
    s = sweep.Settings(out=tmp_path, progress=False)
    result = sweep.run(s)
    _check_rows(result["rows"], s.configs)
    by = {r["config"]: r["cer"] for r in result["rows"]}
    assert by["float"] < 0.05
    assert by["W8A8"] < by["float"] + 0.02
    assert by["W4A8"] < 0.10
