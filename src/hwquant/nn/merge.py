"""Quantized merges: add and concatenate.

With ``LayerSpec.shared_input_scale`` (the default) all operands go through one
quantizer, so they share one scale and an integer adder / a plain concatenation
of codes needs no re-scaling.

>>> import torch
>>> from hwquant.spec import A8, LayerSpec
>>> add = QuantAdd(LayerSpec(input=A8))
>>> add(torch.ones(2), torch.ones(2)).tolist()
[2.0, 2.0]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hwquant.nn.kinds import layer_kind
from hwquant.nn.layer import activation_quantizer
from hwquant.spec.layer_spec import LayerSpec

__all__ = ["QuantAdd", "QuantCat"]


class _QuantMerge(nn.Module):
    def __init__(self, spec: LayerSpec, n_inputs: int = 2) -> None:
        super().__init__()
        if not isinstance(spec, LayerSpec):
            raise ValueError(f"{type(self).__name__}.spec must be a LayerSpec, got {spec!r}")
        self.layer_spec = spec
        self.n_inputs = n_inputs
        if spec.shared_input_scale:
            self.input_quant = activation_quantizer(spec.input)
        else:
            self.input_quants = nn.ModuleList(
                activation_quantizer(spec.input) for _ in range(n_inputs)
            )
        self.output_quant = activation_quantizer(spec.output)

    def _quantize_inputs(self, xs: tuple[Tensor, ...] | list[Tensor]) -> list[Tensor]:
        if self.layer_spec.shared_input_scale:
            return [self.input_quant(x) for x in xs]
        if len(xs) != self.n_inputs:
            raise ValueError(
                f"{type(self).__name__} was built for {self.n_inputs} inputs, got {len(xs)}"
            )
        return [q(x) for q, x in zip(self.input_quants, xs, strict=True)]


@layer_kind(role="merge")
class QuantAdd(_QuantMerge):
    """out_quant(in_quant(a) + in_quant(b))."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        qa, qb = self._quantize_inputs((a, b))
        return self.output_quant(qa + qb)


@layer_kind(role="merge")
class QuantCat(_QuantMerge):
    """out_quant(cat([in_quant(x) for x in xs], dim))."""

    def __init__(self, spec: LayerSpec, dim: int = 1, n_inputs: int = 2) -> None:
        super().__init__(spec, n_inputs)
        self.dim = dim

    def forward(self, xs: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
        return self.output_quant(torch.cat(self._quantize_inputs(xs), dim=self.dim))
