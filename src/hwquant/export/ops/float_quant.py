"""``FloatQuant(X, scale, exponent_bitwidth, mantissa_bitwidth, exponent_bias, max_val)``:
minifloat quantization (REFERENCE.md §4), attributes has_inf, has_nan,
has_subnormal, saturation, rounding_mode (all written: the installed qonnx
requires them).

y = s·R_grid(x/s): the nearest value of the E/M grid (binade step 2^(e−M), e ≥ 1 −
bias where subnormals exist), saturated to ±max_val. Its output step depends on
the value: s·2^(max(e, 1 − bias) − M). Written for ``MinifloatFormat`` quantizers.

QCDQ form: an ONNX FP8 type (E4M3FN, E4M3FNUZ, E5M2, E5M2FNUZ, with subnormals) →
QuantizeLinear → DequantizeLinear with a float8 zero point, ``saturate=1``; a
``Relu`` / ``Clip`` in front becomes ``Max`` / ``Min`` (:meth:`finish_lowering`,
see :mod:`hwquant.export.qcdq`).

>>> import numpy as np
>>> from onnx import helper
>>> node = helper.make_node("FloatQuant", list("xsembv"), ["y"], saturation=1)
>>> FLOAT_QUANT.evaluate(node, [np.array([0.3, 1000.0]), 1.0, 4.0, 3.0, 7.0, 480.0]).tolist()
[0.3125, 480.0]
"""

from __future__ import annotations

import functools
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
    meta,
    register,
    scalar,
    symbolic,
)
from hwquant.export.ops.lowering import Lowering, layout
from hwquant.spec.formats import ONNX_FLOAT8, Format, MinifloatFormat

__all__ = ["FLOAT_QUANT", "FloatQuantOp"]


@functools.cache
def _fp8_types() -> dict[tuple, tuple[str, int]]:
    """(exponent bits, mantissa bits, bias, max, has_inf) of a FloatQuant node → the ONNX
    float8 type (name, TensorProto code), from the one table in spec.formats."""
    from onnx import TensorProto

    return {
        (f.exponent_bits, f.mantissa_bits, f.bias, f.max_value, int(f.has_inf)): (
            name,
            getattr(TensorProto, name),
        )
        for f, name in ONNX_FLOAT8.items()
    }


