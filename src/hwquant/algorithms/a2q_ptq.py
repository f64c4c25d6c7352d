"""Accumulator-aware post-training quantization: A2Q / A2Q+ weights without retraining.

Input: a model quantized with A2Q / A2QPlus weight specs straight from a float
(pre-trained) checkpoint, and a little calibration data. Output: integer weights
whose every output channel meets its accumulator budget, so the layer provably never
overflows its P-bit accumulator. Two methods:

- ``"ep"``: Euclidean-projection init + round toward zero (the A2Q+ paper's
  initialization, :meth:`~hwquant.nn.a2q.A2QWeightQuantizer.ep_init`): each channel
  is projected onto the L1 ball of radius s·T, then truncated.
- ``"gptq"``: GPTQ (Frantar et al., 2023) with the L1 budget as a constraint —
  hwquant's procedure. Per layer, with H = Σ x xᵀ over its quantized calibration
  inputs (+ damping), U the upper Cholesky factor of H⁻¹, and columns in order of
  decreasing H_ii:

      v = w_i / s                                 (error-compensated target code)
      v ← sign(v)·max(|v| − θ, 0)                 (soft threshold: θ per channel and
                                                   sign, from the L1-ball projection of
                                                   the float row onto the budget)
      q_i = clip(round(v), −min(q_max, b⁻), min(q_max, b⁺))   hard budget
      W[:, j>i] −= (w_i − s·q_i)/U_ii · U_i,j      (GPTQ error feedback)

  where b⁺ / b⁻ are the budget still left: A2Q shares one budget ⌊T⌋ between both
  signs (b⁺ = b⁻ = ⌊T⌋ − Σ|q|), A2Q+ gives each sign half ⌊T⁺/2⌋. The hard clip makes
  the guarantee unconditional; the soft threshold spends the budget on the columns
  that matter instead of the first ones; the error feedback lets later columns make
  up for what the threshold and the rounding took. For A2Q+ no zero-centring is
  needed: the per-half budget is the guarantee itself (REFERENCE.md §2).

The resulting codes are frozen into the layers' A2Q quantizers
(:meth:`~hwquant.nn.a2q.A2QWeightQuantizer.freeze_codes`); QAT can resume from them
after :func:`hwquant.algorithms.a2q_init.ep_init` or ``reset_weight_scale``. A bias on the
accumulator scale is clipped by its layer to what fits beside the frozen codes
(:meth:`~hwquant.nn.a2q.A2QWeightQuantizer.clip_bias`); ``ok`` counts it.

Example:
    >>> import torch, hwquant
    >>> from hwquant.models import MLP
    >>> from hwquant.spec import A2QPlus, A4U, IntFormat, Recipe
    >>> spec = A2QPlus(IntFormat(4, narrow=True), accumulator_bits=10)
    >>> m = hwquant.quantize(MLP((32, 16, 4)), Recipe.uniform(weights=spec, activations=A4U))
    >>> report = apply(m, torch.rand(256, 32), A2QPTQConfig(method="gptq"))
    >>> [(r.name, r.method, r.ok) for r in report.layers]
    [('layers.0', 'gptq', True), ('layers.2', 'gptq', True)]
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hwquant.algorithms.common import batches, calibrate_activations, eval_mode, register
from hwquant.algorithms.gptq import gptq_rows, hessian, output_error
from hwquant.core.accumulator import soft_threshold_for_l1
from hwquant.nn.a2q import A2QWeightQuantizer, a2q_layers, accumulator_bias_codes

__all__ = ["METHODS", "A2QPTQConfig", "A2QPTQReport", "LayerResult", "apply", "constrained_gptq"]

METHODS = ("ep", "gptq")


@dataclass(frozen=True)
class A2QPTQConfig:
    """method: ``"gptq"`` or ``"ep"``; damp: GPTQ damping (fraction of mean H_ii);
    act_order: quantize columns by decreasing H_ii; soft_threshold: shrink codes by the
    L1-ball threshold before rounding; calibrate: calibrate the activation quantizers
    on ``data`` first (float pass); max_batches: calibration batches used; scale_grid:
    multiples of s = max|w|/q_max tried per layer (GPTQ), the one with the smallest
    output error ‖X(W − Ŵ)ᵀ‖² is kept (None: powers of √2 from 1 to q_max — a tight
    budget is best spent on a coarser grid)."""

    method: str = "gptq"
    damp: float = 0.01
    act_order: bool = True
    soft_threshold: bool = True
    calibrate: bool = True
    max_batches: int = 16
    scale_grid: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"A2QPTQConfig.method must be one of {list(METHODS)}, got {self.method!r}"
            )
        if not 0.0 <= self.damp < 1.0:
            raise ValueError(f"A2QPTQConfig.damp must be in [0, 1), got {self.damp}")
        grid = self.scale_grid
        if grid is not None and (not grid or any(m <= 0 for m in grid)):
            raise ValueError(f"A2QPTQConfig.scale_grid must be positive, got {self.scale_grid}")
        if self.max_batches < 1:
            raise ValueError(f"A2QPTQConfig.max_batches must be ≥ 1, got {self.max_batches}")


@dataclass
class LayerResult:
    """One layer: method used, budget, the largest ‖q‖₁ / sign half after PTQ,
    sparsity, and the relative output error ‖X(W − Ŵ)ᵀ‖² / ‖XWᵀ‖² on the calibration
    inputs (None for ``ep``, which sees no data)."""

    name: str
    method: str
    bound: float
    l1_max: float
    half_max: float
    sparsity: float
    ok: bool
    rel_error: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class A2QPTQReport:
    layers: list[LayerResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "layers": [r.to_dict() for r in self.layers]}


# ---------------------------------------------------------------- the constrained GPTQ step
def _budgets(q: A2QWeightQuantizer) -> tuple[float, float, bool]:
    """(b⁺, b⁻, shared): integer budgets per channel (shared: one for both signs)."""
    if q.zero_centre:
        half = math.floor(q.l1_bound / 2 * (1 - 1e-9))
        return half, half, False
    total = math.floor(q.l1_bound * (1 - 1e-9))
    return total, total, True


@torch.no_grad()
def constrained_gptq(
    W: Tensor,
    H: Tensor,
    s: Tensor,
    q_max: int,
    budget_pos: float,
    budget_neg: float,
    shared: bool,
    *,
    damp: float = 0.01,
    act_order: bool = True,
    soft_threshold: bool = True,
) -> Tensor:
    """Integer codes q [C, K] for float weights W [C, K] (module docstring): GPTQ with
    per-channel scales ``s`` [C], codes in [−q_max, q_max] and per-channel L1 budgets
    (``shared``: Σ|q| ≤ budget_pos; else Σq⁺ ≤ budget_pos and Σq⁻ ≤ budget_neg).

    >>> W = torch.tensor([[0.9, -0.8, 0.1, 0.05]]); H = torch.eye(4)
    >>> constrained_gptq(W, H, torch.tensor([0.1]), 7, 10, 10, True).tolist()
    [[5.0, -5.0, 0.0, 0.0]]
    """
    C = W.shape[0]
    s = s.double().reshape(C)
    theta_pos, theta_neg = _thresholds(
        W.double() / s.unsqueeze(1), budget_pos, budget_neg, shared, soft_threshold
    )
    left_pos = torch.full((C,), float(budget_pos), dtype=torch.float64)
    left_neg = torch.full((C,), float(budget_neg), dtype=torch.float64)

    def column(w: Tensor, j: int) -> Tensor:
        """Shrink by θ, round, then clip to what is left of each channel's budget."""
        nonlocal left_pos, left_neg
        v = w / s
        v = torch.where(v > 0, (v - theta_pos).clamp(min=0), (v + theta_neg).clamp(max=0))
        q = torch.round(v)
        q = torch.minimum(q, left_pos.clamp(max=q_max))
        q = torch.maximum(q, -left_neg.clamp(max=q_max))
        if shared:
            left_pos = left_pos - q.abs()
            left_neg = left_pos
        else:
            left_pos = left_pos - q.clamp(min=0)
            left_neg = left_neg - (-q).clamp(min=0)
        return q * s

    What = gptq_rows(W, H, column, damp=damp, act_order=act_order)
    return torch.round(What / s.unsqueeze(1))


