"""Number formats: frozen, self-validating value objects (no tensors).

Every format describes the *normalized grid*: the values a quantized number can
take before it is multiplied by its scale. A format knows its range
(``min_value`` / ``max_value`` of the grid) and, when it has few codes, the exact
list of representable values (``levels()``).

Example:
    >>> IntFormat(4).max_value, IntFormat(4, signed=False).max_value
    (7.0, 15.0)
    >>> FP8_E4M3FN.max_value
    448.0
    >>> MSQFormat(4).levels()[-4:]
    (0.5, 0.625, 0.75, 1.0)
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

__all__ = [
    "FORMAT_TYPES",
    "FP4_E2M1",
    "FP6_E2M3",
    "FP6_E3M2",
    "FP8_E4M3",
    "FP8_E4M3FN",
    "FP8_E4M3FNUZ",
    "FP8_E5M2",
    "FP8_E5M2FNUZ",
    "ONNX_FLOAT8",
    "APoTFormat",
    "BipolarFormat",
    "Format",
    "FormatRegistry",
    "IntFormat",
    "MSQFormat",
    "MinifloatFormat",
    "PowerOfTwoFormat",
    "TernaryFormat",
    "parse_format",
]

MAX_LEVELS = 4096  # formats with more codes than this do not enumerate their levels


def _check_int(owner: str, name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{owner}.{name} must be an int, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{owner}.{name} must be in [{lo}, {hi}], got {value}")


def _check_bool(owner: str, name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be a bool, got {value!r}")


@dataclass(frozen=True)
class Format:
    """Base of all number formats. Subclasses define the grid."""

    kind: ClassVar[str] = "format"
    # Subclasses provide: bits (int), signed (bool), max_value (float), name (str).

    @property
    def min_value(self) -> float:
        return -self.max_value if self.signed else 0.0

    @property
    def is_integer(self) -> bool:
        """True when the grid is the integers in [min_value, max_value]."""
        return False

    @property
    def integer_codes(self) -> bool:
        """True when every grid value is an integer (integer grids and bipolar ±1):
        such a tensor runs on integer hardware as its codes times the scale."""
        return self.is_integer

    @property
    def is_bipolar(self) -> bool:
        """True when the grid is {-1, +1} (BipolarFormat, or a 1-bit signed integer)."""
        return False

    @property
    def is_minifloat(self) -> bool:
        """True for floating-point grids (sign, exponent, mantissa)."""
        return False

    @property
    def narrow(self) -> bool:
        """True when the most negative code is left out (symmetric signed range)."""
        return False

    @property
    def code_range(self) -> tuple[int, int]:
        """(smallest, largest) integer code; only for formats with integer codes.

        >>> TernaryFormat().code_range, BipolarFormat().code_range
        ((-1, 1), (-1, 1))
        """
        if not self.integer_codes:
            raise ValueError(f"{self.name} has no integer codes (its grid is not integers)")
        return int(self.min_value), int(self.max_value)

    @property
    def code_multiplier(self) -> int | None:
        """D such that every grid value times D is an integer (the integer codes of a
        tensor are then grid·D at scale s/D): 1 for integer grids, 2^(-e_min) for
        power-of-two codes, the common denominator of APoT / MSQ levels; None for
        grids without one (minifloats).

        >>> IntFormat(4).code_multiplier, PowerOfTwoFormat(4).code_multiplier
        (1, 128)
        >>> APoTFormat(4).code_multiplier, MSQFormat(4).code_multiplier
        (10, 8)
        """
        return 1 if self.integer_codes else None

    def canonical(self) -> Format:
        """The format registries dispatch on: the same grid, stated the one way
        (a 1-bit signed IntFormat is BipolarFormat)."""
        return self

    def levels(self) -> tuple[float, ...]:
        """All representable grid values, ascending (small formats only)."""
        raise ValueError(f"{self} has too many codes to enumerate its levels")


T = TypeVar("T")


class FormatRegistry(Generic[T]):
    """Behaviour keyed by format type, filled by decorators beside the code that
    implements it (the grid in core/grid.py, QONNX emission and QCDQ lowering in
    export/ops/, MAC cost in analysis/cost/, hls4ml precision in export/hls4ml.py).

    Lookup dispatches on ``fmt.canonical()`` and walks the class hierarchy, so a
    subclass inherits its parent's entry; a format nobody registered is a
    ``ValueError`` that names the format and what was looked for.

    >>> describe = FormatRegistry[str]("description")
    >>> @describe.register(IntFormat, TernaryFormat)
    ... def _(fmt): return f"{fmt.bits}-bit integer"
    >>> describe(TernaryFormat())
    '2-bit integer'
    >>> describe(MSQFormat(4))
    Traceback (most recent call last):
    ...
    ValueError: no description for format MSQ4 (MSQFormat); registered: IntFormat, TernaryFormat
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.entries: dict[type[Format], T] = {}

    def register(self, *types: type[Format]) -> Callable[[T], T]:
        def add(entry: T) -> T:
            for t in types:
                self.entries[t] = entry
            return entry

        return add

    def get(self, fmt: Format) -> T:
        """The entry for ``fmt`` (its canonical form's class or nearest base)."""
        for cls in type(fmt.canonical()).__mro__:
            if cls in self.entries:
                return self.entries[cls]
        known = ", ".join(sorted(t.__name__ for t in self.entries))
        raise ValueError(
            f"no {self.what} for format {fmt.name} ({type(fmt).__name__}); registered: {known}"
        )

    def __contains__(self, fmt: Format) -> bool:
        return any(cls in self.entries for cls in type(fmt.canonical()).__mro__)

    def __call__(self, fmt: Format, *args, **kwargs):
        """Call the entry (a function) with the canonical format first."""
        return self.get(fmt)(fmt.canonical(), *args, **kwargs)  # type: ignore[operator]


