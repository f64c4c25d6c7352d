"""Cross-layer weight equalization (Nagel et al., ICCV 2019, "Data-Free Quantization").

For consecutive weight layers W1 → f → W2 with f positive-homogeneous
(identity, ReLU, LeakyReLU: f(x/s) = f(x)/s for s > 0), output channel i of
layer 1 is scaled by 1/s_i (weights and bias) and input channel i of layer 2
by s_i, with

    r1_i = max|W1[i, :]|,  r2_i = max|W2[:, i]|,  s_i = sqrt(r1_i · r2_i) / r2_i

so both ranges become sqrt(r1_i · r2_i). The model function is unchanged.
Supports Linear and Conv1d/Conv2d with groups == 1 on both sides, and a
depthwise layer 2 (groups == channels, one input channel per group); other
pairs are skipped with the reason recorded in ``Report.skipped``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> x = torch.randn(5, 4)
    >>> ref = m(x)
    >>> report = apply(m)
    >>> report.equalized, bool(torch.allclose(m(x), ref, atol=1e-5))
    (['0->2'], True)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from hwquant.algorithms.common import check_range, register, traced
from hwquant.nn.kinds import kind_of

__all__ = ["EqualizeConfig", "EqualizeReport", "apply"]

_ACTS = (nn.ReLU, nn.LeakyReLU, nn.Identity)


def _weighted(m: nn.Module) -> bool:
    """Linear and Conv1d / Conv2d layers, float or quantized (their layer kind)."""
    kind = kind_of(m)
    return (
        kind is not None
        and kind.accumulates
        and not kind.transposed
        and isinstance(getattr(m, "weight", None), torch.Tensor)
        and m.weight.dim() <= 4
    )


@dataclass(frozen=True)
class EqualizeConfig:
    """``iterations``: passes over the chain; ``tolerance``: stop when no scale moves
    by more than this (|s − 1|)."""

    iterations: int = 5
    tolerance: float = 1e-4

    def __post_init__(self) -> None:
        check_range(self, "iterations", 1, integer=True)
        check_range(self, "tolerance", 0)


@dataclass
class EqualizeReport:
    equalized: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    # per pair: max/min of per-channel ranges of layer 1's output channels, before/after
    range_ratio_before: dict[str, float] = field(default_factory=dict)
    range_ratio_after: dict[str, float] = field(default_factory=dict)
    iterations: int = 0

    def to_dict(self) -> dict:
        return {
            "equalized": self.equalized,
            "skipped": self.skipped,
            "range_ratio_before": self.range_ratio_before,
            "range_ratio_after": self.range_ratio_after,
            "iterations": self.iterations,
        }


def _out_ranges(m: nn.Module) -> torch.Tensor:
    return m.weight.detach().abs().flatten(1).amax(1)


def _in_ranges(m: nn.Module) -> torch.Tensor:
    w = m.weight.detach().abs()
    if getattr(m, "groups", 1) > 1:  # depthwise: input channel i is weight row i
        return w.flatten(1).amax(1)
    return w.transpose(0, 1).flatten(1).amax(1)


def _why_not(a: nn.Module, b: nn.Module) -> str | None:
    if getattr(a, "groups", 1) != 1:
        return "grouped/depthwise first layer is not supported"
    ga = a.weight.shape[0]
    gb = getattr(b, "groups", 1)
    if gb == 1:
        cin = b.weight.shape[1]
        if cin != ga:
            return f"channel mismatch ({ga} outputs -> {cin} inputs, e.g. a flatten)"
        if a.weight.dim() != b.weight.dim():
            return "layer types differ (linear <-> conv); channel mapping not checked"
        return None
    if gb == ga and b.weight.shape[1] == 1:
        return None
    return f"grouped second layer (groups={gb}) is not supported"


def _pairs_fx(model: nn.Module) -> list[tuple[str, str]] | None:
    found = traced(model)
    if found is None:
        return None
    gm, mods = found
    pairs = []
    for n in gm.graph.nodes:
        if n.op != "call_module" or not _weighted(mods[n.target]) or len(n.users) != 1:
            continue
        nxt = next(iter(n.users))
        while (
            nxt.op == "call_module" and isinstance(mods[nxt.target], _ACTS) and len(nxt.users) == 1
        ):
            nxt = next(iter(nxt.users))
        if nxt.op == "call_module" and _weighted(mods[nxt.target]):
            pairs.append((n.target, nxt.target))
    return pairs


def _pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Sequential):
            continue
        kids = list(m.named_children())
        prefix = f"{name}." if name else ""
        for i, (a, la) in enumerate(kids):
            if not _weighted(la):
                continue
            for b, lb in kids[i + 1 :]:
                if _weighted(lb):
                    pairs.append((prefix + a, prefix + b))
                    break
                if not isinstance(lb, _ACTS):
                    break
    return pairs


def _ratio(r: torch.Tensor) -> float:
    return float(r.max() / r.clamp_min(1e-12).min())


@torch.no_grad()
def _scale_pair(a: nn.Module, b: nn.Module) -> float:
    r1, r2 = _out_ranges(a), _in_ranges(b)
    ok = (r1 > 0) & (r2 > 0)
    s = torch.where(ok, torch.sqrt(r1 * r2) / r2.clamp_min(1e-30), torch.ones_like(r1))
    a.weight.div_(s.reshape([-1] + [1] * (a.weight.dim() - 1)))
    if a.bias is not None:
        a.bias.div_(s)
    if getattr(b, "groups", 1) > 1:
        b.weight.mul_(s.reshape([-1] + [1] * (b.weight.dim() - 1)))
    else:
        b.weight.mul_(s.reshape([1, -1] + [1] * (b.weight.dim() - 2)))
    for m in (a, b):
        if hasattr(m, "reset_weight_scale"):
            m.reset_weight_scale()
    return float((s - 1).abs().max()) if s.numel() else 0.0


@register("equalize", EqualizeConfig, needs_data=False)
def apply(model: nn.Module, data=None, config: EqualizeConfig | None = None) -> EqualizeReport:
    """Equalize every (weight layer → positive-homogeneous activation → weight layer)
    pair in place. ``data`` is unused."""
    config = config or EqualizeConfig()
    pairs = _pairs_fx(model)
    if pairs is None:
        pairs = _pairs_sequential(model)
    report = EqualizeReport()
    good = []
    for an, bn in pairs:
        key = f"{an}->{bn}"
        why = _why_not(model.get_submodule(an), model.get_submodule(bn))
        if why:
            report.skipped[key] = why
        else:
            good.append((key, model.get_submodule(an), model.get_submodule(bn)))
            report.range_ratio_before[key] = _ratio(_out_ranges(good[-1][1]))
    for it in range(config.iterations):
        report.iterations = it + 1
        moved = max((_scale_pair(a, b) for _, a, b in good), default=0.0)
        if moved <= config.tolerance:
            break
    for key, a, _ in good:
        report.equalized.append(key)
        report.range_ratio_after[key] = _ratio(_out_ranges(a))
    return report
