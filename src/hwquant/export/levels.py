"""Check that every exported power-of-two / APoT / MSQ weight really is a level.

A level-format weight is exported as an integer ``Quant`` on its codes
(:func:`hwquant.export.ops.quant.emit_levels`), tagged with ``hwquant.levels``
metadata. :func:`check_levels` reads each tagged node back from the graph alone: its
constant input x and scale s' must give integers m = x/s' (on the grid), and every
|m| must be an allowed magnitude of its row — the format's (PoT: 2^k; APoT / SP2: the
two-term sums) or, for MSQ fixed-point rows (row multiplier Q ≠ the format's), 0..Q.

Example:
    >>> import tempfile, torch, hwquant
    >>> from hwquant.models import MLP
    >>> from hwquant.spec import A8, MSQFormat, PoTWeight, Recipe
    >>> m = hwquant.quantize(MLP((16, 8, 4)), Recipe.uniform(PoTWeight(MSQFormat(4)), A8))
    >>> _ = m(torch.randn(32, 16))
    >>> path = hwquant.export.to_qonnx(m.eval(), torch.randn(1, 16), tempfile.mkdtemp() + "/m.onnx")
    >>> [(c.format, c.n_weights, c.ok) for c in check_levels(path)]
    [('MSQ4', 128, True), ('MSQ4', 32, True)]
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from hwquant.export.ops.base import PATH_KEY
from hwquant.export.ops.quant import LEVELS_KEY

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["LevelCheck", "check_levels"]


@dataclass(frozen=True)
class LevelCheck:
    """One exported level-format weight: how many of its values are off the integer
    grid of its Quant node, and how many integer codes are not allowed levels."""

    node: str
    module: str
    format: str
    n_weights: int
    off_grid: int
    off_level: int

    @property
    def ok(self) -> bool:
        return self.off_grid == 0 and self.off_level == 0

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def check_levels(model: onnx.ModelProto | str | os.PathLike) -> list[LevelCheck]:
    """A :class:`LevelCheck` per ``Quant`` node tagged ``hwquant.levels`` (a graph or
    a path to one); ``ValueError`` when a tagged node's weight or scale is not a
    constant."""
    import onnx
    from onnx import numpy_helper

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    out = []
    for node in proto.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        if LEVELS_KEY not in props:
            continue
        scheme = json.loads(props[LEVELS_KEY])
        x, s = inits.get(node.input[0]), inits.get(node.input[1])
        if x is None or s is None:
            raise ValueError(f"{node.name}: its weight or scale is not a constant")
        out.append(_check(node.name, props.get(PATH_KEY, ""), scheme, x, s))
    return out


def _check(name: str, module: str, scheme: dict, x: np.ndarray, s: np.ndarray) -> LevelCheck:
    v = x.astype(np.float64) / s.astype(np.float64)
    m = np.round(v)
    off_grid = int((np.abs(v - m) > 1e-3).sum())
    a = np.abs(m).astype(np.int64)
    rows = a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1)
    mults = scheme["row_multipliers"] or [scheme["code_multiplier"]]
    mags = np.asarray(scheme["magnitudes"], dtype=np.int64)
    off_level = 0
    for r in range(rows.shape[0]):
        d = mults[r] if len(mults) == rows.shape[0] else mults[0]
        allowed = mags if d == scheme["code_multiplier"] else np.arange(d + 1)  # MSQ fixed
        off_level += int((~np.isin(rows[r], allowed)).sum())
    return LevelCheck(name, module, scheme["format"], int(x.size), off_grid, off_level)
