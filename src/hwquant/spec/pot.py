"""Weight specs for power-of-two, APoT and MSQ quantization-aware training.

``PoTWeight(format, ...)`` is a weight :class:`~hwquant.spec.QuantSpec` whose
quantizer (:class:`hwquant.nn.pot.PoTWeightQuantizer`) rounds each output row onto
a level set whose products are shifts and adds:

- ``PowerOfTwoFormat(b)`` — ±2^e, e ∈ [e_min, 0] (QKeras ``quantized_po2``). Bits:
  1 sign + (b − 1) exponent bits, 2^(b−1) exponents; with ``has_zero`` one exponent
  code is given up for 0. Product x·w = ±(x << (e − e_min)): one shifter.
- ``APoTFormat(b)`` — sums of two powers of two (Li et al., ICLR 2020). Bits: 1 sign
  + (b − 1) bits indexing 2^(b−1) magnitudes (0 included), so 2^b − 1 levels (4-bit:
  {0, .1, .2, .3, .4, .6, .8, 1}·α). Product: two shifts and an add. ``weight_norm``
  (the paper's weight normalization) standardizes each row before clipping at the
  learned α (``ScaleSpec(learned=True)``: trained with the RCF gradient, which is the
  LSQ gradient of :func:`hwquant.core.grid.fake_quantize`).
- ``MSQFormat(b)`` — Mix and Match (Chang et al., HPCA 2021): a fraction
  ``sp2_fraction`` of the rows uses sum-of-two-powers-of-two (SP2) levels (4-bit:
  {0, 1, 2, 4, 5, 6, 8}/8), the others fixed-point levels (the narrow b-bit integer
  grid, 4-bit: {0, …, 7}/7). Both row types store b bits (1 sign + b − 1 magnitude
  bits; SP2 leaves one magnitude code unused at 4 bits). ``sp2_fraction=None`` means
  every row is SP2 (the plain ``MSQFormat`` level set). Rows are assigned when the
  quantizer is initialized: the ⌈fraction·C⌉ rows whose SP2 quantization error is
  smallest relative to their fixed-point error get SP2 (see the quantizer).

A bit width a scheme cannot use fails in the format (``APoTFormat(1)``: ValueError).
These specs quantize weights only: an activation or bias quantizer built from one is
a ``ValueError``.

Example:
    >>> spec = PoTWeight(APoTFormat(4), weight_norm=True)
    >>> spec.describe()
    'APOT4 per-channel(0) max learned weight-norm'
    >>> PoTWeight(MSQFormat(4), sp2_fraction=0.5).short()
    'MSQ4/ch sp2=0.5'
    >>> from hwquant.spec.serialize import dumps, loads
    >>> loads(dumps(spec)) == spec
    True
    >>> PoTWeight(IntFormat(4))
    Traceback (most recent call last):
    ...
    ValueError: PoTWeight.format must be a PowerOfTwoFormat, APoTFormat or MSQFormat, got INT4
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from hwquant.spec.formats import APoTFormat, Format, IntFormat, MSQFormat, PowerOfTwoFormat
from hwquant.spec.quant_spec import Granularity, QuantSpec, ScaleSpec, per_channel
from hwquant.spec.serialize import serializable

__all__ = ["PoTWeight"]

_POT4 = PowerOfTwoFormat(4)
_PER_OUT_CHANNEL = per_channel(0)
_LEARNED = ScaleSpec("max", learned=True)


@serializable
@dataclass(frozen=True)
class PoTWeight(QuantSpec):
    """Power-of-two / APoT / MSQ weight spec (module docstring).

    Fields beyond :class:`QuantSpec`'s (keyword-only):

    weight_norm: standardize each output row, (w − mean)/σ, before clipping at α
        (APoT). The row's σ is folded into its scale (s = σ·α), so the layer keeps the
        float weight's magnitude; the row mean is dropped, as in the paper.
    sp2_fraction: MSQ only: the fraction of rows on SP2 levels (the rest fixed
        point); None: all rows SP2.

    Defaults: per output channel, a learned scale (α) initialized from max|w|.
    """

    format: Format = _POT4
    granularity: Granularity = _PER_OUT_CHANNEL
    scale: ScaleSpec = _LEARNED
    weight_norm: bool = field(default=False, kw_only=True)
    sp2_fraction: float | None = field(default=None, kw_only=True)

    #: only weight quantizers are built from this spec (see hwquant.nn.Quantizer).
    weight_only: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.format, PowerOfTwoFormat | APoTFormat | MSQFormat):
            raise ValueError(
                "PoTWeight.format must be a PowerOfTwoFormat, APoTFormat or MSQFormat, "
                f"got {self.format.name}"
            )
        if not isinstance(self.weight_norm, bool):
            raise ValueError(f"PoTWeight.weight_norm must be a bool, got {self.weight_norm!r}")
        if self.granularity.grouped:
            raise ValueError("PoTWeight needs per-channel or per-tensor scales, not per-group")
        f = self.sp2_fraction
        if f is not None:
            if not isinstance(self.format, MSQFormat):
                raise ValueError(
                    f"PoTWeight.sp2_fraction is the MSQ row mix; {self.format.name} has no "
                    "fixed-point rows"
                )
            if isinstance(f, bool) or not isinstance(f, int | float) or not 0.0 <= f <= 1.0:
                raise ValueError(f"PoTWeight.sp2_fraction must be a number in [0, 1], got {f!r}")
            if self.granularity.per_tensor:
                raise ValueError("PoTWeight.sp2_fraction chooses per row: use per_channel(0)")
        if self.zero_point != "symmetric":
            raise ValueError("PoTWeight levels are symmetric: zero_point must be 'symmetric'")

    @property
    def mixed_rows(self) -> bool:
        """True when some rows are fixed point (MSQ with sp2_fraction < 1)."""
        return self.sp2_fraction is not None and self.sp2_fraction < 1.0

    @property
    def fixed_format(self) -> IntFormat:
        """The fixed-point rows' integer grid: narrow signed ``bits`` (MSQ)."""
        return IntFormat(self.format.bits, narrow=True)

    def sp2_rows(self, channels: int) -> int:
        """How many of ``channels`` rows use SP2 levels (all without a mix)."""
        if self.sp2_fraction is None:
            return channels
        return min(channels, math.ceil(self.sp2_fraction * channels - 1e-9))

    def describe(self) -> str:
        extra = [" weight-norm"] if self.weight_norm else []
        if self.sp2_fraction is not None:
            extra.append(f" sp2={self.sp2_fraction:g}")
        return super().describe() + "".join(extra)

    def short(self) -> str:
        extra = " wn" if self.weight_norm else ""
        if self.sp2_fraction is not None:
            extra += f" sp2={self.sp2_fraction:g}"
        return super().short() + extra
