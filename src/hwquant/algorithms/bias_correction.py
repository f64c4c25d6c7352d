"""Empirical bias correction (Nagel et al., 2019, "Data-free quantization", §4.2).

Quantizing W to Ŵ shifts a layer's expected output: E[y_float − y_quant] =
(W − Ŵ) E[x] per output channel, with x the layer's (quantized) input rows from
:func:`~hwquant.algorithms.common.input_rows` on the calibration data. The shift is
added to the layer's bias (a bias-less layer gets one with ``add_bias``), so the
quantized layer's output mean matches the float weights'. Layers are corrected in
model order, each seeing the inputs of the already-corrected layers before it.

Example:
    >>> import torch, hwquant
    >>> from torch import nn
    >>> from hwquant.spec import A8, IntFormat, QuantSpec, Recipe
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> m = hwquant.quantize(nn.Sequential(nn.Linear(16, 8)), Recipe.uniform(QuantSpec(IntFormat(3)), A8))
    >>> r = apply(m, torch.randn(256, 16) + 1.0).layers[0]
    >>> r.mse_after <= r.mse_before
    True
"""

from __future__ import annotations

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
)
from hwquant.nn.kinds import kind_of

__all__ = ["BiasCorrectionConfig", "BiasCorrectionLayer", "BiasCorrectionReport", "apply"]


@dataclass(frozen=True)
class BiasCorrectionConfig:
    """calibrate: calibrate the activation quantizers on the data first;
    max_batches: calibration batches used."""

    calibrate: bool = True
    max_batches: int = 16

    def __post_init__(self) -> None:
        check_range(self, "max_batches", 1, integer=True)
        check_bool(self, "calibrate")


@dataclass
class BiasCorrectionLayer(Record):
    """One layer: mean |shift| added to the bias; output MSE between float-weight and
    quantized-weight outputs (same quantized inputs) before / after the correction."""

    name: str
    mean_abs_shift: float
    mse_before: float
    mse_after: float
    added_bias: bool


@dataclass
class BiasCorrectionReport(LayerReport):
    """Per-layer results (``layers``: BiasCorrectionLayer) and the layers skipped, with why."""


def _moments(model: nn.Module, layer: nn.Module, xs: list[Tensor]) -> tuple[Tensor, Tensor, int]:
    """(Σ x [G, K], Σ x xᵀ [G, K, K], n) over the layer's quantized input rows."""
    acc: list[Any] = []

    def add(mod: nn.Module, x: Tensor) -> None:
        rows = input_rows(mod, mod.input_quant(x)).double()
        s, h, n = rows.sum(1), rows.transpose(1, 2) @ rows, rows.shape[1]
        if acc:
            acc[0] += s
            acc[1] += h
            acc[2] += n
        else:
            acc.extend([s, h, n])

    with captured_inputs(layer, add), torch.no_grad():
        for x in xs:
            model(x)
    if not acc:
        raise ValueError("the layer never ran on the calibration data")
    return acc[0], acc[1], acc[2]


@torch.no_grad()
def correct_layer(model: nn.Module, name: str, layer: nn.Module, xs) -> BiasCorrectionLayer:
    """Bias correction of one layer in place."""
    sx, H, n = _moments(model, layer, xs)
    G, K = H.shape[0], H.shape[1]
    W = conv_equivalent_weight(layer).reshape(G, -1, K).double()
    Wq = conv_equivalent_weight(layer, layer.weight_quant(layer.weight)).reshape(G, -1, K)
    D = W - Wq.double()  # y_float − y_quant = D x
    shift = torch.einsum("gck,gk->gc", D, sx) / n  # [G, C/G]
    C = D.shape[0] * D.shape[1]
    sq = torch.einsum("gck,gkl,gcl->", D, H, D)
    cross = torch.einsum("gc,gck,gk->", shift, D, sx)
    before = float(sq / (n * C))
    after = float((sq - 2 * cross + n * shift.pow(2).sum()) / (n * C))
    b = shift.reshape(-1).to(layer.weight.dtype)
    added = layer.bias is None
    if added:
        layer.add_bias(b)
    else:
        layer.bias.add_(b)
    return BiasCorrectionLayer(name, float(shift.abs().mean()), before, max(after, 0.0), added)


@register("bias_correction", BiasCorrectionConfig, needs_data=True)
def apply(
    model: nn.Module, data: Any, config: BiasCorrectionConfig | None = None
) -> BiasCorrectionReport:
    """Empirical bias correction: add E[(W − Ŵ)x] to every weight layer's bias.

    In place, layers in model order. ``data``: a tensor of inputs or an iterable of
    batches ((x, y) or x)."""
    config = config or BiasCorrectionConfig()
    xs = batches(data, config.max_batches, what="bias_correction calibration data")
    report = BiasCorrectionReport()
    with eval_mode(model):
        if config.calibrate:
            calibrate_activations(model, xs)
        for name, m in model.named_modules():
            wq = getattr(m, "weight_quant", None)
            if wq is None or not hasattr(m, "add_bias"):
                continue
            if wq.state == "float":
                report.skipped[name] = "weight quantization disabled"
                continue
            kind = kind_of(m)
            if kind is not None and not kind.has_bias:
                report.skipped[name] = "the layer's spec allows no bias"
                continue
            report.layers.append(correct_layer(model, name, m, xs))
    return report
