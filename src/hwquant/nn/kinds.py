"""Layer kinds: what every consumer needs to know about a quantized layer, said once.

Each quantized layer class registers its :class:`LayerKind` with the
:func:`layer_kind` decorator, beside its code (nn/linear.py, conv.py, ...). Quantizing
(``hwquant.quantize``), BN folding, the cost model, the accumulator analysis, integer
execution and export look kinds up (:func:`kind_of`) instead of keeping their own lists
of layer types. A kind records

- ``quant_type`` / ``float_type``: the hwquant class and its torch twin (None for
  merges, which have none);
- ``has_weight``, ``has_bias`` (whether the layer has a ``bias`` attribute at all),
  ``out_axis`` (the weight axis of the output channels: 1 for transposed convs) and
  ``transposed``;
- ``accumulates``: the layer computes dot products in an accumulator (linear, conv);
  an embedding has weights but only looks them up;
- :meth:`LayerKind.geometry` (K, out_channels, groups, pixels of one call) and
  :meth:`LayerKind.weight_rows` (the weight as [out_channels, K'] rows, one per
  output channel, the transposed / grouped reshape done here once);
- ``role``: ``"weight"``, ``"activation"``, ``"pool"``, ``"merge"`` or ``"recurrent"``;
- ``takes_default``: ``Recipe.default`` applies to the float twin (default: the
  kinds that accumulate; recurrent layers too, whose matmuls live inside their
  recurrence and are not ``accumulates`` kinds with one ``weight``).

Registering a kind also tells ``hwquant.spec`` (which sits below nn and cannot import
it) that its float class name is a valid ``Recipe.by_type`` key
(:func:`hwquant.spec.layer_spec.register_recipe_type`).

>>> import torch
>>> from torch import nn
>>> import hwquant.nn
>>> k = kind_of(nn.ConvTranspose2d)
>>> k.quant_type.__name__, k.out_axis, k.transposed
('QuantConvTranspose2d', 1, True)
>>> k.geometry(nn.ConvTranspose2d(4, 6, 3, stride=2), (1, 4, 5, 5), (1, 6, 11, 11))
Geometry(K=16, out_channels=6, groups=1, pixels=25)
>>> kind_of(nn.Linear).weight_rows(torch.zeros(3, 4, 2)).shape
torch.Size([3, 8])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor, nn

from hwquant.spec.layer_spec import register_recipe_type

__all__ = [
    "Geometry",
    "LayerKind",
    "is_batch_norm",
    "is_quantized",
    "kind_of",
    "kinds",
    "layer_kind",
    "mvau_weight",
    "weight_kinds",
]


class Geometry(NamedTuple):
    """One call of a layer seen as dot products: ``pixels`` positions (per frame), each
    computing ``out_channels`` dot products of length ``K`` (``groups`` of them share an
    input slice). Transposed convs count input positions (each scatters C_out·k
    products); K is the most products summed into one output. Embeddings: K = 1."""

    K: int
    out_channels: int
    groups: int
    pixels: int


class Matrix(NamedTuple):
    """The layer as FINN's matrix-vector unit: ``n_pix`` vectors of length MW times an
    MH × MW matrix; ``op`` names the form (``linear``, ``conv``, ``depthwise_conv``,
    ``conv_transpose``, ``embedding``)."""

    op: str
    MW: int
    MH: int
    n_pix: int


GeometryFn = Callable[[nn.Module, tuple, tuple], Geometry]
RowsFn = Callable[[Tensor, int], Tensor]


def leading_rows(w: Tensor, groups: int = 1) -> Tensor:
    """[C_out, ...] → [C_out, K'] (linear, conv, grouped conv: one row per output)."""
    return w.reshape(w.shape[0], -1)


def transposed_rows(w: Tensor, groups: int = 1) -> Tensor:
    """[C_in, C_out/g, k...] → [C_out, C_in/g · k...]: output channel j·(C_out/g) + o of
    group j sums weights [j·C_in/g:(j+1)·C_in/g, o, :]."""
    g = groups
    return (
        w.reshape(g, w.shape[0] // g, w.shape[1], -1)
        .permute(0, 2, 1, 3)
        .reshape(g * w.shape[1], -1)
    )


@dataclass(frozen=True, eq=False)
class LayerKind:
    """What consumers need to know about one quantized layer class (module docstring)."""

    quant_type: type[nn.Module]
    float_type: type[nn.Module] | None = None
    role: str = "weight"
    has_weight: bool = False
    has_bias: bool = False
    accumulates: bool = False
    out_axis: int = 0
    transposed: bool = False
    switches: bool = False  # the layer itself changes with set_quantization (avg pool)
    takes_default: bool | None = None  # None: ``accumulates``
    geometry_fn: GeometryFn | None = None
    matrix_fn: Callable[[nn.Module, Geometry], Matrix] | None = None
    rows_fn: RowsFn = leading_rows

    @property
    def name(self) -> str:
        """The float twin's class name (the ``Recipe.by_type`` key), else the class's."""
        return (self.float_type or self.quant_type).__name__

    def geometry(self, module: nn.Module, input_shape: tuple, output_shape: tuple) -> Geometry:
        """K, out_channels, groups, pixels of one call (shapes with the batch first)."""
        if self.geometry_fn is None:
            raise ValueError(f"{self.name} has no MAC geometry")
        return self.geometry_fn(module, tuple(input_shape), tuple(output_shape))

    def fan_in(self, module: nn.Module) -> int:
        """K of ``module``: the products summed into one output (no shapes needed)."""
        return self.geometry(module, (), ()).K

    def matrix(self, module: nn.Module, input_shape: tuple, output_shape: tuple) -> Matrix:
        """The call as a matrix-vector unit (op, MW, MH, n_pix) for the cost model."""
        g = self.geometry(module, input_shape, output_shape)
        if self.matrix_fn is None:
            return Matrix("linear", g.K, g.out_channels, g.pixels)
        return self.matrix_fn(module, g)

    def weight_rows(self, weight: Tensor, groups: int = 1) -> Tensor:
        """``weight`` (or any tensor in its layout, e.g. its codes) as [out_channels, K']
        rows, one per output channel. ``groups``: the layer's groups (it matters for
        transposed convs only: pass ``layer.groups``, see :func:`rows_of`)."""
        return self.rows_fn(weight, groups)

    def rows_of(self, module: nn.Module, weight: Tensor | None = None) -> Tensor:
        """``weight`` (default: the module's) as output rows, with the module's groups."""
        w = module.weight if weight is None else weight
        return self.weight_rows(w, int(getattr(module, "groups", 1)))

    def __repr__(self) -> str:
        return f"LayerKind({self.quant_type.__name__})"


_KINDS: dict[type[nn.Module], LayerKind] = {}  # quant type → kind
_BY_TYPE: dict[type[nn.Module], LayerKind] = {}  # quant and float types → kind


def layer_kind(**fields) -> Callable[[type], type]:
    """Class decorator registering the decorated quantized layer as a :class:`LayerKind`
    (``fields`` as LayerKind's; ``float_type`` defaults to the class's ``float_type``)."""

    def add(cls: type) -> type:
        fields.setdefault("float_type", cls.__dict__.get("float_type"))
        kind = LayerKind(quant_type=cls, **fields)
        _KINDS[cls] = kind
        _BY_TYPE[cls] = kind
        if kind.float_type is not None:
            _BY_TYPE[kind.float_type] = kind
            default = kind.accumulates if kind.takes_default is None else kind.takes_default
            register_recipe_type(kind.float_type.__name__, takes_default=default, role=kind.role)
        return cls

    return add


def kind_of(module_or_type: nn.Module | type) -> LayerKind | None:
    """The kind of a quantized layer or of its float twin (module or class; subclasses
    inherit their base's kind), or None."""
    t = module_or_type if isinstance(module_or_type, type) else type(module_or_type)
    for c in t.__mro__:
        k = _BY_TYPE.get(c)
        if k is not None:
            return k
    return None


def is_quantized(module: nn.Module) -> bool:
    """Whether ``module`` is one of hwquant's quantized layers (not its float twin)."""
    kind = kind_of(module)
    return kind is not None and isinstance(module, kind.quant_type)


def kinds() -> tuple[LayerKind, ...]:
    """Every registered kind, in registration order."""
    return tuple(_KINDS.values())


def weight_kinds() -> tuple[LayerKind, ...]:
    """The kinds whose layers hold a weight."""
    return tuple(k for k in _KINDS.values() if k.has_weight)


def is_batch_norm(module: nn.Module | type) -> bool:
    """Whether ``module`` is a torch BatchNorm (1d/2d/3d, lazy or not): folded into the
    weight layer before it (``hwquant.algorithms.fold_bn``), never quantized itself."""
    t = module if isinstance(module, type) else type(module)
    return issubclass(t, nn.modules.batchnorm._BatchNorm)


# ---------------------------------------------------------------- geometries
def linear_geometry(m: nn.Module, in_shape: tuple, out_shape: tuple) -> Geometry:
    return Geometry(m.in_features, m.out_features, 1, math.prod(out_shape[1:-1]))


def conv_geometry(m: nn.Module, in_shape: tuple, out_shape: tuple) -> Geometry:
    k = math.prod(m.kernel_size)
    return Geometry(
        m.in_channels // m.groups * k, m.out_channels, m.groups, math.prod(out_shape[2:])
    )


def conv_matrix(m: nn.Module, g: Geometry) -> Matrix:
    if g.groups > 1 and g.groups == m.in_channels == m.out_channels:
        return Matrix("depthwise_conv", g.K, g.out_channels, g.pixels)
    return Matrix("conv", g.K, g.out_channels, g.pixels)


def conv_transpose_geometry(m: nn.Module, in_shape: tuple, out_shape: tuple) -> Geometry:
    """Per input position C_in/g inputs feed C_out·k outputs; one output sums at most
    C_in/g · Π⌈k_i/s_i⌉ products (K)."""
    taps = math.prod(math.ceil(k / s) for k, s in zip(m.kernel_size, m.stride, strict=True))
    return Geometry(
        m.in_channels // m.groups * taps, m.out_channels, m.groups, math.prod(in_shape[2:])
    )


def conv_transpose_matrix(m: nn.Module, g: Geometry) -> Matrix:
    k = math.prod(m.kernel_size)
    return Matrix("conv_transpose", m.in_channels // m.groups, m.out_channels * k, g.pixels)


def mvau_weight(w: Tensor) -> Tensor:
    """A linear / convolution weight as its MVAU's MH × MW matrix in FINN's column
    order: [C_out, C_in/g, *k] → [C_out, *k, C_in/g] flattened (kernel position major,
    input channel minor); a 2-D weight as it is.

    >>> import torch
    >>> mvau_weight(torch.arange(8.0).reshape(1, 2, 2, 2)).tolist()
    [[0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0]]
    """
    if w.dim() == 2:
        return w
    return w.permute(0, *range(2, w.dim()), 1).reshape(w.shape[0], -1)
