"""``Trunc`` (v2): inputs X, scale, zeropt, in_bitwidth, out_scale, out_bitwidth;
attributes signed, narrow, rounding_mode (REFERENCE.md §4). Needs opset 2 of the
qonnx domain.

y = clip(R(round(x/s + z) / 2^t), q_min, q_max)·s_out with 2^t = s_out / s (z = 0
here): the integer codes at scale s lose their t lowest bits. Written by integer
average pooling (:class:`hwquant.nn.pool.QuantAvgPool2d`, through
:mod:`hwquant.export.emit`): the sum of k² codes at scale s/k², t = ⌈log2 k²⌉,
``FLOOR``. Its output step is s_out.

QCDQ form: Div(s) → Round → Div(2^t) → Floor / Ceil / Round → Clip → Mul(s_out),
the same arithmetic in standard ops.

>>> import numpy as np
>>> from onnx import helper
>>> node = helper.make_node("Trunc", list("xsziob"), ["y"], signed=1, narrow=0,
...                         rounding_mode="FLOOR")
>>> TRUNC.evaluate(node, [np.array([7.0, -3.0]), 1.0, 0.0, 8.0, 4.0, 4.0]).tolist()
[4.0, -4.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from hwquant.export.ops.base import (
    GraphView,
    OnnxOp,
    Step,
    attr,
    int_range,
    read_int_format,
    register,
    scalar,
    symbolic,
)
from hwquant.export.ops.lowering import Lowering
from hwquant.export.ops.quant import ROUNDING
from hwquant.spec.formats import Format

__all__ = ["TRUNC", "TruncOp"]

#: rounding_mode → the standard ONNX op of the QCDQ form.
_ROUND_OPS = {"FLOOR": "Floor", "CEIL": "Ceil", "ROUND": "Round", "HALF_EVEN": "Round"}


class TruncOp(OnnxOp):
    """The ``Trunc`` op (module docstring)."""

    op_type = "Trunc"
    hls4ml_reject_type = "hls4ml does not take Trunc"

    # ------------------------------------------------------------ emission
    def emit(
        self,
        x: Tensor,
        scale: Tensor,
        in_bits: Tensor,
        out_scale: Tensor,
        out_bits: int,
        signed: bool,
        narrow: bool,
        meta: dict[str, str],
    ) -> Tensor:
        """Write ``Trunc(x, s, 0, in_bits, s_out, out_bits)``, FLOOR rounding."""
        attrs = {"signed": int(signed), "narrow": int(narrow), "rounding_mode": "FLOOR"}
        inputs = (x, scale, scalar(0.0), in_bits, out_scale, scalar(out_bits))
        return symbolic("Trunc", inputs, attrs, x, meta)

    # ------------------------------------------------------------ read-back
    def evaluate(self, node: Any, inputs: Sequence[np.ndarray]) -> np.ndarray:
        x, s, z, _, s_out, b = (np.asarray(v) for v in inputs[:6])
        if np.any(z != 0):
            raise NotImplementedError("Trunc with a zero point is not evaluated")
        lo, hi = int_range(int(b), bool(attr(node, "signed", 1)), bool(attr(node, "narrow", 0)))
        rnd = ROUNDING[str(attr(node, "rounding_mode", "FLOOR")).upper()]
        shift = 2.0 ** np.round(np.log2(s_out / s))
        return (np.clip(rnd(np.round(x / s) / shift), lo, hi) * s_out).astype(x.dtype)

    def step(self, node: Any, graph: GraphView) -> Step | None:
        s = graph.const(node.input[4])
        return None if s is None else Step(s)

    def read_format(self, node: Any, graph: GraphView) -> Format | None:
        return read_int_format(node, graph, 5)

    # ------------------------------------------------------------ QCDQ form
    def lower(self, node: Any, ctx: Lowering) -> list:
        """y = clip(R(round(x/s + z) / 2^t), q_min, q_max) · s_out (qonnx Trunc v2, z = 0)."""
        from onnx import helper

        n, where = node, ctx.where(node)
        s, z, out_s, out_b = (
            ctx.const(n, i, w)
            for i, w in (
                (1, "scale"),
                (2, "zero point"),
                (4, "output scale"),
                (5, "output bit width"),
            )
        )
        if np.any(z != 0):
            raise ValueError(f"{where}: Trunc with a zero point is not supported in QCDQ")
        mode = str(ctx.attr(n, "rounding_mode", "FLOOR")).upper()
        if mode not in _ROUND_OPS:
            raise ValueError(f"{where}: Trunc rounding {mode} has no standard ONNX op")
        signed, narrow = bool(ctx.attr(n, "signed", 1)), bool(ctx.attr(n, "narrow", 0))
        q_min, q_max = int_range(int(out_b), signed, narrow)
        shift = np.float32(2.0 ** np.round(np.log2(out_s / s)))
        names = [ctx.name(f"{n.name}_{k}") for k in ("codes", "round", "shifted", "floor", "clip")]
        c = {
            k: ctx.add(f"{n.name}_{k}", v)
            for k, v in (
                ("s", s),
                ("shift", shift),
                ("lo", np.float32(q_min)),
                ("hi", np.float32(q_max)),
                ("out_s", out_s),
            )
        }
        nodes = [
            helper.make_node("Div", [n.input[0], c["s"]], [names[0]]),
            helper.make_node("Round", [names[0]], [names[1]]),
            helper.make_node("Div", [names[1], c["shift"]], [names[2]]),
            helper.make_node(_ROUND_OPS[mode], [names[2]], [names[3]]),
            helper.make_node("Clip", [names[3], c["lo"], c["hi"]], [names[4]]),
            helper.make_node("Mul", [names[4], c["out_s"]], [n.output[0]]),
        ]
        for node_ in nodes:
            node_.name = ctx.name(n.name)
        return ctx.inherit(nodes, n)


TRUNC = register(TruncOp())
