"""A traced model (a ``torch.export`` program) straight to ONNX, for the ops hwquant's
layers produce.

torch's ONNX exporter first re-traces the program to decompose it, which is most of
an export's time (about 2 of 3.5 s for a 78k-parameter ResNet-8). The programs hwquant
exports hold few kinds of ops: its quantizers' QONNX nodes (``torch.onnx.ops.symbolic``,
:mod:`hwquant.export.emit`), convolutions, ``linear``, pooling, element-wise
activations, ``add`` / ``cat``, reshapes, and in the time step of a recurrent
layer (:mod:`hwquant.export.recurrent` traces it for the Scan body and the unrolled
steps) ``transpose``, ``matmul`` and ``slice``. :func:`translate` writes those nodes
with ``onnx.helper``, one per op, as torch's exporter writes them (``linear`` on a
matrix → ``Gemm`` with ``transB=1``, ``flatten`` → ``Reshape``, global average
pooling → ``ReduceMean``), with the ``namespace`` metadata naming each node's module.

A program holding anything else (an op outside :data:`OPS`, a shape with a symbolic
dimension other than the batch, a non-float input, an argument form the table does
not cover) gives None, and the caller (:func:`hwquant.export.qonnx.capture`) uses
torch's exporter; both graphs are cleaned by qonnx's passes after, and
:mod:`hwquant.export.verify` checks either the same way.

>>> import torch
>>> from hwquant.nn import QuantLinear
>>> from hwquant.spec import A8, W4, LayerSpec
>>> from hwquant.export.emit import emitting
>>> layer = QuantLinear(4, 2, spec=LayerSpec(input=A8, weight=W4)).eval()
>>> _ = layer(torch.randn(8, 4))
>>> with emitting(layer), torch.no_grad():
...     ep = torch.export.export(layer, (torch.randn(3, 4),), strict=False)
>>> [n.op_type for n in translate(ep).graph.node]
['Quant', 'Quant', 'Gemm']
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hwquant.export.emit import QONNX_DOMAIN, QONNX_OPSET

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["ONNX_OPSET", "OPS", "onnx_model", "translate"]

log = logging.getLogger(__name__)

#: the default-domain opset written (what torch's exporter writes).
ONNX_OPSET = 20


class _Untranslatable(Exception):
    """The program holds something :data:`OPS` does not cover (the message says what)."""


def translate(ep: torch.export.ExportedProgram) -> onnx.ModelProto | None:
    """The ONNX model of ``ep`` (QONNX nodes as written by the quantizers), or None
    when ``ep`` holds an op or a form this module does not translate (logged at
    DEBUG level; an unexpected error at WARNING level); the caller then uses
    ``torch.onnx.export``."""
    try:
        return _Translator(ep).run()
    except _Untranslatable as e:
        log.debug("hwquant's own ONNX translation does not cover this model: %s", e)
    except Exception as e:  # a case the table gets wrong: torch's exporter still can
        log.warning("hwquant's ONNX translation failed (%s: %s); using torch.onnx", type(e), e)
    return None


def onnx_model(
    ep: torch.export.ExportedProgram, inputs: tuple[torch.Tensor, ...], own: bool = True
) -> onnx.ModelProto:
    """``ep`` as ONNX: by :func:`translate` (with ``own``) where it covers the
    program, else by ``torch.onnx.export`` (whose errors propagate)."""
    proto = translate(ep) if own else None
    if proto is None:
        prog = torch.onnx.export(ep, inputs, dynamo=True, optimize=True, verbose=False)
        proto = prog.model_proto
    return proto


Handler = Callable[["_Translator", torch.fx.Node], None]
#: ATen op (its ``str``, e.g. ``"aten.conv2d.default"``) → the function writing its node.
OPS: dict[str, Handler] = {}


def _op(*names: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for name in names:
            OPS[name] = fn
        return fn

    return register


class _Translator:
    """One program's translation: fx value → ONNX tensor name, nodes, initializers."""

    def __init__(self, ep: torch.export.ExportedProgram) -> None:
        from onnx import helper

        self.helper = helper
        self.ep = ep
        self.names: dict[torch.fx.Node, str] = {}
        self.nodes: list = []
        self.inits: dict[str, Any] = {}  # name → TensorProto
        self.inputs: list = []
        self.value_info: list = []
        self.counter = 0
        # equal constants and equal nodes are written once (as torch's exporter does):
        # (dtype, shape, bytes) / (op, inputs, attributes) → the tensor holding it
        self.constants: dict[tuple, str] = {}
        self.computed: dict[tuple, str] = {}

    # ---------------------------------------------------------------- the walk
    def run(self) -> onnx.ModelProto:
        from torch.export.graph_signature import InputKind, OutputKind

        sig = self.ep.graph_signature
        kinds = {s.arg.name: s for s in sig.input_specs}
        for node in self.ep.graph.nodes:
            if node.op == "placeholder":
                spec = kinds[node.name]
                if spec.kind == InputKind.USER_INPUT:
                    self._user_input(node)
                elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
                    value = (
                        self.ep.state_dict[spec.target]
                        if spec.target in self.ep.state_dict
                        else self.ep.constants[spec.target]
                    )
                    self._constant(node, spec.target, value)
                elif spec.kind == InputKind.CONSTANT_TENSOR:  # equal values: one tensor
                    self._constant(node, spec.target, self.ep.constants[spec.target], True)
                else:
                    raise _Untranslatable(f"input {node.name} of kind {spec.kind}")
            elif node.op == "call_function":
                handler = OPS.get(str(node.target))
                if handler is None:
                    raise _Untranslatable(f"op {node.target}")
                handler(self, node)
            elif node.op == "output":
                if any(s.kind != OutputKind.USER_OUTPUT for s in sig.output_specs):
                    raise _Untranslatable("the program mutates a buffer")
                outputs = self._outputs(node.args[0])
            else:
                raise _Untranslatable(f"fx node {node.op} {node.target}")
        h = self.helper
        out_names = {o.name for o in outputs}
        self.value_info = [v for v in self.value_info if v.name not in out_names]
        graph = h.make_graph(
            self.nodes,
            "hwquant",
            self.inputs,
            outputs,
            initializer=list(self.inits.values()),
            value_info=self.value_info,
        )
        opsets = [h.make_opsetid("", ONNX_OPSET), h.make_opsetid(QONNX_DOMAIN, QONNX_OPSET)]
        return h.make_model(graph, opset_imports=opsets, producer_name="hwquant")

    def _user_input(self, node: torch.fx.Node) -> None:
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor) or val.dtype != torch.float32:
            raise _Untranslatable(f"input {node.name} is not a float32 tensor")
        self.names[node] = node.name
        self.inputs.append(self._info(node.name, val))

    def _constant(
        self, node: torch.fx.Node, name: str, value: torch.Tensor, merge: bool = False
    ) -> None:
        self.names[node] = self._initializer(value.detach().cpu().numpy(), name, merge)

    def _initializer(self, array: np.ndarray, name: str, merge: bool) -> str:
        """``array`` as the initializer ``name`` (``merge``: or the one already holding
        an equal value); the name it has."""
        from onnx import numpy_helper

        key = (array.dtype.str, array.shape, array.tobytes()) if merge else None
        if key in self.constants:
            return self.constants[key]
        if key is not None:
            self.constants[key] = name
        self.inits[name] = numpy_helper.from_array(array.copy(), name)  # C order, 0-d kept
        return name

    def _outputs(self, values) -> list:
        outs, seen = [], set()
        for v in values:
            if not isinstance(v, torch.fx.Node):
                raise _Untranslatable("an output is not a tensor")
            name = self.tensor(v)
            if name in seen or name in self.inits or name in {i.name for i in self.inputs}:
                fresh = self.fresh(f"{v.name}_out")
                self.nodes.append(self.helper.make_node("Identity", [name], [fresh], name=fresh))
                name = fresh
            seen.add(name)
            outs.append(self._info(name, v.meta["val"]))
        return outs

    # ---------------------------------------------------------------- helpers
    def tensor(self, v: Any) -> str:
        """The ONNX name of fx value ``v`` (a python number becomes a float32
        initializer, a string is already a name, None an omitted input)."""
        if v is None or isinstance(v, str):
            return v or ""
        if isinstance(v, torch.fx.Node):
            if v not in self.names:
                raise _Untranslatable(f"{v.name} is not a tensor")
            return self.names[v]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return self.const(np.asarray(v, np.float32), "scalar")
        raise _Untranslatable(f"argument {v!r}")

    def const(self, array: np.ndarray, base: str) -> str:
        """An initializer holding ``array`` (one per distinct value)."""
        return self._initializer(array, self.fresh(base), merge=True)

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}_hwq{self.counter}"

    def alias(self, node: torch.fx.Node, of: Any) -> None:
        self.names[node] = self.tensor(of)

    def emit(self, node: torch.fx.Node, op_type: str, inputs: list, **attrs: Any) -> Any:
        """One ONNX node computing fx ``node`` (output named after it); a node equal to
        an earlier one (same op, inputs and attributes) is not written again."""
        names = [self.tensor(i) for i in inputs]
        key = (op_type, tuple(names), repr(sorted(attrs.items())))
        if key in self.computed:
            self.names[node] = self.computed[key]
            return None
        self.computed[key] = node.name
        n = self.helper.make_node(op_type, names, [node.name], name=node.name, **attrs)
        n.metadata_props.add(key="namespace", value=self._namespace(node))
        self.nodes.append(n)
        self.names[node] = node.name
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            self.value_info.append(self._info(node.name, val))
        return n

    def _namespace(self, node: torch.fx.Node) -> str:
        """``": Root/path: Class/node: op"`` (what torch's exporter writes; the cost
        reader takes the module path from it)."""
        stack = node.meta.get("nn_module_stack") or {}
        parts = []
        for path, cls in stack.values():
            name = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
            parts.append(f"{path}: {name}")
        return "/".join([*parts, f"{node.name}: {node.target}"])

    def _info(self, name: str, val: torch.Tensor):
        if val.dtype not in _ONNX_TYPES:
            raise _Untranslatable(f"a tensor of type {val.dtype}")
        dims = [d if isinstance(d, int) else str(d) for d in val.shape]
        return self.helper.make_tensor_value_info(name, _ONNX_TYPES[val.dtype], dims)

    def shape_of(self, node: torch.fx.Node) -> list[int]:
        """``node``'s output shape as a Reshape target: its one symbolic dimension (the
        batch) becomes -1, as torch's exporter writes it."""
        dims = [d if isinstance(d, int) else -1 for d in node.meta["val"].shape]
        if dims.count(-1) > 1 or 0 in dims:
            raise _Untranslatable("a reshape to several symbolic or zero-sized dimensions")
        return dims


