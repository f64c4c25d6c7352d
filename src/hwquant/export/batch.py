"""Fixing or changing the batch dimension of an exported graph (qonnx's executor
checks every input against the graph's declared shape).

>>> callable(with_batch)
True
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["batch_of", "inferred", "rebatched", "with_batch"]


def with_batch(proto: onnx.ModelProto | str | os.PathLike, n: int) -> onnx.ModelProto:
    """A copy whose symbolic batch dimension is ``n`` (shapes re-inferred); a graph
    with a fixed batch is returned unchanged. ``proto`` may be a path.

    qonnx's ``execute_onnx`` checks every input against the graph's declared
    shape, and a symbolic batch reads as 0 there: a file exported with
    ``dynamic_batch=True`` runs in it only after fixing the batch.

    >>> import tempfile, torch
    >>> from qonnx.core.modelwrapper import ModelWrapper
    >>> from qonnx.core.onnx_exec import execute_onnx
    >>> from hwquant.export.qonnx import to_qonnx
    >>> from hwquant.nn import QuantReLU
    >>> from hwquant.spec import A4U, LayerSpec
    >>> act = QuantReLU(spec=LayerSpec(output=A4U)).eval()
    >>> _ = act(torch.randn(100, 8))
    >>> p = to_qonnx(act, torch.randn(2, 8), tempfile.mkdtemp() + "/a.onnx", dynamic_batch=True)
    >>> mw = ModelWrapper(with_batch(p, 5))
    >>> y = execute_onnx(mw, {mw.graph.input[0].name: torch.randn(5, 8).numpy()})
    >>> y[mw.graph.output[0].name].shape
    (5, 8)
    """
    if not hasattr(proto, "graph"):
        import onnx

        proto = onnx.load(str(proto))
    dyn = [
        vi
        for vi in (*proto.graph.input, *proto.graph.output)
        if vi.type.tensor_type.shape.dim and not vi.type.tensor_type.shape.dim[0].dim_value
    ]
    if not dyn:
        return proto

    p = copy.deepcopy(proto)
    for vi in (*p.graph.input, *p.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_value = n
    return inferred(p)


def batch_of(proto: onnx.ModelProto) -> int | None:
    d = proto.graph.input[0].type.tensor_type.shape.dim
    return d[0].dim_value or None if d else None


def rebatched(proto: onnx.ModelProto, old: int, new: int) -> onnx.ModelProto | None:
    """A copy of a graph with the fixed batch ``old`` whose batch is ``new``: dimension
    0 of every input and output, and a leading ``old`` in the constant shape of a
    Reshape (torch.export writes the traced batch there), shapes re-inferred. None
    where an input or output does not lead with ``old`` or shape inference fails;
    the caller checks the copy against the original graph before trusting it."""
    from onnx import numpy_helper

    p = copy.deepcopy(proto)
    g = p.graph
    for vi in (*g.input, *g.output):
        dims = vi.type.tensor_type.shape.dim
        if not dims or dims[0].dim_value != old:
            return None
        dims[0].dim_value = new
    users: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    for t in g.initializer:
        nodes = users.get(t.name, [])
        if not nodes or any(
            n.op_type != "Reshape" or list(n.input).index(t.name) != 1 for n in nodes
        ):
            continue
        v = numpy_helper.to_array(t)
        if v.ndim == 1 and v.size > 1 and v[0] == old:
            v = v.copy()
            v[0] = new
            t.CopyFrom(numpy_helper.from_array(v, t.name))
    try:
        return inferred(p)
    except Exception:  # a graph qonnx cannot re-infer: run it at its own batch
        return None


def inferred(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` (changed in place) with its shapes re-inferred by qonnx: its
    executor needs a shape for every tensor."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    del proto.graph.value_info[:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ModelWrapper(proto).transform(InferShapes()).model
