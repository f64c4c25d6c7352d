"""Smoke versions of examples/ptq/transformer_smoothquant.py and
examples/ptq/residual_minifloat.py (seconds, not minutes): every method runs end to
end and the results say what the full runs say."""

import importlib
import math
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "ptq"


@pytest.fixture(scope="module")
def examples():
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield (
            importlib.import_module("transformer_smoothquant"),
            importlib.import_module("residual_minifloat"),
        )
    finally:
        sys.path.remove(str(EXAMPLES))


def _finite(row):
    return 0.0 <= row["accuracy"] <= 1.0 and not math.isnan(row["sqnr_db"])


def test_transformer_smoothquant_smoke(examples):
    t, _ = examples
    s = t.Settings(
        epochs=2,
        act_formats=("INT4",),
        methods=("rtn", "sq0.5"),
        variants=("outliers",),
        n_calib=256,
        cache=None,
        investigate=False,
    )
    res = t.run(s)
    block = res["variants"]["outliers"]
    assert block["max_abs_diff_to_plain_float"] < 1e-4  # the outliers keep the float function
    row = block["points"]["INT4"]
    assert all(_finite(r) for r in row.values())
    # per-tensor INT4 with x20 outlier channels: smoothing must win by a wide margin
    assert row["sq0.5"]["sqnr_db"] > row["rtn"]["sqnr_db"] + 3.0
    md = t.markdown(res)
    assert "| INT4 |" in md and "outliers" in md


def test_outlier_injection_keeps_the_function(examples):
    t, _ = examples
    from hwquant.models import DigitsTransformer

    torch.manual_seed(0)
    m = DigitsTransformer().eval()
    o = t.with_outlier_channels(m)
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(o(x), m(x), atol=1e-5)
        assert float(o.blocks[0].ln1.weight.abs().max()) > 10 * float(
            m.blocks[0].ln1.weight.abs().max()
        )


def test_residual_minifloat_smoke(examples):
    _, r = examples
    s = r.Settings(epochs=1, channels=4, formats=("FP4_E2M1",), n_calib=128, cache=None)
    res = r.run(s)
    rows = res["points"]["FP4_E2M1"]
    assert set(rows) == set(r.METHODS)
    for name, row in rows.items():
        assert "error" not in row, (name, row)
        assert _finite(row) and row["weights_on_grid"], name
    assert len(rows["fold_bn"]["bn_folded"]) == 6  # stem, 2 per block, the shortcut
    assert rows["fold_bn+equalize"]["equalized"]  # conv1 -> conv2 inside the blocks
    assert rows["fold_bn+smoothquant"]["smoothquant_skipped"] == {
        "head": "its input comes from call_method flatten, not a LayerNorm / Linear"
    }
    assert "| all |" in r.markdown(res)


def test_residual_adds_are_quantized(examples):
    """Both operands of every residual ``+`` go through the minifloat quantizer."""
    _, r = examples
    import hwquant
    from hwquant.nn import QuantAdd
    from hwquant.spec import FP4_E2M1

    torch.manual_seed(0)
    q = hwquant.quantize(r.DigitsResNet(4).eval(), r.recipe_for(FP4_E2M1)).eval()
    adds = [m for m in q.modules() if isinstance(m, QuantAdd)]
    assert len(adds) == 2
    x = torch.randn(32, 1, 8, 8)
    with hwquant.calibration(q):
        q(x)
    seen = []
    h = adds[0].input_quant.register_forward_hook(lambda m, a, y: seen.append(y.detach()))
    with torch.no_grad():
        q(x)
    h.remove()
    # FP4 E2M1 has 15 levels: with one per-tensor scale, an operand takes at most 15 values
    assert all(len(torch.unique(y)) <= 15 for y in seen) and len(seen) == 2
