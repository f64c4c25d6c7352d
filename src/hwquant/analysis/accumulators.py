"""Accumulator analysis: how wide must each layer's accumulator be?

:func:`accumulators` reports, per weight layer with integer inputs and weights
(REFERENCE.md §1, formulas in :mod:`hwquant.analysis.cost.formulas`) — and per gate
matmul of every QuantLSTM / QuantGRU / QuantRNN (ih and hh of each layer and
direction, the per-gate widths in the row's note):

- K (fan-in of one output), N (input bits), M (weight bits), input signedness;
- the data-type bound (any M-bit weights), the weight-based L1 bound (these
  weights, max over output channels), the exact worst case per output channel
  (acc_min / acc_max over all inputs of the format) and its width;
- where the bias goes (``bias``): ``"accumulator"`` — an integer bias code b on the
  accumulator scale shares the register, so the exact worst case is b + Σ x·q (its
  codes in ``bias_codes``); ``"after accumulator"`` — the layer's A2Q spec declares it
  applied after the accumulator (FINN thresholds), not counted; ``"float"`` — a float
  bias, added outside the integer accumulator; None — no bias;
- the A2Q / A2Q+ target P of an accumulator-aware layer;
- with data, the largest |Σ x·q| actually observed (bit-exact integer execution).

:func:`overflow_audit` feeds every output channel the two inputs that maximize and
minimize its dot product (x_i = x_max where q_i > 0 else x_min, and the reverse), with
the bias code preloaded into the register when the bias is in the accumulator, and
counts the channels that overflow a P-bit accumulator — 0 for A2Q / A2Q+ layers at
their target, by construction (their bias is clipped to fit).

Example:
    >>> import torch, hwquant
    >>> from hwquant.models import MLP
    >>> from hwquant.spec import A2Q, A4U, IntFormat, Recipe
    >>> w = A2Q(IntFormat(4, narrow=True), accumulator_bits=12)
    >>> m = hwquant.quantize(MLP((64, 32, 10)), Recipe.uniform(weights=w, activations=A4U))
    >>> x = torch.rand(32, 64)
    >>> _ = m(x)                                  # initializes the activation scales
    >>> r = accumulators(m, x)
    >>> row = r["layers.0"]
    >>> row.K, row.N, row.M, row.datatype_bits, row.a2q_bits, row.exact_bits <= 12
    (64, 4, 4, 15, 12, True)
    >>> [a.overflowing for a in overflow_audit(m)]   # at each layer's own P = 12
    [0, 0]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hwquant.analysis.cost import formulas
from hwquant.analysis.integer_exec import run_integer
from hwquant.core.accumulator import accumulate, worst_case_range
from hwquant.nn.a2q import A2QWeightQuantizer, accumulator_bias_codes
from hwquant.nn.codes import (
    accumulating_layers,
    accumulator_range,
    bias_in_accumulator,
    range_bits,
    weight_code_rows,
)
from hwquant.nn.kinds import kind_of
from hwquant.nn.quantizer import Quantizer
from hwquant.spec.formats import Format

__all__ = [
    "AccumulatorReport",
    "AuditRow",
    "LayerAccumulator",
    "accumulators",
    "overflow_audit",
]


@dataclass
class LayerAccumulator:
    """Accumulator facts of one weight layer (``None`` where not applicable, e.g. float
    inputs). ``exact_min`` / ``exact_max``: worst-case accumulator per output channel,
    b + Σ x·q when ``bias == "accumulator"`` (``bias_codes``: b), else Σ x·q."""

    name: str
    type: str
    K: int
    N: int | None = None
    M: int | None = None
    signed_input: bool | None = None
    datatype_bits: int | None = None
    l1_bits: int | None = None
    exact_bits: int | None = None
    exact_min: list[int] = field(default_factory=list)
    exact_max: list[int] = field(default_factory=list)
    l1_max: float | None = None
    a2q_bits: int | None = None
    a2q_kind: str | None = None
    observed_max_abs: int | None = None
    observed_bits: int | None = None
    bias: str | None = None
    bias_codes: list[int] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class AccumulatorReport:
    """Per-layer :class:`LayerAccumulator` rows, in module order."""

    layers: list[LayerAccumulator] = field(default_factory=list)

    def __getitem__(self, name: str) -> LayerAccumulator:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(f"no layer {name!r}; have {[r.name for r in self.layers]}")

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [r.to_dict() for r in self.layers]}

    def table(self) -> str:
        """Plain-text table: one line per layer, widths in bits."""
        head = (
            f"{'layer':<16} {'type':<14} {'K':>5} {'N':>3} {'M':>3} {'in':>3} {'dtype':>6} "
            f"{'L1':>4} {'exact':>6} {'A2Q':>6} {'seen':>5} {'bias':>5}  note"
        )
        lines = [head]

        def f(v: Any) -> str:
            return "-" if v is None else str(v)

        for r in self.layers:
            sign = "-" if r.signed_input is None else ("s" if r.signed_input else "u")
            a2q = f"{r.a2q_kind}{r.a2q_bits}" if r.a2q_bits is not None else "-"
            lines.append(
                f"{r.name:<16} {r.type:<14} {r.K:>5} {f(r.N):>3} {f(r.M):>3} {sign:>3} "
                f"{f(r.datatype_bits):>6} {f(r.l1_bits):>4} {f(r.exact_bits):>6} {a2q:>6} "
                f"{f(r.observed_bits):>5} {_BIAS_TAGS[r.bias]:>5}  {r.note}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


#: short ``bias`` column of the table: in the accumulator, after it, float, none.
_BIAS_TAGS = {"accumulator": "acc", "after accumulator": "after", "float": "float", None: "-"}


# ---------------------------------------------------------------- layer facts
def fan_in(layer: nn.Module) -> int:
    """K: products summed into one output value (transposed convs: at most
    C_in/g · Π⌈k_i/s_i⌉ per output position), from the layer's kind."""
    kind = kind_of(layer)
    if kind is None or kind.geometry_fn is None:
        raise ValueError(f"{type(layer).__name__} is not a registered layer kind with MACs")
    return kind.fan_in(layer)


