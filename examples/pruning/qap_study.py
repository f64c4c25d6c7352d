"""Quantization-aware pruning study (Hawks et al., "Ps and Qs", 2021; REFERENCE.md §6).

The jet-tagging MLP 16 → 64 → 32 → 32 → 5 (ReLU) on a generated five-class tabular
task, at 32/12/8/6/4-bit weights and activations:

- QAT only (dense) at every width;
- pruning only (32 bits), iterative global magnitude pruning;
- QAP at 6 and 4 bits: fine-tuning vs lottery-ticket rewinding, and unstructured vs
  hardware-shaped (FINN PE×SIMD = 4×8 tiles) pruning.

Iterative schedule: 10 % of the original weights per step, the last step to 98.9 %
(global magnitude ranking; the 4×8-block runs leave the 5-output layer dense).
Fine-tuning trains ``--step-epochs`` after each step; rewinding restores the initial
weights (masks kept) and retrains ``--epochs``, as long as the dense training.
Costs per point: BOPs (Ps-and-Qs definition, with the pruned fraction) and the FINN
MVAU LUT estimate at a fixed folding (PE×SIMD = 4×8, the output layer 1×8), LUT
multipliers, LUTRAM weights and thresholds in BRAM (at 12/32 bits the 2^B − 1
threshold term would swamp everything), with hwquant's sparse-MVAU assumption (all-zero
PE×SIMD tiles are neither stored nor computed; see
``hwquant.analysis.cost.estimate._sparse_luts``). Neural efficiency and aIQ on the test
set.

The data (:func:`jet_like`): scikit-learn's ``make_classification`` with 16 features
(8 informative, 4 linear combinations of them, 4 noise), 5 classes of 2 Gaussian
clusters each, 30 % of the labels' clusters overlapping (``class_sep=1.0``), 3 %
flipped labels. Like the hls4ml jet-tagging set (16 high-level jet substructure
features, 5 classes g/q/W/Z/t), it is a dense, low-dimensional, correlated, partly
redundant tabular input with overlapping, multi-modal classes, on which this MLP
reaches ~75–80 % accuracy rather than ~100 %: the regime where pruning and narrow
widths visibly cost accuracy. It is not physics data; the absolute numbers say
nothing about jets.

Run: ``python examples/pruning/qap_study.py`` (a few minutes on two CPU cores);
writes ``results.json``, ``qap_study.png`` and ``RESULTS.md`` next to this file.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from hwquant.algorithms import prune
from hwquant.algorithms.prune import PruneConfig
from hwquant.analysis import Target, cost, neural_efficiency
from hwquant.api import quantize
from hwquant.models import MLP
from hwquant.spec import (
    PER_TENSOR,
    IntFormat,
    LayerSpec,
    QuantSpec,
    Recipe,
    ScaleSpec,
    accumulator_bias,
    per_channel,
)
from hwquant.training import evaluate, fit

HERE = Path(__file__).parent
SIZES = (16, 64, 32, 32, 5)
FOLDING = {"layers.0": (4, 8), "layers.2": (4, 8), "layers.4": (4, 8), "layers.6": (1, 8)}
TARGET = Target(
    weight_memory="lutram", threshold_memory="bram", mult_style="lut", folding="fully_folded"
)
BLOCK = (4, 8)


def jet_like(n: int = 6000, seed: int = 0) -> tuple[DataLoader, DataLoader, torch.Tensor]:
    """(train loader, test loader, test inputs) of the generated task (module docstring)."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n,
        n_features=16,
        n_informative=8,
        n_redundant=4,
        n_classes=5,
        n_clusters_per_class=2,
        class_sep=1.0,
        flip_y=0.03,
        random_state=seed,
    )
    x = x.astype(np.float32)
    n_tr = int(0.8 * n)
    mean, std = x[:n_tr].mean(0), x[:n_tr].std(0)
    x = (x - mean) / std
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    train = DataLoader(
        TensorDataset(xt[:n_tr], yt[:n_tr]), batch_size=256, shuffle=True, generator=g
    )
    test = DataLoader(TensorDataset(xt[n_tr:], yt[n_tr:]), batch_size=1000)
    return train, test, xt[n_tr:]


