"""One sweep point: quantize the float model with the point's formats, apply every
technique, keep the best, and cost the result.

A technique is ``"rtn"`` (round-to-nearest: calibration only) or algorithm names
joined by ``+`` (``"equalize+gptq"``). Algorithms that change the float model
(``fold_bn``, ``equalize``, ``smoothquant``) run before quantization, the others on
the quantized model after its activations are calibrated. The winner is the technique
with the highest output SQNR against the float model on training images that are not
calibration images (label-free, and not the test set); the test accuracy is reported
for every technique. Every run is seeded and single-threaded, so a point gives the
same row in any process (local, worker process, Ray worker).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwquant.sweep.models import float_model, float_model_path, sweep_data
from hwquant.sweep.space import Point, label

__all__ = ["FLOAT_STAGE", "Settings", "evaluate_point", "point_model", "steps_of"]

#: algorithms that rewrite the float model (run before quantization).
FLOAT_STAGE = frozenset({"fold_bn", "equalize", "smoothquant"})
DEFAULT_TECHNIQUES = ("rtn", "equalize", "bias_correction", "gptq", "gptq+bias_correction")


@dataclass(frozen=True)
class Settings:
    """Everything a point's result depends on besides its formats (stored with the
    results: a re-run with other settings refuses to mix them).

    ``act_scale``: how activation scales are calibrated (``max``, ``percentile``,
    ``mse``); ``calib_rows`` / ``val_rows``: training images for calibration and for
    choosing the technique; ``epochs``: float training (None: the model's default).
    """

    techniques: tuple[str, ...] = DEFAULT_TECHNIQUES
    seed: int = 0
    calib_rows: int = 512
    val_rows: int = 512
    act_scale: str = "mse"
    epochs: int | None = None
    cache: str = "runs/sweep/models"
    target: dict = field(default_factory=lambda: {"mult_style": "lut"})

    def __post_init__(self) -> None:
        if not self.techniques:
            raise ValueError("no techniques given (use rtn for round-to-nearest)")
        for t in self.techniques:
            steps_of(t)
        for name in ("calib_rows", "val_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        from hwquant.spec import ScaleSpec

        ScaleSpec(self.act_scale)  # names a bad method

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["techniques"] = list(self.techniques)
        return d


def steps_of(technique: str) -> list[str]:
    """The algorithm names of a technique (``[]`` for ``rtn``), float-stage ones first.

    >>> steps_of("equalize+gptq"), steps_of("rtn")
    (['equalize', 'gptq'], [])
    >>> steps_of("gptq+equalize")
    Traceback (most recent call last):
    ...
    ValueError: technique 'gptq+equalize': equalize changes the float model and must come before gptq
    """
    from hwquant.algorithms import names

    if technique == "rtn":
        return []
    steps = technique.split("+")
    for i, s in enumerate(steps):
        if s not in names() or s in ("calibrate", "rtn"):
            known = ", ".join(n for n in names() if n != "calibrate")
            raise ValueError(f"technique {technique!r}: unknown step {s!r}; known: rtn, {known}")
        if s in FLOAT_STAGE and i and steps[i - 1] not in FLOAT_STAGE:
            raise ValueError(
                f"technique {technique!r}: {s} changes the float model and must come "
                f"before {steps[i - 1]}"
            )
    return steps


@contextmanager
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _base(point: Point, settings: Settings) -> nn.Module:
    path = float_model_path(point.model, Path(settings.cache), settings.seed, settings.epochs)
    return float_model(str(path))


def _calibration(settings: Settings) -> list[torch.Tensor]:
    return list(sweep_data(settings.seed).calibration_batch(settings.calib_rows).split(128))


def calibrated_model(point: Point, settings: Settings, float_steps: list[str]) -> nn.Module:
    """The float model after ``float_steps``, quantized at ``point`` with calibrated
    activations (observed in float, so the same for every later step)."""
    from hwquant.algorithms import pipeline
    from hwquant.algorithms.common import calibrate_activations
    from hwquant.api import quantize
    from hwquant.spec import QuantSpec, Recipe, ScaleSpec, per_channel

    calib = _calibration(settings)
    model = copy.deepcopy(_base(point, settings))
    torch.manual_seed(settings.seed)
    pipeline(model, calib, float_steps)
    recipe = Recipe.uniform(
        weights=QuantSpec(point.weights, per_channel(0), ScaleSpec("max")),
        activations=QuantSpec(point.acts, scale=ScaleSpec(settings.act_scale)),
    )
    q = quantize(model, recipe).eval()
    calibrate_activations(q, calib)
    return q


class _Models:
    """The point's models by step prefix: techniques that share a prefix
    (``gptq`` and ``gptq+bias_correction``) compute it once. Each step is seeded on
    its own, so a model does not depend on what else was computed."""

    def __init__(self, point: Point, settings: Settings) -> None:
        self.point, self.settings = point, settings
        self.cache: dict[tuple[tuple[str, ...], tuple[str, ...]], nn.Module] = {}

    def get(self, float_steps: tuple[str, ...], q_steps: tuple[str, ...]) -> nn.Module:
        from hwquant.algorithms import pipeline

        key = (float_steps, q_steps)
        if key not in self.cache:
            if not q_steps:
                model = calibrated_model(self.point, self.settings, list(float_steps))
            else:  # the model is calibrated: the first step need not do it again
                model = copy.deepcopy(self.get(float_steps, q_steps[:-1]))
                step = _calibrated(q_steps[-1]) if len(q_steps) == 1 else q_steps[-1]
                torch.manual_seed(self.settings.seed)
                pipeline(model, _calibration(self.settings), [step])
            self.cache[key] = model.eval()
        return self.cache[key]

    def technique(self, technique: str) -> nn.Module:
        steps = steps_of(technique)
        f = tuple(s for s in steps if s in FLOAT_STAGE)
        return self.get(f, tuple(s for s in steps if s not in FLOAT_STAGE))


def point_model(point: Point, settings: Settings, technique: str) -> nn.Module:
    """The float model quantized at ``point`` with ``technique`` (eval mode)."""
    return copy.deepcopy(_Models(point, settings).technique(technique))


def _calibrated(step: str) -> str | tuple[str, dict]:
    """The step without its own activation calibration (the model has just had it);
    later steps re-calibrate as they would (earlier steps changed the weights)."""
    from hwquant.algorithms import get

    fields = {f.name for f in dataclasses.fields(get(step).config_type)}
    return (step, {"calibrate": False}) if "calibrate" in fields else step


def _validation(settings: Settings) -> torch.Tensor:
    x = sweep_data(settings.seed).train.dataset.tensors[0]
    val = x[settings.calib_rows : settings.calib_rows + settings.val_rows]
    if len(val) == 0:
        raise ValueError(f"calib_rows={settings.calib_rows} leaves no training images to validate")
    return val


def _score(model: nn.Module, reference: dict[str, torch.Tensor], settings: Settings) -> dict:
    from hwquant.analysis.sqnr import sqnr_db

    x_test, y_test = sweep_data(settings.seed).test.dataset.tensors
    with torch.no_grad():
        out = model(x_test)
        return {
            "accuracy": float((out.argmax(1) == y_test).double().mean()),
            "val_sqnr_db": round(sqnr_db(reference["val"], model(_validation(settings))), 6),
            "test_sqnr_db": round(sqnr_db(reference["test"], out), 6),
        }


def evaluate_point(point: Point, settings: Settings) -> dict[str, Any]:
    """The point's row: every technique's scores, the winner, and the hardware cost."""
    with _one_thread():
        base = _base(point, settings)
        with torch.no_grad():  # the float model's outputs, for every technique's SQNR
            x_test = sweep_data(settings.seed).test.dataset.tensors[0]
            reference = {"val": base(_validation(settings)), "test": base(x_test)}
        results: dict[str, dict] = {}
        models, model = _Models(point, settings), None
        for t in settings.techniques:
            try:
                q = models.technique(t)
            except ValueError as e:  # the method does not apply to this point
                results[t] = {"error": str(e).splitlines()[0]}
                continue
            model = model or q
            results[t] = _score(q, reference, settings)
        scored = [t for t in settings.techniques if "error" not in results[t]]
        if not scored:
            raise ValueError(f"{point.key}: no technique applies ({results})")
        best = max(scored, key=lambda t: results[t]["val_sqnr_db"])  # first wins a tie
        row = {
            "key": point.key,
            "model": point.model,
            "family": point.family,
            "w_bits": point.w_bits,
            "a_bits": point.a_bits,
            "weights": label(point.weights),
            "acts": label(point.acts),
            "best": best,
            **results[best],
            "techniques": results,
        }
        row.update(_cost(model, settings))
        return row


def _cost(model: nn.Module, settings: Settings) -> dict[str, Any]:
    """LUTs of the point (formats only: the same for every technique)."""
    from hwquant.analysis.cost import Target, cost

    shape = (1, *sweep_data(settings.seed).input_shape)
    report = cost(model, shape, Target(**settings.target))
    luts, mac_luts, used, raw = 0.0, 0.0, [], []
    for lc in report.layers:
        layer, mac, r = lc.minifloat_luts()
        luts, mac_luts = luts + layer, mac_luts + mac
        if r is not None:
            used.append(r)
            raw.append(lc.minifloat_mac_relative_cost)
    row: dict[str, Any] = {"luts": round(luts), "mac_luts": round(mac_luts), "dsps": report.dsps}
    if used:  # the range over layers: the model's raw value and the one used
        row["minifloat_mac_cost"] = [round(min(used), 4), round(max(used), 4)]
        row["minifloat_mac_cost_raw"] = [round(min(raw), 4), round(max(raw), 4)]
    return row
