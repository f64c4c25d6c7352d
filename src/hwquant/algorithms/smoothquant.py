"""SmoothQuant (Xiao et al., ICML 2023): migrate activation outliers into the weights.

For linear layers y = X Wᵀ + b that read the same input X (e.g. q, k and v after
one LayerNorm), with calibration inputs X, per input channel j:

    s_j = max|X_j|^α / max_layers max|W[:, j]|^(1−α),   X' = X / s,   W'[:, j] = W[:, j] · s_j

so X' W'ᵀ = X Wᵀ (the float function is unchanged). The division by s is folded
into the module that produces X, so no module is added and module paths (hence
model files) stay as they were:

- ``nn.LayerNorm`` (affine, over the last dimension): γ' = γ / s, β' = β / s;
- ``nn.Linear`` whose output feeds only these layers: rows of W and b divided by s.

A layer whose input has no such producer (it comes after GELU, a matmul, the model
input, or the producer also feeds something else) is left alone with a
:class:`SmoothQuantWarning` naming it, and the reason in ``Report.skipped``. The
producers are found by tracing the model with torch.fx (hwquant's layers, Linear
and LayerNorm kept as leaves); a model that does not trace falls back to
``nn.Sequential`` neighbours. On a quantized model the activation quantizers are
re-calibrated on the same data afterwards (their inputs changed), unless
``calibrate=False``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> m = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 8), nn.Linear(8, 2))
    >>> x = torch.randn(16, 4)
    >>> ref = m(x)
    >>> report = apply(m, x)
    >>> report.folded_into, bool(torch.allclose(m(x), ref, atol=1e-5))
    ({'1': '0', '2': '1'}, True)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from hwquant.algorithms.common import (
    batches,
    calibrate_activations,
    captured_inputs,
    eval_mode,
    layer_tracer,
    register,
)
from hwquant.nn import Quantizer
from hwquant.nn.kinds import kind_of

__all__ = ["SmoothQuantConfig", "SmoothQuantReport", "SmoothQuantWarning", "apply"]


class SmoothQuantWarning(UserWarning):
    """A linear layer could not be smoothed (no foldable producer of its input)."""


@dataclass(frozen=True)
class SmoothQuantConfig:
    """``alpha`` in [0, 1]: migration strength; ``max_batches``: calibration batches
    used; ``calibrate``: re-calibrate activation quantizers after smoothing (a
    quantized model's input scales were set for the unsmoothed activations)."""

    alpha: float = 0.5
    max_batches: int | None = None
    calibrate: bool = True

    def __post_init__(self) -> None:
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, int | float)
            or not 0.0 <= self.alpha <= 1.0
        ):
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or None, got {self.max_batches!r}")
        if not isinstance(self.calibrate, bool):
            raise ValueError(f"calibrate must be a bool, got {self.calibrate!r}")


@dataclass
class SmoothQuantReport:
    """``layers``: smoothed layers; ``folded_into``: layer → module that took 1/s;
    ``skipped``: layer → why it was left alone; ``ratio_before`` / ``ratio_after``:
    activation range ratio (max channel max / median channel max) per layer."""

    layers: list[str] = field(default_factory=list)
    folded_into: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    ratio_before: dict[str, float] = field(default_factory=dict)
    ratio_after: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "folded_into": self.folded_into,
            "skipped": self.skipped,
            "ratio_before": self.ratio_before,
            "ratio_after": self.ratio_after,
        }


@dataclass
class _Group:
    """Linear layers reading one tensor, and the module producing it (or why none folds)."""

    layers: list[str]
    producer: str | None = None
    why_not: str | None = None


def _ratio(r: Tensor) -> float:
    return float(r.max() / r.median().clamp_min(1e-12))


# ---------------------------------------------------------------- who produces each input
def _is_linear(m: nn.Module) -> bool:
    """A linear layer, float or quantized (its layer kind: a dot product over the last
    dimension with a [out, in] weight)."""
    kind = kind_of(m)
    return (
        kind is not None
        and kind.accumulates
        and not kind.transposed
        and isinstance(getattr(m, "weight", None), Tensor)
        and m.weight.dim() == 2
    )


def _is_layer_norm(m: nn.Module) -> bool:
    return isinstance(m, nn.LayerNorm)  # no quantized LayerNorm (layer kind) exists yet


def _why_not_foldable(producer: nn.Module, channels: int) -> str | None:
    if _is_layer_norm(producer):
        if not producer.elementwise_affine:
            return "LayerNorm without elementwise affine"
        if tuple(producer.weight.shape) != (channels,):
            return f"LayerNorm over {tuple(producer.weight.shape)}, not the last dim only"
        return None
    if _is_linear(producer):
        if producer.weight.shape[0] != channels:
            return f"Linear with {producer.weight.shape[0]} outputs feeding {channels} inputs"
        if isinstance(getattr(producer, "output_quant", None), Quantizer):
            return "Linear with an output quantizer"
        return None
    return f"{type(producer).__name__} (not a LayerNorm / Linear)"


def _groups_traced(model: nn.Module, names: list[str]) -> list[_Group] | None:
    try:
        graph = layer_tracer().trace(model)
    except Exception:
        return None
    mods = dict(model.named_modules())
    calls: dict[str, list[fx.Node]] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls.setdefault(n.target, []).append(n)
    by_input: dict[fx.Node, _Group] = {}
    groups: list[_Group] = []
    for name in names:
        nodes = calls.get(name, [])
        if len(nodes) != 1 or not nodes[0].args or not isinstance(nodes[0].args[0], fx.Node):
            groups.append(_Group([name], why_not=f"called {len(nodes)} times in the graph"))
            continue
        src = nodes[0].args[0]
        if src not in by_input:
            by_input[src] = _Group([])
            groups.append(by_input[src])
        by_input[src].layers.append(name)
    for src, g in by_input.items():
        g.producer, g.why_not = _producer(src, g.layers, mods, calls)
    return groups


