"""Bit-exact integer execution of a quantized model with P-bit accumulators.

The model is traced with torch.fx (hwquant layers and quantizers stay leaves) and run
node by node on *integer tensors*: a value is a :class:`QTensor` (int64 codes and the
float scale of one code) wherever the arithmetic is integer, a float tensor elsewhere.

- A quantizer re-quantizes: c' = clamp(round(c·s / s'), q_min, q_max) — the scales
  are applied once per re-quantization (what a fixed-point multiplier or FINN's
  thresholds do in hardware), with the quantizer's own rounding.
- A ``QuantLinear`` / ``QuantConv1d`` / ``QuantConv2d`` (grouped and depthwise too)
  multiplies integer input codes by integer weight codes q = round(ŵ / s_w) in int64
  (convolutions via im2col) and sums them in a P-bit accumulator that wraps (two's
  complement) or saturates (:func:`hwquant.core.accumulator.accumulate`). Its result
  has scale s_in·s_w per output channel. A bias on the accumulator scale is an integer
  preloaded into the same P-bit register (acc = b + Σ x·q: the overflow counts and
  ``max_abs`` include it), unless the layer's A2Q spec declares
  ``bias_in_accumulator=False`` — then it is added exactly after the P-bit dot product
  (as FINN folds it into the thresholds). A float bias is added in float.
- ReLU, max pooling, flatten / reshape / pixel shuffle act on the codes; the
  sum-and-truncate average pooling of ``QuantAvgPool2d`` too; ``QuantAdd`` /
  ``QuantCat`` with a shared input scale add / concatenate codes.
- Anything else (float layers, sigmoid, minifloat quantizers, a weight layer whose
  input is float) runs in float on dequantized values and is listed in
  ``IntegerRun.float_ops``.

With wide accumulators the result equals the fake-quantized forward pass up to
float round-off at rounding ties (bit-exact in practice when the model runs in
float64; see the tests), and the overflow counts say where a P-bit accumulator
would have failed.

Example:
    >>> import torch, hwquant
    >>> from hwquant.models import MLP
    >>> from hwquant.spec import A2Q, A4U, IntFormat, Recipe, QuantSpec, ScaleSpec
    >>> a4 = QuantSpec(IntFormat(4), scale=ScaleSpec("percentile", learned=True))
    >>> w4 = A2Q(IntFormat(4, narrow=True), accumulator_bits=10)
    >>> m = hwquant.quantize(MLP((16, 32, 10)), Recipe.uniform(weights=w4, activations=a4))
    >>> x = torch.randn(64, 16)
    >>> y = m.eval()(x)
    >>> r = run_integer(m, x)                      # each A2Q layer at its own P = 10
    >>> r.overflows, r.layers["layers.0"].accumulator_bits
    (0, 10)
    >>> bool((r.outputs.argmax(1) == y.argmax(1)).all())
    True
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from hwquant.core.accumulator import ACCUMULATOR_MODES, accumulate
from hwquant.nn import codes as _codes
from hwquant.nn.a2q import A2QWeightQuantizer, accumulator_bias_codes
from hwquant.nn.codes import bias_in_accumulator
from hwquant.nn.conv import QuantConv1d, QuantConv2d
from hwquant.nn.embedding import QuantEmbedding
from hwquant.nn.kinds import kind_of
from hwquant.nn.layer import QuantLayer, QuantWeightLayer
from hwquant.nn.linear import QuantLinear
from hwquant.nn.merge import QuantAdd, QuantCat
from hwquant.nn.pool import QuantAvgPool2d
from hwquant.nn.quantizer import BiasQuantizer, Quantizer
from hwquant.nn.recurrent import QuantRecurrent, StepQuant

__all__ = [
    "IntegerRun",
    "LayerStats",
    "QTensor",
    "bias_in_accumulator",
    "integer_forward",
    "run_integer",
    "trace",
    "weight_codes",
]

Bits = int | Mapping[str, int] | None


@dataclass
class QTensor:
    """Integer codes (int64) and the scale of one code (float64, broadcastable):
    value = codes · scale."""

    codes: Tensor
    scale: Tensor

    def dequantize(self) -> Tensor:
        return self.codes.double() * self.scale

    def map_shape(self, fn: Callable[[Tensor], Any]) -> QTensor | Any:
        """Apply a shape op (flatten, reshape, pixel shuffle, ...) to codes and scale."""
        codes = fn(self.codes)
        if not isinstance(codes, Tensor):  # e.g. .size(), .dim()
            return codes
        if self.scale.numel() == 1:
            return QTensor(codes, self.scale)
        if self.scale.dim() == self.codes.dim() and self.scale.shape[0] == 1:
            # per-sample-constant scale: transform one sample's worth when the op allows
            try:
                one = fn(self.scale.expand(1, *self.codes.shape[1:]).contiguous())
                torch.broadcast_shapes(one.shape, codes.shape)
                return QTensor(codes, one)
            except (RuntimeError, ValueError):
                pass
        return QTensor(codes, fn(self.scale.expand(self.codes.shape).contiguous()))


@dataclass
class LayerStats:
    """One weight layer's accumulator over a run: how many dot products it computed,
    how many overflowed the P-bit accumulator, the largest |acc| (exact; acc = b + Σ x·q
    when the bias is in the accumulator, ``bias_in_accumulator``, else Σ x·q)."""

    name: str
    type: str
    accumulator_bits: int | None
    n_values: int = 0
    overflows: int = 0
    max_abs: int = 0
    bias_in_accumulator: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class IntegerRun:
    """Outputs (dequantized, float) and per-layer accumulator statistics."""

    outputs: Tensor
    mode: str
    layers: dict[str, LayerStats] = field(default_factory=dict)
    float_ops: list[str] = field(default_factory=list)

    @property
    def overflows(self) -> int:
        """Total overflowed dot products over all layers."""
        return sum(s.overflows for s in self.layers.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "overflows": self.overflows,
            "layers": [s.to_dict() for s in self.layers.values()],
            "float_ops": self.float_ops,
        }


# ---------------------------------------------------------------- tracing
class _Tracer(fx.Tracer):
    """hwquant layers, quantizers and merges are leaves (their forward is not traced)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        kind = kind_of(m)
        hwquant = kind is not None and isinstance(m, kind.quant_type)
        return (
            hwquant
            or isinstance(m, Quantizer | BiasQuantizer)
            or super().is_leaf_module(m, qualname)
        )


