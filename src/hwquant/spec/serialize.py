"""Versioned, round-trippable serialization of specs (formats, QuantSpec,
LayerSpec, Recipe, …) to plain JSON values — for checkpoints and ONNX metadata.

Every spec dataclass is written as ``{"type": <class name>, <field>: …}``; the
top level adds ``"hwquant_spec_version"``. Reading checks the version, the type
(it must be registered with :func:`serializable`) and the fields (unknown ones
raise ``ValueError`` naming them), and re-runs each class's validation.

>>> from hwquant.spec import W4, A4U, Recipe
>>> r = Recipe.uniform(weights=W4, activations=A4U)
>>> from_dict(to_dict(r)) == r
True
>>> to_dict(W4)["format"]
{'type': 'IntFormat', 'bits': 4, 'signed': True, 'narrow': True}
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

from hwquant.spec.formats import FORMAT_TYPES
from hwquant.spec.layer_spec import LayerSpec, Recipe
from hwquant.spec.quant_spec import Granularity, QuantSpec, ScaleSpec

__all__ = ["SPEC_VERSION", "dumps", "from_dict", "loads", "serializable", "to_dict"]

SPEC_VERSION = 1
_TYPES: dict[str, type] = {}
T = TypeVar("T", bound=type)


def serializable(cls: T) -> T:
    """Register a frozen spec dataclass so :func:`from_dict` can rebuild it."""
    if not dataclasses.is_dataclass(cls):
        raise ValueError(f"{cls.__name__} is not a dataclass")
    _TYPES[cls.__name__] = cls
    return cls


for _cls in (*FORMAT_TYPES.values(), Granularity, ScaleSpec, QuantSpec, LayerSpec, Recipe):
    serializable(_cls)


def _encode(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        # Granularities keep one serialized type; ``kind`` names the class.
        name = "Granularity" if isinstance(obj, Granularity) else type(obj).__name__
        if name not in _TYPES:
            raise ValueError(
                f"{name} is not a registered spec type: decorate it with "
                "hwquant.spec.serialize.serializable"
            )
        d: dict[str, Any] = {"type": name}
        for f in dataclasses.fields(obj):
            d[f.name] = _encode(getattr(obj, f.name))
        return d
    if isinstance(obj, tuple | list):
        return [_encode(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise ValueError(f"cannot serialize {type(obj).__name__} inside a spec")


def _decode(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_decode(v) for v in obj)
    if not isinstance(obj, dict):
        return obj
    kind = obj.get("type")
    if kind not in _TYPES:
        raise ValueError(f"unknown spec type {kind!r}; known: {sorted(_TYPES)}")
    cls = _TYPES[kind]
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    extra = set(obj) - names - {"type"}
    if extra:
        raise ValueError(f"unknown field(s) {sorted(extra)} for {kind}")
    return cls(**{k: _decode(v) for k, v in obj.items() if k != "type"})


def to_dict(spec: Any) -> dict[str, Any]:
    """JSON-able dict of ``spec`` with the format version."""
    d = _encode(spec)
    if not isinstance(d, dict):
        raise ValueError(f"to_dict expects a spec dataclass, got {type(spec).__name__}")
    return {"hwquant_spec_version": SPEC_VERSION, **d}


def from_dict(d: dict[str, Any]) -> Any:
    """Inverse of :func:`to_dict` (validates version, types and fields)."""
    d = dict(d)
    version = d.pop("hwquant_spec_version", None)
    if version != SPEC_VERSION:
        raise ValueError(f"unsupported hwquant_spec_version {version!r} (this is {SPEC_VERSION})")
    return _decode(d)


def dumps(spec: Any) -> str:
    """``to_dict`` as a JSON string."""
    return json.dumps(to_dict(spec))


def loads(text: str) -> Any:
    """Inverse of :func:`dumps`."""
    return from_dict(json.loads(text))