#: torch dtype → ONNX TensorProto type (the types a translated graph may hold).
_ONNX_TYPES = {torch.float32: 1, torch.int64: 7, torch.bool: 9}


def _ints(v: Any, n: int) -> list[int]:
    """An int or int list argument as n ints (torch repeats a single value)."""
    v = [v] if isinstance(v, int) else list(v)
    if len(v) == 1:
        v = v * n
    if len(v) != n or not all(isinstance(i, int) for i in v):
        raise _Untranslatable(f"argument {v}")
    return v


def _arg(node: torch.fx.Node, i: int, name: str, default: Any) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


# ---------------------------------------------------------------- the table
@_op(
    "aten.lift_fresh_copy.default",
    "aten.detach_.default",
    "aten.detach.default",
    "aten.clone.default",
    "aten.alias.default",
)
def _identity(t: _Translator, node: torch.fx.Node) -> None:
    t.alias(node, node.args[0])


@_op("aten.dropout.default")
def _dropout(t: _Translator, node: torch.fx.Node) -> None:
    if _arg(node, 2, "train", False):
        raise _Untranslatable("dropout in training mode")
    t.alias(node, node.args[0])


@_op("aten.sym_size.int")
def _sym_size(t: _Translator, node: torch.fx.Node) -> None:
    """A symbolic size feeds only the ``shape`` of QONNX nodes (no ONNX value)."""


