"""PNG plots of cost reports (matplotlib, Agg backend; imported lazily).

- :func:`plot_cost`: per-layer stacked bars of the LUT estimate's terms and of the
  memory (weights, input activations);
- :func:`plot_pareto`: accuracy against a cost for sweep results, with the Pareto
  front (no other point is both cheaper and at least as accurate).

Example:
    >>> pts = [{"label": "W8A8", "luts": 9e4, "accuracy": 0.97},
    ...        {"label": "W4A4", "luts": 3e4, "accuracy": 0.96},
    ...        {"label": "W4A8", "luts": 5e4, "accuracy": 0.95}]
    >>> pareto_front(pts, "luts", "accuracy")
    [1, 0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hwquant.analysis.cost.report import CostReport

__all__ = ["pareto_front", "plot_cost", "plot_pareto"]

_LUT_TERMS = ("base", "mult", "addertree", "acc", "thresholds", "weights")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_cost(report: CostReport | Mapping, path: str | Path, title: str | None = None) -> Path:
    """Per-layer stacked bars: LUTs by term (left) and memory in kbit (right)."""
    d = report.to_dict() if isinstance(report, CostReport) else report
    layers = d["layers"]
    names = [lc["name"] for lc in layers]
    x = range(len(layers))
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    fig, (ax_l, ax_m) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90)
    bottom = [0.0] * len(layers)
    for term in _LUT_TERMS:
        vals = [lc["lut_breakdown"][term] for lc in layers]
        ax_l.bar(x, vals, bottom=bottom, label=term)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax_l.set_title(f"LUTs (total {d['luts']:,}; {d['dsps']} DSP, {d['bram18']} BRAM18)", fontsize=9)
    ax_l.legend(fontsize=7)
    ax_l.yaxis.set_major_formatter(FuncFormatter(_si))
    w = [lc["weight_memory_bits"] / 1e3 for lc in layers]
    a = [lc["activation_memory_bits"] / 1e3 for lc in layers]
    ax_m.bar(x, w, label="weights")
    ax_m.bar(x, a, bottom=w, label="input activations")
    ax_m.set_title("memory (kbit)", fontsize=9)
    ax_m.legend(fontsize=7)
    for ax in (ax_l, ax_m):
        ax.set_xticks(list(x), names, rotation=30, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    over = [r["resource"] for r in d["resources"] if not r["fits"]]
    verdict = "fits" if not over else "over budget: " + ", ".join(over)
    fig.suptitle(f"{title} ({verdict})" if title else verdict, fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path)


def pareto_front(points: Sequence[Mapping], cost_key: str, acc_key: str = "accuracy") -> list[int]:
    """Indices of the Pareto-optimal points (lowest cost for their accuracy), by
    increasing cost: a point is kept when every cheaper-or-equal point is less accurate.
    Points marked ``"fits": false`` (over the target's budget) cannot be built and are
    never on the front.

    >>> pareto_front([{"luts": 1, "accuracy": 0.5}, {"luts": 2, "accuracy": 0.9, "fits": False}], "luts")
    [0]
    """
    for i, p in enumerate(points):
        for key in (cost_key, acc_key):
            if key not in p:
                raise ValueError(f"sweep point {i} has no {key!r} field")
    feasible = [i for i, p in enumerate(points) if bool(p.get("fits", True))]
    order = sorted(feasible, key=lambda i: (points[i][cost_key], -points[i][acc_key]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][acc_key] > best:
            front.append(i)
            best = points[i][acc_key]
    return front


def plot_pareto(
    points: Sequence[Mapping],
    path: str | Path,
    cost_key: str = "luts",
    acc_key: str = "accuracy",
    title: str | None = None,
) -> Path:
    """Accuracy vs ``cost_key`` for sweep points (dicts with ``label``), with the front;
    points with ``"fits": false`` (over the target's budget) are drawn as crosses."""
    front = pareto_front(points, cost_key, acc_key)
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=90)
    for fits, marker, label in ((True, "o", None), (False, "x", "over budget")):
        sel = [p for p in points if bool(p.get("fits", True)) == fits]
        if sel:
            ax.scatter(
                [p[cost_key] for p in sel],
                [p[acc_key] for p in sel],
                c="tab:gray",
                marker=marker,
                label=label,
                zorder=3,
            )
    ax.step(
        [points[i][cost_key] for i in front],
        [points[i][acc_key] for i in front],
        where="post",
        c="tab:red",
        marker="o",
        label="Pareto front",
    )
    for p in points:
        ax.annotate(
            str(p.get("label", "")),
            (p[cost_key], p[acc_key]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.xaxis.set_major_formatter(FuncFormatter(_si))
    ax.set_xlabel(cost_key)
    ax.set_ylabel(acc_key)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path)


def _si(v: float, _pos: object = None) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:g}{suffix}"
    return f"{v:g}"


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