@dataclass(frozen=True)
class IntFormat(Format):
    """Integer grid of ``bits`` bits.

    signed: [-2^(b-1) + narrow, 2^(b-1) - 1]; unsigned: [0, 2^b - 1 - narrow]
    (the QONNX ``Quant`` convention). A 1-bit signed integer is bipolar (±1), as in
    QONNX; prefer :class:`BipolarFormat` for clarity.

    >>> IntFormat(8, narrow=True).min_value
    -127.0
    """

    kind: ClassVar[str] = "int"
    bits: int = 8
    signed: bool = True
    narrow: bool = False

    def __post_init__(self) -> None:
        _check_int("IntFormat", "bits", self.bits, 1, 32)
        _check_bool("IntFormat", "signed", self.signed)
        _check_bool("IntFormat", "narrow", self.narrow)
        if self.bits == 1 and self.narrow:
            raise ValueError("IntFormat.narrow is not allowed with bits=1 (a single level)")

    @property
    def is_integer(self) -> bool:
        return self.bits > 1 or not self.signed

    @property
    def integer_codes(self) -> bool:
        return True

    @property
    def is_bipolar(self) -> bool:
        return self.bits == 1 and self.signed

    @property
    def code_range(self) -> tuple[int, int]:
        return self.min_int, self.max_int

    def canonical(self) -> Format:
        return BipolarFormat() if self.is_bipolar else self

    @property
    def min_int(self) -> int:
        if self.bits == 1 and self.signed:
            return -1
        return -(2 ** (self.bits - 1)) + int(self.narrow) if self.signed else 0

    @property
    def max_int(self) -> int:
        if self.bits == 1 and self.signed:
            return 1
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1 - int(self.narrow)

    @property
    def min_value(self) -> float:
        return float(self.min_int)

    @property
    def max_value(self) -> float:
        return float(self.max_int)

    def levels(self) -> tuple[float, ...]:
        if self.bits == 1 and self.signed:
            return (-1.0, 1.0)
        if self.max_int - self.min_int + 1 > MAX_LEVELS:
            return super().levels()
        return tuple(float(v) for v in range(self.min_int, self.max_int + 1))

    @property
    def name(self) -> str:
        return f"{'' if self.signed else 'U'}INT{self.bits}{'n' if self.narrow else ''}"


