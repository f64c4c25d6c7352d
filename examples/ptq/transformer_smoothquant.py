"""SmoothQuant on a small patch transformer (digits): W8 per-channel integer weights,
low-precision per-tensor activations (integer and minifloat), round-to-nearest
against SmoothQuant (α = 0.5, 0.75), GPTQ, and SmoothQuant + GPTQ.

Two float models with *the same function*:

- ``plain``: the trained DigitsTransformer as it is;
- ``outliers``: the same model with a few LayerNorm output channels (ln1 and ln2 of
  every block) scaled ×20 and the inverse folded into the next layers' weight
  columns: the float outputs are unchanged, but the activations feeding q/k/v and
  fc1 now have outlier channels, as real transformers do (Dettmers et al. 2022,
  Xiao et al. 2023).

"Activations" are the inputs of every Linear layer (per tensor, static scales from
the calibration data); by default the residual adds stay float, as in SmoothQuant's
W8A8 setting (``--quantize-adds`` puts them on the activation format too). SQNR is
that of the logits against the float model on the test set.

The float model is trained once and cached under ``runs/ptq``; every point starts
from a deepcopy of it.

Run: ``python examples/ptq/transformer_smoothquant.py [--calib max|percentile|mse]``
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import hwquant
from hwquant.algorithms import pipeline, smoothquant
from hwquant.algorithms.smoothquant import SmoothQuantWarning
from hwquant.analysis.sqnr import sqnr_db
from hwquant.datasets import digits
from hwquant.models import DigitsTransformer
from hwquant.spec import (
    FP4_E2M1,
    FP6_E3M2,
    FP8_E4M3,
    PER_TENSOR,
    IntFormat,
    QuantSpec,
    Recipe,
    ScaleSpec,
    per_channel,
)
from hwquant.training import evaluate, fit

ACT_FORMATS = {
    "INT4": IntFormat(4),
    "INT6": IntFormat(6),
    "INT8": IntFormat(8),
    "FP4_E2M1": FP4_E2M1,
    "FP6_E3M2": FP6_E3M2,
    "FP8_E4M3": FP8_E4M3,
}
METHODS: dict[str, list] = {
    "rtn": [],
    "sq0.5": [("smoothquant", {"alpha": 0.5})],
    "sq0.75": [("smoothquant", {"alpha": 0.75})],
    "gptq": ["gptq"],
    "sq0.5+gptq": [("smoothquant", {"alpha": 0.5}), "gptq"],
}
W8 = QuantSpec(IntFormat(8, narrow=True), per_channel(0), ScaleSpec("max"))
OUTLIER_CHANNELS = (3, 11, 25)
OUTLIER_FACTOR = 20.0


@dataclass
class Settings:
    """What to run; the defaults are the full experiment."""

    epochs: int = 30
    act_formats: tuple[str, ...] = tuple(ACT_FORMATS)
    methods: tuple[str, ...] = tuple(METHODS)
    variants: tuple[str, ...] = ("plain", "outliers")
    calib: str = "max"
    quantize_adds: bool = False
    n_calib: int = 512
    dim: int = 32
    cache: Path | None = Path("runs/ptq")
    investigate: bool = True


def float_model(s: Settings, data) -> nn.Module:
    """The trained float DigitsTransformer, trained once and cached."""
    path = s.cache / f"transformer_d{s.dim}_e{s.epochs}.pt" if s.cache is not None else None
    if path is not None and path.exists():
        return hwquant.load_checkpoint(path)[0].eval()
    torch.manual_seed(0)
    model = DigitsTransformer(dim=s.dim)
    fit(model, data.train, data.test, epochs=s.epochs, lr=3e-3, progress=False)
    model.eval()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        hwquant.save_checkpoint(model, path, (1, *data.input_shape))
    return model


@torch.no_grad()
def with_outlier_channels(
    model: DigitsTransformer,
    channels: tuple[int, ...] = OUTLIER_CHANNELS,
    factor: float = OUTLIER_FACTOR,
) -> DigitsTransformer:
    """A copy whose ln1 / ln2 outputs have ``channels`` × ``factor`` and whose next
    layers' weight columns are ÷ ``factor``: the same float function, with outliers."""
    m = copy.deepcopy(model)
    ch = list(channels)
    for block in m.blocks:
        pairs = ((block.ln1, (block.attn.q, block.attn.k, block.attn.v)), (block.ln2, (block.fc1,)))
        for ln, consumers in pairs:
            ln.weight[ch] *= factor
            ln.bias[ch] *= factor
            for lin in consumers:
                lin.weight[:, ch] /= factor
    return m


def recipe_for(fmt, s: Settings, low: tuple[str, ...] | None = None, rest=None) -> Recipe:
    """W8 weights, ``fmt`` activations (per tensor, ``s.calib`` scales). With ``low``
    (name patterns) only those layers' inputs get ``fmt`` and the others ``rest``."""
    act = QuantSpec(fmt, PER_TENSOR, ScaleSpec(s.calib))
    if low is not None:
        other = QuantSpec(rest, PER_TENSOR, ScaleSpec(s.calib))
        recipe = Recipe.uniform(weights=W8, activations=other)
        low_spec = dataclasses.replace(recipe.default, input=act)
        recipe = Recipe.uniform(weights=W8, activations=other, by_name=dict.fromkeys(low, low_spec))
    else:
        recipe = Recipe.uniform(weights=W8, activations=act)
    return recipe if s.quantize_adds else dataclasses.replace(recipe, merge=None)