class FloatQuantOp(OnnxOp):
    """The ``FloatQuant`` op (module docstring)."""

    op_type = "FloatQuant"
    formats = (MinifloatFormat,)
    quantizes_weights = True
    hls4ml_reject_type = "hls4ml does not take FloatQuant"

    # ------------------------------------------------------------ emission
    def emit(self, x: Tensor, p: QuantParams) -> Tensor:
        """Write ``FloatQuant(x, s, E, M, bias, max)`` with all five attributes."""
        fmt: MinifloatFormat = p.spec.format  # type: ignore[assignment]
        attrs = {
            "has_inf": int(fmt.has_inf),
            "has_nan": int(fmt.has_nan),
            "has_subnormal": int(fmt.has_subnormal),
            "saturation": int(fmt.saturating),
            "rounding_mode": QONNX_NAMES[p.spec.rounding],
        }
        inputs = (
            x,
            p.scale,
            scalar(fmt.exponent_bits),
            scalar(fmt.mantissa_bits),
            scalar(fmt.bias),
            scalar(fmt.max_value),
        )
        return symbolic("FloatQuant", inputs, attrs, x, meta(p))

    # ------------------------------------------------------------ read-back
    def evaluate(self, node: Any, inputs: Sequence[np.ndarray]) -> np.ndarray:
        x, s, _, m, b, mx = (np.asarray(v, np.float64) for v in inputs[:6])
        mode = str(attr(node, "rounding_mode", "ROUND")).upper()
        if mode not in ("ROUND", "HALF_EVEN"):
            raise NotImplementedError(f"FloatQuant rounding {mode} is not evaluated")
        v = x / s
        e_min = 1 - b if attr(node, "has_subnormal", 1) else -np.inf
        e = np.floor(np.log2(np.maximum(np.abs(v), np.finfo(np.float64).tiny)))
        step = 2.0 ** (np.maximum(e, e_min) - m)
        q = np.round(v / step) * step
        if not attr(node, "has_subnormal", 1):
            q = np.where(np.abs(v) < 2.0 ** (1 - b), 0.0, q)  # flushed to zero
        if attr(node, "saturation", 1):
            q = np.clip(q, -mx, mx)
        else:
            big = np.inf if attr(node, "has_inf", 0) else np.nan
            q = np.where(np.abs(q) > mx, np.sign(q) * big, q)
        return (q * s).astype(np.asarray(inputs[0]).dtype)

    def step(self, node: Any, graph: GraphView) -> Step | None:
        s, m, b = (graph.const(node.input[i]) for i in (1, 3, 4))
        return None if s is None else Step(s, int(m), int(1 - b))

    def read_format(self, node: Any, graph: GraphView) -> Format | None:
        e = int(graph.const(node.input[2]).item())
        m = int(graph.const(node.input[3]).item())
        bias = graph.const(node.input[4]) if len(node.input) > 4 else None
        return MinifloatFormat(
            e,
            m,
            bias=int(bias.item()) if bias is not None else None,
            has_subnormal=bool(graph.attr(node, "has_subnormal", 1)),
            has_inf=bool(graph.attr(node, "has_inf", 0)),
            has_nan=bool(graph.attr(node, "has_nan", 0)),
            saturating=bool(graph.attr(node, "saturation", 1)),
        )

    def qonnx_caveat(self, node: Any) -> str | None:
        if attr(node, "has_subnormal", 1):
            return None
        return "qonnx's executor ignores has_subnormal=0 (it rounds to subnormals torch flushes)"

    # ------------------------------------------------------------ QCDQ form
    def lower(self, node: Any, ctx: Lowering) -> list:
        from onnx import helper

        n, where = node, ctx.where(node)
        s = ctx.const(n, 1, "scale")
        e, m, b, mx = (
            float(ctx.const(n, i, w))
            for i, w in ((2, "exponent width"), (3, "mantissa width"), (4, "bias"), (5, "max"))
        )
        has_inf, has_sub = int(ctx.attr(n, "has_inf", 0)), int(ctx.attr(n, "has_subnormal", 1))
        key = (int(e), int(m), int(b), mx, has_inf)
        if key not in _fp8_types() or not has_sub:
            raise ValueError(
                f"{where}: QCDQ expresses only the ONNX FP8 types (E4M3FN, E4M3FNUZ, E5M2, "
                f"E5M2FNUZ, with subnormals); this quantizer is E{int(e)}M{int(m)} bias "
                f"{int(b)} max {mx:g}{'' if has_sub else ' without subnormals'}"
            )
        if str(ctx.attr(n, "rounding_mode", "ROUND")).upper() not in ("ROUND", "HALF_EVEN"):
            raise ValueError(f"{where}: QCDQ rounds half to even only")
        _, dtype = _fp8_types()[key]
        s_q, attrs = layout(n, s, ctx.rank(n.input[0]))
        if "block_size" in attrs:
            raise ValueError(f"{where}: per-group FP8 scales are not supported in QCDQ")
        scale = ctx.add(f"{n.name}_scale", s_q)
        zp = ctx.add(f"{n.name}_zp", np.zeros(s_q.shape, np.float32), dtype)
        q = ctx.name(f"{n.name}_q")
        nodes = [
            helper.make_node(
                "QuantizeLinear",
                [n.input[0], scale, zp],
                [q],
                name=ctx.name(n.name),
                saturate=1,
                **attrs,
            ),
            helper.make_node(
                "DequantizeLinear", [q, scale, zp], [n.output[0]], name=ctx.name(n.name), **attrs
            ),
        ]
        return ctx.inherit(nodes, n)

    def finish_lowering(self, nodes: list, ctx: Lowering) -> list:
        """Relu / Clip feeding a float8 QuantizeLinear → Max / Min: onnxruntime's
        optimizer drops a Relu before a QuantizeLinear as if the zero point were the
        container's minimum (wrong for float8) and fails to load a Clip before a
        float8 QuantizeLinear."""
        from onnx import helper

        fp8 = {
            t.name for t in ctx.new_inits if t.data_type in {d for _, d in _fp8_types().values()}
        }
        guarded = {n.input[0] for n in nodes if n.op_type == "QuantizeLinear" and n.input[2] in fp8}
        out = []
        for n in nodes:
            if n.op_type not in ("Relu", "Clip") or n.output[0] not in guarded:
                out.append(n)
                continue
            bounds = (
                [ctx.add(f"{n.name}_zero", np.float32(0.0))]
                if n.op_type == "Relu"
                else list(n.input[1:3])
            )
            x, ops = n.input[0], ("Max", "Min")
            for i, b in enumerate(bounds):
                if not b:  # Clip without that bound
                    continue
                last = i == len(bounds) - 1 or not bounds[i + 1]
                y = n.output[0] if last else ctx.name(f"{n.name}_max")
                out.append(helper.make_node(ops[i], [x, b], [y], name=ctx.name(n.name)))
                out[-1].metadata_props.extend(n.metadata_props)
                x = y
            if x == n.input[0]:  # a Clip without bounds
                out.append(helper.make_node("Identity", [x], [n.output[0]], name=ctx.name(n.name)))
        return out


FLOAT_QUANT = register(FloatQuantOp())
