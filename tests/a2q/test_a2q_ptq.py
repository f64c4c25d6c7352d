"""Accumulator-aware PTQ: the constrained GPTQ always meets the budgets, and beats
EP-init + round toward zero on output error."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import hwquant
from hwquant.algorithms import a2q_ptq
from hwquant.algorithms.a2q_ptq import A2QPTQConfig, constrained_gptq
from hwquant.analysis import overflow_audit
from hwquant.nn.a2q import check_bounds
from hwquant.spec import A2Q, A2QPlus, IntFormat, QuantSpec, Recipe, ScaleSpec

A4 = QuantSpec(IntFormat(4), scale=ScaleSpec("percentile", learned=True))


@given(
    st.integers(1, 6),
    st.integers(2, 40),
    st.floats(0.5, 60.0),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_constrained_gptq_meets_budgets(C, K, budget, shared, soft, seed):
    rng = np.random.default_rng(seed)
    W = torch.from_numpy(rng.normal(size=(C, K)))
    X = torch.from_numpy(rng.normal(size=(4 * K, K)))
    H = X.T @ X
    s = W.abs().amax(1) / 7 + 1e-3
    b = float(int(budget))
    Q = constrained_gptq(W, H, s, 7, b, b, shared, soft_threshold=soft)
    assert torch.equal(Q, Q.round()) and Q.abs().max() <= 7
    if shared:
        assert (Q.abs().sum(1) <= b).all()
    else:
        assert (Q.clamp(min=0).sum(1) <= b).all() and ((-Q).clamp(min=0).sum(1) <= b).all()


def test_unconstrained_gptq_is_plain_rounding_on_identity_hessian():
    W = torch.tensor([[0.31, -0.52, 0.07]])
    Q = constrained_gptq(W, torch.eye(3), torch.tensor([0.1]), 7, 1e9, 1e9, True, damp=0.0)
    assert Q.tolist() == [[3.0, -5.0, 1.0]]


def wide_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))


@pytest.mark.parametrize("spec_cls", [A2Q, A2QPlus])
def test_apply_meets_budgets_and_beats_ep(spec_cls):
    x = torch.randn(512, 32)
    errs = {}
    for method in ("ep", "gptq"):
        m = hwquant.quantize(
            wide_mlp(), Recipe.uniform(spec_cls(IntFormat(4, narrow=True), accumulator_bits=10), A4)
        )
        report = a2q_ptq.apply(m, x, A2QPTQConfig(method=method))
        assert report.ok and all(c.ok for c in check_bounds(m).values())
        assert sum(a.overflowing for a in overflow_audit(m)) == 0
        with torch.no_grad():
            ref = wide_mlp()(x)
            errs[method] = float((m.eval()(x) - ref).pow(2).mean() / ref.pow(2).mean())
    assert report.layers[0].method == "gptq" and report.layers[0].rel_error is not None
    assert errs["gptq"] < errs["ep"]


def test_grouped_conv_falls_back_to_ep_and_config_validation():
    net = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2))
    m = hwquant.quantize(
        net, Recipe.uniform(A2Q(IntFormat(4, narrow=True), accumulator_bits=12), A4)
    )
    r = a2q_ptq.apply(m, torch.randn(16, 4, 4, 4))
    assert [x.method for x in r.layers] == ["ep", "gptq"] and "grouped" in r.layers[0].note
    with pytest.raises(ValueError, match="method"):
        A2QPTQConfig(method="adaround")
    with pytest.raises(ValueError, match="calibration data"):
        a2q_ptq.apply(m, [])
