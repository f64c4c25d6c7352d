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


class _Residual(nn.Module):
    """conv-BN-ReLU, then a conv-BN-ReLU-conv branch added back: `quantize` rewrites
    the add, and fold_bn / equalize must still find their pairs in the quantized model."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c3 = nn.Conv2d(4, 4, 1)
        self.r1, self.r2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.r1(self.b1(self.c1(x)))
        return self.c3(self.r2(self.b2(self.c2(y)))) + y


def test_fold_bn_and_equalize_find_pairs_in_a_quantized_residual_model():
    import hwquant
    from hwquant.algorithms import fold_bn
    from hwquant.spec import A8, W4, Recipe

    torch.manual_seed(0)
    m = _Residual()
    for b in (m.b1, m.b2):
        b.running_mean.uniform_(-1, 1)
        b.running_var.uniform_(0.5, 2)
    q = hwquant.quantize(m.eval(), Recipe.uniform(weights=W4, activations=A8)).eval()
    x = torch.randn(8, 1, 8, 8)
    hwquant.set_quantization(q, False)
    ref = q(x)
    assert fold_bn.apply(q).folded == ["c1+b1", "c2+b2"]
    assert apply(q).equalized == ["c2->c3"]  # c1's output also feeds the add: left alone
    torch.testing.assert_close(q(x), ref, atol=1e-5, rtol=1e-5)  # the same float function
