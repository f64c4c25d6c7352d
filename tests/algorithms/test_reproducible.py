"""Same seed, same weights: GPTQ and AdaRound give bit-identical weights (torch.equal)
on two runs in one process, for a linear MLP and a convolution, integer and minifloat."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hwquant
from hwquant.algorithms import adaround, gptq
from hwquant.spec import (
    A8,
    FP4_E2M1,
    IntFormat,
    LayerSpec,
    QuantSpec,
    Recipe,
    ScaleSpec,
    per_channel,
)

ALGOS = {
    "gptq": (gptq.apply, gptq.GPTQConfig()),
    "adaround": (adaround.apply, adaround.AdaRoundConfig(iterations=100)),
    "adaround-rows": (adaround.apply, adaround.AdaRoundConfig(iterations=50, batch_rows=8)),
}


def _model(kind: str, fmt) -> nn.Module:
    torch.manual_seed(0)
    spec = QuantSpec(fmt, per_channel(0), ScaleSpec("max"))
    if kind == "mlp":
        float_model = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 8))
        return hwquant.quantize(float_model, Recipe.uniform(spec, A8))
    return nn.Sequential(
        hwquant.nn.QuantConv2d(4, 8, 3, padding=1, spec=LayerSpec(input=A8, weight=spec))
    )


def _data(kind: str) -> torch.Tensor:
    shape = (256, 24) if kind == "mlp" else (16, 4, 8, 8)
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("algo", sorted(ALGOS))
@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("fmt", [IntFormat(3, narrow=True), FP4_E2M1], ids=["int3", "fp4"])
def test_same_seed_same_weights(algo, kind, fmt):
    apply, config = ALGOS[algo]
    runs = []
    for _ in range(2):
        m = _model(kind, fmt)
        apply(m, _data(kind), config)
        runs.append(m.state_dict())
    a, b = runs
    assert a.keys() == b.keys()
    for k in a:  # weights, biases, scales; non-tensor extra state compared as values
        same = torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
        assert same, k