def point(
    base: nn.Module, fmt, steps: list, data, calib, s: Settings, recipe: Recipe | None = None
) -> dict[str, Any]:
    """One (activation format, method) point from a fresh copy of ``base``."""
    torch.manual_seed(0)
    recipe = recipe or recipe_for(fmt, s)
    m = hwquant.quantize(copy.deepcopy(base), recipe).eval()
    t0 = time.perf_counter()
    with hwquant.calibration(m):
        for x in calib:
            m(x)
    with warnings.catch_warnings():  # the layers it cannot smooth are listed once, in main
        warnings.simplefilter("ignore", SmoothQuantWarning)
        pipeline(m, calib, steps)  # smoothquant re-calibrates the activations itself
    x = data.test.dataset.tensors[0]
    with torch.no_grad():
        sqnr = sqnr_db(base(x), m(x))
    return {
        "accuracy": evaluate(m, data.test),
        "sqnr_db": sqnr,
        "seconds": time.perf_counter() - t0,
    }


def run(s: Settings) -> dict[str, Any]:
    """Every (variant, activation format, method) point; the results as a dict."""
    torch.set_num_threads(1)  # tiny kernels: one thread is fastest (tests/conftest.py)
    data = digits(seed=0)
    calib = list(data.calibration_batch(s.n_calib).split(128))
    plain = float_model(s, data)
    models = {"plain": plain, "outliers": with_outlier_channels(plain)}
    x = data.test.dataset.tensors[0]
    out: dict[str, Any] = {"settings": _jsonable(s), "variants": {}}
    for v in s.variants:
        base = models[v]
        with torch.no_grad():
            same = float((base(x) - plain(x)).abs().max())
        rows: dict[str, dict] = {}
        for fname in s.act_formats:
            rows[fname] = {
                meth: point(base, ACT_FORMATS[fname], METHODS[meth], data, calib, s)
                for meth in s.methods
            }
            cells = "  ".join(
                f"{k} {r['accuracy']:.4f} ({r['sqnr_db']:.1f} dB)" for k, r in rows[fname].items()
            )
            print(f"[{v}] W8 A{fname}: {cells}", flush=True)
        out["variants"][v] = {
            "float_accuracy": evaluate(base, data.test),
            "max_abs_diff_to_plain_float": same,
            "points": rows,
        }
    if s.investigate:
        out["investigation"] = investigate({v: models[v] for v in s.variants}, data, calib, s)
    return out


SMOOTHABLE = ("*.attn.q", "*.attn.k", "*.attn.v", "*.fc1")  # after a LayerNorm
NOT_SMOOTHABLE = ("embed", "*.attn.out", "*.fc2", "head")  # after reshape, matmul, GELU, mean


