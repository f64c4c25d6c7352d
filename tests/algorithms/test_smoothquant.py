import copy
import warnings

import pytest
import torch
from torch import nn

import hwquant
from hwquant.algorithms import get, pipeline
from hwquant.algorithms.smoothquant import (
    SmoothQuantConfig,
    SmoothQuantWarning,
    apply,
)
from hwquant.models import DigitsTransformer
from hwquant.spec import A4, IntFormat, QuantSpec, Recipe, ScaleSpec, per_channel


def _fake_quant(x: torch.Tensor, bits: int) -> torch.Tensor:
    qmax = 2 ** (bits - 1) - 1
    s = x.abs().max() / qmax
    return torch.clamp(torch.round(x / s), -qmax - 1, qmax) * s


def _outlier_data(n=256, c=32):
    torch.manual_seed(0)
    x = torch.randn(n, c)
    x[:, [3, 17]] *= 50.0  # outlier channels
    return x


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmoothQuantWarning)
        return fn(*args, **kwargs)


def _module_paths(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules()]


@pytest.mark.parametrize("bits", [4, 6])
def test_improves_per_tensor_activation_quant(bits):
    """Outliers through a LayerNorm with a per-channel gain: after smoothing the
    LayerNorm output quantizes per tensor with far less error."""
    x = _outlier_data()
    torch.manual_seed(1)
    ln, lin = nn.LayerNorm(32), nn.Linear(32, 16)
    with torch.no_grad():
        ln.weight[[3, 17]] = 50.0
        lin.weight[:, [3, 17]] /= 50.0  # outliers carry no more signal than other channels
    model = nn.Sequential(ln, lin)
    ref = model(x).detach()

    def act_error():
        with torch.no_grad():
            y = lin(_fake_quant(ln(x), bits))
        return float((y - ref).pow(2).mean() / ref.pow(2).mean())

    before = act_error()
    report = apply(model, x)
    assert report.layers == ["1"] and report.folded_into == {"1": "0"}
    assert _module_paths(model) == ["", "0", "1"]  # nothing wrapped or added
    with torch.no_grad():
        assert torch.allclose(model(x), ref, rtol=1e-5, atol=1e-4)
    assert act_error() < before / 2
    assert report.ratio_after["1"] < report.ratio_before["1"] / 4


def test_folds_into_layernorm_and_linear():
    torch.manual_seed(2)
    model = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 12), nn.Linear(12, 4))
    x = torch.randn(20, 8) * torch.linspace(0.1, 10, 8)
    ref = model(x).detach()
    report = apply(model, [x[:10], (x[10:], None)], SmoothQuantConfig(alpha=0.7))
    assert report.folded_into == {"1": "0", "2": "1"}
    assert all(isinstance(m, nn.Linear | nn.LayerNorm) for m in model)
    assert torch.allclose(model(x), ref, rtol=1e-5, atol=1e-5)


def test_no_foldable_producer_warns_and_leaves_the_layer():
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    x = torch.randn(16, 4)
    w = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(SmoothQuantWarning, match=r"smoothquant: 2 not smoothed: .*GELU"):
        report = apply(model, x)
    assert report.layers == [] and set(report.skipped) == {"0", "2"}
    assert "model input" in report.skipped["0"]
    assert all(torch.equal(a, b) for a, b in zip(w, model.parameters(), strict=True))


def test_shared_input_gets_one_scale_and_producer_feeding_others_is_skipped():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln, self.a, self.b = nn.LayerNorm(6), nn.Linear(6, 3), nn.Linear(6, 3)
            self.ln2, self.c = nn.LayerNorm(6), nn.Linear(6, 6)

        def forward(self, x):
            h = self.ln(x)
            g = self.ln2(x)
            return self.a(h) * self.b(h), self.c(g) + g  # ln2 also feeds the add

    x = torch.randn(32, 6) * torch.linspace(0.5, 8, 6)
    model = Shared()
    with torch.no_grad():
        model.ln.weight.copy_(torch.linspace(0.2, 5, 6))
    ref = [t.detach() for t in model(x)]
    with pytest.warns(SmoothQuantWarning, match="'ln2' also feeds"):
        report = apply(model, x)
    assert report.folded_into == {"a": "ln", "b": "ln"} and "c" in report.skipped
    out = model(x)
    assert all(torch.allclose(o, r, rtol=1e-5, atol=1e-5) for o, r in zip(out, ref, strict=True))


