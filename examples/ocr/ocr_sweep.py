"""OCR reference (FINN-L): a BiLSTM + CTC text-line recognizer at W8A8 … W2A2.

Synthetic text lines (``hwquant.datasets.text_lines``: 3–8 random digits and capital
letters in Pillow's bundled font, 32 pixels high, varied spacing, ±3° rotation, blur
and noise) are read column by column by ``hwquant.models.TextLineBiLSTM`` (one
bidirectional LSTM, 128 units per direction, a linear layer to the 36 characters + the
CTC blank), trained with CTC in float once (cached under ``runs/ocr`` as a state dict),
then fine-tuned from it with QAT at each precision:

- weights: signed narrow W-bit integers, per output channel, learned scales
  (LSTM input-to-hidden and hidden-to-hidden weights and the classifier);
- activations: signed A-bit integers, per tensor, learned scales (the LSTM's input and
  the classifier's input); ``hwquant.quantize`` derives the LSTM's cell quantizers from
  them (FINN-L: gates and hidden state on fixed A-bit grids, the gate pre-activations
  at max(A, 8) bits, the cell state INT16 with 8 fractional bits).

Each row reports the test character error rate (greedy CTC decoding, edit distance /
reference length) and ``hwquant.analysis.cost``'s estimate on the PYNQ-Z2 target for
one line of the mean test width. Results go to ``results.json`` and ``table.md`` next
to this file.

Run: ``python examples/ocr/ocr_sweep.py`` (≈ 20 min on 2 CPU cores, most of it the
five QAT runs: a quantized LSTM runs its recurrence step by step in Python);
``--quick`` is the seconds-long smoke version (tiny data, one epoch, nothing written
unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

import hwquant
from hwquant.analysis import cost
from hwquant.datasets import TextLines, text_lines
from hwquant.models import TextLineBiLSTM
from hwquant.spec import PER_TENSOR, IntFormat, QuantSpec, Recipe, ScaleSpec, per_channel
from hwquant.training import evaluate_ctc, fit_ctc

HERE = Path(__file__).resolve().parent
#: (weight bits, activation bits), FINN-L's configurations.
CONFIGS = ((8, 8), (4, 8), (4, 4), (2, 4), (2, 2))


@dataclasses.dataclass
class Settings:
    n_train: int = 8000
    n_test: int = 1000
    seed: int = 0
    hidden: int = 128
    batch_size: int = 32
    float_epochs: int = 12
    float_lr: float = 3e-3
    qat_epochs: int = 4
    qat_lr: float = 1e-3
    qat_batch_size: int = 64  # the quantized recurrence is per step: fewer, larger steps
    clip_norm: float = 5.0
    configs: tuple[tuple[int, int], ...] = CONFIGS
    target: str = "pynq-z2"
    cache: Path | None = Path("runs/ocr")
    out: Path | None = HERE
    progress: bool = True

    def float_key(self) -> str:
        """What the float model depends on (its cache file name)."""
        keys = ("n_train", "seed", "hidden", "batch_size", "float_epochs", "float_lr", "clip_norm")
        text = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


QUICK = Settings(
    n_train=48,
    n_test=16,
    hidden=16,
    batch_size=16,
    qat_batch_size=16,
    float_epochs=1,
    qat_epochs=1,
    configs=((8, 8), (2, 2)),
    cache=None,
    out=None,
    progress=False,
)


def recipe(w: int, a: int) -> Recipe:
    """W-bit per-channel weights and A-bit per-tensor activations, learned scales."""
    weights = QuantSpec(IntFormat(w, narrow=True), per_channel(0), ScaleSpec(learned=True))
    acts = QuantSpec(IntFormat(a), PER_TENSOR, ScaleSpec("percentile", learned=True))
    return Recipe.uniform(weights=weights, activations=acts)


def float_model(s: Settings, data: TextLines) -> tuple[TextLineBiLSTM, float, float]:
    """(trained float model, its test CER, training seconds: 0 when loaded from the cache)."""
    torch.manual_seed(s.seed)
    model = TextLineBiLSTM(data.n_classes, hidden=s.hidden)
    path = None if s.cache is None else s.cache / f"float_{s.float_key()}.pt"
    seconds = 0.0
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        t = time.perf_counter()
        loader = data.train.loader(s.batch_size, shuffle=True, seed=s.seed)
        fit_ctc(model, loader, data.test.loader(256), s.float_epochs, s.float_lr, s.clip_norm,
                progress=s.progress)  # fmt: skip
        seconds = time.perf_counter() - t
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
    return model.eval(), evaluate_ctc(model, data.test.loader(256)), seconds


def qat(base: TextLineBiLSTM, w: int, a: int, s: Settings, data: TextLines) -> tuple[Any, dict]:
    """``base`` quantized at WwAa, scales set from one batch, fine-tuned with QAT;
    (model, its row without the cost)."""
    torch.manual_seed(s.seed)
    model = hwquant.quantize(copy.deepcopy(base), recipe(w, a))
    loader = data.train.loader(s.qat_batch_size, shuffle=True, seed=s.seed + 1)
    # the first batch sets every activation scale (then they are learned); not
    # hwquant.calibration(model), which QuantLSTM does not support yet
    x, widths, _, _ = next(iter(loader))
    with torch.no_grad():
        model.train()(x[..., : int(widths.max())])
    test = data.test.loader(256)
    ptq_cer = evaluate_ctc(model, test)
    t = time.perf_counter()
    r = fit_ctc(model, loader, test, s.qat_epochs, s.qat_lr, s.clip_norm, progress=s.progress)
    lstm = type(model.lstm).__name__
    row = {"config": f"W{w}A{a}", "w": w, "a": a, "cer_initial": ptq_cer, "cer": r.test_cer,
           "lstm": lstm, "qat_seconds": time.perf_counter() - t, "history": r.history}  # fmt: skip
    return model.eval(), row


def hardware(model: torch.nn.Module, width: int, target: str) -> dict[str, Any]:
    """The cost model's estimate for one [1, 32, width] line (per frame = per line)."""
    r = cost(model, (1, 32, width), target=target)
    counted = sorted({layer.name for layer in r.layers})
    return {"luts": r.luts, "dsps": r.dsps, "bram18": r.bram18, "bops": r.bops_qonnx,
            "weight_memory_bits": r.weight_memory_bits, "macs": r.macs, "fits": r.fits,
            "cycles_per_frame": r.cycles_per_frame, "counted_layers": counted,
            "cost_notes": list(r.notes)}  # fmt: skip


