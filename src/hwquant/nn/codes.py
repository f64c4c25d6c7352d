"""The integer view of a quantized weight layer: weight codes as output rows, the range
of its input codes, its bias codes, and the accumulator range and width they imply.

The one home of these computations: the accumulator analysis
(:mod:`hwquant.analysis.accumulators`), integer execution and the QONNX exporter's
accumulator metadata all call them (export sits below analysis, so this lives in nn).

Worst case per output channel (REFERENCE.md §1, as FINN sizes accumulators): with input
codes x ∈ [x_min, x_max] and weight codes q,

    acc_max = Σ_i q_i·(x_max if q_i > 0 else x_min) (+ b),  acc_min likewise,

b the bias code when the bias sits in the accumulator register; the width is
UINT⌈log2(acc_max + 1)⌉ if acc_min ≥ 0, else INT⌈log2 max(−acc_min, acc_max + 1)⌉ + 1.

>>> import torch
>>> from hwquant.nn import QuantLinear
>>> from hwquant.spec import QuantSpec, IntFormat, ScaleSpec, LayerSpec
>>> fixed = ScaleSpec("fixed", value=1.0)
>>> spec = LayerSpec(input=QuantSpec(IntFormat(4, signed=False), scale=fixed),
...                  weight=QuantSpec(IntFormat(4), scale=fixed))
>>> layer = QuantLinear(2, 1, bias=False, spec=spec)
>>> with torch.no_grad():
...     _ = layer.weight.copy_(torch.tensor([[7.0, -8.0]]))
>>> [t.long().tolist() for t in accumulator_range(layer)]
[[-120], [105]]
>>> accumulator_bits(layer)   # range [-120, 105] → 8 bits signed
{'<root>': 8}
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from hwquant.core.accumulator import worst_case_range
from hwquant.nn.a2q import A2QWeightQuantizer, accumulator_bias_codes
from hwquant.nn.kinds import LayerKind, kind_of
from hwquant.nn.quantizer import BiasQuantizer, QuantCodes, Quantizer

__all__ = [
    "accumulating_layers",
    "accumulator_bits",
    "accumulator_range",
    "bias_in_accumulator",
    "input_code_range",
    "integer_codes",
    "range_bits",
    "weight_code_rows",
    "weight_codes",
]


def accumulating_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module, LayerKind]]:
    """(path, layer, kind) for every quantized layer of ``model`` whose kind accumulates
    dot products (linear, conv, transposed conv; not embeddings, not float twins)."""
    for path, m in model.named_modules():
        k = kind_of(m)
        if k is not None and k.accumulates and isinstance(m, k.quant_type):
            yield path, m, k


def weight_codes(layer: nn.Module) -> QuantCodes | None:
    """The layer's weight as int64 codes in the weight's layout with their scale
    (:meth:`Quantizer.codes`), or None when the weights are not on a symmetric grid
    with integer codes (float, minifloat, asymmetric) or the quantizer is disabled.

    Level formats (power-of-two, APoT, MSQ) have integer codes m = L·D at scale s/D,
    D the quantizer's :meth:`~Quantizer.code_multiplier` (4-bit PoT: m = ±2^k, k ≤ 7).

    >>> import torch
    >>> from hwquant.nn import QuantLinear
    >>> from hwquant.spec import LayerSpec, PoTWeight, PowerOfTwoFormat
    >>> layer = QuantLinear(3, 1, bias=False, spec=LayerSpec(weight=PoTWeight(PowerOfTwoFormat(3))))
    >>> with torch.no_grad():
    ...     _ = layer.weight.copy_(torch.tensor([[1.0, -0.3, 0.1]]))
    >>> layer.reset_weight_scale()
    >>> c = weight_codes(layer)
    >>> c.codes.tolist(), c.scale.flatten().tolist()
    ([[8, -2, 1]], [0.125])
    """
    wq = getattr(layer, "weight_quant", None)
    if not isinstance(wq, Quantizer):
        return None
    return integer_codes(wq, layer.weight)


def integer_codes(q: Quantizer, x: Tensor) -> QuantCodes | None:
    """``x`` as quantizer ``q`` quantizes it now, as int64 integer codes m in x's
    layout with the scale of one code (s/D, D the quantizer's ``code_multiplier``), or
    None for grids without integer codes (minifloat), asymmetric zero points and
    quantizers without codes (disabled, calibrating, uninitialized)."""
    d = q.code_multiplier()
    if d is None or q.spec.zero_point != "symmetric":
        return None
    try:
        c = q.codes(x)
    except ValueError:  # disabled / uninitialized: no codes
        return None
    if isinstance(d, int) and d == 1:
        return QuantCodes(c.codes.long(), c.scale, None)
    return QuantCodes(torch.round(c.codes * d).long(), c.scale / d, None)


def weight_code_rows(layer: nn.Module) -> Tensor | None:
    """int64 weight codes as [out_channels, K'] rows (every weight that feeds one output
    channel; transposed convs over every kernel tap), or None (:func:`weight_codes`)."""
    wc = weight_codes(layer)
    kind = kind_of(layer)
    if wc is None or kind is None:
        return None
    return kind.rows_of(layer, wc.codes)


def input_code_range(layer: nn.Module) -> tuple[float, float] | None:
    """[min, max] of the layer's input codes (minus the zero point): from its per-tensor
    input quantizer with integer codes, else from an A2Q weight spec's declared input
    format; None for float inputs."""
    iq = getattr(layer, "input_quant", None)
    if isinstance(iq, Quantizer):
        spec = iq.spec
        if not spec.granularity.per_tensor or not spec.format.integer_codes:
            return None
        lo, hi = spec.format.code_range
        z = iq.zero_point()
        z = 0.0 if z is None else float(z.detach().reshape(-1)[0])
        return lo - z, hi - z
    wq = getattr(layer, "weight_quant", None)
    if isinstance(wq, A2QWeightQuantizer):
        return wq.input_format.code_range
    return None


def bias_in_accumulator(layer: nn.Module) -> bool:
    """Whether ``layer``'s bias is an integer in its accumulator register: it has an
    enabled bias on the accumulator scale and no A2Q spec declaring it applied after the
    accumulator."""
    wq = getattr(layer, "weight_quant", None)
    if isinstance(wq, A2QWeightQuantizer) and not wq.bias_in_accumulator:
        return False
    bq = getattr(layer, "bias_quant", None)
    return (
        getattr(layer, "bias", None) is not None
        and isinstance(bq, BiasQuantizer)
        and bq.state != "float"
    )


@torch.no_grad()
def accumulator_range(layer: nn.Module) -> tuple[Tensor, Tensor] | None:
    """(acc_min, acc_max) per output channel ([C]) over every input of the layer's input
    format (module docstring), the bias code included when it is in the accumulator;
    None without integer inputs and weights."""
    x = input_code_range(layer)
    rows = weight_code_rows(layer)
    if x is None or rows is None:
        return None
    acc_min, acc_max = worst_case_range(rows, x[0], x[1])
    b = accumulator_bias_codes(layer) if bias_in_accumulator(layer) else None
    if b is not None:
        acc_min, acc_max = acc_min + b, acc_max + b
    return acc_min, acc_max


def range_bits(acc_min: float, acc_max: float) -> int:
    """Width holding [acc_min, acc_max] as FINN sizes it: UINT⌈log2(acc_max + 1)⌉ if
    acc_min ≥ 0, else INT⌈log2(max(−acc_min, acc_max + 1))⌉ + 1."""
    if acc_min >= 0:
        return max(1, math.ceil(math.log2(acc_max + 1)))
    return math.ceil(math.log2(max(-acc_min, acc_max + 1))) + 1


def accumulator_bits(model: nn.Module) -> dict[str, int]:
    """{layer path: the accumulator width that never overflows for these weights} for
    every accumulating layer with integer inputs and weights (module docstring)."""
    out: dict[str, int] = {}
    for path, layer, _ in accumulating_layers(model):
        r = accumulator_range(layer)
        if r is None or not r[0].numel():
            continue
        out[path or "<root>"] = range_bits(float(r[0].min()), float(r[1].max()))
    return out
