"""Model architectures named as data: a registry of hwquant's own model builders.

A model file stores *which* builder made the model and with which JSON arguments,
never the Python objects themselves. Only builders in this registry (hwquant's own
code) are called by name; a user's own class is named by an import path that the
loader imports only when the caller asks for it explicitly (see
:func:`hwquant.checkpoint.load_checkpoint`).

>>> from hwquant.models import DigitsCNN
>>> architecture_of(DigitsCNN(channels=8))
{'name': 'DigitsCNN', 'kwargs': {'channels': 8, 'num_classes': 10}}
>>> build_registered("MLP", {"sizes": [4, 2]}).layers[0]
Linear(in_features=4, out_features=2, bias=True)
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["architecture_of", "build_registered", "record_architecture", "register_model"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
#: hwquant modules that register builders when imported (looked up on a miss, so a
#: file can only ever pick among hwquant's own builders).
_REGISTERING_MODULES = (
    "hwquant.models.small",
    "hwquant.models.transformer",
    "hwquant.models.ocr",
    "hwquant.export.zoo",
)


def register_model(name: str, builder: Callable[..., nn.Module]) -> None:
    """Make ``builder(**kwargs)`` rebuildable from a model file by ``name``."""
    if name in _MODELS and _MODELS[name] is not builder:
        raise ValueError(f"a model builder named {name!r} is already registered")
    _MODELS[name] = builder


def record_architecture(model: nn.Module, name: str, /, **kwargs: Any) -> None:
    """Note on ``model`` that the builder ``name`` rebuilds it from ``kwargs`` (JSON values)."""
    try:
        json.dumps(kwargs)
    except TypeError as e:
        raise ValueError(f"arguments of model {name!r} must be JSON values: {e}") from None
    model.hwquant_architecture = {"name": name, "kwargs": kwargs}


def architecture_of(model: nn.Module) -> dict[str, Any] | None:
    """The recorded architecture of ``model`` (``{"name", "kwargs"}``), if any."""
    arch = getattr(model, "hwquant_architecture", None)
    return dict(arch) if isinstance(arch, dict) else None


def build_registered(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Build the registered model ``name`` with JSON ``kwargs``."""
    if name not in _MODELS:
        for module in _REGISTERING_MODULES:
            importlib.import_module(module)
    if name not in _MODELS:
        raise ValueError(f"unknown hwquant model {name!r}; registered: {sorted(_MODELS)}")
    try:
        return _MODELS[name](**_tuples(kwargs))
    except TypeError as e:
        raise ValueError(f"cannot build model {name!r} from {kwargs}: {e}") from None


def _tuples(kwargs: dict[str, Any]) -> dict[str, Any]:
    # JSON has no tuples; the builders take tuples for sizes and shapes.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
