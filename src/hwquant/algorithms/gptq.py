"""GPTQ (Frantar et al., ICLR 2023): quantize a layer's weights column by column,
spreading each column's rounding error over the columns not yet quantized so the
layer's output on the calibration inputs X changes least.

With H = Σ x xᵀ over the layer's (quantized) inputs, damped by λ = damp · mean(diag H),
and U the upper Cholesky factor of H⁻¹, column i is quantized to q_i = Q(w_i) and the
remaining columns are updated:

    e = (w_i − q_i) / U_ii,     W[:, i+1:] −= e · U[i, i+1:]

(lazily per block of ``block_size`` columns, which gives the same result with
matrix products instead of rank-1 updates). ``act_order`` quantizes columns by
decreasing H_ii. Q is the layer's own weight quantizer — any grid (integers of any
width, minifloats, power-of-two, APoT, bipolar), per-tensor, per-channel or
per-group scales — with the scale it has before GPTQ, which is then fixed
(:meth:`~hwquant.nn.quantizer.Quantizer.fix_scale`) so the codes GPTQ chose are the
codes the model and its export use. Layers are processed in model order, each seeing
the inputs the already-quantized layers before it produce.

Example:
    >>> import torch, hwquant
    >>> from hwquant.models import MLP
    >>> from hwquant.spec import W4, A8, Recipe
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> m = hwquant.quantize(MLP((16, 32, 4)), Recipe.uniform(W4, A8))
    >>> report = apply(m, torch.randn(256, 16))
    >>> [r.name for r in report.layers], report.layers[0].gptq_error < report.layers[0].rtn_error
    (['layers.0', 'layers.2'], True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
from hwquant.nn.a2q import A2QWeightQuantizer
from hwquant.nn.quantizer import Quantizer

__all__ = ["GPTQConfig", "GPTQLayer", "GPTQReport", "apply", "gptq_rows", "hessian", "output_error"]

#: Column quantizer: (column values [C], original column index) -> quantized values [C].
ColumnQuantizer = Callable[[Tensor, int], Tensor]


@dataclass(frozen=True)
class GPTQConfig:
    """damp: λ as a fraction of mean(diag H); block_size: columns per lazy update;
    act_order: quantize columns by decreasing H_ii; calibrate: calibrate the
    activation quantizers on the data first; max_batches: calibration batches used."""

    damp: float = 0.01
    block_size: int = 128
    act_order: bool = True
    calibrate: bool = True
    max_batches: int = 16

    def __post_init__(self) -> None:
        check_range(self, "damp", 0, 1, hi_open=True)
        for name in ("block_size", "max_batches"):
            check_range(self, name, 1, integer=True)
        check_bool(self, "act_order", "calibrate")


@dataclass
class GPTQLayer(Record):
    """One layer: relative output error ‖(W − Ŵ)X‖² / ‖WX‖² on the calibration inputs
    with round-to-nearest (``rtn_error``) and with GPTQ (``gptq_error``)."""

    name: str
    K: int
    rtn_error: float
    gptq_error: float
    note: str = ""


@dataclass
class GPTQReport(LayerReport):
    """Per-layer results (``layers``: GPTQLayer) and the layers skipped, with why."""


@torch.no_grad()
def gptq_rows(
    W: Tensor,
    H: Tensor,
    quantize: ColumnQuantizer,
    *,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = True,
) -> Tensor:
    """Quantized rows Ŵ [C, K] of W [C, K] for the Hessian H [K, K] (module docstring);
    ``quantize(column, j)`` quantizes original column j (it may keep state, e.g. the
    L1 budgets of accumulator-aware GPTQ: columns arrive in processing order).

    >>> W = torch.tensor([[0.9, -0.8, 0.1, 0.05]]); H = torch.eye(4)
    >>> [round(v, 6) for v in gptq_rows(W, H, lambda w, j: (w / 0.1).round() * 0.1)[0].tolist()]
    [0.9, -0.8, 0.1, 0.1]
    """
    W = W.double().clone()
    H = H.double().clone()
    K = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(K)
    W, H = W[:, perm], H[perm][:, perm]
    H += torch.eye(K, dtype=H.dtype) * damp * torch.diag(H).mean()
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    order = perm.tolist()
    for i1 in range(0, K, block_size):
        i2 = min(i1 + block_size, K)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        E1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            w = W1[:, i]
            q = quantize(w, order[i1 + i]).double()
            Q[:, i1 + i] = q
            e = (w - q) / U1[i, i]
            W1[:, i:] -= e.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            E1[:, i] = e
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return Q[:, torch.argsort(perm)]


def hessian(model: nn.Module, layer: nn.Module, xs: list[Tensor]) -> Tensor:
    """H [groups, K, K] = Σ x xᵀ over ``layer``'s quantized inputs while ``model`` runs
    on ``xs`` (rows from :func:`~hwquant.algorithms.common.input_rows`)."""
    H: list[Tensor] = []

    def add(mod: nn.Module, x: Tensor) -> None:
        rows = input_rows(mod, mod.input_quant(x)).double()  # [G, n, K]
        h = rows.transpose(1, 2) @ rows
        if H:
            H[0] += h
        else:
            H.append(h)

    with captured_inputs(layer, add), torch.no_grad():
        for x in xs:
            model(x)
    if not H:
        raise ValueError("the layer never ran on the calibration data")
    return H[0]


def gptq_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Weight layers whose weight quantizer is a plain :class:`Quantizer`."""
    for name, m in model.named_modules():
        wq = getattr(m, "weight_quant", None)
        if isinstance(wq, Quantizer) and not isinstance(wq, A2QWeightQuantizer):
            yield name, m


