"""AdaRound on any grid: beats round-to-nearest for integer and minifloat weights on an
MLP and a convolution, ends on the grid, is seed-reproducible; the neighbour rule
matches the formats' level sets."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import hwquant
from hwquant.algorithms import adaround
from hwquant.spec import (
    A8,
    FP4_E2M1,
    IntFormat,
    LayerSpec,
    MinifloatFormat,
    QuantSpec,
    Recipe,
    ScaleSpec,
    per_channel,
)

FORMATS = {"int3": IntFormat(3), "fp4": FP4_E2M1, "e2m1-nosub": MinifloatFormat(2, 1)}
CFG = adaround.AdaRoundConfig(iterations=300, batch_rows=256, lr=5e-2)


def _spec(fmt):
    return QuantSpec(fmt, per_channel(0), ScaleSpec("max"))


def _mlp(fmt):
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 8))
    return hwquant.quantize(float_model, Recipe.uniform(_spec(fmt), A8))


@pytest.mark.parametrize("name", ["int3", "fp4"])
def test_mlp_beats_round_to_nearest_on_the_grid_and_reproducible(name):
    x = torch.randn(512, 24, generator=torch.Generator().manual_seed(1))
    runs = []
    for _ in range(2):
        m = _mlp(FORMATS[name])
        report = adaround.apply(m, x, CFG)
        assert [r.name for r in report.layers] == ["0", "2"]
        for r in report.layers:  # the 24-input first layer gains little over nearest
            assert r.adaround_error <= r.rtn_error * 1.01, (name, r)
        assert sum(r.adaround_error for r in report.layers) < sum(
            r.rtn_error for r in report.layers
        )
        assert report.layers[1].adaround_error < 0.95 * report.layers[1].rtn_error
        for layer in (m[0], m[2]):
            assert layer.weight_quant.state == "static"
            assert torch.equal(layer.weight_quant(layer.weight), layer.weight)
        runs.append([layer.weight.clone() for layer in (m[0], m[2])])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


@pytest.mark.parametrize("name", ["int3", "fp4"])
def test_conv_beats_round_to_nearest(name):
    torch.manual_seed(0)
    spec = LayerSpec(input=A8, weight=_spec(FORMATS[name]))
    m = nn.Sequential(hwquant.nn.QuantConv2d(4, 8, 3, padding=1, spec=spec))
    x = torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    report = adaround.apply(m, x, CFG)
    (r,) = report.layers
    assert r.adaround_error < r.rtn_error
    assert torch.equal(m[0].weight_quant(m[0].weight), m[0].weight)


def _check_adjacent(levels, v, lo, up):
    lv = torch.tensor(levels, dtype=torch.float64)
    vc = v.clamp(float(lv[0]), float(lv[-1]))
    assert bool((lo <= vc).all() and (vc <= up).all())
    assert bool(torch.isin(lo, lv).all() and torch.isin(up, lv).all())
    between = ((lv > lo.unsqueeze(-1)) & (lv < up.unsqueeze(-1))).any(-1)
    assert not bool(between.any())


SMALL = [
    IntFormat(3),
    IntFormat(4, narrow=True),
    FP4_E2M1,
    MinifloatFormat(2, 1),
    MinifloatFormat(3, 2),
    MinifloatFormat(3, 2, has_subnormal=False),
    MinifloatFormat(2, 2, bias=0),
]


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(SMALL),
    st.lists(st.floats(-40, 40, allow_nan=False), min_size=1, max_size=20),
)
def test_neighbours_match_levels(fmt, values):
    v = torch.tensor(values, dtype=torch.float64)
    lv = fmt.levels()
    # on-grid values and values exactly between levels too
    v = torch.cat([v, torch.tensor(lv, dtype=torch.float64)])
    lo, up = adaround.grid_neighbours(fmt, v)
    _check_adjacent(lv, v, lo, up)
    lo, up = adaround._rule_neighbours(fmt, v)  # the rule for formats too big to enumerate
    _check_adjacent(lv, v, lo, up)


def test_rectified_sigmoid_inverse_gives_the_fraction():
    h = torch.linspace(0, 1, 11)
    back = adaround.rectified_sigmoid(adaround._inverse_rectified_sigmoid(h))
    torch.testing.assert_close(back, h, atol=1e-5, rtol=0)


def test_bad_config():
    with pytest.raises(ValueError, match=r"AdaRoundConfig\.warmup"):
        adaround.AdaRoundConfig(warmup=1.0)
    with pytest.raises(ValueError, match=r"AdaRoundConfig\.iterations"):
        adaround.AdaRoundConfig(iterations=0)


@pytest.mark.parametrize("beta", [None, 20.0, 2.0, 1.5])
@pytest.mark.parametrize("path", ["exact", "rows"])
def test_written_out_gradient_matches_autograd(beta, path):
    torch.manual_seed(0)
    G, C, K, n = 2, 5, 7, 30
    W, X = torch.randn(G, C, K, dtype=torch.float64), torch.randn(G, n, K, dtype=torch.float64)
    base, step = (W * 2).floor() / 2, torch.full_like(W, 0.5)
    V = adaround._inverse_rectified_sigmoid((W - base) / step) + 0.3 * torch.randn_like(W)
    V[0, 0, :2] = torch.tensor([5.0, -5.0])  # clipped: no gradient
    if path == "exact":
        grad = adaround._exact_gradient(W, X.transpose(1, 2) @ X)
    else:
        grad = adaround._minibatch_gradient(W, X, n, 0)
    g = adaround._VGradient(W, base, step, grad, 0.01)(V, beta).clone()
    Vr = V.clone().requires_grad_(True)
    h = adaround.rectified_sigmoid(Vr)
    D = W - (base + h * step)
    loss = (X @ D.transpose(1, 2)).pow(2).sum() / (X @ W.transpose(1, 2)).pow(2).sum()
    if beta is not None:
        loss = loss + 0.01 * (1 - (2 * h - 1).abs().pow(beta)).mean()
    loss.backward()
    torch.testing.assert_close(g, Vr.grad, rtol=1e-9, atol=1e-15)


def test_minibatches_of_rows_beat_round_to_nearest_and_reproduce():
    # K = 32 > 2 · 8 rows per step: the minibatch path with a seeded row order
    x = torch.randn(256, 24, generator=torch.Generator().manual_seed(1))
    cfg = adaround.AdaRoundConfig(iterations=300, batch_rows=8, lr=5e-2)
    runs = []
    for _ in range(2):
        m = _mlp(FORMATS["int3"])
        report = adaround.apply(m, x, cfg)
        assert report.layers[1].adaround_error < report.layers[1].rtn_error
        runs.append([layer.weight.clone() for layer in (m[0], m[2])])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_config_errors_name_field_value_and_range():
    with pytest.raises(
        ValueError, match=r"AdaRoundConfig\.lr must be a number in \(0, ∞\), got -1"
    ):
        adaround.AdaRoundConfig(lr=-1)
    with pytest.raises(ValueError, match=r"AdaRoundConfig\.batch_rows must be an int in \[1, ∞\)"):
        adaround.AdaRoundConfig(batch_rows=2.5)
    with pytest.raises(ValueError, match=r"AdaRoundConfig\.beta"):
        adaround.AdaRoundConfig(beta=(20.0, 0.0))