def outlier_ratios(base: nn.Module, calib) -> dict[str, dict[str, float]]:
    """Per smoothable layer: max channel max / median channel max of its input, before
    and after SmoothQuant α = 0.5 (from the SmoothQuant report on a float copy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmoothQuantWarning)
        rep = smoothquant.apply(copy.deepcopy(base), calib, smoothquant.SmoothQuantConfig(0.5))
    keep = [n for n in rep.layers if n.endswith((".q", ".fc1"))]
    return {n: {"before": rep.ratio_before[n], "after": rep.ratio_after[n]} for n in keep}


def investigate(models: dict[str, nn.Module], data, calib, s: Settings) -> dict[str, Any]:
    """Why SmoothQuant helps or not: outlier ratios; at INT4, the logit SQNR with only
    the smoothable (LayerNorm-fed) or only the other layers' inputs at INT4 (the rest
    INT8); INT4 / INT6 with percentile and MSE calibration instead of max."""
    out: dict[str, Any] = {}
    for v, base in models.items():
        sens = {}
        for label, low in (("smoothable_at_INT4", SMOOTHABLE), ("others_at_INT4", NOT_SMOOTHABLE)):
            r = recipe_for(IntFormat(4), s, low=low, rest=IntFormat(8))
            sens[label] = {
                meth: point(base, None, METHODS[meth], data, calib, s, recipe=r)
                for meth in ("rtn", "sq0.5")
            }
        calibs = {}
        for method in ("percentile", "mse"):
            sc = dataclasses.replace(s, calib=method)
            calibs[method] = {
                f: {
                    m: point(base, ACT_FORMATS[f], METHODS[m], data, calib, sc)
                    for m in ("rtn", "sq0.5")
                }
                for f in ("INT4", "INT6")
            }
        out[v] = {
            "outlier_ratio": outlier_ratios(base, calib),
            "sensitivity": sens,
            "calibration": calibs,
        }
        print(f"[{v}] investigation done", flush=True)
    return out


def _jsonable(s: Settings) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(s).items()}


def markdown(res: dict[str, Any]) -> str:
    """The results as markdown tables (accuracy % / SQNR dB per cell)."""
    s = res["settings"]
    adds = "quantized" if s["quantize_adds"] else "float"
    lines = [
        "# DigitsTransformer: SmoothQuant vs round-to-nearest",
        "",
        f"Weights W8 integer per-channel (max scale). Activations (inputs of every Linear) "
        f"per-tensor, static `{s['calib']}` calibration on {s['n_calib']} training images; "
        f"residual adds {adds}; LayerNorm, softmax and the attention matmuls float. "
        "Cells: test accuracy % / logit SQNR dB against the float model (360 test images).",
        "",
        "- **plain**: the trained model as it is.",
        f"- **outliers**: the same float function with LayerNorm (ln1, ln2) output channels "
        f"{list(OUTLIER_CHANNELS)} scaled ×{OUTLIER_FACTOR:g} and the inverse folded into the "
        "next layers' weight columns (synthetic activation outliers, as in real transformers).",
        "",
        "Generated by `examples/ptq/transformer_smoothquant.py`.",
    ]
    for v, block in res["variants"].items():
        meths = list(next(iter(block["points"].values())))
        lines += [
            "",
            f"## {v} (float accuracy {100 * block['float_accuracy']:.2f} %)",
            "",
            "| activations | " + " | ".join(meths) + " |",
            "|---|" + "---|" * len(meths),
        ]
        for fname, row in block["points"].items():
            lines.append(f"| {fname} | " + " | ".join(_cell(r) for r in row.values()) + " |")
    lines += _summary_md(res)
    if "investigation" in res:
        lines += _investigation_md(res["investigation"])
    return "\n".join(lines) + "\n"


def _cell(r: dict[str, Any]) -> str:
    return f"{100 * r['accuracy']:.1f} / {r['sqnr_db']:.1f}"


def _summary_md(res: dict[str, Any]) -> list[str]:
    """SmoothQuant α = 0.5 against round-to-nearest at the low-bit integer points."""
    lines = ["", "## Summary: sq0.5 − rtn at INT4 / INT6", ""]
    for v, block in res["variants"].items():
        parts = []
        for f in ("INT4", "INT6"):
            row = block["points"].get(f, {})
            if "rtn" in row and "sq0.5" in row:
                da = 100 * (row["sq0.5"]["accuracy"] - row["rtn"]["accuracy"])
                dq = row["sq0.5"]["sqnr_db"] - row["rtn"]["sqnr_db"]
                parts.append(f"{f}: {da:+.1f} points accuracy, {dq:+.1f} dB SQNR")
        if parts:
            lines.append(f"- {v}: " + "; ".join(parts))
    return lines


def _investigation_md(inv: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Why (investigation)",
        "",
        "Outlier ratio = max channel max / median channel max of a layer's input "
        "(calibration data), before → after SmoothQuant α = 0.5:",
        "",
        "| variant | " + " | ".join(next(iter(inv.values()))["outlier_ratio"]) + " |",
        "|---|" + "---|" * len(next(iter(inv.values()))["outlier_ratio"]),
    ]
    for v, block in inv.items():
        cells = [f"{r['before']:.1f} → {r['after']:.1f}" for r in block["outlier_ratio"].values()]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Which inputs limit INT4 (the other Linear inputs at INT8; max calibration): "
        "smoothable = q/k/v/fc1 (after a LayerNorm), others = embed, attn.out (after the "
        "attention matmul), fc2 (after GELU), head (after the mean): SmoothQuant cannot fold "
        "into their producers.",
        "",
        "| variant | INT4 inputs | rtn | sq0.5 |",
        "|---|---|---|---|",
    ]
    for v, block in inv.items():
        for label, row in block["sensitivity"].items():
            lines.append(f"| {v} | {label} | {_cell(row['rtn'])} | {_cell(row['sq0.5'])} |")
    lines += ["", "Calibration choice (all Linear inputs at the format):", ""]
    lines += ["| variant | calibration | format | rtn | sq0.5 |", "|---|---|---|---|---|"]
    for v, block in inv.items():
        for method, by_fmt in block["calibration"].items():
            for f, row in by_fmt.items():
                lines.append(
                    f"| {v} | {method} | {f} | {_cell(row['rtn'])} | {_cell(row['sq0.5'])} |"
                )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calib", default="max", choices=("max", "percentile", "mse"))
    p.add_argument("--quantize-adds", action="store_true")
    p.add_argument("--json", type=Path, default=Path("examples/ptq/transformer_tables.json"))
    p.add_argument("--md", type=Path, default=Path("examples/ptq/transformer_tables.md"))
    p.add_argument("--cache", type=Path, default=Path("runs/ptq"))
    a = p.parse_args()
    s = Settings(calib=a.calib, quantize_adds=a.quantize_adds, cache=a.cache)
    res = run(s)
    a.json.write_text(json.dumps(res, indent=2))
    a.md.write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