@dataclass(frozen=True)
class MinifloatFormat(Format):
    """ExMy minifloat: 1 sign bit, E exponent bits, M mantissa bits.

    normal   (e > 0): (-1)^s · 2^(e - bias) · (1 + m / 2^M)
    subnormal (e = 0): (-1)^s · 2^(1 - bias) · (m / 2^M)   (only if has_subnormal)

    Reserved codes decide the largest finite value:
    - ``has_inf`` (IEEE style): the whole top exponent is reserved for inf/nan;
    - ``has_nan`` without inf (OCP "FN"): only the all-ones code is nan;
    - ``nan_is_negative_zero`` (the "FNUZ" variants): nan takes the -0 code, no
      value is lost.
    Without reserved codes: max = (2 - 2^-M) · 2^(2^E - 1 - bias).

    ``saturating`` (the default): values beyond ±max — ±inf included — clamp to
    ±max. Non-saturating (``saturating=False``, IEEE / ml_dtypes cast semantics):
    a value whose rounding (with unbounded exponent) exceeds max becomes ±inf
    when the format has inf, else nan (±inf inputs too); a format with neither
    inf nor nan has no code for an overflow, so ``saturating=False`` is refused.
    nan inputs stay nan either way.

    The quantizer computes in float32, so every format must fit in it: the
    largest value below 2^128 and the smallest normal 2^(1 − bias) at or above
    2^−126 (then the smallest subnormal 2^(1 − bias − M) ≥ 2^−149 is a float32
    too), i.e. bias ∈ [e_top − 127, 127] where e_top is the exponent code of
    the largest finite value; and the largest value must be positive.

    >>> MinifloatFormat(4, 3).max_value
    480.0
    >>> MinifloatFormat(5, 2, has_inf=True, has_nan=True).max_value
    57344.0
    >>> MinifloatFormat(4, 3, bias=1000)
    Traceback (most recent call last):
    ...
    ValueError: MinifloatFormat.bias must be in [-112, 127] for E4M3 (the quantizer computes in float32: the largest value must stay below 2^128 and the smallest normal 2^(1-bias) at or above 2^-126), got 1000
    """

    kind: ClassVar[str] = "minifloat"
    exponent_bits: int = 4
    mantissa_bits: int = 3
    bias: int | None = None
    has_subnormal: bool = True
    has_inf: bool = False
    has_nan: bool = False
    nan_is_negative_zero: bool = False
    saturating: bool = True

    def __post_init__(self) -> None:
        _check_int("MinifloatFormat", "exponent_bits", self.exponent_bits, 1, 8)
        _check_int("MinifloatFormat", "mantissa_bits", self.mantissa_bits, 0, 23)
        for name in ("has_subnormal", "has_inf", "has_nan", "nan_is_negative_zero", "saturating"):
            _check_bool("MinifloatFormat", name, getattr(self, name))
        if self.has_inf and not self.has_nan:
            raise ValueError("MinifloatFormat.has_inf requires has_nan (IEEE-style special codes)")
        if self.nan_is_negative_zero and (self.has_inf or not self.has_nan):
            raise ValueError(
                "MinifloatFormat.nan_is_negative_zero needs has_nan=True and has_inf=False"
            )
        if not self.saturating and not self.has_nan:
            raise ValueError(
                "MinifloatFormat.saturating=False needs has_inf or has_nan: without them "
                "the format has no code for a value beyond its range (qonnx refuses it too)"
            )
        top = self.max_code()
        if top is None or top == (0, 0):
            raise ValueError(
                f"MinifloatFormat E{self.exponent_bits}M{self.mantissa_bits} with these "
                "reserved codes (has_inf / has_nan / has_subnormal) has no positive finite "
                "value: use more exponent_bits or mantissa_bits, or reserve fewer codes"
            )
        self._check_bias(top[0])

    def _check_bias(self, e_top: int) -> None:
        """bias ∈ [e_top − 127, 127]: the range fits float32 (class docstring)."""
        if self.bias is None:
            object.__setattr__(self, "bias", 2 ** (self.exponent_bits - 1) - 1)
        lo, hi = max(e_top, 1) - 127, 127
        fits = (
            "the quantizer computes in float32: the largest value must stay below 2^128 "
            "and the smallest normal 2^(1-bias) at or above 2^-126"
        )
        em = f"E{self.exponent_bits}M{self.mantissa_bits}"
        if isinstance(self.bias, bool) or not isinstance(self.bias, int):
            raise ValueError(f"MinifloatFormat.bias must be an int, got {self.bias!r}")
        if lo > hi:
            raise ValueError(
                f"MinifloatFormat.bias: no bias fits {em} with these reserved codes ({fits}); "
                f"reserve the top exponent with has_inf=True or use fewer exponent_bits, "
                f"got bias={self.bias}"
            )
        if not lo <= self.bias <= hi:
            raise ValueError(
                f"MinifloatFormat.bias must be in [{lo}, {hi}] for {em} ({fits}), got {self.bias}"
            )

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def is_minifloat(self) -> bool:
        return True

    @property
    def signed(self) -> bool:
        return True

    def max_code(self) -> tuple[int, int] | None:
        """(exponent code, mantissa code) of the largest finite value."""
        e = 2**self.exponent_bits - 1 - int(self.has_inf)
        m = 2**self.mantissa_bits - 1
        if self.has_nan and not self.has_inf and not self.nan_is_negative_zero:
            m -= 1  # the all-ones code is nan
        if m < 0:
            e, m = e - 1, 2**self.mantissa_bits - 1
        if e < 0 or (e == 0 and not self.has_subnormal):
            return None
        return e, m

    @property
    def max_value(self) -> float:
        e, m = self.max_code()  # type: ignore[misc]
        if e == 0:
            return 2.0 ** (1 - self.bias) * m / 2**self.mantissa_bits
        return 2.0 ** (e - self.bias) * (1 + m / 2**self.mantissa_bits)

    @property
    def onnx_float8(self) -> str | None:
        """The ONNX float8 element type this format is (``"FLOAT8E4M3FN"``, …), or None.

        >>> FP8_E4M3FN.onnx_float8, FP8_E4M3.onnx_float8
        ('FLOAT8E4M3FN', None)
        """
        return ONNX_FLOAT8.get(self)

    @property
    def min_normal(self) -> float:
        return 2.0 ** (1 - self.bias)

    @property
    def min_exponent(self) -> int:
        """Exponent of the finest binade (subnormals share it): 1 - bias."""
        return 1 - self.bias

    def levels(self) -> tuple[float, ...]:
        if 2**self.bits > MAX_LEVELS:
            return super().levels()
        e_max, m_max = self.max_code()  # type: ignore[misc]
        mags = {0.0}
        for e in range(0, e_max + 1):
            for m in range(2**self.mantissa_bits):
                if e == e_max and m > m_max:
                    break
                if e == 0:
                    if self.has_subnormal:
                        mags.add(2.0 ** (1 - self.bias) * m / 2**self.mantissa_bits)
                else:
                    mags.add(2.0 ** (e - self.bias) * (1 + m / 2**self.mantissa_bits))
        pos = sorted(mags)
        return tuple([-v for v in reversed(pos[1:])] + pos)

    @property
    def name(self) -> str:
        suffix = ""
        if self.has_inf:
            suffix = ""
        elif self.nan_is_negative_zero:
            suffix = "FNUZ"
        elif self.has_nan:
            suffix = "FN"
        default_bias = self.bias == 2 ** (self.exponent_bits - 1) - 1
        bias = "" if default_bias else f"b{self.bias}"
        sub = "" if self.has_subnormal else "_nosub"
        sat = "" if self.saturating else "_nosat"
        return f"FP{self.bits}_E{self.exponent_bits}M{self.mantissa_bits}{suffix}{bias}{sub}{sat}"


