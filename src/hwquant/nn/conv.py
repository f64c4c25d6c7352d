"""Quantized convolutions (1d/2d/3d, grouped / depthwise) and transposed convolutions.

>>> import torch
>>> from hwquant.spec import W4, A4U, LayerSpec
>>> conv = QuantConv2d(3, 8, 3, padding=1, spec=LayerSpec(input=A4U, weight=W4))
>>> conv(torch.rand(1, 3, 8, 8)).shape
torch.Size([1, 8, 8, 8])
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwquant.nn.kinds import (
    conv_geometry,
    conv_matrix,
    conv_transpose_geometry,
    conv_transpose_matrix,
    layer_kind,
    transposed_rows,
)
from hwquant.nn.layer import QuantWeightLayer
from hwquant.nn.quantizer import Quantizer
from hwquant.spec.layer_spec import LayerSpec
from hwquant.spec.quant_spec import PerChannel, per_channel

__all__ = [
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantConvTranspose1d",
    "QuantConvTranspose2d",
    "QuantConvTranspose3d",
]

_CONV_FIELDS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
)


def _conv_kwargs(m: nn.Module) -> dict:
    kw = {f: getattr(m, f) for f in _CONV_FIELDS}
    kw["bias"] = m.bias is not None
    kw["padding_mode"] = m.padding_mode
    return kw


class _ConvLearnedInputScale(torch.autograd.Function):
    """y = conv(x̂, w) + b for a fake-quantized input x̂ = fq(x; s) where x needs no
    gradient (a first layer) and s is one learned scale.

    Autograd would reach s through ∂L/∂x̂ = convᵀ(∂L/∂y), the input gradient: for few
    input channels oneDNN's slowest convolution kernel (1.0 ms against 0.2 ms for the
    forward of a 1→16-channel 3×3 conv on 64 images of 28×28, one core). Since y is
    linear in x̂ and in w, ∂L/∂s = Σ ∂L/∂x̂ · ∂x̂/∂s = ⟨∂L/∂y, conv(∂x̂/∂s, w)⟩ =
    ⟨w, G⟩, where G is the weight gradient the convolution would have were its input
    ∂x̂/∂s: the same value (up to float summation order) from a weight-gradient kernel,
    cheap for few channels. Without groups, x̂ and ∂x̂/∂s go in as the channels of one
    input, so one ``convolution_backward`` call gives both weight gradients (and the
    bias gradient); grouped convolutions take two calls."""

    @staticmethod
    def forward(ctx, x_hat, tangent, s, w, b, geometry):  # type: ignore[override]
        ctx.save_for_backward(x_hat, tangent, w)
        ctx.geometry, ctx.s_shape = geometry, s.shape
        ctx.bias_sizes = None if b is None else list(b.shape)
        return torch.ops.aten.convolution(x_hat, w, b, *geometry)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x_hat, tangent, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        gs = gw = gb = None
        need_b = need[4] and ctx.bias_sizes is not None
        if need[2] and ctx.geometry[-1] == 1:  # one kernel call: x̂ and ∂x̂/∂s as channels
            c = w.shape[1]
            _, gw2, gb = torch.ops.aten.convolution_backward(
                g, torch.cat([x_hat, tangent], 1), torch.cat([w, w], 1), ctx.bias_sizes,
                *ctx.geometry, [False, True, need_b],
            )  # fmt: skip
            gw = gw2[:, :c] if need[3] else None
            gs = (gw2[:, c:] * w).sum().reshape(ctx.s_shape)
            return None, None, gs, gw, gb, None
        if need[3] or need_b:
            _, gw, gb = torch.ops.aten.convolution_backward(
                g, x_hat, w, ctx.bias_sizes, *ctx.geometry, [False, need[3], need_b]
            )
        if need[2]:
            _, gw_tangent, _ = torch.ops.aten.convolution_backward(
                g, tangent, w, None, *ctx.geometry, [False, True, False]
            )
            gs = (gw_tangent * w).sum().reshape(ctx.s_shape)
        return None, None, gs, gw, gb, None


class _QuantConvNd(QuantWeightLayer):
    def __init__(self, *args, spec: LayerSpec, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._setup_quant(spec)

    def forward(self, x: Tensor) -> Tensor:
        iq, tangent = self.input_quant, None
        if (
            not x.requires_grad  # a first layer (checked again by scale_tangent: cheap)
            and isinstance(iq, Quantizer)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and not torch.is_autocast_enabled(x.device.type)  # autocast: torch's own casts
        ):
            tangent = iq.scale_tangent(x)
        if tangent is not None:  # a first layer with a learned input scale
            w = self.quant_weight()
            no_pad = (0,) * len(self.stride)
            geometry = (self.stride, self.padding, self.dilation, False, no_pad, self.groups)
            y = _ConvLearnedInputScale.apply(*tangent, w, self.quant_bias(w), geometry)
            return self.output_quant(y)
        x = self.input_quant(x)
        w = self.quant_weight()
        y = self._conv_forward(x, w, self.quant_bias(w))
        return self.output_quant(y)

    float_kwargs = staticmethod(_conv_kwargs)


_CONV = dict(
    has_weight=True,
    has_bias=True,
    accumulates=True,
    geometry_fn=conv_geometry,
    matrix_fn=conv_matrix,
)
_CONV_T = dict(
    has_weight=True,
    has_bias=True,
    accumulates=True,
    out_axis=1,
    transposed=True,
    geometry_fn=conv_transpose_geometry,
    matrix_fn=conv_transpose_matrix,
    rows_fn=transposed_rows,
)


@layer_kind(**_CONV)
class QuantConv1d(_QuantConvNd, nn.Conv1d):
    float_type = nn.Conv1d


@layer_kind(**_CONV)
class QuantConv2d(_QuantConvNd, nn.Conv2d):
    float_type = nn.Conv2d


@layer_kind(**_CONV)
class QuantConv3d(_QuantConvNd, nn.Conv3d):
    float_type = nn.Conv3d


class _QuantConvTransposeNd(QuantWeightLayer):
    """Transposed convs store weights as [in, out/groups, k...]: a per-channel
    weight spec on axis 0 (output channels, the hwquant convention) is moved to
    axis 1 here."""

    _fn = None

    def __init__(self, *args, spec: LayerSpec, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        w = spec.weight
        if w is not None and isinstance(w.granularity, PerChannel) and w.granularity.axis == 0:
            w = dataclasses.replace(w, granularity=per_channel(1))
        if spec.bias is not None and spec.bias.scale.method == "accumulator" and self.groups > 1:
            raise ValueError("accumulator-scale bias is not supported on grouped transposed convs")
        self._setup_quant(spec, weight_spec=w)

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        x = self.input_quant(x)
        n = len(self.kernel_size)
        pad = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, n, self.dilation
        )
        y = type(self)._fn(
            x,
            self.quant_weight(),
            self.quant_bias(),
            self.stride,
            self.padding,
            pad,
            self.groups,
            self.dilation,
        )
        return self.output_quant(y)

    @staticmethod
    def float_kwargs(m: nn.Module) -> dict:
        kw = _conv_kwargs(m)
        kw["output_padding"] = m.output_padding
        return kw


@layer_kind(**_CONV_T)
class QuantConvTranspose1d(_QuantConvTransposeNd, nn.ConvTranspose1d):
    float_type = nn.ConvTranspose1d
    _fn = staticmethod(F.conv_transpose1d)


@layer_kind(**_CONV_T)
class QuantConvTranspose2d(_QuantConvTransposeNd, nn.ConvTranspose2d):
    float_type = nn.ConvTranspose2d
    _fn = staticmethod(F.conv_transpose2d)


@layer_kind(**_CONV_T)
class QuantConvTranspose3d(_QuantConvTransposeNd, nn.ConvTranspose3d):
    float_type = nn.ConvTranspose3d
    _fn = staticmethod(F.conv_transpose3d)