@_op("onnx_symbolic._symbolic.default")
def _symbolic(t: _Translator, node: torch.fx.Node) -> None:
    from torch.onnx.ops._symbolic_impl import EncodedAttrs

    inputs, op_type = node.args[0], node.args[1]
    k = node.kwargs
    attrs = EncodedAttrs(
        attr_keys=list(k["attr_keys"]),
        attr_types=list(k["attr_types"]),
        attr_pos=[tuple(p) for p in k["attr_pos"]],
        attr_ints=list(k["attr_ints"]),
        attr_floats=list(k["attr_floats"]),
        attr_strs=list(k["attr_strs"]),
    ).to_dict()
    n = t.emit(node, op_type, list(inputs), domain=k["domain"], **attrs)
    if n is not None:
        for key, value in zip(k["metadata_props_keys"], k["metadata_props_values"], strict=True):
            n.metadata_props.add(key=key, value=value)


@_op("aten.linear.default")
def _linear(t: _Translator, node: torch.fx.Node) -> None:
    x, w = node.args[0], node.args[1]
    b = _arg(node, 2, "bias", None)
    if x.meta["val"].dim() != 2:
        raise _Untranslatable("linear on a tensor of rank other than 2")
    inputs = [x, w] if b is None else [x, w, b]
    t.emit(node, "Gemm", inputs, alpha=1.0, beta=1.0, transA=0, transB=1)