def input_format(layer: nn.Module) -> Format | None:
    """The format of the layer's integer input codes: its own symmetric per-tensor input
    quantizer with integer codes, else an A2Q declaration, else None."""
    iq = layer.input_quant
    if isinstance(iq, Quantizer):
        spec = iq.spec
        ok = spec.format.integer_codes and spec.zero_point == "symmetric"
        return spec.format if ok and spec.granularity.per_tensor else None
    wq = layer.weight_quant
    return wq.input_format if isinstance(wq, A2QWeightQuantizer) else None


def _weight_bits(layer: nn.Module) -> int:
    return layer.weight_quant.spec.format.bits


def bias_placement(layer: nn.Module) -> str | None:
    """Where ``layer``'s bias is added: ``"accumulator"`` (integer, in the register),
    ``"after accumulator"`` (declared by its A2Q spec), ``"float"``, or None (no bias)."""
    if getattr(layer, "bias", None) is None:
        return None
    if bias_in_accumulator(layer):
        return "accumulator"
    wq = layer.weight_quant
    if isinstance(wq, A2QWeightQuantizer) and not wq.bias_in_accumulator:
        return "after accumulator"
    return "float"


def _layer_row(
    name: str, layer: nn.Module
) -> tuple[LayerAccumulator, Tensor | None, Tensor | None]:
    """The report row, the weight codes as output rows [C, K'] and the bias codes [C]
    preloaded into the accumulator (None when the bias is not in it)."""
    row = LayerAccumulator(name, type(layer).__name__, fan_in(layer))
    wq = layer.weight_quant
    if isinstance(wq, A2QWeightQuantizer):
        row.a2q_bits, row.a2q_kind = wq.accumulator_bits, "A2Q+" if wq.zero_centre else "A2Q"
    row.bias = bias_placement(layer)
    fmt = input_format(layer)
    rows = weight_code_rows(layer)
    acc = accumulator_range(layer) if fmt is not None else None
    if fmt is None or rows is None or acc is None:
        row.note = "float or non-integer input" if fmt is None else "non-integer weights"
        return row, None, None
    row.N, row.M, row.signed_input = fmt.bits, _weight_bits(layer), fmt.signed
    row.datatype_bits = formulas.datatype_bound_bits(row.K, row.N, row.M, fmt.signed)
    l1 = rows.abs().sum(1)
    row.l1_max = float(l1.max())
    row.l1_bits = max(formulas.weight_bound_bits(float(v), row.N, fmt.signed) for v in l1)
    acc_min, acc_max = acc  # b + Σ x·q when the bias is in the accumulator, [C]
    b = accumulator_bias_codes(layer) if row.bias in ("accumulator", "after accumulator") else None
    if b is not None:
        row.bias_codes = b.tolist()
    b_acc = b if row.bias == "accumulator" else None
    row.exact_max, row.exact_min = acc_max.tolist(), acc_min.tolist()
    row.exact_bits = range_bits(int(acc_min.min()), int(acc_max.max())) if len(rows) else None
    return row, rows, b_acc


