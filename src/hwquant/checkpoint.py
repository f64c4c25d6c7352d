"""Model files are data: tensors, a versioned recipe, and the architecture named as data.

A hwquant model file is a ``torch.save`` of a dict that holds only strings, numbers
and tensors, read back with ``torch.load(weights_only=True)``; loading never
unpickles Python objects, so a file cannot run code. It holds

- ``architecture`` (JSON), one of
  - ``{"kind": "modules", "tree": …}``: ``nn.Sequential`` containers of torch.nn /
    hwquant.nn layers, written layer by layer (:mod:`hwquant.nn.describe`);
  - ``{"kind": "registered", "name": …, "kwargs": …}``: one of hwquant's own model
    builders (:mod:`hwquant.models.registry`), e.g. ``DigitsCNN``;
  - ``{"kind": "factory", "target": "package.module:callable", "kwargs": …}``: the
    user's own code, imported only when the caller passes the same ``factory``
    (on the command line: ``--factory package.module:callable``);
- ``recipe``: the :class:`~hwquant.spec.Recipe` that ``hwquant.quantize`` applied
  (versioned spec serialization), re-applied on load; ``transforms``: model
  transforms that changed the structure (``fold_bn``), replayed on load;
- ``state_dict`` (every quantizer's spec rides along, so a state dict loaded into a
  model whose quantizers differ is refused), ``input_shape`` (batch included),
  ``hwquant_version``.

Saving rebuilds the model from this description and refuses when the rebuilt
model differs from the one given, so a file always loads to the same model.

>>> import os, tempfile, torch
>>> from hwquant.api import quantize
>>> from hwquant.models import DigitsCNN
>>> from hwquant.spec import A4U, W4, Recipe
>>> model = quantize(DigitsCNN(channels=4), Recipe.uniform(weights=W4, activations=A4U)).eval()
>>> x = torch.randn(2, 1, 8, 8)
>>> path = os.path.join(tempfile.mkdtemp(), "m.pt")
>>> save_checkpoint(model, path, (1, 1, 8, 8))
>>> loaded, shape = load_checkpoint(path)
>>> shape, bool(torch.equal(loaded(x), model(x)))
((1, 1, 8, 8), True)
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import pickle
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hwquant.algorithms import fold_bn
from hwquant.api import quantize, quantizers
from hwquant.models.registry import architecture_of, build_registered
from hwquant.nn.describe import build_modules, describe_modules
from hwquant.spec import serialize
from hwquant.spec.layer_spec import Recipe

__all__ = ["FILE_FORMAT", "FILE_VERSION", "load_checkpoint", "load_data", "save_checkpoint"]

FILE_FORMAT = "hwquant-model"
FILE_VERSION = 1
Factory = Callable[..., nn.Module]

#: structural model transforms a file may ask to replay (by name, never by code).
TRANSFORMS: dict[str, Callable[[nn.Module], Any]] = {"fold_bn": fold_bn.apply}


# ----------------------------------------------------------------- saving
def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    input_shape: tuple[int, ...] | None = None,
    *,
    architecture: str | None = None,
    architecture_kwargs: dict[str, Any] | None = None,
) -> None:
    """Write ``model`` as a data-only model file (see the module docstring).

    ``input_shape``: the example input's shape, batch included, e.g. ``(1, 1, 8, 8)``.
    The architecture is found by itself for hwquant's models (and ``quantize`` of
    them) and for ``nn.Sequential`` stacks of torch / hwquant layers; any other model
    names its builder: ``architecture="package.module:callable"`` called with
    ``architecture_kwargs`` (JSON values) must rebuild it (before ``quantize``, which
    is re-applied from the recorded recipe)."""
    arch = _architecture(model, architecture, architecture_kwargs)
    recipe = getattr(model, "hwquant_recipe", None) if arch["kind"] != "modules" else None
    transforms = list(getattr(model, "hwquant_transforms", [])) if arch["kind"] != "modules" else []
    entry = {
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "architecture": json.dumps(arch),
        "recipe": serialize.dumps(recipe) if recipe is not None else "",
        "transforms": json.dumps(transforms),
        "input_shape": [] if input_shape is None else [int(n) for n in input_shape],
        "has_input_shape": input_shape is not None,
        "hwquant_version": _version(),
        "state_dict": {
            k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in model.state_dict().items()
        },
    }
    factory = _import_factory(arch["target"]) if arch["kind"] == "factory" else None
    _check_rebuilds(model, _rebuild(entry, factory))
    torch.save(entry, path)


def _architecture(model: nn.Module, target: str | None, kwargs: dict | None) -> dict[str, Any]:
    if target is not None:
        _split_target(target)
        arch = {"kind": "factory", "target": target, "kwargs": kwargs or {}}
    elif (recorded := architecture_of(model)) is not None:
        arch = {"kind": "registered", **recorded}
    else:
        try:
            return {"kind": "modules", "tree": describe_modules(model)}
        except ValueError as e:
            raise ValueError(
                f"cannot write the model's architecture as data ({e}): pass "
                "architecture='package.module:callable' (and architecture_kwargs) that builds it"
            ) from None
    try:
        json.dumps(arch)
    except TypeError as e:
        raise ValueError(f"architecture arguments must be JSON values: {e}") from None
    return arch


def _check_rebuilds(model: nn.Module, rebuilt: nn.Module) -> None:
    """The description must give the same modules, code and state-dict layout."""
    same = repr(rebuilt) == repr(model) and getattr(rebuilt, "code", None) == getattr(
        model, "code", None
    )
    # pruning masks (``*.weight_mask``) are not part of the architecture: loading the
    # state dict creates them (hwquant.nn.layer)
    ours = {
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if torch.is_tensor(v) and k.rpartition(".")[2] != "weight_mask"
    }
    theirs = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items() if torch.is_tensor(v)}
    if not same or ours != theirs:
        diff = sorted(set(ours) ^ set(theirs))[:3]
        raise ValueError(
            "the model cannot be rebuilt from its recorded architecture, recipe and transforms "
            f"(it was changed after they were recorded{'; differing entries: ' + ', '.join(diff) if diff else ''}): "
            "pass architecture='package.module:callable' that builds it"
        )


# ----------------------------------------------------------------- loading
def load_checkpoint(
    path: str | os.PathLike, *, factory: str | Factory | None = None
) -> tuple[nn.Module, tuple[int, ...] | None]:
    """(model in eval mode, input shape with batch or None) from a hwquant model file.

    Nothing in the file is executed. A file that names the user's own builder
    (``"package.module:callable"``) loads only when ``factory`` is that same import
    path (imported then) or a callable that builds the model; ``ValueError`` with
    a one-line reason for everything else (pickled objects, missing or mismatched
    state, unknown architecture)."""
    entry = _read(path)
    arch = json.loads(entry["architecture"])
    model = _rebuild(entry, _resolve_factory(arch, factory, path))
    try:
        model.load_state_dict(entry["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"{path}: the state does not fit the model: {_first_line(e)}") from None
    for name, q in quantizers(model):
        q.name = name
    model.eval()
    shape = tuple(entry["input_shape"]) if entry["has_input_shape"] else None
    return model, shape


def _read(path: str | os.PathLike) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ValueError(f"no checkpoint at {path}")
    entry = load_data(
        path,
        failed=f"cannot load checkpoint {path}",
        kind="a hwquant model file",
        advice="save the model with hwquant.save_checkpoint",
    )
    if not isinstance(entry, dict) or entry.get("format") != FILE_FORMAT:
        raise ValueError(
            f"{path} is not a hwquant model file (save one with hwquant.save_checkpoint)"
        )
    if entry.get("version") != FILE_VERSION:
        raise ValueError(
            f"{path}: model file version {entry.get('version')!r} is not supported "
            f"(this hwquant reads version {FILE_VERSION})"
        )
    return entry


def load_data(path: str | os.PathLike, *, failed: str, kind: str, advice: str = "") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never
    pickled objects (they can run code). Every failure is a one-line ``ValueError``:
    ``failed`` starts it; ``kind`` names what the file should be."""
    try:
        with warnings.catch_warnings():  # torch warns about the protocol of plain pickles
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # no objects by reference: just another file
            raise ValueError(f"{failed}: not {kind}") from None
        tail = f"; {advice}" if advice else ""
        raise ValueError(
            f"{path} holds pickled Python objects, which hwquant never loads (they can run "
            f"code){tail}"
        ) from None
    except Exception as e:
        raise ValueError(f"{failed}: {_first_line(e)}") from None


