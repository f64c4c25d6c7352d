"""``hwquant cost MODEL``: hardware cost of a QONNX file or a hwquant checkpoint.

Prints a per-layer table (or ``--json``), optionally writes ``--plot`` PNGs; with
``--sweep`` (a JSON list of ``{"label", "accuracy", <cost>...}``) also the accuracy
vs cost plot with its Pareto front. ``--input-shape`` (checkpoints) takes the batch
dimension first, as every ``hwquant`` command.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from hwquant.cli.common import (
    INPUT_SHAPE_HELP,
    Subparsers,
    add_factory_option,
    check_shape_convention,
    input_shape,
    parse_shape,
)

if TYPE_CHECKING:  # pragma: no cover
    from hwquant.analysis import CostReport

__all__ = ["add_parser", "parse_folding", "parse_shape", "run"]


def parse_folding(items: list[str] | None) -> dict[str, tuple[int, int]]:
    """``["conv1=4,9"]`` → {"conv1": (4, 9)} (PE, SIMD)."""
    out = {}
    for item in items or []:
        name, sep, rest = item.partition("=")
        parts = rest.replace("x", ",").split(",")
        if not sep or len(parts) != 2:
            raise ValueError(f"--fold must look like LAYER=PE,SIMD, got {item!r}")
        try:
            out[name] = (int(parts[0]), int(parts[1]))
        except ValueError:
            raise ValueError(f"--fold PE and SIMD must be ints, got {item!r}") from None
    return out


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("cost", help="FPGA cost estimate (LUT/DSP/BRAM, BOPs, accumulators)")
    p.add_argument("model", type=Path, help="a QONNX file (.onnx) or a hwquant checkpoint (.pt)")
    p.add_argument("--input-shape", type=input_shape, default=None, help=INPUT_SHAPE_HELP)
    p.add_argument(
        "--target",
        default="generic",
        help="built-in target (generic, pynq-z2, zcu104, vck190) or a TOML file",
    )
    p.add_argument(
        "--fold",
        action="append",
        metavar="LAYER=PE,SIMD",
        help="explicit folding of one layer (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", type=Path, default=None, help="write a per-layer PNG here")
    p.add_argument(
        "--sweep",
        type=Path,
        default=None,
        help="JSON list of sweep points (label, accuracy, costs) for a Pareto plot",
    )
    p.add_argument("--pareto-cost", default="luts", help="cost field of the Pareto plot")
    p.add_argument(
        "--check",
        action="store_true",
        help="exit with status 1 when the design does not fit the target",
    )
    add_factory_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hwquant.analysis import cost

    points = _read_sweep(args.sweep, args.pareto_cost) if args.sweep is not None else None
    if points is not None and args.plot is None:
        raise ValueError("--sweep needs --plot (the Pareto plot is written beside it)")
    folding = parse_folding(args.fold)
    shape, model = args.input_shape, args.model
    if args.factory:  # the model file names the user's own builder
        from hwquant.checkpoint import load_checkpoint

        model, stored = load_checkpoint(args.model, factory=args.factory)
        check_shape_convention(shape, stored)
        shape = shape or stored
    report = cost(model, shape, target=args.target, folding=folding)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _print_table(report)
    if args.plot is not None:
        _plots(report, args.plot, points, args)
    return 1 if args.check and not report.fits else 0


def _read_sweep(path: Path, cost_key: str) -> list[dict]:
    """The sweep points: a non-empty JSON list of objects with numbers under
    ``accuracy`` and ``cost_key``."""
    try:
        points = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read sweep results {path}: {e}") from None
    if not isinstance(points, list) or not points:
        raise ValueError(f"{path}: expected a non-empty JSON list of sweep points")
    for i, p in enumerate(points):
        if not isinstance(p, dict):
            raise ValueError(
                f"{path}: sweep point {i} is {json.dumps(p)}, not an object with "
                f"'accuracy' and {cost_key!r}"
            )
        for key in ("accuracy", cost_key):
            v = p.get(key)
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(f"{path}: sweep point {i} has no number {key!r} (got {v!r})")
    return points


def _plots(
    report: CostReport, plot: Path, points: list[dict] | None, args: argparse.Namespace
) -> None:
    from hwquant.analysis.plots import plot_cost, plot_pareto

    title = f"{report.source} on {report.target['name']}"
    pareto = plot.with_name(plot.stem + "_pareto.png")
    try:
        written = [plot_cost(report, plot, title=title)]
        if points is not None:
            written.append(plot_pareto(points, pareto, cost_key=args.pareto_cost))
    except OSError as e:
        where = e.filename if e.filename is not None else plot
        raise ValueError(f"cannot write plot {where}: {e.strerror or e}") from None
    if not args.json:
        print("plots: " + ", ".join(str(p) for p in written))


def _print_table(report: CostReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    t = Table(
        title=f"hwquant cost: {report.source} on {report.target['name']} "
        f"({report.target['device_family']}, {report.target['toolchain']})"
    )
    for col in (
        "layer",
        "op",
        "MW×MH×pix",
        "input",
        "weight",
        "out",
        "PE×SIMD",
        "cycles",
        "LUT",
        "DSP",
        "BRAM18",
        "acc dt/ex/used",
        "kBOPs qonnx",
        "kBOPs PsQs",
        "mem kbit",
    ):
        t.add_column(col, justify="left" if col in ("layer", "op") else "right", no_wrap=True)
    for lc in report.layers:
        acc = lc.accumulator
        t.add_row(
            lc.name,
            lc.op,
            f"{lc.MW}×{lc.MH}×{lc.n_pix}",
            lc.input_format,
            lc.weight_format,
            str(lc.out_bits or "-"),
            f"{lc.pe}×{lc.simd}",
            f"{lc.cycles:,}",
            f"{lc.luts:,}",
            str(lc.dsps),
            str(lc.bram18),
            f"{acc.datatype or '-'}/{acc.exact or '-'}/{acc.used}",
            f"{lc.bops_qonnx / 1e3:,.1f}",
            f"{lc.bops_psqs / 1e3:,.1f}",
            f"{(lc.weight_memory_bits + lc.activation_memory_bits) / 1e3:,.1f}",
        )
    t.add_row(
        "total",
        f"{report.macs:,} MACs",
        "",
        "",
        "",
        "",
        "",
        f"{report.cycles_per_frame:,}",
        f"{report.luts:,}",
        str(report.dsps),
        str(report.bram18),
        "",
        f"{report.bops_qonnx / 1e3:,.1f}",
        f"{report.bops_psqs / 1e3:,.1f}",
        f"{(report.weight_memory_bits + report.activation_memory_bits) / 1e3:,.1f}",
        style="bold",
    )
    console.print(t)
    console.print(
        f"BOPs: qonnx {report.bops_qonnx:,.0f} (b_a·b_w·MACs over non-zero weights, as "
        f"qonnx inference_cost); Ps-and-Qs {report.bops_psqs:,.0f} (adds the "
        "b_a + b_w + log2 n accumulator bits per MAC, Hawks et al. 2021)"
    )
    console.print(
        f"throughput {report.fps:,.0f} frames/s (bottleneck {report.bottleneck_layer}, "
        f"{report.cycles_per_frame:,} cycles/frame), latency ≤ "
        f"{report.latency_cycles:,} cycles"
    )
    if report.shift_pe:
        console.print(
            f"shift-PE estimate: {report.shift_pe['luts']:,} LUT, "
            f"{report.shift_pe['dsps']} DSP ({report.shift_pe['source']})"
        )
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")
    if report.fits:
        console.print("[bold green]fits the target[/]")
    for v in report.violations:
        console.print(f"[bold red]does not fit:[/] {v}")
