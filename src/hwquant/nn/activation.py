"""Activation layers with input / output quantizers, and a plain QuantAct.

>>> import torch
>>> from hwquant.spec import A4U, LayerSpec
>>> act = QuantReLU(spec=LayerSpec(output=A4U))
>>> len(set(act(torch.randn(1000)).tolist())) <= 16
True
"""

from __future__ import annotations

from torch import nn

from hwquant.nn.kinds import layer_kind
from hwquant.nn.layer import QuantLayer
from hwquant.nn.quantizer import Quantizer
from hwquant.spec.layer_spec import LayerSpec
from hwquant.spec.quant_spec import QuantSpec

__all__ = ["QuantAct", "QuantHardtanh", "QuantReLU", "QuantReLU6", "QuantSigmoid", "QuantTanh"]


class QuantAct(Quantizer):
    """A stand-alone activation quantizer (identity function + quantization)."""

    def __init__(self, spec: QuantSpec, shape=None, name: str = "") -> None:
        super().__init__(spec, shape, name=name)


class _QuantActivation(QuantLayer):
    def __init__(self, *args, spec: LayerSpec, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._setup_io(spec)

    @classmethod
    def from_float(cls, module: nn.Module, spec: LayerSpec) -> _QuantActivation:
        return cls(**cls.float_kwargs(module), spec=spec)

    @staticmethod
    def float_kwargs(module: nn.Module) -> dict:
        return {}


@layer_kind(role="activation")
class QuantReLU(_QuantActivation, nn.ReLU):
    float_type = nn.ReLU


@layer_kind(role="activation")
class QuantReLU6(_QuantActivation, nn.ReLU6):
    float_type = nn.ReLU6


@layer_kind(role="activation")
class QuantHardtanh(_QuantActivation, nn.Hardtanh):
    float_type = nn.Hardtanh

    @staticmethod
    def float_kwargs(m: nn.Hardtanh) -> dict:
        return {"min_val": m.min_val, "max_val": m.max_val}


@layer_kind(role="activation")
class QuantSigmoid(_QuantActivation, nn.Sigmoid):
    float_type = nn.Sigmoid


@layer_kind(role="activation")
class QuantTanh(_QuantActivation, nn.Tanh):
    float_type = nn.Tanh
