"""Signal-to-quantization-noise ratios: how far a quantized model's layers are from
the float model they came from, on the same inputs.

    SQNR = 10 · log10(‖y_float‖² / ‖y_float − y_quant‖²)  dB

>>> import torch, copy, hwquant
>>> from hwquant.models import MLP
>>> from hwquant.spec import W4, A8, Recipe
>>> ref = MLP((8, 16, 4)).eval()
>>> q = hwquant.quantize(copy.deepcopy(ref), Recipe.uniform(W4, A8)).eval()
>>> sorted(layer_sqnr(ref, q, torch.randn(64, 8)))
['layers.0', 'layers.2']
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["layer_sqnr", "sqnr_db"]


def sqnr_db(reference: Tensor, quantized: Tensor) -> float:
    """10·log10(‖reference‖² / ‖reference − quantized‖²); inf when they are equal."""
    noise = (reference.double() - quantized.double()).pow(2).sum()
    signal = reference.double().pow(2).sum()
    return float("inf") if noise == 0 else float(10 * torch.log10(signal / noise))


@torch.no_grad()
def layer_sqnr(reference: nn.Module, model: nn.Module, x: Tensor) -> dict[str, float]:
    """SQNR (dB) of every weight layer's output in ``model`` (the modules with a
    ``weight_quant``) against the module of the same name in ``reference``, both
    run on ``x``. Errors accumulate: layer i sees the quantized layers before it."""
    names = [n for n, m in model.named_modules() if hasattr(m, "weight_quant")]
    ref_modules = dict(reference.named_modules())
    missing = [n for n in names if n not in ref_modules]
    if missing:
        raise ValueError(f"the reference model has no layer {missing[0]!r}")
    outputs: dict[str, list[Tensor]] = {n: [] for n in names}
    handles = []
    for net in (reference, model):
        mods = dict(net.named_modules())
        for n in names:
            handles.append(mods[n].register_forward_hook(lambda m, a, y, n=n: outputs[n].append(y)))
        try:
            net(x)
        finally:
            for h in handles:
                h.remove()
            handles.clear()
    return {n: sqnr_db(ys[0], ys[1]) for n, ys in outputs.items() if len(ys) == 2}
