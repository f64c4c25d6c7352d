"""Every cost formula against hand-computed values (REFERENCE.md §1, §3, §5, §6, §8)."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwquant.analysis.cost import formulas as F

# ----------------------------------------------------------------------------- §6 BOPs


def test_bops_hand_values():
    # m = n = 64, 8-bit: 4096·(64 + 8 + 8 + log2 64 = 6) = 352,256
    assert F.bops(64, 64, 8, 8) == 352_256
    # half pruned: 4096·(0.5·64 + 22) = 221,184
    assert F.bops(64, 64, 8, 8, 0.5) == 221_184
    # conv 3×3×16 → 32 channels on 8×8 outputs, W4A4: m = 32·64, n = 144
    assert F.bops(32 * 64, 144, 4, 4) == pytest.approx(2048 * 144 * (16 + 8 + math.log2(144)))
    with pytest.raises(ValueError, match="pruned_fraction"):
        F.bops(1, 1, 1, 1, 1.5)


def test_mac_bops_is_qonnx_convention():
    assert F.mac_bops(1000, 4, 4) == 16_000
    assert F.mac_bops(1000, 4, 4, 0.25) == 12_000


@given(
    st.integers(1, 64), st.integers(1, 512), st.integers(1, 16), st.integers(1, 16), st.floats(0, 1)
)
def test_bops_pruning_only_discounts_multiplications(m, n, b_a, b_w, f):
    dense, pruned = F.bops(m, n, b_a, b_w), F.bops(m, n, b_a, b_w, f)
    assert dense - pruned == pytest.approx(f * m * n * b_a * b_w, rel=1e-9, abs=1e-6)


# ----------------------------------------------------------------------------- §1 accumulators


def test_datatype_bound_reference_check():
    assert F.datatype_bound_bits(4608, 8, 8, signed_input=False) == 29
    assert F.datatype_bound_bits(4608, 8, 8, signed_input=True) == 28
    # the FINN check case: K = 64, W = A = 4 unsigned → α = 13, P = 15
    assert F.datatype_bound_bits(64, 4, 4, False) == 15


@given(st.integers(1, 2048), st.integers(1, 8), st.integers(2, 8), st.booleans())
def test_datatype_bound_covers_worst_case(K, N, M, signed):
    """P holds the worst case of any weights; signed inputs make it tight (P − 1 overflows)."""
    P = F.datatype_bound_bits(K, N, M, signed)
    if signed:  # both operands at their most negative: K·2^(N−1)·2^(M−1)
        worst = K * 2 ** (N + M - 2)
        assert worst <= 2 ** (P - 1) - 1
        assert worst > 2 ** (P - 2) - 1
    else:  # x = 2^N − 1 against q = −2^(M−1)
        worst = K * (2**N - 1) * 2 ** (M - 1)
        assert worst <= 2 ** (P - 1)
        assert N == 1 or worst > 2 ** (P - 3)  # within 2 bits (1-bit inputs: 3)


def test_weight_bound_and_exact():
    # ‖q‖₁ = 127, N = 8 unsigned: β = log2 127 + 8 ≈ 14.99 → 16
    assert F.weight_bound_bits(127, 8, False) == 16
    assert F.weight_bound_bits(0, 8, False) == 1
    # q = [1, -2, 3], x ∈ [0, 15]: acc ∈ [-30, 60] → signed 7 bits
    assert F.exact_accumulator_bits(np.array([[1, -2, 3]]), 0, 15) == (7, True)
    # all positive weights, unsigned x: acc ∈ [0, 90] → UINT7
    assert F.exact_accumulator_bits(np.array([[1, 2, 3]]), 0, 15) == (7, False)
    # signed x ∈ [-8, 7], q = [1, 1]: acc ∈ [-16, 14] → 5 bits
    assert F.exact_accumulator_bits(np.array([[1, 1], [0, 1]]), -8, 7) == (5, True)


@given(st.lists(st.integers(-7, 7), min_size=1, max_size=40), st.integers(2, 8))
def test_exact_le_weight_bound_le_datatype_bound(q, N):
    q = np.array([q])
    l1 = float(np.abs(q).sum())
    exact, _ = F.exact_accumulator_bits(q, 0, 2**N - 1)
    assert exact <= F.weight_bound_bits(l1, N, False) <= F.datatype_bound_bits(q.size, N, 4, False)


# ----------------------------------------------------------------------------- §3 minifloat MAC


def test_mac_accumulator_widths():
    assert F.int_mac_acc_bits(8, 8, 64) == 8 + 8 + 6 + 1
    # E4M3 × E4M3, n = 64: 16 + 3 + 16 + 3 + 6 − 1 = 43
    assert F.minifloat_mac_acc_bits(4, 3, 4, 3, 64) == 43
    # E2M1 × E2M1, n = 100: 4 + 1 + 4 + 1 + 7 − 1 = 16
    assert F.minifloat_mac_acc_bits(2, 1, 2, 1, 100) == 16


def test_minifloat_relative_cost_hand_value():
    # E4M3: mantissa mult (4×4) 3·8 = 24, exponent add 5, shifter 43·⌈5/2⌉ = 129, acc 43 → 201
    # INT8 MAC: mult (2⌈16/6⌉ − 1)·16 = 80, acc 23 → 103
    assert F.minifloat_mac_relative_cost(4, 3, 4, 3, 64) == pytest.approx(201 / 103)
    # E2M1 (FP4): mult (2×2) 1·4 = 4, exp 3, shifter 16·⌈3/2⌉ = 32 (range 7 → 3 stages),
    # acc 4+1+4+1+6−1 = 15 → 4+3+30+15 = 52 ... INT4: mult 3·8 = 24, acc 4+4+6+1 = 15 → 39
    assert F.minifloat_mac_relative_cost(2, 1, 2, 1, 64) == pytest.approx((4 + 3 + 30 + 15) / 39)


# ----------------------------------------------------------------------------- §5 FINN MVAU


def test_finn_lut_reference_check():
    """REFERENCE.md §5: MW=64, MH=32, PE=4, SIMD=8, W=A=4, unsigned input → 1738."""
    P = F.datatype_bound_bits(64, 4, 4, signed_input=False)
    assert F.finn_mvau_luts(64, 32, 4, 8, 4, 4, P) == 1738
    bd = F.mvau_lut_breakdown(64, 32, 4, 8, 4, 4, P)
    # mult 8·(2·2 − 1)·8 = 192, addertree 8·15 = 120, acc 15; ×1.1·4
    assert (bd.mult, bd.addertree, bd.acc) == pytest.approx((4.4 * 192, 4.4 * 120, 4.4 * 15))


def test_finn_lut_variants():
    P = 15
    # multipliers in DSPs: 300 + 4.4·(120 + 15) = 894
    assert F.finn_mvau_luts(64, 32, 4, 8, 4, 4, P, mult_in_dsp=True) == 894
    # weights in LUTRAM: + 4·8·4·⌈64/64⌉ = 128 → 1866
    assert F.finn_mvau_luts(64, 32, 4, 8, 4, 4, P, weights_in_lutram=True) == 1866
    # 2-bit thresholds: thr = 3·15·⌈8/64⌉ = 45, comp = 45 → + 4.4·90 = 396 → 2134.8 → 2134
    assert F.finn_mvau_luts(64, 32, 4, 8, 4, 4, P, out_bits=2) == 2134
    assert F.finn_mvau_luts(64, 32, 4, 8, 4, 4, P, out_bits=2, thresholds_in_lutram=False) == 1738
    assert F.finn_lut_multiplier(8, 8) == 80


def test_bram_and_cycles():
    # weights 64·32·4 bit folded 4×8: depth 64, width 128 → 4 × (512×36)
    assert F.finn_mvau_bram18(64, 32, 4, 8, 4) == 4
    assert F.bram18_count(16384, 1) == 1
    assert F.bram18_count(16385, 1) == 2
    assert F.bram18_count(1000, 20) == 2  # 2 × (512×36) beats 2 × (1024×18)
    assert F.bram18_count(0, 8) == 0
    assert F.threshold_bram18(32, 4, 4, 15) == 25
    assert F.mvau_cycles(64, 32, 4, 8) == 64
    assert F.mvau_cycles(144, 32, 8, 48, n_pix=64) == 64 * 4 * 3
    assert F.divisors(36) == [1, 2, 3, 4, 6, 9, 12, 18, 36]


@given(st.integers(1, 5000), st.integers(1, 200))
def test_bram18_capacity(depth, width):
    n = F.bram18_count(depth, width)
    assert n * 18 * 1024 >= depth * width  # 18 kbit per block (36 with parity lanes at ×9)
    assert n <= math.ceil(depth / 512) * math.ceil(width / 36)


def test_dsp_packing():
    assert [F.dsp_count(4, 8, 8, 8, f) for f in ("DSP48E1", "DSP48E2", "DSP58")] == [32, 16, 12]
    # 16×16: one block each on every family (fits 25×18 with the unsigned input's +1 bit)
    assert F.dsp_count(2, 3, 16, 16, "DSP48E1") == 6
    # 32×32 float-width operands on DSP48E1: ⌈32/25⌉·⌈33/18⌉ = 4 blocks per product
    assert F.dsp_count(1, 1, 32, 32, "DSP48E1") == 4
    # 8-bit unsigned input needs 9 signed bits: still packs; 9-bit does not
    assert F.dsp_count(2, 1, 8, 9, "DSP48E2") == 2
    with pytest.raises(ValueError, match="unknown DSP family"):
        F.dsp_count(1, 1, 8, 8, "DSP48")


# ----------------------------------------------------------------------------- §8 shift PEs


def test_shift_pe_ratios():
    lut, dsp = F.shift_pe_ratio("pot")
    assert lut == pytest.approx(25734 / 37133) and dsp == pytest.approx(32 / 48)
    assert F.shift_pe_ratio("msq")[0] == pytest.approx(26795 / 37133)
    assert F.shift_pe_ratio("apot")[0] == pytest.approx(28508 / 37133)
    # ordering of the published measurements: PoT < MSQ < APoT < multiplier
    assert F.shift_pe_ratio("pot")[0] < F.shift_pe_ratio("msq")[0] < F.shift_pe_ratio("apot")[0] < 1
    with pytest.raises(ValueError, match="shift-PE kind"):
        F.shift_pe_ratio("multiplier")


@pytest.mark.parametrize(("pe", "simd"), list(itertools.product([1, 2, 4], [1, 3, 9])))
def test_finn_luts_monotone_in_parallelism(pe, simd):
    base = F.finn_mvau_luts(36, 16, pe, simd, 4, 4, 12)
    assert F.finn_mvau_luts(36, 16, pe * 2, simd, 4, 4, 12) > base
