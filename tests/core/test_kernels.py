"""The compiled CPU kernel against the PyTorch formula it replaces (core/grid.py),
bit for bit: values, gradients of x and s, with and without autograd; and against a
NumPy reference of the integer quantizer."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hwquant.core import kernels
from hwquant.core.grid import fake_quantize, fake_quantize_tangent, make_grid
from hwquant.spec.formats import IntFormat, MinifloatFormat

pytestmark = pytest.mark.skipif(not kernels.available(), reason=kernels.unavailable_reason())

FORMATS = [
    IntFormat(4),
    IntFormat(8, signed=False),
    IntFormat(3, narrow=True),
    IntFormat(2, signed=False),
    IntFormat(24),
    IntFormat(32),
]
SHAPES = [  # (scale shape, tensor shape): per-tensor, per-row weights, per-channel NCHW, bias
    ((), (64, 33)),
    ((5, 1), (5, 17)),
    ((1, 3, 1, 1), (2, 3, 4, 4)),
    ((7,), (7,)),
]


@pytest.fixture
def formula():
    """Run the body with the PyTorch formula (kernel off), then restore."""

    class Switch:
        def __enter__(self):
            kernels.enable(False)

        def __exit__(self, *exc):
            kernels.enable(True)

    return Switch()


def _both(x, s, grid, gy, formula):
    """(value, ∂x, ∂s, no-grad value) by the kernel, then by the formula."""
    out = []
    for path in (nullcontext(), formula):
        xa, sa = x.clone().requires_grad_(), s.clone().requires_grad_()
        with path:
            y = fake_quantize(xa, sa, None, grid)
            y.backward(gy)
            with torch.no_grad():
                plain = fake_quantize(x, s, None, grid)
        out.append((y.detach(), xa.grad, sa.grad, plain))
    return out


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    nan = torch.isnan(a)
    return bool(torch.equal(nan, torch.isnan(b))) and bool(torch.equal(a[~nan], b[~nan]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("rounding", ["half_even", "toward_zero"])
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_kernel_equals_the_formula(dtype, fmt, rounding, shapes, formula):
    s_shape, x_shape = shapes
    grid = make_grid(fmt, rounding)
    assert grid.kernel is not None
    gen = torch.Generator().manual_seed(0)
    s = torch.rand(s_shape, generator=gen, dtype=dtype) + 0.1
    k = torch.randint(-300, 300, x_shape, generator=gen).to(dtype)
    cases = [
        torch.randn(x_shape, generator=gen, dtype=dtype) * 4,  # in and beyond the range
        (k + 0.5) * s,  # ties (exact halves where s·(k + ½) is exact)
        torch.randn(x_shape, generator=gen, dtype=dtype) * 1e7,  # large codes (INT24/32)
    ]
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0], dtype=dtype)
    cases[0].view(-1)[:4] = special
    for x in cases:
        gy = torch.randn(x_shape, generator=gen, dtype=dtype)
        kern, ref = _both(x, s, grid, gy, formula)
        for a, b, what in zip(
            kern, ref, ("value", "grad x", "grad s", "no-grad value"), strict=True
        ):
            assert _same(a, b), f"{what} differs"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fmt", FORMATS[:4], ids=lambda f: f.name)
@pytest.mark.parametrize("rounding", ["half_even", "toward_zero"])
def test_tangent_kernel_equals_the_formula(dtype, fmt, rounding, formula):
    """fake_quantize_tangent (x̂, ∂x̂/∂s): compiled against the formula, bit for bit,
    in and beyond the range, at ties and on nan / ±inf / −0."""
    grid = make_grid(fmt, rounding)
    gen = torch.Generator().manual_seed(2)
    s = torch.tensor(0.37, dtype=dtype)
    k = torch.randint(-30, 30, (5, 40), generator=gen).to(dtype)
    for x in (torch.randn(5, 40, generator=gen, dtype=dtype) * 4, (k + 0.5) * s):
        x.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
        kern = fake_quantize_tangent(x, s, grid)
        assert kernels.fake_quant_tangent(x, s, grid.lo, grid.hi, grid.kernel) is not None
        with formula:
            ref = fake_quantize_tangent(x, s, grid)
        for a, b in zip(kern, ref, strict=True):
            assert _same(a, b)
    assert kernels.fake_quant_tangent(x, s.expand(1, 1), grid.lo, grid.hi, grid.kernel)
    assert kernels.fake_quant_tangent(x, torch.ones(5, 1, dtype=dtype), -8, 7, 0) is None


@settings(max_examples=60, deadline=None)
@given(
    x=arrays(np.float32, st.integers(1, 40), elements=st.floats(-1e4, 1e4, width=32)),
    log2_s=st.floats(-12, 4),
    bits=st.integers(2, 16),
    signed=st.booleans(),
)
def test_kernel_matches_numpy(x, log2_s, bits, signed):
    """clamp(rint(x/s), q_min, q_max)·s in float32 NumPy (rint: ties to even)."""
    fmt = IntFormat(bits, signed=signed)
    s = np.float32(2.0**log2_s) * np.float32(1.37)
    y = fake_quantize(torch.from_numpy(x), torch.tensor(s), None, make_grid(fmt))
    lo, hi = np.float32(fmt.min_value), np.float32(fmt.max_value)
    ref = np.clip(np.rint(np.clip(x / s, lo, hi)), lo, hi) * s
    np.testing.assert_array_equal(y.numpy(), ref)


def test_non_contiguous_input_and_gradients(formula):
    grid = make_grid(IntFormat(4))
    x = torch.randn(16, 8).t()  # a transposed weight
    s = torch.tensor(0.2)
    gy = torch.randn(16, 8).t()  # a non-contiguous incoming gradient
    kern, ref = _both(x, s, grid, gy, formula)
    assert all(_same(a, b) for a, b in zip(kern, ref, strict=True))


def test_what_it_does_not_serve_takes_the_formula():
    grid = make_grid(IntFormat(4))
    x = torch.randn(4, 4)
    assert kernels.fake_quant(x, torch.tensor(0.5, dtype=torch.float64), -8, 7, 0) is None
    assert kernels.fake_quant(x.half(), torch.tensor(0.5).half(), -8, 7, 0) is None
    assert kernels.fake_quant(x, torch.ones(3, 1), -8, 7, 0) is None  # does not broadcast
    assert kernels.fake_quant(x, 0.5, -8, 7, 0) is None  # a float scale
    # minifloats and other roundings have no kernel code
    assert make_grid(MinifloatFormat(4, 3)).kernel is None
    assert make_grid(IntFormat(4), "half_up").kernel is None
    # the formula still broadcasts where the kernel would not
    assert fake_quantize(x[:1], torch.full((3, 1), 0.5), None, grid).shape == (3, 4)


def test_traced_code_sees_the_formula():
    """torch.compile traces fake_quantize as PyTorch ops (no custom op in the graph)."""
    grid = make_grid(IntFormat(4))
    s = torch.tensor(0.25, requires_grad=True)

    def f(x):
        return fake_quantize(x, s, None, grid)

    x = torch.randn(8, 8)
    compiled = torch.compile(f, backend="eager", fullgraph=True)
    assert torch.equal(compiled(x), f(x))


def test_disabling_falls_back_without_a_warning(recwarn):
    grid = make_grid(IntFormat(4))
    x = torch.randn(5)
    kernels.enable(False)
    try:
        assert kernels.fake_quant(x, torch.tensor(0.3), -8, 7, 0) is None
        y = fake_quantize(x, torch.tensor(0.3), None, grid)
    finally:
        kernels.enable(True)
    assert torch.equal(y, fake_quantize(x, torch.tensor(0.3), None, grid))
    assert not [w for w in recwarn if "kernel" in str(w.message)]


# ---------------------------------------------------------------- A2Q / A2Q+
def _a2q_layer(zero_centre: bool, bits: int, seed: int, log2: bool = True):
    from hwquant.nn import QuantLinear
    from hwquant.spec import A2Q, A4U, A2QPlus, LayerSpec, ScaleSpec

    torch.manual_seed(seed)
    scale = ScaleSpec("max", learned=True, log2_domain=log2)  # s = 2^p or |p|
    kind = A2QPlus if zero_centre else A2Q
    spec = kind(IntFormat(4, narrow=True), scale=scale, accumulator_bits=bits)
    layer = QuantLinear(48, 24, spec=LayerSpec(input=A4U, weight=spec))
    with torch.no_grad():  # some channels beyond the budget (g clamped), some inside
        layer.weight_quant.norm_param.add_(torch.randn(24))
        layer.bias.mul_(50.0)
    return layer


def _a2q_run(layer, x, gy):
    layer.zero_grad(set_to_none=True)
    w = layer.quant_weight()
    b = layer.quant_bias(w)
    (w * gy).sum().backward(inputs=list(layer.parameters()), retain_graph=False)
    b2 = layer.quant_bias(layer.quant_weight())
    grads = [p.grad.clone() if p.grad is not None else None for p in layer.parameters()]
    return [w.detach(), b.detach(), b2.detach(), *grads]


@pytest.mark.parametrize("zero_centre", [False, True], ids=["A2Q", "A2Q+"])
@pytest.mark.parametrize("bits", [10, 12, 16])
@pytest.mark.parametrize("log2", [True, False], ids=["s=2^p", "s=|p|"])
def test_a2q_kernel_equals_the_autograd_node(zero_centre, bits, log2, formula):
    """Weight values, bias clip and every parameter's gradient: compiled = Python."""
    layer = _a2q_layer(zero_centre, bits, seed=bits, log2=log2)
    x = torch.rand(8, 48)
    layer(x)  # initializes the input quantizer
    gy = torch.randn(24, 48)
    kern = _a2q_run(layer, x, gy)
    with formula:
        ref = _a2q_run(layer, x, gy)
    for a, b in zip(kern, ref, strict=True):
        assert (a is None and b is None) or _same(a, b)


