"""QCDQ export: QuantizeLinear → Clip → DequantizeLinear, standard ONNX (opset 21)
that onnxruntime runs.

The model is exported to QONNX first (:func:`hwquant.export.qonnx.qonnx_proto`),
then each QONNX node is lowered:

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
  (+128) on x86 before the same kernels. 16-bit full
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
  integer kernel and round it onto s_x·s_w (:func:`_split_float_biases`).
- ``Trunc`` (average pooling) → Div → Round → Div(2^t) → Floor → Clip → Mul, the
  same arithmetic in standard ops.

What QCDQ cannot express raises ``ValueError`` naming the module path:
bipolar / 1-bit quantizers, minifloats other than FP8, 9–15-bit activations,
rounding other than half-to-even (QuantizeLinear's only mode); power-of-two /
APoT / MSQ codes fail already in the QONNX step.

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

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from hwquant.export.emit import GROUP_KEY, PATH_KEY, QONNX_DOMAIN
from hwquant.export.qonnx import Inputs, qonnx_proto, write_atomic
from hwquant.spec.formats import ONNX_FLOAT8
from hwquant.spec.layer_spec import Recipe

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["QCDQ_OPSET", "qcdq_proto", "qonnx_to_qcdq", "to_qcdq"]

#: native int4 / uint4 / int16 Q/DQ need opset 21.
QCDQ_OPSET = 21


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


def to_qcdq(
    model: nn.Module,
    example_input: Inputs,
    path: str | os.PathLike,
    dynamic_batch: bool = False,
    *,
    recipe: Recipe | None = None,
    int4: bool = False,
) -> Path:
    """Export ``model`` as a QCDQ graph (standard ONNX, opset 21) to ``path``.

    Same arguments as :func:`hwquant.export.to_qonnx`; ``int4`` uses onnxruntime's
    native int4 / uint4 containers for full-range 4-bit quantizers. Raises
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
    return write_atomic(
        qcdq_proto(model, example_input, dynamic_batch, recipe=recipe, int4=int4), path
    )


def qcdq_proto(
    model: nn.Module,
    example_input: Inputs,
    dynamic_batch: bool = False,
    *,
    recipe: Recipe | None = None,
    int4: bool = False,
) -> onnx.ModelProto:
    """The QCDQ ``ModelProto`` that :func:`to_qcdq` writes (in memory)."""
    return qonnx_to_qcdq(qonnx_proto(model, example_input, dynamic_batch, recipe=recipe), int4=int4)


# ---------------------------------------------------------------- the rewrite
@dataclass
class _Ctx:
    proto: Any
    inits: dict[str, np.ndarray]
    int4: bool
    new_inits: list
    #: tensors consumed as the weight input (index 1) of a MatMul / Gemm / Conv.
    weight_inputs: set[str] = field(default_factory=set)
    counter: int = 0

    def name(self, base: str) -> str:
        self.counter += 1
        return f"{base}_qcdq{self.counter}"

    def add(self, base: str, value: np.ndarray, dtype: int | None = None) -> str:
        from onnx import helper, numpy_helper

        name = self.name(base)
        if dtype is None:
            self.new_inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        else:
            v = np.asarray(value)
            vals = v.reshape(-1).tolist()
            self.new_inits.append(helper.make_tensor(name, dtype, list(v.shape), vals))
        return name


def qonnx_to_qcdq(proto: onnx.ModelProto, *, int4: bool = False) -> onnx.ModelProto:
    """Lower the QONNX nodes of ``proto`` to QCDQ / standard ops (module docstring)."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    ctx = _Ctx(out, {t.name: numpy_helper.to_array(t) for t in g.initializer}, int4, [])
    ctx.weight_inputs = {n.input[1] for n in g.node if n.op_type in _MAC_OPS and len(n.input) > 1}
    nodes = []
    for n in g.node:
        if n.domain == QONNX_DOMAIN or n.op_type in (
            "Quant",
            "BipolarQuant",
            "FloatQuant",
            "Trunc",
        ):
            nodes.extend(_LOWER.get(n.op_type, _unsupported)(n, ctx))
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(_split_float_biases(_guard_fp8_clamps(nodes, ctx), ctx))
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


def _where(n: Any) -> str:
    for m in n.metadata_props:
        if m.key == PATH_KEY:
            return m.value
    return n.name


def _attr(n: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in n.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _unsupported(n: Any, ctx: _Ctx) -> list:
    if n.op_type == "BipolarQuant":
        raise ValueError(
            f"{_where(n)}: QCDQ cannot express bipolar (1-bit) quantizers; use to_qonnx"
        )
    raise ValueError(f"{_where(n)}: QCDQ cannot express the QONNX op {n.op_type}")


def _const(ctx: _Ctx, n: Any, i: int, what: str) -> np.ndarray:
    v = ctx.inits.get(n.input[i])
    if v is None:
        raise ValueError(f"{_where(n)}: the {what} is not a constant; QCDQ needs constants")
    return np.asarray(v, np.float32)


def _layout(n: Any, s: np.ndarray, rank: int | None) -> tuple[np.ndarray, dict[str, int]]:
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
        f"{_where(n)}: scale of shape {s.shape} is neither per-tensor, "
        "per-channel nor per-group; QCDQ cannot express it"
    )


def _rank(ctx: _Ctx, name: str) -> int | None:
    g = ctx.proto.graph
    for vi in (*g.value_info, *g.input, *g.output):
        if vi.name == name:
            return len(vi.type.tensor_type.shape.dim)
    v = ctx.inits.get(name)
    return None if v is None else v.ndim


def _block_scale(s: np.ndarray, shape: tuple[int, ...], axis: int, size: int) -> np.ndarray:
    """Blocked quantization wants the scale with the tensor's shape, axis / size."""
    full = np.broadcast_to(s, shape)
    return np.ascontiguousarray(np.take(full, np.arange(0, shape[axis], size), axis=axis))


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


