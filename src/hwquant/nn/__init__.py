"""Quantized layers: torch layers that own their quantizers."""

from torch import nn

from hwquant.nn.a2q import A2QWeightQuantizer
from hwquant.nn.activation import (
    QuantAct,
    QuantHardtanh,
    QuantReLU,
    QuantReLU6,
    QuantSigmoid,
    QuantTanh,
)
from hwquant.nn.conv import (
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantConvTranspose1d,
    QuantConvTranspose2d,
)
from hwquant.nn.layer import QuantLayer, QuantWeightLayer
from hwquant.nn.linear import QuantLinear
from hwquant.nn.merge import QuantAdd, QuantCat
from hwquant.nn.pool import QuantAvgPool2d, QuantMaxPool2d
from hwquant.nn.quantizer import BiasQuantizer, Quantizer

__all__ = [
    "A2QWeightQuantizer",
    "BiasQuantizer",
    "QuantAct",
    "QuantAdd",
    "QuantAvgPool2d",
    "QuantCat",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantConvTranspose1d",
    "QuantConvTranspose2d",
    "QuantHardtanh",
    "QuantLayer",
    "QuantLinear",
    "QuantMaxPool2d",
    "QuantReLU",
    "QuantReLU6",
    "QuantSigmoid",
    "QuantTanh",
    "QuantWeightLayer",
    "Quantizer",
]

#: float module type → quantized type (the registry ``hwquant.quantize`` uses).
QUANT_TYPES: dict[type[nn.Module], type[nn.Module]] = {
    cls.float_type: cls
    for cls in (
        QuantLinear,
        QuantConv1d,
        QuantConv2d,
        QuantConv3d,
        QuantConvTranspose1d,
        QuantConvTranspose2d,
        QuantReLU,
        QuantReLU6,
        QuantHardtanh,
        QuantSigmoid,
        QuantTanh,
        QuantMaxPool2d,
        QuantAvgPool2d,
    )
}
