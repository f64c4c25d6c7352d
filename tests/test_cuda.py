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


def test_cuda_quantized_lstm_matches_cpu_and_trains():
    from hwquant.nn import QuantLSTM
    from hwquant.spec import A4, LayerSpec

    torch.manual_seed(0)
    q = QuantLSTM(8, 16, num_layers=2, bidirectional=True, spec=LayerSpec(input=A4, weight=W4))
    x = torch.randn(12, 4, 8)
    q(x)
    q.eval()
    ref = q(x)[0]
    gpu = q.cuda()
    out = gpu(x.cuda())[0].cpu()
    assert ((out - ref).abs() * 7 > 0.5).float().mean() < 0.01  # rare one-step flips
    gpu.train()
    gpu(x.cuda())[0].square().mean().backward()
    assert gpu.weight_hh_l1_reverse.grad is not None