@_op("aten.conv1d.default", "aten.conv2d.default", "aten.conv3d.default")
def _conv(t: _Translator, node: torch.fx.Node) -> None:
    _convolution(t, node, transposed=False)


@_op(
    "aten.conv_transpose1d.default",
    "aten.conv_transpose2d.input",
    "aten.conv_transpose3d.input",
)
def _conv_transpose(t: _Translator, node: torch.fx.Node) -> None:
    _convolution(t, node, transposed=True)


def _convolution(t: _Translator, node: torch.fx.Node, transposed: bool) -> None:
    """Conv / ConvTranspose. ATen's arguments: (x, w, bias, stride, padding,
    dilation, groups), transposed (x, w, bias, stride, padding, output_padding,
    groups, dilation)."""
    x, w = node.args[0], node.args[1]
    b = _arg(node, 2, "bias", None)
    k = list(w.meta["val"].shape[2:])
    n = len(k)
    pads = _ints(_arg(node, 4, "padding", 0), n)
    attrs = {
        "auto_pad": "NOTSET",
        "kernel_shape": k,
        "strides": _ints(_arg(node, 3, "stride", 1), n),
        "pads": pads + pads,
        "dilations": _ints(_arg(node, 7 if transposed else 5, "dilation", 1), n),
        "group": int(_arg(node, 6, "groups", 1)),
    }
    if transposed:
        attrs["output_padding"] = _ints(_arg(node, 5, "output_padding", 0), n)
    op_type = "ConvTranspose" if transposed else "Conv"
    t.emit(node, op_type, [x, w] if b is None else [x, w, b], **attrs)


def _window(node: torch.fx.Node) -> dict[str, Any]:
    """A 2-D pooling's kernel, strides (default: the kernel) and pads, as attributes."""
    k = _ints(node.args[1], 2)
    stride = _arg(node, 2, "stride", [])
    pads = _ints(_arg(node, 3, "padding", 0), 2)
    strides = _ints(stride, 2) if stride else k
    return {"auto_pad": "NOTSET", "kernel_shape": k, "strides": strides, "pads": pads + pads}


@_op("aten.max_pool2d.default")
def _max_pool(t: _Translator, node: torch.fx.Node) -> None:
    if _arg(node, 5, "ceil_mode", False):
        raise _Untranslatable("max pooling with ceil_mode")
    dilations = _ints(_arg(node, 4, "dilation", 1), 2)
    t.emit(
        node, "MaxPool", [node.args[0]], dilations=dilations, ceil_mode=0, storage_order=0,
        **_window(node),
    )  # fmt: skip


@_op("aten.avg_pool2d.default")
def _avg_pool(t: _Translator, node: torch.fx.Node) -> None:
    if _arg(node, 4, "ceil_mode", False) or _arg(node, 6, "divisor_override", None) is not None:
        raise _Untranslatable("average pooling with ceil_mode or divisor_override")
    include = int(bool(_arg(node, 5, "count_include_pad", True)))
    t.emit(
        node, "AveragePool", [node.args[0]], ceil_mode=0, count_include_pad=include,
        **_window(node),
    )  # fmt: skip


