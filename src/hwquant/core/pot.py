"""Power-of-two codes and level-set formats (APoT, MSQ, ternary).

PoT (QKeras ``quantized_po2``): q = sign(v)·2^clip(round(log2|v|), e_min, 0);
the rounding happens in the log domain, so the threshold between 2^e and
2^(e+1) is 2^(e+1/2). With a zero level, |v| < 2^(e_min − 1) maps to 0.

Level sets: q = the nearest level; ties go to the lower level.

>>> import torch
>>> pot_round(torch.tensor([0.3, -0.7, 0.001]), min_exponent=-3).tolist()
[0.25, -0.5, 0.125]
>>> levels = torch.tensor([-1.0, 0.0, 1.0])
>>> round_to_levels(torch.tensor([0.49, 0.51, -2.0]), levels, level_midpoints(levels)).tolist()
[0.0, 1.0, -1.0]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["bipolar_round", "level_midpoints", "pot_round", "round_to_levels"]


def pot_round(
    v: Tensor,
    min_exponent: int,
    has_zero: bool = False,
    rounding: Callable[[Tensor], Tensor] = torch.round,
) -> Tensor:
    """sign(v)·2^clip(round(log2|v|), e_min, 0); v = 0 maps to +2^e_min without a zero level."""
    a = v.abs()
    e = torch.clamp(rounding(torch.log2(a)), min_exponent, 0)
    q = torch.where(v < 0, -torch.exp2(e), torch.exp2(e))
    if has_zero:
        q = torch.where(a < 2.0 ** (min_exponent - 1), torch.zeros_like(q), q)
    return q


def level_midpoints(levels: Tensor) -> Tensor:
    """Decision thresholds between consecutive ascending levels."""
    return (levels[1:] + levels[:-1]) / 2


def round_to_levels(v: Tensor, levels: Tensor, midpoints: Tensor) -> Tensor:
    """Nearest of the ascending ``levels`` (ties to the lower one)."""
    return levels[torch.bucketize(v, midpoints)]


def bipolar_round(v: Tensor) -> Tensor:
    """+1 if v ≥ 0 else −1 (QONNX ``BipolarQuant``)."""
    return torch.where(v >= 0, torch.ones_like(v), -torch.ones_like(v))
