"""Accumulator-aware weight quantizer specs: A2Q and A2Q+ (REFERENCE.md §1–2).

``A2Q(accumulator_bits=P)`` is a weight :class:`~hwquant.spec.QuantSpec` whose quantizer
guarantees that every dot product of the layer fits a P-bit signed accumulator: per
output channel the weights are normalized (w = g·v/‖v‖₁), g/s is clamped to the L1
budget T(P, N, 1_s) of the layer's N-bit input, and codes are rounded toward zero.
``A2QPlus`` also zero-centres each channel and uses the looser A2Q+ budget.

The input format (N and signedness) comes from the layer's input quantizer, or from
``input_format`` when the layer's input is quantized elsewhere (e.g. by the previous
activation); a layer with neither is an error when it is built.

The bias of the layer is added to the same accumulator, so the guarantee covers it:
the layer clips its bias code to what fits beside the current weights
(:meth:`hwquant.nn.a2q.A2QWeightQuantizer.bias_code_range`), unless the spec declares
``bias_in_accumulator=False`` — the bias is applied after the accumulator (e.g. folded
into FINN's thresholds) and is then neither clipped nor counted in the P-bit budget.

Example:
    >>> spec = A2Q(IntFormat(4, narrow=True), accumulator_bits=12)
    >>> spec.describe()
    'INT4n per-channel(0) max learned-log2 toward_zero A2Q(P=12)'
    >>> A2QPlus(accumulator_bits=16).zero_centre, A2QPlus(accumulator_bits=16).format.name
    (True, 'INT8n')
    >>> from hwquant.spec.serialize import dumps, loads
    >>> loads(dumps(spec)) == spec
    True
    >>> A2Q(accumulator_bits=12, bias_in_accumulator=False).short()
    'INT8n/ch A2Q12 bias-after'
    >>> A2Q(accumulator_bits=12, rounding="half_even")
    Traceback (most recent call last):
    ...
    ValueError: A2Q.rounding must be 'toward_zero' (rounding up could break the accumulator bound), got 'half_even'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from hwquant.spec.formats import Format, IntFormat
from hwquant.spec.quant_spec import Granularity, QuantSpec, ScaleSpec, per_channel
from hwquant.spec.serialize import serializable

__all__ = ["A2Q", "MAX_ACCUMULATOR_BITS", "A2QPlus"]

#: the widest accumulator an A2Q spec may name (integer execution emulates it in int64).
MAX_ACCUMULATOR_BITS = 64

# Defaults (frozen values, safe to share).
_INT8N = IntFormat(8, narrow=True)
_PER_OUT_CHANNEL = per_channel(0)
_LEARNED_LOG2 = ScaleSpec("max", learned=True, log2_domain=True)


@serializable
@dataclass(frozen=True)
class A2Q(QuantSpec):
    """A2Q weight quantizer spec (Colbert et al., ICCV 2023).

    ``A2Q(accumulator_bits=P)`` alone quantizes weights to **INT8** (narrow, per
    output channel); give the format first for any other width, e.g.
    ``A2Q(IntFormat(4, narrow=True), accumulator_bits=12)`` for 4-bit weights.

    Fields beyond :class:`QuantSpec`'s (keyword-only):

    accumulator_bits: P, the signed accumulator width to guarantee (2–64).
    input_format: the N-bit integer format of the layer's input when the layer has
        no input quantizer of its own (``None``: read it from the layer).
    bias_in_accumulator: the layer's bias is added in the P-bit accumulator (True, the
        default: the guarantee covers b + Σ x·q, the bias code is clipped to fit), or
        applied after it (False: e.g. FINN thresholds; only Σ x·q must fit).

    Defaults: 8-bit narrow signed weights, per output channel, scale learned in
    the log2 domain, round toward zero (required: rounding up could break the bound).
    """

    format: Format = _INT8N
    granularity: Granularity = _PER_OUT_CHANNEL
    scale: ScaleSpec = _LEARNED_LOG2
    rounding: str = "toward_zero"
    accumulator_bits: int = field(kw_only=True)
    input_format: IntFormat | None = field(default=None, kw_only=True)
    bias_in_accumulator: bool = field(default=True, kw_only=True)

    #: A2Q+ (zero-centred channels, budget (2^P − 2)/(2^N − 1)) when True.
    zero_centre: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        fmt = self.format
        if not isinstance(fmt, IntFormat) or not fmt.signed or fmt.bits < 2:
            raise ValueError(f"{name}.format must be a signed IntFormat of ≥ 2 bits, got {fmt!r}")
        if self.granularity.per_tensor or self.granularity.grouped:
            raise ValueError(
                f"{name}.granularity must be per-channel (the bound is per output channel), "
                f"got {self.granularity}"
            )
        if not self.scale.learned or self.scale.power_of_two:
            raise ValueError(
                f"{name}.scale must be learned and not power-of-two (A2Q learns g and s), "
                f"got {self.scale!r}"
            )
        if self.zero_point != "symmetric":
            raise ValueError(f"{name}.zero_point must be 'symmetric', got {self.zero_point!r}")
        if self.rounding != "toward_zero":
            raise ValueError(
                f"{name}.rounding must be 'toward_zero' (rounding up could break the "
                f"accumulator bound), got {self.rounding!r}"
            )
        p = self.accumulator_bits
        if isinstance(p, bool) or not isinstance(p, int) or not 2 <= p <= MAX_ACCUMULATOR_BITS:
            raise ValueError(
                f"{name}.accumulator_bits must be an int in [2, {MAX_ACCUMULATOR_BITS}], got {p!r}"
            )
        inp = self.input_format
        if inp is not None and not isinstance(inp, IntFormat):
            raise ValueError(f"{name}.input_format must be an IntFormat or None, got {inp!r}")
        if not isinstance(self.bias_in_accumulator, bool):
            raise ValueError(
                f"{name}.bias_in_accumulator must be a bool, got {self.bias_in_accumulator!r}"
            )

    def describe(self) -> str:
        after = "" if self.bias_in_accumulator else ", bias after accumulator"
        return f"{super().describe()} {type(self).__name__}(P={self.accumulator_bits}{after})"

    def short(self) -> str:
        tag = "A2Q+" if self.zero_centre else "A2Q"
        after = "" if self.bias_in_accumulator else " bias-after"
        return f"{super().short()} {tag}{self.accumulator_bits}{after}"


@serializable
@dataclass(frozen=True)
class A2QPlus(A2Q):
    """A2Q+ weight quantizer spec (Colbert et al., ICML 2024): A2Q with zero-centred
    channels and the looser budget ‖q‖₁ ≤ (2^P − 2)/(2^N − 1) (each sign half ≤ half of it).

    >>> A2QPlus(IntFormat(4, narrow=True), accumulator_bits=12).short()
    'INT4n/ch A2Q+12'
    """

    zero_centre: ClassVar[bool] = True
