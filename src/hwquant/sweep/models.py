"""The sweep's models: float models on scikit-learn's digits, trained once and cached
as hwquant model files (data only: a re-run, a worker process or a Ray worker loads
the file, never retrains).

>>> sorted(MODELS)
['digits-cnn', 'digits-transformer']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

__all__ = ["MODELS", "SweepModel", "float_model", "float_model_path", "sweep_data"]


@dataclass(frozen=True)
class SweepModel:
    """How the sweep builds and trains a float model; ``fold_bn``: fold BatchNorm
    after training (the float model every point starts from has none)."""

    build: Callable[[], nn.Module]
    epochs: int
    fold_bn: bool = False
    lr: float = 3e-3


def _cnn() -> nn.Module:
    from hwquant.models import DigitsCNN

    return DigitsCNN()


def _transformer() -> nn.Module:
    from hwquant.models import DigitsTransformer

    return DigitsTransformer()


MODELS: dict[str, SweepModel] = {
    "digits-cnn": SweepModel(_cnn, epochs=15, fold_bn=True),
    "digits-transformer": SweepModel(_transformer, epochs=40, lr=2e-3),
}


def _known(name: str) -> SweepModel:
    if name not in MODELS:
        raise ValueError(f"unknown sweep model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


@lru_cache(maxsize=1)
def sweep_data(seed: int = 0):
    """The digits split every point uses (:func:`hwquant.datasets.digits`)."""
    from hwquant.datasets import digits

    return digits(seed=seed)


def float_model_path(name: str, cache: Path, seed: int = 0, epochs: int | None = None) -> Path:
    """The cached float model file of ``name`` (trained here on first use)."""
    spec = _known(name)
    epochs = spec.epochs if epochs is None else epochs
    path = Path(cache) / f"{name}_seed{seed}_e{epochs}.pt"
    if path.exists():
        return path
    from hwquant.algorithms import fold_bn
    from hwquant.checkpoint import save_checkpoint
    from hwquant.training import fit

    data = sweep_data(seed)
    torch.manual_seed(seed)
    model = spec.build()
    fit(model, data.train, data.test, epochs=epochs, lr=spec.lr, progress=False)
    model.eval()
    if spec.fold_bn:
        fold_bn.apply(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.pt")
    save_checkpoint(model, tmp, (1, *data.input_shape))
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return path


@lru_cache(maxsize=4)
def float_model(path: str) -> nn.Module:
    """The float model in ``path`` (loaded once per process; callers deepcopy it)."""
    from hwquant.checkpoint import load_checkpoint

    return load_checkpoint(path)[0].eval()