def _thresholds(
    V: Tensor, budget_pos: float, budget_neg: float, shared: bool, enabled: bool
) -> tuple[Tensor, Tensor]:
    """θ⁺, θ⁻ per channel: the L1-ball soft thresholds of the code-domain rows."""
    zero = torch.zeros(V.shape[0], dtype=V.dtype)
    if not enabled:
        return zero, zero
    if shared:
        theta = soft_threshold_for_l1(V, budget_pos)
        return theta, theta
    return (
        soft_threshold_for_l1(V.clamp(min=0), budget_pos),
        soft_threshold_for_l1(V.clamp(max=0), budget_neg),
    )


# ---------------------------------------------------------------- per-layer driver
def _gptq_supported(layer: nn.Module) -> str:
    if getattr(layer, "transposed", False):
        return "transposed convolution: EP-init used"
    if getattr(layer, "groups", 1) != 1:
        return "grouped convolution: EP-init used"
    return ""


def _result(name: str, method: str, layer: nn.Module, wq: A2QWeightQuantizer) -> LayerResult:
    c = wq.check(layer.weight, accumulator_bias_codes(layer))  # the bias counted too
    return LayerResult(name, method, c.bound, c.l1_max, c.half_max, c.sparsity, c.ok)


@register("a2q_ptq", A2QPTQConfig, needs_data=True)
def apply(model: nn.Module, data: Any, config: A2QPTQConfig | None = None) -> A2QPTQReport:
    """Give every A2Q / A2Q+ layer budget-respecting integer weights (EP-init or L1-constrained GPTQ).

    In place. ``data``: a tensor of inputs or an iterable of batches ((x, y) or x).
    Returns an :class:`A2QPTQReport` (``ok``: every channel within its budget)."""
    config = config or A2QPTQConfig()
    xs = batches(data, config.max_batches, what="a2q_ptq.apply calibration data")
    with eval_mode(model):
        if config.calibrate:
            calibrate_activations(model, xs)
        report = A2QPTQReport()
        for name, layer, wq in list(a2q_layers(model)):
            report.layers.append(_apply_layer(model, name, layer, wq, xs, config))
    return report


