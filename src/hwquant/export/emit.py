"""The export pass: quantizers emit QONNX operators while the model is traced.

Nothing here is checked in a layer's ``forward``. During export, the context
manager :func:`emitting` sets the state slots the modules already have
(``Quantizer._forward``, ``QuantWeightLayer.quant_bias``,
``QuantAvgPool2d._forward``) to functions that call
``torch.onnx.ops.symbolic("qonnx.custom_op.general::Quant", ...)``; everything is
restored in ``finally``. Which operator a quantizer becomes is chosen by a
registry keyed by its number format (:func:`quant_emitter`), filled by the op
modules of :mod:`hwquant.export.ops` (each owns its node's inputs and attributes):

- ``IntFormat`` / ``TernaryFormat`` → ``Quant(x, s, z, bits)``
  (y = (round(clamp(x/s + z, q_min, q_max)) − z)·s, the same formula as
  :func:`hwquant.core.grid.fake_quantize`);
- ``BipolarFormat`` (and 1-bit signed integers) → ``BipolarQuant(x, s)``;
- ``MinifloatFormat`` → ``FloatQuant(x, s, E, M, bias, max)``;
- ``QuantAvgPool2d`` → ``Quant → AveragePool → Trunc`` (sum of codes, drop
  t = ⌈log2 k²⌉ LSBs, module docstring of :mod:`hwquant.nn.pool`).

Scales, zero points and bit widths are computed *before* tracing, from the
current state (dynamic weight quantizers from the weight), and enter the graph as
constants, so the exported graph holds only constant quantization parameters.

>>> import torch
>>> from hwquant.nn import QuantLinear
>>> from hwquant.spec import A8, W4, LayerSpec
>>> layer = QuantLinear(4, 2, spec=LayerSpec(input=A8, weight=W4)).eval()
>>> _ = layer(torch.randn(8, 4))  # initializes the input scale
>>> with emitting(layer) as params:  # torch.onnx.export(layer, ...) here writes Quant nodes
...     sorted(params), tuple(params["weight_quant"].scale.shape)
(['input_quant', 'weight_quant'], (2, 1))
>>> layer.input_quant.state  # restored
'static'
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwquant.core.rounding import QONNX_NAMES
from hwquant.export.ops import (
    EMITTERS,
    GROUP_KEY,
    PATH_KEY,
    QONNX_DOMAIN,
    QONNX_OPSET,
    SPEC_KEY,
    TRUNC,
    Emitter,
    QuantParams,
    quant_emitter,
)
from hwquant.export.ops.base import scalar
from hwquant.nn.codes import integer_codes
from hwquant.nn.kinds import is_quantized, kind_of
from hwquant.nn.layer import QuantWeightLayer
from hwquant.nn.pool import QuantAvgPool2d
from hwquant.nn.quantizer import BiasQuantizer, Quantizer
from hwquant.spec.formats import IntFormat
from hwquant.spec.quant_spec import QuantSpec

__all__ = [
    "EMITTERS",
    "GROUP_KEY",
    "PATH_KEY",
    "QONNX_DOMAIN",
    "QONNX_OPSET",
    "SPEC_KEY",
    "Emitter",
    "QuantParams",
    "check_ready",
    "emitting",
    "quant_emitter",
]


def _emitter_for(p: QuantParams) -> Emitter:
    fmt = p.spec.format
    if fmt not in EMITTERS:
        raise ValueError(
            f"{p.path}: format {fmt.name} ({type(fmt).__name__}) cannot be exported: QONNX "
            f"and QCDQ have no operator for it (exportable: "
            f"{sorted(t.__name__ for t in EMITTERS.entries)})"
        )
    fn = EMITTERS.get(fmt)
    if p.spec.rounding not in QONNX_NAMES:
        raise ValueError(f"{p.path}: rounding {p.spec.rounding!r} has no QONNX rounding_mode")
    return fn


# ---------------------------------------------------------------- constant parameters
def _expand_groups(s: Tensor, spec: QuantSpec, shape: tuple[int, ...]) -> Tensor:
    """Per-group scale [.., n_groups, 1, ..] (grouped view) → [.., n, 1, ..] (tensor rank)."""
    g = spec.granularity
    axis = g.axis % len(shape)
    full = s.repeat_interleave(g.group_size, dim=axis)
    return full.reshape(shape[: axis + 1] + (1,) * (len(shape) - axis - 1))


def _params(q: Quantizer, path: str, tensor: Tensor | None) -> QuantParams:
    """The quantizer's constants; ``tensor`` is the weight a dynamic quantizer sees."""
    with torch.no_grad():
        if tensor is not None:  # a weight / bias: its quantizer's view of this tensor
            s, z = q.scale_zero_for(tensor)
        elif q.dynamic:
            raise ValueError(
                f"{path}: dynamic quantizer of a tensor export cannot see (only weights and "
                "biases of hwquant layers may use statistics scales)"
            )
        else:
            s, z = q.scale(), q.zero_point()
        s = s.detach().float().clone()
        z = None if z is None else z.detach().float().clone()
        ints = None if tensor is None else integer_codes(q, tensor)
    if q.spec.granularity.kind == "group":
        s = _expand_groups(s, q.spec, q.shape)
        z = None if z is None else _expand_groups(z, q.spec, q.shape)
    return QuantParams(path, q.spec, s, z, ints)


