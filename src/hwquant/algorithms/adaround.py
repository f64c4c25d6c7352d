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
regulariser. V starts where h(V) is the fractional position of w/s between its
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
    """iterations: optimisation steps per layer; lr: Adam step on V; reg_weight: λ;
    beta: (start, end) of the annealed exponent; warmup: fraction of the iterations
    without the regulariser; seed: row sampling; batch_rows: rows per step;
    max_rows: rows kept per layer (sampled); max_batches: calibration batches used;
    calibrate: calibrate the activation quantizers on the data first."""

    iterations: int = 1000
    lr: float = 1e-2
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
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"AdaRoundConfig.{name} must be a positive int, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"AdaRoundConfig.seed must be an int, got {self.seed!r}")
        if not (isinstance(self.lr, int | float) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"AdaRoundConfig.lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.reg_weight, int | float) and self.reg_weight >= 0):
            raise ValueError(f"AdaRoundConfig.reg_weight must be ≥ 0, got {self.reg_weight!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"AdaRoundConfig.warmup must be in [0, 1), got {self.warmup}")
        b = tuple(self.beta)
        if len(b) != 2 or not all(isinstance(v, int | float) and v > 0 for v in b):
            raise ValueError(f"AdaRoundConfig.beta must be two positive numbers, got {self.beta!r}")
        object.__setattr__(self, "beta", (float(b[0]), float(b[1])))
        if not isinstance(self.calibrate, bool):
            raise ValueError("AdaRoundConfig.calibrate must be a bool")


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


def _optimise(W: Tensor, base: Tensor, step: Tensor, frac: Tensor, X: Tensor, config) -> Tensor:
    """Hard rounding decisions h ∈ {0, 1} [G, C, K] (module docstring)."""
    gen = torch.Generator().manual_seed(config.seed)
    V = _inverse_rectified_sigmoid(frac).clone().requires_grad_(True)
    opt = torch.optim.Adam([V], lr=config.lr)
    n = X.shape[1]
    T = config.iterations
    t_warm = int(config.warmup * T)
    b0, b1 = config.beta
    for t in range(T):
        idx = torch.randint(n, (min(config.batch_rows, n),), generator=gen) if n > 0 else None
        xb = X[:, idx] if n > config.batch_rows else X
        h = rectified_sigmoid(V)
        Wt = base + h * step
        ref = xb @ W.transpose(1, 2)
        err = xb @ (W - Wt).transpose(1, 2)
        loss = err.pow(2).sum() / ref.pow(2).sum().clamp(min=1e-30)
        if t >= t_warm and config.reg_weight > 0:
            r = (t - t_warm) / max(1, T - t_warm)
            beta = b0 + (b1 - b0) * r
            loss = loss + config.reg_weight * (1 - (2 * h - 1).abs().pow(beta)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (rectified_sigmoid(V.detach()) >= 0.5).to(W.dtype)


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
    with torch.enable_grad():
        hard = _optimise(W.float(), base, step, frac.float(), X, config)
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