def run(s: Settings) -> dict[str, Any]:
    t0 = time.perf_counter()
    data = text_lines(s.n_train, s.n_test, seed=s.seed)
    width = round(float(data.test.widths.float().mean()))
    base, float_cer, float_seconds = float_model(s, data)
    rows = [{"config": "float", "cer": float_cer, "train_seconds": float_seconds}
            | hardware(base, width, s.target)]  # fmt: skip
    _log(s, rows[0])
    for w, a in s.configs:
        model, row = qat(base, w, a, s, data)
        rows.append(row | hardware(model, width, s.target))
        _log(s, rows[-1])
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(s).items()}
    return {"settings": settings, "cost_input_width": width, "rows": rows,
            "wall_seconds": time.perf_counter() - t0, "machine": platform.machine(),
            "torch": torch.__version__}  # fmt: skip


def _log(s: Settings, row: dict) -> None:
    if s.progress:
        print(f"{row['config']}: CER {row['cer']:.4f}, {row['luts']:,} LUT, {row['dsps']} DSP, "
              f"layers costed: {', '.join(row['counted_layers'])}", flush=True)  # fmt: skip


def table(result: dict[str, Any]) -> str:
    """The Markdown table of a :func:`run` result."""
    lines = [
        "| config | LSTM | test CER % | CER % before QAT | LUT | DSP | BRAM18 "
        "| weight memory (kbit) | MBOPs / line | cycles / line | fits | costed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in result["rows"]:
        calibrated = "–" if "cer_initial" not in r else f"{100 * r['cer_initial']:.1f}"
        lines.append(
            f"| {r['config']} | {r.get('lstm', 'LSTM (float)')} | {100 * r['cer']:.2f} "
            f"| {calibrated} | {r['luts']:,} | {r['dsps']} | {r['bram18']} "
            f"| {r['weight_memory_bits'] / 1e3:.1f} | {r['bops'] / 1e6:.1f} "
            f"| {r['cycles_per_frame']:,} | {'yes' if r['fits'] else 'no'} "
            f"| {_costed(r['counted_layers'])} |"
        )
    return "\n".join(lines) + "\n"


def _costed(names: list[str]) -> str:
    lstm = [n for n in names if n.startswith("lstm.")]
    rest = [n for n in names if not n.startswith("lstm.")]
    return ", ".join(rest + ([f"{len(lstm)} LSTM gate matmuls"] if lstm else ["LSTM not costed"]))


def write(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    s = result["settings"]
    head = (
        f"OCR BiLSTM ({s['hidden']} per direction) + CTC on {s['n_train']} synthetic lines, "
        f"test CER on {s['n_test']}; float {s['float_epochs']} epochs, QAT "
        f"{s['qat_epochs']} epochs from it; cost: {s['target']}, one line "
        f"{result['cost_input_width']} columns wide. Sweep wall time "
        f"{result['wall_seconds'] / 60:.1f} min. The cost model counts the quantized LSTM's "
        f"gate matmuls (ih and hh, both directions, {result['cost_input_width']} steps), not "
        "its element-wise cell, "
        "and no float LSTM (the float row costs its classifier only, at 32 bits).\n\n"
    )
    (out / "table.md").write_text(head + table(result))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    p.add_argument("--out", type=Path, default=None, help="where results.json / table.md go")
    p.add_argument("--cache", type=Path, default=None, help="float checkpoint folder")
    p.add_argument("--table", type=Path, default=None, help="rewrite table.md from results.json")
    args = p.parse_args(argv)
    if args.table is not None:
        result = json.loads(args.table.read_text())
        write(result, args.table.parent)
        return result
    s = dataclasses.replace(QUICK) if args.quick else Settings()
    if args.out is not None:
        s.out = args.out
    if args.cache is not None:
        s.cache = args.cache
    result = run(s)
    print(table(result))
    if s.out is not None:
        write(result, s.out)
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)  # FPGA-sized model: one intra-op thread is faster on 2 cores
    main()
