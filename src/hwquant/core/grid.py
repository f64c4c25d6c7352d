"""The normalized grid of a format, and fake quantization onto it.

Every format is a *grid function* g on scaled values v = x/s + z, defined on
[lo, hi] (the format's range). Fake quantization (one formula for all formats):

    c = clamp(x/s + z, lo, hi)
    x̂ = s · (c + sg(g(c) − c) − z)          (sg = stop-gradient)

Its value is s·(g(c) − z). Its gradients are the straight-through estimator and
the LSQ scale gradient (Esser et al., ICLR 2020): inside the range ∂x̂/∂x = 1,
∂x̂/∂s = g(v) − v, ∂x̂/∂z = 0; outside ∂x̂/∂x = 0, ∂x̂/∂s = g(c) − z, ∂x̂/∂z = −s
("inside" includes the bounds, as ``torch.clamp``'s gradient does). With a zero
point or a non-saturating grid they come from autograd through the formula; in
the common case (saturating grid, no zero point) one autograd node computes them
(:class:`_FakeQuantSTE`), the same values with fewer tensor ops per call, which
matters in recurrences and tiny models where per-op overhead dominates; for integer
grids on plain CPU tensors a compiled loop does it (:mod:`hwquant.core.kernels`, bit
for bit the same, tested).

>>> import torch
>>> from hwquant.spec.formats import IntFormat
>>> g = make_grid(IntFormat(4), "half_even")
>>> fake_quantize(torch.tensor([0.26, -3.0, 9.0]), 0.25, 0.0, g).tolist()
[0.25, -2.0, 1.75]
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from hwquant.core import kernels
from hwquant.core.minifloat import minifloat_quantize, minifloat_round
from hwquant.core.pot import bipolar_round, level_midpoints, pot_round, round_to_levels
from hwquant.core.rounding import get_rounding, round_half_even, round_toward_zero
from hwquant.spec.formats import (
    APoTFormat,
    BipolarFormat,
    Format,
    FormatRegistry,
    IntFormat,
    MinifloatFormat,
    MSQFormat,
    PowerOfTwoFormat,
    TernaryFormat,
)

__all__ = [
    "GRIDS",
    "SCALE_FROM_PARAM",
    "Grid",
    "fake_quantize",
    "fake_quantize_param",
    "fake_quantize_tangent",
    "make_grid",
]


@dataclass(frozen=True)
class Grid:
    """Grid function ``fn`` on the range [lo, hi].

    ``saturating`` (all formats but non-saturating minifloats): values are clamped
    to [lo, hi] before ``fn``. Otherwise ``fn`` sees the unclamped value and maps
    what lies beyond the range itself (to ±inf / nan, :func:`minifloat_quantize`).
    ``kernel``: the rounding code of :mod:`hwquant.core.kernels` when ``fn`` is a
    rounding it implements (integer grids), else None.
    """

    fn: Callable[[Tensor], Tensor]
    lo: float
    hi: float
    saturating: bool = True
    kernel: int | None = None


#: rounding functions the compiled kernel implements → its rounding code
_KERNEL_ROUNDING = {round_half_even: kernels.HALF_EVEN, round_toward_zero: kernels.TOWARD_ZERO}


def _levels_fn(levels: tuple[float, ...]) -> Callable[[Tensor], Tensor]:
    # Levels are rounded once, to the input's dtype (float64 models get float64 levels:
    # 0.3 is not a float32 number), and the midpoints are taken in that dtype.
    lv64 = torch.tensor(levels, dtype=torch.float64)
    cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def fn(v: Tensor) -> Tensor:
        key = (v.device, v.dtype)
        if key not in cache:
            lv = lv64.to(v.device, v.dtype)
            cache[key] = (lv, level_midpoints(lv))
        lv, mids = cache[key]
        return round_to_levels(v, lv, mids)

    return fn


#: format type → grid builder ``(fmt, rounding function) -> Grid``.
GRIDS: FormatRegistry[Callable[..., Grid]] = FormatRegistry("grid")


def make_grid(fmt: Format, rounding: str = "half_even") -> Grid:
    """The grid of ``fmt`` with rounding ``rounding`` (a name from core.rounding)."""
    return GRIDS(fmt, get_rounding(rounding))


@GRIDS.register(BipolarFormat)
def _bipolar_grid(fmt: BipolarFormat, r: Callable) -> Grid:
    return Grid(bipolar_round, -1.0, 1.0)


@GRIDS.register(IntFormat, TernaryFormat)
def _integer_grid(fmt: Format, r: Callable) -> Grid:
    return Grid(r, fmt.min_value, fmt.max_value, kernel=_KERNEL_ROUNDING.get(r))


@GRIDS.register(MinifloatFormat)
def _minifloat_grid(fmt: MinifloatFormat, r: Callable) -> Grid:
    if not fmt.saturating:
        fn = functools.partial(minifloat_quantize, fmt=fmt, rounding=r)
        return Grid(fn, -fmt.max_value, fmt.max_value, saturating=False)
    fn = functools.partial(
        minifloat_round,
        mantissa_bits=fmt.mantissa_bits,
        min_exponent=fmt.min_exponent,
        has_subnormal=fmt.has_subnormal,
        rounding=r,
    )
    return Grid(fn, -fmt.max_value, fmt.max_value)


@GRIDS.register(PowerOfTwoFormat)
def _pot_grid(fmt: PowerOfTwoFormat, r: Callable) -> Grid:
    fn = functools.partial(
        pot_round, min_exponent=fmt.min_exponent, has_zero=fmt.has_zero, rounding=r
    )
    return Grid(fn, -1.0, 1.0)


@GRIDS.register(APoTFormat, MSQFormat)
def _level_grid(fmt: Format, r: Callable) -> Grid:
    return Grid(_levels_fn(fmt.levels()), -1.0, 1.0)


def fake_quantize(
    x: Tensor, scale: Tensor | float, zero_point: Tensor | float | None, grid: Grid
) -> Tensor:
    """x̂ = s·(c + sg(g(c) − c) − z), c = clamp(x/s + z, lo, hi): value s·(g(c) − z),
    straight-through gradient for x, LSQ gradient for s and z (module docstring).
    A non-saturating grid skips the clamp (c = x/s + z): beyond the range x̂ is
    ±inf / nan, as the format says.

    Integer grids on plain CPU tensors run as one compiled loop
    (:mod:`hwquant.core.kernels`, the same values and gradients). Without autograd
    (inference, export checks) the formula runs in place: 1 allocation.
    """
    if grid.kernel is not None and zero_point is None:
        y = kernels.fake_quant(x, scale, grid.lo, grid.hi, grid.kernel)
        if y is not None:
            return y
    if not torch.is_grad_enabled() or not (
        x.requires_grad or (isinstance(scale, Tensor) and scale.requires_grad)
    ):
        v = x / scale
        if zero_point is not None:
            v += zero_point
        q = grid.fn(v.clamp_(grid.lo, grid.hi) if grid.saturating else v)
        if zero_point is not None:
            q = q - zero_point
        return q.mul_(scale)
    if zero_point is None and grid.saturating:
        return _FakeQuantSTE.apply(x, scale, grid)[0]
    v = x / scale if zero_point is None else x / scale + zero_point
    if grid.saturating:
        c = torch.clamp(v, grid.lo, grid.hi)
        y = c + (grid.fn(c) - c).detach()
    else:  # c = v; where g(v) or v is ±inf, c + (g − c) would be inf − inf = nan
        g = grid.fn(v).detach()
        y = torch.where(torch.isfinite(g) & torch.isfinite(v), v + (g - v).detach(), g)
    if zero_point is not None:
        y = y - zero_point
    return y * scale


#: learned-scale parametrizations s(p) the kernel fuses: name → (s(p), kernel scale code)
SCALE_FROM_PARAM: dict[str, tuple[Callable[[Tensor], Tensor], int]] = {
    "abs": (torch.abs, kernels.ABS_SCALE),
    "exp2": (torch.exp2, kernels.EXP2_SCALE),
}


def fake_quantize_param(x: Tensor, p: Tensor, parametrization: str, grid: Grid) -> Tensor:
    """fake_quantize(x, s(p), None, grid) for a learned scale s = |p| or 2^p
    (``parametrization`` "abs" / "exp2", :data:`SCALE_FROM_PARAM`): the same values
    and gradients (for x and p); on the kernel's path s(p) is part of its one node.

    >>> from hwquant.spec.formats import IntFormat
    >>> g = make_grid(IntFormat(4))
    >>> fake_quantize_param(torch.tensor([0.26, 9.0]), torch.tensor(-2.0), "exp2", g).tolist()
    [0.25, 1.75]
    """
    fn, code = SCALE_FROM_PARAM[parametrization]
    if grid.kernel is not None:
        y = kernels.fake_quant(x, p, grid.lo, grid.hi, grid.kernel, code)
        if y is not None:
            return y
    return fake_quantize(x, fn(p), None, grid)


def _lsq_tangent(inside: Tensor, v: Tensor, q: Tensor) -> Tensor:
    """∂x̂/∂s per element (module docstring): g(v) − v inside the range, g(c) outside."""
    return torch.where(inside, q - v, q)


@torch.no_grad()
def fake_quantize_tangent(x: Tensor, scale: Tensor, grid: Grid) -> tuple[Tensor, Tensor]:
    """(x̂, ∂x̂/∂s) without autograd for a saturating grid and no zero point: the value
    of ``fake_quantize(x, scale, None, grid)`` and its LSQ derivative per element. A
    layer linear in x̂ whose input needs no gradient gives s its gradient from these
    (Σ ∂L/∂x̂ · ∂x̂/∂s without forming ∂L/∂x̂: :mod:`hwquant.nn.conv`).

    >>> from hwquant.spec.formats import IntFormat
    >>> x_hat, d = fake_quantize_tangent(torch.tensor([0.26, 9.0]), torch.tensor(0.25),
    ...                                  make_grid(IntFormat(4)))
    >>> x_hat.tolist(), [round(v, 2) for v in d.tolist()]
    ([0.25, 1.75], [-0.04, 7.0])
    """
    if not grid.saturating:
        raise ValueError("fake_quantize_tangent needs a saturating grid")
    if grid.kernel is not None:  # integer grids: one compiled pass, the same values
        out = kernels.fake_quant_tangent(x, scale, grid.lo, grid.hi, grid.kernel)
        if out is not None:
            return out
    v = x / scale
    q = grid.fn(v.clamp(grid.lo, grid.hi))
    return q * scale, _lsq_tangent((v >= grid.lo) & (v <= grid.hi), v, q)


class _FakeQuantSTE(torch.autograd.Function):
    """s·g(clamp(x/s, lo, hi)) with the straight-through / LSQ gradients of the
    module docstring (z = 0), as one autograd node. Written in the ``torch.func``
    style (forward without ctx, ``setup_context``), so ``torch.func.grad`` / ``vmap``
    work through it; the grid values q ride along as a second output (a stochastic
    grid's q cannot be recomputed in backward)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, s: Tensor | float, grid: Grid) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        q = grid.fn((x / s).clamp(grid.lo, grid.hi))
        return q * s, q

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, s, grid = inputs
        ctx.mark_non_differentiable(output[1])
        tensor_scale = isinstance(s, Tensor)
        ctx.save_for_backward(x, s if tensor_scale else None, output[1])
        ctx.float_scale = None if tensor_scale else s
        ctx.lo, ctx.hi = grid.lo, grid.hi

    @staticmethod
    def backward(ctx, g: Tensor, _unused: Tensor):  # type: ignore[override]
        x, s, q = ctx.saved_tensors
        v = x / (ctx.float_scale if s is None else s)
        inside = (v >= ctx.lo) & (v <= ctx.hi)  # False for nan
        gx = torch.where(inside, g, 0.0) if ctx.needs_input_grad[0] else None
        gs = None
        if s is not None and ctx.needs_input_grad[1]:
            gs = (g * _lsq_tangent(inside, v, q)).sum_to_size(s.shape)
        return gx, gs, None
