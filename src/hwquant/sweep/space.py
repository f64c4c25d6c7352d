"""The design space of a sweep: which (weight format, activation format) points exist.

Three format families, each point with weights and activations from the same family:

- ``int``: integers (narrow-range signed weights, signed activations that
  :func:`hwquant.quantize` makes unsigned where the graph proves them non-negative);
- ``fp``: every minifloat ExMy with E + M + 1 = bits and E ≥ 2, with subnormals, plus
  the OCP FP8 presets (E4M3FN, E5M2) at 8 bits; every weight ExMy is paired with every
  activation ExMy;
- ``fp-nosub``: the same ExMy without subnormals (the smallest normal value is the
  smallest non-zero one).

E = 1 is left out: with one exponent bit and subnormals, E1My is an integer grid with
a scale, which the ``int`` family already covers.

>>> [f.name for f in minifloats(5, subnormal=True)]
['FP5_E2M2', 'FP5_E3M1', 'FP5_E4M0']
>>> pts = design_space(["digits-cnn"], w_bits=[4], a_bits=[4], families=["int", "fp"])
>>> [p.key for p in pts][:3]
['digits-cnn/int/W4/A4/INT4n/INT4', 'digits-cnn/fp/W4/A4/FP4_E2M1/FP4_E2M1', 'digits-cnn/fp/W4/A4/FP4_E2M1/FP4_E3M0']
>>> len(pts)
5
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hwquant.spec.formats import FP8_E4M3FN, FP8_E5M2, Format, IntFormat, MinifloatFormat

__all__ = [
    "FAMILIES",
    "MAX_BITS",
    "MIN_BITS",
    "Point",
    "design_space",
    "formats",
    "label",
    "minifloats",
]

FAMILIES = ("int", "fp", "fp-nosub")
MIN_BITS, MAX_BITS = 3, 16


@dataclass(frozen=True)
class Point:
    """One point: a model with its weight and activation formats."""

    model: str
    family: str
    weights: Format
    acts: Format

    @property
    def w_bits(self) -> int:
        return self.weights.bits

    @property
    def a_bits(self) -> int:
        return self.acts.bits

    @property
    def key(self) -> str:
        """Unique, stable name of the point (the results file's key)."""
        return (
            f"{self.model}/{self.family}/W{self.w_bits}/A{self.a_bits}/"
            f"{label(self.weights)}/{label(self.acts)}"
        )


def label(fmt: Format) -> str:
    """The format's name, with ``_ocp`` where it reserves inf/nan codes: the OCP
    ``FP8_E5M2`` (inf and nan) and the plain E5M2 (no reserved codes) share a name.

    >>> label(FP8_E5M2), label(MinifloatFormat(5, 2))
    ('FP8_E5M2_ocp', 'FP8_E5M2')
    """
    reserved = getattr(fmt, "has_inf", False) or getattr(fmt, "has_nan", False)
    return f"{fmt.name}_ocp" if reserved else fmt.name


def minifloats(bits: int, subnormal: bool) -> list[MinifloatFormat]:
    """Every ExMy with E + M + 1 = ``bits`` and E ≥ 2 (bias 2^(E−1) − 1, no inf/nan
    codes, saturating), and with subnormals also the OCP FP8 presets at 8 bits."""
    out = [MinifloatFormat(e, bits - 1 - e, has_subnormal=subnormal) for e in range(2, bits)]
    if bits == 8 and subnormal:
        out += [FP8_E4M3FN, FP8_E5M2]
    return out


def formats(family: str, bits: int, role: str) -> list[Format]:
    """The formats of ``family`` at ``bits`` for ``role`` (``"weights"``/``"acts"``)."""
    if family == "int":
        return [IntFormat(bits, narrow=role == "weights")]
    if family in ("fp", "fp-nosub"):
        return list(minifloats(bits, subnormal=family == "fp"))
    raise ValueError(f"unknown format family {family!r}; known: {', '.join(FAMILIES)}")


def _bits(name: str, values: Iterable[int]) -> list[int]:
    out = sorted(set(int(b) for b in values))
    if not out:
        raise ValueError(f"{name}: no bit widths given")
    bad = [b for b in out if not MIN_BITS <= b <= MAX_BITS]
    if bad:
        raise ValueError(f"{name}: bit width {bad[0]} is outside {MIN_BITS}..{MAX_BITS}")
    return out


def design_space(
    models: Sequence[str],
    w_bits: Iterable[int] = range(3, 9),
    a_bits: Iterable[int] = range(3, 9),
    families: Sequence[str] = FAMILIES,
) -> list[Point]:
    """Every point of the sweep, in a fixed order (model, weight bits, activation bits,
    family, weight format, activation format)."""
    wb, ab = _bits("weight bits", w_bits), _bits("activation bits", a_bits)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown format family {unknown[0]!r}; known: {', '.join(FAMILIES)}")
    if not models:
        raise ValueError("no models given")
    return [
        Point(m, fam, wf, af)
        for m in models
        for w in wb
        for a in ab
        for fam in families
        for wf in formats(fam, w, "weights")
        for af in formats(fam, a, "acts")
    ]
