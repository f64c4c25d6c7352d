"""One verb for existing models: ``quantize(model, recipe)``; plus calibration.

``quantize`` swaps every supported module for its quantized twin (by type or by
name pattern, see :class:`~hwquant.spec.Recipe`). When the model traces with
torch.fx it also

- quantizes functional merges (``+``, ``torch.add``, ``torch.cat``) with
  ``QuantAdd`` / ``QuantCat`` modules, and functional ``F.relu`` / ``torch.relu``
  when the recipe quantizes ReLU outputs;
- makes a signed activation format unsigned where the graph proves the input is
  non-negative (after ReLU, sigmoid, pooling of those, …): a free bit.

Everything else stays float and the report says so and why.

Example:
    >>> import torch
    >>> from hwquant.models import MLP
    >>> from hwquant.spec import W4, A4, Recipe
    >>> qmodel = quantize(MLP((64, 32, 10)), Recipe.uniform(weights=W4, activations=A4))
    >>> [(e.name, e.short["input"]) for e in qmodel.hwquant_report.entries if e.quantized]
    [('layers.0', 'INT4/t'), ('layers.2', 'UINT4/t')]
    >>> qmodel(torch.randn(4, 64)).shape
    torch.Size([4, 10])
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from hwquant.graph import QuantizeFunctional, input_unsigned, unsigned_input_modules
from hwquant.nn import (
    QUANT_TYPES,
    BiasQuantizer,
    Quantizer,
)
from hwquant.nn.kinds import is_batch_norm, is_quantized, kind_of
from hwquant.spec.layer_spec import Recipe

__all__ = [
    "MODEL_ROW",
    "LayerEntry",
    "QuantizeReport",
    "calibration",
    "clipping",
    "quantize",
    "quantizers",
    "set_quantization",
]

#: Report row name of a model that is itself one supported layer (its path is "").
MODEL_ROW = "(model)"


@dataclass
class LayerEntry:
    """What ``quantize`` did with one module or functional op.

    ``clipped``: for unsigned activation quantizers whose scale came from data, the
    fraction of their input that was negative (clipped to 0), by quantizer
    (``{"input_quant": 0.63}``); filled by :func:`clipping` (``calibration`` calls it).
    """

    name: str
    type: str
    quantized: bool
    detail: dict[str, str] | str
    short: dict[str, str] | None = None
    clipped: dict[str, float] = field(default_factory=dict)

    def note(self) -> str:
        """The clipping note of this row ("" when nothing notable was clipped)."""
        from hwquant.nn.quantizer import CLIP_WARN_FRACTION

        bad = {k: v for k, v in self.clipped.items() if v > CLIP_WARN_FRACTION}
        return ", ".join(f"{k}: {v:.0%} negative → 0" for k, v in bad.items())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class QuantizeReport:
    entries: list[LayerEntry] = field(default_factory=list)
    traced: bool = False
    trace_error: str | None = None

    def to_dict(self) -> dict:
        return {
            "traced": self.traced,
            "trace_error": self.trace_error,
            "entries": [e.to_dict() for e in self.entries],
        }

    def table(self):
        """A rich table: one row per module, its quantizers' formats."""
        from rich.table import Table

        t = Table(
            title="hwquant: layers (t = per-tensor, ch = per-channel, acc = accumulator scale)"
        )
        for col in ("layer", "type", "input", "weight", "bias", "output", "note"):
            t.add_column(col)
        for e in self.entries:
            if e.short is not None:
                d = e.short
                note = f"[red]{e.note()}" if e.note() else ""
                t.add_row(e.name, e.type, d["input"], d["weight"], d["bias"], d["output"], note)
            else:
                t.add_row(e.name, e.type, "", "", "", "", f"[yellow]{e.detail}")
        return t

    def __str__(self) -> str:
        lines = []
        for e in self.entries:
            d = e.detail
            desc = ", ".join(f"{k}={v}" for k, v in d.items()) if isinstance(d, dict) else d
            if e.note():
                desc += f"  [clipped: {e.note()}]"
            lines.append(f"{e.name:<24} {e.type:<18} {desc}")
        return "\n".join(lines)


