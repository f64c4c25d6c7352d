"""AdaRound (Nagel et al., ICML 2020): learn, per weight, whether to round down or up.

For a layer with weights W, input rows X (the layer's quantized inputs, rows from
:func:`~hwquant.algorithms.common.input_rows`) and scale s, each weight w lies between
two neighbouring grid values lower(w/s) ≤ w/s ≤ upper(w/s) of the layer's own grid
(integers, minifloats, power-of-two, level sets). With the rectified sigmoid
h(V) = clip(σ(V)(ζ − γ) + γ, 0, 1), ζ = 1.1, γ = −0.1,

    W̃ = s · (lower + h(V) · (upper − lower))

and V is learned by minimising

    ‖WX − W̃X‖² / ‖WX‖² + λ · mean(1 − |2h(V) − 1|^β)

with β annealed linearly from ``beta[0]`` to ``beta[1]`` after a warm-up without the
regulariser, by Adam on V. The gradient is written out (no autograd, buffers made
once; the grid neighbours are found once before the loop): from minibatches of
``batch_rows`` rows in a seeded order, or — when that is no more work, K ≤ 2 ·
rows per step — exactly over all calibration rows from H = Σ x xᵀ
(2 (W − W̃) H / tr(W H Wᵀ)), so a run is bit-reproducible for a seed. V starts where h(V) is the fractional position of w/s between its
neighbours. At the end h ≥ 0.5 rounds up, the weight is written on the grid and the
scale is fixed (:meth:`~hwquant.nn.quantizer.Quantizer.fix_scale`).

Example:
    >>> import torch, hwquant
    >>> from hwquant.models import MLP
    >>> from hwquant.spec import W4, A8, Recipe
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> m = hwquant.quantize(MLP((16, 32, 4)), Recipe.uniform(W4, A8))
    >>> report = apply(m, torch.randn(256, 16), AdaRoundConfig(iterations=200))
    >>> r = report.layers[0]
    >>> r.name, r.adaround_error < r.rtn_error
    ('layers.0', True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hwquant.algorithms.common import (
    LayerReport,
    Record,
    batches,
    calibrate_activations,
    captured_inputs,
    check_bool,
    check_range,
    conv_equivalent_weight,
    eval_mode,
    input_rows,
    register,
    weight_from_equivalent,
)
from hwquant.algorithms.gptq import gptq_layers, output_error
from hwquant.nn.a2q import A2QWeightQuantizer
from hwquant.nn.quantizer import Quantizer
from hwquant.spec.formats import Format

__all__ = [
    "AdaRoundConfig",
    "AdaRoundLayer",
    "AdaRoundReport",
    "apply",
    "grid_neighbours",
    "rectified_sigmoid",
]

ZETA, GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class AdaRoundConfig:
    """iterations: optimisation steps per layer (the paper uses 10 000 at lr 1e-3;
    with the exact or minibatch gradient written out, 500 steps at lr 1 reach lower
    errors on the digits CNN and a 1024×1024 layer, and lr 3 diverges); lr: Adam
    step on V; reg_weight: λ; beta: (start, end) of the annealed exponent; warmup:
    fraction of the iterations without the regulariser; seed: row sampling;
    batch_rows: rows per step; max_rows: rows kept per layer (sampled); max_batches:
    calibration batches used; calibrate: calibrate the activation quantizers on the
    data first."""

    iterations: int = 500
    lr: float = 1.0
    reg_weight: float = 0.01
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2
    seed: int = 0
    batch_rows: int = 1024
    max_rows: int = 65536
    max_batches: int = 16
    calibrate: bool = True

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_rows", "max_rows", "max_batches"):
            check_range(self, name, 1, integer=True)
        check_range(self, "seed", integer=True)
        check_range(self, "lr", 0, lo_open=True)
        check_range(self, "reg_weight", 0)
        check_range(self, "warmup", 0, 1, hi_open=True)
        b = tuple(self.beta) if isinstance(self.beta, tuple | list) else ()
        if len(b) != 2 or not all(
            not isinstance(v, bool) and isinstance(v, int | float) and 0 < v < math.inf for v in b
        ):
            raise ValueError(
                f"AdaRoundConfig.beta must be two numbers in (0, ∞) (start, end), got {self.beta!r}"
            )
        object.__setattr__(self, "beta", (float(b[0]), float(b[1])))
        check_bool(self, "calibrate")


@dataclass
class AdaRoundLayer(Record):
    """One layer: relative output error ‖(W − Ŵ)X‖² / ‖WX‖² on the calibration inputs
    with round-to-nearest and with AdaRound; ``flipped``: weights rounded away from the
    nearest grid value; ``seconds``: optimisation time."""

    name: str
    K: int
    rtn_error: float
    adaround_error: float
    flipped: float
    seconds: float


@dataclass
class AdaRoundReport(LayerReport):
    """Per-layer results (``layers``: AdaRoundLayer) and the layers skipped, with why."""


def rectified_sigmoid(v: Tensor) -> Tensor:
    """h(V) = clip(σ(V)(ζ − γ) + γ, 0, 1).

    >>> rectified_sigmoid(torch.tensor([-10.0, 0.0, 10.0])).tolist()
    [0.0, 0.5, 1.0]
    """
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def _inverse_rectified_sigmoid(h: Tensor) -> Tensor:
    p = ((h - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


@torch.no_grad()
def grid_neighbours(fmt: Format, v: Tensor) -> tuple[Tensor, Tensor]:
    """(lower, upper): adjacent grid values with lower ≤ v ≤ upper (v clamped to the
    format's range first; at the ends of the range lower = upper is possible).

    Small formats use their level set; larger integer formats floor / floor + 1 and
    larger minifloats the binade's ulp 2^(max(⌊log2|v|⌋, e_min) − M).

    >>> from hwquant.spec import FP4_E2M1
    >>> lo, up = grid_neighbours(FP4_E2M1, torch.tensor([0.7, 2.4, -2.4, 6.0]))
    >>> lo.tolist(), up.tolist()
    ([0.5, 2.0, -3.0, 6.0], [1.0, 3.0, -2.0, 6.0])
    """
    fmt = fmt.canonical()
    try:
        levels = fmt.levels()
    except ValueError:
        return _rule_neighbours(fmt, v.double())
    v = v.double()
    lv = torch.tensor(levels, dtype=torch.float64, device=v.device)
    v = v.clamp(float(lv[0]), float(lv[-1]))
    i = (torch.searchsorted(lv, v, right=True) - 1).clamp(0, len(lv) - 1)
    lower = lv[i]
    upper = lv[(i + 1).clamp(max=len(lv) - 1)]
    return lower, upper


def _rule_neighbours(fmt: Format, v: Tensor) -> tuple[Tensor, Tensor]:
    """grid_neighbours without a level set: lower ≤ v ≤ upper, adjacent grid values."""
    if fmt.is_integer:
        v = v.clamp(fmt.min_value, fmt.max_value)
        lower = v.floor()
        return lower, (lower + 1).clamp(max=fmt.max_value)
    if fmt.is_minifloat:
        top = fmt.max_value
        v = v.clamp(-top, top)
        a = v.abs()
        M, emin = fmt.mantissa_bits, fmt.min_exponent
        e = torch.floor(torch.log2(a.clamp(min=2.0**emin))).clamp(min=emin)
        ulp = torch.exp2(e - M)
        lo_m = torch.floor(a / ulp) * ulp  # neighbours of |v|
        up_m = (lo_m + ulp).clamp(max=top)
        if not fmt.has_subnormal:
            small = a < 2.0**emin
            lo_m = torch.where(small, torch.zeros_like(a), lo_m)
            up_m = torch.where(small, torch.full_like(a, 2.0**emin), up_m)
        neg = v < 0  # mirror: lower ≤ v ≤ upper either way
        return torch.where(neg, -up_m, lo_m), torch.where(neg, -lo_m, up_m)
    raise ValueError(f"AdaRound: no neighbour rule for {fmt} (it enumerates no levels)")


def _collect(model: nn.Module, layer: nn.Module, xs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """(rows [G, n, K] of the quantized inputs, H [G, K, K] = Σ x xᵀ)."""
    rows: list[Tensor] = []

    def add(mod: nn.Module, x: Tensor) -> None:
        rows.append(input_rows(mod, mod.input_quant(x)).detach().float())

    with captured_inputs(layer, add), torch.no_grad():
        for x in xs:
            model(x)
    if not rows:
        raise ValueError("the layer never ran on the calibration data")
    X = torch.cat(rows, dim=1)
    Xd = X.double()
    return X, Xd.transpose(1, 2) @ Xd


#: |V| at which h(V) reaches 0 or 1: σ(V) = (1 − γ) / (ζ − γ) = 11/12, V = ln 11.
V_EDGE = math.log((1 - GAMMA) / (ZETA - 1))

#: ∂/∂D of the reconstruction loss: ``grad(D, out)`` writes [G, C, K] into ``out``.
Gradient = Callable[[Tensor, Tensor], None]


def _exact_gradient(W: Tensor, H: Tensor) -> Gradient:
    """∂/∂D ‖D Xᵀ‖² / ‖W Xᵀ‖² over all rows: 2 D H / tr(W H Wᵀ) (one product)."""
    den = torch.einsum("gck,gkl,gcl->", W.double(), H, W.double()).clamp(min=1e-30)
    H2 = (H * (2.0 / den)).to(W.dtype)  # [G, K, K], the constant folded in

    def grad(D: Tensor, out: Tensor) -> None:
        torch.bmm(D, H2, out=out)

    return grad


def _minibatch_gradient(W: Tensor, X: Tensor, b: int, seed: int) -> Gradient:
    """∂/∂D ‖D X_bᵀ‖² / ‖W X_bᵀ‖² on ``b`` rows X_b per call: 2 (X_b Dᵀ)ᵀ X_b / ‖W X_bᵀ‖²,
    the rows taken in epochs of a seeded permutation (every row once per epoch)."""
    G, n, _ = X.shape
    ref = torch.zeros(n, dtype=torch.float64, device=X.device)  # ‖W x_r‖² per row
    for i in range(0, n, 4096):
        y = torch.bmm(X[:, i : i + 4096], W.transpose(1, 2))  # [G, rows, C]
        ref[i : i + 4096] = y.double().square().sum((0, 2))
    gen = torch.Generator().manual_seed(seed)
    E = X.new_empty(G, b, W.shape[1])  # [G, b, C] = X_b Dᵀ
    epoch: dict[str, Any] = {"X": X, "ref": ref, "at": 0}

    def grad(D: Tensor, out: Tensor) -> None:
        if epoch["at"] + b > n:  # a new epoch: a fresh order of the rows
            perm = torch.randperm(n, generator=gen).to(X.device)
            epoch.update(X=X[:, perm], ref=ref[perm], at=0)
        i = epoch["at"]
        Xb = epoch["X"][:, i : i + b]
        den = float(epoch["ref"][i : i + b].sum().clamp(min=1e-30))
        epoch["at"] = i + b if b < n else 0  # all rows every step: no order to draw
        torch.bmm(Xb, D.transpose(1, 2), out=E)
        torch.bmm(E.transpose(1, 2), Xb, out=out)
        out.mul_(2.0 / den)

    return grad


def _gradient(W: Tensor, X: Tensor, H: Tensor, config: AdaRoundConfig) -> Gradient:
    """The reconstruction gradient: the exact one over all rows from H when it is no
    more work than a minibatch (C·K² ≤ 2·b·K·C multiply-adds: K ≤ 2b), else
    minibatches of b rows."""
    b = min(config.batch_rows, X.shape[1])
    if H.shape[1] <= 2 * b:
        return _exact_gradient(W, H)
    return _minibatch_gradient(W, X, b, config.seed)


def _regulariser_gradient(
    h: Tensor, beta: float, c: float, g: Tensor, u: Tensor, t: Tensor, minus_one: Tensor
) -> None:
    """g += c · |2h − 1|^(β−1) sign(2h − 1) (``u``, ``t``: scratch buffers like h)."""
    torch.add(minus_one, h, alpha=2.0, out=u)  # u = 2h − 1
    if beta == 2.0:
        g.add_(u, alpha=c)
    elif beta > 2.0:  # |u|^(β−1) sign(u) = u |u|^(β−2) = u exp((β−2) log|u|), 0 at u = 0
        torch.abs(u, out=t).log_().mul_(beta - 2.0).exp_()  # 5x faster than pow here
        g.addcmul_(u, t, value=c)
    else:
        torch.sign(u, out=t)
        g.addcmul_(u.abs_().pow_(beta - 1.0), t, value=c)


class _VGradient:
    """∂L/∂V without autograd: with s = σ(V), D = W − W̃ = R − h · step,

        ∂L/∂h = −step · ∂rec/∂D − (2λβ/N) |2h − 1|^(β−1) sign(2h − 1)
        ∂L/∂V = ∂L/∂h · (ζ − γ) s (1 − s)   where 0 < h < 1, i.e. |V| < ln 11 (else 0)

    in place on buffers made once: the step is memory-bound, each pass over the
    weights counts."""

    def __init__(self, W: Tensor, base: Tensor, step: Tensor, grad: Gradient, reg_weight: float):
        self.R = W - base
        self.step = step
        self.step_v = step * (GAMMA - ZETA)  # the sign and ζ − γ folded in once
        self.grad, self.reg_weight = grad, reg_weight
        self.s, self.h, self.D, self.g, self.u, self.t = (torch.empty_like(W) for _ in range(6))
        self.live = torch.empty_like(W, dtype=torch.bool)
        self.gamma, self.minus_one = (
            torch.tensor(v, dtype=W.dtype, device=W.device) for v in (GAMMA, -1.0)
        )

    def __call__(self, V: Tensor, beta: float | None) -> Tensor:
        """∂L/∂V at V (``beta`` None: no regulariser); the returned buffer is reused."""
        s, h, g, t = self.s, self.h, self.g, self.t
        torch.sigmoid(V, out=s)
        torch.add(self.gamma, s, alpha=ZETA - GAMMA, out=h).clamp_(0.0, 1.0)
        torch.addcmul(self.R, h, self.step, value=-1.0, out=self.D)
        self.grad(self.D, g)
        g.mul_(self.step_v)
        if beta is not None and self.reg_weight > 0:
            c = 2.0 * self.reg_weight * beta / V.numel() * (GAMMA - ZETA)
            _regulariser_gradient(h, beta, c, g, self.u, t, self.minus_one)
        g.mul_(torch.addcmul(s, s, s, value=-1.0, out=t))  # s (1 − s)
        torch.lt(torch.abs(V, out=t), V_EDGE, out=self.live)
        return g.mul_(self.live)


@torch.no_grad()
def _optimise(
    W: Tensor, base: Tensor, step: Tensor, frac: Tensor, grad: Gradient, config
) -> Tensor:
    """Hard rounding decisions h ∈ {0, 1} [G, C, K] (module docstring): Adam on V,
    β annealed linearly after the warm-up."""
    v_grad = _VGradient(W, base, step, grad, config.reg_weight)
    V = _inverse_rectified_sigmoid(frac).contiguous()
    opt = torch.optim.Adam([V], lr=config.lr, fused=V.device.type in ("cpu", "cuda"))
    T = config.iterations
    t_warm = int(config.warmup * T)
    b0, b1 = config.beta
    for i in range(T):
        beta = b0 + (b1 - b0) * (i - t_warm) / max(1, T - t_warm) if i >= t_warm else None
        V.grad = v_grad(V, beta)
        opt.step()
    return (rectified_sigmoid(V) >= 0.5).to(W.dtype)


def quantize_layer(model: nn.Module, name: str, layer: nn.Module, xs, config) -> AdaRoundLayer:
    """AdaRound of one layer in place; returns its errors."""
    wq: Quantizer = layer.weight_quant
    X, H = _collect(model, layer, xs)
    G, K = H.shape[0], H.shape[1]
    if X.shape[1] > config.max_rows:
        gen = torch.Generator().manual_seed(config.seed)
        X = X[:, torch.randperm(X.shape[1], generator=gen)[: config.max_rows]]
    with torch.no_grad():
        s0, z0 = wq.scale_zero_for(layer.weight)
        c = wq.codes(layer.weight)
        S = conv_equivalent_weight(layer, c.scale.expand_as(layer.weight)).reshape(G, -1, K)
        Z = None if c.zero_point is None else c.zero_point.expand_as(layer.weight)
        Z = 0.0 if Z is None else conv_equivalent_weight(layer, Z).reshape(G, -1, K).double()
        W = conv_equivalent_weight(layer).detach().reshape(G, -1, K)
        rtn = conv_equivalent_weight(layer, wq(layer.weight)).reshape(G, -1, K)
        S = S.double()
        v = W.double() / S + Z
        lower, upper = grid_neighbours(wq.spec.format, v)
        gap = upper - lower
        frac = torch.where(gap > 0, (v.clamp(lower, upper) - lower) / gap.clamp(min=1e-300), 0.0)
        base, step = ((lower - Z) * S).float(), (gap * S).float()
    t0 = time.perf_counter()
    grad = _gradient(W.float(), X, H, config)
    hard = _optimise(W.float(), base, step, frac.float(), grad, config)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        out = (lower + hard.double() * gap - Z) * S
        nearest = torch.where(frac >= 0.5, 1.0, 0.0)
        flipped = float((hard.double() != nearest).double().mean())
        result = AdaRoundLayer(
            name, K, output_error(H, W, rtn), output_error(H, W, out), flipped, seconds
        )
        new = weight_from_equivalent(layer, out.reshape(conv_equivalent_weight(layer).shape))
        layer.weight.copy_(new.to(layer.weight.dtype))
        wq.fix_scale(s0, z0)
    return result


@register("adaround", AdaRoundConfig, needs_data=True)
def apply(model: nn.Module, data: Any, config: AdaRoundConfig | None = None) -> AdaRoundReport:
    """AdaRound: learned up/down rounding of every weight layer on its own grid.

    In place, layers in model order, each seeing the inputs of the already-rounded
    layers before it. Accumulator-aware (A2Q) layers are left to ``a2q_ptq``."""
    config = config or AdaRoundConfig()
    xs = batches(data, config.max_batches, what="adaround calibration data")
    report = AdaRoundReport()
    with eval_mode(model):
        if config.calibrate:
            calibrate_activations(model, xs)
        for name, m in model.named_modules():
            if isinstance(getattr(m, "weight_quant", None), A2QWeightQuantizer):
                report.skipped[name] = "accumulator-aware (A2Q) weights: use a2q_ptq"
        for name, layer in list(gptq_layers(model)):
            if layer.weight_quant.state == "float":
                report.skipped[name] = "weight quantization disabled"
                continue
            report.layers.append(quantize_layer(model, name, layer, xs, config))
    return report
