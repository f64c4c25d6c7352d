"""Neural efficiency and aIQ (Hawks et al., "Ps and Qs", 2021; REFERENCE.md §6).

Each layer's activations are binarized (a neuron *fires* when its output is > 0); a
sample's binary vector is one microstate of the layer. With p_s the frequency of
microstate s over the samples, the layer's entropy is H_ℓ = −Σ_s p_s·log2 p_s (bits)
and its efficiency η_ℓ = H_ℓ / N_ℓ (N_ℓ neurons: 1 when every one of the 2^N states
is equally likely, 0 when the layer always shows the same state). The network's
neural efficiency η is the geometric mean of the η_ℓ, and

    aIQ = (metric^β · η)^(1/(β+1)),  β = 2 by default (metric: e.g. accuracy).

H_ℓ ≤ log2(samples): a layer with many neurons needs many samples before η_ℓ means
what it says (Hawks et al. use the whole test set).

>>> import torch
>>> layer_entropy(torch.zeros(100, 8))
0.0
>>> round(layer_entropy(torch.tensor([[1.0, 0.0], [0.0, 1.0]])), 6)
1.0
>>> round(aiq(0.81, 1.0), 4)
0.8689
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hwquant.algorithms.common import batches, eval_mode
from hwquant.nn.kinds import kind_of

__all__ = ["EfficiencyReport", "LayerEfficiency", "aiq", "layer_entropy", "neural_efficiency"]


def layer_entropy(activations: Tensor) -> float:
    """Microstate entropy (bits) of binarized activations [samples, ...]: each sample's
    pattern of (activation > 0) is one state; H = −Σ p·log2 p over the states seen."""
    if activations.dim() < 1 or activations.shape[0] == 0:
        raise ValueError("layer_entropy needs activations with at least one sample")
    states = (activations.reshape(activations.shape[0], -1) > 0).to(torch.uint8)
    _, counts = torch.unique(states, dim=0, return_counts=True)
    p = counts.double() / states.shape[0]
    return float(-(p * torch.log2(p)).sum()) + 0.0  # + 0.0: no −0.0


def aiq(metric: float, efficiency: float, beta: float = 2.0) -> float:
    """aIQ = (metric^β · η)^(1/(β+1)) (REFERENCE.md §6)."""
    if not 0 <= efficiency <= 1 + 1e-9 or metric < 0 or beta < 0:
        raise ValueError(
            f"aiq needs metric ≥ 0, efficiency in [0, 1], beta ≥ 0; "
            f"got {metric!r}, {efficiency!r}, {beta!r}"
        )
    return (metric**beta * efficiency) ** (1.0 / (beta + 1.0))


@dataclass
class LayerEfficiency:
    name: str
    neurons: int
    entropy_bits: float
    efficiency: float


@dataclass
class EfficiencyReport:
    """Per-layer entropy and efficiency, the geometric mean η, and aIQ when a metric
    was given."""

    layers: list[LayerEfficiency] = field(default_factory=list)
    efficiency: float = 0.0
    samples: int = 0
    metric: float | None = None
    aiq: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _default_layers(model: nn.Module) -> list[str]:
    """Every weight layer that accumulates except the last one (the logits)."""
    names = [n for n, m in model.named_modules() if (k := kind_of(m)) is not None and k.accumulates]
    if len(names) < 2:
        raise ValueError("neural_efficiency needs at least one hidden weight layer; name layers=")
    return names[:-1]


def neural_efficiency(
    model: nn.Module,
    data: Any,
    layers: Sequence[str] | None = None,
    *,
    metric: float | None = None,
    beta: float = 2.0,
) -> EfficiencyReport:
    """Neural efficiency of ``model`` over ``data`` (a tensor or batches ``x`` /
    ``(x, y)``), from the outputs of ``layers`` (module names; default: the hidden
    weight layers, whose output > 0 is where the following ReLU fires). With
    ``metric`` (e.g. test accuracy) the report also holds aIQ.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> r = neural_efficiency(net, torch.randn(256, 4), metric=0.9)
    >>> [l.name for l in r.layers], 0 < r.efficiency <= 1, r.aiq is not None
    (['0'], True, True)
    """
    names = list(layers) if layers is not None else _default_layers(model)
    modules = dict(model.named_modules())
    for n in names:
        if n not in modules:
            raise ValueError(f"neural_efficiency: no module named {n!r}")
    outs: dict[str, list[Tensor]] = {n: [] for n in names}
    hooks = [
        modules[n].register_forward_hook(lambda m, a, o, n=n: outs[n].append(o.detach() > 0))
        for n in names
    ]
    try:
        with eval_mode(model), torch.no_grad():
            for x in batches(data, what="efficiency data"):
                model(x)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for n in names:
        acts = torch.cat(outs[n]).float()
        neurons = acts[0].numel()
        h = layer_entropy(acts)
        rows.append(LayerEfficiency(n, neurons, h, h / neurons))
    effs = [r.efficiency for r in rows]
    eta = 0.0 if min(effs) <= 0 else math.exp(sum(math.log(e) for e in effs) / len(effs))
    report = EfficiencyReport(rows, eta, samples=sum(len(o) for o in outs[names[0]]))
    if metric is not None:
        report.metric = metric
        report.aiq = aiq(metric, min(eta, 1.0), beta)
    return report
