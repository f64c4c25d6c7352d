"""CUDA parity (runs only where a GPU is present: ``pytest -m gpu``)."""

import pytest
import torch

import hwquant
from hwquant.models import DigitsCNN
from hwquant.spec import A4U, FP8_E4M3FN, W4, QuantSpec, Recipe, ScaleSpec, per_channel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


@pytest.mark.parametrize(
    "weights",
    [W4, QuantSpec(FP8_E4M3FN, per_channel(0), ScaleSpec(learned=True))],
    ids=["int4", "fp8"],
)
def test_cuda_matches_cpu(weights):
    torch.manual_seed(0)
    model = hwquant.quantize(DigitsCNN(), Recipe.uniform(weights=weights, activations=A4U))
    x = torch.randn(64, 1, 8, 8)
    model(x)
    model.eval()
    ref = model(x)
    gpu = model.cuda()
    out = gpu(x.cuda()).cpu()
    # float summation order differs: allow rare one-step flips, compare on average
    assert (out - ref).abs().mean() < 1e-3
    loss = gpu(x.cuda()).square().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gpu.parameters())
