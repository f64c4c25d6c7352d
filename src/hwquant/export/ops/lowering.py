"""The QCDQ lowering's shared state and helpers: the rewrite context each op's
:meth:`~hwquant.export.ops.base.OnnxOp.lower` writes into, and the scale layout
QuantizeLinear / DequantizeLinear want (scalar, per-axis, blocked).

The pass itself (:func:`hwquant.export.qcdq.qonnx_to_qcdq`) walks the graph and asks
the op registry; the per-op forms live in the op modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hwquant.export.ops.base import GROUP_KEY, PATH_KEY, attr

__all__ = ["MAC_OPS", "Lowering", "block_scale", "layout", "qparams"]

#: ops whose input 1 is a weight (onnxruntime fuses their Q/DQ inputs).
MAC_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")


@dataclass
class Lowering:
    """The graph being rewritten: its initializers, the new ones, fresh names."""

    proto: Any
    inits: dict[str, np.ndarray]
    int4: bool
    new_inits: list
    #: tensors consumed as the weight input (index 1) of a MatMul / Gemm / Conv.
    weight_inputs: set[str] = field(default_factory=set)
    counter: int = 0

    def name(self, base: str) -> str:
        """A fresh tensor / node name."""
        self.counter += 1
        return f"{base}_qcdq{self.counter}"

    def add(self, base: str, value: np.ndarray, dtype: int | None = None) -> str:
        """A new initializer (float32, or of ONNX type ``dtype``); its name."""
        from onnx import helper, numpy_helper

        name = self.name(base)
        if dtype is None:
            self.new_inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        else:
            v = np.asarray(value)
            vals = v.reshape(-1).tolist()
            self.new_inits.append(helper.make_tensor(name, dtype, list(v.shape), vals))
        return name

    @staticmethod
    def where(n: Any) -> str:
        """The module path that wrote node ``n`` (else its name), for error messages."""
        for m in n.metadata_props:
            if m.key == PATH_KEY:
                return m.value
        return n.name

    @staticmethod
    def attr(n: Any, name: str, default: Any) -> Any:
        return attr(n, name, default)

    def const(self, n: Any, i: int, what: str) -> np.ndarray:
        """Input ``i`` of ``n`` as float32; ``ValueError`` unless it is a constant."""
        v = self.inits.get(n.input[i])
        if v is None:
            raise ValueError(f"{self.where(n)}: the {what} is not a constant; QCDQ needs constants")
        return np.asarray(v, np.float32)

    def rank(self, name: str) -> int | None:
        g = self.proto.graph
        for vi in (*g.value_info, *g.input, *g.output):
            if vi.name == name:
                return len(vi.type.tensor_type.shape.dim)
        v = self.inits.get(name)
        return None if v is None else v.ndim

    def shape(self, name: str, where: str) -> tuple[int, ...]:
        g = self.proto.graph
        for vi in (*g.value_info, *g.input, *g.output):
            if vi.name == name:
                return tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
        raise ValueError(f"{where}: unknown shape of {name}")

    @staticmethod
    def inherit(nodes: list, n: Any) -> list:
        """``nodes`` carrying ``n``'s metadata (module path, spec)."""
        for node in nodes:
            node.metadata_props.extend(n.metadata_props)
        return nodes


def layout(n: Any, s: np.ndarray, rank: int | None) -> tuple[np.ndarray, dict[str, int]]:
    """Scale as QuantizeLinear wants it: scalar, 1-D with ``axis``, or blocked."""
    if s.size == 1:
        return s.reshape(()), {}
    group = next((m.value for m in n.metadata_props if m.key == GROUP_KEY), None)
    rank = rank if rank is not None else s.ndim
    full_shape = (1,) * (rank - s.ndim) + s.shape
    s = s.reshape(full_shape)
    non1 = [i for i, d in enumerate(full_shape) if d > 1]
    if group is None and len(non1) == 1:
        return s.reshape(-1), {"axis": non1[0]}
    if group is not None:
        axis, size = (int(v) for v in group.split(","))
        return s, {"axis": axis % rank, "block_size": size}
    raise ValueError(
        f"{Lowering.where(n)}: scale of shape {s.shape} is neither per-tensor, "
        "per-channel nor per-group; QCDQ cannot express it"
    )


def block_scale(s: np.ndarray, shape: tuple[int, ...], axis: int, size: int) -> np.ndarray:
    """Blocked quantization wants the scale with the tensor's shape, axis / size."""
    full = np.broadcast_to(s, shape)
    return np.ascontiguousarray(np.take(full, np.arange(0, shape[axis], size), axis=axis))


def qparams(
    n: Any, ctx: Lowering, s: np.ndarray, z: np.ndarray, x: str
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Scale and zero point in QuantizeLinear's layout, and its attributes."""
    rank = ctx.rank(x)
    s_q, attrs = layout(n, s, rank)
    if z.size == 1 and "block_size" not in attrs:
        return s_q, z.reshape(()), attrs
    z_q, _ = layout(n, np.broadcast_to(z, s.shape), rank)
    if "block_size" in attrs:
        shape = ctx.inits[x].shape if x in ctx.inits else ctx.shape(x, ctx.where(n))
        axis, size = attrs["axis"], attrs["block_size"]
        s_q, z_q = (block_scale(a, shape, axis, size) for a in (s_q, z_q))
    return s_q, z_q, attrs
