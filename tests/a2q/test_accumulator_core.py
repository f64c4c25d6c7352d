"""hwquant.core.accumulator against NumPy / pure-Python references (REFERENCE.md §1–2)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hwquant.analysis.cost.formulas import weight_bound_bits
from hwquant.core.accumulator import (
    a2q_l1_bound,
    a2q_min_bits,
    a2q_plus_l1_bound,
    a2q_plus_min_bits,
    accumulate,
    l1_budget,
    min_feasible_bits,
    project_l1_ball,
    soft_threshold_for_l1,
    wrap_to_bits,
)

P_ = st.integers(4, 40)
N_ = st.integers(1, 16)


def test_reference_values():
    assert a2q_l1_bound(16, 8, signed=False) == pytest.approx(127.996, abs=1e-3)
    assert a2q_l1_bound(12, 8, signed=False) == pytest.approx(7.996, abs=1e-3)
    assert a2q_plus_l1_bound(16, 8) == pytest.approx(65534 / 255)
    # A2Q+ is about 2x looser than A2Q for unsigned inputs
    assert a2q_plus_l1_bound(16, 8) / a2q_l1_bound(16, 8, False) == pytest.approx(2.0, rel=0.01)
    assert l1_budget(12, 4, False, zero_centred=True) == a2q_plus_l1_bound(12, 4)


@given(P_, N_, st.booleans())
def test_a2q_bound_formula(P, N, signed):
    assert a2q_l1_bound(P, N, signed) == (2 ** (P - 1) - 1) * 2.0 ** (int(signed) - N)


@given(st.floats(0.5, 1e6), st.integers(1, 16), st.booleans())
def test_min_bits_is_weight_bound_and_inverts_T(l1, N, signed):
    P = a2q_min_bits(l1, N, signed)
    assert weight_bound_bits(l1, N, signed) == P  # the analysis formula, same number
    assert l1 <= a2q_l1_bound(P, N, signed) * (1 + 1e-12)
    if P > 2:
        assert l1 > a2q_l1_bound(P - 1, N, signed)


@given(st.floats(0.5, 1e6), st.integers(1, 16))
def test_plus_min_bits_inverts_T_plus(l1, N):
    P = a2q_plus_min_bits(l1, N)
    assert l1 <= a2q_plus_l1_bound(P, N) * (1 + 1e-12)
    if P > 2:
        assert l1 > a2q_plus_l1_bound(P - 1, N)


@given(st.integers(1, 16), st.booleans(), st.booleans())
def test_min_feasible_bits(N, signed, plus):
    P = min_feasible_bits(N, signed, plus)

    def budget(p):
        return a2q_plus_l1_bound(p, N) / 2 if plus else a2q_l1_bound(p, N, signed)

    assert budget(P) >= 1
    if P > 2:
        assert budget(P - 1) < 1


def _worst(q: np.ndarray, lo: int, hi: int) -> int:
    """max |Σ x·q| over x in [lo, hi]^K, in Python ints."""
    qs = [int(v) for v in q]
    top = sum(v * (hi if v > 0 else lo) for v in qs)
    bottom = sum(v * (lo if v > 0 else hi) for v in qs)
    return max(abs(top), abs(bottom))


@given(st.integers(6, 24), st.integers(2, 8), st.booleans(), st.integers(0, 2**31 - 1))
def test_a2q_budget_guarantees_no_overflow(P, N, signed, seed):
    """Any integer q with ‖q‖₁ ≤ T keeps every dot product inside P signed bits."""
    rng = np.random.default_rng(seed)
    T = a2q_l1_bound(P, N, signed)
    if T < 1:
        return
    q = rng.integers(-5, 6, size=64)
    while np.abs(q).sum() > T:  # shrink into the budget
        q[np.argmax(np.abs(q))] -= np.sign(q[np.argmax(np.abs(q))])
    lo, hi = (-(2 ** (N - 1)), 2 ** (N - 1) - 1) if signed else (0, 2**N - 1)
    assert _worst(q, lo, hi) <= 2 ** (P - 1) - 1


@given(st.integers(6, 24), st.integers(2, 8), st.booleans(), st.integers(0, 2**31 - 1))
def test_a2q_plus_halves_guarantee_no_overflow(P, N, signed, seed):
    """Σq⁺ ≤ T⁺/2 and Σ|q⁻| ≤ T⁺/2 keep every dot product inside P bits (A2Q+)."""
    rng = np.random.default_rng(seed)
    half = a2q_plus_l1_bound(P, N) / 2
    q = rng.integers(-5, 6, size=64)
    for sign in (1, -1):
        while (q * sign).clip(min=0).sum() > half:
            i = np.argmax(q * sign)
            q[i] -= sign
    lo, hi = (-(2 ** (N - 1)), 2 ** (N - 1) - 1) if signed else (0, 2**N - 1)
    assert _worst(q, lo, hi) <= 2 ** (P - 1) - 1


def _theta_bisect(w: np.ndarray, z: float) -> float:
    """Independent reference: θ with Σ max(|w| − θ, 0) = z by bisection."""
    a = np.abs(w)
    if a.sum() <= z:
        return 0.0
    lo, hi = 0.0, float(a.max())
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.clip(a - mid, 0, None).sum() > z else (lo, mid)
    return (lo + hi) / 2


@given(st.integers(1, 6), st.integers(1, 40), st.floats(0.01, 20.0), st.integers(0, 2**31 - 1))
def test_projection_matches_bisection_reference(rows, n, z, seed):
    w = np.random.default_rng(seed).normal(size=(rows, n))
    theta = soft_threshold_for_l1(torch.from_numpy(w), z).numpy()
    p = project_l1_ball(torch.from_numpy(w), z).numpy()
    for r in range(rows):
        ref = _theta_bisect(w[r], z)
        assert theta[r] == pytest.approx(ref, abs=1e-7)
        expect = np.sign(w[r]) * np.clip(np.abs(w[r]) - ref, 0, None)
        np.testing.assert_allclose(p[r], expect, atol=1e-7)
        assert np.abs(p[r]).sum() <= max(z, 0) + 1e-7


def test_projection_per_row_radius_and_inside_rows_stay():
    w = torch.tensor([[3.0, -1.0, 0.5], [0.1, 0.2, 0.0]], dtype=torch.float64)
    p = project_l1_ball(w, torch.tensor([2.0, 1.0], dtype=torch.float64))
    assert p[0].abs().sum().item() == pytest.approx(2.0)
    assert torch.equal(p[1], w[1])


@given(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=20), st.integers(2, 63))
def test_wrap_matches_python_ints(values, P):
    got = wrap_to_bits(torch.tensor(values, dtype=torch.int64), P).tolist()
    half = 2 ** (P - 1)
    assert got == [((v + half) % (2 * half)) - half for v in values]


@given(st.integers(0, 2**31 - 1), st.integers(4, 14))
def test_accumulate_matches_sequential_reference(seed, P):
    rng = np.random.default_rng(seed)
    x = rng.integers(-8, 16, size=(5, 12))
    q = rng.integers(-7, 8, size=(3, 12))
    lo, hi = -(2 ** (P - 1)), 2 ** (P - 1) - 1
    tx, tq = torch.from_numpy(x), torch.from_numpy(q)
    emu_w, exact, over_w = accumulate(tx, tq, P, "wrap")
    emu_s, _, over_s = accumulate(tx, tq, P, "saturate")
    for m in range(5):
        for c in range(3):
            ref_exact = int(sum(int(a) * int(b) for a, b in zip(x[m], q[c], strict=True)))
            acc, clamped = 0, False
            for a, b in zip(x[m], q[c], strict=True):
                acc += int(a) * int(b)
                if not lo <= acc <= hi:
                    clamped, acc = True, min(max(acc, lo), hi)
            assert int(exact[m, c]) == ref_exact
            assert int(emu_s[m, c]) == acc and bool(over_s[m, c]) == clamped
            wrapped = ((ref_exact - lo) % 2**P) + lo
            assert int(emu_w[m, c]) == wrapped
            assert bool(over_w[m, c]) == (not lo <= ref_exact <= hi)


def test_accumulate_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        accumulate(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long), 8, "x")


def test_bad_bits_rejected():
    with pytest.raises(ValueError, match="P"):
        a2q_l1_bound(1, 8, False)
    with pytest.raises(ValueError, match="N"):
        a2q_plus_l1_bound(8, 0)


def test_min_bits_zero_norm():
    assert a2q_min_bits(0, 8, False) == 1 and a2q_plus_min_bits(0.0, 8) == 1
    assert math.isfinite(a2q_l1_bound(64, 1, True))