@torch.no_grad()
def _apply_layer(
    model: nn.Module,
    name: str,
    layer: nn.Module,
    wq: A2QWeightQuantizer,
    batches: list[Tensor],
    config: A2QPTQConfig,
) -> LayerResult:
    why = _gptq_supported(layer)
    if config.method == "ep" or why:
        layer.weight.copy_(wq.ep_init(layer.weight))
        res = _result(name, "ep", layer, wq)
        res.note = why
        return res
    H = hessian(model, layer, batches)[0]  # groups = 1
    W = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    s_max = (W.abs().amax(1) / wq.grid.hi).clamp(min=1e-12)
    bpos, bneg, shared = _budgets(wq)
    best: tuple[float, Tensor, Tensor] | None = None
    q_max = int(wq.grid.hi)
    grid = config.scale_grid or [2 ** (k / 2) for k in range(int(2 * math.log2(q_max)) + 1)]
    for mult in grid:  # a coarser grid lets the budget cover more weight mass
        s = s_max * mult
        Q = constrained_gptq(
            W,
            H,
            s,
            q_max,
            bpos,
            bneg,
            shared,
            damp=config.damp,
            act_order=config.act_order,
            soft_threshold=config.soft_threshold,
        )
        err = output_error(H[None], W[None], (Q * s.double().unsqueeze(1))[None])
        if best is None or err < best[0]:
            best = (err, Q, s)
    err, Q, s = best
    layer.weight.copy_(wq.freeze_codes(Q, s))
    res = _result(name, "gptq", layer, wq)
    res.rel_error = err
    return res
