"""``Quant(X, scale, zeropt, bitwidth)``: integer quantization (REFERENCE.md §4).

y = (R(clamp(x/s + z, q_min, q_max)) − z)·s, R the ``rounding_mode``; signed:
[−2^(b−1) + narrow, 2^(b−1) − 1], unsigned: [0, 2^b − 1 − narrow]. The same
formula as :func:`hwquant.core.grid.fake_quantize`. ``IntQuant`` is another name
of the same op. Written for ``IntFormat`` / ``TernaryFormat`` quantizers.

QCDQ form: 2–8 bits → QuantizeLinear → Clip(q_min, q_max) → DequantizeLinear in an
int8 / uint8 container (Clip left out when the range is the container's); a
signed 8-bit weight in uint8 with zero point + 128 (onnxruntime's u8×s8 kernels
saturate, :mod:`hwquant.export.qcdq`); full-range 16 bits → int16 / uint16 Q → DQ;
with ``int4`` full-range 4 bits → int4 / uint4; a constant no container holds →
its int32 codes → DequantizeLinear.

>>> import numpy as np
>>> from onnx import helper
>>> node = helper.make_node("Quant", ["x", "s", "z", "b"], ["y"], signed=1, narrow=0,
...                         rounding_mode="ROUND")
>>> QUANT.evaluate(node, [np.array([0.3, 9.0, -9.0]), 0.5, 0.0, 4.0]).tolist()
[0.5, 3.5, -4.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from hwquant.core.rounding import QONNX_NAMES
from hwquant.export.ops.base import (
    GraphView,
    OnnxOp,
    QuantParams,
    Step,
    attr,
    int_range,
    meta,
    read_int_format,
    register,
    scalar,
    symbolic,
)
from hwquant.export.ops.lowering import Lowering, qparams
from hwquant.spec.formats import Format, IntFormat, TernaryFormat

__all__ = ["QUANT", "ROUNDING", "QuantOp"]

#: QONNX ``rounding_mode`` → NumPy rounding of an array.
ROUNDING = {
    "ROUND": np.round,
    "HALF_EVEN": np.round,
    "FLOOR": np.floor,
    "CEIL": np.ceil,
    "DOWN": np.trunc,
    "UP": lambda v: np.sign(v) * np.ceil(np.abs(v)),
    "HALF_UP": lambda v: np.sign(v) * np.floor(np.abs(v) + 0.5),
    "HALF_DOWN": lambda v: np.sign(v) * np.ceil(np.abs(v) - 0.5),
}


class QuantOp(OnnxOp):
    """The ``Quant`` op (module docstring)."""

    op_type = "Quant"
    aliases = ("IntQuant",)
    formats = (IntFormat, TernaryFormat)
    quantizes_weights = True
    integer_codes = True

    # ------------------------------------------------------------ emission
    def emit(self, x: Tensor, p: QuantParams) -> Tensor:
        """Write ``Quant(x, s, z, bits)`` with signed / narrow / rounding_mode."""
        fmt = p.spec.format
        z = p.zero_point if p.zero_point is not None else scalar(0.0)
        attrs = {
            "signed": int(fmt.signed),
            "narrow": int(fmt.narrow),
            "rounding_mode": QONNX_NAMES[p.spec.rounding],
        }
        return symbolic("Quant", (x, p.scale, z, scalar(fmt.bits)), attrs, x, meta(p))

    # ------------------------------------------------------------ read-back
    def evaluate(self, node: Any, inputs: Sequence[np.ndarray]) -> np.ndarray:
        x, s, z, b = (np.asarray(v) for v in inputs[:4])
        bits, signed = int(b), bool(attr(node, "signed", 1))
        if bits == 1 and signed:  # executes as bipolar ±1 (REFERENCE.md §4)
            return np.where(x >= 0, 1.0, -1.0).astype(x.dtype) * s
        lo, hi = int_range(bits, signed, bool(attr(node, "narrow", 0)))
        rnd = ROUNDING[str(attr(node, "rounding_mode", "ROUND")).upper()]
        return (rnd(np.clip(x / s + z, lo, hi)) - z) * s

    def step(self, node: Any, graph: GraphView) -> Step | None:
        s, bits = graph.const(node.input[1]), graph.const(node.input[3])
        if s is None or bits is None:
            return None
        signed = graph.attr(node, "signed", 1)
        return Step(s * 2 if int(bits) == 1 and signed else s)

    def read_format(self, node: Any, graph: GraphView) -> Format | None:
        return read_int_format(node, graph, 3)

    def weight_codes(self, node: Any, graph: GraphView, fmt: Format) -> np.ndarray | None:
        if not fmt.integer_codes:
            return None
        x = graph.const(node.input[0])
        s = graph.const(node.input[1])
        if s is None:
            raise ValueError(
                f"{node.op_type} node {node.name!r}: its scale {node.input[1]!r} is not a "
                "constant (no initializer of that name)"
            )
        z = graph.const(node.input[2]) if len(node.input) > 2 and node.input[2] else 0.0
        if z is None:
            raise ValueError(
                f"{node.op_type} node {node.name!r}: its zero point {node.input[2]!r} is not a "
                "constant (no initializer of that name)"
            )
        rnd = ROUNDING.get(graph.attr(node, "rounding_mode", "ROUND"), np.round)
        v = np.clip(x / s + z, fmt.min_int, fmt.max_int)
        return rnd(v) - z

    def hls4ml_rejects(self, node: Any, inits: dict[str, np.ndarray]) -> str | None:
        """hls4ml takes ROUND / FLOOR, zero point 0, per-tensor power-of-two scales."""
        mode = str(attr(node, "rounding_mode", "ROUND"))
        if mode.upper() not in ("ROUND", "FLOOR"):
            return f"hls4ml takes Quant rounding ROUND or FLOOR only, {node.name} uses {mode}"
        s, z = inits.get(node.input[1]), inits.get(node.input[2])
        if s is None or z is None:
            return f"{node.name}: scale / zero point are not constants"
        if s.size > 1 and not np.all(s == s.reshape(-1)[0]):
            return f"hls4ml cannot propagate per-channel scales ({node.name}, {s.size} scales)"
        mant, _ = np.frexp(float(s.reshape(-1)[0]))
        if mant != 0.5:
            return f"hls4ml needs power-of-two scales, {node.name} has {float(s.reshape(-1)[0])}"
        if np.any(z != 0):
            return f"hls4ml needs zero points of 0 ({node.name})"
        return None

    # ------------------------------------------------------------ QCDQ form
    def lower(self, node: Any, ctx: Lowering) -> list:
        from onnx import TensorProto as T
        from onnx import helper

        n, where = node, ctx.where(node)
        s, z, b = (
            ctx.const(n, i, w) for i, w in ((1, "scale"), (2, "zero point"), (3, "bit width"))
        )
        bits, signed = int(b), bool(ctx.attr(n, "signed", 1))
        narrow = bool(ctx.attr(n, "narrow", 0))
        mode = str(ctx.attr(n, "rounding_mode", "ROUND")).upper()
        if bits == 1:
            raise ValueError(f"{where}: QCDQ cannot express 1-bit quantizers; use to_qonnx")
        if mode not in ("ROUND", "HALF_EVEN"):
            raise ValueError(f"{where}: QCDQ rounds half to even; this quantizer rounds {mode}")
        if np.any(z != np.round(z)):
            raise ValueError(f"{where}: QCDQ needs integer zero points")
        q_min, q_max = int_range(bits, signed, narrow)
        x = n.input[0]
        s_q, z_q, attrs = qparams(n, ctx, s, z, x)
        cont = _container(bits, signed, narrow, ctx.int4)
        if cont is None:
            if x in ctx.inits:
                return _codes_dq(n, ctx, s, z, (q_min, q_max), s_q, z_q, attrs)
            raise ValueError(
                f"{where}: QCDQ cannot express {bits}-bit activations (int8/uint8 hold 2–8 "
                "bits, int16/uint16 only full-range 16 bits: onnxruntime has no int16 Clip kernel)"
            )
        dtype, clip = cont
        if _saturates_u8s8(n, ctx, bits, signed, dtype) or _signed_activation(n, ctx, dtype):
            # same values in a uint8 container: codes and zero point + 128 (qcdq docstring)
            dtype, z_q, q_min, q_max = T.UINT8, z_q + 128, q_min + 128, q_max + 128
            clip = (q_min, q_max) != (0, 255)
        scale = ctx.add(f"{n.name}_scale", s_q)
        zp = ctx.add(f"{n.name}_zp", np.broadcast_to(z_q, s_q.shape).astype(np.int64), dtype)
        q, y = ctx.name(f"{n.name}_q"), n.output[0]
        nodes = [
            helper.make_node("QuantizeLinear", [x, scale, zp], [q], name=ctx.name(n.name), **attrs)
        ]
        if clip:
            lo, hi = (
                ctx.add(f"{n.name}_min", np.int64(q_min), dtype),
                ctx.add(f"{n.name}_max", np.int64(q_max), dtype),
            )
            c = ctx.name(f"{n.name}_clip")
            nodes.append(helper.make_node("Clip", [q, lo, hi], [c], name=ctx.name(n.name)))
            q = c
        nodes.append(
            helper.make_node(
                "DequantizeLinear", [q, scale, zp], [y], name=ctx.name(n.name), **attrs
            )
        )
        return ctx.inherit(nodes, n)


def _container(bits: int, signed: bool, narrow: bool, int4: bool) -> tuple[int, bool] | None:
    """(ONNX integer type, needs Clip) holding ``bits``, or None."""
    from onnx import TensorProto as T

    if int4 and bits == 4 and not narrow:
        return (T.INT4 if signed else T.UINT4), False
    if 2 <= bits <= 8:
        full = bits == 8 and not narrow
        return (T.INT8 if signed else T.UINT8), not full
    if bits == 16 and not narrow:
        return (T.INT16 if signed else T.UINT16), False
    return None


def _saturates_u8s8(n: Any, ctx: Lowering, bits: int, signed: bool, dtype: int) -> bool:
    """A signed 8-bit quantizer of a weight (constant or MAC weight input): its int8
    codes reach ±128, where onnxruntime's u8×s8 kernels saturate (qcdq docstring)."""
    from onnx import TensorProto as T

    is_weight = n.input[0] in ctx.inits or n.output[0] in ctx.weight_inputs
    return dtype == T.INT8 and signed and bits == 8 and is_weight


