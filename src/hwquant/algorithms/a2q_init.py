"""Model transforms for accumulator-aware (A2Q / A2Q+) layers: Euclidean-projection
initialization from float weights (A2Q+ paper, REFERENCE.md §2) and thawing frozen
PTQ codes for QAT (after :mod:`hwquant.algorithms.a2q_ptq`).

>>> import hwquant
>>> from hwquant.models import MLP
>>> from hwquant.spec import A2Q, A8U, IntFormat, Recipe
>>> m = hwquant.quantize(MLP((16, 8)), Recipe.uniform(A2Q(IntFormat(4), accumulator_bits=12), A8U))
>>> ep_init(m)
['layers.0']
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from hwquant.algorithms.common import register
from hwquant.nn.a2q import ep_init, unfreeze

__all__ = ["EPInitConfig", "EPInitReport", "apply", "ep_init", "unfreeze"]


@dataclass(frozen=True)
class EPInitConfig:
    """No options: the projection is defined by each layer's A2Q spec."""


@dataclass
class EPInitReport:
    layers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"layers": self.layers}


@register("a2q_ep_init", EPInitConfig, needs_data=False)
def apply(model: nn.Module, data=None, config: EPInitConfig | None = None) -> EPInitReport:
    """Euclidean-projection init of every A2Q / A2Q+ layer from its float weights (no data).

    ``data`` and ``config`` are unused (the signature every algorithm shares)."""
    return EPInitReport(ep_init(model))
