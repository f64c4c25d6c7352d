"""Quantized layers: torch layers that own their quantizers."""

from torch import nn

from hwquant.nn.a2q import (
    A2QWeightQuantizer,
    DeadLayerWarning,
    a2q_penalty,
    check_bounds,
    ep_init,
    unfreeze,
)
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
    QuantConvTranspose3d,
)
from hwquant.nn.embedding import QuantEmbedding
from hwquant.nn.kinds import LayerKind, kind_of, kinds, weight_kinds
from hwquant.nn.layer import QuantLayer, QuantWeightLayer
from hwquant.nn.linear import QuantLinear
from hwquant.nn.merge import QuantAdd, QuantCat
from hwquant.nn.pool import QuantAvgPool2d, QuantMaxPool2d
from hwquant.nn.quantizer import BiasQuantizer, Quantizer
from hwquant.nn.recurrent import QuantGRU, QuantLSTM, QuantRNN, RecurrentQuantizers

__all__ = [
    "A2QWeightQuantizer",
    "BiasQuantizer",
    "DeadLayerWarning",
    "LayerKind",
    "QuantAct",
    "QuantAdd",
    "QuantAvgPool2d",
    "QuantCat",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantConvTranspose1d",
    "QuantConvTranspose2d",
    "QuantConvTranspose3d",
    "QuantEmbedding",
    "QuantGRU",
    "QuantHardtanh",
    "QuantLSTM",
    "QuantLayer",
    "QuantLinear",
    "QuantMaxPool2d",
    "QuantRNN",
    "QuantReLU",
    "QuantReLU6",
    "QuantSigmoid",
    "QuantTanh",
    "QuantWeightLayer",
    "Quantizer",
    "RecurrentQuantizers",
    "a2q_penalty",
    "check_bounds",
    "ep_init",
    "kind_of",
    "kinds",
    "unfreeze",
    "weight_kinds",
]

#: float module type → quantized type (the registry ``hwquant.quantize`` uses), derived
#: from the registered layer kinds (:mod:`hwquant.nn.kinds`).
QUANT_TYPES: dict[type[nn.Module], type[nn.Module]] = {
    k.float_type: k.quant_type for k in kinds() if k.float_type is not None
}