def trace(model: nn.Module) -> fx.GraphModule:
    """The model as a GraphModule whose hwquant modules are leaves (ValueError if the
    model does not trace with torch.fx)."""
    try:
        graph = _Tracer().trace(model)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"integer execution needs a torch.fx-traceable model: {msg}") from e
    return fx.GraphModule(model, graph)


# ---------------------------------------------------------------- weights
def weight_codes(layer: nn.Module) -> tuple[Tensor, Tensor] | None:
    """(q, s): int64 weight codes in the weight's layout and the per-output-channel
    scale [C] (float64), or None when the weights are not on a symmetric integer grid
    (float, minifloat, asymmetric) or have per-group scales
    (:func:`hwquant.nn.codes.weight_codes`)."""
    wq = getattr(layer, "weight_quant", None)
    kind = kind_of(layer)
    if not isinstance(wq, Quantizer) or wq.spec.granularity.grouped or kind is None:
        return None
    wc = _codes.weight_codes(layer)
    if wc is None:
        return None
    w = layer.weight
    n_out = w.shape[kind.out_axis]
    s = wc.scale.double().expand(w.shape).movedim(kind.out_axis, 0).reshape(n_out, -1)[:, 0]
    return wc.codes, s.contiguous()


# ---------------------------------------------------------------- the registry
#: (executor, module path, module, args, kwargs) -> the value, or NotImplemented to
#: run the module in float on dequantized values.
IntegerForward = Callable[["_Executor", str, nn.Module, tuple, dict], Any]
_FORWARDS: dict[type, IntegerForward] = {}
#: (module, codes, float type) -> codes, or None: what a float op does on integer codes.
CodeOp = Callable[[nn.Module, "QTensor", type], "QTensor | None"]
_CODE_OPS: dict[type, CodeOp] = {}


def integer_forward(*types: type) -> Callable[[IntegerForward], IntegerForward]:
    """Decorator: the integer forward of modules of ``types`` (and their subclasses, the
    nearest registered base winning)."""

    def add(fn: IntegerForward) -> IntegerForward:
        for t in types:
            _FORWARDS[t] = fn
        return fn

    return add