@dataclass(frozen=True)
class PowerOfTwoFormat(Format):
    """Power-of-two codes (QKeras ``quantized_po2`` style).

    q = sign(x) · 2^clip(round(log2|x|), e_min, 0): one sign bit and (bits - 1)
    exponent bits, so 2^(bits-1) exponents e_min..0 (normalized so the largest
    magnitude is 1). With ``has_zero`` one exponent code is given up for zero.

    >>> PowerOfTwoFormat(3).levels()
    (-1.0, -0.5, -0.25, -0.125, 0.125, 0.25, 0.5, 1.0)
    """

    kind: ClassVar[str] = "pot"
    bits: int = 4
    has_zero: bool = False

    def __post_init__(self) -> None:
        _check_int("PowerOfTwoFormat", "bits", self.bits, 2, 9)
        _check_bool("PowerOfTwoFormat", "has_zero", self.has_zero)

    @property
    def signed(self) -> bool:
        return True

    @property
    def n_exponents(self) -> int:
        return 2 ** (self.bits - 1) - int(self.has_zero)

    @property
    def min_exponent(self) -> int:
        return -(self.n_exponents - 1)

    @property
    def max_value(self) -> float:
        return 1.0

    def levels(self) -> tuple[float, ...]:
        mags = [2.0**e for e in range(self.min_exponent, 1)]
        zero = [0.0] if self.has_zero else []
        return tuple([-m for m in reversed(mags)] + zero + mags)

    @property
    def code_multiplier(self) -> int:
        return 2 ** (-self.min_exponent)

    @property
    def name(self) -> str:
        return f"POT{self.bits}{'z' if self.has_zero else ''}"


