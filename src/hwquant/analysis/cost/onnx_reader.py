"""QONNX graph → LayerRecords.

Reads the QONNX conventions (REFERENCE.md §4): ``Quant`` / ``BipolarQuant`` /
``FloatQuant`` / ``Trunc`` nodes in domain ``qonnx.custom_op.general`` (what a node
means — its format, the codes of a quantized weight — is asked of its op module in
:mod:`hwquant.export.ops`: ``OnnxOp.read_format`` / ``OnnxOp.weight_codes``); weights as
float initializers followed by a ``Quant``; standard ``Conv`` / ``ConvTranspose`` /
``Gemm`` / ``MatMul``. A layer's input format is the quantizer found walking back
from its input through layout ops (Reshape, Flatten, Transpose, MaxPool, Relu, …);
its threshold width is the first quantizer found walking forward from its output
through those and per-channel arithmetic (bias Add, Mul, BatchNormalization).

Graphs written by other tools (Brevitas' TorchScript and dynamo exports, qonnx,
FINN) are first prepared on a copy with qonnx's own passes, when qonnx is installed:
a symbolic batch dimension is fixed to 1 (``ChangeBatchSize``), then
``InferShapes`` → ``FoldConstants`` (quantizers kept) → ``RemoveStaticGraphInputs``
→ ``InferShapes``. This folds e.g. the ``Shape → Gather → Concat → Reshape`` chain of
``x.view(x.shape[0], -1)``, which otherwise leaves every later tensor without a
static shape. The renaming passes of ``qonnx.util.cleanup`` are left out so layer
names stay the exporter's. Shapes are then read from ONNX shape inference on a copy
in which every QONNX node is an ``Identity`` (all of them keep their input's shape).

FINN-style graphs carry no quantizer on a tensor but a ``finn_datatype``
quantization annotation (``INT2``, ``UINT4``, ``BIPOLAR``…) and ``MultiThreshold``
activations (``out_dtype``); both are read where no quantizer node is found.
onnx is imported lazily (``import hwquant`` must not import it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hwquant.analysis.cost.records import LayerRecord
from hwquant.export import ops
from hwquant.spec.formats import BipolarFormat, Format, IntFormat, TernaryFormat

__all__ = [
    "QONNX_QUANT_OPS",
    "OnnxGraph",
    "datatype_format",
    "input_quantizer",
    "load_graph",
    "prepare_with_qonnx",
    "read_weight",
    "records_from_onnx",
    "weight_layers",
    "weight_quantizer",
]

#: the QONNX ops (and aliases) of the op registry, and FINN's MultiThreshold.
QONNX_QUANT_OPS = (*ops.op_types(), "MultiThreshold")
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
    "DepthToSpace",
    "SpaceToDepth",
    "Resize",  # nearest-neighbour only (checked in _passes_grid)
    "Upsample",
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


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:  # pragma: no cover - depends on the environment
        raise ValueError(
            "reading ONNX files needs the 'onnx' package: pip install 'hwquant[export]'"
        ) from None
    return onnx


class OnnxGraph:
    """Index of a graph: constants, producers, consumers, shapes, FINN datatypes."""

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
        self.datatypes = {
            a.tensor_name: kv.value
            for a in g.quantization_annotation
            for kv in a.quant_parameter_tensor_names
            if kv.key == "finn_datatype"
        }
        self.notes: list[str] = []

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
def datatype_format(name: str | None) -> Format | None:
    """The format of a qonnx ``DataType`` name (``INT4``, ``UINT2``, ``BIPOLAR``,
    ``BINARY``, ``TERNARY``); None for floats, scaled and fixed-point types.

    >>> datatype_format("INT4").name, datatype_format("BIPOLAR").name, datatype_format("FLOAT32")
    ('INT4', 'BIPOLAR', None)
    """
    if not name:
        return None
    if name == "BIPOLAR":
        return BipolarFormat()
    if name == "BINARY":
        return IntFormat(1, signed=False)
    if name == "TERNARY":
        return TernaryFormat()
    for prefix, signed in (("UINT", False), ("INT", True)):
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            return IntFormat(int(name[len(prefix) :]), signed=signed)
    return None


def _quant_format(g: OnnxGraph, node: Any) -> Format | None:
    """The number format a QONNX quantizer node produces (None: not an integer-like
    grid hwquant models, e.g. a MultiThreshold with a float output type)."""
    if node.op_type == "MultiThreshold":  # FINN's, not an op hwquant writes
        return datatype_format(g.attr(node, "out_dtype", ""))
    return ops.op_for(node.op_type).read_format(node, g)


def _integer_weights(g: OnnxGraph, node: Any, fmt: Format) -> np.ndarray | None:
    """Integer codes of a quantized constant weight (Quant / BipolarQuant)."""
    return ops.op_for(node.op_type).weight_codes(node, g, fmt)


def _weight(g: OnnxGraph, name: str) -> tuple[np.ndarray, Format | None, np.ndarray | None] | None:
    """(values, format or None for float, integer codes or None) of a weight tensor, or
    None when ``name`` is not a constant (possibly quantized, possibly transposed) tensor."""
    x = g.const(name)
    if x is not None:
        return x, *_annotated_weight(g, name, x)
    node = g.producer.get(name)
    if node is not None and node.op_type in ("Identity", "Transpose"):
        inner = _weight(g, node.input[0])
        if inner is None or node.op_type == "Identity":
            return inner
        perm = g.attr(node, "perm")
        x, fmt, q = inner
        return np.transpose(x, perm), fmt, None if q is None else np.transpose(q, perm)
    op = None if node is None else ops.find(node.op_type)
    if op is None or not op.quantizes_weights:
        return None
    x = g.const(node.input[0])
    if x is None:
        return None
    fmt = _quant_format(g, node)
    return x, fmt, _integer_weights(g, node, fmt)


def read_weight(
    g: OnnxGraph, name: str
) -> tuple[np.ndarray, Format | None, np.ndarray | None] | None:
    """(float values, format or None, integer codes or None) of a constant tensor,
    possibly quantized and transposed; None when ``name`` is not constant."""
    return _weight(g, name)


def _annotated_weight(
    g: OnnxGraph, name: str, x: np.ndarray
) -> tuple[Format | None, np.ndarray | None]:
    """(format, codes) of a constant FINN-style weight: annotated with an integer
    ``finn_datatype`` and holding integers (FINN moves the scale into a Mul); else
    (None, None), a float weight."""
    fmt = datatype_format(g.datatypes.get(name))
    if fmt is None or not np.array_equal(x, np.round(x)):
        return None, None
    return fmt, x


def _passes_grid(g: OnnxGraph, node: Any) -> bool:
    """Resize / Upsample keep the grid only in nearest-neighbour mode."""
    if node.op_type in ("Resize", "Upsample"):
        return g.attr(node, "mode", "nearest") == "nearest"
    return True


def input_quantizer(g: OnnxGraph, name: str) -> Any | None:
    """The quantizer node that produced tensor ``name`` (walking back through layout
    ops), or None (float, or a FINN annotation without a quantizer node)."""
    while True:
        n = g.producer.get(name)
        if n is None:
            return None
        if n.op_type in QONNX_QUANT_OPS:
            return n
        if n.op_type not in _LAYOUT_OPS or not _passes_grid(g, n) or not n.input:
            return None
        name = n.input[0]


def weight_quantizer(g: OnnxGraph, name: str) -> Any | None:
    """The Quant / BipolarQuant node of a constant weight (through Identity /
    Transpose), or None."""
    n = g.producer.get(name)
    while n is not None and n.op_type in ("Identity", "Transpose"):
        n = g.producer.get(n.input[0])
    op = None if n is None else ops.find(n.op_type)
    ok = op is not None and op.quantizes_weights and op.integer_codes
    return n if ok and g.const(n.input[0]) is not None else None


def _walk(g: OnnxGraph, name: str, through: set[str], forward: bool) -> Format | None:
    """The format of the first quantizer reached from tensor ``name``; walking back,
    a ``finn_datatype`` annotation on the way counts as a quantizer (FINN graphs)."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        t = todo.pop(0)
        if t in seen:
            continue
        seen.add(t)
        if not forward and datatype_format(g.datatypes.get(t)) is not None:
            return datatype_format(g.datatypes[t])
        nodes = g.consumers.get(t, []) if forward else [g.producer.get(t)]
        for n in nodes:
            if n is None:
                continue
            if n.op_type in QONNX_QUANT_OPS and (not forward or n.input[0] == t):
                return _quant_format(g, n)
            if n.op_type in through and _passes_grid(g, n):
                todo.extend(n.output if forward else [i for i in n.input[:1] if i])
    return None