def _recurrent_rows(name: str, layer: nn.Module) -> list[LayerAccumulator]:
    """One row per gate matmul of a QuantLSTM / QuantGRU / QuantRNN (``<name>.l0.ih``,
    ``.hh``, … as integer execution names them): K = input size (ih) or hidden size
    (hh), the input format of that matmul, and per gate (the G blocks of H output rows:
    LSTM i, f, g, o; GRU r, z, n) the exact width in ``note``."""
    gates = {4: "ifgo", 3: "rzn", 1: "h"}[layer.gate_count]
    rows = []
    for mm in layer.matmuls():
        K = mm.weight.shape[1]
        row = LayerAccumulator(f"{name}.{mm.key}", type(layer).__name__, K)
        wq, iq = mm.weight_quant, mm.input_quant
        if isinstance(wq, A2QWeightQuantizer):
            row.a2q_bits, row.a2q_kind = wq.accumulator_bits, "A2Q+" if wq.zero_centre else "A2Q"
        wc = mm.weight_codes()
        spec = getattr(iq, "spec", None)
        ok = spec is not None and spec.format.integer_codes and spec.zero_point == "symmetric"
        if wc is None or not ok:
            row.note = "non-integer weights" if wc is None else "float or non-integer input"
            rows.append(row)
            continue
        fmt, q = spec.format, wc[0]
        row.N, row.M, row.signed_input = fmt.bits, wq.spec.format.bits, fmt.signed
        row.datatype_bits = formulas.datatype_bound_bits(K, row.N, row.M, fmt.signed)
        l1 = q.abs().sum(1)
        row.l1_max = float(l1.max())
        row.l1_bits = max(formulas.weight_bound_bits(float(v), row.N, fmt.signed) for v in l1)
        acc_min, acc_max = worst_case_range(q, *fmt.code_range)
        b = mm.bias_codes()
        row.bias = None if mm.bias is None else ("accumulator" if b is not None else "float")
        if b is not None:
            row.bias_codes = b.tolist()
            acc_min, acc_max = acc_min + b, acc_max + b
        row.exact_min, row.exact_max = acc_min.tolist(), acc_max.tolist()
        row.exact_bits = range_bits(int(acc_min.min()), int(acc_max.max()))
        H = q.shape[0] // len(gates)
        per_gate = [
            range_bits(
                int(acc_min[i * H : (i + 1) * H].min()), int(acc_max[i * H : (i + 1) * H].max())
            )
            for i in range(len(gates))
        ]
        row.note = "gates " + ", ".join(f"{g}: {b_}" for g, b_ in zip(gates, per_gate, strict=True))
        rows.append(row)
    return rows


