"""What every algorithm shares: the name → (Config, apply) registry, calibration
batches, eval mode with the training flags restored, and input capture by hooks.

An algorithm is one file under ``algorithms/`` with a frozen ``Config`` dataclass and
``apply(model, data, config) -> Report``; it registers itself with
:func:`register`. The CLI (``hwquant apply``) and sweeps find it by name:

    >>> from hwquant.algorithms import get
    >>> algo = get("fold_bn")
    >>> algo.config_type.__name__, algo.needs_data
    ('FoldBNConfig', False)
    >>> get("gptqq")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown algorithm 'gptqq'; known: a2q_ep_init, a2q_ptq, adaround, ...
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Algorithm",
    "batches",
    "captured_inputs",
    "check_bool",
    "check_choice",
    "check_range",
    "config_from",
    "conv_equivalent_weight",
    "eval_mode",
    "get",
    "input_rows",
    "layer_tracer",
    "names",
    "pipeline",
    "register",
    "weight_from_equivalent",
]


@dataclass(frozen=True)
class Algorithm:
    """A registered algorithm: ``apply(model, data, config)`` with a ``config_type``
    instance; ``needs_data``: it reads calibration batches."""

    name: str
    config_type: type
    apply: Callable[..., Any]
    needs_data: bool
    summary: str

    def run(self, model: nn.Module, data: Any = None, config: Any = None) -> Any:
        """``apply`` with a checked config (a ``config_type``, a mapping of its
        fields, or None for the defaults) and data when the algorithm needs it."""
        if self.needs_data and data is None:
            raise ValueError(f"algorithm {self.name!r} needs calibration data")
        return self.apply(model, data, config_from(self.config_type, config))


_REGISTRY: dict[str, Algorithm] = {}


def register(name: str, config_type: type, *, needs_data: bool) -> Callable:
    """Decorator for an algorithm's ``apply``: make it findable as ``name``."""

    def add(apply: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"algorithm {name!r} is registered twice")
        doc = (apply.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = Algorithm(name, config_type, apply, needs_data, doc[0] if doc else "")
        return apply

    return add


def get(name: str) -> Algorithm:
    """The algorithm registered as ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name]


def names() -> tuple[str, ...]:
    """Registered algorithm names, sorted."""
    return tuple(sorted(_REGISTRY))


def config_from(config_type: type, config: Any = None) -> Any:
    """A ``config_type`` instance from None (defaults), an instance, or a mapping of
    field names to values (strings are read as JSON when they parse: ``"3"`` → 3,
    ``"true"`` → True, ``"[1, 2]"`` → (1, 2); else kept as text). Unknown fields are
    an error that names them and the known ones.

    >>> from hwquant.algorithms.a2q_ptq import A2QPTQConfig
    >>> config_from(A2QPTQConfig, {"method": "ep", "max_batches": "4"}).max_batches
    4
    >>> config_from(A2QPTQConfig, {"methd": "ep"})
    Traceback (most recent call last):
    ...
    ValueError: A2QPTQConfig has no field 'methd'; fields: act_order, calibrate, damp, max_batches, method, scale_grid, soft_threshold
    """
    if config is None:
        return config_type()
    if isinstance(config, config_type):
        return config
    if not isinstance(config, Mapping):
        raise ValueError(f"a {config_type.__name__} or a mapping is needed, got {config!r}")
    fields = {f.name for f in dataclasses.fields(config_type) if f.init}
    for key in config:
        if key not in fields:
            raise ValueError(
                f"{config_type.__name__} has no field {key!r}; fields: {', '.join(sorted(fields))}"
            )
    return config_type(**{k: _value(v) for k, v in config.items()})


# ---------------------------------------------------------------- config validation
def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    left = "(-∞" if lo is None else f"{'(' if lo_open else '['}{lo:g}"
    right = "∞)" if hi is None else f"{hi:g}{')' if hi_open else ']'}"
    return f"{left}, {right}"


def check_range(
    config: Any,
    field: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    integer: bool = False,
    lo_open: bool = False,
    hi_open: bool = False,
    optional: bool = False,
) -> None:
    """Check that ``config.<field>`` is a number (an int with ``integer``; None allowed
    with ``optional``; never a bool, NaN or inf) in the interval from ``lo`` to ``hi``
    (None: unbounded; ``lo_open`` / ``hi_open`` exclude the ends). A ValueError names
    the config, the field, the value and the allowed range.

    >>> from hwquant.algorithms.gptq import GPTQConfig
    >>> check_range(GPTQConfig(), "damp", 0, 1, hi_open=True)
    >>> check_range(GPTQConfig(), "block_size", 1, 64, integer=True)
    Traceback (most recent call last):
    ...
    ValueError: GPTQConfig.block_size must be an int in [1, 64], got 128
    """
    v = getattr(config, field)
    if optional and v is None:
        return
    ok = not isinstance(v, bool) and isinstance(v, int if integer else int | float)
    ok = ok and math.isfinite(v)
    ok = ok and (lo is None or (v > lo if lo_open else v >= lo))
    ok = ok and (hi is None or (v < hi if hi_open else v <= hi))
    if not ok:
        what = ("an int" if integer else "a number") + (" or None" if optional else "")
        where = _interval(lo, hi, lo_open, hi_open)
        raise ValueError(f"{type(config).__name__}.{field} must be {what} in {where}, got {v!r}")


def check_bool(config: Any, *fields: str) -> None:
    """Check that each ``config.<field>`` is a bool (ValueError naming field and value)."""
    for field in fields:
        v = getattr(config, field)
        if not isinstance(v, bool):
            raise ValueError(f"{type(config).__name__}.{field} must be a bool, got {v!r}")


def check_choice(config: Any, field: str, choices: tuple, *, optional: bool = False) -> None:
    """Check that ``config.<field>`` is one of ``choices`` (or None with ``optional``)."""
    v = getattr(config, field)
    if (optional and v is None) or (not isinstance(v, bool) and v in choices):
        return
    allowed = ", ".join(map(repr, choices)) + (" or None" if optional else "")
    raise ValueError(f"{type(config).__name__}.{field} must be one of {allowed}, got {v!r}")


def _value(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    try:
        parsed = json.loads(v)
    except json.JSONDecodeError:
        return v
    return tuple(parsed) if isinstance(parsed, list) else parsed


def batches(data: Any, limit: int | None = None, *, what: str = "calibration data") -> list[Tensor]:
    """Input batches from ``data``: one tensor, or an iterable of batches (``x`` or
    ``(x, y, ...)``), at most ``limit`` of them. No batches, or NaN / inf in one, is a
    ValueError naming ``what``.

    >>> [b.shape[0] for b in batches([(torch.ones(2, 3), 0), torch.ones(4, 3)])]
    [2, 4]
    >>> batches(torch.tensor([[float("nan")]]))
    Traceback (most recent call last):
    ...
    ValueError: calibration data batch 0 holds 1 NaN/inf value(s)
    """
    if isinstance(data, Tensor):
        data = [data]
    out: list[Tensor] = []
    for b in data:
        if limit is not None and len(out) >= limit:
            break
        x = b[0] if isinstance(b, tuple | list) else b
        if not isinstance(x, Tensor):
            raise ValueError(f"{what}: batches must be tensors, got {type(x).__name__}")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            n = int((~torch.isfinite(x)).sum())
            raise ValueError(f"{what} batch {len(out)} holds {n} NaN/inf value(s)")
        out.append(x)
    if not out:
        raise ValueError(f"{what}: got no batches")
    return out


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` inside the block; every module's own training flag restored
    after (also on error), so a half-frozen model stays as it was."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, t in flags:
            m.training = t


@contextmanager
def captured_inputs(layer: nn.Module, on_input: Callable[[nn.Module, Tensor], None]):
    """Call ``on_input(layer, x)`` with ``layer``'s first positional input on every
    forward inside the block (a pre-hook, removed in ``finally``)."""
    handle = layer.register_forward_pre_hook(lambda mod, args: on_input(mod, args[0]))
    try:
        yield
    finally:
        handle.remove()


# ---------------------------------------------------------------- a weight layer as a matmul
def conv_equivalent_weight(layer: nn.Module, w: Tensor | None = None) -> Tensor:
    """The weight (or ``w``, any tensor in the weight's layout, e.g. its scales) as an
    ordinary (non-transposed) convolution / linear weight [C_out, C_in / groups, *k]:
    a transposed convolution is a convolution over the zero-stuffed input with the
    kernel flipped and its channel axes swapped."""
    w = layer.weight if w is None else w
    if not getattr(layer, "transposed", False):
        return w
    g = layer.groups
    cin, cout_g, *k = w.shape
    w = w.reshape(g, cin // g, cout_g, *k).transpose(1, 2).reshape(g * cout_g, cin // g, *k)
    return w.flip(list(range(2, w.dim())))


def weight_from_equivalent(layer: nn.Module, w_eq: Tensor) -> Tensor:
    """Inverse of :func:`conv_equivalent_weight`: back to ``layer.weight``'s layout."""
    if not getattr(layer, "transposed", False):
        return w_eq.reshape(layer.weight.shape)
    g = layer.groups
    cin, cout_g, *k = layer.weight.shape
    w = w_eq.reshape(g * cout_g, cin // g, *k).flip(list(range(2, 2 + len(k))))
    return w.reshape(g, cout_g, cin // g, *k).transpose(1, 2).reshape(layer.weight.shape)


def input_rows(layer: nn.Module, x: Tensor) -> Tensor:
    """The layer's input as rows [groups, n, K] matching ``conv_equivalent_weight``'s
    rows [C_out, K] per group, so that the output is rows @ weight_rowsᵀ (+ bias) —
    the X of GPTQ / AdaRound / bias correction. Linear: one row per input vector;
    convolutions (1d/2d/3d, grouped, any padding mode, strided, dilated) and
    transposed convolutions: one row per output pixel (im2col)."""
    if layer.weight.dim() == 2:  # linear: the last dimension is the dot product
        return x.reshape(1, -1, x.shape[-1])
    nd = x.dim() - 2
    k, d = layer.kernel_size, layer.dilation
    if getattr(layer, "transposed", False):
        x, stride, pads, mode = _stuffed(layer, x), (1,) * nd, None, "zeros"
        pads = [
            p
            for i in reversed(range(nd))
            for p in (
                d[i] * (k[i] - 1) - layer.padding[i],
                d[i] * (k[i] - 1) - layer.padding[i] + layer.output_padding[i],
            )
        ]
        if any(p < 0 for p in pads):
            raise ValueError(f"{type(layer).__name__}: padding larger than the kernel reach")
    else:
        stride, pads, mode = layer.stride, _conv_pads(layer, nd), layer.padding_mode
    if any(pads):
        x = F.pad(x, pads, mode="constant" if mode == "zeros" else mode)
    for i in range(nd):  # window dims are appended at the end
        x = x.unfold(2 + i, (k[i] - 1) * d[i] + 1, stride[i])[..., :: d[i]]
    c = x.shape[1]
    x = x.permute(0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))  # [B, L..., C, k...]
    g = layer.groups
    rows = x.reshape(-1, g, c // g * math.prod(k))
    return rows.transpose(0, 1)


def _conv_pads(layer: nn.Module, nd: int) -> list[int]:
    """F.pad's list (last dimension first) for a convolution's ``padding``."""
    p = layer.padding
    if p == "valid":
        return [0] * (2 * nd)
    if p == "same":  # torch puts the odd element on the right
        out = []
        for i in reversed(range(nd)):
            total = layer.dilation[i] * (layer.kernel_size[i] - 1)
            out += [total // 2, total - total // 2]
        return out
    return [v for i in reversed(range(nd)) for v in (p[i], p[i])]


def _stuffed(layer: nn.Module, x: Tensor) -> Tensor:
    """x with stride − 1 zeros between neighbours along every spatial dimension."""
    nd = x.dim() - 2
    s = layer.stride
    if all(v == 1 for v in s):
        return x
    shape = [*x.shape[:2], *((n - 1) * s[i] + 1 for i, n in enumerate(x.shape[2:]))]
    out = x.new_zeros(shape)
    out[(slice(None), slice(None), *(slice(None, None, s[i]) for i in range(nd)))] = x
    return out


def pipeline(model: nn.Module, data: Any, steps: list) -> list[tuple[str, Any]]:
    """Run algorithms in order: each step is a name or ``(name, config)`` (a config
    instance or a mapping of its fields). Every name and config is checked before the
    first step runs. Returns ``[(name, report), ...]``.

    >>> from torch import nn
    >>> m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).eval()
    >>> [name for name, _ in pipeline(m, None, ["fold_bn"])]
    ['fold_bn']
    >>> pipeline(m, None, [("gptq", {"damp": 2.0})])
    Traceback (most recent call last):
    ...
    ValueError: GPTQConfig.damp must be a number in [0, 1), got 2.0
    """
    plan = []
    for step in steps:
        name, config = (step, None) if isinstance(step, str) else step
        algo = get(name)
        plan.append((algo, config_from(algo.config_type, config)))
    if data is None and any(algo.needs_data for algo, _ in plan):
        needing = [algo.name for algo, _ in plan if algo.needs_data]
        raise ValueError(f"{', '.join(needing)} need calibration data")
    return [(algo.name, algo.run(model, data, config)) for algo, config in plan]


# ---------------------------------------------------------------- reports
class Record:
    """Mixin for a per-layer result dataclass: ``to_dict`` of its fields."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass
class LayerReport:
    """A report with one result per layer (``layers``, each with ``to_dict``) and the
    layers left alone with the reason (``skipped``: path → why)."""

    layers: list = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [r.to_dict() for r in self.layers], "skipped": self.skipped}


def calibrate_activations(model: nn.Module, xs: list[Tensor]) -> None:
    """Set every activation quantizer's scale from ``xs`` (:func:`hwquant.api.calibration`)."""
    from hwquant.api import calibration

    with calibration(model):
        for x in xs:
            model(x)


def traced(model: nn.Module) -> tuple[Any, dict[str, nn.Module]] | None:
    """(torch.fx GraphModule, its modules by name) of ``model``, or None when it does not
    trace (callers then fall back to ``nn.Sequential`` adjacency). hwquant's layers and
    quantizers stay single call nodes, so a quantized model (with its graph rewrites)
    traces as well as a float one."""
    from torch import fx

    try:
        graph = layer_tracer().trace(model)
    except Exception:
        return None
    gm = fx.GraphModule(model, graph)
    return gm, dict(gm.named_modules())


def layer_tracer() -> Any:
    """A torch.fx tracer that keeps every registered layer kind and every quantizer as
    one call node (torch.fx would otherwise trace into their forward)."""
    return _layer_tracer_type()()


@functools.cache
def _layer_tracer_type() -> type:  # built on first use: nn imports stay lazy here
    from torch import fx

    from hwquant.nn.kinds import kind_of
    from hwquant.nn.quantizer import Quantizer

    class LayerTracer(fx.Tracer):
        """Keeps every registered layer kind and every quantizer as one call node."""

        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            if isinstance(m, Quantizer) or kind_of(m) is not None:
                return True
            return super().is_leaf_module(m, qualname)

    return LayerTracer
