"""Analysis: read models and report what they cost in hardware."""

from hwquant.analysis.cost import CostReport, LayerCost, LayerFolding, Target, cost, load_target

__all__ = ["CostReport", "LayerCost", "LayerFolding", "Target", "cost", "load_target"]