@_op("aten.adaptive_avg_pool2d.default")
def _global_avg_pool(t: _Translator, node: torch.fx.Node) -> None:
    if _ints(node.args[1], 2) != [1, 1]:
        raise _Untranslatable("adaptive average pooling to a size other than 1×1")
    axes = t.const(np.asarray([-1, -2], np.int64), "axes")
    t.emit(node, "ReduceMean", [node.args[0], axes], keepdims=1, noop_with_empty_axes=0)


@_op("aten.flatten.using_ints", "aten.reshape.default", "aten.view.default")
def _reshape(t: _Translator, node: torch.fx.Node) -> None:
    shape = t.const(np.asarray(t.shape_of(node), np.int64), "shape")
    t.emit(node, "Reshape", [node.args[0], shape], allowzero=1)


@_op("aten.transpose.int")
def _transpose(t: _Translator, node: torch.fx.Node) -> None:
    rank = node.args[0].meta["val"].dim()
    a, b = (int(d) % rank for d in node.args[1:3])
    perm = list(range(rank))
    perm[a], perm[b] = perm[b], perm[a]
    t.emit(node, "Transpose", [node.args[0]], perm=perm)


@_op("aten.matmul.default")
def _matmul(t: _Translator, node: torch.fx.Node) -> None:
    t.emit(node, "MatMul", [node.args[0], node.args[1]])


@_op("aten.slice.Tensor")
def _slice(t: _Translator, node: torch.fx.Node) -> None:
    dim, start = _arg(node, 1, "dim", 0), _arg(node, 2, "start", None)
    end, step = _arg(node, 3, "end", None), _arg(node, 4, "step", 1)
    if not all(isinstance(v, int) for v in (dim, step, *(v for v in (start, end) if v))):
        raise _Untranslatable("a slice with symbolic bounds")
    bounds = [0 if start is None else start, 2**63 - 1 if end is None else end, dim, step]
    names = zip(bounds, SLICE_INPUTS, strict=True)
    consts = [t.const(np.asarray([v], np.int64), k) for v, k in names]
    t.emit(node, "Slice", [node.args[0], *consts])


SLICE_INPUTS = ("starts", "ends", "axes", "steps")


@_op("aten.cat.default")
def _cat(t: _Translator, node: torch.fx.Node) -> None:
    t.emit(node, "Concat", list(node.args[0]), axis=int(_arg(node, 1, "dim", 0)))


def _binary(op_type: str) -> Handler:
    def handler(t: _Translator, node: torch.fx.Node) -> None:
        if _arg(node, 2, "alpha", 1) != 1:
            raise _Untranslatable(f"{node.target} with alpha")
        a, b = node.args[0], node.args[1]
        if op_type != "Mul" and isinstance(b, (int, float)) and b == 0:
            t.emit(node, "Identity", [a])  # x ± 0 (torch's exporter simplifies it too)
        else:
            t.emit(node, op_type, [a, b])

    return handler


OPS["aten.add.Tensor"] = _binary("Add")
OPS["aten.sub.Tensor"] = _binary("Sub")
OPS["aten.mul.Tensor"] = _binary("Mul")


def _unary(op_type: str) -> Handler:
    def handler(t: _Translator, node: torch.fx.Node) -> None:
        t.emit(node, op_type, [node.args[0]])

    return handler


OPS["aten.relu.default"] = _unary("Relu")
OPS["aten.sigmoid.default"] = _unary("Sigmoid")
OPS["aten.tanh.default"] = _unary("Tanh")


@_op("aten.hardtanh.default")
def _hardtanh(t: _Translator, node: torch.fx.Node) -> None:
    lo = t.const(np.asarray(_arg(node, 1, "min_val", -1.0), np.float32), "min")
    hi = t.const(np.asarray(_arg(node, 2, "max_val", 1.0), np.float32), "max")
    t.emit(node, "Clip", [node.args[0], lo, hi])
