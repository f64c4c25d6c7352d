"""QCDQ export: QuantizeLinear → Clip → DequantizeLinear, standard ONNX (opset 21)
that onnxruntime runs.

The model is exported to QONNX first (:func:`hwquant.export.qonnx.qonnx_proto`),
then each QONNX node is lowered by its op module in :mod:`hwquant.export.ops`
(``OnnxOp.lower``; the shared rewrite context is :mod:`hwquant.export.ops.lowering`):

- ``Quant`` of 2–8 bits → Q → Clip(q_min, q_max) → DQ with an int8 / uint8
  container (Clip is left out when the range is the container's). A *signed
  8-bit* quantizer of a weight (a constant) or of any tensor that feeds the
  weight input of a MatMul / Gemm / Conv / ConvTranspose is written in a uint8
  container with zero point z + 128 instead: the same values, but onnxruntime's
  default session then fuses the layer into its u8×u8 integer kernels instead of
  u8×s8. On x86 without VNNI (AVX2, AVX-512F) the u8×s8 kernels add pairs of
  u8·s8 products in 16 bits with saturation (``vpmaddubsw``), which for 8-bit
  weights (2·255·127 > 32767) silently gives wrong sums — tens of thousands of
  output steps; the u8×u8 kernels widen to 16 bits first and are exact. Weights
  of ≤ 7 bits cannot saturate (2·255·64 ≤ 32767) and keep int8. Signed
  activations in int8 would not help: onnxruntime converts s8 activations to u8
  (+128) on x86 before the same kernels. Every signed 2–8-bit *activation* is
  written in uint8 with zero point + 128 (the values onnxruntime would make of it):
  with int8 activations onnxruntime 1.32's extended optimizer fails to load some
  graphs — it rewrites a MatMul on 3-D input (a Linear on a sequence) into a
  reshaped Gemm and moves Q / DQ across Slice (a recurrent cell's gates), leaving
  "output_dtype INT8 does not match y_zero_point type UINT8". 16-bit full
  range → int16 / uint16 Q → DQ (onnxruntime has no int16 Clip kernel); with
  ``int4=True`` a full-range 4-bit Quant uses onnxruntime's native int4 / uint4.
  Per-channel scales use ``axis``, per-group scales blocked quantization
  (``axis`` + ``block_size``). A ``Quant`` of a constant (weights, biases) that no
  container above holds (e.g. a 32-bit bias) becomes its int32 codes → DQ.
- ``FloatQuant`` of an ONNX FP8 type (E4M3FN, E4M3FNUZ, E5M2, E5M2FNUZ, with
  subnormals) → Q → DQ with a float8 zero point, ``saturate=1``. A ``Relu`` in
  front of it becomes ``Max(x, 0)`` and a ``Clip`` ``Min(Max(x, lo), hi)``:
  onnxruntime's optimizer drops a Relu before a QuantizeLinear as if the zero
  point were the container's minimum (true for uint8 zp = 0, wrong for float8,
  where negative values then pass) and fails to load a Clip before a float8
  QuantizeLinear.
- A float bias of a Conv / ConvTranspose / Gemm (not an integer accumulator bias)
  moves into an ``Add`` after the op: onnxruntime would otherwise fuse it into an
  integer kernel and round it onto s_x·s_w (:func:`_split_float_biases`, here:
  it concerns the MAC ops, not a QONNX op).
- ``Trunc`` (average pooling) → Div → Round → Div(2^t) → Floor → Clip → Mul, the
  same arithmetic in standard ops.

What QCDQ cannot express raises ``ValueError`` naming the module path:
bipolar / 1-bit quantizers, minifloats other than FP8, 9–15-bit activations,
rounding other than half-to-even (QuantizeLinear's only mode); power-of-two /
APoT / MSQ activations fail already in the QONNX step (their weights are integer
``Quant`` nodes on the codes, lowered like any other constant).

>>> import tempfile, torch
>>> from hwquant.nn import QuantReLU
>>> from hwquant.spec import A4U, LayerSpec
>>> act = QuantReLU(spec=LayerSpec(output=A4U)).eval()
>>> _ = act(torch.rand(8, 3))
>>> import onnx
>>> p = to_qcdq(act, torch.rand(2, 3), tempfile.mkdtemp() + "/a.onnx")
>>> [n.op_type for n in onnx.load(p).graph.node]
['Relu', 'QuantizeLinear', 'Clip', 'DequantizeLinear']
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from hwquant.export import ops
from hwquant.export.ops import QONNX_DOMAIN
from hwquant.export.ops.lowering import MAC_OPS, Lowering
from hwquant.export.qonnx import (
    Inputs,
    capture,
    check_recurrent_form,
    finish,
    qonnx_proto,
    write_atomic,
)
from hwquant.spec.layer_spec import Recipe

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["QCDQ_OPSET", "qcdq_proto", "qonnx_to_qcdq", "to_qcdq", "to_qonnx_and_qcdq"]

#: native int4 / uint4 / int16 Q/DQ need opset 21.
QCDQ_OPSET = 21


def to_qcdq(
    model: nn.Module,
    example_input: Inputs,
    path: str | os.PathLike,
    dynamic_batch: bool = False,
    *,
    recipe: Recipe | None = None,
    int4: bool = False,
    recurrent: str = "scan",
    dynamic_length: int | None = None,
) -> Path:
    """Export ``model`` as a QCDQ graph (standard ONNX, opset 21) to ``path``.

    Same arguments as :func:`hwquant.export.to_qonnx`; ``int4`` uses onnxruntime's
    native int4 / uint4 containers for full-range 4-bit quantizers; recurrent layers
    become ONNX ``Scan`` loops by default (their bodies lowered too; give
    ``dynamic_length`` for any sequence length). Raises
    ``ValueError`` (naming the module path) for what QCDQ cannot express.

    >>> import tempfile, torch
    >>> from hwquant.nn import QuantLinear
    >>> from hwquant.spec import A8, W4, LayerSpec
    >>> layer = QuantLinear(4, 2, spec=LayerSpec(input=A8, weight=W4)).eval()
    >>> _ = layer(torch.randn(16, 4))
    >>> p = to_qcdq(layer, torch.randn(3, 4), tempfile.mkdtemp() + "/lin.onnx")
    >>> p.exists()
    True
    """
    proto = qcdq_proto(
        model,
        example_input,
        dynamic_batch,
        recipe=recipe,
        int4=int4,
        recurrent=recurrent,
        dynamic_length=dynamic_length,
    )
    return write_atomic(proto, path)


def qcdq_proto(
    model: nn.Module,
    example_input: Inputs,
    dynamic_batch: bool = False,
    *,
    recipe: Recipe | None = None,
    int4: bool = False,
    recurrent: str = "scan",
    dynamic_length: int | None = None,
) -> onnx.ModelProto:
    """The QCDQ ``ModelProto`` that :func:`to_qcdq` writes (in memory)."""
    proto = qonnx_proto(
        model,
        example_input,
        dynamic_batch,
        recipe=recipe,
        recurrent=recurrent,
        dynamic_length=dynamic_length,
    )
    return qonnx_to_qcdq(proto, int4=int4)


def to_qonnx_and_qcdq(
    model: nn.Module,
    example_input: Inputs,
    qonnx_path: str | os.PathLike,
    qcdq_path: str | os.PathLike,
    dynamic_batch: bool = False,
    *,
    recipe: Recipe | None = None,
    int4: bool = False,
    qonnx_recurrent: str = "unrolled",
    qcdq_recurrent: str = "scan",
    dynamic_length: int | None = None,
) -> tuple[Path, Path]:
    """Write the QONNX and the QCDQ graph of ``model`` from **one** trace (about half
    the time of :func:`~hwquant.export.to_qonnx` plus :func:`to_qcdq`, which trace
    the model each): the same files, byte for byte, as those two calls with the same
    arguments (``qonnx_recurrent`` / ``qcdq_recurrent``: each file's ``recurrent``
    form; a ``dynamic_length`` needs both to be ``"scan"``). Returns both paths.

    >>> import tempfile, torch
    >>> from hwquant.nn import QuantLinear
    >>> from hwquant.spec import A8, W4, LayerSpec
    >>> layer = QuantLinear(4, 2, spec=LayerSpec(input=A8, weight=W4)).eval()
    >>> _ = layer(torch.randn(16, 4))
    >>> d = tempfile.mkdtemp()
    >>> a, b = to_qonnx_and_qcdq(layer, torch.randn(3, 4), d + "/q.onnx", d + "/c.onnx")
    >>> a.exists() and b.exists()
    True
    """
    check_recurrent_form(qonnx_recurrent, dynamic_length)
    check_recurrent_form(qcdq_recurrent, dynamic_length)
    traced = capture(model, example_input, dynamic_batch, dynamic_length)
    qonnx = finish(traced, model, qonnx_recurrent, recipe)
    same = not traced.loops or qonnx_recurrent == qcdq_recurrent
    base = qonnx if same else finish(traced, model, qcdq_recurrent, recipe)
    qcdq = qonnx_to_qcdq(base, int4=int4)
    return write_atomic(qonnx, qonnx_path), write_atomic(qcdq, qcdq_path)


# ---------------------------------------------------------------- the rewrite
def qonnx_to_qcdq(proto: onnx.ModelProto, *, int4: bool = False) -> onnx.ModelProto:
    """Lower the QONNX nodes of ``proto`` to QCDQ / standard ops (module docstring):
    each node by its op module's :meth:`~hwquant.export.ops.OnnxOp.lower`."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    ctx = Lowering(out, {t.name: numpy_helper.to_array(t) for t in g.initializer}, int4, [])
    every = _all_nodes(g.node)
    ctx.weight_inputs = {n.input[1] for n in every if n.op_type in MAC_OPS and len(n.input) > 1}
    nodes = _lower_nodes(list(g.node), ctx)
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(ctx.new_inits)
    del g.quantization_annotation[:]
    _drop_unused_initializers(out)
    imports = [
        (i.domain, i.version) for i in out.opset_import if i.domain not in ("", QONNX_DOMAIN)
    ]
    del out.opset_import[:]
    out.opset_import.add(domain="", version=QCDQ_OPSET)
    for d, v in imports:
        out.opset_import.add(domain=d, version=v)
    onnx.checker.check_model(out)
    return out


