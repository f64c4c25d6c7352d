import pytest
import torch
from torch import nn

from hwquant.algorithms.equalize import EqualizeConfig, apply


def _rtn_w4(w: torch.Tensor) -> torch.Tensor:
    s = w.abs().max() / 7
    return torch.clamp(torch.round(w / s), -8, 7) * s


def _bad_model() -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    with torch.no_grad():
        scale = torch.logspace(-2, 1, 32)
        m[0].weight.mul_(scale[:, None])
        m[0].bias.mul_(scale)
        m[2].weight.div_(scale[None, :])
    return m


def _w4_error(m: nn.Sequential, x: torch.Tensor, ref: torch.Tensor) -> float:
    saved = [layer.weight.detach().clone() for layer in (m[0], m[2])]
    with torch.no_grad():
        for layer in (m[0], m[2]):
            layer.weight.copy_(_rtn_w4(layer.weight))
        err = float((m(x) - ref).pow(2).mean() / ref.pow(2).mean())
        for layer, w in zip((m[0], m[2]), saved, strict=True):
            layer.weight.copy_(w)
    return err


def test_function_preserved_and_w4_error_improves():
    m = _bad_model()
    x = torch.randn(64, 16)
    ref = m(x).detach()
    before = _w4_error(m, x, ref)
    report = apply(m)
    out = m(x).detach()
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max())
    assert report.equalized == ["0->2"]
    assert report.range_ratio_after["0->2"] < report.range_ratio_before["0->2"] / 10
    after = _w4_error(m, x, ref)
    assert after < before / 2, (before, after)


def test_conv_chain_and_depthwise_preserved():
    torch.manual_seed(1)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.LeakyReLU(0.1),
        nn.Conv2d(8, 8, 3, groups=8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1),
    )
    x = torch.randn(2, 3, 9, 9)
    ref = m(x).detach()
    report = apply(m, config=EqualizeConfig(iterations=3))
    assert report.equalized == ["0->2"]
    assert report.skipped == {"2->4": "grouped/depthwise first layer is not supported"}
    assert torch.allclose(m(x), ref, rtol=1e-5, atol=1e-5 * ref.abs().max())


def test_skips_with_reason_and_config_validation():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3, groups=2))
    report = apply(m)
    assert report.equalized == []
    assert "groups=2" in report.skipped["0->2"]
    with pytest.raises(ValueError, match="iterations"):
        EqualizeConfig(iterations=0)
    with pytest.raises(ValueError, match="tolerance"):
        EqualizeConfig(tolerance=-1)
