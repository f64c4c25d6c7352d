"""hwquant: quantization for neural networks that run on custom hardware.

>>> import hwquant
>>> from hwquant.spec import W4, A4U, Recipe
>>> from hwquant.models import MLP
>>> qmodel = hwquant.quantize(MLP((64, 32, 10)), Recipe.uniform(weights=W4, activations=A4U))
"""

from hwquant.api import (
    QuantizeReport,
    calibration,
    clipping,
    quantize,
    quantizers,
    set_quantization,
)
from hwquant.checkpoint import load_checkpoint, save_checkpoint
from hwquant.spec import (
    A2Q,
    A4,
    A4U,
    A8,
    A8U,
    W2,
    W4,
    W8,
    A2QPlus,
    IntFormat,
    LayerSpec,
    MinifloatFormat,
    QuantSpec,
    Recipe,
    ScaleSpec,
    per_channel,
    per_group,
)

__version__ = "0.1.0"

__all__ = [
    "A2Q",
    "A4",
    "A4U",
    "A8",
    "A8U",
    "W2",
    "W4",
    "W8",
    "A2QPlus",
    "IntFormat",
    "LayerSpec",
    "MinifloatFormat",
    "QuantSpec",
    "QuantizeReport",
    "Recipe",
    "ScaleSpec",
    "__version__",
    "calibration",
    "clipping",
    "load_checkpoint",
    "per_channel",
    "per_group",
    "quantize",
    "quantizers",
    "save_checkpoint",
    "set_quantization",
]
