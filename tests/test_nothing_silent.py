"""Bad inputs to the quantizer, ``quantize`` and ``fit``: a clear error or a documented,
visible behaviour (issue 9, items 4–8)."""

import warnings

import pytest
import torch
from torch import nn

import hwquant
from hwquant.api import MODEL_ROW, clipping
from hwquant.models import MLP, DigitsCNN
from hwquant.nn import Quantizer, QuantLinear
from hwquant.nn.quantizer import CLIP_WARN_FRACTION, ClippingWarning
from hwquant.spec import A4, A4U, A8, A8U, W4, IntFormat, QuantSpec, Recipe, ScaleSpec
from hwquant.training import fit

W4A8 = Recipe.uniform(weights=W4, activations=A8)


def _clip_warnings(fn):
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        fn()
    return [w for w in got if issubclass(w.category, ClippingWarning)]


# ---------------------------------------------------------------- item 4: fit and NaN
def _data(n_batches=4, bad=None):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n_batches):
        x = torch.randn(16, 8, generator=g)
        if i == bad:
            x[0, 0] = float("inf")
        out.append((x, torch.randint(0, 3, (16,), generator=g)))
    return out


def _finite(model):
    return all(bool(torch.isfinite(t).all()) for t in [*model.parameters(), *model.buffers()])


def test_fit_stops_at_a_nan_loss_before_the_update():
    model = MLP((8, 6, 3))
    calls = []

    def extra(m):  # nan on the third step
        calls.append(1)
        return torch.tensor(float("nan") if len(calls) == 3 else 0.0)

    with pytest.raises(ValueError, match=r"loss is nan at epoch 1, step 3"):
        fit(model, _data(), _data(1), epochs=2, progress=False, extra_loss=extra)
    assert _finite(model) and len(calls) == 3


def test_fit_nan_from_the_forward_leaves_no_nan_in_buffers():
    """An inf in the data turns BN statistics into nan during the forward: undone."""
    model = MLP((8, 6, 3), batch_norm=True)
    with pytest.raises(ValueError, match=r"loss is nan at epoch 1, step 2"):
        fit(model, _data(bad=1), _data(1), epochs=1, progress=False)
    assert _finite(model)


def test_fit_nan_keeps_the_weights_of_the_last_good_step():
    torch.manual_seed(0)
    model = hwquant.quantize(MLP((8, 6, 3)), W4A8)
    seen = []

    def extra(m):
        seen.append([p.detach().clone() for p in m.parameters()])
        return torch.tensor(float("inf") if len(seen) == 2 else 0.0)

    with pytest.raises(ValueError, match=r"loss is inf at epoch 1, step 2"):
        fit(model, _data(), _data(1), epochs=1, progress=False, extra_loss=extra)
    for p, q in zip(model.parameters(), seen[1], strict=True):
        assert torch.equal(p.detach(), q)  # the failing step changed nothing


# ---------------------------------------------------------------- item 5: a bare layer
def test_quantize_a_model_that_is_one_layer():
    model = hwquant.quantize(nn.Linear(4, 2), W4A8)
    assert isinstance(model, QuantLinear)
    [row] = model.hwquant_report.entries
    assert row.name == MODEL_ROW and row.quantized and row.type == "Linear"
    assert model.hwquant_recipe is W4A8
    assert model(torch.randn(3, 4)).shape == (3, 2)
    assert {"input_quant", "weight_quant"} <= {p for p, _ in hwquant.api.quantizers(model)}


def test_quantize_a_bare_unsupported_layer_says_why():
    model = hwquant.quantize(nn.BatchNorm1d(3), W4A8)
    [row] = model.hwquant_report.entries
    assert row.name == MODEL_ROW and not row.quantized and "fold_bn" in row.detail


# ---------------------------------------------------------------- item 7: report reasons
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        y = self.pool(self.conv(x)).flatten(1).unsqueeze(1)
        return self.attn(y, y, y)[0]