def _producer(src: fx.Node, layers: list[str], mods, calls) -> tuple[str | None, str | None]:
    """(producer path, None) when 1/s folds into the module producing ``src``, else
    (None, why)."""
    if src.op != "call_module":
        what = "the model input" if src.op == "placeholder" else f"{src.op} {src.target}"
        return None, f"its input comes from {what}, not a LayerNorm / Linear"
    prod = str(src.target)
    if len(calls[prod]) != 1:
        return None, f"{prod!r} is called {len(calls[prod])} times"
    others = [u for u in src.users if not (u.op == "call_module" and u.target in layers)]
    if others:
        return None, f"the output of {prod!r} also feeds {others[0].name!r}"
    channels = mods[layers[0]].weight.shape[1]
    why = _why_not_foldable(mods[prod], channels)
    return (prod, None) if why is None else (None, f"its input comes from {prod!r}: {why}")


def _groups_sequential(model: nn.Module, names: list[str]) -> list[_Group]:
    """Without a trace: a layer's producer is its previous sibling in an nn.Sequential."""
    prev: dict[str, str] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Sequential):
            prefix = f"{name}." if name else ""
            kids = [prefix + k for k, _ in m.named_children()]
            prev.update(zip(kids[1:], kids[:-1], strict=True))
    groups = []
    for name in names:
        p = prev.get(name)
        if p is None:
            groups.append(_Group([name], why_not="no nn.Sequential predecessor (model not traced)"))
            continue
        why = _why_not_foldable(model.get_submodule(p), model.get_submodule(name).weight.shape[1])
        groups.append(_Group([name], p if why is None else None, why and f"{p!r}: {why}"))
    return groups


# ---------------------------------------------------------------- statistics and folding
def _input_ranges(model: nn.Module, names: list[str], xs: list[Tensor]) -> dict[str, Tensor]:
    """max |x_j| over the calibration batches of every layer's input, per channel."""
    amax: dict[str, Tensor] = {}

    def hook_for(name: str):
        def on_input(_mod: nn.Module, x: Tensor) -> None:
            r = x.detach().abs().reshape(-1, x.shape[-1]).amax(0)
            amax[name] = r if name not in amax else torch.maximum(amax[name], r)

        return on_input

    with ExitStack() as stack, eval_mode(model), torch.no_grad():
        for n in names:
            stack.enter_context(captured_inputs(model.get_submodule(n), hook_for(n)))
        for x in xs:
            model(x)
    return amax


@torch.no_grad()
def _fold(producer: nn.Module, layers: list[nn.Module], s: Tensor) -> None:
    """Producer's output channels / s, the layers' input columns · s."""
    if _is_layer_norm(producer):
        producer.weight.div_(s)
        if producer.bias is not None:
            producer.bias.div_(s)
    else:
        producer.weight.div_(s[:, None])
        if producer.bias is not None:
            producer.bias.div_(s)
    for m in layers:
        m.weight.mul_(s[None, :])
    for m in (producer, *layers):  # quantized layers re-derive learned weight scales
        if hasattr(m, "reset_weight_scale"):
            m.reset_weight_scale()


def _linear_names(model: nn.Module) -> Iterator[str]:
    for n, m in model.named_modules():
        if _is_linear(m):
            yield n


@register("smoothquant", SmoothQuantConfig, needs_data=True)
def apply(model: nn.Module, data, config: SmoothQuantConfig | None = None) -> SmoothQuantReport:
    """Smooth every ``nn.Linear`` (float or quantized) whose input producer can take 1/s, in place."""
    config = config or SmoothQuantConfig()
    xs = batches(data, config.max_batches)
    names = list(_linear_names(model))
    groups = _groups_traced(model, names)
    if groups is None:
        groups = _groups_sequential(model, names)
    amax = _input_ranges(model, names, xs)
    report = SmoothQuantReport()
    a = float(config.alpha)
    for g in groups:
        seen = [n for n in g.layers if n in amax]
        if g.producer is None or not seen:
            why = g.why_not or "never called on the calibration data"
            for n in g.layers:
                report.skipped[n] = why
                warnings.warn(f"smoothquant: {n} not smoothed: {why}", SmoothQuantWarning, 2)
            continue
        layers = [model.get_submodule(n) for n in g.layers]
        xr = torch.stack([amax[n] for n in seen]).amax(0).clamp_min(1e-8)
        wr = torch.stack([m.weight.detach().abs().amax(0) for m in layers]).amax(0)
        s = (xr.pow(a) / wr.clamp_min(1e-8).pow(1 - a)).clamp_min(1e-5)
        _fold(model.get_submodule(g.producer), layers, s)
        for n in g.layers:
            report.layers.append(n)
            report.folded_into[n] = g.producer
            report.ratio_before[n] = _ratio(xr)
            report.ratio_after[n] = _ratio(xr / s)
    order = {n: i for i, n in enumerate(names)}
    report.layers.sort(key=order.__getitem__)
    if config.calibrate and report.layers:
        with eval_mode(model):
            calibrate_activations(model, xs)
    return report
