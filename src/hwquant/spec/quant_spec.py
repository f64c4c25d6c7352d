"""QuantSpec: everything needed to build a quantizer, as a frozen value.

A quantizer maps x to ``s · (q(x/s + z) - z)`` where ``q`` rounds onto the
format's grid. The spec says which grid (``format``), how scales are shared
(``granularity``), how the scale is chosen (``scale``), the zero point and the
rounding.

Example:
    >>> spec = QuantSpec(IntFormat(4), granularity=per_channel(0))
    >>> spec.granularity.kind, spec.rounding
    ('channel', 'half_even')
    >>> QuantSpec(IntFormat(4), rounding="nearest")
    Traceback (most recent call last):
    ...
    ValueError: QuantSpec.rounding must be one of ['away_from_zero', 'ceil', 'floor', 'half_down', 'half_even', 'half_up', 'stochastic', 'toward_zero'], got 'nearest'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from hwquant.spec.formats import (
    FP4_E2M1,
    FP8_E4M3,
    FP8_E4M3FN,
    FP8_E5M2,
    Format,
    IntFormat,
)

__all__ = [
    "A4",
    "A4U",
    "A8",
    "A8U",
    "PER_TENSOR",
    "ROUNDING_MODES",
    "W2",
    "W4",
    "W8",
    "Granularity",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "QuantSpec",
    "ScaleSpec",
    "per_channel",
    "per_group",
]

# Names of the rounding functions in hwquant.core.rounding. QONNX names in brackets:
# half_even (ROUND), half_up = ties away from zero (HALF_UP), half_down = ties toward
# zero (HALF_DOWN), floor (FLOOR), ceil (CEIL), toward_zero (DOWN), away_from_zero (UP).
ROUNDING_MODES = (
    "half_even",
    "half_up",
    "half_down",
    "floor",
    "ceil",
    "toward_zero",
    "away_from_zero",
    "stochastic",
)
SCALE_METHODS = ("max", "percentile", "mse", "fixed", "accumulator")
ZERO_POINTS = ("symmetric", "asymmetric", "learned")


def _one_of(owner: str, name: str, value: object, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{owner}.{name} must be one of {sorted(allowed)}, got {value!r}")


def _is_number(value: object) -> bool:
    """A real int or float (a bool is not a number here), finite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Granularity:
    """How scales are shared: one per tensor (:class:`PerTensor`), per channel along
    ``axis`` (:class:`PerChannel`), or per group of ``group_size`` consecutive
    elements along ``axis`` and per index of every axis before it
    (:class:`PerGroup`, e.g. per output channel and input group for weights).

    ``Granularity(kind, axis, group_size)`` builds the class ``kind`` names (the
    serialized form); code asks the value (``per_tensor``, ``grouped``,
    ``scale_shape``) instead of comparing ``kind`` strings.

    >>> type(Granularity("channel", axis=1)).__name__, per_group(32).grouped
    ('PerChannel', True)
    """

    kind: str = "tensor"
    axis: int = 0
    group_size: int | None = None

    def __new__(cls, kind: str = "tensor", *args, **kwargs):
        if cls is Granularity:
            _one_of("Granularity", "kind", kind, tuple(_GRANULARITIES))
            cls = _GRANULARITIES[kind]
        return super().__new__(cls)

    def __post_init__(self) -> None:
        _one_of("Granularity", "kind", self.kind, (self._kind,))
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise ValueError(f"Granularity.axis must be an int, got {self.axis!r}")
        if self.group_size is not None and not self.grouped:
            raise ValueError("Granularity.group_size is only used with kind='group'")

    _kind: ClassVar[str] = "tensor"

    @property
    def per_tensor(self) -> bool:
        """One scale for the whole tensor."""
        return False

    @property
    def grouped(self) -> bool:
        """Scales per group of elements along ``axis`` (the tensor is viewed grouped)."""
        return False

    def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the scale tensor for a tensor of ``shape`` (broadcastable; for
        groups, broadcastable against the grouped view, see ``grouped_shape``)."""
        raise NotImplementedError  # pragma: no cover - every subclass defines it

    def grouped_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """View of ``shape`` with ``axis`` split into (n_groups, group_size)."""
        raise ValueError(f"a {self} granularity has no groups")

    def _axis(self, shape: tuple[int, ...]) -> int:
        if not -len(shape) <= self.axis < len(shape):
            raise ValueError(f"Granularity.axis={self.axis} is out of range for shape {shape}")
        return self.axis % len(shape)


@dataclass(frozen=True)
class PerTensor(Granularity):
    """One scale for the whole tensor."""

    kind: str = "tensor"
    _kind: ClassVar[str] = "tensor"

    @property
    def per_tensor(self) -> bool:
        return True

    def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return ()

    def __str__(self) -> str:
        return "per-tensor"


@dataclass(frozen=True)
class PerChannel(Granularity):
    """One scale per index of ``axis``."""

    kind: str = "channel"
    _kind: ClassVar[str] = "channel"

    def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        axis = self._axis(shape)
        return tuple(n if i == axis else 1 for i, n in enumerate(shape))

    def __str__(self) -> str:
        return f"per-channel({self.axis})"


@dataclass(frozen=True)
class PerGroup(Granularity):
    """One scale per ``group_size`` consecutive elements along ``axis`` (and per
    index of every axis before it)."""

    kind: str = "group"
    _kind: ClassVar[str] = "group"

    def __post_init__(self) -> None:
        super().__post_init__()
        gs = self.group_size
        if isinstance(gs, bool) or not isinstance(gs, int) or gs <= 0:
            raise ValueError(f"Granularity.group_size must be a positive int, got {gs!r}")

    @property
    def grouped(self) -> bool:
        return True

    def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        axis = self._axis(shape)
        grouped = self.grouped_shape(shape)
        return grouped[: axis + 1] + (1,) * (len(grouped) - axis - 1)

    def grouped_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        axis = self._axis(shape)
        n, g = shape[axis], self.group_size
        if g is None or n % g:
            raise ValueError(
                f"Granularity.group_size={g} does not divide dimension {axis} of size {n}"
            )
        return (*shape[:axis], n // g, g, *shape[axis + 1 :])

    def __str__(self) -> str:
        return f"per-group({self.group_size}, axis {self.axis})"


_GRANULARITIES: dict[str, type[Granularity]] = {
    "tensor": PerTensor,
    "channel": PerChannel,
    "group": PerGroup,
}

PER_TENSOR = PerTensor()


def per_channel(axis: int = 0) -> Granularity:
    """One scale per index of ``axis`` (0 = output channels of a weight)."""
    return PerChannel(axis=axis)


def per_group(group_size: int, axis: int = 1) -> Granularity:
    """One scale per ``group_size`` consecutive elements along ``axis``."""
    return PerGroup(axis=axis, group_size=group_size)


@dataclass(frozen=True)
class ScaleSpec:
    """How a scale is chosen.

    method:
        ``max`` (absolute max, or min/max with an asymmetric zero point),
        ``percentile`` (clip at the given percentile of |x|),
        ``mse`` (search the clipping ratio minimizing quantization MSE),
        ``fixed`` (always ``value``),
        ``accumulator`` (biases only: input scale × weight scale).
    learned: the scale becomes a parameter trained with the LSQ gradient
        (Esser et al., 2020), initialized by ``method``; ``log2_domain`` trains
        log2(s) instead (scale-invariant steps, as in A2Q).
    power_of_two: restrict the scale to 2^k (rounded up at init / in the
        log2 domain when learned), so re-scaling is a shift in hardware.
    warmup: learned scales initialized lazily from data (the first forward pass of
        an uncalibrated quantizer): for this many training batches after that the
        scale is the running mean of the batches' statistics (``method``; no
        gradient), and learned from then on, as Brevitas' runtime-statistics
        scales do. While the weights move fast at the start of QAT, this keeps an
        activation range from being left behind (with 4-bit A2Q at small P, a
        scale learned from the first batch let some seeds collapse). 0 learns from
        the first step. Calibrated, loaded and fixed scales skip it.
    """

    method: str = "max"
    percentile: float = 99.99
    value: float | None = None
    learned: bool = False
    log2_domain: bool = False
    power_of_two: bool = False
    warmup: int = 0

    def __post_init__(self) -> None:
        _one_of("ScaleSpec", "method", self.method, SCALE_METHODS)
        if not _is_number(self.percentile) or not 0.0 < self.percentile <= 100.0:
            raise ValueError(
                f"ScaleSpec.percentile must be a number in (0, 100], got {self.percentile!r}"
            )
        if self.method == "fixed":
            v = self.value
            if not (_is_number(v) and v > 0):
                raise ValueError(
                    f"ScaleSpec.value must be a positive number for 'fixed', got {v!r}"
                )
        elif self.value is not None:
            raise ValueError("ScaleSpec.value is only used with method='fixed'")
        for name in ("learned", "log2_domain", "power_of_two"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ScaleSpec.{name} must be a bool, got {getattr(self, name)!r}")
        if self.learned and self.method in ("fixed", "accumulator"):
            raise ValueError(f"ScaleSpec.learned cannot be combined with method={self.method!r}")
        if self.log2_domain and not self.learned:
            raise ValueError(
                "ScaleSpec.log2_domain is how a learned scale is trained: it needs learned=True"
            )
        w = self.warmup
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ValueError(f"ScaleSpec.warmup must be an int ≥ 0 (batches), got {w!r}")
        if w and not self.learned:
            raise ValueError(
                "ScaleSpec.warmup is the start of a learned scale: it needs learned=True"
            )


@dataclass(frozen=True)
class QuantSpec:
    """Format + granularity + scale policy + zero point + rounding.

    ``zero_point``: ``symmetric`` (z = 0), ``asymmetric`` (z from min/max
    statistics, integer formats only), ``learned`` (a trained, rounded offset).
    """

    format: Format
    granularity: Granularity = PER_TENSOR
    scale: ScaleSpec = field(default_factory=ScaleSpec)
    zero_point: str = "symmetric"
    rounding: str = "half_even"

    def __post_init__(self) -> None:
        if not isinstance(self.format, Format):
            raise ValueError(f"QuantSpec.format must be a Format, got {self.format!r}")
        if not isinstance(self.granularity, Granularity):
            raise ValueError(
                f"QuantSpec.granularity must be a Granularity, got {self.granularity!r}"
            )
        if not isinstance(self.scale, ScaleSpec):
            raise ValueError(f"QuantSpec.scale must be a ScaleSpec, got {self.scale!r}")
        _one_of("QuantSpec", "zero_point", self.zero_point, ZERO_POINTS)
        _one_of("QuantSpec", "rounding", self.rounding, ROUNDING_MODES)
        if self.zero_point != "symmetric" and not isinstance(self.format, IntFormat):
            raise ValueError(
                f"QuantSpec.zero_point={self.zero_point!r} needs an IntFormat, got {self.format.name}"
            )
        if self.format.is_bipolar and self.zero_point != "symmetric":
            raise ValueError(
                f"QuantSpec.zero_point must be 'symmetric' for bipolar formats (±1, as a "
                f"signed 1-bit IntFormat is), got {self.zero_point!r}"
            )

    def short(self) -> str:
        """Compact summary for tables, e.g. ``INT4n/ch`` or ``UINT4/t``."""
        g = self.granularity
        tag = {"tensor": "t", "channel": "ch"}.get(g.kind, f"g{g.group_size}")
        if self.scale.method == "accumulator":
            tag = "acc"
        return f"{self.format.name}/{tag}"

    def describe(self) -> str:
        """Short human-readable summary, e.g. ``INT4 per-channel(0) max learned``."""
        parts = [self.format.name, str(self.granularity), self.scale.method]
        if self.scale.learned:
            parts.append("learned" + ("-log2" if self.scale.log2_domain else ""))
            if self.scale.warmup:
                parts.append(f"warmup={self.scale.warmup}")
        if self.scale.power_of_two:
            parts.append("pow2")
        if self.zero_point != "symmetric":
            parts.append(f"zp={self.zero_point}")
        if self.rounding != "half_even":
            parts.append(self.rounding)
        return " ".join(parts)


_LEARNED = ScaleSpec("max", learned=True)

#: 4/8/2-bit signed weights, per output channel, learned (LSQ) scales.
W8 = QuantSpec(IntFormat(8, narrow=True), per_channel(0), _LEARNED)
W4 = QuantSpec(IntFormat(4, narrow=True), per_channel(0), _LEARNED)
W2 = QuantSpec(IntFormat(2, narrow=True), per_channel(0), _LEARNED)
#: Activations: unsigned (after ReLU) or signed, per tensor, learned scales. With a signed
#: spec, ``quantize`` makes the inputs the graph proves non-negative unsigned (a free bit).
#: Activation presets: a per-tensor scale from the 99.99th percentile, following the
#: running mean of that statistic for the first 100 training batches, then learned in
#: the log2 domain (steps relative to the scale: Adam moves a small and a large scale
#: alike). On the A2Q digits study this took 4-bit A2Q at P = 11 from 93.5 % (linear,
#: no warm-up; one seed in five collapsed with log2 alone) to 96.2 %.
_ACT_SCALE = ScaleSpec("percentile", learned=True, log2_domain=True, warmup=100)
A8U = QuantSpec(IntFormat(8, signed=False), PER_TENSOR, _ACT_SCALE)
A4U = QuantSpec(IntFormat(4, signed=False), PER_TENSOR, _ACT_SCALE)
A8 = QuantSpec(IntFormat(8), PER_TENSOR, _ACT_SCALE)
A4 = QuantSpec(IntFormat(4), PER_TENSOR, _ACT_SCALE)
#: Minifloat presets (weights per channel, activations per tensor).
W_FP8_E4M3 = QuantSpec(FP8_E4M3, per_channel(0), _LEARNED)
A_FP8_E4M3 = QuantSpec(FP8_E4M3, PER_TENSOR, ScaleSpec("max", learned=True))
FP8_E4M3FN_SPEC = QuantSpec(FP8_E4M3FN, PER_TENSOR, ScaleSpec("max", learned=True))
FP8_E5M2_SPEC = QuantSpec(FP8_E5M2, PER_TENSOR, ScaleSpec("max", learned=True))
W_FP4_E2M1 = QuantSpec(FP4_E2M1, per_channel(0), _LEARNED)
A_FP4_E2M1 = QuantSpec(FP4_E2M1, PER_TENSOR, ScaleSpec("max", learned=True))


def is_minifloat(spec: QuantSpec) -> bool:
    return spec.format.is_minifloat
