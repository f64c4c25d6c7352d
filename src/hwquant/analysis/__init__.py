"""Analysis: read models and report what they cost in hardware."""

from hwquant.analysis.accumulators import (
    AccumulatorReport,
    AuditRow,
    LayerAccumulator,
    accumulators,
    overflow_audit,
)
from hwquant.analysis.cost import (
    TARGETS,
    CostReport,
    LayerCost,
    LayerFolding,
    Target,
    cost,
    load_target,
)
from hwquant.analysis.efficiency import EfficiencyReport, aiq, neural_efficiency
from hwquant.analysis.integer_exec import IntegerRun, LayerStats, QTensor, run_integer
from hwquant.analysis.onnx_accumulators import onnx_accumulators, onnx_overflow_audit
from hwquant.analysis.plots import pareto_front, plot_cost, plot_pareto

__all__ = [
    "TARGETS",
    "AccumulatorReport",
    "AuditRow",
    "CostReport",
    "EfficiencyReport",
    "IntegerRun",
    "LayerAccumulator",
    "LayerCost",
    "LayerFolding",
    "LayerStats",
    "QTensor",
    "Target",
    "accumulators",
    "aiq",
    "cost",
    "load_target",
    "neural_efficiency",
    "onnx_accumulators",
    "onnx_overflow_audit",
    "overflow_audit",
    "pareto_front",
    "plot_cost",
    "plot_pareto",
    "run_integer",
]
