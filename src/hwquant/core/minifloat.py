"""Minifloat (ExMy) rounding of already-scaled values (Aggarwal et al., FPL 2024).

For v = x/s with |v| in binade e = ⌊log2|v|⌋, clamped below at e_min = 1 − bias
(where subnormals live, with the same step), the step is 2^(e − M) and
q = round(v / 2^(e−M)) · 2^(e−M). Without subnormals, |v| < 2^e_min rounds to
0 or ±2^e_min. Out-of-range values (±inf included) saturate to ±max, or become
±inf (formats with inf) / nan (formats with nan only) when the format is not
saturating (``MinifloatFormat.saturating``).

>>> import torch
>>> from hwquant.spec.formats import FP4_E2M1
>>> minifloat_quantize(torch.tensor([0.3, 2.4, 5.1, 100.0]), FP4_E2M1).tolist()
[0.5, 2.0, 6.0, 6.0]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from hwquant.core.rounding import round_half_even
from hwquant.spec.formats import MinifloatFormat

__all__ = ["minifloat_quantize", "minifloat_round"]


def minifloat_round(
    v: Tensor,
    mantissa_bits: int,
    min_exponent: int,
    has_subnormal: bool = True,
    rounding: Callable[[Tensor], Tensor] = round_half_even,
) -> Tensor:
    """Round v onto the ExMy grid with unbounded exponent above (no range clamp)."""
    if v.dtype == torch.float32:
        # 2^⌊log2|v|⌋ is v with its sign and mantissa bits cleared (0 for 0 and
        # float32 subnormals, which the clamp to 2^e_min covers): no frexp needed.
        binade = (v.view(torch.int32) & 0x7F800000).view(torch.float32)
        step = torch.clamp(binade, min=2.0**min_exponent) * 2.0**-mantissa_bits
    else:
        _, exp = torch.frexp(v)  # |v| = m·2^exp, m ∈ [0.5, 1) → ⌊log2|v|⌋ = exp − 1
        e = torch.clamp(exp - 1, min=min_exponent)
        step = torch.ldexp(torch.ones_like(v), e - mantissa_bits)
    q = rounding(v / step) * step
    if not has_subnormal:
        min_normal = 2.0**min_exponent
        q = torch.where(v.abs() < min_normal, rounding(v / min_normal) * min_normal, q)
    return q


def minifloat_quantize(
    v: Tensor, fmt: MinifloatFormat, rounding: Callable[[Tensor], Tensor] = round_half_even
) -> Tensor:
    """Full minifloat semantics on scaled values (the rule of :class:`MinifloatFormat`).

    saturating:      q = round(clamp(v, −max, max))      (±inf → ±max)
    non-saturating:  q = round(v); |q| > max or v = ±inf → ±inf (``has_inf``) else nan
    nan stays nan. Rounding before the overflow test is IEEE's rule (and
    ml_dtypes' casts): with max = 448 (E4M3FN), 464 rounds to 448, 465 overflows.
    """
    m = fmt.max_value
    if fmt.saturating:
        # Clamp first: rounding ±inf would give inf/inf = nan. Same result as
        # round-then-clamp, since ±max is on the grid and rounding is monotone.
        v = torch.clamp(v, -m, m)
        return minifloat_round(v, fmt.mantissa_bits, fmt.min_exponent, fmt.has_subnormal, rounding)
    q = minifloat_round(v, fmt.mantissa_bits, fmt.min_exponent, fmt.has_subnormal, rounding)
    over = (q.abs() > m) | torch.isinf(v)
    special = torch.sign(v) * torch.inf if fmt.has_inf else torch.full_like(q, torch.nan)
    return torch.where(over, special, q)
