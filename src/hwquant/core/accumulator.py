"""Accumulator bounds of accumulator-aware quantization (A2Q, A2Q+) and L1-ball projection.

Notation (REFERENCE.md §1–2): a dot product y = Σ_{i=1..K} x_i·q_i of N-bit inputs x
(signed or unsigned, 1_s = 1 if signed) and signed integer weights q, accumulated in a
P-bit signed register [−2^(P−1), 2^(P−1) − 1].

- A2Q (Colbert et al., ICCV 2023): |y| ≤ ‖q‖₁ · max|x| ≤ 2^(P−1) − 1 whenever

      ‖q‖₁ ≤ T = (2^(P−1) − 1) · 2^(1_s − N).

- A2Q+ (Colbert et al., ICML 2024): with x in [ν, μ], μ − ν = 2^N − 1, and the
  positive and negative parts of q each of L1 norm at most ‖q‖₁/2 (zero-centred
  weights), |y| ≤ (2^N − 1)·‖q‖₁/2, so

      ‖q‖₁ ≤ T⁺ = (2^P − 2) / (2^N − 1),   P_min = ⌈log2(‖q‖₁·(2^N − 1) + 2)⌉.

  The guarantee needs Σ q⁺ ≤ T⁺/2 and Σ |q⁻| ≤ T⁺/2 (each half bounded), which
  zero-centring before round-toward-zero provides.

- The bias shares the register (unless it is applied after it, e.g. folded into FINN's
  thresholds): with a bias code b on the accumulator scale (s_in·s_w), the register
  holds b + y. Its exact extremes over all inputs x_i ∈ [x_min, x_max] are

      acc_max = b + Σ_i q_i·(x_max if q_i > 0 else x_min),
      acc_min = b + Σ_i q_i·(x_min if q_i > 0 else x_max),

  so b + y fits P bits for every input iff
  −2^(P−1) − min_x y ≤ b ≤ 2^(P−1) − 1 − max_x y (:func:`bias_code_range`). In the
  L1 form of the budgets (sufficient, from |b + y| ≤ |b| + |y|):

      A2Q:   ‖q‖₁·2^(N−1_s) + |b| ≤ 2^(P−1) − 1,  i.e.  ‖q‖₁ ≤ T − |b|/2^(N−1_s);
      A2Q+:  (2^N − 1)·‖q‖₁/2 + |b| ≤ 2^(P−1) − 1,  i.e.  ‖q‖₁ ≤ T⁺ − 2|b|/(2^N − 1)
             (each sign half ≤ (2^(P−1) − 1 − |b|)/(2^N − 1))

  (:func:`l1_budget_with_bias`); 2^(N−1_s) is the bound on |x| that T uses.

- A P-bit register that overflows either wraps (two's complement: the value modulo
  2^P, mapped to [−2^(P−1), 2^(P−1) − 1]; since addition modulo 2^P is associative,
  wrapping every partial sum equals wrapping the final sum) or saturates (every
  partial sum clamped to the range, so the result depends on the order of the sum).

- Euclidean projection onto the L1 ball of radius z (Duchi et al., ICML 2008):
  u = |w| sorted descending, ρ = max{j : u_j·j > Σ_{k≤j} u_k − z},
  θ = (Σ_{k≤ρ} u_k − z)/ρ, w* = sign(w)·max(|w| − θ, 0); rows already inside stay.

>>> a2q_l1_bound(16, 8, signed=False), round(a2q_l1_bound(12, 8, signed=False), 3)
(127.99609375, 7.996)
>>> round(a2q_plus_l1_bound(16, 8), 3), a2q_plus_min_bits(255.0, 8)
(256.996, 16)
>>> min_feasible_bits(4, signed=False), min_feasible_bits(4, signed=False, zero_centred=True)
(6, 5)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "ACCUMULATOR_MODES",
    "a2q_l1_bound",
    "a2q_min_bits",
    "a2q_plus_l1_bound",
    "a2q_plus_min_bits",
    "accumulate",
    "bias_code_range",
    "l1_budget",
    "l1_budget_with_bias",
    "min_feasible_bits",
    "project_l1_ball",
    "soft_threshold_for_l1",
    "worst_case_range",
    "wrap_to_bits",
]

#: how a P-bit accumulator handles overflow.
ACCUMULATOR_MODES = ("wrap", "saturate")


def _check(P: int, N: int) -> None:
    if isinstance(P, bool) or not isinstance(P, int) or P < 2:
        raise ValueError(f"accumulator bits P must be an int ≥ 2, got {P!r}")
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError(f"input bits N must be an int ≥ 1, got {N!r}")


def a2q_l1_bound(P: int, N: int, signed: bool) -> float:
    """A2Q: the largest ‖q‖₁ a P-bit accumulator can take with N-bit inputs,
    T = (2^(P−1) − 1) · 2^(1_s − N).

    >>> a2q_l1_bound(12, 4, signed=True)
    255.875
    """
    _check(P, N)
    return (2.0 ** (P - 1) - 1.0) * 2.0 ** (int(signed) - N)


def a2q_plus_l1_bound(P: int, N: int) -> float:
    """A2Q+: the largest ‖q‖₁ of zero-centred weights, T⁺ = (2^P − 2)/(2^N − 1)
    (each of the positive and negative halves at most T⁺/2).

    >>> round(a2q_plus_l1_bound(12, 8), 4)
    16.0549
    """
    _check(P, N)
    return (2.0**P - 2.0) / (2.0**N - 1.0)


def l1_budget(P: int, N: int, signed: bool, zero_centred: bool) -> float:
    """The per-output-channel L1 budget: A2Q's T, or A2Q+'s T⁺ when ``zero_centred``."""
    return a2q_plus_l1_bound(P, N) if zero_centred else a2q_l1_bound(P, N, signed)


def l1_budget_with_bias(
    P: int, N: int, signed: bool, zero_centred: bool, bias: Tensor | float
) -> Tensor | float:
    """The L1 budget left to the weights of a channel whose bias code ``b`` (accumulator
    scale) is added to the same P-bit register (module docstring):

        A2Q:  T − |b|/2^(N−1_s),     A2Q+:  T⁺ − 2|b|/(2^N − 1)

    (negative: the bias alone does not fit). ``bias`` a number or a tensor of codes.

    >>> l1_budget_with_bias(10, 4, False, False, 255.0)   # (511 − 255)/16
    16.0
    >>> round(l1_budget_with_bias(10, 4, False, True, 255.0), 4)   # (1022 − 510)/15
    34.1333
    """
    T = l1_budget(P, N, signed, zero_centred)
    b = abs(bias)
    if zero_centred:
        return T - 2.0 * b / (2.0**N - 1.0)
    return T - b / 2.0 ** (N - int(signed))


def a2q_min_bits(l1: float, N: int, signed: bool) -> int:
    """Smallest P with ‖q‖₁ ≤ T(P): P = ⌈log2(‖q‖₁·2^(N−1_s) + 1)⌉ + 1 — the same
    number as the weight-based bound ⌈β + φ(β) + 1⌉, β = log2‖q‖₁ + N − 1_s
    (:func:`hwquant.analysis.cost.formulas.weight_bound_bits`). 1 for ‖q‖₁ = 0.

    >>> a2q_min_bits(127, 8, signed=False)
    16
    """
    if l1 <= 0:
        return 1
    return math.ceil(math.log2(l1 * 2.0 ** (N - int(signed)) + 1.0)) + 1


def a2q_plus_min_bits(l1: float, N: int) -> int:
    """A2Q+: P_min = ⌈log2(‖q‖₁·(2^N − 1) + 2)⌉ for zero-centred q (1 for ‖q‖₁ = 0).

    >>> a2q_plus_min_bits(16.0, 8)
    12
    """
    if l1 <= 0:
        return 1
    return math.ceil(math.log2(l1 * (2.0**N - 1.0) + 2.0))


def min_feasible_bits(N: int, signed: bool, zero_centred: bool = False) -> int:
    """Smallest P whose budget admits a non-zero integer channel: ‖q‖₁ = 1 must fit,
    i.e. T ≥ 1 (A2Q: P = N − 1_s + 2), or T⁺/2 ≥ 1 (A2Q+: P = N + 1). Below it every
    weight of a constrained layer would be zero."""
    P = 2
    while (a2q_plus_l1_bound(P, N) / 2 if zero_centred else a2q_l1_bound(P, N, signed)) < 1:
        P += 1
    return P


def soft_threshold_for_l1(w: Tensor, radius: Tensor | float) -> Tensor:
    """θ per row of ``w`` ([rows, n]) such that Σ max(|w| − θ, 0) = radius (Duchi et al.
    2008); θ = 0 for rows already inside the ball."""
    u = w.abs().sort(dim=1, descending=True).values  # [rows, n]
    css = u.cumsum(dim=1)
    z = torch.as_tensor(radius, dtype=w.dtype, device=w.device).reshape(-1, 1)
    j = torch.arange(1, w.shape[1] + 1, dtype=w.dtype, device=w.device)
    cond = u * j > css - z  # true for j ≤ ρ (a prefix)
    rho = cond.sum(dim=1, keepdim=True).clamp(min=1)
    theta = (css.gather(1, rho - 1) - z) / rho.to(w.dtype)
    inside = w.abs().sum(dim=1, keepdim=True) <= z
    return torch.where(inside, torch.zeros_like(theta), theta.clamp(min=0)).squeeze(1)


def project_l1_ball(w: Tensor, radius: Tensor | float) -> Tensor:
    """Euclidean projection of each row of ``w`` ([rows, n]) onto {v : ‖v‖₁ ≤ radius}
    (``radius`` a scalar or one value per row): w* = sign(w)·max(|w| − θ, 0).

    >>> project_l1_ball(torch.tensor([[3.0, -1.0, 0.5], [0.1, 0.2, 0.0]]), 2.0).tolist()
    [[2.0, -0.0, 0.0], [0.10000000149011612, 0.20000000298023224, 0.0]]
    """
    theta = soft_threshold_for_l1(w, radius).unsqueeze(1)
    return torch.sign(w) * (w.abs() - theta).clamp(min=0)


def worst_case_range(q: Tensor, x_min: int, x_max: int) -> tuple[Tensor, Tensor]:
    """Exact extremes of y = Σ_i x_i·q_i per row of integer weights ``q`` ([C, K]) over
    all inputs x_i ∈ [x_min, x_max] (REFERENCE.md §1, as FINN sizes accumulators):

        max y = Σ_i q_i·(x_max if q_i > 0 else x_min),  min y = Σ_i q_i·(x_min if q_i > 0 else x_max).

    Returns (min y, max y), int64 [C] (``q`` is rounded to int64 first).

    >>> [t.tolist() for t in worst_case_range(torch.tensor([[1, -2, 3]]), 0, 15)]
    [[-30], [60]]
    """
    q = torch.round(q).long().reshape(len(q), -1)
    pos, neg = q.clamp(min=0).sum(1), q.clamp(max=0).sum(1)
    return pos * x_min + neg * x_max, pos * x_max + neg * x_min


def bias_code_range(y_min: Tensor, y_max: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Bias codes b that keep b + y in a ``bits``-bit signed register for every input,
    given the extremes of the dot product y (:func:`worst_case_range`):

        −2^(P−1) − min y ≤ b ≤ 2^(P−1) − 1 − max y

    (an empty range, lo > hi, when the dot product alone can overflow; it contains 0
    whenever y always fits, e.g. within the A2Q / A2Q+ budgets).

    >>> [t.tolist() for t in bias_code_range(torch.tensor([-30]), torch.tensor([60]), 8)]
    [[-98], [67]]
    """
    lo, hi = _range(bits)
    return lo - y_min, hi - y_max