def test_report_says_no_quantized_twin_and_covers_attention_weights():
    model = hwquant.quantize(_Net(), W4A8)
    rows = {e.name: e for e in model.hwquant_report.entries}
    assert rows["pool"].detail == (
        "no quantized AdaptiveAvgPool2d yet: stays float (the recipe asks to quantize it)"
    )
    assert not rows["attn"].quantized and "in_proj_weight" in rows["attn"].detail
    kept = hwquant.quantize(_Net(), Recipe.uniform(weights=W4, activations=A8, keep_float=["pool"]))
    assert {e.name: e for e in kept.hwquant_report.entries}["pool"].detail == (
        "kept float by the recipe"
    )


# ---------------------------------------------------------------- item 6: unsigned clipping
def _mostly_negative():
    return torch.linspace(-3, 1, 400).reshape(4, 100)  # 75 % negative


def test_unsigned_init_warns_and_records_the_fraction():
    q = Quantizer(A4U, name="net.0.input_quant")
    got = _clip_warnings(lambda: q(_mostly_negative()))
    assert len(got) == 1 and "net.0.input_quant" in str(got[0].message)
    assert "75%" in str(got[0].message)
    assert q.clipped_fraction == 0.75
    assert not _clip_warnings(lambda: q(_mostly_negative()))  # once: not per call


def test_unsigned_calibration_warns_at_the_end():
    q = Quantizer(A8U, name="q")
    q.calibrate()
    assert not _clip_warnings(lambda: [q(_mostly_negative()), q(-_mostly_negative() - 5)])
    got = _clip_warnings(q.finish_calibration)
    assert len(got) == 1
    assert q.clipped_fraction == (300 + 400) / 800


@pytest.mark.parametrize(
    "spec",
    [
        A4,  # signed
        QuantSpec(IntFormat(4, signed=False), zero_point="asymmetric"),  # z absorbs them
    ],
)
def test_no_clipping_warning_where_negatives_are_representable(spec):
    q = Quantizer(spec)
    assert not _clip_warnings(lambda: q(_mostly_negative()))
    assert q.clipped_fraction is None


def test_few_negatives_are_recorded_without_a_warning():
    q = Quantizer(A4U)
    x = torch.linspace(-0.05, 0.95, 100)  # 5 % negative
    assert not _clip_warnings(lambda: q(x))
    assert q.clipped_fraction == pytest.approx(0.05) and q.clipped_fraction < CLIP_WARN_FRACTION


def test_quickstart_models_first_layer():
    """A4U on DigitsCNN's standardized input clips ~60 %: warned; A4 (the README's
    choice, unsigned after ReLU by graph analysis) does not, and the report shows it."""
    from hwquant.datasets import digits

    x = next(iter(digits().train))[0]
    a4u = hwquant.quantize(DigitsCNN(), Recipe.uniform(weights=W4, activations=A4U))
    got = _clip_warnings(lambda: a4u(x))
    assert [str(w.message).split("'")[1] for w in got] == ["features.0.input_quant"]
    frac = clipping(a4u)["features.0.input_quant"]
    assert frac > 0.5
    row = {e.name: e for e in a4u.hwquant_report.entries}["features.0"]
    assert row.clipped == {"input_quant": frac} and "negative" in str(a4u.hwquant_report)

    a4 = hwquant.quantize(DigitsCNN(), Recipe.uniform(weights=W4, activations=A4))
    assert not _clip_warnings(lambda: a4(x))
    assert "INT4 " in a4.hwquant_report.entries[0].detail["input"]
    assert a4.features[3].input_quant.spec.format == IntFormat(4, signed=False)


def test_calibration_fills_the_report():
    model = hwquant.quantize(MLP((8, 4)), Recipe.uniform(weights=W4, activations=A8U))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClippingWarning)
        with hwquant.calibration(model):
            model(_mostly_negative()[:, :8])
    assert model.hwquant_report.entries[0].clipped["input_quant"] > 0.5


# ---------------------------------------------------------------- item 8: empty batches
def test_empty_calibration_batch_names_the_quantizer():
    model = hwquant.quantize(MLP((8, 4)), W4A8)
    with (
        pytest.raises(ValueError, match=r"'layers\.0\.input_quant' is empty"),
        hwquant.calibration(model),
    ):
        model(torch.zeros(0, 8))


def test_empty_first_batch_names_the_quantizer():
    q = Quantizer(QuantSpec(IntFormat(8), scale=ScaleSpec("max")), name="x_q")
    with pytest.raises(ValueError, match=r"'x_q' is empty"):
        q(torch.zeros(0, 3))
