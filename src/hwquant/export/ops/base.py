"""What every ONNX op module shares: the :class:`OnnxOp` base, the op registry, the
quantizer-emitter registry keyed by format type, node metadata keys and the
:class:`Step` of a tensor's grid.

An op module (``quant.py``, ``bipolar_quant.py``, …) defines one ``OnnxOp``
subclass and registers an instance with :func:`register`; everyone else asks
:func:`op_for` / :func:`find` by op type. Nothing here imports onnx at module
level (``import hwquant`` must stay light).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor

from hwquant.nn.quantizer import QuantCodes
from hwquant.spec.formats import Format, FormatRegistry, IntFormat
from hwquant.spec.quant_spec import QuantSpec

__all__ = [
    "EMITTERS",
    "GROUP_KEY",
    "PATH_KEY",
    "QONNX_DOMAIN",
    "QONNX_OPSET",
    "SPEC_KEY",
    "Emitter",
    "GraphView",
    "OnnxOp",
    "QuantParams",
    "Step",
    "all_ops",
    "attr",
    "find",
    "int_range",
    "meta",
    "names",
    "op_for",
    "op_types",
    "quant_emitter",
    "read_int_format",
    "register",
    "scalar",
    "symbolic",
]

QONNX_DOMAIN = "qonnx.custom_op.general"
#: Trunc v2 (6 inputs) needs opset 2 of the qonnx domain (REFERENCE.md §4).
QONNX_OPSET = 2
#: node metadata key holding the module path of the quantizer that wrote the node.
PATH_KEY = "hwquant.module"
#: node metadata key holding ``QuantSpec.describe()`` / the per-group layout.
SPEC_KEY = "hwquant.spec"
GROUP_KEY = "hwquant.group"


# ---------------------------------------------------------------- emission helpers
@dataclass(frozen=True)
class QuantParams:
    """Constant parameters of one quantizer, ready to become initializers.

    ``scale`` / ``zero_point`` broadcast against the quantized tensor (per-group
    scales are expanded to the tensor's own rank). ``integer`` (weights and biases,
    None for activations): the constant tensor's integer codes and the scale of one
    code (NumPy int64 / float64 arrays), as the quantizer computed them before tracing
    — what level formats (power-of-two, APoT, MSQ) export, since no QONNX op rounds
    onto their levels."""

    path: str
    spec: QuantSpec
    scale: Tensor
    zero_point: Tensor | None
    integer: QuantCodes | None = None
    #: D = scale / integer scale (the levels times D are the codes), per row; NumPy
    integer_multiplier: np.ndarray | None = field(default=None, init=False, compare=False)

    def __post_init__(self) -> None:
        # As NumPy arrays, made now: while torch.export traces, an emitter sees every
        # tensor as a fake one and cannot read its values.
        ic = self.integer
        if ic is not None and isinstance(ic.codes, Tensor):
            codes = ic.codes.detach().cpu().numpy().astype(np.int64)
            scale = ic.scale.detach().cpu().double().numpy()
            object.__setattr__(self, "integer", QuantCodes(codes, scale, None))
            d = self.scale.detach().cpu().double().numpy() / scale
            object.__setattr__(self, "integer_multiplier", d)


Emitter = Callable[[Tensor, QuantParams], Tensor]
#: format type → the function writing its ONNX node(s) (a 1-bit signed IntFormat is
#: BipolarFormat: registries dispatch on ``fmt.canonical()``).
EMITTERS: FormatRegistry[Emitter] = FormatRegistry("QONNX emitter")


def quant_emitter(*formats: type[Format]) -> Callable[[Emitter], Emitter]:
    """Register the function that writes the ONNX node(s) for quantizers of ``formats``."""
    return EMITTERS.register(*formats)


def symbolic(
    op: str, inputs: tuple[Tensor, ...], attrs: dict, like: Tensor, meta: dict[str, str]
) -> Tensor:
    """A ``qonnx.custom_op.general::op`` node in the graph being traced (shape and
    dtype of ``like``)."""
    return torch.onnx.ops.symbolic(
        f"{QONNX_DOMAIN}::{op}",
        inputs,
        attrs,
        dtype=like.dtype,
        shape=like.shape,
        version=QONNX_OPSET,
        metadata_props=meta,
    )


def meta(p: QuantParams) -> dict[str, str]:
    """Node metadata of a quantizer: its module path, spec and per-group layout."""
    out = {PATH_KEY: p.path, SPEC_KEY: p.spec.describe()}
    g = p.spec.granularity
    if g.kind == "group":
        out[GROUP_KEY] = f"{g.axis},{g.group_size}"
    return out


def scalar(v: float) -> Tensor:
    """A float32 scalar tensor (a constant input of a node)."""
    return torch.tensor(float(v), dtype=torch.float32)


# ---------------------------------------------------------------- reading nodes
def attr(node: Any, name: str, default: Any) -> Any:
    """Attribute ``name`` of an ONNX node (bytes decoded to str), else ``default``."""
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def int_range(bits: int, signed: bool, narrow: bool) -> tuple[int, int]:
    """(min_int, max_int) of a QONNX integer grid (REFERENCE.md §4).

    >>> int_range(4, True, False), int_range(4, True, True), int_range(4, False, True)
    ((-8, 7), (-7, 7), (0, 14))
    """
    if signed:
        return -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1 - int(narrow)


class GraphView(Protocol):
    """What an op needs to read a node of a graph: constant tensors and attributes
    (the cost reader's ``OnnxGraph`` and verify's step finder provide it)."""

    def const(self, name: str) -> np.ndarray | None: ...

    def attr(self, node: Any, name: str, default: Any = None) -> Any: ...


@dataclass(frozen=True)
class Step:
    """Step of a tensor's grid: fixed ``scale`` (broadcastable), or, with
    ``mantissa_bits`` set, a minifloat grid whose step depends on the value.

    >>> Step(np.asarray(0.5)).at(np.zeros(3)).tolist()
    [0.5, 0.5, 0.5]
    >>> Step(np.asarray(1.0), mantissa_bits=2).at(np.asarray([1.0, 4.0])).tolist()
    [0.25, 1.0]
    """

    scale: np.ndarray
    mantissa_bits: int | None = None
    min_exponent: int = 0

    def scalar(self) -> Step:
        return Step(np.asarray(np.min(self.scale)), self.mantissa_bits, self.min_exponent)

    def at(self, ref: np.ndarray) -> np.ndarray:
        s = self.scale if _broadcasts(self.scale.shape, ref.shape) else np.min(self.scale)
        if self.mantissa_bits is None:
            return np.broadcast_to(s, ref.shape)
        v = np.abs(ref / s)
        e = np.floor(np.log2(np.maximum(v, np.finfo(np.float64).tiny)))
        return s * 2.0 ** (np.maximum(e, self.min_exponent) - self.mantissa_bits)


def _broadcasts(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    if len(a) > len(b):
        return False
    return all(x in (1, y) for x, y in zip(reversed(a), reversed(b), strict=False))


# ---------------------------------------------------------------- the op base
class OnnxOp:
    """One QONNX op: everything hwquant knows about it, in its own module.

    - emission: ``emit`` (quantizer ops: ``emit(x, QuantParams)``, registered for
      the formats in ``formats``; Trunc's takes the pooling constants);
    - QCDQ form: :meth:`lower` (and :meth:`finish_lowering`, a pass over all
      lowered nodes);
    - output step: :meth:`step`;
    - read-back: :meth:`evaluate` (NumPy reference semantics), :meth:`read_format`
      and :meth:`weight_codes` (what the cost reader needs), :meth:`hls4ml_rejects`
      and :meth:`qonnx_caveat` (what verify reports).
    """

    op_type: ClassVar[str] = ""
    #: other names of the same op (``IntQuant`` for ``Quant``).
    aliases: ClassVar[tuple[str, ...]] = ()
    #: quantizer formats whose emitter is :meth:`emit`.
    formats: ClassVar[tuple[type[Format], ...]] = ()
    #: why hls4ml cannot take a graph with this op at all (None: it may).
    hls4ml_reject_type: ClassVar[str | None] = None
    #: it quantizes tensors, weights included (Trunc only re-quantizes sums).
    quantizes_weights: ClassVar[bool] = False
    #: its output is integer codes times a scale (:meth:`weight_codes` gives them).
    integer_codes: ClassVar[bool] = False

    def lower(self, node: Any, ctx: Any) -> list:
        """The standard-ONNX nodes replacing ``node`` in a QCDQ graph (``ctx``: the
        :class:`~hwquant.export.ops.lowering.Lowering`, not imported here: it imports us)."""
        raise ValueError(f"{ctx.where(node)}: QCDQ cannot express the QONNX op {node.op_type}")

    def finish_lowering(self, nodes: list, ctx: Any) -> list:
        """A rewrite of the whole lowered node list (default: none)."""
        return nodes

    def step(self, node: Any, graph: GraphView) -> Step | None:
        """Step of the grid of ``node``'s output (None: not readable from constants)."""
        return None

    def evaluate(self, node: Any, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """``node``'s output for ``inputs`` (in the node's input order), in NumPy."""
        raise NotImplementedError(f"{self.op_type} has no NumPy evaluation")

    def read_format(self, node: Any, graph: GraphView) -> Format | None:
        """The number format ``node`` produces (None: none hwquant models)."""
        return None

    def weight_codes(self, node: Any, graph: GraphView, fmt: Format) -> np.ndarray | None:
        """Integer codes (zero point removed) of a quantized constant, or None."""
        return None

    def hls4ml_rejects(self, node: Any, inits: dict[str, np.ndarray]) -> str | None:
        """Why hls4ml cannot take this node (None if it may)."""
        return None

    def qonnx_caveat(self, node: Any) -> str | None:
        """What qonnx's executor computes differently from the node's definition."""
        return None


_OPS: dict[str, OnnxOp] = {}
_ALIASES: dict[str, str] = {}


def register(op: OnnxOp) -> OnnxOp:
    """Add ``op`` to the registry (and its :meth:`emit` for its ``formats``)."""
    if not op.op_type or op.op_type in _OPS:
        raise ValueError(f"ONNX op {op.op_type!r} is empty or already registered")
    _OPS[op.op_type] = op
    _ALIASES.update(dict.fromkeys(op.aliases, op.op_type))
    if op.formats:
        quant_emitter(*op.formats)(op.emit)  # type: ignore[attr-defined]
    return op


def find(op_type: str) -> OnnxOp | None:
    """The registered op of that type (or alias), else None."""
    return _OPS.get(_ALIASES.get(op_type, op_type))


def op_for(op_type: str) -> OnnxOp:
    """The registered op of that type; ``ValueError`` naming it when none is."""
    op = find(op_type)
    if op is None:
        raise ValueError(f"no ONNX op {op_type!r} is registered (known: {', '.join(names())})")
    return op


def op_types() -> tuple[str, ...]:
    """Every op type the registry answers for: the registered ones and their aliases.

    >>> from hwquant.export import ops
    >>> ops.op_types()
    ('BipolarQuant', 'FloatQuant', 'IntQuant', 'Quant', 'Trunc')
    """
    return tuple(sorted({*_OPS, *_ALIASES}))


def names() -> tuple[str, ...]:
    """The registered op types, sorted."""
    return tuple(sorted(_OPS))


def all_ops() -> tuple[OnnxOp, ...]:
    """The registered ops, sorted by op type."""
    return tuple(_OPS[t] for t in names())


def read_int_format(node: Any, graph: GraphView, bits_input: int) -> IntFormat:
    """The integer format a Quant / Trunc node produces: its bit width (the constant
    input ``bits_input``) with its ``signed`` / ``narrow`` attributes."""
    bits = graph.const(node.input[bits_input])
    if bits is None:
        raise ValueError(f"{node.op_type} node {node.name!r}: its bit width is not a constant")
    b = round(float(bits.item()))
    signed = bool(graph.attr(node, "signed", 1))
    return IntFormat(b, signed=signed, narrow=bool(graph.attr(node, "narrow", 0)) and b > 1)
