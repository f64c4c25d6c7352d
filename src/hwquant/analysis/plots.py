"""PNG plots of cost reports (matplotlib, Agg backend; imported lazily).

- :func:`plot_cost`: per-layer stacked bars of the LUT estimate's terms and of the
  memory (weights, input activations);
- :func:`plot_pareto`: accuracy against a cost for sweep results, with the Pareto
  front (no other point is both cheaper and at least as accurate);
- :func:`plot_heatmaps`: a value (accuracy) over weight bits × activation bits, one
  panel per format family.

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

__all__ = ["pareto_front", "plot_cost", "plot_heatmaps", "plot_pareto"]

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
    group_key: str | None = None,
    label_front_only: bool = False,
) -> Path:
    """Accuracy vs ``cost_key`` for sweep points (dicts with ``label``), with the front;
    points with ``"fits": false`` (over the target's budget) are drawn as crosses.
    ``group_key``: colour points by that field (e.g. the format family);
    ``label_front_only``: write labels on the Pareto points only (large sweeps)."""
    front = pareto_front(points, cost_key, acc_key)
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4.2) if group_key else (5, 3.6), dpi=90)
    groups = sorted({str(p.get(group_key)) for p in points}) if group_key else [None]
    colors = dict(zip(groups, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for g in groups:
        for fits, marker in ((True, "o"), (False, "x")):
            sel = [
                p
                for p in points
                if bool(p.get("fits", True)) == fits and (g is None or str(p.get(group_key)) == g)
            ]
            if sel:
                name = "over budget" if not fits else g
                ax.scatter(
                    [p[cost_key] for p in sel],
                    [p[acc_key] for p in sel],
                    color=colors[g] if g is not None else "tab:gray",
                    marker=marker,
                    s=14 if group_key else None,
                    alpha=0.6 if group_key else 1.0,
                    label=name if (g is not None or not fits) else None,
                    zorder=3,
                )
    ax.step(
        [points[i][cost_key] for i in front],
        [points[i][acc_key] for i in front],
        where="post",
        c="tab:red",
        marker="o",
        mfc="none",
        label="Pareto front",
        zorder=4,
    )
    on_front = set(front)
    for i, p in enumerate(points):
        if label_front_only and i not in on_front:
            continue
        ax.annotate(
            str(p.get("label", "")),
            (p[cost_key], p[acc_key]),
            fontsize=6 if label_front_only else 7,
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


def plot_heatmaps(
    panels: Mapping[str, Mapping[tuple[int, int], tuple[float, str]]],
    path: str | Path,
    title: str | None = None,
    value_name: str = "accuracy",
) -> Path:
    """One heatmap per panel (e.g. per format family): rows weight bits, columns
    activation bits; each cell ``(value, text)`` shows the value and a short text (the
    winning format). Missing cells stay blank. Colours share one scale."""
    plt = _pyplot()
    import numpy as np

    cells = [k for panel in panels.values() for k in panel]
    if not cells:
        raise ValueError("no heatmap cells to plot")
    wbs = sorted({w for w, _ in cells})
    abs_ = sorted({a for _, a in cells})
    values = [v for panel in panels.values() for v, _ in panel.values()]
    lo, hi = min(values), max(values)
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(3.6 * len(panels) + 0.8, 3.8),
        dpi=90,
        squeeze=False,
        layout="constrained",
    )
    for ax, (name, panel) in zip(axes[0], panels.items(), strict=True):
        grid = np.full((len(wbs), len(abs_)), np.nan)
        for (w, a), (v, _) in panel.items():
            grid[wbs.index(w), abs_.index(a)] = v
        im = ax.imshow(grid, origin="lower", cmap="viridis", vmin=lo, vmax=hi, aspect="auto")
        for (w, a), (v, text) in panel.items():
            ax.text(abs_.index(a), wbs.index(w), f"{v:.3f}\n{text}", ha="center", va="center",
                    fontsize=6, color="white" if v < (lo + hi) / 2 else "black")  # fmt: skip
        ax.set_xticks(range(len(abs_)), [str(a) for a in abs_])
        ax.set_yticks(range(len(wbs)), [str(w) for w in wbs])
        ax.set_xlabel("activation bits")
        ax.set_ylabel("weight bits")
        ax.set_title(name, fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=value_name)
    if title:
        fig.suptitle(title, fontsize=10)
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
