"""PTQ of the digits CNN at low weight precision: round-to-nearest against each PTQ
algorithm, for integer and minifloat weight formats.

The float model is trained once (BatchNorm folded) and cached under ``runs/ptq``;
every point starts from it, with seed 0. Weights have a max-statistics scale, per
channel (or per tensor with ``--per-tensor``), so the only difference between the
columns of a row is how the codes (and biases, and channel ranges) are chosen. A
column is one algorithm or a ``+``-joined pipeline (``equalize+bias_correction``):
data-free weight transforms (equalize) run first, then the activation quantizers
are calibrated on the same 512 training images for every column, then the
data-driven algorithms. Each point reports test accuracy on the 360 held-out images
and the output SQNR (dB) against the float model on them.

Run: ``python examples/ptq/digits_ptq.py [--algorithms gptq,adaround] [--per-tensor]
[--act-bits 8] [--json out.json]``; ``--tables`` runs every table of
``digits_tables.md`` and writes it with ``digits_results.json``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

import hwquant
from hwquant.algorithms import get, pipeline
from hwquant.analysis.sqnr import sqnr_db
from hwquant.datasets import digits
from hwquant.spec import (
    A8,
    FP4_E2M1,
    PER_TENSOR,
    IntFormat,
    MinifloatFormat,
    QuantSpec,
    Recipe,
    ScaleSpec,
    per_channel,
)
from hwquant.sweep.models import float_model as float_model_file
from hwquant.sweep.models import float_model_path
from hwquant.training import evaluate

FORMATS = {
    "INT3": IntFormat(3, narrow=True),
    "INT4": IntFormat(4, narrow=True),
    "FP3_E2M0": MinifloatFormat(2, 0),
    "FP4_E2M1": FP4_E2M1,
}
ALGORITHMS = "gptq,adaround,bias_correction,equalize,equalize+bias_correction,gptq+bias_correction"
HERE = Path(__file__).resolve().parent


def float_model(cache: Path) -> torch.nn.Module:
    """The trained float DigitsCNN (BatchNorm folded): the sweep's ``digits-cnn``
    model, trained once and cached in ``cache``."""
    return float_model_file(str(float_model_path("digits-cnn", cache)))


def quantized(base, fmt, granularity, act_bits: int) -> torch.nn.Module:
    """``base`` with ``fmt`` weights (max scale) and ``act_bits``-bit integer activations."""
    spec = QuantSpec(fmt, granularity, ScaleSpec("max"))
    act = A8 if act_bits == 8 else dataclasses.replace(A8, format=IntFormat(act_bits))
    m = hwquant.quantize(copy.deepcopy(base), Recipe.uniform(weights=spec, activations=act))
    return m.eval()


def run_steps(m, steps: list[str], calib) -> None:
    """Data-free steps (equalize), activation calibration, then the data-driven steps."""
    free = [s for s in steps if not get(s).needs_data]
    pipeline(m, None, free)
    with hwquant.calibration(m):  # activations on the same data for every column
        for x in calib:
            m(x)
    pipeline(m, calib, [s for s in steps if get(s).needs_data])


def point(base, fmt, column: str, data, calib, granularity, act_bits: int = 8) -> dict:
    """One cell: ``column`` ("rtn" or algorithms joined by "+") at one format."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    m = quantized(base, fmt, granularity, act_bits)
    run_steps(m, [] if column == "rtn" else column.split("+"), calib)
    x = data.test.dataset.tensors[0]
    with torch.no_grad():
        sqnr = sqnr_db(base(x), m(x))
    return {
        "accuracy": evaluate(m, data.test),
        "sqnr_db": sqnr,
        "seconds": time.perf_counter() - t0,
        "model": m,
    }


def table(base, data, calib, columns, *, per_tensor=False, act_bits=8, formats=FORMATS) -> dict:
    """{format: {column: {accuracy, sqnr_db, seconds}}}, printed row by row."""
    g = PER_TENSOR if per_tensor else per_channel(0)
    rows: dict[str, dict] = {}
    for fname in formats:
        rows[fname] = {}
        for col in ["rtn", *columns]:
            r = point(base, FORMATS[fname], col, data, calib, g, act_bits)
            r.pop("model")
            rows[fname][col] = r
        cells = "  ".join(
            f"{k} {v['accuracy']:.4f} ({v['sqnr_db']:.1f} dB)" for k, v in rows[fname].items()
        )
        print(f"W{fname} A{act_bits}{' per-tensor' if per_tensor else ''}: {cells}", flush=True)
    return rows


