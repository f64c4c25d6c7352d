"""input_rows / conv_equivalent_weight: every weight layer is rows @ weight_rowsᵀ
(+ bias), checked against torch.nn's own forward for each kind and padding mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hwquant.algorithms.common import conv_equivalent_weight, input_rows, weight_from_equivalent

LAYERS = {
    "linear": (lambda: nn.Linear(6, 4), (3, 5, 6)),
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1), (2, 4, 9)),
    "conv2d-grouped-dilated": (
        lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2),
        (2, 4, 7, 6),
    ),
    "conv2d-depthwise-reflect": (
        lambda: nn.Conv2d(3, 3, 3, padding=1, groups=3, padding_mode="reflect"),
        (2, 3, 5, 5),
    ),
    "conv2d-same-circular": (
        lambda: nn.Conv2d(2, 3, (2, 3), padding="same", padding_mode="circular"),
        (1, 2, 5, 6),
    ),
    "conv3d": (lambda: nn.Conv3d(2, 3, 2, stride=(1, 2, 1), padding=1), (1, 2, 4, 5, 3)),
    "convT1d": (
        lambda: nn.ConvTranspose1d(4, 3, 3, stride=2, padding=1, output_padding=1),
        (2, 4, 5),
    ),
    "convT2d-grouped": (
        lambda: nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 1), dilation=(1, 2), groups=2),
        (2, 4, 3, 4),
    ),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_rows_times_weight_rows_is_the_layer_output(name):
    torch.manual_seed(0)
    make, shape = LAYERS[name]
    layer = make().double()
    x = torch.randn(shape, dtype=torch.float64)
    y = layer(x)
    rows = input_rows(layer, x)  # [G, n, K]
    w = conv_equivalent_weight(layer)
    g = rows.shape[0]
    w_rows = w.reshape(g, w.shape[0] // g, -1)  # [G, C/G, K]
    out = torch.einsum("gnk,gck->ngc", rows, w_rows).reshape(rows.shape[1], -1)
    if layer.bias is not None:
        out = out + layer.bias
    linear = layer.weight.dim() == 2
    expect = y.reshape(-1, y.shape[-1]) if linear else y.movedim(1, -1).reshape(-1, y.shape[1])
    torch.testing.assert_close(out, expect, rtol=1e-9, atol=1e-9)
    assert torch.equal(weight_from_equivalent(layer, w), layer.weight)
