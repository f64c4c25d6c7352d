"""What every algorithm shares: the name → (Config, apply) registry, calibration
batches, eval mode with the training flags restored, and input capture by hooks.

An algorithm is one file under ``algorithms/`` with a frozen ``Config`` dataclass and
``apply(model, data, config) -> Report``; it registers itself with
:func:`register`. The CLI (``hwquant apply``) and sweeps find it by name:

    >>> from hwquant.algorithms import get
    >>> algo = get("fold_bn")
    >>> algo.config_type.__name__, algo.needs_data
    ('FoldBNConfig', False)
    >>> get("gptqq")
    Traceback (most recent call last):
    ...
    ValueError: unknown algorithm 'gptqq'; known: a2q_ep_init, a2q_ptq, fold_bn
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Algorithm",
    "batches",
    "captured_inputs",
    "config_from",
    "eval_mode",
    "get",
    "names",
    "register",
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
