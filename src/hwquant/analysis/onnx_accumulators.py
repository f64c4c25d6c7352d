"""Accumulator analysis of a QONNX file written by any tool (Brevitas, qonnx, FINN,
hwquant): the ``.onnx`` side of :func:`hwquant.analysis.accumulators`.

The graph is read by the cost reader (:mod:`hwquant.analysis.cost.onnx_reader`:
qonnx cleanup and shape inference, then one record per Conv / Gemm / MatMul with
constant weights, their integer codes and the input format). Per layer, with
integer inputs x in [x_min, x_max] and integer weight codes q (REFERENCE.md §1):

- K, N (input bits, signed?), M (weight bits);
- the data-type bound ⌈α + φ(α) + 1⌉, α = log2 K + N + M − 1 − 1_s;
- the L1 (weight-based) bound, max over output channels of
  :func:`hwquant.core.accumulator.a2q_min_bits` (‖q‖₁, N, 1_s);
- the exact worst case per output channel, acc_max = b + Σ q_i·(x_max if q_i > 0
  else x_min), acc_min likewise, and its width (FINN's sizing).

The bias b is part of the accumulator when the graph adds it there: the Conv / Gemm
bias input, or an Add right after the Conv / MatMul whose other operand is constant.
It is taken in only when it lies on the accumulator grid s_x·s_w (a Quant whose
scale equals s_x·s_w, or a float bias whose values divided by s_x·s_w are
integers); otherwise it is left out and the row says so. Bounds of a layer whose
input is not an integer grid with zero point 0 (float inputs, asymmetric input
quantizers) are not given.

:func:`onnx_overflow_audit` feeds every output channel the two inputs that maximize
and minimize its sum and emulates a P-bit accumulator (:func:`accumulate`): the
number of channels that can overflow.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from hwquant.analysis.accumulators import AccumulatorReport, AuditRow, LayerAccumulator
from hwquant.analysis.cost import formulas
from hwquant.analysis.cost.onnx_reader import (
    OnnxGraph,
    input_quantizer,
    load_graph,
    read_weight,
    weight_layers,
    weight_quantizer,
)
from hwquant.analysis.cost.records import LayerRecord, integer_grid, integer_weight_bits
from hwquant.core.accumulator import ACCUMULATOR_MODES, a2q_min_bits, accumulate
from hwquant.export.ops import find

__all__ = ["OnnxLayer", "onnx_accumulators", "onnx_layers", "onnx_overflow_audit"]


class OnnxLayer:
    """One weight layer of a QONNX graph, ready for accumulator analysis.

    ``q``: [C, K] integer weight codes; ``x_min`` / ``x_max``: the input code range;
    ``bias``: [C] integer bias codes in the accumulator, or None; ``row``: the facts
    (bounds filled in by :func:`onnx_layers`)."""

    def __init__(self, row: LayerAccumulator, q: np.ndarray | None = None) -> None:
        self.row = row
        self.q = q
        self.x_min = self.x_max = 0
        self.bias: np.ndarray | None = None


# ---------------------------------------------------------------- scales and bias
def _scale(g: OnnxGraph, quant: Any | None) -> np.ndarray | None:
    """The scale of a Quant / BipolarQuant (1 for a MultiThreshold, FINN's integer
    outputs, and for annotated tensors without a quantizer node)."""
    if quant is None:
        return np.ones(1)
    if quant.op_type == "MultiThreshold":
        return np.full(1, float(g.attr(quant, "out_scale", 1.0)))
    s = g.const(quant.input[1])
    return None if s is None else np.asarray(s, dtype=np.float64).reshape(-1)


def _zero_point(g: OnnxGraph, quant: Any | None) -> float:
    op = None if quant is None else find(quant.op_type)
    if op is None or not op.integer_codes or len(quant.input) < 3:  # no zero-point input
        return 0.0
    z = g.const(quant.input[2])
    return 0.0 if z is None else float(np.abs(z).max())


def _bias_tensor(g: OnnxGraph, node: Any) -> str | None:
    """The constant added to the accumulator: Conv / Gemm input 2, or the other operand
    of the single Add consuming a Conv / MatMul output."""
    if node.op_type in ("Conv", "Gemm", "ConvTranspose") and len(node.input) > 2:
        return node.input[2] or None
    users = g.consumers.get(node.output[0], [])
    if len(users) == 1 and users[0].op_type == "Add":
        other = [i for i in users[0].input if i != node.output[0]]
        if len(other) == 1 and read_weight(g, other[0]) is not None:
            return other[0]
    return None


def _bias_codes(
    g: OnnxGraph, node: Any, w_name: str, channels: int
) -> tuple[np.ndarray | None, str]:
    """([C] bias codes on the accumulator grid, or None; a note)."""
    name = _bias_tensor(g, node)
    if name is None:
        return None, ""
    values, fmt, q = read_weight(g, name)
    s_x = _scale(g, input_quantizer(g, node.input[0]))
    s_w = _scale(g, weight_quantizer(g, w_name))
    if s_x is None or s_w is None or s_x.size != 1 or s_w.size not in (1, channels):
        return None, "bias left out (accumulator scale unknown)"
    s_acc = np.broadcast_to(s_x * s_w, (channels,))
    values = np.broadcast_to(np.asarray(values, dtype=np.float64).reshape(-1), (channels,))
    if q is not None:  # a quantized bias: its scale must be the accumulator's
        s_b = _scale(g, g.producer.get(name))
        if s_b is None or not np.allclose(np.broadcast_to(s_b, (channels,)), s_acc, rtol=1e-5):
            return None, "bias left out (its scale is not s_x·s_w)"
        return np.broadcast_to(np.asarray(q, dtype=np.float64).reshape(-1), (channels,)), (
            f"bias ({fmt.name}) included"
        )
    codes = values / s_acc
    if np.abs(codes - np.round(codes)).max(initial=0.0) > 1e-3:
        return None, "float bias left out (not on the accumulator grid s_x·s_w)"
    return np.round(codes), "bias (on the accumulator grid) included"


# ---------------------------------------------------------------- per layer
def _width(acc_min: float, acc_max: float) -> int:
    """Bits holding [acc_min, acc_max] (REFERENCE.md §1): signed
    ⌈log2(max(−acc_min, acc_max + 1))⌉ + 1, or unsigned ⌈log2(acc_max + 1)⌉."""
    if acc_min >= 0:
        return max(1, math.ceil(math.log2(acc_max + 1)))
    return math.ceil(math.log2(max(-acc_min, acc_max + 1))) + 1


def _layer(g: OnnxGraph, node: Any, rec: LayerRecord) -> OnnxLayer:
    row = LayerAccumulator(rec.name, node.op_type, rec.fan_in)
    xgrid, wgrid = integer_grid(rec.input_format), integer_grid(rec.weight_format)
    if xgrid is None or wgrid is None or rec.q is None:
        row.note = "float or non-integer input" if xgrid is None else "non-integer weights"
        return OnnxLayer(row)
    if _zero_point(g, input_quantizer(g, node.input[0])) != 0:
        row.note = "input quantizer with a zero point: bounds not given"
        return OnnxLayer(row)
    layer = OnnxLayer(row, np.asarray(rec.q, dtype=np.float64))
    layer.x_min, layer.x_max = xgrid[1], xgrid[2]
    row.N, row.M = integer_weight_bits(rec.input_format), integer_weight_bits(rec.weight_format)
    row.signed_input = xgrid[1] < 0
    row.datatype_bits = formulas.datatype_bound_bits(row.K, row.N, row.M, row.signed_input)
    l1 = np.abs(layer.q).sum(1)
    row.l1_max = float(l1.max())
    row.l1_bits = max(a2q_min_bits(float(v), row.N, row.signed_input) for v in l1)
    layer.bias, row.note = _bias_codes(g, node, node.input[1], len(layer.q))
    _set_bias(row, layer.bias, row.note)
    pos, neg = np.clip(layer.q, 0, None), np.clip(layer.q, None, 0)
    b = layer.bias if layer.bias is not None else 0.0
    acc_max = (pos * layer.x_max + neg * layer.x_min).sum(1) + b
    acc_min = (pos * layer.x_min + neg * layer.x_max).sum(1) + b
    row.exact_max = [int(v) for v in acc_max]
    row.exact_min = [int(v) for v in acc_min]
    row.exact_bits = _width(float(acc_min.min()), float(acc_max.max()))
    return layer


def _set_bias(row: LayerAccumulator, codes: np.ndarray | None, note: str) -> None:
    """Fill the report's bias placement (``"accumulator"``, ``"float"`` or None) and
    codes, where the report has those fields."""
    if not hasattr(row, "bias"):
        return
    row.bias = "accumulator" if codes is not None else ("float" if note else None)
    row.bias_codes = [] if codes is None else [int(v) for v in codes]


def onnx_layers(model: Any) -> list[OnnxLayer]:
    """One :class:`OnnxLayer` per weight layer of a QONNX file or ``ModelProto``."""
    g, label = load_graph(model)
    return [_layer(g, node, rec) for node, rec in weight_layers(g, label)]


def onnx_accumulators(model: Any) -> AccumulatorReport:
    """The accumulator report (data-type, L1 and exact widths per layer) of a QONNX
    file or ``ModelProto`` (see the module docstring)."""
    return AccumulatorReport([layer.row for layer in onnx_layers(model)])


def onnx_overflow_audit(model: Any, accumulator_bits: int, mode: str = "wrap") -> list[AuditRow]:
    """Worst-case overflow audit of a QONNX graph at P = ``accumulator_bits``: per
    layer, how many output channels overflow a P-bit ``mode`` accumulator on their
    extreme inputs (x_i = x_max where q_i > 0 else x_min, and the reverse), the bias
    (when included) added first. Layers without integer inputs and weights are
    skipped."""
    if isinstance(accumulator_bits, bool) or not isinstance(accumulator_bits, int):
        raise ValueError(f"the audit needs accumulator bits P (an int), got {accumulator_bits!r}")
    if accumulator_bits < 2:
        raise ValueError(f"accumulator bits P must be ≥ 2, got {accumulator_bits}")
    if mode not in ACCUMULATOR_MODES:
        raise ValueError(f"mode must be one of {list(ACCUMULATOR_MODES)}, got {mode!r}")
    return [
        _audit(layer, accumulator_bits, mode) for layer in onnx_layers(model) if layer.q is not None
    ]


def _audit(layer: OnnxLayer, bits: int, mode: str) -> AuditRow:
    q = torch.from_numpy(layer.q.astype(np.int64))  # [C, K]
    C = len(q)
    over_any, worst, errs = torch.zeros(C, dtype=torch.bool), 0, [0]
    for hi, lo in ((layer.x_max, layer.x_min), (layer.x_min, layer.x_max)):
        x = torch.where(q > 0, hi, lo)  # row c: channel c's extreme input
        w = q
        if layer.bias is not None:  # the bias enters first, as an input of 1
            b = torch.from_numpy(layer.bias.astype(np.int64)).unsqueeze(1)
            x, w = torch.cat([torch.ones_like(b), x], 1), torch.cat([b, q], 1)
        idx = torch.arange(C)
        emu, exact, over = (t[idx, idx] for t in accumulate(x, w, bits, mode))
        over_any |= over
        if C:
            worst = max(worst, int(exact.abs().max()))
            errs.append(int((emu - exact).abs().max()))
    return AuditRow(layer.row.name, bits, C, int(over_any.sum()), worst, max(errs))
