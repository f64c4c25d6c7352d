"""Analysis: read models and report what they cost in hardware."""

from hwquant.analysis.cost import (
    TARGETS,
    CostReport,
    LayerCost,
    LayerFolding,
    Target,
    cost,
    load_target,
)
from hwquant.analysis.plots import pareto_front, plot_cost, plot_pareto

__all__ = [
    "TARGETS",
    "CostReport",
    "LayerCost",
    "LayerFolding",
    "Target",
    "cost",
    "load_target",
    "pareto_front",
    "plot_cost",
    "plot_pareto",
]
