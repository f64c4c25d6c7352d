"""Fold BatchNorm into the preceding convolution / linear layer.

For y = BN(W x + b) with running statistics μ, σ² and affine γ, β:

    W' = W · γ/√(σ² + ε)   (per output channel)
    b' = (b − μ) · γ/√(σ² + ε) + β

The BatchNorm is replaced by ``nn.Identity``. Works on float layers and on
hwquant's quantized layers (learned weight scales are re-derived from the
folded weights). Pairs are found in the torch.fx graph when the model traces
(a conv/linear whose only user is a BatchNorm), else in ``nn.Sequential``
containers (adjacent modules).

Example:
    >>> import torch
    >>> from torch import nn
    >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).eval()
    >>> x = torch.randn(2, 1, 5, 5)
    >>> ref = m(x)
    >>> report = apply(m)
    >>> report.folded, bool(torch.allclose(m(x), ref, atol=1e-5))
    (['0+1'], True)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from hwquant.algorithms.common import register, traced
from hwquant.nn.kinds import is_batch_norm, kind_of

__all__ = ["FoldBNConfig", "FoldBNReport", "apply", "fold_pair"]


def foldable(module: nn.Module) -> bool:
    """A layer BatchNorm folds into: one that accumulates dot products with a weight
    per output channel (linear, convolutions, transposed convolutions; float or
    quantized)."""
    kind = kind_of(module)
    return kind is not None and kind.accumulates and kind.has_weight


@dataclass(frozen=True)
class FoldBNConfig:
    """No options yet; kept so every algorithm has the same signature."""


@dataclass
class FoldBNReport:
    folded: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"folded": self.folded}


@torch.no_grad()
def fold_pair(layer: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn``'s statistics into ``layer``'s weight and bias, in place."""
    if not foldable(layer) or not is_batch_norm(bn):
        raise ValueError(f"cannot fold BatchNorm into {type(layer).__name__}")
    if bn.running_mean is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    k = (
        bn.weight / torch.sqrt(bn.running_var + bn.eps)
        if bn.affine
        else torch.rsqrt(bn.running_var + bn.eps)
    )
    beta = bn.bias if bn.affine else torch.zeros_like(k)
    w = layer.weight
    kind = kind_of(layer)
    if kind.transposed and layer.groups != 1:
        raise ValueError("folding into grouped transposed convolutions is not supported")
    shape = [1] * w.dim()
    shape[kind.out_axis] = -1
    w.mul_(k.reshape(shape))
    b = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (b - bn.running_mean) * k + beta
    quantized = kind.quant_type is not None and isinstance(layer, kind.quant_type)
    if layer.bias is None and quantized:
        layer.add_bias(new_bias)  # quantized as its spec says (e.g. on the accumulator scale)
    elif layer.bias is None:
        layer.bias = nn.Parameter(new_bias)
    else:
        layer.bias.copy_(new_bias)
    if quantized:
        layer.reset_weight_scale()


def _pairs_fx(model: nn.Module) -> list[tuple[str, str]] | None:
    found = traced(model)
    if found is None:
        return None
    gm, mods = found
    pairs = []
    for n in gm.graph.nodes:
        if n.op != "call_module" or not is_batch_norm(mods[n.target]):
            continue
        src = n.args[0]
        if (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and foldable(mods[src.target])
            and len(src.users) == 1
        ):
            pairs.append((src.target, n.target))
    return pairs


def _pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Sequential):
            kids = list(m.named_children())
            for (a, la), (b, lb) in itertools.pairwise(kids):
                if foldable(la) and is_batch_norm(lb):
                    prefix = f"{name}." if name else ""
                    pairs.append((prefix + a, prefix + b))
    return pairs


@register("fold_bn", FoldBNConfig, needs_data=False)
def apply(model: nn.Module, data=None, config: FoldBNConfig | None = None) -> FoldBNReport:
    """Fold every (conv/linear → BatchNorm) pair into the layer (in place; running statistics).

    The model should be in eval mode semantics: the running statistics are used.
    ``data`` is unused (the signature is shared by all algorithms)."""
    pairs = _pairs_fx(model)
    if pairs is None:
        pairs = _pairs_sequential(model)
    report = FoldBNReport()
    for layer_name, bn_name in pairs:
        fold_pair(model.get_submodule(layer_name), model.get_submodule(bn_name))
        parent, _, leaf = bn_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
        report.folded.append(f"{layer_name}+{bn_name}")
    _note_in_quantize_report(model, pairs)
    if pairs:  # a model file replays this structural change (hwquant.checkpoint)
        model.hwquant_transforms = [*getattr(model, "hwquant_transforms", []), "fold_bn"]
    return report


def _note_in_quantize_report(model: nn.Module, pairs: list[tuple[str, str]]) -> None:
    """Keep ``model.hwquant_report`` (from ``hwquant.quantize``) truthful."""
    qreport = getattr(model, "hwquant_report", None)
    if qreport is None:
        return
    into = {bn: layer for layer, bn in pairs}
    for entry in qreport.entries:
        if entry.name in into:
            entry.detail = f"folded into {into[entry.name]}"
