"""QuantLinear: nn.Linear with input, weight, bias and output quantizers.

>>> import torch
>>> from hwquant.spec import W4, A4U, LayerSpec
>>> layer = QuantLinear(16, 4, spec=LayerSpec(input=A4U, weight=W4))
>>> layer(torch.rand(2, 16)).shape
torch.Size([2, 4])
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from hwquant.nn.kinds import layer_kind, linear_geometry
from hwquant.nn.layer import QuantWeightLayer
from hwquant.spec.layer_spec import LayerSpec

__all__ = ["QuantLinear"]


@layer_kind(has_weight=True, has_bias=True, accumulates=True, geometry_fn=linear_geometry)
class QuantLinear(QuantWeightLayer, nn.Linear):
    float_type = nn.Linear

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        spec: LayerSpec,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._setup_quant(spec)

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_quant(x)
        w = self.quant_weight()
        return self.output_quant(F.linear(x, w, self.quant_bias(w)))

    @staticmethod
    def float_kwargs(m: nn.Linear) -> dict:
        return {
            "in_features": m.in_features,
            "out_features": m.out_features,
            "bias": m.bias is not None,
        }