# --------------------------------------------------------------------------- layers
def _geometry(g: OnnxGraph, node: Any, w_shape: tuple[int, ...]) -> dict:
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


def _layer_rows(g: OnnxGraph, node: Any, q: np.ndarray) -> np.ndarray:
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


def _mac_nodes(g: OnnxGraph) -> Iterator[tuple[Any, str]]:
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


def _record(g: OnnxGraph, node: Any, w_name: str, index: int) -> LayerRecord:
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


def prepare_with_qonnx(proto: Any) -> tuple[Any, list[str]]:
    """A cleaned copy of ``proto`` (see the module docstring) and notes on what was
    done. Without qonnx, or when its passes fail on the graph, the graph is read as
    it is (with a note)."""
    onnx = _onnx()
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    try:
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.transformation.change_batchsize import ChangeBatchSize
        from qonnx.transformation.fold_constants import FoldConstants
        from qonnx.transformation.general import RemoveStaticGraphInputs
        from qonnx.transformation.infer_shapes import InferShapes
    except ImportError:  # pragma: no cover - qonnx ships with the 'export' extra
        return work, []
    notes = []
    try:
        m = ModelWrapper(work)
        if _symbolic_batch(m.model):
            m = m.transform(ChangeBatchSize(1))
            notes.append("symbolic batch dimension set to 1")
        for t in (
            InferShapes(),
            FoldConstants(exclude_op_types=list(QONNX_QUANT_OPS)),
            RemoveStaticGraphInputs(),
            InferShapes(),
        ):
            m = m.transform(t)
    except Exception as e:
        notes.append(f"qonnx cleanup failed ({type(e).__name__}: {e}); graph read as is")
        fallback = onnx.ModelProto()
        fallback.CopyFrom(proto)
        return fallback, notes
    return m.model, notes