def _lower_nodes(nodes: list, ctx: Lowering) -> list:
    """Each QONNX node of ``nodes`` by its op module; the bodies of Scan / Loop / If
    nodes too (a recurrent layer's Scan, :mod:`hwquant.export.recurrent`): their
    Constant values join the known constants, new initializers go to the main graph,
    which a body may name (outer scope)."""
    from onnx import numpy_helper

    out = []
    for n in nodes:
        op = ops.find(n.op_type)
        if op is not None:
            out.extend(op.lower(n, ctx))
        elif n.domain == QONNX_DOMAIN:
            raise ValueError(f"{ctx.where(n)}: QCDQ cannot express the QONNX op {n.op_type}")
        else:
            for a in n.attribute:
                if a.HasField("g"):
                    body = a.g
                    for c in body.node:
                        if c.op_type == "Constant" and c.attribute[0].HasField("t"):
                            ctx.inits[c.output[0]] = numpy_helper.to_array(c.attribute[0].t)
                    lowered = _lower_nodes(list(body.node), ctx)
                    del body.node[:]
                    body.node.extend(_own_constants(lowered, ctx))
            out.append(n)
    for op in ops.all_ops():
        out = op.finish_lowering(out, ctx)
    return _split_float_biases(out, ctx)


def _split_float_biases(nodes: list, ctx: Lowering) -> list:
    """Conv / ConvTranspose / Gemm with a *float* bias (a plain initializer, not a
    DequantizeLinear output) → the op without bias, then ``Add(bias)``.

    onnxruntime's default session fuses DQ → Conv(float bias) → … → Q into an integer
    kernel and quantizes the float bias to int32 at s_x·s_w on the way: outputs move by
    a step wherever the bias was not on that grid. A separate Add keeps the bias float,
    as the graph (and torch) says. Integer (accumulator-scale) biases are unaffected."""
    from onnx import helper

    producer = {o: n for n in nodes for o in n.output}
    out = []
    for n in nodes:
        if n.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(n.input) < 3:
            out.append(n)
            continue
        bias = n.input[2]
        if bias not in ctx.inits or any(a.name == "beta" and a.f != 1.0 for a in n.attribute):
            out.append(n)
            continue
        b = ctx.inits[bias]
        if n.op_type != "Gemm":  # per output channel: broadcast over the spatial dims
            b = b.reshape(-1, *[1] * (_weight_rank(n.input[1], producer, ctx) - 2))
        y = n.output[0]
        n.input[2] = ""  # an empty name: no bias
        n.output[0] = ctx.name(f"{n.name}_nobias")
        add = helper.make_node("Add", [n.output[0], ctx.add(f"{n.name}_bias", b)], [y])
        add.name = ctx.name(f"{n.name}_bias_add")
        add.metadata_props.extend(n.metadata_props)
        out.extend([n, add])
    return out


