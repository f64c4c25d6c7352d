"""SmoothQuant (Xiao et al., ICML 2023): migrate activation outliers into the weights.

For a linear layer y = X Wᵀ + b and calibration inputs X, per input channel j:

    s_j = max|X_j|^α / max|W[:, j]|^(1−α),   X' = X / s,   W'[:, j] = W[:, j] · s_j

so X' W'ᵀ = X Wᵀ (the float function is unchanged). 1/s is folded into the
preceding ``nn.Linear`` / ``nn.LayerNorm`` when it sits right before the layer in
an ``nn.Sequential`` (and so feeds nothing else); otherwise the layer is replaced
by ``nn.Sequential(ChannelScale(1/s), layer)`` so a quantized layer's
``input_quant`` sees X/s.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> m = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    >>> x = torch.randn(16, 4)
    >>> ref = m(x)
    >>> report = apply(m, x)
    >>> sorted(report.layers), bool(torch.allclose(m(x), ref, atol=1e-5))
    (['0', '1'], True)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch import nn

from hwquant.algorithms.common import batches, captured_inputs, eval_mode, register

__all__ = ["ChannelScale", "SmoothQuantConfig", "SmoothQuantReport", "apply"]


class ChannelScale(nn.Module):
    """Multiply the last dimension by a fixed per-channel factor."""

    def __init__(self, factor: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("factor", factor.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


@dataclass(frozen=True)
class SmoothQuantConfig:
    """``alpha`` in [0, 1]: migration strength; ``max_batches``: calibration batches used."""

    alpha: float = 0.5
    max_batches: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.alpha, int | float) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or None, got {self.max_batches!r}")


@dataclass
class SmoothQuantReport:
    layers: list[str] = field(default_factory=list)
    folded_into: dict[str, str] = field(default_factory=dict)  # layer -> predecessor
    # activation range ratio: max channel max / median channel max, before / after
    ratio_before: dict[str, float] = field(default_factory=dict)
    ratio_after: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "layers": self.layers,
            "folded_into": self.folded_into,
            "ratio_before": self.ratio_before,
            "ratio_after": self.ratio_after,
        }


def _ratio(r: torch.Tensor) -> float:
    return float(r.max() / r.median().clamp_min(1e-12))


def _predecessors(model: nn.Module) -> dict[str, str]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Sequential):
            prefix = f"{name}." if name else ""
            kids = [k for k, _ in m.named_children()]
            for a, b in itertools.pairwise(kids):
                out[prefix + b] = prefix + a
    return out


@torch.no_grad()
def _fold(prev: nn.Module, inv_s: torch.Tensor) -> bool:
    if isinstance(prev, nn.Linear) and prev.out_features == inv_s.numel():
        prev.weight.mul_(inv_s[:, None])
        if prev.bias is not None:
            prev.bias.mul_(inv_s)
    elif (
        isinstance(prev, nn.LayerNorm)
        and prev.elementwise_affine
        and prev.weight.shape == inv_s.shape
    ):
        prev.weight.mul_(inv_s)
        if prev.bias is not None:
            prev.bias.mul_(inv_s)
    else:
        return False
    if hasattr(prev, "reset_weight_scale"):
        prev.reset_weight_scale()
    return True


@register("smoothquant", SmoothQuantConfig, needs_data=True)
def apply(model: nn.Module, data, config: SmoothQuantConfig | None = None) -> SmoothQuantReport:
    """Smooth every ``nn.Linear`` (float or quantized) in place from calibration ``data``."""
    config = config or SmoothQuantConfig()
    xs = batches(data, config.max_batches)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    amax: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def on_input(_mod, x):
            r = x.detach().abs().reshape(-1, x.shape[-1]).amax(0)
            amax[name] = r if name not in amax else torch.maximum(amax[name], r)

        return on_input

    hooks = [captured_inputs(model.get_submodule(n), hook_for(n)) for n in names]
    for h in hooks:
        h.__enter__()
    try:
        with eval_mode(model), torch.no_grad():
            for x in xs:
                model(x)
    finally:
        for h in hooks:
            h.__exit__(None, None, None)
    report = SmoothQuantReport()
    preds = _predecessors(model)
    a = float(config.alpha)
    for name in names:
        if name not in amax:
            continue
        layer = model.get_submodule(name)
        xr = amax[name].clamp_min(1e-8)
        wr = layer.weight.detach().abs().amax(0).clamp_min(1e-8)
        s = (xr.pow(a) / wr.pow(1 - a)).clamp_min(1e-5)
        with torch.no_grad():
            layer.weight.mul_(s[None, :])
        if hasattr(layer, "reset_weight_scale"):
            layer.reset_weight_scale()
        prev_name = preds.get(name)
        prev = model.get_submodule(prev_name) if prev_name is not None else None
        if isinstance(prev, nn.Sequential) and isinstance(prev[0], ChannelScale):
            prev = prev[-1]  # a predecessor this pass already wrapped
        if prev is not None and _fold(prev, 1 / s):
            report.folded_into[name] = prev_name
        else:
            parent, _, leaf = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, leaf, nn.Sequential(ChannelScale(1 / s), layer))
        report.layers.append(name)
        report.ratio_before[name] = _ratio(xr)
        report.ratio_after[name] = _ratio(xr / s)
    return report
