"""QONNX graph → LayerRecords.

Reads the QONNX conventions (REFERENCE.md §4): ``Quant`` / ``BipolarQuant`` /
``FloatQuant`` / ``Trunc`` nodes in domain ``qonnx.custom_op.general``; weights as
float initializers followed by a ``Quant``; standard ``Conv`` / ``ConvTranspose`` /
``Gemm`` / ``MatMul``. A layer's input format is the quantizer found walking back
from its input through layout ops (Reshape, Flatten, Transpose, MaxPool, Relu, …);
its threshold width is the first quantizer found walking forward from its output
through those and per-channel arithmetic (bias Add, Mul, BatchNormalization).

Shapes come from ONNX shape inference on a copy in which every QONNX node is an
``Identity`` (all of them keep their input's shape), so qonnx is not needed here.
onnx is imported lazily (``import hwquant`` must not import it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hwquant.analysis.cost.records import LayerRecord
from hwquant.spec.formats import BipolarFormat, Format, IntFormat, MinifloatFormat

__all__ = ["QONNX_QUANT_OPS", "records_from_onnx"]

QONNX_QUANT_OPS = ("Quant", "IntQuant", "BipolarQuant", "FloatQuant", "Trunc")
MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: ops that move or select quantized values without changing their grid
_LAYOUT_OPS = {
    "Reshape",
    "Flatten",
    "Transpose",
    "MaxPool",
    "Relu",
    "Identity",
    "Pad",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Slice",
    "Gather",
    "Split",
    "GlobalMaxPool",
}
#: ops between a MAC and the activation quantizer FINN folds into thresholds
_TO_THRESHOLD_OPS = _LAYOUT_OPS | {
    "Add",
    "Sub",
    "Mul",
    "Div",
    "BatchNormalization",
    "Clip",
    "Sigmoid",
    "Tanh",
    "HardSigmoid",
    "LeakyRelu",
    "PRelu",
}

_ROUND = {
    "ROUND": np.round,
    "HALF_EVEN": np.round,
    "FLOOR": np.floor,
    "CEIL": np.ceil,
    "DOWN": np.trunc,
    "UP": lambda v: np.sign(v) * np.ceil(np.abs(v)),
    "HALF_UP": lambda v: np.sign(v) * np.floor(np.abs(v) + 0.5),
    "HALF_DOWN": lambda v: np.sign(v) * np.ceil(np.abs(v) - 0.5),
}


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:  # pragma: no cover - depends on the environment
        raise ValueError(
            "reading ONNX files needs the 'onnx' package: pip install 'hwquant[export]'"
        ) from None
    return onnx


class _Graph:
    """Index of a graph: constants, producers, consumers, shapes."""

    def __init__(self, proto: Any) -> None:
        onnx = _onnx()
        from onnx import numpy_helper

        g = proto.graph
        self.nodes = list(g.node)
        self.consts = {
            t.name: numpy_helper.to_array(t).astype(np.float64)
            for t in g.initializer
            if t.data_type != onnx.TensorProto.STRING
        }
        for n in self.nodes:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t).astype(
                    np.float64
                )
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.shapes = _infer_shapes(proto)

    def attr(self, node: Any, name: str, default: Any = None) -> Any:
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                v = helper.get_attribute_value(a)
                return v.decode() if isinstance(v, bytes) else v
        return default

    def const(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (through Identity / Transpose), else None."""
        if name in self.consts:
            return self.consts[name]
        n = self.producer.get(name)
        if n is not None and n.op_type == "Identity":
            return self.const(n.input[0])
        if n is not None and n.op_type == "Transpose":
            v = self.const(n.input[0])
            perm = self.attr(n, "perm")
            return None if v is None else np.transpose(v, perm)
        return None

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self.consts:
            return tuple(self.consts[name].shape)
        s = self.shapes.get(name)
        if s is None:
            raise ValueError(f"the ONNX graph gives no static shape for tensor {name!r}")
        return s


def _infer_shapes(proto: Any) -> dict[str, tuple[int, ...]]:
    onnx = _onnx()
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    for n in m.graph.node:
        if n.op_type in QONNX_QUANT_OPS:
            x = n.input[0]
            del n.input[:]
            n.input.append(x)
            del n.attribute[:]
            n.op_type, n.domain = "Identity", ""
    try:
        m = onnx.shape_inference.infer_shapes(m)
    except Exception as e:
        raise ValueError(f"ONNX shape inference failed: {e}") from None
    shapes = {}
    for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(d.dim_value for d in dims)
    return shapes