@pytest.mark.parametrize("case", ["conv-f64", "conv-transposed"])
def test_a2q_kernel_on_conv_weights(case, formula):
    """4-d weights (rows: the output channels) and float64: compiled = Python; a
    transposed conv's rows lie along axis 1, which takes the formula."""
    from hwquant.nn import QuantConv2d, QuantConvTranspose2d
    from hwquant.spec import A2Q, A4U, LayerSpec

    torch.manual_seed(5)
    spec = LayerSpec(input=A4U, weight=A2Q(IntFormat(4, narrow=True), accumulator_bits=12))
    if case == "conv-f64":
        layer = QuantConv2d(6, 10, 3, spec=spec).double()
    else:
        layer = QuantConvTranspose2d(6, 10, 3, spec=spec)
    wq = layer.weight_quant
    with torch.no_grad():
        wq.norm_param.add_(torch.randn(wq.channels, dtype=wq.norm_param.dtype))
    gy = torch.randn(layer.weight.shape, dtype=layer.weight.dtype)
    if case == "conv-f64":
        src = wq.scale_source()
        assert (
            kernels.a2q_fake_quant(layer.weight, wq.norm_param, *src, 9.0, False, -7, 7) is not None
        )
    else:
        assert wq.axis == 1
    runs = []
    for path in (nullcontext(), formula):
        layer.zero_grad(set_to_none=True)
        with path:
            w = layer.quant_weight()
        (w * gy).sum().backward()
        runs.append([w.detach()] + [p.grad for p in (layer.weight, wq.norm_param, wq.scale_param)])
    for a, b in zip(*runs, strict=True):
        assert _same(a, b)