def _signed_bits(max_abs: int) -> int:
    """Signed width holding [−max_abs, max_abs]: ⌈log2(max_abs + 1)⌉ + 1."""
    return math.ceil(math.log2(max_abs + 1)) + 1


def _batches(data: Any) -> Iterable[Tensor]:
    if isinstance(data, Tensor):
        yield data
        return
    for b in data:
        yield b[0] if isinstance(b, tuple | list) else b


def accumulators(model: nn.Module, data: Any = None) -> AccumulatorReport:
    """Accumulator report of every hwquant weight layer of ``model`` (see the module
    docstring). ``data``: a tensor of inputs or an iterable of batches ((x, y) pairs
    or tensors); the observed maxima come from exact integer execution."""
    report = AccumulatorReport()
    for name, m, _ in accumulating_layers(model):
        report.layers.append(_layer_row(name or "<root>", m)[0])
    for name, m in model.named_modules():
        kind = kind_of(m)
        if kind is not None and kind.role == "recurrent" and isinstance(m, kind.quant_type):
            report.layers.extend(_recurrent_rows(name or "<root>", m))
    if data is not None:
        seen: dict[str, int] = {}
        for x in _batches(data):
            run = run_integer(model, x, accumulator_bits=64)
            for path, st in run.layers.items():
                seen[path] = max(seen.get(path, 0), st.max_abs)
        for row in report.layers:
            if row.name in seen:
                row.observed_max_abs = seen[row.name]
                row.observed_bits = _signed_bits(seen[row.name])
    return report


# ---------------------------------------------------------------- worst-case audit
@dataclass
class AuditRow:
    """Worst-case overflow audit of one layer at P bits: ``overflowing`` channels (of
    ``channels``) whose extreme inputs overflow, the largest exact |acc| on them, and the
    largest error the emulated accumulator makes (0 when none overflow). ``bias``: where
    the bias goes (:func:`bias_placement`); counted in the register when
    ``"accumulator"``."""

    name: str
    accumulator_bits: int | None
    channels: int
    overflowing: int
    worst_exact: int
    max_error: int
    bias: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def overflow_audit(
    model: nn.Module, accumulator_bits: int | Mapping[str, int] | None = None, mode: str = "wrap"
) -> list[AuditRow]:
    """Feed each output channel its two extreme inputs and emulate a P-bit accumulator.

    P: ``accumulator_bits`` (an int, or per layer path), else the layer's A2Q target;
    layers with neither or with float inputs are skipped. A bias in the accumulator is
    preloaded into the register (acc = b + Σ x·q)."""
    out = []
    for name, m, _ in accumulating_layers(model):
        row, rows, b = _layer_row(name or "<root>", m)
        if isinstance(accumulator_bits, Mapping):
            bits = accumulator_bits.get(row.name, row.a2q_bits)
        else:
            bits = accumulator_bits if accumulator_bits is not None else row.a2q_bits
        if rows is None or bits is None:
            continue
        x_min, x_max = input_format(m).code_range
        x_hi = torch.where(rows > 0, x_max, x_min)  # maximizes Σ x·q
        x_lo = torch.where(rows > 0, x_min, x_max)  # minimizes it
        errs, over_any, worst = [], torch.zeros(len(rows), dtype=torch.bool), 0
        for x in (x_hi, x_lo):
            idx = torch.arange(len(rows))
            emu, exact, over = accumulate(x, rows, bits, mode, b)  # [C, C]: channel c on x_c
            emu, exact, over = emu[idx, idx], exact[idx, idx], over[idx, idx]
            errs.append(int((emu - exact).abs().max()) if len(rows) else 0)
            over_any |= over
            worst = max(worst, int(exact.abs().max()) if len(rows) else 0)
        out.append(
            AuditRow(row.name, bits, len(rows), int(over_any.sum()), worst, max(errs), row.bias)
        )
    return out