def _qparams(
    n: Any, ctx: _Ctx, s: np.ndarray, z: np.ndarray, x: str
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Scale and zero point in QuantizeLinear's layout, and its attributes."""
    rank = _rank(ctx, x)
    s_q, attrs = _layout(n, s, rank)
    if z.size == 1 and "block_size" not in attrs:
        return s_q, z.reshape(()), attrs
    z_q, _ = _layout(n, np.broadcast_to(z, s.shape), rank)
    if "block_size" in attrs:
        shape = ctx.inits[x].shape if x in ctx.inits else _shape(ctx, x, _where(n))
        axis, size = attrs["axis"], attrs["block_size"]
        s_q, z_q = (_block_scale(a, shape, axis, size) for a in (s_q, z_q))
    return s_q, z_q, attrs


_MAC_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")


def _saturates_u8s8(n: Any, ctx: _Ctx, bits: int, signed: bool, dtype: int) -> bool:
    """A signed 8-bit quantizer of a weight (constant or MAC weight input): its int8
    codes reach ±128, where onnxruntime's u8×s8 kernels saturate (module docstring)."""
    from onnx import TensorProto as T

    is_weight = n.input[0] in ctx.inits or n.output[0] in ctx.weight_inputs
    return dtype == T.INT8 and signed and bits == 8 and is_weight


def _lower_quant(n: Any, ctx: _Ctx) -> list:
    from onnx import TensorProto as T
    from onnx import helper

    where = _where(n)
    s, z, b = (_const(ctx, n, i, w) for i, w in ((1, "scale"), (2, "zero point"), (3, "bit width")))
    bits, signed, narrow = int(b), bool(_attr(n, "signed", 1)), bool(_attr(n, "narrow", 0))
    mode = str(_attr(n, "rounding_mode", "ROUND")).upper()
    if bits == 1:
        raise ValueError(f"{where}: QCDQ cannot express 1-bit quantizers; use to_qonnx")
    if mode not in ("ROUND", "HALF_EVEN"):
        raise ValueError(f"{where}: QCDQ rounds half to even; this quantizer rounds {mode}")
    if np.any(z != np.round(z)):
        raise ValueError(f"{where}: QCDQ needs integer zero points")
    q_min = -(2 ** (bits - 1)) + int(narrow) if signed else 0
    q_max = 2 ** (bits - 1) - 1 if signed else 2**bits - 1 - int(narrow)
    x = n.input[0]
    s_q, z_q, attrs = _qparams(n, ctx, s, z, x)
    cont = _container(bits, signed, narrow, ctx.int4)
    if cont is None:
        if x in ctx.inits:
            return _codes_dq(n, ctx, s, z, q_min, q_max, s_q, z_q, attrs)
        raise ValueError(
            f"{where}: QCDQ cannot express {bits}-bit activations (int8/uint8 hold 2–8 bits, "
            "int16/uint16 only full-range 16 bits: onnxruntime has no int16 Clip kernel)"
        )
    dtype, clip = cont
    if _saturates_u8s8(n, ctx, bits, signed, dtype):
        # same values in a uint8 container: codes and zero point + 128 (module docstring)
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
        helper.make_node("DequantizeLinear", [q, scale, zp], [y], name=ctx.name(n.name), **attrs)
    )
    for node in nodes:
        node.metadata_props.extend(n.metadata_props)
    return nodes


def _shape(ctx: _Ctx, name: str, where: str) -> tuple[int, ...]:
    g = ctx.proto.graph
    for vi in (*g.value_info, *g.input, *g.output):
        if vi.name == name:
            return tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
    raise ValueError(f"{where}: unknown shape of {name}")


