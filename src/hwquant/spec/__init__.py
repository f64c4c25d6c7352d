"""Specs: frozen, validated, serializable descriptions of formats and quantizers."""

from hwquant.spec.a2q import A2Q, MAX_ACCUMULATOR_BITS, A2QPlus
from hwquant.spec.formats import *  # noqa: F403
from hwquant.spec.formats import __all__ as _formats_all
from hwquant.spec.layer_spec import LayerSpec, Recipe, accumulator_bias
from hwquant.spec.pot import PoTWeight
from hwquant.spec.quant_spec import *  # noqa: F403
from hwquant.spec.quant_spec import __all__ as _qs_all
from hwquant.spec.recurrent import RecurrentSpec, recurrent_spec

__all__ = [
    *_formats_all,
    *_qs_all,
    "A2Q",
    "MAX_ACCUMULATOR_BITS",
    "A2QPlus",
    "LayerSpec",
    "PoTWeight",
    "Recipe",
    "RecurrentSpec",
    "accumulator_bias",
    "recurrent_spec",
]
