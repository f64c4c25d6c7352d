"""Shared helpers of the A2Q examples: recipes, QAT with the A2Q penalty, and the
accumulator audit of a trained model (integer execution, worst-case inputs)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import hwquant
from hwquant.algorithms import a2q_ptq
from hwquant.algorithms.a2q_init import ep_init, unfreeze
from hwquant.analysis import accumulators, overflow_audit, run_integer
from hwquant.analysis.integer_exec import weight_codes
from hwquant.nn import QuantWeightLayer
from hwquant.nn.a2q import a2q_penalty, check_bounds
from hwquant.spec import (
    A2Q,
    A2QPlus,
    IntFormat,
    LayerSpec,
    QuantSpec,
    Recipe,
    ScaleSpec,
    accumulator_bias,
    per_channel,
)

#: weight penalty λ of Σ ReLU(g − T·s) (A2Q); Adam makes the exact value uncritical.
PENALTY = 1e-3
METHODS = ("baseline", "A2Q", "A2Q+")


def act_spec(bits: int, signed: bool = True) -> QuantSpec:
    """Per-tensor activations with a learned scale (signed: the recipe makes inputs that
    follow a ReLU unsigned)."""
    return QuantSpec(IntFormat(bits, signed=signed), scale=ScaleSpec("percentile", learned=True))


def weight_spec(method: str, bits: int, P: int | None) -> QuantSpec:
    fmt = IntFormat(bits, narrow=True)
    if method == "baseline":
        return QuantSpec(fmt, per_channel(0), ScaleSpec(learned=True))
    cls = A2Q if method == "A2Q" else A2QPlus
    return cls(fmt, accumulator_bits=P)


def recipe(method: str, w_bits: int, a_bits: int, P: int | None, first: dict | None = None):
    """Uniform recipe; ``first`` = {layer name: input QuantSpec} overrides (e.g. 8-bit
    image inputs)."""
    w = weight_spec(method, w_bits, P)
    by_name = {
        name: LayerSpec(input=spec, weight=w, bias=accumulator_bias(32))
        for name, spec in (first or {}).items()
    }
    return Recipe.uniform(weights=w, activations=act_spec(a_bits), by_name=by_name)


def prepare(model: nn.Module, calib: torch.Tensor, init: str = "ep") -> None:
    """Initialize an A2Q model from its float weights: ``ep`` (Euclidean projection) or
    ``ptq`` (accumulator-aware GPTQ codes, then thawed for QAT); calibrate activations."""
    if init == "ptq":
        a2q_ptq.apply(model, calib, a2q_ptq.A2QPTQConfig(method="gptq"))
        unfreeze(model)
    else:
        ep_init(model)
    with hwquant.calibration(model):
        model(calib)


def penalty_loss(model: nn.Module) -> torch.Tensor:
    return PENALTY * a2q_penalty(model)


def setup(model: nn.Module, calib: torch.Tensor, method: str, init: str = "ep"):
    """Calibrate a baseline model, or initialize an A2Q(+) one (``prepare``); returns
    the extra loss term for training (None for the baseline)."""
    if method == "baseline":
        with hwquant.calibration(model):
            model(calib)
        return None
    prepare(model, calib, init)
    return penalty_loss


@dataclass
class Audit:
    """Accumulator facts of a trained model at P bits."""

    guaranteed_P: int  # widest exact worst-case accumulator over the layers
    sparsity: float  # fraction of zero integer weights
    bounds_ok: bool  # every A2Q channel within its L1 budget
    worst_case_overflow_channels: int  # channels overflowing P bits on their extreme inputs
    data_overflows: int  # dot products overflowing P bits (wrap) on the test inputs


def sparsity(model: nn.Module) -> float:
    zeros = total = 0
    for m in model.modules():
        if isinstance(m, QuantWeightLayer):
            wc = weight_codes(m)
            if wc is not None:
                zeros += int((wc[0] == 0).sum())
                total += wc[0].numel()
    return zeros / max(total, 1)


def audit(model: nn.Module, x: torch.Tensor, P: int, mode: str = "wrap") -> Audit:
    rep = accumulators(model)
    guaranteed = max(r.exact_bits for r in rep.layers if r.exact_bits is not None)
    return Audit(
        guaranteed_P=guaranteed,
        sparsity=sparsity(model),
        bounds_ok=all(c.ok for c in check_bounds(model).values()),
        worst_case_overflow_channels=sum(a.overflowing for a in overflow_audit(model, P, mode)),
        data_overflows=run_integer(model, x, P, mode).overflows,
    )


def integer_metric(
    model: nn.Module, x: torch.Tensor, P: int | None, metric: Callable[[torch.Tensor], float]
) -> float:
    """``metric`` of the integer execution's outputs with P-bit wrapping accumulators."""
    return metric(run_integer(model, x, P, "wrap").outputs)


def fmt_pct(v: float) -> str:
    return f"{100 * v:.1f}"


def fmt_db(v: float) -> str:
    return "-inf" if math.isinf(v) else f"{v:.2f}"