def _normalized(mags: set[float]) -> tuple[float, ...]:
    top = max(mags)
    return tuple(sorted(m / top for m in mags))


@dataclass(frozen=True)
class _LevelFormat(Format):
    """A signed format given by its magnitude levels (normalized to max 1)."""

    bits: int = 4

    min_bits: ClassVar[int] = 2

    def __post_init__(self) -> None:
        _check_int(type(self).__name__, "bits", self.bits, self.min_bits, 8)

    @property
    def signed(self) -> bool:
        return True

    @property
    def max_value(self) -> float:
        return 1.0

    def magnitudes(self) -> tuple[float, ...]:  # pragma: no cover
        raise NotImplementedError

    def levels(self) -> tuple[float, ...]:
        mags = self.magnitudes()
        return tuple([-m for m in reversed(mags) if m > 0] + list(mags))

    @property
    def code_multiplier(self) -> int:
        # magnitudes are integers over their smallest non-zero one (sums of powers of
        # two, normalized); the smallest D that makes them all integers
        mags = [m for m in self.magnitudes() if m > 0]
        for d in range(1, 1 << 16):
            if all(abs(m * d - round(m * d)) < 1e-9 for m in mags):
                return d
        raise ValueError(  # pragma: no cover - every level set here has one
            f"{self.name}: levels have no small common denominator"
        )


@dataclass(frozen=True)
class APoTFormat(_LevelFormat):
    """Additive powers-of-two (Li et al., ICLR 2020), signed, max level 1.

    Magnitudes are sums of k=2 power-of-two terms. With an even number of magnitude
    bits b' = bits - 1 the paper's construction is used: n = b'/2 terms, term i from
    {0, 2^-i, 2^-(i+n), 2^-(i+2n)}, normalized. With odd b' (e.g. 4-bit), the
    published 8-magnitude set {0, 1, 2, 3, 4, 6, 8, 10}/10 (sums of at most two
    powers of two; REFERENCE.md §8) is generalized as the 2^b' smallest sums
    2^i + 2^j (i ≥ j, plus 0 and single powers) that cover the range evenly.

    >>> APoTFormat(4).magnitudes()
    (0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
    """

    kind: ClassVar[str] = "apot"

    def magnitudes(self) -> tuple[float, ...]:
        b = self.bits - 1
        if b % 2 == 0:
            n = b // 2
            terms = [[0.0] + [2.0 ** -(i + j * n) for j in range(3)] for i in range(n)]
            return _normalized({sum(c) for c in itertools.product(*terms)})
        # Odd magnitude bits: integers that are a power of two or a sum of two
        # powers of two, in increasing order, taking every value up to 4 and
        # every even one above it (the published 4-bit set for b' = 3).
        wanted = 2**b
        values: list[int] = [0]
        v = 1
        while len(values) < wanted:
            ones = bin(v).count("1")
            if ones <= 2 and (v <= 4 or v % 2 == 0):
                values.append(v)
            v += 1
        return _normalized({float(x) for x in values})

    @property
    def name(self) -> str:
        return f"APOT{self.bits}"


