"""Magnitude pruning for quantization-aware pruning (QAP, Hawks et al. 2021,
REFERENCE.md §6), with hardware-shaped sparsity.

Every weight layer is seen as its matrix-vector unit's MH × MW matrix (rows = output
channels, columns = fan-in; a convolution's columns in FINN's order, kernel position
major and input channel minor). The matrix is cut into blocks of ``block = (rows,
cols)`` and whole blocks are pruned, the smallest mean |w| first:

- ``structure="unstructured"``: blocks of one weight;
- ``structure="channel"``: whole output channels (filters), blocks of 1 × MW;
- ``structure="block"``: ``block=(PE, SIMD)`` — the tiles of a FINN MVAU folded with
  PE × SIMD (PE consecutive output rows, SIMD consecutive inputs). A zero tile is one
  weight-memory word (PE·SIMD weights) and one step of the MVAU's schedule that a
  sparse unit never needs; :mod:`hwquant.analysis.cost` costs the fraction of
  non-zero tiles (see :func:`hwquant.analysis.cost.formulas.sparse_mvau_scale`).

``fraction`` is the fraction of *all* weights in scope that is pruned after the call
(``scope="global"``: ranked across layers; ``"layer"``: the same fraction in every
layer). Masks only grow: weights pruned before stay pruned, so an iterative schedule
(:func:`schedule`) calls ``apply`` with growing fractions between training runs.
Masks live on the layers (``weight_mask``, :mod:`hwquant.nn.layer`) and persist
through QAT, model files and export. :func:`rewind` restores saved initial weights
and keeps the masks (lottery-ticket rewinding).

>>> import torch
>>> from hwquant.api import quantize
>>> from hwquant.models import MLP
>>> from hwquant.spec import A8U, W8, Recipe
>>> model = quantize(MLP((16, 64, 5)), Recipe.uniform(weights=W8, activations=A8U))
>>> report = apply(model, None, PruneConfig(fraction=0.5))
>>> round(report.pruned_fraction, 2), round(sparsity(model)["layers.0"], 2) > 0
(0.5, True)
>>> apply(model, None, PruneConfig(fraction=1.0))
Traceback (most recent call last):
...
ValueError: PruneConfig.fraction must be a number in [0, 1), got 1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hwquant.algorithms.common import (
    LayerReport,
    Record,
    check_choice,
    check_range,
    register,
)
from hwquant.nn.kinds import kind_of, mvau_weight
from hwquant.nn.layer import QuantWeightLayer
from hwquant.nn.quantizer import Quantizer
from hwquant.spec.formats import Format

__all__ = [
    "LayerPrune",
    "PruneConfig",
    "PruneReport",
    "apply",
    "masks",
    "rewind",
    "schedule",
    "snapshot",
    "sparsity",
]

STRUCTURES = ("unstructured", "channel", "block")
SCOPES = ("global", "layer")


@dataclass(frozen=True)
class PruneConfig:
    """What to prune (see the module docstring).

    fraction: fraction of the weights in scope pruned after the call, in [0, 1).
    scope: ``global`` (one magnitude ranking over all layers) or ``layer``.
    structure: ``unstructured``, ``channel`` or ``block``.
    block: (rows, cols) of a block for ``structure="block"``, e.g. FINN's (PE, SIMD);
        must divide every pruned layer's MH × MW.
    layers: module names to prune (default: every weight layer that accumulates).
    exclude: module names left dense (e.g. the output layer).
    """

    fraction: float = 0.5
    scope: str = "global"
    structure: str = "unstructured"
    block: tuple[int, int] | None = None
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_range(self, "fraction", 0, 1, hi_open=True)
        check_choice(self, "scope", SCOPES)
        check_choice(self, "structure", STRUCTURES)
        for field in ("layers", "exclude"):
            v = getattr(self, field)
            if isinstance(v, str) or not all(isinstance(n, str) for n in v):
                raise ValueError(f"PruneConfig.{field} must be a tuple of module names, got {v!r}")
            object.__setattr__(self, field, tuple(v))
        if self.structure == "block":
            b = self.block
            ok = isinstance(b, tuple | list) and len(b) == 2
            ok = ok and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in b)
            if not ok:
                raise ValueError(
                    f"PruneConfig.block must be (rows, cols) of positive ints for "
                    f"structure='block', e.g. (PE, SIMD) = (4, 8); got {b!r}"
                )
            object.__setattr__(self, "block", tuple(b))
        elif self.block is not None:
            raise ValueError(
                f"PruneConfig.block is only used with structure='block' "
                f"(structure={self.structure!r}, block={self.block!r})"
            )


@dataclass
class LayerPrune(Record):
    """One layer after pruning: weights and blocks, in total and pruned."""

    name: str
    n_weights: int
    n_pruned: int
    block: tuple[int, int]
    n_blocks: int
    n_blocks_pruned: int

    @property
    def fraction(self) -> float:
        return self.n_pruned / self.n_weights


@dataclass
class PruneReport(LayerReport):
    """Per-layer results; ``pruned_fraction``: pruned weights / weights in scope."""

    pruned_fraction: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() | {"pruned_fraction": self.pruned_fraction}


# ----------------------------------------------------------------- the matrix view
def _matrix(layer: nn.Module, w: Tensor) -> Tensor:
    """``w`` (the weight's layout) as the MH × MW matrix of the layer's MVAU."""
    return mvau_weight(w)


def _unmatrix(layer: nn.Module, m: Tensor) -> Tensor:
    w = layer.weight
    if w.dim() == 2:
        return m
    c_out, c_in, *k = w.shape
    return m.reshape(c_out, *k, c_in).permute(0, w.dim() - 1, *range(1, w.dim() - 1))


def _block_of(layer: nn.Module, name: str, config: PruneConfig) -> tuple[int, int]:
    mh, mw = _matrix(layer, layer.weight).shape
    if config.structure == "unstructured":
        return 1, 1
    if config.structure == "channel":
        return 1, mw
    br, bc = config.block  # type: ignore[misc]
    if getattr(layer, "transposed", False) or getattr(layer, "groups", 1) != 1:
        raise ValueError(
            f"block pruning of layer {name!r} ({type(layer).__name__}): grouped and "
            "transposed convolutions have no single MVAU matrix; use 'unstructured' or 'channel'"
        )
    if mh % br or mw % bc:
        raise ValueError(
            f"block {br}×{bc} does not divide layer {name!r}'s {mh}×{mw} weight matrix "
            f"(MH = output channels, MW = fan-in): rows must divide {mh}, cols {mw}"
        )
    return br, bc


def _blocks(m: Tensor, br: int, bc: int) -> Tensor:
    """[MH, MW] → [MH/br, MW/bc, br·bc]: the blocks' elements."""
    mh, mw = m.shape
    return m.reshape(mh // br, br, mw // bc, bc).permute(0, 2, 1, 3).reshape(mh // br, mw // bc, -1)


def _unblocks(b: Tensor, br: int, bc: int) -> Tensor:
    """[MH/br, MW/bc] per-block values → [MH, MW]."""
    return b.repeat_interleave(br, 0).repeat_interleave(bc, 1)


# ----------------------------------------------------------------- checks
def _has_zero(fmt: Format) -> bool:
    """Whether the format has a zero level (a pruned weight must stay exactly 0)."""
    if fmt.is_bipolar:
        return False
    if hasattr(fmt, "has_zero"):  # power-of-two codes: zero is optional
        return bool(fmt.has_zero)
    if fmt.is_minifloat or fmt.integer_codes:
        return True
    return 0.0 in fmt.levels()


def _maskable(m: nn.Module) -> bool:
    """Whether ``m`` is a hwquant weight layer, which holds a pruning mask."""
    return callable(getattr(m, "set_weight_mask", None))


def _check_layer(name: str, m: nn.Module) -> None:
    kind = kind_of(m)
    if kind is None or not kind.has_weight or getattr(m, "weight", None) is None:
        raise ValueError(f"layer {name!r} ({type(m).__name__}) has no weights to prune")
    if not _maskable(m):
        raise ValueError(
            f"layer {name!r} is a float {type(m).__name__}: pruning keeps its mask on "
            "hwquant's layers; quantize the model first (hwquant.quantize)"
        )
    wq = m.weight_quant
    if isinstance(wq, Quantizer) and not _has_zero(wq.spec.format):
        raise ValueError(
            f"layer {name!r}: weight format {wq.spec.format.name} has no zero level, so a "
            "pruned weight cannot stay 0; use a format with zero (e.g. narrow int, "
            "minifloat, PowerOfTwoFormat(has_zero=True))"
        )


def _targets(model: nn.Module, config: PruneConfig) -> dict[str, QuantWeightLayer]:
    modules = dict(model.named_modules())
    for n in (*config.layers, *config.exclude):
        if n not in modules:
            raise ValueError(f"PruneConfig names unknown module {n!r}")
    if config.layers:
        chosen = {n: modules[n] for n in config.layers}
    else:
        weighted = {
            n: m
            for n, m in modules.items()
            if (k := kind_of(m)) is not None and k.has_weight and k.accumulates
        }
        # layers kept in float are left alone, unless nothing else is there
        chosen = {n: m for n, m in weighted.items() if _maskable(m)} or weighted
    chosen = {n: m for n, m in chosen.items() if n not in config.exclude}
    if not chosen:
        raise ValueError("no weight layers to prune (Linear / Conv layers of hwquant)")
    for n, m in chosen.items():
        _check_layer(n, m)
    return chosen  # type: ignore[return-value]


# ----------------------------------------------------------------- pruning
def _scores(layer: QuantWeightLayer, br: int, bc: int) -> tuple[Tensor, Tensor]:
    """(mean |w| per block, block already pruned) over the MVAU matrix."""
    w = _matrix(layer, layer.weight.detach().abs().double())
    mask = layer.weight_mask
    keep = torch.ones_like(w, dtype=torch.bool) if mask is None else _matrix(layer, mask)
    score = _blocks(w, br, bc).mean(-1)
    dead = ~_blocks(keep, br, bc).any(-1)
    return score, dead


def _select(
    scores: list[Tensor], dead: list[Tensor], sizes: list[int], n_prune: int
) -> list[Tensor]:
    """Pruned-block masks: the blocks already pruned, then the smallest scores, as many
    as keep the pruned weights at most ``n_prune`` (pruned blocks never come back)."""
    flat_s = torch.cat(
        [torch.where(d, -1.0, s).flatten() for s, d in zip(scores, dead, strict=True)]
    )
    flat_n = torch.cat(
        [torch.full((s.numel(),), n, dtype=torch.long) for s, n in zip(scores, sizes, strict=True)]
    )
    order = torch.sort(flat_s, stable=True).indices
    cum = torch.cumsum(flat_n[order], 0)
    k = int((cum <= n_prune).sum())
    # already-pruned blocks stay pruned even if they alone exceed the target
    n_dead = int(sum(int(d.sum()) for d in dead))
    k = max(k, n_dead)
    pruned = torch.zeros_like(flat_s, dtype=torch.bool)
    pruned[order[:k]] = True
    out, i = [], 0
    for s in scores:
        out.append(pruned[i : i + s.numel()].reshape(s.shape))
        i += s.numel()
    return out


def _set_mask(layer: QuantWeightLayer, pruned_blocks: Tensor, br: int, bc: int) -> None:
    keep = _unblocks(~pruned_blocks, br, bc)
    layer.set_weight_mask(_unmatrix(layer, keep))


@register("prune", PruneConfig, needs_data=False)
def apply(model: nn.Module, data: Any = None, config: PruneConfig | None = None) -> PruneReport:
    """Magnitude pruning (unstructured, channels, or FINN PE×SIMD blocks); masks persist.

    >>> import torch
    >>> from hwquant.nn import QuantLinear
    >>> from hwquant.spec import W4, LayerSpec
    >>> layer = torch.nn.Sequential(QuantLinear(8, 4, spec=LayerSpec(weight=W4)))
    >>> r = apply(layer, None, PruneConfig(0.5, structure="block", block=(2, 4)))
    >>> r.layers[0].n_blocks_pruned, r.layers[0].n_blocks
    (2, 4)
    >>> apply(layer, None, PruneConfig(0.5, structure="block", block=(3, 4)))
    Traceback (most recent call last):
    ...
    ValueError: block 3×4 does not divide layer '0''s 4×8 weight matrix (MH = output channels, MW = fan-in): rows must divide 4, cols 8
    """
    config = config or PruneConfig()
    layers = _targets(model, config)
    shapes = {n: _block_of(m, n, config) for n, m in layers.items()}
    groups = [list(layers)] if config.scope == "global" else [[n] for n in layers]
    for names in groups:
        sc, dead = zip(*(_scores(layers[n], *shapes[n]) for n in names), strict=True)
        sizes = [math.prod(shapes[n]) for n in names]
        total = sum(layers[n].weight.numel() for n in names)
        chosen = _select(list(sc), list(dead), sizes, math.floor(config.fraction * total + 1e-9))
        for n, p in zip(names, chosen, strict=True):
            _set_mask(layers[n], p, *shapes[n])
    return _report(layers, shapes)


def _report(layers: dict[str, QuantWeightLayer], shapes: dict) -> PruneReport:
    rows = []
    for n, m in layers.items():
        br, bc = shapes[n]
        keep = _matrix(m, m.weight_mask)
        rows.append(
            LayerPrune(
                name=n,
                n_weights=keep.numel(),
                n_pruned=int((~keep).sum()),
                block=(br, bc),
                n_blocks=keep.numel() // (br * bc),
                n_blocks_pruned=int((~_blocks(keep, br, bc).any(-1)).sum()),
            )
        )
    total = sum(r.n_weights for r in rows)
    return PruneReport(layers=rows, pruned_fraction=sum(r.n_pruned for r in rows) / total)


# ----------------------------------------------------------------- helpers
def masks(model: nn.Module) -> dict[str, Tensor]:
    """The pruning masks of the model's layers (name → bool tensor, True = kept)."""
    return {
        n: m.weight_mask.clone()
        for n, m in model.named_modules()
        if _maskable(m) and getattr(m, "weight_mask", None) is not None
    }


def sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exactly-zero weights per hwquant weight layer (pruned or not).

    >>> from hwquant.nn import QuantLinear
    >>> from hwquant.spec import W4, LayerSpec
    >>> m = torch.nn.Sequential(QuantLinear(2, 2, spec=LayerSpec(weight=W4)))
    >>> m[0].set_weight_mask(torch.tensor([[True, False], [False, False]]))
    >>> sparsity(m)
    {'0': 0.75}
    """
    return {
        n: float((m.weight == 0).sum()) / m.weight.numel()
        for n, m in model.named_modules()
        if _maskable(m) and (k := kind_of(m)) is not None and k.has_weight
    }


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """A copy of the model's parameters (the initial weights for :func:`rewind`)."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@torch.no_grad()
def rewind(model: nn.Module, initial: dict[str, Tensor]) -> None:
    """Lottery-ticket rewinding: every parameter back to ``initial`` (from
    :func:`snapshot`), masks kept and re-applied, learned weight scales re-derived
    from the rewound weights."""
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(initial))
    if missing:
        raise ValueError(f"rewind: the snapshot has no parameter {missing[0]!r}")
    for n, p in params.items():
        p.copy_(initial[n])
    for m in model.modules():
        if _maskable(m):
            m.apply_weight_mask()


def schedule(
    final: float,
    steps: int,
    *,
    kind: str = "linear",
    initial: float = 0.0,
    per_step: float | None = None,
) -> list[float]:
    """Pruning fractions for an iterative schedule, one per pruning step.

    - ``kind="linear"``: ``per_step`` of the original weights per step (the study's
      ~10 %), capped at ``final``; ``steps`` is then ignored when ``per_step`` is given;
    - ``kind="geometric"``: the same share of the *remaining* weights per step, so
      that ``steps`` steps reach ``final`` (lottery-ticket style);
    - ``kind="polynomial"``: Zhu & Gupta (2017) cubic decay
      s_t = s_f + (s_i − s_f)·(1 − t/n)³, t = 1..n.

    >>> schedule(0.3, 0, per_step=0.1)
    [0.1, 0.2, 0.3]
    >>> [round(s, 3) for s in schedule(0.9, 3, kind="polynomial")]
    [0.633, 0.867, 0.9]
    """
    for name, v in (("final", final), ("initial", initial)):
        if not 0 <= v < 1:
            raise ValueError(f"schedule: {name} must be in [0, 1), got {v!r}")
    if kind == "linear" and per_step is not None:
        if not 0 < per_step < 1:
            raise ValueError(f"schedule: per_step must be in (0, 1), got {per_step!r}")
        n = math.ceil((final - initial) / per_step - 1e-9)
        return [min(final, initial + per_step * (t + 1)) for t in range(n)]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"schedule: steps must be a positive int, got {steps!r}")
    if kind == "linear":
        return [initial + (final - initial) * (t + 1) / steps for t in range(steps)]
    if kind == "geometric":
        r = ((1 - final) / (1 - initial)) ** (1 / steps)
        return [1 - (1 - initial) * r ** (t + 1) for t in range(steps)]
    if kind == "polynomial":
        return [final + (initial - final) * (1 - (t + 1) / steps) ** 3 for t in range(steps)]
    raise ValueError(f"schedule: kind must be 'linear', 'geometric' or 'polynomial', got {kind!r}")
