"""Torch model → LayerRecords: one forward pass with hooks on a copy of the model.

The forward runs on a deep copy, so uncalibrated activation quantizers that set
their scale on a first call do not take it from the dummy input. Hooks record each
weight layer's input / output shapes, and the order of activation quantizer calls:
the first activation quantizer that runs after a layer is the one FINN folds into
that layer as thresholds (its bit width is B in the MVAU estimate).

>>> import torch
>>> from hwquant.nn import QuantLinear
>>> from hwquant.spec import A4U, W4, LayerSpec
>>> net = torch.nn.Sequential(QuantLinear(16, 8, spec=LayerSpec(input=A4U, weight=W4)))
>>> [(r.name, r.MW, r.MH, r.input_format.name) for r in records_from_module(net, (1, 16))]
[('0', 16, 8, 'UINT4')]
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from hwquant.analysis.cost.records import LayerRecord, integer_grid
from hwquant.checkpoint import load_checkpoint
from hwquant.nn.kinds import kind_of, mvau_weight, weight_kinds
from hwquant.nn.quantizer import Quantizer
from hwquant.spec.formats import Format

__all__ = ["WEIGHT_LAYER_TYPES", "load_checkpoint", "records_from_module"]  # noqa: F822


def _costed(m: nn.Module):
    """The layer kind of a weight layer the cost model counts (linear, convolutions,
    transposed convolutions, embeddings: every kind with a weight and a geometry)."""
    kind = kind_of(m)
    return kind if kind is not None and kind.has_weight and kind.geometry_fn else None


def __getattr__(name: str):
    # WEIGHT_LAYER_TYPES (kept for compatibility): the float twins of the costed kinds.
    if name == "WEIGHT_LAYER_TYPES":
        return tuple(k.float_type for k in weight_kinds() if k.geometry_fn and k.float_type)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _quant_format(q: nn.Module | None) -> Format | None:
    """The format of a quantizer module (duck-typed: anything with ``spec.format``)."""
    spec = getattr(q, "spec", None)
    return getattr(spec, "format", None)


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape) if input_shape is not None else ()
    if not shape or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape):
        raise ValueError(
            f"input_shape must be positive ints with a batch dimension first, "
            f"e.g. (1, 1, 8, 8); got {input_shape!r}"
        )
    return shape


def records_from_module(model: nn.Module, input_shape: Sequence[int]) -> list[LayerRecord]:
    """One LayerRecord per weight-layer call, in execution order (costs per frame:
    the batch dimension of ``input_shape`` is divided out)."""
    shape = _check_shape(input_shape)
    work = copy.deepcopy(model).eval()
    layers = {m: name for name, m in work.named_modules() if _costed(m) or _recurrent(m)}
    if not layers:
        raise ValueError(
            "the model has no Linear / Conv / ConvTranspose / Embedding / LSTM / GRU / RNN "
            "layers to cost"
        )
    owned = {id(getattr(m, a, None)) for m in layers for a in ("weight_quant", "bias_quant")}
    for m in layers:
        if _recurrent(m):  # their own quantizers are part of the cell, not thresholds
            owned |= {id(q) for q in m.modules()}
    events: list[tuple[str, object]] = []
    hooks = []

    def on_layer(module: nn.Module, args: tuple, out) -> None:
        out = out[0] if isinstance(out, tuple) else out  # a recurrent layer: (y, state)
        events.append(("layer", (module, tuple(args[0].shape), tuple(out.shape))))

    def on_quant(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        events.append(("quant", module))

    try:
        for m in layers:
            hooks.append(m.register_forward_hook(on_layer))
        for m in work.modules():
            if _quant_format(m) is not None and id(m) not in owned and m not in layers:
                hooks.append(m.register_forward_hook(on_quant))
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            work(torch.rand(shape, generator=gen))
    finally:
        for h in hooks:
            h.remove()
    return _records_from_events(events, layers, batch=shape[0])


def _records_from_events(events: list, layers: dict, batch: int) -> list[LayerRecord]:
    records: list[LayerRecord] = []
    seen: dict[str, int] = {}
    for i, (kind, payload) in enumerate(events):
        if kind != "layer":
            continue
        module, in_shape, out_shape = payload
        name = layers[module] or "model"
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}#{seen[name]}"
        if _recurrent(module):
            records.extend(_recurrent_records(module, name, in_shape, batch))
            continue
        out_bits = _own_output_bits(module)
        if out_bits is None:
            out_bits = _next_quant_bits(events[i + 1 :])
        records.append(_record(module, name, in_shape, out_shape, batch, out_bits))
    return records


def _recurrent(m: nn.Module) -> bool:
    """A quantized recurrent layer (QuantLSTM / QuantGRU / QuantRNN)."""
    kind = kind_of(m)
    return kind is not None and kind.role == "recurrent" and isinstance(m, kind.quant_type)


def _recurrent_records(m: nn.Module, name: str, in_shape: tuple, batch: int) -> list[LayerRecord]:
    """One record per gate matmul (ih and hh of every layer and direction), each a
    matrix-vector unit run T times per sequence (MW = K, MH = G·H); its output is
    re-quantized by the gate quantizer (B = its bits). The element-wise cell (gate
    products, sigmoid / tanh tables) is not costed (a note says so)."""
    T = in_shape[1] if m.batch_first and len(in_shape) == 3 else in_shape[0]  # steps
    records = []
    for mm in m.matmuls():
        G_H, K = mm.weight.shape
        wf = _quant_format(mm.weight_quant)
        inf = _quant_format(mm.input_quant)
        wc = mm.weight_codes()
        q = wc[0].numpy() if wc is not None and integer_grid(wf) is not None else None
        a2q = getattr(mm.weight_quant, "accumulator_bits", None)
        gate = _quant_format(mm.quantizers.gate_quant)
        notes = [
            "recurrent gate matmul; the element-wise cell (gate products, sigmoid / tanh tables) is not costed"
        ]
        if inf is None:
            notes.append("float input (no input quantizer)")
        if wf is None:
            notes.append("float weights (no weight quantizer)")
        records.append(
            LayerRecord(
                name=f"{name}.{mm.key}",
                op="linear",
                MW=K,
                MH=G_H,
                n_pix=T,
                fan_in=K,
                n_weights=mm.weight.numel(),
                n_zero_weights=int((q == 0).sum())
                if q is not None
                else int((mm.weight == 0).sum()),
                weight_format=wf,
                input_format=inf,
                out_bits=gate.bits if gate is not None else None,
                q=q,
                a2q_bits=int(a2q) if isinstance(a2q, int) and not isinstance(a2q, bool) else None,
                input_elems=T * K,
                output_elems=T * G_H,
                notes=notes,
            )
        )
    return records


def _own_output_bits(module: nn.Module) -> int | None:
    fmt = _quant_format(getattr(module, "output_quant", None))
    return fmt.bits if fmt is not None else None


def _next_quant_bits(later: list) -> int | None:
    for kind, payload in later:
        if kind == "quant":
            return _quant_format(payload).bits
    return None


def _record(
    module: nn.Module,
    name: str,
    in_shape: tuple,
    out_shape: tuple,
    batch: int,
    out_bits: int | None,
) -> LayerRecord:
    wq = getattr(module, "weight_quant", None)
    weight_format = _quant_format(wq)
    input_format = _quant_format(getattr(module, "input_quant", None))
    w = module.weight.detach()
    geometry = _geometry(module, in_shape, out_shape)
    q = _integer_weights(module, weight_format) if weight_format is not None else None
    n_zero = int((q == 0).sum()) if q is not None else int((w == 0).sum())
    a2q = getattr(wq, "accumulator_bits", None)
    notes = []
    if input_format is None:
        notes.append("float input (no input quantizer)")
    if weight_format is None:
        notes.append("float weights (no weight quantizer)")
    return LayerRecord(
        name=name,
        **geometry,
        n_weights=w.numel(),
        n_zero_weights=n_zero,
        weight_format=weight_format,
        input_format=input_format,
        out_bits=out_bits,
        q=q,
        a2q_bits=int(a2q) if isinstance(a2q, int) and not isinstance(a2q, bool) else None,
        input_elems=math.prod(in_shape) // batch,
        output_elems=math.prod(out_shape) // batch,
        notes=notes,
        nonzero=_nonzero_matrix(module, geometry),
    )


def _nonzero_matrix(m: nn.Module, geometry: dict) -> np.ndarray | None:
    """[MH, MW] non-zero pattern of a pruned layer's quantized weight (FINN column
    order: kernel position major, input channel minor), for linear and ungrouped
    convolutions; None for unpruned layers (a QONNX file carries no mask, and the
    ONNX reader fills no pattern, so dense models cost the same from both)."""
    w = m.weight
    if getattr(m, "weight_mask", None) is None:
        return None  # only pruned layers: dense ones are costed as dense tiles
    if getattr(m, "transposed", False) or getattr(m, "groups", 1) != 1 or w.dim() < 2:
        return None
    with torch.no_grad():
        wq = m.quant_weight() if hasattr(m, "quant_weight") else w
    nz = (mvau_weight(wq.detach()) != 0).cpu().numpy()
    return nz if nz.shape == (geometry["MH"], geometry["MW"]) else None


def _geometry(m: nn.Module, in_shape: tuple, out_shape: tuple) -> dict:
    """op, MW, MH, n_pix, fan_in of a layer call, as its layer kind says."""
    kind = _costed(m)
    mat = kind.matrix(m, in_shape, out_shape)
    fan_in = kind.geometry(m, in_shape, out_shape).K
    return {"op": mat.op, "MW": mat.MW, "MH": mat.MH, "n_pix": mat.n_pix, "fan_in": fan_in}


def _integer_weights(m: nn.Module, fmt: Format) -> np.ndarray | None:
    """[C_out, K] integer weights (on the format's integer grid), or None."""
    grid = integer_grid(fmt)
    wq = getattr(m, "weight_quant", None)
    if grid is None or not isinstance(wq, Quantizer):
        return None
    try:
        c = wq.codes(m.weight)
    except ValueError:
        return None  # a quantizer without a usable scale: weight-based bounds are skipped
    if c.zero_point is not None:
        return None  # an asymmetric zero point: no plain integer weights
    q = c.codes.double() * grid[0]
    qi = torch.round(q)
    if (q - qi).abs().max() > 1e-3:
        return None
    return kind_of(m).rows_of(m, qi).numpy()