def test_a2q_bias_range_equals_the_reference():
    from hwquant.core.accumulator import bias_code_range, worst_case_range

    gen = torch.Generator().manual_seed(3)
    s = torch.rand(6, generator=gen) + 0.05
    q = torch.randint(-7, 8, (6, 40), generator=gen).float()
    w_hat = q * s.unsqueeze(1)
    for x_min, x_max, bits in [(0, 15, 12), (-8, 7, 16), (0, 255, 24)]:
        lo, hi = kernels.a2q_bias_range(w_hat, s, x_min, x_max, bits)
        ref = bias_code_range(
            *worst_case_range(torch.round(w_hat / s.unsqueeze(1)), x_min, x_max), bits
        )
        assert torch.equal(lo, ref[0]) and torch.equal(hi, ref[1])


def test_without_a_compiler_it_warns_once_and_uses_the_formula(tmp_path):
    """A machine without a working C++ compiler: one RuntimeWarning naming the reason,
    then the PyTorch formula (same values); the library keeps working."""
    import os
    import subprocess
    import sys

    script = (
        "import warnings, torch\n"
        "warnings.simplefilter('always')\n"
        "from hwquant.core import kernels\n"
        "from hwquant.core.grid import fake_quantize, fake_quantize_tangent, make_grid\n"
        "from hwquant.spec.formats import IntFormat\n"
        "g = make_grid(IntFormat(4))\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    y = [fake_quantize(torch.tensor([0.26, 9.0]), torch.tensor(0.25), None, g)"
        " for _ in range(3)]\n"
        "msgs = [str(w.message) for w in seen if 'kernel' in str(w.message)]\n"
        "print(len(msgs), y[0].tolist(), kernels.available())\n"
        "print(msgs[0])\n"
    )
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path), CXX="/bin/false")
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    first, message = out.stdout.strip().splitlines()[:2]
    assert first == "1 [0.25, 1.75] False"
    assert "unavailable" in message and "same results" in message


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # torch's vmap fallback
def test_torch_func_transforms_see_the_formula():
    """torch.func.grad / vmap wrap tensors in C++; they get the formula's values."""
    grid = make_grid(IntFormat(4))
    s = torch.tensor(0.3)
    x = torch.randn(4, 5)

    def f(t):
        return fake_quantize(t, s, None, grid)

    gx = torch.func.grad(lambda t: (f(t) * t).sum())(x[0])
    xa = x[0].clone().requires_grad_()
    (f(xa) * xa).sum().backward()
    assert _same(gx, xa.grad)
    assert _same(torch.vmap(f)(x), f(x))


