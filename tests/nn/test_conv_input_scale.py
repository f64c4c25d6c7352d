"""A first conv's learned input scale gets its gradient without ∂L/∂x̂ (nn/conv.py):
the same values and gradients as autograd through the input quantizer."""

import pytest
import torch
from torch import nn

import hwquant
from hwquant.nn import QUANT_TYPES, Quantizer
from hwquant.spec import W4, IntFormat, LayerSpec, QuantSpec, ScaleSpec, accumulator_bias

LEARNED = ScaleSpec("max", learned=True, log2_domain=True)
A4 = QuantSpec(IntFormat(4), scale=LEARNED)
A4_LINEAR = QuantSpec(IntFormat(4), scale=ScaleSpec("max", learned=True))

CONVS = [
    (nn.Conv1d(3, 5, 3, padding=1), (4, 3, 11)),
    (nn.Conv2d(1, 6, 3, padding=1), (4, 1, 9, 9)),
    (nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2), (2, 4, 11, 11)),
    (nn.Conv2d(4, 8, 3, groups=2, bias=False), (2, 4, 7, 7)),
    (nn.Conv3d(2, 4, 3, padding=(1, 0, 1)), (2, 2, 5, 6, 5)),
]


def _layer(float_layer, input_spec, shape, bias=None):
    """The quantized layer in float64, its input scale set by a first batch."""
    torch.manual_seed(0)
    spec = LayerSpec(input=input_spec, weight=W4, bias=bias)
    q = QUANT_TYPES[type(float_layer)].from_float(float_layer, spec).double()
    q(torch.randn(shape, dtype=torch.float64))
    return q


def _grads(q, x, weights):
    """Output, and the gradients of all parameters, for one weighted-sum loss."""
    q.zero_grad(set_to_none=True)
    y = q(x)
    (y * weights).sum().backward()
    return y.detach(), {n: p.grad.clone() for n, p in q.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("float_layer", "shape"), CONVS, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("input_spec", [A4, A4_LINEAR], ids=["log2", "abs"])
@pytest.mark.parametrize("bias", [None, accumulator_bias(24)], ids=["float-bias", "acc-bias"])
def test_adjoint_scale_gradient_equals_autograd(float_layer, shape, input_spec, bias):
    if bias is not None and float_layer.bias is None:
        pytest.skip("no bias to quantize")
    q = _layer(float_layer, input_spec, shape, bias)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    y_fast, g_fast = _grads(q, x, 1.0)  # weights: the loss is Σ y · w
    w = torch.randn(y_fast.shape, generator=gen, dtype=torch.float64)
    y_fast, g_fast = _grads(q, x, w)
    assert q(x).grad_fn.name().endswith("_ConvLearnedInputScaleBackward")
    y_ref, g_ref = _grads(q, x.clone().requires_grad_(), w)  # autograd through ∂L/∂x̂
    assert torch.equal(y_fast, y_ref)
    assert g_fast.keys() == g_ref.keys() and "input_quant.scale_param" in g_fast
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], rtol=1e-10, atol=1e-12, msg=name)


def test_adjoint_gradient_in_float32_cnn_training():
    """The first layer of a float32 model from quantize(): the scale gradient agrees
    with autograd's to float rounding."""
    torch.manual_seed(0)
    float_cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten())
    recipe = hwquant.Recipe.uniform(weights=W4, activations=A4)
    q = hwquant.quantize(float_cnn, recipe)
    x = torch.rand(8, 1, 6, 6)
    q(x)
    scale = q[0].input_quant.scale_param
    q(x).square().sum().backward()
    fast = scale.grad.clone()
    scale.grad = None
    q(x.clone().requires_grad_()).square().sum().backward()
    torch.testing.assert_close(fast, scale.grad, rtol=1e-5, atol=1e-7)


def test_other_cases_keep_the_quantizer_path():
    q = _layer(nn.Conv2d(2, 4, 3), A4, (2, 2, 6, 6))
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    assert q(x).grad_fn.name().endswith("_ConvLearnedInputScaleBackward")
    assert "_ConvLearnedInputScale" not in q(x.requires_grad_()).grad_fn.name()
    with torch.no_grad():
        assert q(x).grad_fn is None
    q.input_quant.scale_param.requires_grad_(False)  # a frozen scale needs no gradient
    assert "_ConvLearnedInputScale" not in q(x.detach()).grad_fn.name()
    fixed = _layer(nn.Conv2d(2, 4, 3), QuantSpec(IntFormat(4), scale=ScaleSpec("max")), x.shape)
    assert fixed.input_quant.scale_tangent(x.detach()) is None  # no learned scale
    asym = QuantSpec(IntFormat(4, signed=False), scale=LEARNED, zero_point="asymmetric")
    assert Quantizer(asym).scale_tangent(x.detach()) is None
    reflect = _layer(nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"), A4, x.shape)
    assert "_ConvLearnedInputScale" not in reflect(x.detach()).grad_fn.name()


def test_autocast_keeps_the_quantizer_path():
    q = _layer(nn.Conv2d(2, 4, 3), A4, (2, 2, 6, 6)).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = q(torch.randn(2, 2, 6, 6))
    assert "_ConvLearnedInputScale" not in y.grad_fn.name()
