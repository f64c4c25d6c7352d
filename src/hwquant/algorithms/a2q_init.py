"""Model transforms for accumulator-aware (A2Q / A2Q+) layers: Euclidean-projection
initialization from float weights (A2Q+ paper, REFERENCE.md §2) and thawing frozen
PTQ codes for QAT (after :mod:`hwquant.algorithms.a2q_ptq`).

>>> import hwquant
>>> from hwquant.models import MLP
>>> from hwquant.spec import A2Q, A8U, IntFormat, Recipe
>>> m = hwquant.quantize(MLP((16, 8)), Recipe.uniform(A2Q(IntFormat(4), accumulator_bits=12), A8U))
>>> ep_init(m)
['layers.0']
"""

from __future__ import annotations

import torch
from torch import nn

from hwquant.nn.a2q import a2q_layers

__all__ = ["ep_init", "unfreeze"]


@torch.no_grad()
def ep_init(model: nn.Module) -> list[str]:
    """Euclidean-projection init of every A2Q layer of ``model``, in place (the
    weights are replaced by their projection). Returns the layer paths."""
    done = []
    for path, layer, q in a2q_layers(model):
        layer.weight.copy_(q.ep_init(layer.weight))
        done.append(path)
    return done


@torch.no_grad()
def unfreeze(model: nn.Module) -> list[str]:
    """:meth:`~A2QWeightQuantizer.unfreeze` every frozen A2Q layer of ``model`` in place
    (QAT from accumulator-aware PTQ codes). Returns the layer paths."""
    done = []
    for path, layer, q in a2q_layers(model):
        if bool(q.frozen):
            layer.weight.copy_(q.unfreeze(layer.weight))
            done.append(path)
    return done
