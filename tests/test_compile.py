"""torch.compile gives the eager model's results.

Both runs use power-of-two scales: then x / s and x · (1 / s) are the same float
(inductor may compute either), so no value crosses a rounding boundary between the
two and every quantized code agrees. With arbitrary (LSQ) scales a 1-ulp change
flips a rounding tie, which moves a scale's LSQ gradient (a sum of cancelling terms
q − x/s) by a large relative amount: that comparison would depend on the CPU.
"""

import torch
from torch import nn

import hwquant
from hwquant.models import DigitsCNN
from hwquant.spec import IntFormat, QuantSpec, Recipe, ScaleSpec, per_channel

POW2 = ScaleSpec(learned=True, power_of_two=True)
RECIPE = Recipe.uniform(
    weights=QuantSpec(IntFormat(4, narrow=True), per_channel(0), POW2),
    activations=QuantSpec(
        IntFormat(4, signed=False), scale=ScaleSpec("max", learned=True, power_of_two=True)
    ),
)


def test_torch_compile_forward_matches_eager():
    torch.manual_seed(0)
    model = hwquant.quantize(DigitsCNN(channels=8), RECIPE)
    x = torch.randn(32, 1, 8, 8)
    model(x)  # initialize activation scales eagerly
    model.eval()
    eager = model(x)
    compiled = torch.compile(model)(x)
    # identical codes everywhere: only the last layer's float sum may differ in order
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_torch_compile_gradients_match_eager():
    # Max-pooling is left out: quantized activations tie inside pooling windows and
    # eager / inductor may route the gradient to different, equally valid, maxima.
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten()]
    model = hwquant.quantize(nn.Sequential(*layers, nn.Linear(8 * 16, 10)), RECIPE)
    x = torch.randn(32, 1, 8, 8)
    model(x)
    compiled = torch.compile(model)
    params = list(model.parameters())
    g_eager = torch.autograd.grad(model(x).square().sum(), params)
    g_comp = torch.autograd.grad(compiled(x).square().sum(), params)
    names = [n for n, _ in model.named_parameters()]
    for name, a, b in zip(names, g_eager, g_comp, strict=True):
        rel = float((a - b).norm() / a.norm().clamp(min=1e-12))
        assert rel < 1e-4, (name, rel)  # summation order only (measured ≤ 1e-5)


def test_fit_compiles_once_the_scales_have_warmed_up():
    """fit(compile=True) runs eagerly while a scale warms up (its state changes every
    batch: compiled, each would be a recompile), then compiles the model once."""
    from dataclasses import replace

    from hwquant.spec import A4, W4
    from hwquant.training import _Compiled

    acts = replace(A4, scale=ScaleSpec("percentile", learned=True, log2_domain=True, warmup=2))
    torch.manual_seed(0)
    model = hwquant.quantize(nn.Sequential(nn.Linear(8, 4)), Recipe.uniform(W4, acts)).train()
    run = _Compiled(model)
    x = torch.randn(16, 8)
    for _ in range(3):  # the first batch initializes, the next two warm up
        eager = run(x)
        assert run.compiled is None
    assert model[0].input_quant.state == "static"
    assert run(x).shape == eager.shape and run.compiled is not None