def code_op(*types: type) -> Callable[[CodeOp], CodeOp]:
    """Decorator: ``fn`` runs torch modules of ``types`` (and the float op of quantized
    layers whose float twin is one of them) directly on integer codes."""

    def add(fn: CodeOp) -> CodeOp:
        for t in types:
            _CODE_OPS[t] = fn
            _FORWARDS[t] = _torch_on_codes
        return fn

    return add


def _nearest(table: dict[type, Any], t: type) -> Any:
    for c in t.__mro__:
        if c in table:
            return table[c]
    return None


# ---------------------------------------------------------------- the executor
class _Executor:
    def __init__(self, model: nn.Module, bits: Bits, mode: str) -> None:
        if mode not in ACCUMULATOR_MODES:
            raise ValueError(
                f"accumulator mode must be one of {list(ACCUMULATOR_MODES)}, got {mode!r}"
            )
        if isinstance(bits, int) and not isinstance(bits, bool) and not 2 <= bits <= 64:
            raise ValueError(f"accumulator_bits must be in [2, 64], got {bits}")
        self.gm = trace(model)
        self.modules = dict(self.gm.named_modules())
        p = next(model.parameters(), None)
        self.dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        self.bits = bits
        self.mode = mode
        self.stats: dict[str, LayerStats] = {}
        self.float_ops: list[str] = []

    # ------------------------------------------------------------ driver
    def run(self, inputs: Sequence[Tensor]) -> Any:
        env: dict[fx.Node, Any] = {}
        it = iter(inputs)
        out = None
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                env[node] = next(it)
                continue
            args = fx.node.map_arg(node.args, lambda n: env[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
            if node.op == "call_module":
                env[node] = self._module(node.target, self.modules[node.target], args, kwargs)
            elif node.op in ("call_function", "call_method"):
                env[node] = self._function(node, args, kwargs)
            elif node.op == "get_attr":
                env[node] = _fetch_attr(self.gm, node.target)
            elif node.op == "output":
                out = _deep_map(args[0], self._to_float)
        return out

    def _to_float(self, v: Any) -> Any:
        """Dequantized codes (or a float result) in the model's dtype."""
        if isinstance(v, QTensor):
            return v.dequantize().to(self.dtype)
        if isinstance(v, Tensor) and v.is_floating_point():
            return v.to(self.dtype)
        return v

    def _note(self, what: str) -> None:
        if what not in self.float_ops:
            self.float_ops.append(what)

    def _float(self, what: str, fn: Callable, args: tuple, kwargs: dict) -> Any:
        self._note(what)
        return fn(*_deep_map(args, self._to_float), **_deep_map(kwargs, self._to_float))

    # ------------------------------------------------------------ modules
    def _module(self, path: str, m: nn.Module, args: tuple, kwargs: dict) -> Any:
        if isinstance(m, Quantizer):
            return self._requant(m, args[0] if args else None, path)
        fn = _nearest(_FORWARDS, type(m))
        if fn is not None:
            out = fn(self, path, m, args, kwargs)
            if out is not NotImplemented:
                return out
        return self._float(f"{path} ({type(m).__name__})", m, args, kwargs)

    def _core_op(self, path: str, m: nn.Module, x: Any, kind: type) -> Any:
        """The float op ``kind`` (ReLU, max pooling, ...) on codes where a code op is
        registered for it, else in float."""
        op = _nearest(_CODE_OPS, kind) if isinstance(x, QTensor) else None
        y = op(m, x, kind) if op is not None else None
        if y is not None:
            return y
        return self._float(f"{path} ({kind.__name__})", lambda t: kind.forward(m, t), (x,), {})

    # ------------------------------------------------------------ re-quantization
    def _requant(self, q: nn.Module, x: Any, path: str) -> Any:
        if not isinstance(q, Quantizer) or q.state == "float":
            return x
        if q.state in ("uninitialized", "observing"):
            raise ValueError(
                f"{q.name or path}: quantizer has no scale yet; calibrate it or run the model "
                "on data before integer execution"
            )
        fmt = q.spec.format
        if (
            not fmt.integer_codes
            or fmt.is_bipolar
            or q.zero_point() is not None
            or q.spec.granularity.grouped
            or q.dynamic
        ):
            self._note(f"{q.name or path} ({fmt.name} quantizer, fake-quantized)")
            return q(self._to_float(x))
        s = q.scale().detach().double()
        v = x.codes.double() * (x.scale / s) if isinstance(x, QTensor) else x.double() / s
        g = q.grid
        codes = g.fn(v.clamp(g.lo, g.hi))
        return QTensor(codes.long(), s)

    # ------------------------------------------------------------ weight layers
    def _layer_bits(self, path: str, layer: nn.Module) -> int | None:
        if isinstance(self.bits, Mapping):
            if path in self.bits:
                return int(self.bits[path])
        elif self.bits is not None:
            return int(self.bits)
        wq = getattr(layer, "weight_quant", None)
        return wq.accumulator_bits if isinstance(wq, A2QWeightQuantizer) else None

    def _weight_layer(self, path: str, m: QuantWeightLayer, x: Any, linear: bool) -> Any:
        x = self._requant(m.input_quant, x, path)
        wc = weight_codes(m)
        conv_ok = linear or (m.padding_mode == "zeros" and not isinstance(m.padding, str))
        if not isinstance(x, QTensor) or x.scale.numel() != 1 or wc is None or not conv_ok:
            why = "float input" if not isinstance(x, QTensor) else "not integer"
            self._note(f"{path} ({type(m).__name__}, {why})")
            return m(self._to_float(x))
        q, s_w = wc
        bits = self._layer_bits(path, m)
        inside = bias_in_accumulator(m)
        b = accumulator_bias_codes(m)  # int64 [C] on the accumulator scale, or None
        b_acc = b if inside else None  # preloaded into the P-bit register
        if linear:
            acc, exact, over = self._linear(x.codes, q, bits, b_acc)
            scale_shape: tuple[int, ...] = (-1,)
        else:
            acc, exact, over = self._conv(m, x.codes, q, bits, b_acc)
            scale_shape = (1, -1) + (1,) * (acc.dim() - 2)
        self._record(path, m, bits, exact, over, inside)
        s_acc = (x.scale.reshape(()) * s_w).reshape(scale_shape)
        y = self._add_bias(m, acc, None if inside else b, s_acc, scale_shape)
        return self._requant(m.output_quant, y, path)

    def _record(
        self, path: str, m: nn.Module, bits: int | None, exact: Tensor, over: Tensor, bias: bool
    ) -> None:
        st = self.stats.setdefault(path, LayerStats(path, type(m).__name__, bits))
        st.n_values += exact.numel()
        st.overflows += int(over.sum())
        st.max_abs = max(st.max_abs, int(exact.abs().max()) if exact.numel() else 0)
        st.bias_in_accumulator = bias

    def _add_bias(
        self, m: QuantWeightLayer, acc: Tensor, codes: Tensor | None, s_acc: Tensor, shape: tuple
    ) -> Any:
        """The bias applied after the accumulator: integer ``codes`` (accumulator
        scale, added exactly), a float bias (in float), or none (already in ``acc``)."""
        if codes is not None:
            return QTensor(acc + codes.reshape(shape), s_acc)
        if m.bias is None or bias_in_accumulator(m):
            return QTensor(acc, s_acc)
        with torch.no_grad():
            b = m.quant_bias().detach()
        self._note(f"{type(m).__name__} float bias")
        return (acc.double() * s_acc + b.double().reshape(shape)).to(self.dtype)

    def _linear(
        self, x: Tensor, q: Tensor, bits: int | None, bias: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        lead = x.shape[:-1]
        acc, exact, over = accumulate(x.reshape(-1, x.shape[-1]), q, bits, self.mode, bias)
        return tuple(t.reshape(*lead, q.shape[0]) for t in (acc, exact, over))  # type: ignore[return-value]

    def _conv(
        self, m: nn.Module, x: Tensor, q: Tensor, bits: int | None, bias: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        one_d = x.dim() == 3
        k, st, pad, dil = (
            tuple(getattr(m, a)) for a in ("kernel_size", "stride", "padding", "dilation")
        )
        if one_d:  # [B, C, L] → [B, C, 1, L]
            x = x.unsqueeze(2)
            k, st, pad, dil = (1, *k), (1, *st), (0, *pad), (1, *dil)
        B, _, H, W = x.shape
        cols = F.unfold(x.double(), k, dilation=dil, padding=pad, stride=st)  # [B, C·k, L]
        cols = cols.round().long()
        G, C_out = m.groups, q.shape[0]
        L = cols.shape[2]
        cols = cols.reshape(B, G, -1, L).permute(1, 0, 3, 2).reshape(G, B * L, -1)
        qg = q.reshape(G, C_out // G, -1)
        bg = [None] * G if bias is None else bias.reshape(G, C_out // G)
        parts = [accumulate(cols[g], qg[g], bits, self.mode, bg[g]) for g in range(G)]
        h = (H + 2 * pad[0] - dil[0] * (k[0] - 1) - 1) // st[0] + 1
        w = (W + 2 * pad[1] - dil[1] * (k[1] - 1) - 1) // st[1] + 1

        def shaped(i: int) -> Tensor:
            t = torch.cat([p[i] for p in parts], dim=1)  # [B·L, C_out]
            t = t.reshape(B, L, C_out).permute(0, 2, 1).reshape(B, C_out, h, w)
            return t.squeeze(2) if one_d else t

        return shaped(0), shaped(1), shaped(2)

    # ------------------------------------------------------------ pooling and merges
    def _avg_pool(self, path: str, m: QuantAvgPool2d, x: Any) -> Any:
        x = self._requant(m.input_quant, x, path)
        if not isinstance(x, QTensor) or m.ceil_mode:
            return self._float(f"{path} (QuantAvgPool2d)", m, (x,), {})
        sums = F.avg_pool2d(
            x.codes.double(),
            m.kernel_size,
            m.stride,
            m.padding,
            False,
            m.count_include_pad,
            divisor_override=1,
        )
        codes = torch.floor(sums.round() / 2.0**m.trunc_bits).long()
        y = QTensor(codes, x.scale * (2.0**m.trunc_bits / m.window))
        return self._requant(m.output_quant, y, path)

    def _merge(
        self, path: str, m: nn.Module, xs: Sequence, combine: Callable[[list[Tensor]], Tensor]
    ) -> Any:
        """Operands re-quantized by the shared input quantizer, their codes combined."""
        if not m.layer_spec.shared_input_scale:
            return NotImplemented
        qs = [self._requant(m.input_quant, x, path) for x in xs]
        if not all(isinstance(v, QTensor) and v.scale.numel() == 1 for v in qs):
            return NotImplemented
        y = QTensor(combine([v.codes for v in qs]), qs[0].scale)
        return self._requant(m.output_quant, y, path)

    # ------------------------------------------------------------ functions / methods
    def _function(self, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        target = node.target
        x = args[0] if args else None
        if target is operator.getitem and isinstance(x, tuple | list):
            return x[args[1]]  # e.g. y of a recurrent layer's (y, state)
        name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        if isinstance(x, QTensor):
            if target in QTensorOps.RELU_FUNCS or target == "relu":
                return QTensor(x.codes.clamp(min=0), x.scale)
            if target in QTensorOps.SHAPE_FUNCS:
                return x.map_shape(lambda t: target(t, *args[1:], **kwargs))
            if node.op == "call_method" and target in QTensorOps.SHAPE_METHODS:
                return x.map_shape(lambda t: getattr(t, target)(*args[1:], **kwargs))
            if target in QTensorOps.MAXPOOL_FUNCS and _per_channel_scale(x):
                return QTensor(target(x.codes, *args[1:], **kwargs), x.scale)
        if node.op == "call_method":
            return self._float(
                f"{node.name} (.{name})",
                lambda t, *a, **k: getattr(t, target)(*a, **k),
                args,
                kwargs,
            )
        return self._float(f"{node.name} ({name})", target, args, kwargs)


class QTensorOps:
    """Functions and methods that act on integer codes directly (modules register
    their integer forward with :func:`integer_forward` / :func:`code_op`)."""

    RELU_FUNCS = (F.relu, torch.relu)
    MAXPOOL_FUNCS = (F.max_pool2d, F.max_pool1d, torch.max_pool2d)
    SHAPE_FUNCS = (
        torch.flatten,
        torch.reshape,
        torch.permute,
        torch.transpose,
        torch.squeeze,
        torch.unsqueeze,
        F.pixel_shuffle,
        F.dropout,
        operator.getitem,
    )
    SHAPE_METHODS = (
        "flatten",
        "view",
        "reshape",
        "permute",
        "transpose",
        "contiguous",
        "squeeze",
        "unsqueeze",
        "size",
        "dim",
    )


def _per_channel_scale(x: QTensor) -> bool:
    """True when the scale is per tensor or per channel (dim 1) — max commutes with it."""
    s = x.scale
    return s.numel() == 1 or (s.dim() >= 2 and s.numel() == s.shape[1])


def _deep_map(v: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(v, tuple | list):
        return type(v)(_deep_map(a, fn) for a in v)
    if isinstance(v, dict):
        return {k: _deep_map(a, fn) for k, a in v.items()}
    return fn(v)


def _fetch_attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# ---------------------------------------------------------------- integer forwards
@integer_forward(QuantLinear)
def _linear_forward(ex: _Executor, path: str, m: nn.Module, args: tuple, kwargs: dict) -> Any:
    return NotImplemented if kwargs else ex._weight_layer(path, m, args[0], linear=True)


@integer_forward(QuantConv1d, QuantConv2d)
def _conv_forward(ex: _Executor, path: str, m: nn.Module, args: tuple, kwargs: dict) -> Any:
    return NotImplemented if kwargs else ex._weight_layer(path, m, args[0], linear=False)


@integer_forward(QuantWeightLayer)
def _weight_layer_in_float(ex: _Executor, path: str, m: nn.Module, args, kwargs) -> Any:
    """Weight layers without an integer forward of their own (3d / transposed convs)."""
    return NotImplemented


@integer_forward(QuantLayer)
def _activation_forward(ex: _Executor, path: str, m: nn.Module, args: tuple, kwargs) -> Any:
    """Activations and max pooling: re-quantize the input, the float twin's op on the
    codes where it has a code op (ReLU, max pooling), re-quantize the output."""
    x = ex._requant(m.input_quant, args[0], path)
    y = ex._core_op(path, m, x, kind_of(m).float_type)
    return ex._requant(m.output_quant, y, path)


@integer_forward(QuantAvgPool2d)
def _avg_pool_forward(ex: _Executor, path: str, m: nn.Module, args: tuple, kwargs) -> Any:
    return ex._avg_pool(path, m, args[0])


@integer_forward(QuantAdd)
def _add_forward(ex: _Executor, path: str, m: nn.Module, args: tuple, kwargs) -> Any:
    return ex._merge(path, m, args, lambda c: c[0] + c[1])


@integer_forward(QuantCat)
def _cat_forward(ex: _Executor, path: str, m: nn.Module, args: tuple, kwargs) -> Any:
    return ex._merge(path, m, args[0], lambda c: torch.cat(c, dim=m.dim))


@integer_forward(QuantEmbedding)
def _embedding_forward(ex: _Executor, path: str, m: nn.Module, args: tuple, kwargs) -> Any:
    """An integer lookup of the weight codes (and of their scales, per row)."""
    wc = _codes.weight_codes(m)
    if wc is None or kwargs:
        return NotImplemented
    idx = args[0]
    codes = F.embedding(idx, wc.codes)
    s = wc.scale.double()
    if s.numel() > 1:
        s = F.embedding(idx, s.expand(m.weight.shape).contiguous())
    return ex._requant(m.output_quant, QTensor(codes, s), path)


# ---------------------------------------------------------------- recurrent layers
# Per layer and direction, on integer codes: the input projection of every step at once,
# acc_ih = b_ih + Σ x·q_ih (K = input size), and per step acc_hh = b_hh + Σ h·q_hh
# (K = hidden size), each in its own P-bit accumulator (stats as <path>.l<k>[_reverse].ih
# / .hh); the gate pre-activation p = acc_ih·s_x·s_ih + acc_hh·s_h·s_hh is re-quantized
# by the gate quantizer (a fixed-point multiplier); sigmoid / tanh map gate codes to
# output codes (2^bits-entry tables in hardware), and the products of codes (f·c, i·g,
# o·tanh(c); the GRU's r·acc_hn and z·(h − n)) are re-quantized onto the cell / hidden
# grids. The cell arithmetic is the layer's own (``QuantRecurrent.recurrence`` with
# integer projections and re-quantizing step functions), so in float64 the codes equal
# the fake-quantized layer's. Needs integer inputs, weights and activation grids, a
# plain (not packed) input and no initial state; else the layer runs in float.
def _static_int(q: nn.Module) -> bool:
    return (
        isinstance(q, Quantizer)
        and q.state == "static"
        and q.spec.format.integer_codes
        and not q.spec.format.is_bipolar
        and q.zero_point() is None
        and q.spec.granularity.per_tensor
    )


def _recurrent_ready(m: QuantRecurrent) -> bool:
    names = ("gate", "hidden", *m.cell_quantizers)
    for q in m.directions.values():
        if not all(_static_int(getattr(q, f"{n}_quant")) for n in names):
            return False
    if any(mm.weight_codes() is None for mm in m.matmuls()):
        return False
    return all(_static_int(iq) for iq in m.input_quant)


class _RecurrentMatmul:
    """One integer gate matmul (:class:`hwquant.nn.recurrent.Matmul`): weight codes and
    scales, bias codes in the accumulator (or a float bias after it), P."""

    def __init__(self, ex: _Executor, m: nn.Module, path: str, mm) -> None:
        self.ex, self.m, self.key = ex, m, f"{path}.{mm.key}"
        self.codes, s_w = mm.weight_codes()
        wq = mm.weight_quant
        self.bits = ex._layer_bits(self.key, m)  # P for this matmul, or for the layer
        if self.bits is None and isinstance(ex.bits, Mapping) and path in ex.bits:
            self.bits = int(ex.bits[path])
        if self.bits is None and isinstance(wq, A2QWeightQuantizer):
            self.bits = wq.accumulator_bits
        s_in = mm.input_quant.scale().detach()
        self.s_acc = s_in.double().reshape(()) * s_w  # [G·H]
        self.bias_codes = mm.bias_codes()
        self.float_bias: Tensor | None = None
        if mm.bias is not None and self.bias_codes is None:
            self.float_bias = (
                mm.quantizers.bias(mm.which, mm.bias, s_in, mm.weight).detach().double()
            )

    def __call__(self, x_codes: Tensor) -> Tensor:
        """b + Σ x·q in the P-bit accumulator as float64 values on s_x·s_w."""
        lead = x_codes.shape[:-1]
        acc, exact, over = self.ex._linear(
            x_codes.reshape(-1, x_codes.shape[-1]), self.codes, self.bits, self.bias_codes
        )
        self.ex._record(self.key, self.m, self.bits, exact, over, self.bias_codes is not None)
        y = (acc.double() * self.s_acc).reshape(*lead, -1)
        return y if self.float_bias is None else y + self.float_bias


def _on_grid(v: Tensor, s: Tensor) -> QTensor:
    """Values known to lie on the grid of scale ``s`` as codes (exact in float64)."""
    return QTensor(torch.round(v.double() / s).long(), s)


def _recurrent_direction(ex: _Executor, path: str, m, layer: int, sfx: str, xq: QTensor):
    key = f"l{layer}{sfx}"
    q = m.directions[key]
    s_h = q.hidden_quant.scale().detach().double()
    mm = {x.key: x for x in m.matmuls()}
    ih = _RecurrentMatmul(ex, m, path, mm[f"{key}.ih"])
    hh = _RecurrentMatmul(ex, m, path, mm[f"{key}.hh"])

    def step(name: str) -> Callable[[Tensor], Tensor]:
        qz = getattr(q, f"{name}_quant")
        if not isinstance(qz, Quantizer):
            return lambda v: v
        return lambda v: ex._requant(qz, v, path).dequantize()

    f = StepQuant(*(step(n) for n in ("gate", "sigmoid", "tanh", "cell", "hidden")))
    B = xq.codes.shape[1]
    state = [torch.zeros(B, m.hidden_size, dtype=torch.float64)] * m.n_states
    hh_fn = lambda h: hh(_on_grid(h, s_h).codes)  # noqa: E731
    out, last = m.recurrence(ih(xq.codes), hh_fn, f, state, reverse=sfx == "_reverse")
    scales = [s_h] + ([q.cell_quant.scale().detach().double()] if m.n_states == 2 else [])
    return _on_grid(out, s_h), [_on_grid(v, s) for v, s in zip(last, scales, strict=True)]


def _cat_codes(parts: list[QTensor], dim: int) -> QTensor:
    """Concatenate codes along ``dim`` (the scales per entry when they differ)."""
    codes = torch.cat([v.codes for v in parts], dim)
    if all(torch.equal(v.scale, parts[0].scale) for v in parts):
        return QTensor(codes, parts[0].scale)
    shape = [1] * codes.dim()
    shape[dim] = -1
    s = torch.cat([v.scale.reshape(()).expand(v.codes.shape[dim]) for v in parts])
    return QTensor(codes, s.reshape(shape))


@integer_forward(QuantRecurrent)
def _recurrent_forward(ex: _Executor, path: str, m: nn.Module, args: tuple, kwargs) -> Any:
    """QuantLSTM / QuantGRU / QuantRNN on integer codes (section comment above)."""
    x = args[0] if args else None
    if kwargs or len(args) > 1 or not isinstance(x, QTensor | Tensor) or not _recurrent_ready(m):
        return NotImplemented
    if (x.codes if isinstance(x, QTensor) else x).dim() != 3:
        return NotImplemented  # unbatched input: run in float
    tm = (lambda t: t.transpose(0, 1)) if m.batch_first else (lambda t: t)
    x = x.map_shape(tm) if isinstance(x, QTensor) else tm(x)
    finals: list[list[QTensor]] = [[] for _ in range(m.n_states)]
    for layer in range(m.num_layers):
        xq = ex._requant(m.input_quant[layer], x, path)  # codes [T, B, F]
        outs = []
        for sfx in m.suffixes():
            out, last = _recurrent_direction(ex, path, m, layer, sfx, xq)
            outs.append(out)
            for f, v in zip(finals, last, strict=True):
                f.append(v.map_shape(lambda t: t.unsqueeze(0)))
        x = _cat_codes(outs, 2)
    states = [_cat_codes(f, 0) for f in finals]
    return x.map_shape(tm), (tuple(states) if m.n_states == 2 else states[0])


def _torch_on_codes(ex: _Executor, path: str, m: nn.Module, args: tuple, kwargs) -> Any:
    x = args[0] if args else None
    if kwargs or not isinstance(x, QTensor):
        return NotImplemented
    op = _nearest(_CODE_OPS, type(m))
    y = op(m, x, type(m))
    return NotImplemented if y is None else y


@code_op(nn.ReLU)
def _relu_codes(m: nn.Module, x: QTensor, kind: type) -> QTensor:
    return QTensor(x.codes.clamp(min=0), x.scale)


@code_op(nn.MaxPool1d, nn.MaxPool2d)
def _max_pool_codes(m: nn.Module, x: QTensor, kind: type) -> QTensor | None:
    """Max commutes with a per-tensor / per-channel scale."""
    return QTensor(kind.forward(m, x.codes), x.scale) if _per_channel_scale(x) else None


@code_op(nn.Identity, nn.Dropout)
def _identity_codes(m: nn.Module, x: QTensor, kind: type) -> QTensor:
    return x  # eval mode: identities


@code_op(nn.Flatten, nn.Unflatten, nn.PixelShuffle)
def _shape_codes(m: nn.Module, x: QTensor, kind: type) -> QTensor:
    return x.map_shape(lambda t: kind.forward(m, t))


def run_integer(
    model: nn.Module,
    inputs: Tensor | Sequence[Tensor],
    accumulator_bits: Bits = None,
    mode: str = "wrap",
) -> IntegerRun:
    """Run ``model`` on integer tensors with emulated P-bit accumulators.

    Args:
        model: a quantized model (quantizers initialized); it is not modified.
        inputs: a tensor (or a sequence of tensors for multi-input models).
        accumulator_bits: P for every weight layer (int), per layer path (mapping;
            layers not named use their A2Q target or exact), or None: each A2Q layer
            at its own ``accumulator_bits``, other layers exact (int64).
        mode: ``"wrap"`` (two's complement) or ``"saturate"``.

    Returns:
        An :class:`IntegerRun`: dequantized outputs (in the model's dtype) and per-layer
        :class:`LayerStats` (values, overflows, largest |acc|, the bias included when
        it is in the accumulator).
    """
    xs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    was = [(m, m.training) for m in model.modules()]
    model.eval()  # before tracing: dropout and friends are traced in eval mode
    try:
        ex = _Executor(model, accumulator_bits, mode)
        with torch.no_grad():
            out = ex.run(xs)
    finally:
        for m, t in was:
            m.training = t
    ordered = {n: ex.stats[n] for n in ex.stats}
    return IntegerRun(out, mode, ordered, ex.float_ops)