def _rebuild(entry: dict[str, Any], factory: Factory | None) -> nn.Module:
    arch = json.loads(entry["architecture"])
    kind = arch.get("kind")
    if kind == "modules":
        return build_modules(arch["tree"])
    if kind == "registered":
        model = build_registered(arch["name"], arch.get("kwargs", {}))
    elif kind == "factory":
        model = _call_factory(factory, arch)
    else:
        raise ValueError(f"unknown architecture kind {kind!r} in the model file")
    if entry["recipe"]:
        recipe = serialize.loads(entry["recipe"])
        if not isinstance(recipe, Recipe):
            raise ValueError("the model file's recipe is not a Recipe")
        model = quantize(model, recipe, inplace=True)
    for name in json.loads(entry["transforms"]):
        if name not in TRANSFORMS:
            raise ValueError(f"unknown model transform {name!r} in the model file")
        TRANSFORMS[name](model)
    return model


def _resolve_factory(arch: dict, factory: str | Factory | None, path) -> Factory | None:
    if arch.get("kind") != "factory":
        if factory is not None:
            raise ValueError(
                f"{path} describes its architecture itself ({arch.get('kind')}); drop the factory"
            )
        return None
    target = arch["target"]
    if factory is None:
        raise ValueError(
            f"{path} is built by your code {target!r}: pass factory={target!r} "
            f"(command line: --factory {target}) to import it"
        )
    if isinstance(factory, str):
        if factory != target:
            raise ValueError(f"{path} is built by {target!r}, not by the factory {factory!r}")
        return _import_factory(factory)
    return factory


def _split_target(target: str) -> tuple[str, str]:
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"a factory is written 'package.module:callable', got {target!r}")
    return module, attr


def _import_factory(target: str) -> Factory:
    module, attr = _split_target(target)
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import factory {target!r}: {_first_line(e)}") from None
    if not callable(obj):
        raise ValueError(f"factory {target!r} is not callable")
    return obj


def _call_factory(factory: Factory | None, arch: dict) -> nn.Module:
    if factory is None:  # pragma: no cover - _resolve_factory guarantees one
        raise ValueError(f"the model is built by {arch['target']!r}: pass factory=")
    model = factory(**arch.get("kwargs", {}))
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"factory {arch['target']!r} returned a {type(model).__name__}, not a module"
        )
    return model


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _version() -> str:
    return importlib.metadata.version("hwquant")