def output_error(H: Tensor, W: Tensor, What: Tensor) -> float:
    """Σ_g tr(D_g H_g D_gᵀ) / Σ_g tr(W_g H_g W_gᵀ) with D = W − Ŵ, rows per group."""
    D = (W - What).double()
    num = torch.einsum("gck,gkl,gcl->", D, H, D)
    den = torch.einsum("gck,gkl,gcl->", W.double(), H, W.double())
    return float(num / den.clamp(min=1e-300))


@torch.no_grad()
def quantize_layer(model: nn.Module, name: str, layer: nn.Module, xs, config) -> GPTQLayer:
    """GPTQ of one layer in place; returns its errors."""
    wq: Quantizer = layer.weight_quant
    H = hessian(model, layer, xs)  # [G, K, K]
    s0, z0 = wq.scale_zero_for(layer.weight)
    G, K = H.shape[0], H.shape[1]
    c = wq.codes(layer.weight)
    S = conv_equivalent_weight(layer, c.scale.expand_as(layer.weight))
    Z = None if c.zero_point is None else c.zero_point.expand_as(layer.weight)
    Z = None if Z is None else conv_equivalent_weight(layer, Z).reshape(G, -1, K)
    W = conv_equivalent_weight(layer).detach().reshape(G, -1, K)
    S = S.reshape(G, -1, K)
    rtn = conv_equivalent_weight(layer, wq(layer.weight)).reshape(G, -1, K)
    grid = wq.grid
    out = torch.empty_like(W, dtype=torch.float64)
    for g in range(G):

        def column(w: Tensor, j: int, g: int = g) -> Tensor:
            s = S[g, :, j].double()
            z = 0.0 if Z is None else Z[g, :, j].double()
            v = (w / s + z).float()
            v = v.clamp(grid.lo, grid.hi) if grid.saturating else v
            return (grid.fn(v).double() - z) * s

        out[g] = gptq_rows(
            W[g],
            H[g],
            column,
            damp=config.damp,
            block_size=config.block_size,
            act_order=config.act_order,
        )
    result = GPTQLayer(name, K, output_error(H, W, rtn), output_error(H, W, out))
    new = weight_from_equivalent(layer, out.reshape(conv_equivalent_weight(layer).shape))
    layer.weight.copy_(new.to(layer.weight.dtype))
    wq.fix_scale(s0, z0)  # the scale the codes were chosen on
    return result


@register("gptq", GPTQConfig, needs_data=True)
def apply(model: nn.Module, data: Any, config: GPTQConfig | None = None) -> GPTQReport:
    """GPTQ of every weight layer on its own quantizer's grid (integer, minifloat, power-of-two).

    In place, layers in model order. ``data``: a tensor of inputs or an iterable of
    batches ((x, y) or x). Accumulator-aware (A2Q) layers are left to ``a2q_ptq``."""
    config = config or GPTQConfig()
    xs = batches(data, config.max_batches, what="gptq calibration data")
    report = GPTQReport()
    with eval_mode(model):
        if config.calibrate:
            calibrate_activations(model, xs)
        for name, m in model.named_modules():
            wq = getattr(m, "weight_quant", None)
            if isinstance(wq, A2QWeightQuantizer):
                report.skipped[name] = "accumulator-aware (A2Q) weights: use a2q_ptq"
        for name, layer in list(gptq_layers(model)):
            if layer.weight_quant.state == "float":
                report.skipped[name] = "weight quantization disabled"
                continue
            report.layers.append(quantize_layer(model, name, layer, xs, config))
    return report