def _range(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def wrap_to_bits(acc: Tensor, bits: int) -> Tensor:
    """Two's complement wrap of int64 ``acc`` to ``bits`` bits:
    ((acc + 2^(P−1)) mod 2^P) − 2^(P−1) (identity for P ≥ 64).

    >>> wrap_to_bits(torch.tensor([127, 128, -129, 300]), 8).tolist()
    [127, -128, 127, 44]
    """
    if bits >= 64:
        return acc
    half = 2 ** (bits - 1)
    low = acc & (2 * half - 1)  # acc mod 2^P (two's complement bits); 2^P − 1 fits int64
    return torch.where(low >= half, (low - half) - half, low)  # no intermediate overflow


def accumulate(
    x: Tensor, q: Tensor, bits: int | None, mode: str = "wrap", bias: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Dot products of int64 rows x [M, K] with int64 weight rows q [C, K] in a
    ``bits``-bit signed accumulator (None or ≥ 64: exact int64), which starts from the
    int64 bias codes ``bias`` [C] when given (the bias preloaded into the register:
    acc = b + Σ_k x_k·q_k).

    Returns (emulated [M, C], exact [M, C], overflowed [M, C] bool). ``wrap``: the
    exact sum wrapped (an output overflowed when its final sum is out of range —
    intermediate wraps cancel); ``saturate``: the bias loaded first (clamped), then
    the sum taken in order k = 0..K−1 with every partial sum clamped (an output
    overflowed when the bias or any partial sum was clamped).

    >>> x = torch.tensor([[15, 15, 15]]); q = torch.tensor([[7, 7, -7]])
    >>> [t.tolist() for t in accumulate(x, q, 8, "wrap")]
    [[[105]], [[105]], [[False]]]
    >>> [t.tolist() for t in accumulate(x, q, 8, "saturate")]
    [[[22]], [[105]], [[True]]]
    >>> [t.tolist() for t in accumulate(x, q, 8, "wrap", bias=torch.tensor([30]))]
    [[[-121]], [[135]], [[True]]]
    """
    if mode not in ACCUMULATOR_MODES:
        raise ValueError(f"accumulator mode must be one of {list(ACCUMULATOR_MODES)}, got {mode!r}")
    exact = x @ q.T
    b = None if bias is None else bias.long().reshape(1, -1)  # [1, C]
    if b is not None:
        exact = exact + b
    if bits is None or bits >= 64:
        return exact, exact, torch.zeros_like(exact, dtype=torch.bool)
    if mode == "wrap":
        emulated = wrap_to_bits(exact, bits)
        return emulated, exact, emulated != exact
    lo, hi = _range(bits)
    acc = torch.zeros_like(exact) if b is None else b.expand_as(exact).clone()
    over = (acc < lo) | (acc > hi)
    acc = acc.clamp(lo, hi)
    for k in range(x.shape[1]):
        acc = acc + x[:, k : k + 1] * q[:, k].unsqueeze(0)  # [M, C]
        over |= (acc < lo) | (acc > hi)
        acc = acc.clamp(lo, hi)
    return acc, exact, over
