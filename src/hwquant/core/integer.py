"""Integer quantization: q = clamp(round(x/s + z), q_min, q_max), x̂ = (q − z)·s.

Clamping before or after rounding gives the same result because the bounds are
integers (QONNX's ``Quant`` clamps first).

>>> import torch
>>> int_range(4, signed=True, narrow=True)
(-7, 7)
>>> quantize_int(torch.tensor([0.26, -3.0]), 0.25, 0, -8, 7).tolist()
[1.0, -8.0]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from hwquant.core.rounding import round_half_even

__all__ = ["dequantize", "fake_quantize_int", "int_range", "quantize_int"]


def int_range(bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """[q_min, q_max]: signed [−2^(b−1) + narrow, 2^(b−1) − 1], unsigned [0, 2^b − 1 − narrow].

    1-bit signed is bipolar {−1, +1} (the QONNX convention)."""
    if bits == 1 and signed:
        return -1, 1
    if signed:
        return -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1 - int(narrow)


def quantize_int(
    x: Tensor,
    scale: Tensor | float,
    zero_point: Tensor | float,
    q_min: float,
    q_max: float,
    rounding: Callable[[Tensor], Tensor] = round_half_even,
) -> Tensor:
    """Integer codes q = clamp(round(x/s + z), q_min, q_max) (a float tensor of integers)."""
    return torch.clamp(rounding(x / scale + zero_point), q_min, q_max)


def dequantize(q: Tensor, scale: Tensor | float, zero_point: Tensor | float = 0.0) -> Tensor:
    """x̂ = (q − z)·s."""
    return (q - zero_point) * scale


def fake_quantize_int(
    x: Tensor,
    scale: Tensor | float,
    zero_point: Tensor | float,
    q_min: float,
    q_max: float,
    rounding: Callable[[Tensor], Tensor] = round_half_even,
) -> Tensor:
    """x̂ = (clamp(round(x/s + z), q_min, q_max) − z)·s, no gradient handling."""
    return dequantize(quantize_int(x, scale, zero_point, q_min, q_max, rounding), scale, zero_point)
