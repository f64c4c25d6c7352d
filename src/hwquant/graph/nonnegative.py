"""Interval analysis on a torch.fx graph: which values are provably non-negative
(after ReLU, sigmoid, pooling or reshaping of those, sums and concatenations of
them). ``quantize`` uses it to make a signed activation format unsigned where the
graph proves the input is ≥ 0: a free bit.

>>> import torch
>>> from torch import fx, nn
>>> gm = fx.symbolic_trace(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
>>> sorted(unsigned_input_modules(gm))
['2']
"""

from __future__ import annotations

import dataclasses
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from hwquant.nn import QuantReLU
from hwquant.spec.formats import IntFormat
from hwquant.spec.layer_spec import LayerSpec
from hwquant.spec.quant_spec import QuantSpec

__all__ = ["ADD_FUNCS", "input_unsigned", "nonnegative_nodes", "unsigned_input_modules"]

_NONNEG_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, QuantReLU)
_PASS_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
    nn.Upsample,
)
_NONNEG_FUNCS = {F.relu, torch.relu, F.relu6, torch.sigmoid, F.sigmoid}
_PASS_FUNCS = {
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    torch.flatten,
    F.dropout,
    torch.reshape,
    F.interpolate,
}
_NONNEG_METHODS = {"relu", "sigmoid"}
_PASS_METHODS = {"flatten", "view", "reshape", "contiguous", "permute", "transpose"}
ADD_FUNCS = {operator.add, torch.add}
_RELU_FUNCS = {F.relu, torch.relu}


def nonnegative_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose value is provably ≥ 0 (interval reasoning on a few op kinds)."""
    mods = dict(gm.named_modules())
    nonneg: set[fx.Node] = set()

    def first_in(n: fx.Node) -> bool:
        return bool(n.args) and isinstance(n.args[0], fx.Node) and n.args[0] in nonneg

    for n in gm.graph.nodes:
        ok = False
        if n.op == "call_module":
            m = mods[n.target]
            if isinstance(m, nn.Hardtanh):
                ok = m.min_val >= 0
            else:
                ok = isinstance(m, _NONNEG_MODULES) or (
                    isinstance(m, _PASS_MODULES) and first_in(n)
                )
        elif n.op == "call_function":
            if n.target in _NONNEG_FUNCS:
                ok = True
            elif n.target in _PASS_FUNCS:
                ok = first_in(n)
            elif n.target in ADD_FUNCS or n.target is torch.cat:
                args = n.args[0] if n.target is torch.cat else n.args[:2]
                ok = all(isinstance(a, fx.Node) and a in nonneg for a in args)
        elif n.op == "call_method":
            ok = n.target in _NONNEG_METHODS or (n.target in _PASS_METHODS and first_in(n))
        if ok:
            nonneg.add(n)
    return nonneg


def unsigned(spec: QuantSpec | None) -> QuantSpec | None:
    """A symmetric signed integer spec → the unsigned one of the same width."""
    if spec is None or not isinstance(spec.format, IntFormat) or not spec.format.signed:
        return spec
    if spec.zero_point != "symmetric":
        return spec
    return dataclasses.replace(spec, format=IntFormat(spec.format.bits, signed=False))


def input_unsigned(spec: LayerSpec) -> LayerSpec:
    """``spec`` with its input format made unsigned (for a provably non-negative input)."""
    return dataclasses.replace(spec, input=unsigned(spec.input))


def unsigned_input_modules(gm: fx.GraphModule) -> set[str]:
    """Targets of the call_module nodes whose first input is provably ≥ 0."""
    nonneg = nonnegative_nodes(gm)
    return {
        n.target
        for n in gm.graph.nodes
        if n.op == "call_module"
        and n.args
        and isinstance(n.args[0], fx.Node)
        and n.args[0] in nonneg
    }