@pytest.mark.parametrize("parametrization", ["abs", "exp2"])
@pytest.mark.parametrize("shapes", SHAPES[:3], ids=str)
def test_learned_scale_parametrizations_equal_the_formula(parametrization, shapes, formula):
    """fake_quantize_param: s = |p| or 2^p inside the kernel's node, against
    fake_quantize(x, torch.abs(p) / torch.exp2(p)): values, ∂x and ∂p."""
    from hwquant.core.grid import fake_quantize_param

    s_shape, x_shape = shapes
    grid = make_grid(IntFormat(4))
    gen = torch.Generator().manual_seed(1)
    p0 = torch.randn(s_shape, generator=gen) * (0.3 if parametrization == "abs" else 2.0)
    x = torch.randn(x_shape, generator=gen) * 3
    gy = torch.randn(x_shape, generator=gen)
    runs = []
    for path in (nullcontext(), formula):
        xa, p = x.clone().requires_grad_(), p0.clone().requires_grad_()
        with path:
            y = fake_quantize_param(xa, p, parametrization, grid)
        y.backward(gy)
        runs.append((y.detach(), xa.grad, p.grad))
    for a, b in zip(*runs, strict=True):
        assert _same(a, b)


# ---------------------------------------------------------------- bias on the accumulator
def _bias_layer(case: str):
    from hwquant.nn import QuantLinear
    from hwquant.spec import A2Q, A4U, W4, A2QPlus, LayerSpec
    from hwquant.spec.layer_spec import accumulator_bias
    from hwquant.spec.quant_spec import A8, PER_TENSOR, QuantSpec, ScaleSpec

    per_tensor = QuantSpec(IntFormat(4, narrow=True), PER_TENSOR, ScaleSpec("max", learned=True))
    fixed = QuantSpec(IntFormat(6), PER_TENSOR, ScaleSpec("fixed", value=0.05))
    narrow_bias = QuantSpec(IntFormat(8), scale=ScaleSpec("accumulator"), rounding="toward_zero")
    a2q = A2Q(IntFormat(4, narrow=True), accumulator_bits=12)
    specs = {  # name: (LayerSpec, dtype, kernel expected)
        "W4-A4U": (LayerSpec(input=A4U, weight=W4, bias=accumulator_bias()), torch.float32, True),
        "W4pt-A8-f64": (
            LayerSpec(input=A8, weight=per_tensor, bias=accumulator_bias(16)),
            torch.float64,
            True,
        ),
        "fixed-8bit-trunc": (
            LayerSpec(input=fixed, weight=W4, bias=narrow_bias),
            torch.float32,
            True,
        ),
        "A2Q-P12": (LayerSpec(input=A4U, weight=a2q, bias=accumulator_bias()), torch.float32, True),
        "A2Q+-P24": (
            LayerSpec(
                input=A4U,
                weight=A2QPlus(IntFormat(4, narrow=True), accumulator_bits=24),
                bias=accumulator_bias(),
            ),
            torch.float32,
            True,
        ),
        "A2Q-f64": (LayerSpec(input=A4U, weight=a2q, bias=accumulator_bias()), torch.float64, True),
        "dynamic-weight": (
            LayerSpec(input=A4U, weight=QuantSpec(IntFormat(4)), bias=accumulator_bias()),
            torch.float32,
            False,
        ),
    }
    spec, dtype, expected = specs[case]
    torch.manual_seed(7)
    layer = QuantLinear(40, 12, spec=spec).to(dtype)  # scales too
    x = torch.rand(16, 40, dtype=dtype)
    layer(x)  # initializes the input quantizer
    with torch.no_grad():
        if hasattr(layer.weight_quant, "norm_param"):
            layer.weight_quant.norm_param.add_(torch.randn(12, dtype=dtype))
        s_acc = layer.accumulator_scale()
        # codes inside, at and far beyond every bound (the A2Q clip, the bias format)
        layer.bias.copy_(
            torch.randn(12, dtype=dtype) * s_acc.reshape(-1) * 10.0 ** torch.arange(12) / 5
        )
        layer.bias[0] = -layer.bias[1]
    return layer, expected


