"""Shift-add integer execution: weight layers computed with shifts and adds.

A weight on a power-of-two level set is stored as sign and exponent codes: with D the
quantizer's ``code_multiplier`` its integer code is m = L·D, a sum of signed powers of
two m = Σ_t sign_t · 2^shift_t (:func:`hwquant.core.pot.shift_terms`): one term for
PoT (shift = e − e_min), two for APoT and SP2 (MSQ), two signed digits for the
fixed-point rows of MSQ at ≤ 4 bits. A dot product of integer activation codes x with
such a row is

    acc = b + Σ_k Σ_t sign_t,k · (x_k << shift_t,k)      (scale s_x · s_w / D)

in a P-bit accumulator (wrapping or saturating like
:func:`hwquant.core.accumulator.accumulate`; saturation clamps after each weight's
whole product, the terms of one weight going through one adder). Nothing multiplies:
the kernel shifts int64 activation codes and adds or subtracts them.

:func:`run_shift_add` is :func:`hwquant.analysis.integer_exec.run_integer` with this
kernel in every linear / conv layer (grouped convs too, via im2col), so its outputs,
overflow counts and ``max_abs`` equal the multiply-accumulate run exactly, and both
equal the fake-quantized model up to float round-off of the final re-scaling (bit
exact in the output codes when the model runs in float64, see the tests).

Example:
    >>> import torch, hwquant
    >>> from hwquant.models import MLP
    >>> from hwquant.spec import A8, APoTFormat, PoTWeight, Recipe
    >>> m = hwquant.quantize(MLP((16, 32, 10)), Recipe.uniform(PoTWeight(APoTFormat(4)), A8))
    >>> x = torch.randn(64, 16)
    >>> y = m.eval()(x)
    >>> r = run_shift_add(m, x)
    >>> bool(torch.allclose(r.outputs, y, atol=1e-4)), r.layers["layers.0"].overflows
    (True, 0)
    >>> shift_codes(m.layers[0]).terms        # APoT: two shifts and an add
    2
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hwquant.analysis.integer_exec import Bits, IntegerRun, run_integer, weight_codes
from hwquant.core.accumulator import ACCUMULATOR_MODES, wrap_to_bits
from hwquant.core.pot import shift_terms

__all__ = ["ShiftCodes", "run_shift_add", "shift_accumulate", "shift_codes", "shift_dot"]

#: elements of the [rows, C, K] shifted-product block processed at once
CHUNK = 1 << 21


@dataclass
class ShiftCodes:
    """A layer's weights as shift-add hardware holds them: ``sign`` and ``shift``
    (int64 [T, C, K'], term t of the weight of output c and input k; sign 0 where a
    weight has fewer terms), ``scale`` [C] (float64, the value of one unit of m:
    s_w / D) and the term count T."""

    sign: Tensor
    shift: Tensor
    scale: Tensor

    @property
    def terms(self) -> int:
        return int(self.sign.shape[0])

    def integer_codes(self) -> Tensor:
        """m = Σ_t sign · 2^shift, [C, K'] int64."""
        return (self.sign << self.shift).sum(0) if self.terms else self.sign.sum(0)


def shift_codes(layer: nn.Module) -> ShiftCodes:
    """The sign / exponent codes of a quantized layer's weights (rows = output
    channels, columns as the weight's flattened fan-in); ``ValueError`` if the layer's
    weights have no integer codes (float, minifloat, disabled quantizer)."""
    wc = weight_codes(layer)
    if wc is None:
        raise ValueError(
            f"{type(layer).__name__}: its weights have no integer codes to shift "
            "(float, minifloat, per-group or disabled weight quantizer)"
        )
    q, s = wc
    sign, shift = shift_terms(q.reshape(q.shape[0], -1))
    return ShiftCodes(sign, shift, s)


def shift_dot(x: Tensor, sign: Tensor, shift: Tensor) -> Tensor:
    """Σ_k Σ_t sign[t, c, k] · (x[m, k] << shift[t, c, k]) for int64 x [M, K] and
    terms [T, C, K]: exact int64 dot products [M, C], by shifts and adds only.

    >>> x = torch.tensor([[3, -2]])
    >>> sign, shift = torch.tensor([[[1, -1]], [[1, 0]]]), torch.tensor([[[1, 0]], [[0, 0]]])
    >>> shift_dot(x, sign, shift).tolist()   # weights [2 + 1, −1]: 3·3 + (−2)·(−1)
    [[11]]
    """
    T, C, K = sign.shape
    M = x.shape[0]
    out = torch.zeros(M, C, dtype=torch.long)
    if T == 0 or M == 0:
        return out
    step = max(1, CHUNK // max(1, C * K))
    pos, neg = sign > 0, sign < 0
    for i in range(0, M, step):
        xs = x[i : i + step].long().unsqueeze(1)  # [m, 1, K]
        acc = torch.zeros(xs.shape[0], C, dtype=torch.long)
        for t in range(T):
            shifted = xs << shift[t].unsqueeze(0)  # [m, C, K]
            acc += shifted.masked_fill(~pos[t], 0).sum(2)
            acc -= shifted.masked_fill(~neg[t], 0).sum(2)
        out[i : i + step] = acc
    return out


def shift_accumulate(
    x: Tensor, q: Tensor, bits: int | None, mode: str = "wrap", bias: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`hwquant.core.accumulator.accumulate` with shifts: the dot products of
    int64 rows x [M, K] with the integer weight codes q [C, K], each weight split into
    its signed power-of-two terms. Returns (emulated, exact, overflowed) [M, C].

    >>> x = torch.tensor([[15, 15, 15]]); q = torch.tensor([[8, 6, -1]])
    >>> [t.tolist() for t in shift_accumulate(x, q, 8, "saturate")]
    [[[112]], [[195]], [[True]]]
    """
    if mode not in ACCUMULATOR_MODES:
        raise ValueError(f"accumulator mode must be one of {list(ACCUMULATOR_MODES)}, got {mode!r}")
    sign, shift = shift_terms(q)
    exact = shift_dot(x, sign, shift)
    b = None if bias is None else bias.long().reshape(1, -1)
    if b is not None:
        exact = exact + b
    if bits is None or bits >= 64:
        return exact, exact, torch.zeros_like(exact, dtype=torch.bool)
    if mode == "wrap":
        emulated = wrap_to_bits(exact, bits)
        return emulated, exact, emulated != exact
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    acc = torch.zeros_like(exact) if b is None else b.expand_as(exact).clone()
    over = (acc < lo) | (acc > hi)
    acc = acc.clamp(lo, hi)
    for k in range(x.shape[1]):  # one weight's product (all its terms) per step
        acc = acc + shift_dot(x[:, k : k + 1], sign[:, :, k : k + 1], shift[:, :, k : k + 1])
        over |= (acc < lo) | (acc > hi)
        acc = acc.clamp(lo, hi)
    return acc, exact, over


def run_shift_add(
    model: nn.Module,
    inputs: Tensor | Sequence[Tensor],
    accumulator_bits: Bits = None,
    mode: str = "wrap",
) -> IntegerRun:
    """Run ``model`` on integer tensors, its linear / conv layers by shifts and adds
    (module docstring); arguments and result as
    :func:`~hwquant.analysis.integer_exec.run_integer`."""
    return run_integer(model, inputs, accumulator_bits, mode, kernel=shift_accumulate)