# --------------------------------------------------------------------------- quantizers
def _quant_format(g: _Graph, node: Any) -> Format:
    """The number format a QONNX quantizer node produces."""
    op = node.op_type
    if op == "BipolarQuant":
        return BipolarFormat()
    if op == "FloatQuant":
        e = int(g.const(node.input[2]).item())
        m = int(g.const(node.input[3]).item())
        bias = g.const(node.input[4]) if len(node.input) > 4 else None
        return MinifloatFormat(
            e,
            m,
            bias=int(bias.item()) if bias is not None else None,
            has_subnormal=bool(g.attr(node, "has_subnormal", 1)),
            has_inf=bool(g.attr(node, "has_inf", 0)),
            has_nan=bool(g.attr(node, "has_nan", 0)),
            saturating=bool(g.attr(node, "saturation", 1)),
        )
    bits_input = node.input[5] if op == "Trunc" else node.input[3]
    bits = g.const(bits_input)
    if bits is None:
        raise ValueError(f"{op} node {node.name!r}: its bit width is not a constant")
    signed = bool(g.attr(node, "signed", 1))
    narrow = bool(g.attr(node, "narrow", 0))
    b = round(float(bits.item()))
    return IntFormat(b, signed=signed, narrow=narrow and b > 1)


def _integer_weights(g: _Graph, node: Any, fmt: Format) -> np.ndarray | None:
    """Integer codes of a quantized constant weight (Quant / BipolarQuant)."""
    x = g.const(node.input[0])
    if node.op_type == "BipolarQuant":
        return np.where(x >= 0, 1.0, -1.0)
    if not isinstance(fmt, IntFormat):
        return None
    s = g.const(node.input[1])
    z = g.const(node.input[2])
    z = 0.0 if z is None else z
    rnd = _ROUND.get(g.attr(node, "rounding_mode", "ROUND"), np.round)
    v = np.clip(x / s + z, fmt.min_int, fmt.max_int)
    return rnd(v) - z


def _weight(g: _Graph, name: str) -> tuple[np.ndarray, Format | None, np.ndarray | None] | None:
    """(values, format or None for float, integer codes or None) of a weight tensor, or
    None when ``name`` is not a constant (possibly quantized, possibly transposed) tensor."""
    x = g.const(name)
    if x is not None:
        return x, None, None
    node = g.producer.get(name)
    if node is not None and node.op_type in ("Identity", "Transpose"):
        inner = _weight(g, node.input[0])
        if inner is None or node.op_type == "Identity":
            return inner
        perm = g.attr(node, "perm")
        x, fmt, q = inner
        return np.transpose(x, perm), fmt, None if q is None else np.transpose(q, perm)
    if node is None or node.op_type not in ("Quant", "IntQuant", "BipolarQuant", "FloatQuant"):
        return None
    x = g.const(node.input[0])
    if x is None:
        return None
    fmt = _quant_format(g, node)
    return x, fmt, _integer_weights(g, node, fmt)


def _walk(g: _Graph, name: str, through: set[str], forward: bool) -> Format | None:
    """The format of the first quantizer reached from tensor ``name``."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        t = todo.pop(0)
        if t in seen:
            continue
        seen.add(t)
        nodes = g.consumers.get(t, []) if forward else [g.producer.get(t)]
        for n in nodes:
            if n is None:
                continue
            if n.op_type in QONNX_QUANT_OPS and (not forward or n.input[0] == t):
                return _quant_format(g, n)
            if n.op_type in through:
                todo.extend(n.output if forward else [i for i in n.input[:1] if i])
    return None


# --------------------------------------------------------------------------- layers
def _geometry(g: _Graph, node: Any, w_shape: tuple[int, ...]) -> dict:
    op = node.op_type
    out_shape = g.shape(node.output[0])
    in_shape = g.shape(node.input[0])
    if op == "Conv":
        groups = int(g.attr(node, "group", 1))
        c_out, cin_g, k = w_shape[0], w_shape[1], math.prod(w_shape[2:])
        n_pix = math.prod(out_shape[2:])
        if groups > 1 and cin_g == 1 and groups == c_out:
            return {"op": "depthwise_conv", "MW": k, "MH": c_out, "n_pix": n_pix, "fan_in": k}
        return {"op": "conv", "MW": cin_g * k, "MH": c_out, "n_pix": n_pix, "fan_in": cin_g * k}
    if op == "ConvTranspose":
        groups = int(g.attr(node, "group", 1))
        c_in, cout_g, ks = w_shape[0], w_shape[1], w_shape[2:]
        strides = g.attr(node, "strides", [1] * len(ks))
        fan_in = (
            c_in // groups * math.prod(math.ceil(k / s) for k, s in zip(ks, strides, strict=True))
        )
        return {
            "op": "conv_transpose",
            "MW": c_in // groups,
            "MH": cout_g * groups * math.prod(ks),
            "n_pix": math.prod(in_shape[2:]),
            "fan_in": fan_in,
        }
    trans_b = op == "Gemm" and int(g.attr(node, "transB", 0)) == 1
    MH, MW = w_shape if trans_b else w_shape[::-1]
    n_pix = 1 if op == "Gemm" else math.prod(out_shape[1:-1])
    return {
        "op": "linear" if op == "Gemm" else "matmul",
        "MW": MW,
        "MH": MH,
        "n_pix": n_pix,
        "fan_in": MW,
    }


def _layer_rows(g: _Graph, node: Any, q: np.ndarray) -> np.ndarray:
    """[C_out, K] rows of integer weights, one per output."""
    op = node.op_type
    if op == "Conv":
        return q.reshape(q.shape[0], -1)
    if op == "ConvTranspose":
        # weight [C_in, C_out/g, k...]: output o of group j sums q[j·C_in/g:(j+1)·C_in/g, o]
        groups = int(g.attr(node, "group", 1))
        cin_g, cout_g = q.shape[0] // groups, q.shape[1]
        return np.stack(
            [
                q[j * cin_g : (j + 1) * cin_g, o].reshape(-1)
                for j in range(groups)
                for o in range(cout_g)
            ]
        )
    trans_b = op == "Gemm" and int(g.attr(node, "transB", 0)) == 1
    return q if trans_b else q.T


def _mac_nodes(g: _Graph) -> Iterator[tuple[Any, str]]:
    """(node, weight tensor name) of every MAC node with a constant weight operand."""
    for n in g.nodes:
        if n.op_type not in MAC_OPS:
            continue
        if n.op_type == "Gemm" and int(g.attr(n, "transA", 0)) == 1:
            raise ValueError(f"Gemm node {n.name!r} with transA=1 is not supported")
        if _weight(g, n.input[1]) is not None:
            yield n, n.input[1]


def _layer_name(node: Any, index: int) -> str:
    """The torch module path recorded by the dynamo exporter (``namespace`` metadata:
    ``": Model/features: Sequential/features.0: QuantConv2d/conv2d: aten..."``), so
    names match the torch model's; else the node name."""
    for p in node.metadata_props:
        if p.key == "namespace":
            scopes = [s.split(":")[0].strip() for s in p.value.split("/")]
            if len(scopes) >= 3 and scopes[-2]:
                return scopes[-2]
    return node.name or f"{node.op_type}_{index}"


