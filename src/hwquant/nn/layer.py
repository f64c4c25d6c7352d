"""Base classes of the quantized layers: a torch layer plus owned quantizers.

``QuantLayer`` gives a layer ``input_quant`` and ``output_quant``;
``QuantWeightLayer`` adds ``weight_quant`` and ``bias_quant``. Absent quantizers
are ``nn.Identity`` so forward never branches. Leaf classes subclass exactly one
of these plus the torch layer (``class QuantLinear(QuantWeightLayer, nn.Linear)``),
so ``isinstance(q, nn.Linear)`` holds and float state dicts load (the quantizer
state is then re-derived: learned weight scales from the loaded weights,
activation scales from the first batch).

A pruned weight layer holds a boolean ``weight_mask`` buffer (same shape as the
weight, True = kept), set by :meth:`QuantWeightLayer.set_weight_mask` (see
:mod:`hwquant.algorithms.prune`). In training mode the weight path is
``weight_quant(weight · mask)``, so gradients never revive a pruned weight; the
weight parameter itself also holds exact zeros at pruned positions, restored
whenever the layer leaves training mode (``eval()``) and after a state dict is
loaded, so every reader of ``layer.weight`` (export, cost, accumulator analysis)
sees the pruned weights. Loading a state dict that has a mask into a layer that has
none creates the mask.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from hwquant.core import kernels
from hwquant.nn.a2q import A2QWeightQuantizer, DeadLayerWarning
from hwquant.nn.kinds import kind_of
from hwquant.nn.pot import PoTWeightQuantizer
from hwquant.nn.quantizer import BiasQuantizer, Quantizer
from hwquant.spec.a2q import A2Q
from hwquant.spec.layer_spec import LayerSpec
from hwquant.spec.pot import PoTWeight
from hwquant.spec.quant_spec import QuantSpec

__all__ = [
    "WEIGHT_QUANTIZERS",
    "QuantLayer",
    "QuantWeightLayer",
    "activation_quantizer",
    "weight_quantizer",
]


def _plain_weight_quantizer(layer: nn.Module, spec: QuantSpec) -> Quantizer:
    return Quantizer.for_weight(spec, layer.weight)


#: weight spec type → builder ``(layer, spec) -> quantizer`` (the nearest registered
#: base class of the spec's type wins): A2Q needs the layer's input format, PoTWeight
#: normalizes rows and mixes level sets, every other QuantSpec is a plain Quantizer.
WEIGHT_QUANTIZERS: dict[type, Callable[[nn.Module, QuantSpec], Quantizer]] = {
    QuantSpec: _plain_weight_quantizer,
    A2Q: A2QWeightQuantizer.for_layer,
    PoTWeight: PoTWeightQuantizer.for_layer,
}


def weight_quantizer(layer: nn.Module, spec: QuantSpec) -> Quantizer:
    """The quantizer of ``layer.weight`` for ``spec`` (:data:`WEIGHT_QUANTIZERS`)."""
    for t in type(spec).__mro__:
        if t in WEIGHT_QUANTIZERS:
            return WEIGHT_QUANTIZERS[t](layer, spec)
    raise ValueError(f"no weight quantizer for {spec!r}: it is not a QuantSpec")


def activation_quantizer(spec, name: str = "") -> nn.Module:
    """A Quantizer for activations, or Identity when ``spec`` is None."""
    return nn.Identity() if spec is None else Quantizer(spec, name=name)


def _unit_multiplier(d) -> bool:
    """Whether a weight quantizer's code multiplier D leaves s_in·s_w as the
    accumulator scale: D = 1 (integer codes), or None (minifloats: no integer codes)."""
    return d is None or (type(d) is int and d == 1)


def _quantizer_state_missing(module: nn.Module, prefix: str, state_dict) -> bool:
    if not isinstance(module, Quantizer):
        return False
    keys = [prefix + k for k in module.state_dict()]
    return bool(keys) and not any(k in state_dict for k in keys)


class QuantLayer(nn.Module):
    """Adds input / output quantizers to a torch layer; forward = out(f(in(x)))."""

    float_type: ClassVar[type[nn.Module]]

    def _setup_io(self, spec: LayerSpec) -> None:
        if not isinstance(spec, LayerSpec):
            raise ValueError(f"{type(self).__name__}.spec must be a LayerSpec, got {spec!r}")
        self.layer_spec = spec
        self.input_quant = activation_quantizer(spec.input)
        self.output_quant = activation_quantizer(spec.output)

    def forward(self, x: Tensor) -> Tensor:
        return self.output_quant(super().forward(self.input_quant(x)))

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._after_float_load(state_dict, prefix)

    def _after_float_load(self, state_dict, prefix: str) -> None:
        pass


MASK = "weight_mask"


class QuantWeightLayer(QuantLayer):
    """Adds weight and bias quantizers; subclasses call ``_setup_quant(spec)``."""

    weight_mask: Tensor | None

    def _setup_quant(self, spec: LayerSpec, weight_spec=None) -> None:
        self._setup_io(spec)
        self.register_buffer(MASK, None)  # a tensor once pruned; None is not saved
        wspec = weight_spec or spec.weight
        self.weight_quant = nn.Identity() if wspec is None else weight_quantizer(self, wspec)
        self._setup_bias()
        self._revive_a2q(stacklevel=4)  # the caller of the layer's __init__

    @torch.no_grad()
    def _revive_a2q(self, stacklevel: int) -> None:
        """An A2Q layer whose every code is 0 takes ep_init's weights, with a
        :class:`~hwquant.nn.a2q.DeadLayerWarning` pointing ``stacklevel`` frames up
        (tests/a2q/test_a2q_revive.py checks that it names the user's line)."""
        if isinstance(self.weight_quant, A2QWeightQuantizer) and not self.weight.is_meta:
            revived = self.weight_quant.revive(self.weight, stacklevel=stacklevel + 2)
            if revived is not None:
                self.weight.copy_(revived)

    def _has_bias(self) -> bool:
        """Whether this layer kind has a ``bias`` attribute (an embedding has none)."""
        kind = kind_of(self)
        return kind is None or kind.has_bias

    def _setup_bias(self) -> None:
        has = self._has_bias() and self.bias is not None
        bspec = self.layer_spec.bias if has else None
        if bspec is None:
            self.bias_quant = nn.Identity()
            self.quant_bias = self._bias_float
        elif bspec.scale.method == "accumulator":
            self.bias_quant = BiasQuantizer(bspec)
            self.quant_bias = self._bias_on_accumulator_scale
        else:
            self.bias_quant = Quantizer.for_weight(bspec, self.bias)
            self.quant_bias = self._bias_own_scale

    def add_bias(self, bias: Tensor) -> None:
        """Give a bias-less layer a bias (e.g. from BatchNorm folding), quantized as the
        layer's LayerSpec says (an accumulator-scale integer bias, a float one, …)."""
        if not self._has_bias():
            raise ValueError(f"{type(self).__name__} has no bias")
        if self.bias is not None:
            raise ValueError(f"{type(self).__name__} already has a bias")
        self.bias = nn.Parameter(bias.detach().clone())
        self._setup_bias()

    def quant_weight(self) -> Tensor:
        """The fake-quantized weight (of the masked weight when the layer is pruned)."""
        return self.weight_quant(self.masked_weight())

    def masked_weight(self) -> Tensor:
        """``weight · weight_mask`` in training mode (the product carries the gradient,
        zero at pruned positions); else ``weight``, which holds the zeros itself."""
        if getattr(self, MASK, None) is None or not self.training:
            return self.weight
        return self.weight * self.weight_mask

    @torch.no_grad()
    def set_weight_mask(self, mask: Tensor | None) -> None:
        """Keep only the weights where ``mask`` is True (a bool tensor of the weight's
        shape) and zero the others; None removes the mask (weights stay as they are).

        >>> from hwquant.nn import QuantLinear
        >>> from hwquant.spec import W4, LayerSpec
        >>> layer = QuantLinear(2, 1, bias=False, spec=LayerSpec(weight=W4))
        >>> layer.set_weight_mask(torch.tensor([[True, False]]))
        >>> float(layer.weight[0, 1].detach()), int(layer.weight_mask.sum())
        (0.0, 1)
        """
        if MASK not in self._buffers:
            self.register_buffer(MASK, None)
        if mask is None:
            self.weight_mask = None
            return
        if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(self.weight.shape):
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(
                f"{type(self).__name__}: weight mask must have the weight's shape "
                f"{tuple(self.weight.shape)}, got {got}"
            )
        self.weight_mask = mask.to(device=self.weight.device, dtype=torch.bool).clone()
        self.apply_weight_mask()

    @torch.no_grad()
    def apply_weight_mask(self) -> None:
        """Zero the weight at the pruned positions (a no-op without a mask)."""
        if getattr(self, MASK, None) is not None:
            self.weight.masked_fill_(~self.weight_mask, 0.0)

    def train(self, mode: bool = True) -> QuantWeightLayer:
        super().train(mode)
        if not mode:  # an optimizer with momentum may have moved pruned weights
            self.apply_weight_mask()
        return self

    # quant_bias(w_hat=None) is one of these three: ``w_hat``, the quantized weight of
    # the same forward pass, saves A2Q layers from quantizing the weight again.
    def _bias_float(self, w_hat: Tensor | None = None) -> Tensor | None:
        return self.bias

    def _bias_own_scale(self, w_hat: Tensor | None = None) -> Tensor:
        return self.bias_quant(self.bias)

    def accumulator_bias(self, s_acc: Tensor, w_hat: Tensor | None = None) -> Tensor:
        """The float bias that goes onto the accumulator scale ``s_acc``: A2Q layers
        clip it so that b + Σ x·q fits their P-bit accumulator (given the codes of
        ``w_hat``, the layer's quantized weight, when the caller has it)."""
        if isinstance(self.weight_quant, A2QWeightQuantizer):
            return self.weight_quant.clip_bias(self.bias, s_acc, self.weight, w_hat)
        return self.bias

    def accumulator_scale(self, weight: Tensor | None = None) -> Tensor:
        """The value of one unit of the integer accumulator: s_in·s_w/D (per output
        channel, shaped like the weight scale), D the weight quantizer's
        ``code_multiplier`` (1 for integer weights, none for minifloats; power-of-two /
        APoT / MSQ codes sit at s_w/D). A bias on the accumulator scale is quantized on it. ``weight``:
        default the (masked) weight."""
        wq = self.weight_quant
        w = self.masked_weight() if weight is None else weight
        s = self.input_quant.scale() * wq.scale_for(w)
        d = wq.code_multiplier()
        return s if _unit_multiplier(d) else s / d

    def accumulator_scale_source(self) -> tuple[Tensor, int, Tensor, int] | None:
        """What :meth:`accumulator_scale` multiplies, for the compiled kernels: (input
        scale tensor, code, weight scale tensor, code) of
        :meth:`Quantizer.scale_source` where the accumulator scale is s_in·s_w itself
        (no code multiplier) and both scales are plain; else None."""
        iq, wq = self.input_quant, self.weight_quant
        if not isinstance(iq, Quantizer) or not isinstance(wq, Quantizer):
            return None
        if not _unit_multiplier(wq.code_multiplier()):
            return None
        src_in, src_w = iq.scale_source(), wq.scale_source()
        return None if src_in is None or src_w is None else (*src_in, *src_w)

    def _bias_on_accumulator_scale(self, w_hat: Tensor | None = None) -> Tensor:
        # The bias follows s_in·s_w; its rounding does not steer those scales (no
        # gradient through s_acc), which saves the small model a third of its
        # quantizer work per step. The bias itself learns straight-through.
        y = self._compiled_bias(w_hat)
        if y is not None:
            return y
        with torch.no_grad():
            s_acc = self.accumulator_scale()
        return self.bias_quant(self.accumulator_bias(s_acc, w_hat), s_acc)

    def _compiled_bias(self, w_hat: Tensor | None) -> Tensor | None:
        """_bias_on_accumulator_scale as one compiled node (the same values and
        gradient, :func:`hwquant.core.kernels.accumulator_bias`), or None where the
        kernel does not serve this layer now (the formula runs)."""
        bq, wq = self.bias_quant, self.weight_quant
        g = bq.grid
        if g.kernel is None or bq._forward != bq._forward_quant:
            return None
        sources = self.accumulator_scale_source()
        if sources is None:
            return None
        clip = wq.bias_clip_args(self.bias, w_hat) if isinstance(wq, A2QWeightQuantizer) else ()
        if clip is None:
            return None
        return kernels.accumulator_bias(self.bias, *sources, g.lo, g.hi, g.kernel, *clip)

    @torch.no_grad()
    def reset_weight_scale(self) -> None:
        """Re-derive learned weight / bias scales from the current parameters (an A2Q
        layer whose every code would be 0 is initialized by ep_init instead, which
        changes its weight: :meth:`A2QWeightQuantizer.revive`)."""
        bias = self.bias if self._has_bias() else None
        for q, p in ((self.weight_quant, self.weight), (self.bias_quant, bias)):
            if isinstance(q, Quantizer) and q.spec.scale.learned and p is not None:
                q.init_from(p)
        self._revive_a2q(stacklevel=4)  # the caller of reset_weight_scale

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        mask = state_dict.get(prefix + MASK)
        if isinstance(mask, Tensor) and getattr(self, MASK, None) is None:  # pruned state
            if MASK not in self._buffers:
                self.register_buffer(MASK, None)
            self.weight_mask = torch.ones_like(self.weight, dtype=torch.bool)
        super()._load_from_state_dict(state_dict, prefix, *args)
        self.apply_weight_mask()

    def _after_float_load(self, state_dict, prefix: str) -> None:
        if _quantizer_state_missing(self.weight_quant, prefix + "weight_quant.", state_dict):
            self.reset_weight_scale()

    @classmethod
    def from_float(cls, module: nn.Module, spec: LayerSpec) -> QuantWeightLayer:
        """The quantized twin of ``module`` (same hyper-parameters, weights copied)."""
        p = module.weight
        with warnings.catch_warnings():  # the random init is replaced by the weights below
            warnings.simplefilter("ignore", DeadLayerWarning)
            q = cls(**cls.float_kwargs(module), spec=spec, device=p.device, dtype=p.dtype)
        with torch.no_grad():
            q.weight.copy_(module.weight)
            if q._has_bias() and module.bias is not None:
                q.bias.copy_(module.bias)
        q.reset_weight_scale()
        q.train(module.training)
        return q

    @staticmethod
    def float_kwargs(module: nn.Module) -> dict:  # pragma: no cover - overridden
        raise NotImplementedError