def _signed_activation(n: Any, ctx: Lowering, dtype: int) -> bool:
    """A signed activation in int8 (not a constant, not a MAC's weight input):
    onnxruntime's extended optimizer breaks on int8 activations around MatMul and
    Slice (qcdq docstring); uint8 + 128 holds the same values."""
    from onnx import TensorProto as T

    weight = n.input[0] in ctx.inits or n.output[0] in ctx.weight_inputs
    return dtype == T.INT8 and not weight


def _codes_dq(
    n: Any,
    ctx: Lowering,
    s: np.ndarray,
    z: np.ndarray,
    q_range: tuple[int, int],
    s_q: np.ndarray,
    z_q: np.ndarray,
    attrs: dict,
) -> list:
    """A constant too wide for a Q container: its int32 codes → DequantizeLinear (the
    codes computed as qonnx's Quant does: round(clamp(x/s + z)), half to even)."""
    from onnx import TensorProto as T
    from onnx import helper

    x = ctx.inits[n.input[0]].astype(np.float32)
    codes = np.round(np.clip(x / s + z, *q_range)).astype(np.int64)
    src = ctx.add(f"{n.name}_codes", codes, T.INT32)
    scale = ctx.add(f"{n.name}_scale", s_q)
    zp = ctx.add(f"{n.name}_zp", np.broadcast_to(z_q, s_q.shape).astype(np.int64), T.INT32)
    node = helper.make_node(
        "DequantizeLinear", [src, scale, zp], [n.output[0]], name=ctx.name(n.name), **attrs
    )
    return ctx.inherit([node], n)


QUANT = register(QuantOp())