@dataclass(frozen=True)
class MSQFormat(_LevelFormat):
    """MSQ / SP2 (Chang et al., HPCA 2021): sums of two power-of-two terms, ≤ 1.

    q1 ∈ {0} ∪ {2^-i : i < n}, q2 ∈ {0} ∪ {2^-(n+j) : j < n}, magnitudes are the
    sums ≤ 1, with the largest n whose level count fits in bits - 1 magnitude bits.
    4-bit: {0, 1, 2, 4, 5, 6, 8}/8 (REFERENCE.md §8).

    >>> MSQFormat(4).magnitudes()
    (0.0, 0.125, 0.25, 0.5, 0.625, 0.75, 1.0)
    """

    kind: ClassVar[str] = "msq"
    min_bits: ClassVar[int] = 3

    def magnitudes(self) -> tuple[float, ...]:
        b = self.bits - 1
        best: set[float] = set()
        for n in range(1, 2**b + 1):
            q1 = [0.0] + [2.0**-i for i in range(n)]
            q2 = [0.0] + [2.0 ** -(n + j) for j in range(n)]
            mags = {a + c for a in q1 for c in q2 if a + c <= 1.0}
            if len(mags) > 2**b:
                break
            best = mags
        return tuple(sorted(best))

    @property
    def name(self) -> str:
        return f"MSQ{self.bits}"


@dataclass(frozen=True)
class BipolarFormat(Format):
    """Binary ±1 (QONNX ``BipolarQuant``): q = +1 if x ≥ 0 else -1.

    >>> BipolarFormat().levels()
    (-1.0, 1.0)
    """

    kind: ClassVar[str] = "bipolar"

    @property
    def bits(self) -> int:
        return 1

    @property
    def integer_codes(self) -> bool:
        return True

    @property
    def is_bipolar(self) -> bool:
        return True

    @property
    def signed(self) -> bool:
        return True

    @property
    def max_value(self) -> float:
        return 1.0

    def levels(self) -> tuple[float, ...]:
        return (-1.0, 1.0)

    @property
    def name(self) -> str:
        return "BIPOLAR"


@dataclass(frozen=True)
class TernaryFormat(Format):
    """Ternary {-1, 0, +1}: a 2-bit narrow signed integer grid.

    >>> TernaryFormat().levels()
    (-1.0, 0.0, 1.0)
    """

    kind: ClassVar[str] = "ternary"

    @property
    def bits(self) -> int:
        return 2

    @property
    def signed(self) -> bool:
        return True

    @property
    def is_integer(self) -> bool:
        return True

    @property
    def narrow(self) -> bool:
        return True

    @property
    def max_value(self) -> float:
        return 1.0

    def levels(self) -> tuple[float, ...]:
        return (-1.0, 0.0, 1.0)

    @property
    def name(self) -> str:
        return "TERNARY"


# Named minifloat presets (REFERENCE.md §3).
FP8_E4M3 = MinifloatFormat(4, 3)  # no reserved codes: max 480
FP8_E4M3FN = MinifloatFormat(4, 3, has_nan=True)  # OCP: nan only, max 448
FP8_E5M2 = MinifloatFormat(5, 2, has_inf=True, has_nan=True)  # OCP, IEEE-like: max 57344
FP8_E4M3FNUZ = MinifloatFormat(4, 3, bias=8, has_nan=True, nan_is_negative_zero=True)  # 240
FP8_E5M2FNUZ = MinifloatFormat(5, 2, bias=16, has_nan=True, nan_is_negative_zero=True)  # 57344
FP6_E3M2 = MinifloatFormat(3, 2)  # max 28
FP6_E2M3 = MinifloatFormat(2, 3)  # max 7.5
FP4_E2M1 = MinifloatFormat(2, 1)  # max 6

#: The ONNX float8 element types (subnormals, saturating casts), by the format each is.
ONNX_FLOAT8: dict[Format, str] = {
    FP8_E4M3FN: "FLOAT8E4M3FN",
    FP8_E4M3FNUZ: "FLOAT8E4M3FNUZ",
    FP8_E5M2: "FLOAT8E5M2",
    FP8_E5M2FNUZ: "FLOAT8E5M2FNUZ",
}

