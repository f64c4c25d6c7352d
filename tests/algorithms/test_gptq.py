"""GPTQ on any grid: exact on its own terms (H = I is round-to-nearest; the codes stay
on the grid and through a model file), reproducible, and better than round-to-nearest
on a trained digits network for integer and minifloat weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hwquant
from hwquant.algorithms import gptq
from hwquant.checkpoint import load_checkpoint, save_checkpoint
from hwquant.spec import (
    A8,
    FP4_E2M1,
    IntFormat,
    LayerSpec,
    MinifloatFormat,
    PowerOfTwoFormat,
    QuantSpec,
    Recipe,
    ScaleSpec,
    per_channel,
    per_group,
)


def _spec(fmt, granularity=None):
    return QuantSpec(fmt, granularity or per_channel(0), ScaleSpec("max"))


def test_identity_hessian_without_act_order_is_round_to_nearest():
    torch.manual_seed(0)
    W = torch.randn(8, 32)
    s = W.abs().amax(1, keepdim=True) / 7
    rtn = (W / s).round().clamp(-7, 7) * s
    col = lambda w, j: ((w / s[:, 0].double()).round().clamp(-7, 7)) * s[:, 0].double()  # noqa: E731
    out = gptq.gptq_rows(W, torch.eye(32), col, act_order=False, damp=0.0)
    torch.testing.assert_close(out.float(), rtn)


def test_lazy_blocks_change_nothing():
    torch.manual_seed(1)
    W, X = torch.randn(6, 40), torch.randn(200, 40)
    H = X.T @ X
    col = lambda w, j: (w * 4).round() / 4  # noqa: E731
    a = gptq.gptq_rows(W, H, col, block_size=1)
    b = gptq.gptq_rows(W, H, col, block_size=128)
    assert ((a - b).abs() > 1e-6).sum() <= 1  # the same codes (one tie may flip)


def _mlp(fmt, granularity=None):
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 8))
    return hwquant.quantize(float_model, Recipe.uniform(_spec(fmt, granularity), A8))


FORMATS = {
    "int3": (IntFormat(3, narrow=True), None),
    "int4-group8": (IntFormat(4), per_group(8)),
    "fp4": (FP4_E2M1, None),
    "fp6-nosub": (MinifloatFormat(3, 2, has_subnormal=False), None),
    "pot4": (PowerOfTwoFormat(4), None),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_codes_on_the_grid_lower_error_and_reproducible(name):
    fmt, gran = FORMATS[name]
    x = torch.randn(512, 24)
    runs = []
    for _ in range(2):
        m = _mlp(fmt, gran)
        report = gptq.apply(m, x)
        runs.append([layer.weight.clone() for layer in (m[0], m[2])])
        for r in report.layers:
            assert r.gptq_error < r.rtn_error, (name, r)
        for layer in (m[0], m[2]):  # weights are their own quantization: on the grid
            assert layer.weight_quant.state == "static"
            assert torch.equal(layer.weight_quant(layer.weight), layer.weight)
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_gptq_codes_survive_a_model_file(tmp_path):
    m = _mlp(IntFormat(3, narrow=True))
    x = torch.randn(256, 24)
    gptq.apply(m, x)
    m.eval()
    save_checkpoint(m, tmp_path / "m.pt", (1, 24))
    loaded, _ = load_checkpoint(tmp_path / "m.pt")
    assert torch.equal(loaded(x), m(x))


@pytest.mark.parametrize(
    "layer",
    [
        lambda s: hwquant.nn.QuantConv2d(4, 6, 3, padding=1, groups=2, spec=s),
        lambda s: hwquant.nn.QuantConv1d(3, 3, 3, groups=3, spec=s),  # depthwise
        lambda s: hwquant.nn.QuantConvTranspose2d(4, 3, 3, stride=2, spec=s),
    ],
)
def test_grouped_depthwise_and_transposed_convolutions(layer):
    torch.manual_seed(0)
    spec = LayerSpec(input=A8, weight=_spec(IntFormat(3, narrow=True)))
    m = nn.Sequential(layer(spec))
    shape = (32, 3, 12) if isinstance(m[0], nn.Conv1d) else (32, 4, 6, 6)
    report = gptq.apply(m, torch.randn(shape))
    (r,) = report.layers
    assert r.gptq_error <= r.rtn_error * (1 + 1e-6)  # K = 3 (depthwise): little to spread
    assert torch.equal(m[0].weight_quant(m[0].weight), m[0].weight)


def test_a2q_layers_are_skipped_with_a_reason():
    from hwquant.spec import A2Q, A8U

    m = hwquant.quantize(
        nn.Sequential(nn.Linear(8, 4)), Recipe.uniform(A2Q(IntFormat(4), accumulator_bits=12), A8U)
    )
    report = gptq.apply(m, torch.rand(16, 8))
    assert report.layers == [] and "a2q_ptq" in report.skipped["0"]


def test_bad_data_and_config_fail_before_any_work():
    m = _mlp(IntFormat(4))
    before = m[0].weight.clone()
    with pytest.raises(ValueError, match="NaN"):
        gptq.apply(m, torch.full((4, 24), float("nan")))
    with pytest.raises(ValueError, match=r"GPTQConfig\.damp"):
        gptq.GPTQConfig(damp=1.5)
    assert torch.equal(m[0].weight, before)
