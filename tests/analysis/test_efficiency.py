"""Neural efficiency and aIQ (REFERENCE.md §6)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hwquant.analysis.efficiency import aiq, layer_entropy, neural_efficiency


class _Fixed(nn.Module):
    """Hidden 'layer' whose outputs are given, then a head."""

    def __init__(self, acts: torch.Tensor) -> None:
        super().__init__()
        self.acts = acts
        self.hidden = nn.Identity()
        self.head = nn.Linear(acts.shape[1], 2)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(self.acts[idx.long().flatten()]))


def test_constant_activations_have_zero_efficiency():
    net = _Fixed(torch.full((500, 6), 0.7))
    r = neural_efficiency(net, torch.arange(500.0), layers=["hidden"], metric=0.9)
    assert r.layers[0].entropy_bits == 0.0 and r.efficiency == 0.0 and r.aiq == 0.0


def test_uniform_random_binary_activations_are_near_one():
    g = torch.Generator().manual_seed(0)
    acts = torch.randint(0, 2, (40000, 4), generator=g).float()
    net = _Fixed(acts)
    r = neural_efficiency(net, torch.arange(40000.0).split(4000), layers=["hidden"])
    assert r.layers[0].neurons == 4 and r.samples == 40000
    assert r.efficiency == pytest.approx(1.0, abs=0.01)


def test_entropy_counts_microstates():
    x = torch.tensor([[1.0, 0], [1, 0], [0, 2], [0, 3]])  # two states, equally likely
    assert layer_entropy(x) == 1.0
    assert layer_entropy(torch.tensor([[-1.0], [0.0]])) == 0.0  # not > 0: never fires


def test_geometric_mean_and_aiq():
    assert aiq(1.0, 1.0) == 1.0
    assert aiq(0.5, 0.25, beta=2) == pytest.approx((0.25 * 0.25) ** (1 / 3))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    r = neural_efficiency(net, torch.randn(2000, 4), metric=0.8)
    assert [layer.name for layer in r.layers] == ["0", "2"]
    effs = [layer.efficiency for layer in r.layers]
    assert r.efficiency == pytest.approx(math.sqrt(effs[0] * effs[1]))
    assert r.aiq == pytest.approx(aiq(0.8, r.efficiency))


def test_bad_input():
    with pytest.raises(ValueError, match="no module named 'nope'"):
        neural_efficiency(nn.Sequential(nn.Linear(2, 2)), torch.randn(4, 2), layers=["nope"])
    with pytest.raises(ValueError, match="at least one hidden weight layer"):
        neural_efficiency(nn.Sequential(nn.Linear(2, 2)), torch.randn(4, 2))
    with pytest.raises(ValueError, match="efficiency in"):
        aiq(0.9, 1.5)
