"""Quantized pooling.

QuantAvgPool2d does what integer hardware does: sum the window of integer codes
(N + ⌈log2 k²⌉ bits), drop the ⌈log2 k²⌉ LSBs (floor, QONNX ``Trunc``), and fold
the remaining 2^⌈log2 k²⌉ / k² factor into the output scale:

    y = ⌊Σ_window q / 2^t⌋ · s · 2^t / k²,   t = ⌈log2 k²⌉

For k² a power of two this is the exact average rounded down.

>>> import torch
>>> from hwquant.spec import A4U, LayerSpec
>>> pool = QuantAvgPool2d(2, spec=LayerSpec(input=A4U))
>>> pool(torch.rand(1, 1, 4, 4)).shape
torch.Size([1, 1, 2, 2])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwquant.core.rounding import round_ste
from hwquant.nn.kinds import layer_kind
from hwquant.nn.layer import QuantLayer
from hwquant.nn.quantizer import Quantizer
from hwquant.spec.layer_spec import LayerSpec

__all__ = ["QuantAvgPool2d", "QuantMaxPool2d"]


@layer_kind(role="pool")
class QuantMaxPool2d(QuantLayer, nn.MaxPool2d):
    """Max pooling between quantizers (max commutes with monotone quantization)."""

    float_type = nn.MaxPool2d

    def __init__(self, *args, spec: LayerSpec, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._setup_io(spec)

    @classmethod
    def from_float(cls, m: nn.MaxPool2d, spec: LayerSpec) -> QuantMaxPool2d:
        return cls(
            m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices, m.ceil_mode, spec=spec
        )


@layer_kind(role="pool", switches=True)
class QuantAvgPool2d(QuantLayer, nn.AvgPool2d):
    """Average pooling as sum-then-truncate on the integer codes of its input."""

    float_type = nn.AvgPool2d

    def __init__(self, *args, spec: LayerSpec, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        inp = spec.input
        if inp is None or not inp.format.integer_codes or inp.zero_point != "symmetric":
            raise ValueError(
                "QuantAvgPool2d needs a symmetric integer input quantizer (LayerSpec.input)"
            )
        if not inp.granularity.per_tensor:
            raise ValueError("QuantAvgPool2d needs a per-tensor input scale")
        if self.divisor_override is not None:
            raise ValueError("QuantAvgPool2d does not support divisor_override")
        self._setup_io(spec)
        k = self.kernel_size
        self.window = k * k if isinstance(k, int) else math.prod(k)
        self.trunc_bits = math.ceil(math.log2(self.window))
        self._forward = self._forward_quant  # state slot (the export pass swaps it)

    def forward(self, x: Tensor) -> Tensor:
        return self._forward(x)

    def _forward_quant(self, x: Tensor) -> Tensor:
        iq: Quantizer = self.input_quant
        x = iq(x)
        s = iq.scale()
        q = round_ste(x / s)  # integer codes (exact despite float round-off)
        acc = F.avg_pool2d(
            q,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            divisor_override=1,
        )  # window sums
        shift = 2.0**self.trunc_bits
        y = round_ste(acc / shift, torch.floor) * (s * (shift / self.window))
        return self.output_quant(y)

    def _forward_float(self, x: Tensor) -> Tensor:
        x = self.output_quant(self.input_quant(x))  # identity while calibrating / disabled
        return F.avg_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad
        )

    def disable(self) -> None:
        """Plain float average pooling (calibration, ``set_quantization(m, False)``)."""
        self._forward = self._forward_float

    def enable(self) -> None:
        self._forward = self._forward_quant

    def output_scale(self) -> Tensor:
        """Scale of the truncated output codes: s · 2^t / k²."""
        return self.input_quant.scale() * (2.0**self.trunc_bits / self.window)

    @classmethod
    def from_float(cls, m: nn.AvgPool2d, spec: LayerSpec) -> QuantAvgPool2d:
        return cls(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, spec=spec)
