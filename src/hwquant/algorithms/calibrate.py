"""Activation calibration as a registered algorithm.

Every activation quantizer (scale method not ``fixed``) observes the model's
inputs from ``data`` in float, then sets its scale per tensor / channel / group
as its spec says, with the spec's method or, when ``config.method`` is given:

    max:        s = max|x| / q_max
    percentile: s = P_p(|x|) / q_max          (p = ``config.percentile``)
    mse:        s = argmin_c E[(x − Q_c(x))²] / q_max over clipping values c

Example:
    >>> import torch
    >>> from hwquant import quantize
    >>> from hwquant.models import MLP
    >>> from hwquant.spec import W4, A8U, Recipe
    >>> qm = quantize(MLP((8, 4)), Recipe.uniform(weights=W4, activations=A8U))
    >>> report = apply(qm, torch.rand(16, 8), CalibrateConfig(method="max"))
    >>> all(e["method"] == "max" for e in report.quantizers.values())
    True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import nn

from hwquant.algorithms.common import batches, check_choice, check_range, eval_mode, register

__all__ = ["CalibrateConfig", "CalibrateReport", "apply"]

_METHODS = ("max", "percentile", "mse")


@dataclass(frozen=True)
class CalibrateConfig:
    """``method``: None keeps each spec's (the recipe's) method; ``percentile`` is used
    with ``method="percentile"``; ``max_batches`` limits the data used."""

    method: str | None = None
    percentile: float = 99.99
    max_batches: int | None = None

    def __post_init__(self) -> None:
        check_choice(self, "method", _METHODS, optional=True)
        check_range(self, "percentile", 0, 100, lo_open=True)
        check_range(self, "max_batches", 1, integer=True, optional=True)


@dataclass
class CalibrateReport:
    # name -> {"method", "scale_min", "scale_max", "scale_mean", "clipped_fraction"}
    quantizers: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"quantizers": self.quantizers}


def _expected_shape(model: nn.Module) -> str | None:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return f"(batch, ..., {m.in_features})"
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            return f"(batch, {m.in_channels}, {', '.join(['...'] * (m.weight.dim() - 2))})"
    return None


@register("calibrate", CalibrateConfig, needs_data=True)
def apply(model: nn.Module, data, config: CalibrateConfig | None = None) -> CalibrateReport:
    """Calibrate every activation quantizer of ``model`` (in place) from ``data``."""
    from hwquant.api import calibration, quantizers

    config = config or CalibrateConfig()
    xs = batches(data, config.max_batches)
    qs = [
        (n, q)
        for n, q in quantizers(model)
        if q.role == "activation" and q.spec.scale.method != "fixed"
    ]
    if not qs:
        raise ValueError("calibrate: the model has no activation quantizers to calibrate")
    # An override chooses this calibration's scales only: each quantizer's spec (and so
    # the model file's recipe) keeps the recipe's method, restored below.
    specs = [(q, q.spec) for _, q in qs]
    if config.method is not None:
        for _, q in qs:
            sc = dataclasses.replace(
                q.spec.scale, method=config.method, percentile=float(config.percentile)
            )
            q.spec = dataclasses.replace(q.spec, scale=sc)
    try:
        with eval_mode(model), calibration(model):
            for i, x in enumerate(xs):
                try:
                    model(x)
                except RuntimeError as e:
                    want = _expected_shape(model)
                    hint = f"; expected input shape {want}" if want else ""
                    raise ValueError(
                        f"calibration data batch {i} of shape {tuple(x.shape)} does not fit "
                        f"the model{hint}: {e}"
                    ) from e
        methods = {id(q): q.spec.scale.method for _, q in qs}
    finally:
        for q, spec in specs:
            q.spec = spec
    report = CalibrateReport()
    for n, q in qs:
        s = q.scale().detach().float()
        report.quantizers[n] = {
            "method": methods[id(q)],
            "scale_min": float(s.min()),
            "scale_max": float(s.max()),
            "scale_mean": float(s.mean()),
            "clipped_fraction": q.clipped_fraction,
        }
    return report