# ----------------------------------------------------------------- module swapping
def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def _float_reason(module: nn.Module, recipe: Recipe, name: str) -> str:
    t = type(module).__name__
    if type(module) not in QUANT_TYPES and recipe.spec_for(name, t) is not None:
        return f"no quantized {t} yet: stays float (the recipe asks to quantize it)"
    if recipe.has_entry_for(name, t):
        return "kept float by the recipe"
    if type(module) in QUANT_TYPES:
        return "float: not in the recipe"
    if is_batch_norm(module):
        return "float: fold it with hwquant.algorithms.fold_bn"
    if any(True for _ in module.parameters(recurse=False)):
        return f"unsupported: no quantized {t} yet, stays float"
    return "float: no arithmetic"


def _own_parameters_reason(module: nn.Module) -> str | None:
    """Why a float container's own parameters (not its children's) stay float, e.g.
    ``nn.MultiheadAttention.in_proj_weight``; None when it holds none."""
    own = [n for n, _ in module.named_parameters(recurse=False)]
    if not own or is_quantized(module) or isinstance(module, Quantizer | BiasQuantizer):
        return None
    t = type(module).__name__
    return (
        f"unsupported: no quantized {t} yet; its own parameters ({', '.join(own)}) "
        "stay float (its forward uses them directly, not through a child layer)"
    )


def _swap_one(
    model: nn.Module, name: str, module: nn.Module, recipe: Recipe, unsigned: bool
) -> tuple[nn.Module | None, LayerEntry]:
    """The quantized twin of one leaf module (None to keep it) and its report row."""
    t = type(module).__name__
    row = name or MODEL_ROW
    qtype = QUANT_TYPES.get(type(module))
    spec = recipe.spec_for(name, t) if qtype is not None else None
    if spec is None:
        return None, LayerEntry(row, t, False, _float_reason(module, recipe, name))
    if unsigned and recipe.unsigned_after_relu:
        spec = input_unsigned(spec)
    new = qtype.from_float(module, spec)
    spec = getattr(new, "layer_spec", spec)  # e.g. the RecurrentSpec a QuantLSTM derived
    return new, LayerEntry(row, t, True, spec.describe(), spec.describe(True))


def _swap_modules(
    model: nn.Module, recipe: Recipe, unsigned_inputs: set[str], report: QuantizeReport
) -> nn.Module:
    """Swap supported leaves for their twins; returns the model (a new object when the
    model is itself one supported layer, e.g. ``quantize(nn.Linear(4, 2), recipe)``)."""
    if next(model.children(), None) is None and not isinstance(model, Quantizer):
        new, entry = _swap_one(model, "", model, recipe, False)
        report.entries.append(entry)
        return model if new is None else new
    for name, module in list(model.named_modules()):
        if isinstance(module, Quantizer):
            continue
        if next(module.children(), None) is not None:
            reason = _own_parameters_reason(module)
            if reason is not None:
                report.entries.append(
                    LayerEntry(name or MODEL_ROW, type(module).__name__, False, reason)
                )
            continue
        new, entry = _swap_one(model, name, module, recipe, name in unsigned_inputs)
        if new is not None:
            _set_submodule(model, name, new)
        report.entries.append(entry)
    return model