def check_ready(q: Quantizer, path: str) -> None:
    """ValueError unless ``q`` has a scale to export (not uninitialized, not calibrating)."""
    if q.state == "uninitialized":
        raise ValueError(
            f"{path}: quantizer has no scale yet; calibrate it or run the model on data "
            "before exporting"
        )
    if q.state == "observing":
        raise ValueError(f"{path}: quantizer is calibrating; call finish_calibration() first")


# ---------------------------------------------------------------- the context manager
@contextlib.contextmanager
def emitting(model: nn.Module) -> Iterator[dict[str, QuantParams]]:
    """Within the block, quantizers of ``model`` emit QONNX operators when called.

    Yields {module path: QuantParams} of every emitting quantizer. Disabled
    quantizers stay identities. Raises ``ValueError`` naming the module path for
    what QONNX cannot express (power-of-two / APoT / MSQ activations, stochastic
    rounding) and for quantizers without a scale yet."""
    saved: list[tuple[nn.Module, str, object]] = []
    params: dict[str, QuantParams] = {}
    try:
        for path, module in model.named_modules():
            kind = kind_of(module) if is_quantized(module) else None
            if kind is not None and kind.has_weight:
                _emit_layer_params(module, path, saved, params)
            elif kind is not None and kind.role == "recurrent":
                _emit_recurrent(module, path, saved, params)
            elif isinstance(module, Quantizer):
                _emit_quantizer(module, path, None, saved, params)
            if kind is not None and kind.switches:  # integer average pooling
                _set(saved, module, "_forward", _avgpool_emitter(module, path))
        yield params
    finally:
        for obj, name, old in reversed(saved):
            if old is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, old)


_MISSING = object()
#: the placeholder node of a recurrent layer's time loop (hwquant.export.recurrent)
RECURRENT_DOMAIN = "hwquant.recurrent"
RECURRENCE = "Recurrence"


def _set(saved: list, obj: nn.Module, name: str, value: object) -> None:
    saved.append((obj, name, obj.__dict__.get(name, _MISSING)))
    # object.__setattr__: a plain instance attribute (nn.Module would not let a
    # function shadow a method otherwise), removed again in ``emitting``'s finally.
    object.__setattr__(obj, name, value)


def _emit_quantizer(
    q: Quantizer, path: str, tensor: Tensor | None, saved: list, params: dict
) -> None:
    if path in params or q.state == "float":
        return
    check_ready(q, path)
    p = _params(q, path, tensor)
    fn = _emitter_for(p)
    params[path] = p
    _set(saved, q, "_forward", lambda x: fn(x, p))


def _emit_layer_params(layer: QuantWeightLayer, path: str, saved: list, params: dict) -> None:
    """Weight / bias quantizers see their parameter; accumulator-scale biases get
    the constant s_input·s_weight."""
    pre = f"{path}." if path else ""
    if isinstance(layer.weight_quant, Quantizer):
        _emit_quantizer(layer.weight_quant, pre + "weight_quant", layer.weight, saved, params)
    bq = layer.bias_quant
    if isinstance(bq, Quantizer):
        _emit_quantizer(bq, pre + "bias_quant", layer.bias, saved, params)
    elif isinstance(bq, BiasQuantizer) and bq.state != "float":
        with torch.no_grad():
            s_acc = layer.accumulator_scale(layer.weight)  # s_in·s_w (/D for PoT codes)
            bias = layer.accumulator_bias(s_acc).detach()  # A2Q: clipped to fit P bits
        p = QuantParams(pre + "bias_quant", bq.spec, s_acc.detach().reshape(-1).clone(), None)
        fn = _emitter_for(p)
        params[p.path] = p
        _set(saved, layer, "quant_bias", lambda w_hat=None: fn(bias, p))