def _record(g: _Graph, node: Any, w_name: str, index: int) -> LayerRecord:
    values, wfmt, q = _weight(g, w_name)
    geo = _geometry(g, node, tuple(values.shape))
    in_shape, out_shape = g.shape(node.input[0]), g.shape(node.output[0])
    batch = in_shape[0]
    xfmt = _walk(g, node.input[0], _LAYOUT_OPS, forward=False)
    out_fmt = _walk(g, node.output[0], _TO_THRESHOLD_OPS, forward=True)
    n_zero = int((q == 0).sum()) if q is not None else int((values == 0).sum())
    notes = []
    if xfmt is None:
        notes.append("float input (no input quantizer)")
    if wfmt is None:
        notes.append("float weights (no weight quantizer)")
    return LayerRecord(
        name=_layer_name(node, index),
        **geo,
        n_weights=int(values.size),
        n_zero_weights=n_zero,
        weight_format=wfmt,
        input_format=xfmt,
        out_bits=out_fmt.bits if out_fmt is not None else None,
        q=_layer_rows(g, node, q) if q is not None else None,
        input_elems=math.prod(in_shape) // batch,
        output_elems=math.prod(out_shape) // batch,
        notes=notes,
    )


def records_from_onnx(model: Any) -> list[LayerRecord]:
    """LayerRecords of a QONNX graph (a path or an ``onnx.ModelProto``).

    MatMuls between two activations (no constant operand) are not weight layers and
    are left out. Raises ValueError when the file is not ONNX, has no Conv / Gemm /
    MatMul with a constant weight, or is not quantized (no QONNX quantizer on any
    layer's weights or inputs).
    """
    onnx = _onnx()
    source = model
    if isinstance(model, str | Path):
        try:
            model = onnx.load(str(model))
        except Exception as e:
            raise ValueError(f"cannot read {source} as ONNX: {e}") from None
    g = _Graph(model)
    macs = list(_mac_nodes(g))
    if not macs:
        raise ValueError(
            f"{_label(source)} has no Conv / ConvTranspose / Gemm / MatMul "
            "layer with constant weights"
        )
    records = [_record(g, n, w, i) for i, (n, w) in enumerate(macs)]
    if all(r.weight_format is None and r.input_format is None for r in records):
        raise ValueError(
            f"{_label(source)} is not a quantized (QONNX) graph: none of its {len(records)} "
            "Conv/Gemm/MatMul layers has a Quant / BipolarQuant / FloatQuant node on its "
            "weights or inputs (QCDQ graphs are not read; export with hwquant.export.to_qonnx)"
        )
    return records


def _label(source: Any) -> str:
    return str(source) if isinstance(source, str | Path) else "the ONNX model"