FORMAT_TYPES: dict[str, type[Format]] = {
    cls.kind: cls
    for cls in (
        IntFormat,
        MinifloatFormat,
        PowerOfTwoFormat,
        APoTFormat,
        MSQFormat,
        BipolarFormat,
        TernaryFormat,
    )
}


def check_positive_finite(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


_PRESETS = {
    "FP8_E4M3": FP8_E4M3,
    "FP8_E4M3FN": FP8_E4M3FN,
    "FP8_E5M2": FP8_E5M2,
    "FP8_E4M3FNUZ": FP8_E4M3FNUZ,
    "FP8_E5M2FNUZ": FP8_E5M2FNUZ,
    "FP6_E3M2": FP6_E3M2,
    "FP6_E2M3": FP6_E2M3,
    "FP4_E2M1": FP4_E2M1,
}
_FORMS = (
    "int4, uint8, int8n (narrow), bipolar, ternary, pot4, pot4z (with zero), apot4, msq4, "
    "a preset (" + ", ".join(_PRESETS) + ") or a minifloat e2m1 / fp6_e3m2 / e4m3fn "
    "(nan code) / e4m3fnuz, optionally with b<bias>, _nosub, _nosat"
)


def parse_format(text: str) -> Format:
    """A format from its short name (the command line's and the sweep's spelling).

    FP8 presets keep their OCP meaning (``fp8_e5m2`` has inf and nan); any other
    ``eXmY`` has no reserved codes (``fn``: the all-ones code is nan).

    >>> parse_format("int4n"), parse_format("UINT8").name, parse_format("e2m1").name
    (IntFormat(bits=4, signed=True, narrow=True), 'UINT8', 'FP4_E2M1')
    >>> parse_format("fp8_e4m3fn") is FP8_E4M3FN, parse_format("e3m2_nosub").has_subnormal
    (True, False)
    >>> parse_format("int")
    Traceback (most recent call last):
    ...
    ValueError: unknown format 'int': use int4, uint8, int8n (narrow), bipolar, ternary, pot4, pot4z (with zero), apot4, msq4, a preset (FP8_E4M3, FP8_E4M3FN, FP8_E5M2, FP8_E4M3FNUZ, FP8_E5M2FNUZ, FP6_E3M2, FP6_E2M3, FP4_E2M1) or a minifloat e2m1 / fp6_e3m2 / e4m3fn (nan code) / e4m3fnuz, optionally with b<bias>, _nosub, _nosat
    """
    t = text.strip().lower() if isinstance(text, str) else ""
    if t.upper() in _PRESETS:
        return _PRESETS[t.upper()]
    if t in ("bipolar", "ternary"):
        return BipolarFormat() if t == "bipolar" else TernaryFormat()
    if m := re.fullmatch(r"(u?)int(\d+)(n?)", t):
        return IntFormat(int(m[2]), signed=not m[1], narrow=bool(m[3]))
    if m := re.fullmatch(r"(pot|apot|msq)(\d+)(z?)", t):
        cls = {"pot": PowerOfTwoFormat, "apot": APoTFormat, "msq": MSQFormat}[m[1]]
        if m[3] and cls is not PowerOfTwoFormat:
            raise ValueError(f"unknown format {text!r}: only pot takes the z (zero) suffix")
        return cls(int(m[2]), has_zero=True) if m[3] else cls(int(m[2]))
    if m := re.fullmatch(r"(?:fp(\d+)_)?e(\d)m(\d+)(fnuz|fn)?(?:b(-?\d+))?(_nosub)?(_nosat)?", t):
        e, mant = int(m[2]), int(m[3])
        if m[1] and int(m[1]) != 1 + e + mant:
            raise ValueError(f"format {text!r}: fp{m[1]} is not 1 + {e} + {mant} bits")
        return MinifloatFormat(
            e,
            mant,
            bias=None if m[5] is None else int(m[5]),
            has_nan=bool(m[4]),
            nan_is_negative_zero=m[4] == "fnuz",
            has_subnormal=not m[6],
            saturating=not m[7],
        )
    raise ValueError(f"unknown format {text!r}: use {_FORMS}")