def reproducible(base, data, calib, algorithm: str, fname: str = "INT3") -> bool:
    """Two runs of ``algorithm`` with the same seed give identical weights and biases."""
    runs = [point(base, FORMATS[fname], algorithm, data, calib, per_channel(0)) for _ in range(2)]
    a, b = (r["model"].state_dict() for r in runs)
    same = [torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a]
    return a.keys() == b.keys() and all(same)


TABLES = [  # (title, per_tensor, act_bits, formats)
    ("Per-channel weights, A8", False, 8, tuple(FORMATS)),
    ("Per-tensor weights, A8", True, 8, tuple(FORMATS)),
    ("Per-channel weights, A4", False, 4, ("INT4", "FP4_E2M1")),
]


def markdown(results: dict, columns: list[str]) -> str:
    """The tables of ``digits_tables.md``."""
    cols = ["rtn", *columns]
    lines = [
        "# Digits CNN: round-to-nearest vs PTQ algorithms",
        "",
        f"Run: `{results['command']}` on {results['machine']} "
        f"({results['threads']} threads), seed 0, {results['seconds']:.0f} s in all "
        f"(median {results['median_point_seconds']:.1f} s, max "
        f"{results['max_point_seconds']:.1f} s per point).",
        "",
        f"Float model: test accuracy {results['float_accuracy']:.4f} on "
        f"{results['test_images']} test images. Cells: test accuracy / output SQNR (dB) "
        "vs the float model; **bold**: SQNR above round-to-nearest's.",
        "",
    ]
    for title, rows in results["tables"].items():
        lines += [f"## {title}", "", "| weights | " + " | ".join(cols) + " |"]
        lines.append("|" + "---|" * (len(cols) + 1))
        for fname, row in rows.items():
            ref = row["rtn"]["sqnr_db"]
            cells = []
            for c in cols:
                text = f"{row[c]['accuracy']:.4f} / {row[c]['sqnr_db']:.2f}"
                cells.append(f"**{text}**" if c != "rtn" and row[c]["sqnr_db"] > ref else text)
            lines.append(f"| {fname} | " + " | ".join(cells) + " |")
        lines.append("")
    rep = results["reproducible"]
    lines.append(
        "Reproducibility (INT3 per channel, A8, seed 0, two runs in one process, all "
        "weights and biases compared with `torch.equal`): "
        + ", ".join(f"{k}: {'identical' if v else 'DIFFERENT'}" for k, v in rep.items())
        + "."
    )
    return "\n".join(lines) + "\n"


def _machine() -> str:
    """CPU model name (Linux) or the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.machine()


def all_tables(base, data, calib, float_acc: float, command: str) -> None:
    columns = ALGORITHMS.split(",")
    t0 = time.perf_counter()
    results: dict = {
        "command": command,
        "machine": _machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "float_accuracy": float_acc,
        "test_images": len(data.test.dataset),
        "tables": {},
    }
    for title, per_tensor, act_bits, formats in TABLES:
        results["tables"][title] = table(
            base, data, calib, columns, per_tensor=per_tensor, act_bits=act_bits, formats=formats
        )
    results["reproducible"] = {a: reproducible(base, data, calib, a) for a in ("gptq", "adaround")}
    results["seconds"] = time.perf_counter() - t0
    secs = sorted(
        c["seconds"] for t in results["tables"].values() for r in t.values() for c in r.values()
    )
    results["median_point_seconds"] = secs[len(secs) // 2]
    results["max_point_seconds"] = secs[-1]
    (HERE / "digits_results.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / "digits_tables.md").write_text(markdown(results, columns))
    print(markdown(results, columns))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algorithms", default=ALGORITHMS, help="comma-separated columns; + joins")
    p.add_argument("--json")
    p.add_argument("--cache", type=Path, default=Path("runs/ptq"))
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per layer")
    p.add_argument("--act-bits", type=int, default=8, help="integer activation bits")
    p.add_argument("--tables", action="store_true", help="every table, to digits_tables.md")
    a = p.parse_args()
    data = digits(seed=0)
    base = float_model(a.cache)
    calib = list(data.calibration_batch(512).split(128))
    float_acc = evaluate(base, data.test)
    print(f"float {float_acc:.4f}")
    if a.tables:
        all_tables(base, data, calib, float_acc, "python examples/ptq/digits_ptq.py --tables")
        return
    columns = a.algorithms.split(",")
    rows = table(base, data, calib, columns, per_tensor=a.per_tensor, act_bits=a.act_bits)
    if a.json:
        Path(a.json).write_text(json.dumps({"float": float_acc, "points": rows}, indent=2))


if __name__ == "__main__":
    main()