def test_transformer_float_function_unchanged_and_paths_kept():
    torch.manual_seed(0)
    model = DigitsTransformer().eval()
    with torch.no_grad():  # LayerNorm gains with outliers, so the smoothing does work
        for ln in (model.blocks[0].ln1, model.blocks[1].ln2):
            ln.weight[[1, 7]] = 20.0
    x = torch.randn(64, 1, 8, 8)
    ref = model(x).detach()
    paths = _module_paths(model)
    report = _quiet(apply, model, x, SmoothQuantConfig(alpha=0.5))
    assert report.folded_into["blocks.0.attn.q"] == "blocks.0.ln1"
    assert {report.folded_into[f"blocks.1.attn.{p}"] for p in "qkv"} == {"blocks.1.ln1"}
    assert report.folded_into["blocks.1.fc1"] == "blocks.1.ln2"
    assert {"blocks.0.fc2", "blocks.0.attn.out", "head", "embed"} <= set(report.skipped)
    assert _module_paths(model) == paths
    assert report.ratio_after["blocks.0.attn.q"] < report.ratio_before["blocks.0.attn.q"]
    with torch.no_grad():
        assert torch.allclose(model(x), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("quantized_first", [False, True])
def test_save_load_after_smoothing(tmp_path, quantized_first):
    torch.manual_seed(0)
    model = DigitsTransformer(dim=16, depth=1).eval()
    x = torch.randn(32, 1, 8, 8)
    w8 = QuantSpec(IntFormat(8, narrow=True), per_channel(0), ScaleSpec("max"))
    recipe = Recipe.uniform(weights=w8, activations=A4)
    if quantized_first:  # smoothing a quantized model re-calibrates its activations
        model = hwquant.quantize(model, recipe).eval()
        with hwquant.calibration(model):
            model(x)
        _quiet(pipeline, model, x, [("smoothquant", {"alpha": 0.75})])
    else:
        _quiet(get("smoothquant").run, model, x, {"alpha": 0.75})
        model = hwquant.quantize(model, recipe).eval()
        with hwquant.calibration(model):
            model(x)
    path = tmp_path / "m.pt"
    hwquant.save_checkpoint(model, path, (1, 1, 8, 8))
    loaded, _ = hwquant.load_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))


def test_quantized_model_is_recalibrated():
    torch.manual_seed(0)
    model = DigitsTransformer(dim=16, depth=1).eval()
    with torch.no_grad():
        model.blocks[0].ln1.weight[3] = 30.0
    x = torch.randn(64, 1, 8, 8)
    w8 = QuantSpec(IntFormat(8, narrow=True), per_channel(0), ScaleSpec("max"))
    q = hwquant.quantize(model, Recipe.uniform(weights=w8, activations=A4)).eval()
    with hwquant.calibration(q):
        q(x)
    scale = q.get_submodule("blocks.0.attn.q.input_quant")
    before = copy.deepcopy(scale.state_dict())
    _quiet(apply, q, x)
    after = scale.state_dict()
    assert any(
        not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point()
    )


def test_config_and_data_errors():
    with pytest.raises(ValueError, match="alpha"):
        SmoothQuantConfig(alpha=1.5)
    with pytest.raises(ValueError, match="calibrate"):
        SmoothQuantConfig(calibrate="yes")
    with pytest.raises(ValueError, match="NaN"):
        apply(nn.Sequential(nn.Linear(2, 2)), torch.tensor([[float("nan"), 0.0]]))