def recipe(bits: int) -> Recipe:
    """Narrow signed weights per channel, unsigned activations after ReLU, a signed
    input to the first layer (the features are standardized). At ≥ 16 bits the scales
    are not learned (LSQ steps on 2^31 levels are not finite): per-channel max for
    weights, the calibrated max for activations — effectively float."""
    learned = bits < 16
    w_scale = ScaleSpec("max", learned=learned)
    a_scale = ScaleSpec("percentile", learned=True) if learned else ScaleSpec("max")
    w = QuantSpec(IntFormat(bits, narrow=True), per_channel(0), w_scale)
    a = QuantSpec(IntFormat(bits, signed=False), PER_TENSOR, a_scale)
    x = QuantSpec(IntFormat(bits), PER_TENSOR, a_scale)
    first = LayerSpec(input=x, weight=w, bias=accumulator_bias(32))
    return Recipe.uniform(weights=w, activations=a, by_name={"layers.0": first})


def build(bits: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return quantize(MLP(SIZES), recipe(bits))


@dataclass
class Point:
    family: str
    bits: int
    sparsity: float
    accuracy: float
    bops: float
    luts: int
    efficiency: float
    aiq: float

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def measure(family: str, bits: int, model, test, x_test) -> Point:
    acc = evaluate(model, test)
    r = cost(model.eval(), (1, SIZES[0]), TARGET, folding=FOLDING)
    eff = neural_efficiency(model, x_test, metric=acc)
    zeros = sum(lc.pruned_fraction * lc.MW * lc.MH for lc in r.layers)
    total = sum(lc.MW * lc.MH for lc in r.layers)
    return Point(family, bits, zeros / total, acc, r.bops_psqs, r.luts, eff.efficiency, eff.aiq)


def iterative(family, bits, structure, rewind, args, data) -> list[Point]:
    train, test, x_test = data
    model = build(bits, args.seed)
    init = prune.snapshot(model)
    fit(model, train, test, epochs=args.epochs, progress=False)
    points = [measure(family, bits, model, test, x_test)]
    block = BLOCK if structure == "block" else None
    exclude = ("layers.6",) if structure == "block" else ()
    for f in prune.schedule(0.989, 0, per_step=0.1)[: args.steps]:
        prune.apply(model, None, PruneConfig(f, structure=structure, block=block, exclude=exclude))
        if rewind:
            prune.rewind(model, init)
        # rewinding retrains from the initial weights: as long as the dense training
        epochs = args.epochs if rewind else args.step_epochs
        fit(model, train, test, epochs=epochs, progress=False)
        points.append(measure(family, bits, model, test, x_test))
        print(
            f"{family:28s} {bits:2d}b sparsity {points[-1].sparsity:.3f} acc {points[-1].accuracy:.3f}"
        )
    return points


def run(args) -> list[Point]:
    data = jet_like(args.samples, args.seed)
    train, test, x_test = data
    points: list[Point] = []
    for bits in args.bits:
        model = build(bits, args.seed)
        fit(model, train, test, epochs=args.epochs, progress=False)
        points.append(measure("QAT only", bits, model, test, x_test))
        print(f"QAT only {bits:2d}b acc {points[-1].accuracy:.3f}")
    points += iterative("pruning only", 32, "unstructured", False, args, data)
    for bits in args.qap_bits:
        for structure, label in (("unstructured", "unstructured"), ("block", "4×8 blocks")):
            points += iterative(f"QAP fine-tune, {label}", bits, structure, False, args, data)
        if bits in args.rewind_bits:
            points += iterative("QAP rewind, unstructured", bits, "unstructured", True, args, data)
    return points


def best_at(points: list[Point], family: str, floor: float, key: str) -> Point | None:
    ok = [p for p in points if p.family == family and p.accuracy >= floor]
    return min(ok, key=lambda p: getattr(p, key)) if ok else None


def plot(points: list[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=80)
    families = sorted({(p.family, p.bits) for p in points}, key=str)
    for ax, key, label in (
        (axes[0], "bops", "BOPs (Ps-and-Qs, with pruned fraction)"),
        (axes[1], "luts", "estimated LUTs (FINN MVAU, sparse tiles)"),
    ):
        for fam, bits in families:
            ps = [p for p in points if (p.family, p.bits) == (fam, bits)]
            style = "o" if fam == "QAT only" else ".-"
            if fam == "QAT only":
                ps = sorted(ps, key=lambda p: getattr(p, key))
                ax.plot(
                    [getattr(p, key) for p in ps],
                    [p.accuracy for p in ps],
                    "ko-",
                    label="QAT only (32…4 b)",
                )
                continue
            ax.plot(
                [getattr(p, key) for p in ps],
                [p.accuracy for p in ps],
                style,
                label=f"{fam} ({bits} b)",
            )
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=True))
    axes[1].legend(uniq.values(), uniq.keys(), fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def table(points: list[Point]) -> str:
    rows = [
        "| family | bits | sparsity | accuracy | BOPs | LUTs | η | aIQ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        rows.append(
            f"| {p.family} | {p.bits} | {p.sparsity:.3f} | {p.accuracy:.3f} | {p.bops:,.0f} | "
            f"{p.luts:,} | {p.efficiency:.3f} | {p.aiq:.3f} |"
        )
    return "\n".join(rows)


def summary(points: list[Point], tolerance: float = 0.02) -> str:
    """Markdown: per family, the fewest BOPs / LUTs among points within ``tolerance``
    of the widest dense model's accuracy; hardware-shaped vs unstructured LUTs per step."""
    dense = max((p for p in points if p.family == "QAT only"), key=lambda p: p.bits)
    ref = dense.accuracy
    floor = ref - tolerance
    lines = [
        f"Accuracy floor: {floor:.3f} (dense {dense.bits}-bit {ref:.3f} − {tolerance}).",
        "",
        "| family | bits | fewest BOPs (sparsity, acc) | fewest LUTs (sparsity, acc) |",
        "|---|---|---|---|",
    ]
    for fam, bits in sorted({(p.family, p.bits) for p in points}, key=str):
        ps = [p for p in points if (p.family, p.bits) == (fam, bits)]
        cells = []
        for key in ("bops", "luts"):
            b = best_at(ps, fam, floor, key)
            cells.append(
                "—" if b is None else f"{getattr(b, key):,.0f} ({b.sparsity:.2f}, {b.accuracy:.3f})"
            )
        lines.append(f"| {fam} | {bits} | {cells[0]} | {cells[1]} |")
    lines += [
        "",
        "| bits | step | sparsity unstr. / blocks | LUTs unstr. | LUTs 4×8 blocks |",
        "|---|---|---|---|---|",
    ]
    for bits in sorted({p.bits for p in points if p.family.startswith("QAP fine-tune")}):
        u = [p for p in points if p.family == "QAP fine-tune, unstructured" and p.bits == bits]
        b = [p for p in points if p.family == "QAP fine-tune, 4×8 blocks" and p.bits == bits]
        for i, (pu, pb) in enumerate(zip(u, b, strict=False)):
            lines.append(
                f"| {bits} | {i} | {pu.sparsity:.3f} / {pb.sparsity:.3f} | {pu.luts:,} | {pb.luts:,} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Point]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=6000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--step-epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--bits", type=int, nargs="+", default=[32, 12, 8, 6, 4])
    ap.add_argument("--qap-bits", type=int, nargs="+", default=[6, 4])
    ap.add_argument("--rewind-bits", type=int, nargs="+", default=[6])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    points = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps([p.to_dict() for p in points], indent=1))
    plot(points, args.out / "qap_study.png")
    (args.out / "table.md").write_text(table(points) + "\n\n" + summary(points) + "\n")
    return points


if __name__ == "__main__":
    main()