def _symbolic_batch(proto: Any) -> bool:
    inits = {t.name for t in proto.graph.initializer}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            return True
    return False


def load_graph(model: Any) -> tuple[OnnxGraph, str]:
    """(prepared graph, source label) of a path or an ``onnx.ModelProto``."""
    onnx = _onnx()
    label = _label(model)
    if isinstance(model, str | Path):
        try:
            model = onnx.load(str(model))
        except Exception as e:
            raise ValueError(f"cannot read {label} as ONNX: {e}") from None
    proto, notes = prepare_with_qonnx(model)
    g = OnnxGraph(proto)
    g.notes.extend(notes)
    return g, label


def weight_layers(g: OnnxGraph, label: str = "the ONNX model") -> list[tuple[Any, LayerRecord]]:
    """(MAC node, LayerRecord) of every weight layer of a prepared graph; raises
    ValueError as :func:`records_from_onnx` does."""
    macs = list(_mac_nodes(g))
    if not macs:
        raise ValueError(
            f"{label} has no Conv / ConvTranspose / Gemm / MatMul layer with constant weights"
        )
    layers = [(n, _record(g, n, w, i)) for i, (n, w) in enumerate(macs)]
    if all(r.weight_format is None and r.input_format is None for _, r in layers):
        raise ValueError(
            f"{label} is not a quantized (QONNX) graph: none of its {len(layers)} "
            "Conv/Gemm/MatMul layers has a Quant / BipolarQuant / FloatQuant node (or a "
            "FINN datatype annotation) on its weights or inputs (QCDQ graphs are not read; "
            "export with hwquant.export.to_qonnx)"
        )
    for _, r in layers:
        r.notes.extend(f"graph: {n}" for n in g.notes)
    return layers


def records_from_onnx(model: Any) -> list[LayerRecord]:
    """LayerRecords of a QONNX graph (a path or an ``onnx.ModelProto``), read after
    :func:`prepare_with_qonnx`.

    MatMuls between two activations (no constant operand) are not weight layers and
    are left out. Raises ValueError when the file is not ONNX, has no Conv / Gemm /
    MatMul with a constant weight, or is not quantized (no QONNX quantizer on any
    layer's weights or inputs).
    """
    g, label = load_graph(model)
    return [r for _, r in weight_layers(g, label)]


def _label(source: Any) -> str:
    return str(source) if isinstance(source, str | Path) else "the ONNX model"