def _emit_recurrent(layer: nn.Module, path: str, saved: list, params: dict) -> None:
    """Weight / bias quantizers of every gate matmul see their parameter (accumulator
    biases get the constant s_in·s_w); the time loop becomes one placeholder node
    (:mod:`hwquant.export.recurrent`)."""
    pre = f"{path}." if path else ""
    for mm in layer.matmuls():
        where = f"{pre}directions.{mm.key.partition('.')[0]}."
        wq, bq = mm.weight_quant, mm.bias_quant
        if isinstance(wq, Quantizer):
            _emit_quantizer(wq, f"{where}weight_{mm.which}_quant", mm.weight, saved, params)
        if isinstance(bq, Quantizer):
            _emit_quantizer(bq, f"{where}bias_{mm.which}_quant", mm.bias, saved, params)
        elif isinstance(bq, BiasQuantizer) and bq.state != "float" and mm.bias is not None:
            _emit_accumulator_bias(mm, f"{where}bias_{mm.which}_quant", saved, params)
    _set(saved, layer, "recurrence", _recurrence_emitter(layer, path))


def _recurrence_emitter(layer: nn.Module, path: str) -> Callable:
    """The ``recurrence`` slot of a recurrent layer during export: one placeholder
    node, expanded into a Scan or unrolled steps by :mod:`hwquant.export.recurrent`."""

    def recurrence(ax, hh, f, state, mask=None, reverse=False, direction="l0"):
        if mask is not None:
            raise ValueError(
                f"{path}: packed sequences cannot be exported; export the padded tensor "
                "(and give the sequence length as a dynamic axis)"
            )
        T, B, H = ax.shape[0], ax.shape[1], layer.hidden_size
        b = hh.bias if hh.bias is not None else hh.weight.new_zeros(hh.weight.shape[0])
        outs = torch.onnx.ops.symbolic_multi_out(
            f"{RECURRENT_DOMAIN}::{RECURRENCE}",
            (ax, hh.weight, b, *state),
            {"layer": path, "direction": direction, "reverse": int(reverse)},
            dtypes=[ax.dtype] * (1 + len(state)),
            shapes=[(T, B, H)] + [(B, H)] * len(state),
            version=1,
            metadata_props={PATH_KEY: f"{path}.{direction}" if path else direction},
        )
        return outs[0], list(outs[1:])

    return recurrence


def _emit_accumulator_bias(mm, path: str, saved: list, params: dict) -> None:
    """A recurrent matmul's bias on its accumulator scale s_in·s_w, as a constant."""
    with torch.no_grad():
        s_in = mm.input_quant.scale().detach()
        s_acc = (s_in * mm.weight_quant.scale_for(mm.weight)).reshape(-1).detach().clone()
        # A2Q: clipped to fit the P-bit accumulator
        bias = mm.quantizers.bias(mm.which, mm.bias, s_in, mm.weight).detach().clone()
    p = QuantParams(path, mm.bias_quant.spec, s_acc, None)
    fn = _emitter_for(p)
    params[path] = p
    _set(saved, mm.bias_quant, "_forward", lambda _b, _s: fn(bias, p))


def _avgpool_emitter(pool: QuantAvgPool2d, path: str) -> Callable[[Tensor], Tensor]:
    """Quant → AveragePool (mean, = Σq·s/k²) → Trunc: the sum of codes is an integer
    at scale s/k², dropping t LSBs (FLOOR) gives scale s·2^t/k² (what torch computes)."""
    if pool.ceil_mode:
        raise ValueError(f"{path}: QuantAvgPool2d with ceil_mode=True cannot be exported")
    iq: Quantizer = pool.input_quant
    fmt: IntFormat = iq.spec.format  # type: ignore[assignment]
    with torch.no_grad():
        s = iq.scale().detach().float().clone()
        in_scale = s / pool.window
        out_scale = s * (2.0**pool.trunc_bits / pool.window)
    in_bits = scalar(fmt.bits + pool.trunc_bits)

    def forward(x: Tensor) -> Tensor:
        x = pool.input_quant(x)  # emits Quant
        # count_include_pad: hwquant divides every window sum by k² (divisor_override=1).
        m = F.avg_pool2d(x, pool.kernel_size, pool.stride, pool.padding, False, True)
        meta = {PATH_KEY: path, SPEC_KEY: f"sum of {pool.window} codes >> {pool.trunc_bits}"}
        y = TRUNC.emit(m, in_scale, in_bits, out_scale, fmt.bits, fmt.signed, fmt.narrow, meta)
        return pool.output_quant(y)

    return forward
