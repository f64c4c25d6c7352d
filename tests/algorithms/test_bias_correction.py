"""Empirical bias correction removes a systematic output shift from weight quantization."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hwquant
from hwquant.algorithms import bias_correction
from hwquant.api import calibration
from hwquant.spec import A8, IntFormat, LayerSpec, QuantSpec, Recipe, ScaleSpec, per_channel


def _outputs(m, x):
    """(y with float weights, y with quantized weights) on the same quantized inputs."""
    layer = m[0]
    with torch.no_grad():
        yq = m(x)
        layer.weight_quant.disable()
        yf = m(x)
        layer.weight_quant.enable()
    return yf, yq


def _mean_error(yf, yq):
    """|E[y_float − y_quant]| per output channel."""
    dims = [d for d in range(yq.dim()) if d != 1]
    return (yf - yq).mean(dims).abs()


def _calibrated(m, x):
    m.eval()
    with calibration(m), torch.no_grad():
        m(x)
    return m


@pytest.mark.parametrize("bias", [True, False])
def test_systematic_shift_is_removed(bias):
    torch.manual_seed(0)
    lin = nn.Linear(32, 8, bias=bias)
    with torch.no_grad():  # asymmetric weights: W3 rounding has a systematic bias
        lin.weight.copy_(torch.rand(8, 32) * 0.5 + 0.03)
    spec = QuantSpec(IntFormat(3), per_channel(0), ScaleSpec("max"))
    x = torch.rand(512, 32) + 0.5
    m = _calibrated(hwquant.quantize(nn.Sequential(lin), Recipe.uniform(spec, A8)), x)
    yf, yq = _outputs(m, x)
    report = bias_correction.apply(m, x, bias_correction.BiasCorrectionConfig(calibrate=False))
    before, after = _mean_error(yf, yq), _mean_error(yf, m(x).detach())
    (r,) = report.layers
    assert r.added_bias == (not bias) and m[0].bias is not None
    assert r.mse_after < r.mse_before and r.mean_abs_shift > 0
    assert float(after.mean()) < 0.2 * float(before.mean())


def test_conv_layers_are_corrected():
    torch.manual_seed(0)
    spec = LayerSpec(input=A8, weight=QuantSpec(IntFormat(3), per_channel(0), ScaleSpec("max")))
    m = nn.Sequential(hwquant.nn.QuantConv2d(4, 6, 3, padding=1, groups=2, spec=spec))
    with torch.no_grad():
        m[0].weight.copy_(torch.rand_like(m[0].weight) * 0.3 + 0.02)
    x = torch.rand(16, 4, 8, 8)
    m = _calibrated(m, x)
    yf, yq = _outputs(m, x)
    report = bias_correction.apply(m, x, bias_correction.BiasCorrectionConfig(calibrate=False))
    (r,) = report.layers
    assert r.added_bias is False and r.mse_after < r.mse_before
    before, after = _mean_error(yf, yq), _mean_error(yf, m(x).detach())
    assert float(after.mean()) < 0.2 * float(before.mean())


def test_bad_config():
    with pytest.raises(ValueError, match="max_batches"):
        bias_correction.BiasCorrectionConfig(max_batches=0)
