"""Rounding functions (elementwise, on float tensors holding any real values).

Names follow hwquant; QONNX's ``rounding_mode`` spelling is in ``QONNX_NAMES``.

>>> import torch
>>> x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])
>>> ROUNDERS["half_even"](x).tolist()
[-2.0, -2.0, -0.0, 0.0, 2.0, 2.0]
>>> ROUNDERS["half_up"](x).tolist()
[-3.0, -2.0, -1.0, 1.0, 2.0, 3.0]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["QONNX_NAMES", "ROUNDERS", "get_rounding", "round_ste"]


def round_half_even(x: Tensor) -> Tensor:
    """Nearest integer, ties to even (IEEE default, QONNX ``ROUND``)."""
    return torch.round(x)


def round_half_up(x: Tensor) -> Tensor:
    """Nearest integer, ties away from zero: sign(x)·⌊|x| + 1/2⌋ (QONNX ``HALF_UP``)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def round_half_down(x: Tensor) -> Tensor:
    """Nearest integer, ties toward zero: sign(x)·⌈|x| − 1/2⌉ (QONNX ``HALF_DOWN``)."""
    return torch.sign(x) * torch.ceil(x.abs() - 0.5)


def round_toward_zero(x: Tensor) -> Tensor:
    """Truncation: sign(x)·⌊|x|⌋ (QONNX ``DOWN``). Written with floor and copysign,
    the value of ``torch.trunc`` (−0.0 included), which is unvectorized on CPU (9×
    slower than floor on a 128×128 tensor)."""
    return torch.floor(x.abs()).copysign(x)


def round_away_from_zero(x: Tensor) -> Tensor:
    """sign(x)·⌈|x|⌉ (QONNX ``UP``)."""
    return torch.sign(x) * torch.ceil(x.abs())


def round_stochastic(x: Tensor) -> Tensor:
    """⌊x + u⌋ with u ~ U[0, 1): unbiased, E[round(x)] = x."""
    return torch.floor(x + torch.rand_like(x))


ROUNDERS: dict[str, Callable[[Tensor], Tensor]] = {
    "half_even": round_half_even,
    "half_up": round_half_up,
    "half_down": round_half_down,
    "floor": torch.floor,
    "ceil": torch.ceil,
    "toward_zero": round_toward_zero,
    "away_from_zero": round_away_from_zero,
    "stochastic": round_stochastic,
}

QONNX_NAMES = {
    "half_even": "ROUND",
    "half_up": "HALF_UP",
    "half_down": "HALF_DOWN",
    "floor": "FLOOR",
    "ceil": "CEIL",
    "toward_zero": "DOWN",
    "away_from_zero": "UP",
}


def get_rounding(name: str) -> Callable[[Tensor], Tensor]:
    """The rounding function called ``name``; unknown names raise ``ValueError``."""
    try:
        return ROUNDERS[name]
    except KeyError:
        raise ValueError(f"unknown rounding {name!r}; known: {sorted(ROUNDERS)}") from None


def round_ste(x: Tensor, rounding: Callable[[Tensor], Tensor] = torch.round) -> Tensor:
    """Rounding with a straight-through gradient: value round(x), d/dx = 1."""
    return x + (rounding(x) - x).detach()
