"""A2Q layers whose every code truncates to 0 at the default init are initialized by
ep_init instead (hwquant.nn.a2q: A2QWeightQuantizer.revive), with a warning; others
keep the default init and their weights."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import hwquant
from hwquant.nn import check_bounds
from hwquant.nn.a2q import a2q_layers
from hwquant.spec import A2Q, A4U, A2QPlus, IntFormat, Recipe


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)  # torch's default init: uniform, ‖r‖₁ ≈ K/2 · max|r|
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )


def _quantize(float_model: nn.Module, spec) -> nn.Module:
    return hwquant.quantize(float_model, Recipe.uniform(weights=spec, activations=A4U))


def test_dead_layers_are_revived_and_keep_the_budget():
    fm = _mlp()
    spec = A2Q(IntFormat(4, narrow=True), accumulator_bits=10)  # T ≈ 31.9 code units
    with pytest.warns(UserWarning, match="every weight code is 0") as seen:
        qm = _quantize(fm, spec)
    assert len([w for w in seen if "every weight code" in str(w.message)]) == 2
    for path, layer, q in a2q_layers(qm):
        nonzero = int((q.code_rows(layer.weight) != 0).sum())
        assert nonzero > 0, path
        changed = not torch.equal(layer.weight, fm.get_submodule(path).weight)
        assert changed == (path in ("2", "4")), path  # the first layer had live codes
    assert all(c.violations == 0 for c in check_bounds(qm).values())
    x = torch.rand(32, 64)
    qm.train()(x)
    assert bool((qm(x).detach().std(0) > 0).any())  # a signal reaches the output


@pytest.mark.parametrize(
    "spec",
    [
        A2Q(IntFormat(4, narrow=True), accumulator_bits=16),
        A2QPlus(IntFormat(4, narrow=True), accumulator_bits=10),
    ],
)
def test_live_layers_keep_the_default_init(spec, recwarn):
    fm = _mlp()
    qm = _quantize(fm, spec)
    assert not [w for w in recwarn if "every weight code" in str(w.message)]
    for path, layer, _ in a2q_layers(qm):
        assert torch.equal(layer.weight, fm.get_submodule(path).weight)


def test_directly_built_layers_are_revived_once_and_warn_here():
    """A layer built by hand from its random init: revived, the warning pointing at the
    line that built it; quantize() of a float model warns once per layer, not twice."""
    from hwquant.nn import QuantConv2d, QuantLinear
    from hwquant.nn.a2q import DeadLayerWarning
    from hwquant.spec import LayerSpec

    spec = LayerSpec(input=A4U, weight=A2Q(IntFormat(4, narrow=True), accumulator_bits=10))
    torch.manual_seed(0)
    for build in (
        lambda: QuantLinear(128, 16, bias=False, spec=spec),
        lambda: QuantConv2d(32, 8, 3, bias=False, spec=spec),
    ):
        with pytest.warns(DeadLayerWarning) as seen:
            layer = build()
        assert len(seen) == 1 and seen[0].filename == __file__
        q = layer.weight_quant
        assert int((q.code_rows(layer.weight) != 0).sum()) > 0
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            layer.reset_weight_scale()  # ep_init's weights: the codes stay live
        assert not [w for w in seen if issubclass(w.category, DeadLayerWarning)]
    with pytest.warns(DeadLayerWarning) as seen:
        _quantize(_mlp(), spec.weight)
    assert len(seen) == 2 and all(w.filename != __file__ for w in seen)


def test_reset_of_a_dead_layer_warns_at_the_callers_line():
    from hwquant.nn import QuantLinear
    from hwquant.nn.a2q import DeadLayerWarning
    from hwquant.spec import LayerSpec

    spec = LayerSpec(input=A4U, weight=A2Q(IntFormat(4, narrow=True), accumulator_bits=10))
    with pytest.warns(DeadLayerWarning):
        layer = QuantLinear(128, 16, bias=False, spec=spec)
    with torch.no_grad():
        layer.weight.uniform_(-0.1, 0.1)  # a flat random init again: every code 0
    with pytest.warns(DeadLayerWarning) as seen:
        layer.reset_weight_scale()
    assert len(seen) == 1 and seen[0].filename == __file__
