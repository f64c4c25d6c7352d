import pytest
import torch
from torch import nn

from hwquant.algorithms.smoothquant import ChannelScale, SmoothQuantConfig, apply


def _fake_quant(x: torch.Tensor, bits: int) -> torch.Tensor:
    qmax = 2 ** (bits - 1) - 1
    s = x.abs().max() / qmax
    return torch.clamp(torch.round(x / s), -qmax - 1, qmax) * s


def _outlier_data(n=256, c=32):
    torch.manual_seed(0)
    x = torch.randn(n, c)
    x[:, [3, 17]] *= 50.0  # outlier channels
    return x


def _act_error(layer: nn.Linear, pre: nn.Module, x, ref, bits):
    with torch.no_grad():
        y = layer(_fake_quant(pre(x), bits))
    return float((y - ref).pow(2).mean() / ref.pow(2).mean())


@pytest.mark.parametrize("bits", [4, 6])
def test_improves_per_tensor_activation_quant(bits):
    x = _outlier_data()
    torch.manual_seed(1)
    lin = nn.Linear(32, 16)
    with torch.no_grad():  # outliers carry no more signal than other channels
        lin.weight[:, [3, 17]] /= 50.0
    model = nn.Sequential(nn.Identity(), lin)
    ref = model(x).detach()
    before = _act_error(lin, nn.Identity(), x, ref, bits)
    report = apply(model, x)
    assert report.layers == ["1"]
    wrapped = model[1]
    assert isinstance(wrapped[0], ChannelScale)
    with torch.no_grad():
        assert torch.allclose(model(x), ref, rtol=1e-5, atol=1e-4)
        after = _act_error(wrapped[1], wrapped[0], x, ref, bits)
    assert after < before / 2, (before, after)
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


def test_config_and_data_errors():
    with pytest.raises(ValueError, match="alpha"):
        SmoothQuantConfig(alpha=1.5)
    with pytest.raises(ValueError, match="NaN"):
        apply(nn.Sequential(nn.Linear(2, 2)), torch.tensor([[float("nan"), 0.0]]))
