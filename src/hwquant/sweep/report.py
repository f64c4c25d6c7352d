"""What a finished sweep says: the Pareto front of accuracy against LUTs (each front
point exported to QONNX and verified against qonnx's executor), heatmaps of the best
accuracy per family, and the integer-vs-minifloat comparison in numbers.

>>> rows = [{"model": "m", "family": "int", "w_bits": 4, "a_bits": 4, "accuracy": 0.9,
...          "luts": 10, "weights": "INT4n", "acts": "INT4", "key": "a"},
...         {"model": "m", "family": "fp", "w_bits": 4, "a_bits": 4, "accuracy": 0.95,
...          "luts": 20, "weights": "FP4_E2M1", "acts": "FP4_E2M1", "key": "b"}]
>>> [r["key"] for r in front(rows, "m")]
['a', 'b']
>>> comparison(rows, "m")["cells"]
[{'w_bits': 4, 'a_bits': 4, 'int': 0.9, 'fp': 0.95, 'winner': 'fp'}]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hwquant.sweep.point import Settings, point_model
from hwquant.sweep.space import Point

__all__ = ["best_cells", "comparison", "export_front", "front", "plot", "write_summary"]

_FP = ("fp", "fp-nosub")


def _of(rows: Sequence[dict], model: str) -> list[dict]:
    return [r for r in rows if r["model"] == model]


def front(rows: Sequence[dict], model: str) -> list[dict]:
    """The Pareto-optimal rows of ``model`` (fewest LUTs for their test accuracy)."""
    from hwquant.analysis.plots import pareto_front

    mine = _of(rows, model)
    return [mine[i] for i in pareto_front(mine, "luts", "accuracy")]


def best_cells(
    rows: Sequence[dict], model: str, families: Sequence[str], key: str = "accuracy"
) -> dict:
    """(w_bits, a_bits) → the row among ``families`` with the highest ``key``
    (ties: fewer LUTs)."""
    cells: dict[tuple[int, int], dict] = {}
    for r in _of(rows, model):
        if r["family"] not in families:
            continue
        k = (r["w_bits"], r["a_bits"])
        if k not in cells or (r[key], -r["luts"]) > (cells[k][key], -cells[k]["luts"]):
            cells[k] = r
    return cells


def comparison(rows: Sequence[dict], model: str, key: str = "accuracy") -> dict[str, Any]:
    """Best integer vs best minifloat (any ExMy, with or without subnormals) ``key``
    (test accuracy, or ``test_sqnr_db``) in every (weight bits, activation bits) cell,
    the tally, and which families are on the accuracy-vs-LUTs front."""
    ints, fps = best_cells(rows, model, ["int"], key), best_cells(rows, model, _FP, key)
    cells = []
    for k in sorted(set(ints) & set(fps)):
        i, f = ints[k][key], fps[k][key]
        winner = "fp" if f > i else "int" if i > f else "tie"
        cells.append({"w_bits": k[0], "a_bits": k[1], "int": i, "fp": f, "winner": winner})
    tally = {w: sum(c["winner"] == w for c in cells) for w in ("fp", "int", "tie")}
    on_front = [r["family"] for r in front(rows, model)]
    return {
        "cells": cells,
        "tally": tally,
        "front_families": {fam: on_front.count(fam) for fam in sorted(set(on_front))},
    }


def plot(rows: Sequence[dict], model: str, out: str | Path) -> list[Path]:
    """``<model>_heatmaps.png`` (best test accuracy per family and cell),
    ``<model>_sqnr_heatmaps.png`` (best output SQNR) and ``<model>_pareto.png``."""
    from hwquant.analysis.plots import plot_heatmaps, plot_pareto

    out = Path(out)
    mine = _of(rows, model)
    families = [f for f in ("int", "fp", "fp-nosub") if any(r["family"] == f for r in mine)]
    panels: dict[str, dict] = {"accuracy": {}, "test_sqnr_db": {}}
    for key, cells in panels.items():
        for fam in families:
            best = best_cells(rows, model, [fam], key)
            cells[fam] = {
                k: (r[key], _short(r["weights"], r["acts"], fam)) for k, r in best.items()
            }
    pts = [
        dict(r, label=f"W{_short(r['weights'], '', '')}A{_short('', r['acts'], '')}") for r in mine
    ]
    return [
        plot_heatmaps(panels["accuracy"], out / f"{model}_heatmaps.png", f"{model}: best test accuracy"),
        plot_heatmaps(panels["test_sqnr_db"], out / f"{model}_sqnr_heatmaps.png",
                      f"{model}: best output SQNR vs float (dB, test)", "SQNR dB"),
        plot_pareto(pts, out / f"{model}_pareto.png", "luts", "accuracy", f"{model}: accuracy vs LUTs",
                    group_key="family", label_front_only=True),
    ]  # fmt: skip


def _short(w: str, a: str, family: str) -> str:
    """``E2M1/E3M0`` for minifloats (the exponent/mantissa split), ``''`` for ints."""

    def one(name: str) -> str:
        if "_E" not in name:
            return name.replace("INT", "").replace("n", "")
        return name.split("_", 1)[1].replace("_nosub", "").replace("_ocp", "*")

    if family == "int":
        return ""
    return "/".join(one(x) for x in (w, a) if x)


def export_front(
    rows: Sequence[dict], points: Sequence[Point], settings: Settings, out: str | Path
) -> list[dict]:
    """Export every Pareto point of every model to QONNX and verify it against qonnx's
    executor on the test images; returns one record per point (written to
    ``pareto.json``)."""
    from hwquant.export import to_qonnx, verify
    from hwquant.sweep.models import sweep_data

    out = Path(out)
    by_key = {p.key: p for p in points}
    x = sweep_data(settings.seed).test.dataset.tensors[0]
    records = []
    for model in sorted({r["model"] for r in rows}):
        for r in front(rows, model):
            q = point_model(by_key[r["key"]], settings, r["best"])
            path = out / "pareto" / (r["key"].replace("/", "__") + ".onnx")
            path.parent.mkdir(parents=True, exist_ok=True)
            to_qonnx(q, x[:1], path, dynamic_batch=True)
            v = verify(q, path, x, backends=("qonnx",)).to_dict()
            qonnx = next(b for b in v["results"] if b["backend"] == "qonnx")
            records.append({
                "key": r["key"], "accuracy": r["accuracy"], "luts": r["luts"], "best": r["best"],
                "onnx": str(path), "verified": v["passed"], "mismatched": qonnx["mismatched"],
                "max_steps": qonnx["max_steps"], "note": qonnx["note"],
            })  # fmt: skip
    (out / "pareto.json").write_text(json.dumps(records, indent=1))
    return records


def write_summary(rows: Sequence[dict], out: str | Path) -> dict[str, Any]:
    """``summary.json``: per model the comparison by accuracy and by SQNR, and the
    Pareto front."""
    summary = {
        m: {
            "accuracy": comparison(rows, m),
            "test_sqnr_db": comparison(rows, m, "test_sqnr_db"),
            "front": [r["key"] for r in front(rows, m)],
        }
        for m in sorted({r["model"] for r in rows})
    }
    Path(out, "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