def _weight_rank(tensor: str, producer: dict, ctx: Lowering) -> int:
    """Rank of a weight: follow its Q / Clip / DQ chain back to the initializer."""
    while tensor not in ctx.inits:
        tensor = producer[tensor].input[0]
    return ctx.inits[tensor].ndim


def _own_constants(body_nodes: list, ctx: Lowering) -> list:
    """``body_nodes`` with Constant nodes (local names) for the new initializers they
    read, so that the body names nothing of the outer graph (qonnx's executor runs a
    Scan node on its own)."""
    from onnx import helper

    new = {t.name: t for t in ctx.new_inits}
    read = {i for n in body_nodes for i in n.input}
    local = {name: f"{name}_in_body" for name in sorted(read & set(new))}
    consts = [
        helper.make_node("Constant", [], [local[name]], value=new[name], name=local[name])
        for name in local
    ]
    for n in body_nodes:
        n.input[:] = [local.get(i, i) for i in n.input]
    return consts + body_nodes


def _all_nodes(nodes) -> list:
    """``nodes`` and the nodes of their subgraph bodies (Scan), recursively."""
    out = []
    for n in nodes:
        out.append(n)
        for a in n.attribute:
            if a.HasField("g"):
                out.extend(_all_nodes(a.g.node))
    return out


def _inputs_of(nodes) -> set[str]:
    """Every tensor name the nodes read, in subgraph bodies (Scan) too."""
    return {i for n in _all_nodes(nodes) for i in n.input}


def _drop_unused_initializers(proto: onnx.ModelProto) -> None:
    used = _inputs_of(proto.graph.node)
    keep = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
