"""Algorithms that change models: one file per method, a frozen ``Config`` dataclass and
``apply(model, data, config) -> Report``, registered by name (:mod:`.common`).

>>> from hwquant.algorithms import get, names
>>> names()[:4]
('a2q_ep_init', 'a2q_ptq', 'adaround', 'bias_correction')
"""

from hwquant.algorithms import (
    a2q_init,
    a2q_ptq,
    adaround,
    bias_correction,
    calibrate,
    equalize,
    fold_bn,
    gptq,
    prune,
    smoothquant,
)
from hwquant.algorithms.common import Algorithm, config_from, get, names, pipeline, register

__all__ = [
    "Algorithm",
    "a2q_init",
    "a2q_ptq",
    "adaround",
    "bias_correction",
    "calibrate",
    "config_from",
    "equalize",
    "fold_bn",
    "get",
    "gptq",
    "names",
    "pipeline",
    "prune",
    "register",
    "smoothquant",
]