def quantize(model: nn.Module, recipe: Recipe, *, inplace: bool = False) -> nn.Module:
    """Quantize ``model`` according to ``recipe``; returns the quantized model.

    The model is copied unless ``inplace``. When functional ops had to be
    rewritten, the result is a ``torch.fx.GraphModule`` (same submodule paths).
    The report is attached as ``model.hwquant_report`` (a :class:`QuantizeReport`).
    Activation scales are derived from the first batch the model sees (or from a
    :func:`calibration` pass); weight scales from the weights.
    """
    if not isinstance(recipe, Recipe):
        raise ValueError(f"recipe must be a hwquant.spec.Recipe, got {type(recipe).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    architecture = getattr(model, "hwquant_architecture", None)  # a GraphModule drops it
    report = QuantizeReport()
    unsigned: set[str] = set()
    gm: fx.GraphModule | None = None
    try:
        gm = fx.symbolic_trace(model)
        report.traced = True
    except Exception as e:
        report.trace_error = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    if gm is not None:
        unsigned = unsigned_input_modules(gm)
        rewrite = QuantizeFunctional(recipe)
        gm, changed = rewrite.apply(gm)
        for name, kind, ls in rewrite.added:
            report.entries.append(
                LayerEntry(name, f"fn {kind}", True, ls.describe(), ls.describe(True))
            )
        if changed:
            model = gm
    model = _swap_modules(model, recipe, unsigned, report)
    for path, q in quantizers(model):
        q.name = path
    model.hwquant_report = report
    model.hwquant_recipe = recipe  # a model file re-applies it (hwquant.checkpoint)
    if architecture is not None:
        model.hwquant_architecture = architecture
    return model


def quantizers(model: nn.Module) -> Iterator[tuple[str, Quantizer]]:
    """(path, quantizer) for every Quantizer in ``model``."""
    for name, m in model.named_modules():
        if isinstance(m, Quantizer):
            yield name, m


@contextlib.contextmanager
def calibration(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, activation quantizers only collect statistics (the model
    runs in float, weights included); on exit their scales are set from what they
    saw and quantization is on again.

    >>> from hwquant.models import MLP
    >>> from hwquant.spec import W4, A8U, Recipe
    >>> qm = quantize(MLP((8, 4)), Recipe.uniform(weights=W4, activations=A8U))
    >>> with calibration(qm):
    ...     _ = qm(torch.rand(16, 8))
    """
    qs = [
        q for _, q in quantizers(model) if q.role == "activation" and q.spec.scale.method != "fixed"
    ]
    set_quantization(model, False)  # weights and biases stay float while observing
    for q in qs:
        q.calibrate()
    ok = False
    try:
        with torch.no_grad():
            yield model
        ok = True
    finally:
        set_quantization(model, True)
        for q in qs:
            if ok:
                q.finish_calibration()
        if ok:
            clipping(model)


def clipping(model: nn.Module) -> dict[str, float]:
    """{quantizer path: fraction of its input clipped to 0} for the unsigned activation
    quantizers whose scale came from data (first batch or calibration), and the same
    numbers written into ``model.hwquant_report`` (``LayerEntry.clipped``, shown as a
    note where above ``hwquant.nn.quantizer.CLIP_WARN_FRACTION``).

    >>> from hwquant.models import MLP
    >>> from hwquant.spec import W4, A8U, Recipe
    >>> qm = quantize(MLP((8, 4)), Recipe.uniform(weights=W4, activations=A8U))
    >>> _ = qm(torch.linspace(-1, 3, 128).reshape(16, 8))  # 1/4 negative: ClippingWarning
    >>> clipping(qm)["layers.0.input_quant"]
    0.25
    """
    out = {p: q.clipped_fraction for p, q in quantizers(model) if q.clipped_fraction is not None}
    report = getattr(model, "hwquant_report", None)
    if isinstance(report, QuantizeReport):
        by_row = {e.name: e for e in report.entries if e.quantized}
        for path, frac in out.items():
            layer, _, qname = path.rpartition(".")
            entry = by_row.get(layer or MODEL_ROW)
            if entry is not None:
                entry.clipped[qname] = frac
    return out


def set_quantization(model: nn.Module, enabled: bool) -> None:
    """Turn every quantizer of ``model`` off (identity) or back on; integer average
    pooling becomes float average pooling while off."""
    for m in model.modules():
        kind = kind_of(m)
        if isinstance(m, Quantizer | BiasQuantizer) or (kind and kind.switches and is_quantized(m)):
            m.enable() if enabled else m.disable()
