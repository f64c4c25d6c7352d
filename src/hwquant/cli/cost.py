"""``hwquant cost MODEL``: hardware cost of a QONNX file or a hwquant checkpoint.

Prints a per-layer table (or ``--json``), optionally writes ``--plot`` PNGs; with
``--sweep`` (a JSON list of ``{"label", "accuracy", <cost>...}``) also the accuracy
vs cost plot with its Pareto front.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from hwquant.cli.common import add_factory_option

if TYPE_CHECKING:  # pragma: no cover
    from hwquant.analysis import CostReport

__all__ = ["add_parser", "parse_folding", "parse_shape", "run"]


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,1,8,8"`` → (1, 1, 8, 8)."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--input-shape must be comma-separated ints, got {text!r}") from None
    if not shape:
        raise ValueError("--input-shape is empty")
    return shape


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


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cost", help="FPGA cost estimate (LUT/DSP/BRAM, BOPs, accumulators)")
    p.add_argument("model", type=Path, help="a QONNX file (.onnx) or a hwquant checkpoint (.pt)")
    p.add_argument(
        "--input-shape",
        type=str,
        default=None,
        help="input shape with batch dim for checkpoints, e.g. 1,1,8,8",
    )
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

    shape = parse_shape(args.input_shape) if args.input_shape else None
    model = args.model
    if args.factory:  # the model file names the user's own builder
        from hwquant.checkpoint import load_checkpoint

        model, stored = load_checkpoint(args.model, factory=args.factory)
        shape = shape or stored
    report = cost(model, shape, target=args.target, folding=parse_folding(args.fold))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _print_table(report)
    if args.plot is not None:
        _plots(report, args)
    return 1 if args.check and not report.fits else 0


def _plots(report: CostReport, args: argparse.Namespace) -> None:
    from hwquant.analysis.plots import plot_cost, plot_pareto

    written = [plot_cost(report, args.plot, title=f"{report.source} on {report.target['name']}")]
    if args.sweep is not None:
        try:
            points = json.loads(args.sweep.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read sweep results {args.sweep}: {e}") from None
        if not isinstance(points, list):
            raise ValueError(f"{args.sweep}: expected a JSON list of sweep points")
        pareto = args.plot.with_name(args.plot.stem + "_pareto.png")
        written.append(plot_pareto(points, pareto, cost_key=args.pareto_cost))
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