def _codes_dq(
    n: Any,
    ctx: _Ctx,
    s: np.ndarray,
    z: np.ndarray,
    q_min: int,
    q_max: int,
    s_q: np.ndarray,
    z_q: np.ndarray,
    attrs: dict,
) -> list:
    """A constant too wide for a Q container: its int32 codes → DequantizeLinear (the
    codes computed as qonnx's Quant does: round(clamp(x/s + z)), half to even)."""
    from onnx import TensorProto as T
    from onnx import helper

    x = ctx.inits[n.input[0]].astype(np.float32)
    codes = np.round(np.clip(x / s + z, q_min, q_max)).astype(np.int64)
    src = ctx.add(f"{n.name}_codes", codes, T.INT32)
    scale = ctx.add(f"{n.name}_scale", s_q)
    zp = ctx.add(f"{n.name}_zp", np.broadcast_to(z_q, s_q.shape).astype(np.int64), T.INT32)
    node = helper.make_node(
        "DequantizeLinear", [src, scale, zp], [n.output[0]], name=ctx.name(n.name), **attrs
    )
    node.metadata_props.extend(n.metadata_props)
    return [node]


def _lower_float(n: Any, ctx: _Ctx) -> list:
    from onnx import helper

    where = _where(n)
    s = _const(ctx, n, 1, "scale")
    e, m, b, mx = (
        float(_const(ctx, n, i, w))
        for i, w in ((2, "exponent width"), (3, "mantissa width"), (4, "bias"), (5, "max"))
    )
    has_inf, has_sub = int(_attr(n, "has_inf", 0)), int(_attr(n, "has_subnormal", 1))
    key = (int(e), int(m), int(b), mx, has_inf)
    if key not in _fp8_types() or not has_sub:
        raise ValueError(
            f"{where}: QCDQ expresses only the ONNX FP8 types (E4M3FN, E4M3FNUZ, E5M2, "
            f"E5M2FNUZ, with subnormals); this quantizer is E{int(e)}M{int(m)} bias {int(b)} "
            f"max {mx:g}{'' if has_sub else ' without subnormals'}"
        )
    if str(_attr(n, "rounding_mode", "ROUND")).upper() not in ("ROUND", "HALF_EVEN"):
        raise ValueError(f"{where}: QCDQ rounds half to even only")
    _, dtype = _fp8_types()[key]
    s_q, attrs = _layout(n, s, _rank(ctx, n.input[0]))
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
    for node in nodes:
        node.metadata_props.extend(n.metadata_props)
    return nodes


def _guard_fp8_clamps(nodes: list, ctx: _Ctx) -> list:
    """Relu / Clip feeding a float8 QuantizeLinear → Max / Min (module docstring)."""
    from onnx import helper

    fp8 = {t.name for t in ctx.new_inits if t.data_type in {d for _, d in _fp8_types().values()}}
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


def _split_float_biases(nodes: list, ctx: _Ctx) -> list:
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


def _weight_rank(tensor: str, producer: dict, ctx: _Ctx) -> int:
    """Rank of a weight: follow its Q / Clip / DQ chain back to the initializer."""
    while tensor not in ctx.inits:
        tensor = producer[tensor].input[0]
    return ctx.inits[tensor].ndim


_ROUND_OPS = {"FLOOR": "Floor", "CEIL": "Ceil", "ROUND": "Round", "HALF_EVEN": "Round"}


def _lower_trunc(n: Any, ctx: _Ctx) -> list:
    """y = clip(R(round(x/s + z) / 2^t), q_min, q_max) · s_out (qonnx Trunc v2, z = 0)."""
    from onnx import helper

    where = _where(n)
    s, z, out_s, out_b = (
        _const(ctx, n, i, w)
        for i, w in ((1, "scale"), (2, "zero point"), (4, "output scale"), (5, "output bit width"))
    )
    if np.any(z != 0):
        raise ValueError(f"{where}: Trunc with a zero point is not supported in QCDQ")
    mode = str(_attr(n, "rounding_mode", "FLOOR")).upper()
    if mode not in _ROUND_OPS:
        raise ValueError(f"{where}: Trunc rounding {mode} has no standard ONNX op")
    signed, narrow, bits = bool(_attr(n, "signed", 1)), bool(_attr(n, "narrow", 0)), int(out_b)
    q_min = -(2 ** (bits - 1)) + int(narrow) if signed else 0
    q_max = 2 ** (bits - 1) - 1 if signed else 2**bits - 1 - int(narrow)
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
    for node in nodes:
        node.name = ctx.name(n.name)
        node.metadata_props.extend(n.metadata_props)
    return nodes


_LOWER = {"Quant": _lower_quant, "FloatQuant": _lower_float, "Trunc": _lower_trunc}


def _drop_unused_initializers(proto: onnx.ModelProto) -> None:
    used = {i for n in proto.graph.node for i in n.input}
    keep = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
