"""PTQ of the digits CNN at low weight precision: round-to-nearest against each PTQ
algorithm, for integer and minifloat weight formats (activations 8-bit integers).

The float model is trained once (BatchNorm folded) and cached under ``runs/ptq``;
every point starts from it. Weights are per-channel with a max-statistics scale, so
the only difference between columns is how the codes are chosen.

Run: ``python examples/ptq/digits_ptq.py [--algorithms gptq,adaround] [--json out.json]``
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import hwquant
from hwquant.algorithms import fold_bn, pipeline
from hwquant.analysis.sqnr import sqnr_db
from hwquant.datasets import digits
from hwquant.models import DigitsCNN
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
from hwquant.training import evaluate, fit

FORMATS = {
    "INT3": IntFormat(3, narrow=True),
    "INT4": IntFormat(4, narrow=True),
    "FP3_E2M0": MinifloatFormat(2, 0),
    "FP4_E2M1": FP4_E2M1,
}


def float_model(cache: Path, data) -> torch.nn.Module:
    """The trained float DigitsCNN (BatchNorm folded), trained once and cached."""
    path = cache / "digits_float.pt"
    if path.exists():
        return hwquant.load_checkpoint(path)[0]
    torch.manual_seed(0)
    model = DigitsCNN()
    fit(model, data.train, data.test, epochs=15, progress=False)
    model.eval()
    fold_bn.apply(model)
    cache.mkdir(parents=True, exist_ok=True)
    hwquant.save_checkpoint(model, path, (1, *data.input_shape))
    return model


def point(base, fmt, algorithms: list[str], data, calib, granularity) -> dict:
    torch.manual_seed(0)
    spec = QuantSpec(fmt, granularity, ScaleSpec("max"))
    m = hwquant.quantize(copy.deepcopy(base), Recipe.uniform(weights=spec, activations=A8))
    m.eval()
    t0 = time.perf_counter()
    with hwquant.calibration(m):  # activations first, on the same data for every column
        for x in calib:
            m(x)
    pipeline(m, calib, algorithms)  # none: round-to-nearest
    x = data.test.dataset.tensors[0]
    with torch.no_grad():
        sqnr = sqnr_db(base(x), m(x))
    return {
        "accuracy": evaluate(m, data.test),
        "sqnr_db": sqnr,
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algorithms", default="gptq", help="comma-separated, each run alone")
    p.add_argument("--json")
    p.add_argument("--cache", type=Path, default=Path("runs/ptq"))
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per layer")
    a = p.parse_args()
    data = digits(seed=0)
    base = float_model(a.cache, data)
    calib = list(data.calibration_batch(512).split(128))
    float_acc = evaluate(base, data.test)
    rows = {}
    for fname, fmt in FORMATS.items():
        g = PER_TENSOR if a.per_tensor else per_channel(0)
        rows[fname] = {"rtn": point(base, fmt, [], data, calib, g)}
        for algo in a.algorithms.split(","):
            rows[fname][algo] = point(base, fmt, [algo], data, calib, g)
        cells = "  ".join(
            f"{k} {v['accuracy']:.4f} ({v['sqnr_db']:.1f} dB)" for k, v in rows[fname].items()
        )
        print(f"W{fname} A8: {cells}")
    print(f"float {float_acc:.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"float": float_acc, "points": rows}, indent=2))


if __name__ == "__main__":
    main()