@pytest.mark.parametrize(
    "case",
    [
        "W4-A4U",
        "W4pt-A8-f64",
        "fixed-8bit-trunc",
        "A2Q-P12",
        "A2Q+-P24",
        "A2Q-f64",
        "dynamic-weight",
    ],
)
def test_accumulator_bias_kernel_equals_the_formula(case, formula):
    """A layer's bias on the accumulator scale (with the A2Q clip): value and gradient
    of the compiled node = those of the formula; the scales get no gradient from it."""
    layer, expected = _bias_layer(case)
    w = layer.quant_weight().detach()
    assert (layer._compiled_bias(w) is not None) == expected
    gy = torch.randn(12, dtype=w.dtype)
    runs = []
    for path in (nullcontext(), formula):
        layer.zero_grad(set_to_none=True)
        with path:
            b = layer.quant_bias(w)
        b.backward(gy)
        grads = {n: p.grad for n, p in layer.named_parameters() if p.grad is not None}
        assert set(grads) == {"bias"}
        with torch.no_grad(), path:
            b0 = layer.quant_bias(w)
        runs.append((b.detach(), grads["bias"], b0))
    for a, b in zip(*runs, strict=True):
        assert _same(a, b)
    grad = runs[0][1]
    assert 0 < int((grad == 0).sum()) < 12  # some clipped, some passed straight through
