"""LayerRecord: what the cost model needs to know about one weight layer.

Both readers (a torch model walked with hooks, a QONNX file) produce the same
records, so the estimates cannot drift apart between them.

A layer is seen as a matrix-vector unit: each of ``n_pix`` input vectors of length
MW is multiplied by an MH × MW matrix (for a convolution, MW = C_in/groups·k, MH =
C_out, n_pix = output positions; a depthwise convolution is a VVAU with MW = k, MH =
C). ``fan_in`` is the accumulation length K of one output.

>>> from hwquant.spec import IntFormat, PowerOfTwoFormat
>>> integer_grid(IntFormat(4)), integer_grid(PowerOfTwoFormat(4))
((1.0, -8, 7), (128.0, -128, 128))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hwquant.spec.formats import (
    Format,
)

__all__ = ["LayerRecord", "format_bits", "integer_grid", "integer_weight_bits"]


@dataclass
class LayerRecord:
    """One weight layer, as seen by the cost model (see the module docstring)."""

    name: str
    op: str  # "linear" | "conv" | "depthwise_conv" | "conv_transpose" | "matmul"
    MW: int
    MH: int
    n_pix: int
    fan_in: int
    n_weights: int
    n_zero_weights: int
    weight_format: Format | None  # None: float weights
    input_format: Format | None  # None: float input
    out_bits: int | None = None  # bits of the activation quantizer that follows (thresholds)
    q: np.ndarray | None = None  # [C_out, K] integer weights on the integer grid
    a2q_bits: int | None = None  # accumulator width guaranteed by A2Q training
    input_elems: int = 0
    output_elems: int = 0
    notes: list[str] = field(default_factory=list)
    # [MH, MW] bool, True where the (quantized) weight is non-zero, columns in FINN's
    # order (kernel position major, input channel minor); None: not known (then the
    # FINN model counts every PE×SIMD tile as dense)
    nonzero: np.ndarray | None = None

    def tile_density(self, pe: int, simd: int) -> float:
        """Fraction of the PE×SIMD tiles of the MH × MW matrix (PE consecutive rows ×
        SIMD consecutive columns, one weight-memory word and one MVAU step each) that
        hold a non-zero weight; 1.0 when the sparsity pattern is unknown.

        >>> r = LayerRecord("l", "linear", 4, 2, 1, 4, 8, 4, None, None)
        >>> r.nonzero = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=bool)
        >>> r.tile_density(2, 2), r.tile_density(1, 1)
        (0.5, 0.375)
        """
        nz = self.nonzero
        if nz is None or nz.shape != (self.MH, self.MW):
            return 1.0
        tiles = nz.reshape(self.MH // pe, pe, self.MW // simd, simd).any(axis=(1, 3))
        return float(tiles.mean())

    @property
    def macs(self) -> int:
        return self.MW * self.MH * self.n_pix

    @property
    def pruned_fraction(self) -> float:
        return self.n_zero_weights / self.n_weights if self.n_weights else 0.0


def integer_grid(fmt: Format | None) -> tuple[float, int, int] | None:
    """(c, lo, hi): the format's levels times c are the integers lo..hi (a superset),
    or None when the format has no small integer grid (float, minifloat).

    Integer formats have c = 1; power-of-two, APoT and MSQ levels are integers after
    dividing by their smallest non-zero magnitude (4-bit PoT: c = 2^7).
    """
    if fmt is None or fmt.is_minifloat:
        return None
    if fmt.integer_codes:
        return 1.0, *fmt.code_range
    levels = np.asarray(fmt.levels(), dtype=np.float64)
    smallest = float(np.abs(levels[levels != 0]).min())
    c = 1.0 / smallest
    ints = levels * c
    if np.abs(ints - np.round(ints)).max() > 1e-6:
        return None
    return c, round(float(ints.min())), round(float(ints.max()))


def integer_weight_bits(fmt: Format) -> int:
    """Signed width M of the integers a format's levels map to (for accumulator bounds):
    the format's own bits for integers, else ⌈log2(max + 1)⌉ + 1 (4-bit PoT → 9)."""
    if fmt.integer_codes:
        return fmt.bits
    grid = integer_grid(fmt)
    if grid is None:
        return fmt.bits
    _, lo, hi = grid
    return max(fmt.bits, math.ceil(math.log2(max(abs(lo), hi) + 1)) + 1)


def format_bits(fmt: Format | None, float_bits: int) -> int:
    """Storage / datapath width of a format; float operands count ``float_bits``."""
    return float_bits if fmt is None else fmt.bits
