"""Pure cost formulas: operation counts, accumulator widths, FPGA resources.

Every function states its formula and where it comes from (``REFERENCE.md`` section
or paper). Notation as in REFERENCE.md: K (or MW) fan-in, MH fan-out, N input bits,
M / W weight bits, A input bits, P accumulator bits, PE / SIMD the folding.

Example:
    >>> finn_mvau_luts(64, 32, 4, 8, 4, 4, acc_bits=datatype_bound_bits(64, 4, 4, False))
    1738
    >>> datatype_bound_bits(4608, 8, 8, signed_input=False)
    29
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BRAM18_SHAPES",
    "DSP_FAMILIES",
    "MINIFLOAT_MAC_MEASURED",
    "SHIFT_PE_MEASURED",
    "LutBreakdown",
    "barrel_shifter_luts",
    "bops",
    "bram18_count",
    "calibrated_minifloat_cost",
    "datatype_bound_bits",
    "divisors",
    "dsp_count",
    "exact_accumulator_bits",
    "finn_lut_multiplier",
    "finn_mvau_bram18",
    "finn_mvau_luts",
    "int_mac_acc_bits",
    "mac_bops",
    "mac_lut_cost",
    "minifloat_mac_acc_bits",
    "minifloat_mac_relative_cost",
    "mvau_cycles",
    "mvau_lut_breakdown",
    "phi",
    "shift_pe_lane_luts",
    "shift_pe_ratio",
    "threshold_bram18",
    "weight_bound_bits",
]


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


# --------------------------------------------------------------------------- operation counts
def bops(m: int, n: int, b_a: int, b_w: int, pruned_fraction: float = 0.0) -> float:
    """Bit operations of a layer with fan-in ``n`` and ``m`` outputs (REFERENCE.md §6,
    Hawks et al. 2021, after Baskin et al.):

        BOPs = m·n·((1 − f_p)·b_a·b_w + b_a + b_w + log2 n)

    the multiplications (discounted by the pruned fraction f_p) plus the additions
    of the (b_a + b_w + log2 n)-bit accumulator. For a convolution, m counts every
    output value (channels × positions).

    >>> bops(64, 64, 8, 8)
    352256.0
    >>> bops(64, 64, 8, 8, pruned_fraction=0.5)
    221184.0
    """
    if not 0.0 <= pruned_fraction <= 1.0:
        raise ValueError(f"pruned_fraction must be in [0, 1], got {pruned_fraction}")
    _positive("n", n)
    return float(m * n * ((1.0 - pruned_fraction) * b_a * b_w + b_a + b_w + math.log2(n)))


def mac_bops(macs: float, b_a: int, b_w: int, pruned_fraction: float = 0.0) -> float:
    """Multiplication-only bit operations, the convention of qonnx's ``inference_cost``
    (REFERENCE.md §4): BOPs = (1 − f_p) · MACs · b_a · b_w.

    >>> mac_bops(1000, 4, 4, 0.25)
    12000.0
    """
    return float((1.0 - pruned_fraction) * macs * b_a * b_w)


# --------------------------------------------------------------------------- accumulators
def phi(a: float) -> float:
    """φ(a) = log2(1 + 2^−a) (REFERENCE.md §1, A2Q eq. for the exact bound).

    >>> phi(0.0)
    1.0
    """
    return math.log2(1.0 + 2.0**-a)


def datatype_bound_bits(K: int, N: int, M: int, signed_input: bool) -> int:
    """Smallest signed accumulator that can never overflow for *any* M-bit weights
    and N-bit inputs (REFERENCE.md §1, Colbert et al. 2023, data-type bound):

        α = log2(K) + N + M − 1 − 1_s ;  P = ⌈α + φ(α) + 1⌉

    >>> datatype_bound_bits(4608, 8, 8, signed_input=False), datatype_bound_bits(4608, 8, 8, True)
    (29, 28)
    """
    _positive("K", K)
    alpha = math.log2(K) + N + M - 1 - int(signed_input)
    return math.ceil(alpha + phi(alpha) + 1)


def weight_bound_bits(l1_norm: float, N: int, signed_input: bool) -> int:
    """Accumulator needed by one output channel with integer weights of L1 norm ‖q‖₁
    (REFERENCE.md §1, A2Q weight-based bound):

        β = log2(‖q‖₁) + N − 1_s ;  P = ⌈β + φ(β) + 1⌉

    An all-zero channel needs a single bit.

    >>> weight_bound_bits(127, 8, signed_input=False)
    16
    """
    if l1_norm <= 0:
        return 1
    beta = math.log2(l1_norm) + N - int(signed_input)
    return math.ceil(beta + phi(beta) + 1)


def exact_accumulator_bits(q: np.ndarray, x_min: int, x_max: int) -> tuple[int, bool]:
    """Exact worst case of trained integer weights ``q`` ([channels, K]) over inputs in
    [x_min, x_max], as FINN sizes accumulators (REFERENCE.md §1):

        acc_max = Σ q_i·(x_max if q_i > 0 else x_min), acc_min likewise;
        bits = ⌈log2(max(−acc_min, acc_max + 1))⌉ + 1   (signed)
             = ⌈log2(acc_max + 1)⌉                     (unsigned, if acc_min ≥ 0)

    Returns (bits, signed), the widest channel.

    >>> exact_accumulator_bits(np.array([[1, -2, 3]]), 0, 15)  # acc in [-30, 60]
    (7, True)
    """
    q = np.asarray(q, dtype=np.float64).reshape(len(q), -1)
    pos, neg = np.clip(q, 0, None), np.clip(q, None, 0)
    acc_max = float((pos * x_max + neg * x_min).sum(1).max())
    acc_min = float((pos * x_min + neg * x_max).sum(1).min())
    if acc_min >= 0:
        return max(1, math.ceil(math.log2(acc_max + 1))), False
    return math.ceil(math.log2(max(-acc_min, acc_max + 1))) + 1, True


def int_mac_acc_bits(a: int, b: int, n: int) -> int:
    """Integer MAC accumulator width used in the minifloat study (REFERENCE.md §3,
    Aggarwal et al. 2024): a + b + ⌈log2 n⌉ + 1.

    >>> int_mac_acc_bits(8, 8, 64)
    23
    """
    _positive("n", n)
    return a + b + math.ceil(math.log2(n)) + 1


def minifloat_mac_acc_bits(e_a: int, m_a: int, e_b: int, m_b: int, n: int) -> int:
    """Exact (Kulisch) accumulator of n products of an E_aM_a and an E_bM_b minifloat
    (REFERENCE.md §3, Aggarwal et al. 2024):

        2^e_a + m_a + 2^e_b + m_b + ⌈log2 n⌉ − 1

    >>> minifloat_mac_acc_bits(4, 3, 4, 3, 64)
    43
    """
    _positive("n", n)
    return 2**e_a + m_a + 2**e_b + m_b + math.ceil(math.log2(n)) - 1


# --------------------------------------------------------------------------- FINN MVAU
def finn_lut_multiplier(W: int, A: int) -> int:
    """LUTs of one W×A multiplier built from LUTs (REFERENCE.md §5, FINN-R):
    (2⌈(W+A)/6⌉ − 1)·(W+A).

    >>> finn_lut_multiplier(4, 4)
    24
    """
    return (2 * math.ceil((W + A) / 6) - 1) * (W + A)


@dataclass(frozen=True)
class LutBreakdown:
    """The terms of the FINN MVAU LUT estimate, each already multiplied by 1.1·PE
    (``base`` and ``weights`` are not); ``total`` truncates like FINN."""

    base: float
    mult: float
    addertree: float
    acc: float
    thresholds: float
    weights: float

    @property
    def total(self) -> int:
        parts = (self.base, self.mult, self.addertree, self.acc, self.thresholds, self.weights)
        return int(sum(parts))

    def to_dict(self) -> dict[str, float]:
        return {
            k: getattr(self, k)
            for k in ("base", "mult", "addertree", "acc", "thresholds", "weights")
        } | {"total": self.total}


def mvau_lut_breakdown(
    MW: int,
    MH: int,
    PE: int,
    SIMD: int,
    W: int,
    A: int,
    acc_bits: int,
    *,
    mult_in_dsp: bool = False,
    out_bits: int | None = None,
    weights_in_lutram: bool = False,
    thresholds_in_lutram: bool = True,
) -> LutBreakdown:
    """FINN MVAU (HLS backend) LUT estimate, term by term (REFERENCE.md §5, FINN-R,
    Blott et al. 2018):

        mult = SIMD·(2⌈(W+A)/6⌉ − 1)·(W+A)        (0 when multipliers are DSPs)
        addertree = (W+A)·(2·SIMD − 1);  acc = P
        thr = (2^B − 1)·P·⌈(MH/PE)/64⌉, comp = (2^B − 1)·P   (B output bits, if thresholds)
        LUT = 300 + 1.1·PE·(mult + addertree + acc + thr + comp) + c2,
        c2 = PE·SIMD·W·⌈(MW·MH/(PE·SIMD))/64⌉ when weights sit in LUTRAM.

    As in FINN, thr and comp count only when the thresholds sit in LUTRAM.

    >>> mvau_lut_breakdown(64, 32, 4, 8, 4, 4, 15).total
    1738
    """
    for name, v in (("MW", MW), ("MH", MH), ("PE", PE), ("SIMD", SIMD)):
        _positive(name, v)
    mult = 0 if mult_in_dsp else SIMD * finn_lut_multiplier(W, A)
    addertree = (W + A) * (2 * SIMD - 1)
    thr = comp = 0
    if out_bits is not None and thresholds_in_lutram:
        levels = 2**out_bits - 1
        thr = levels * acc_bits * math.ceil((MH / PE) / 64)
        comp = levels * acc_bits
    k = 1.1 * PE
    c2 = PE * SIMD * W * math.ceil((MW * MH / (PE * SIMD)) / 64) if weights_in_lutram else 0
    return LutBreakdown(300.0, k * mult, k * addertree, k * acc_bits, k * (thr + comp), float(c2))


def finn_mvau_luts(
    MW: int,
    MH: int,
    PE: int,
    SIMD: int,
    W: int,
    A: int,
    acc_bits: int,
    **options: bool | int | None,
) -> int:
    """Total LUTs of a FINN MVAU: ``mvau_lut_breakdown(...).total`` with the same
    keyword options (mult_in_dsp, out_bits, weights_in_lutram, thresholds_in_lutram);
    see :func:`mvau_lut_breakdown` (REFERENCE.md §5).

    Check (REFERENCE.md §5): MW=64, MH=32, PE=4, SIMD=8, W=A=4, unsigned input, P from
    the data-type bound (15) → 1738.

    >>> finn_mvau_luts(64, 32, 4, 8, 4, 4, 15)
    1738
    """
    return mvau_lut_breakdown(MW, MH, PE, SIMD, W, A, acc_bits, **options).total


#: BRAM18 aspect ratios (depth, width) in simple-dual-port mode (Xilinx UG573).
BRAM18_SHAPES: tuple[tuple[int, int], ...] = (
    (16384, 1),
    (8192, 2),
    (4096, 4),
    (2048, 9),
    (1024, 18),
    (512, 36),
)


def bram18_count(depth: int, width: int) -> int:
    """BRAM18 blocks for a depth×width memory: the cheapest aspect ratio (UG573),
    min over (d, w) of ⌈depth/d⌉·⌈width/w⌉ — the memory model of FINN-R's BRAM estimate.

    >>> bram18_count(64, 128), bram18_count(2048, 9), bram18_count(2049, 9)
    (4, 1, 2)
    """
    if depth <= 0 or width <= 0:
        return 0
    return min(math.ceil(depth / d) * math.ceil(width / w) for d, w in BRAM18_SHAPES)


def finn_mvau_bram18(MW: int, MH: int, PE: int, SIMD: int, W: int) -> int:
    """BRAM18 for an MVAU's weights (REFERENCE.md §5, FINN-R): a memory of depth
    MW·MH/(PE·SIMD) and width PE·SIMD·W, see :func:`bram18_count`.

    >>> finn_mvau_bram18(64, 32, 4, 8, 4)
    4
    """
    return bram18_count(MW * MH // (PE * SIMD), PE * SIMD * W)


def threshold_bram18(MH: int, PE: int, out_bits: int, acc_bits: int) -> int:
    """BRAM18 for an MVAU's thresholds when they sit in BRAM: per PE, MH/PE channels of
    2^B − 1 thresholds of P bits, i.e. a memory of depth MH/PE and width
    PE·(2^B − 1)·P (:func:`bram18_count`; hwquant's model).

    >>> threshold_bram18(32, 4, 4, 15)  # depth 8, width 900: 25 × 512x36
    25
    """
    return bram18_count(MH // PE, PE * (2**out_bits - 1) * acc_bits)


def mvau_cycles(MW: int, MH: int, PE: int, SIMD: int, n_pix: int = 1) -> int:
    """Cycles per frame of an MVAU (REFERENCE.md §5): (MH/PE)·(MW/SIMD) per input
    vector, times the number of vectors (output positions of a convolution).

    >>> mvau_cycles(64, 32, 4, 8), mvau_cycles(9, 16, 16, 9, n_pix=64)
    (64, 64)
    """
    return n_pix * (MH // PE) * (MW // SIMD)


def divisors(n: int) -> list[int]:
    """Ascending divisors of n (the legal PE / SIMD values for a dimension n).

    >>> divisors(12)
    [1, 2, 3, 4, 6, 12]
    """
    _positive("n", n)
    return [d for d in range(1, n + 1) if n % d == 0]


# --------------------------------------------------------------------------- DSP blocks
#: Signed multiplier ports (a, b) per DSP family (UG479 DSP48E1, UG579 DSP48E2, AM004 DSP58).
DSP_FAMILIES: dict[str, tuple[int, int]] = {
    "DSP48E1": (25, 18),
    "DSP48E2": (27, 18),
    "DSP58": (27, 24),
}


def dsp_count(PE: int, SIMD: int, W: int, A: int, family: str, signed_input: bool = False) -> int:
    """DSP blocks for PE·SIMD parallel W×A multipliers on a device family.

    The input needs A + 1 signed bits if it is unsigned (A_s). Packing:

    - DSP58: INT8 dot-product mode, 3 products (8-bit × 9-bit) per block along SIMD
      (AM004) → PE·⌈SIMD/3⌉ when W ≤ 8 and A_s ≤ 9;
    - DSP48E2: two products sharing one operand in the 27-bit pre-adder (Xilinx WP486,
      INT8 packing) → ⌈PE/2⌉·SIMD when W ≤ 8 and A_s ≤ 9;
    - otherwise one product per block, or ⌈W/a⌉·⌈A_s/b⌉ blocks (best orientation)
      when an operand is wider than the multiplier port a×b.

    >>> [dsp_count(4, 8, 8, 8, f) for f in ("DSP48E1", "DSP48E2", "DSP58")]
    [32, 16, 12]
    """
    if family not in DSP_FAMILIES:
        raise ValueError(f"unknown DSP family {family!r}; known: {sorted(DSP_FAMILIES)}")
    a_s = A + (0 if signed_input else 1)
    if W <= 8 and a_s <= 9:
        if family == "DSP58":
            return PE * math.ceil(SIMD / 3)
        if family == "DSP48E2":
            return math.ceil(PE / 2) * SIMD
    pa, pb = DSP_FAMILIES[family]
    tiles = min(math.ceil(W / pa) * math.ceil(a_s / pb), math.ceil(W / pb) * math.ceil(a_s / pa))
    return PE * SIMD * tiles


# --------------------------------------------------------------------------- minifloat MAC
def mac_lut_cost(a: int, b: int, n: int) -> int:
    """LUTs of one integer a×b MAC accumulating n products: FINN's LUT multiplier
    (REFERENCE.md §5) plus an accumulator of a + b + ⌈log2 n⌉ + 1 bits (§3).

    >>> mac_lut_cost(8, 8, 64)
    103
    """
    return finn_lut_multiplier(a, b) + int_mac_acc_bits(a, b, n)


def minifloat_mac_relative_cost(e_a: int, m_a: int, e_b: int, m_b: int, n: int) -> float:
    """LUT cost of an exact minifloat MAC relative to an integer MAC of the same
    widths (a = 1 + e_a + m_a, b = 1 + e_b + m_b). hwquant's model, composed from the
    REFERENCE.md §3 accumulator widths and the §5 LUT multiplier:

        minifloat = mult(m_a+1, m_b+1) + (max(e_a, e_b) + 1)     mantissa product, exponent add
                    + P_fp·⌈⌈log2(2^e_a + 2^e_b − 1)⌉ / 2⌉        alignment shifter (LUT6 = 4:1 mux)
                    + P_fp                                         Kulisch accumulator
        integer   = mult(a, b) + (a + b + ⌈log2 n⌉ + 1)

    >>> round(minifloat_mac_relative_cost(4, 3, 4, 3, 64), 3)
    1.951
    """
    p_fp = minifloat_mac_acc_bits(e_a, m_a, e_b, m_b, n)
    shift_range = 2**e_a + 2**e_b - 1
    stages = math.ceil(math.log2(shift_range)) if shift_range > 1 else 0
    fp = (
        finn_lut_multiplier(m_a + 1, m_b + 1)
        + max(e_a, e_b)
        + 1
        + p_fp * math.ceil(stages / 2)
        + p_fp
    )
    return fp / mac_lut_cost(1 + e_a + m_a, 1 + e_b + m_b, n)


#: LUT cost of a minifloat MAC relative to the same-width integer MAC as measured on
#: FPGAs (Damsgaard et al.; REFERENCE.md §3 study): 20 % to 180 % more.
MINIFLOAT_MAC_MEASURED: tuple[float, float] = (1.2, 2.8)


def calibrated_minifloat_cost(relative: float) -> float:
    """:func:`minifloat_mac_relative_cost` held to the measured range
    :data:`MINIFLOAT_MAC_MEASURED`. The composed model runs from about 1.0 (E2 formats
    with long mantissas) to over 10 (E6/E7 formats, whose exact accumulators are
    hundreds of bits wide); outside the measured range it is extrapolating, so the
    sweep uses the nearest measured value and keeps the raw one beside it.

    >>> calibrated_minifloat_cost(1.01), calibrated_minifloat_cost(1.95), calibrated_minifloat_cost(12.6)
    (1.2, 1.95, 2.8)
    """
    lo, hi = MINIFLOAT_MAC_MEASURED
    return min(max(relative, lo), hi)


# --------------------------------------------------------------------------- shift PEs
#: Measured accelerator utilization on PYNQ-Z2, (LUT, DSP) (REFERENCE.md §8, PoTAcc,
#: Saha et al. 2024).
SHIFT_PE_MEASURED: dict[str, tuple[int, int]] = {
    "multiplier": (37133, 48),
    "pot": (25734, 32),
    "msq": (26795, 32),
    "apot": (28508, 32),
}


#: what one shift-based PE lane computes instead of a multiply (PoTAcc): (barrel
#: shifters, adders) — PoT one shifter (the sign folds into the accumulator's
#: add / subtract), APoT and MSQ two shifters and an adder (two power-of-two terms).
SHIFT_PE_STRUCTURE: dict[str, tuple[int, int]] = {"pot": (1, 0), "apot": (2, 1), "msq": (2, 1)}


def barrel_shifter_luts(in_bits: int, max_shift: int) -> int:
    """LUTs of a left shifter of an ``in_bits`` operand by 0..``max_shift``: output
    width in_bits + max_shift, ⌈log2(max_shift + 1)⌉ 2:1 mux stages, two stages per
    LUT6 (a 4:1 mux): (in_bits + max_shift)·⌈stages / 2⌉.

    >>> barrel_shifter_luts(8, 7), barrel_shifter_luts(8, 3)
    (30, 11)
    """
    stages = math.ceil(math.log2(max_shift + 1)) if max_shift > 0 else 0
    return (in_bits + max_shift) * math.ceil(stages / 2)


def shift_pe_lane_luts(kind: str, act_bits: int, max_shift: int) -> int:
    """LUTs of one shift PE lane (:data:`SHIFT_PE_STRUCTURE`): shifters of the
    ``act_bits`` activation by up to ``max_shift`` and the adder of their two terms
    (width + 1 carry bit). Compare :func:`finn_lut_multiplier` for a LUT multiplier.

    >>> shift_pe_lane_luts("pot", 8, 7), shift_pe_lane_luts("apot", 8, 3)
    (30, 34)
    """
    if kind not in SHIFT_PE_STRUCTURE:
        raise ValueError(f"unknown shift-PE kind {kind!r}; known: {sorted(SHIFT_PE_STRUCTURE)}")
    shifters, adders = SHIFT_PE_STRUCTURE[kind]
    return shifters * barrel_shifter_luts(act_bits, max_shift) + adders * (act_bits + max_shift + 1)


def shift_pe_ratio(kind: str) -> tuple[float, float]:
    """(LUT, DSP) of a shift-based PE accelerator relative to the multiplier-based one,
    from the published PYNQ-Z2 measurements (REFERENCE.md §8): e.g. PoT
    25,734 / 37,133 LUTs and 32 / 48 DSPs.

    >>> [round(r, 4) for r in shift_pe_ratio("pot")]
    [0.693, 0.6667]
    """
    if kind not in SHIFT_PE_MEASURED or kind == "multiplier":
        raise ValueError(f"unknown shift-PE kind {kind!r}; known: ['apot', 'msq', 'pot']")
    luts, dsps = SHIFT_PE_MEASURED[kind]
    base_luts, base_dsps = SHIFT_PE_MEASURED["multiplier"]
    return luts / base_luts, dsps / base_dsps
