"""A module tree as data: ``nn.Sequential`` containers of torch.nn and hwquant.nn layers.

``describe_modules`` writes each layer as its type name (from a fixed table of
torch.nn and hwquant.nn classes) and its constructor arguments (JSON values;
specs through :mod:`hwquant.spec.serialize`); ``build_modules`` builds the tree
again. No name in the data can reach any other class, so building never runs code
chosen by a file. Parameters and buffers travel separately, in a state dict.

>>> import torch
>>> from torch import nn
>>> from hwquant.nn import QuantLinear
>>> from hwquant.spec import A4U, W4, LayerSpec
>>> m = nn.Sequential(QuantLinear(4, 3, spec=LayerSpec(input=A4U, weight=W4)), nn.ReLU())
>>> d = describe_modules(m)
>>> d["children"][0][1]["type"], d["children"][1][1]
('hwquant.nn.QuantLinear', {'type': 'torch.nn.ReLU', 'args': {'inplace': False}})
>>> repr(build_modules(d)) == repr(m)
True
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

import hwquant.nn as hnn
from hwquant.spec import serialize
from hwquant.spec.layer_spec import LayerSpec
from hwquant.spec.quant_spec import QuantSpec

__all__ = ["build_modules", "describe_modules"]

_SKIP_PARAMS = {"device", "dtype", "name"}


def _module_types() -> dict[str, type[nn.Module]]:
    table: dict[str, type[nn.Module]] = {}
    for prefix, namespace in (("torch.nn", nn), ("hwquant.nn", hnn)):
        for attr in dir(namespace):
            cls = getattr(namespace, attr)
            if isinstance(cls, type) and issubclass(cls, nn.Module):
                table[f"{prefix}.{attr}"] = cls
    return table


_TYPES = _module_types()
_NAMES = {cls: name for name, cls in _TYPES.items()}


def _params(cls: type[nn.Module]) -> list[inspect.Parameter]:
    # hwquant layers mirror their float twin's constructor, plus ``spec``.
    target = getattr(cls, "float_type", None) or cls
    params = list(inspect.signature(target.__init__).parameters.values())[1:]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    out = [p for p in params if p.kind in kinds and p.name not in _SKIP_PARAMS]
    if target is not cls and "spec" not in {p.name for p in out}:
        out.append(inspect.Parameter("spec", inspect.Parameter.KEYWORD_ONLY))
    return out


def _encode(value: Any, where: str) -> Any:
    if isinstance(value, QuantSpec | LayerSpec):
        return {"spec": serialize.to_dict(value)}
    if isinstance(value, tuple | list | torch.Size):
        return [_encode(v, where) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ValueError(f"{where}: a {type(value).__name__} argument cannot be written as data")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        return serialize.from_dict(value["spec"])
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)
    return value


def _argument(module: nn.Module, name: str) -> Any:
    if name == "spec":
        return getattr(module, "layer_spec", None) or module.spec
    value = getattr(module, name)
    if name == "bias" and not isinstance(value, bool):
        return value is not None  # Linear / Conv keep the tensor, the constructor a flag
    return value


def describe_modules(module: nn.Module, path: str = "") -> dict[str, Any]:
    """``module`` as data (see the module docstring); ``ValueError`` naming the first
    layer that cannot be written so."""
    where = path or "the model"
    if type(module) is nn.Sequential:
        kids = [
            [n, describe_modules(m, f"{path}.{n}" if path else n)]
            for n, m in module.named_children()
        ]
        return {"type": "torch.nn.Sequential", "children": kids}
    name = _NAMES.get(type(module))
    if name is None:
        raise ValueError(
            f"{where} is a {type(module).__name__}, not a torch.nn or hwquant.nn layer in "
            "nn.Sequential containers"
        )
    args = {}
    for p in _params(type(module)):
        if hasattr(module, p.name) or p.name == "spec":
            args[p.name] = _encode(_argument(module, p.name), where)
    return {"type": name, "args": args}


def build_modules(data: dict[str, Any]) -> nn.Module:
    """Inverse of :func:`describe_modules`."""
    if not isinstance(data, dict) or data.get("type") not in _TYPES:
        kind = data.get("type") if isinstance(data, dict) else data
        raise ValueError(f"unknown module type {kind!r} in the model description")
    if data["type"] == "torch.nn.Sequential":
        return nn.Sequential(OrderedDict((n, build_modules(d)) for n, d in data["children"]))
    args = {k: _decode(v) for k, v in data.get("args", {}).items()}
    try:
        return _TYPES[data["type"]](**args)
    except (TypeError, ValueError) as e:
        raise ValueError(f"cannot build {data['type']} from {data.get('args')}: {e}") from None
