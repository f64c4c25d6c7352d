"""Quantized layers against torch.nn equivalents and hand-quantized references."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hwquant
from hwquant.core.grid import fake_quantize, make_grid
from hwquant.nn import (
    QUANT_TYPES,
    QuantAdd,
    QuantAvgPool2d,
    QuantCat,
    QuantConv2d,
    Quantizer,
    QuantLinear,
    QuantMaxPool2d,
    QuantReLU,
)
from hwquant.spec import (
    A8,
    FP8_E4M3FN,
    W4,
    W8,
    IntFormat,
    LayerSpec,
    QuantSpec,
    ScaleSpec,
    accumulator_bias,
    per_channel,
    per_group,
)

A4 = QuantSpec(IntFormat(4), scale=ScaleSpec(learned=True))
FULL = LayerSpec(input=A8, weight=W4, bias=accumulator_bias(16))

FLOAT_LAYERS = [
    (nn.Linear(12, 6), (3, 12)),
    (nn.Conv1d(4, 6, 3, padding=1), (2, 4, 9)),
    (nn.Conv2d(4, 6, 3, stride=2, padding=1), (2, 4, 9, 9)),
    (nn.Conv2d(6, 6, 3, groups=6, padding=1), (2, 6, 7, 7)),  # depthwise
    (nn.Conv2d(4, 8, 3, groups=2), (2, 4, 7, 7)),
    (nn.Conv3d(2, 4, 3), (1, 2, 5, 5, 5)),
    (nn.ConvTranspose1d(4, 3, 4, stride=2, padding=1), (2, 4, 6)),
    (nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1), (2, 4, 5, 5)),
]


@pytest.mark.parametrize(("float_layer", "shape"), FLOAT_LAYERS, ids=lambda v: type(v).__name__)
def test_disabled_quantization_equals_torch(float_layer, shape):
    q = QUANT_TYPES[type(float_layer)].from_float(float_layer, FULL)
    assert isinstance(q, type(float_layer))
    x = torch.randn(shape)
    hwquant.set_quantization(q, False)
    torch.testing.assert_close(q(x), float_layer(x), rtol=0, atol=0)


@pytest.mark.parametrize(("float_layer", "shape"), FLOAT_LAYERS, ids=lambda v: type(v).__name__)
def test_quantized_equals_float_op_on_quantized_tensors(float_layer, shape):
    """Reference: quantize input / weight / bias by hand, then run the float layer."""
    q = QUANT_TYPES[type(float_layer)].from_float(float_layer, FULL)
    x = torch.randn(shape)
    y = q(x)  # first call initializes the input scale from x
    s_in = q.input_quant.scale()
    xq = fake_quantize(x, s_in, None, make_grid(A8.format))
    w_axis = 1 if isinstance(float_layer, nn.ConvTranspose1d | nn.ConvTranspose2d) else 0
    w = float_layer.weight.detach()
    s_w = q.weight_quant.scale()
    assert s_w.shape[w_axis] == w.shape[w_axis] and s_w.numel() == w.shape[w_axis]
    wq = fake_quantize(w, s_w, None, make_grid(W4.format))
    bq = fake_quantize(
        float_layer.bias.detach(), (s_in * s_w).reshape(-1), None, make_grid(IntFormat(16))
    )
    ref = copy.deepcopy(float_layer)
    with torch.no_grad():
        ref.weight.copy_(wq)
        ref.bias.copy_(bq)
    torch.testing.assert_close(y, ref(xq), rtol=1e-5, atol=1e-5)
    assert (wq / s_w).round().abs().max() <= 7  # narrow 4-bit


def test_weights_are_on_the_grid():
    q = QuantConv2d(3, 8, 3, spec=LayerSpec(weight=W4))
    codes = q.quant_weight() / q.weight_quant.scale_for(q.weight)
    torch.testing.assert_close(codes, codes.round())
    assert codes.abs().max() <= 7


def test_per_group_weights():
    spec = QuantSpec(IntFormat(4), per_group(8, axis=1))
    q = QuantLinear(32, 4, spec=LayerSpec(weight=spec))
    w = q.weight.detach()
    wq = q.quant_weight().detach()
    for g in range(4):
        block = w[:, 8 * g : 8 * (g + 1)]
        s = block.abs().amax(1, keepdim=True) / 7
        torch.testing.assert_close(
            wq[:, 8 * g : 8 * (g + 1)], torch.clamp(torch.round(block / s), -8, 7) * s
        )


def test_minifloat_and_pot_layers():
    for fmt in (FP8_E4M3FN, hwquant.spec.PowerOfTwoFormat(4), hwquant.spec.APoTFormat(4)):
        spec = LayerSpec(input=QuantSpec(fmt), weight=QuantSpec(fmt, per_channel(0)))
        q = QuantLinear(16, 4, spec=spec)
        y = q(torch.randn(5, 16))
        assert torch.isfinite(y).all()
        levels = torch.tensor(fmt.levels())
        codes = (q.quant_weight() / q.weight_quant.scale_for(q.weight)).detach().reshape(-1, 1)
        assert ((codes - levels).abs().min(1).values / codes.abs().clamp(min=1)).max() < 1e-5


def test_activations_pool_merge():
    relu = QuantReLU(spec=LayerSpec(output=QuantSpec(IntFormat(4, signed=False))))
    y = relu(torch.randn(1000))
    assert len(y.unique()) <= 16 and (y >= 0).all()
    mp = QuantMaxPool2d(2, spec=LayerSpec(input=A4))
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(mp(x), F.max_pool2d(mp.input_quant(x), 2))
    add = QuantAdd(LayerSpec(input=A4))
    a, b = torch.randn(64), torch.randn(64)
    out = add(a, b)
    s = add.input_quant.scale()
    torch.testing.assert_close(out / s, (out / s).round())  # one shared scale: integer sum
    cat = QuantCat(LayerSpec(input=A4), dim=0)
    assert cat([a, b]).shape == (128,)


@pytest.mark.parametrize("k", [2, 3])
def test_avgpool_is_sum_then_truncate(k):
    pool = QuantAvgPool2d(k, spec=LayerSpec(input=QuantSpec(IntFormat(4, signed=False))))
    x = torch.rand(2, 3, 6, 6)
    y = pool(x)
    s = pool.input_quant.scale()
    q = torch.round(pool.input_quant(x) / s)
    sums = F.avg_pool2d(q, k) * k * k
    t = pool.trunc_bits
    ref = torch.floor(sums / 2**t) * s * 2**t / (k * k)
    torch.testing.assert_close(y, ref)
    if k == 2:  # power-of-two window: exactly the floored average
        torch.testing.assert_close(y, torch.floor(sums / 4) * s)


def test_state_dict_roundtrip_is_exact():
    m = nn.Sequential(
        QuantConv2d(1, 4, 3, spec=FULL), nn.ReLU(), nn.Flatten(), QuantLinear(4 * 36, 3, spec=FULL)
    )
    x = torch.randn(8, 1, 8, 8)
    opt = torch.optim.SGD(m.parameters(), 0.1)
    for _ in range(3):
        m(x).sum().backward()
        opt.step()
    m.eval()
    ref = m(x)
    fresh = nn.Sequential(
        QuantConv2d(1, 4, 3, spec=FULL), nn.ReLU(), nn.Flatten(), QuantLinear(4 * 36, 3, spec=FULL)
    )
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    fresh.eval()
    torch.testing.assert_close(fresh(x), ref, rtol=0, atol=0)


def test_loads_float_state_dict_strictly():
    f = nn.Linear(8, 4)
    q = QuantLinear(8, 4, spec=LayerSpec(input=A4, weight=W8))
    q.load_state_dict(f.state_dict())  # strict: quantizer state is re-derived
    torch.testing.assert_close(q.weight, f.weight)
    expected = f.weight.abs().amax(1, keepdim=True) / 127
    torch.testing.assert_close(q.weight_quant.scale(), expected)
    assert not bool(q.input_quant.initialized)


def test_nan_in_data_is_named():
    q = Quantizer(A4, name="block1.input_quant")
    with pytest.raises(ValueError, match=r"block1\.input_quant.*NaN"):
        q(torch.tensor([1.0, float("nan")]))


def test_per_channel_activation_needs_shape():
    with pytest.raises(ValueError, match="shape"):
        Quantizer(QuantSpec(IntFormat(8), per_channel(1)))
    q = Quantizer(QuantSpec(IntFormat(8), per_channel(1)), shape=(1, 3, 1, 1))
    x = torch.randn(4, 3, 5, 5) * torch.tensor([1.0, 10.0, 100.0]).reshape(1, 3, 1, 1)
    q(x)
    torch.testing.assert_close(q.scale().flatten(), x.abs().amax((0, 2, 3)) / 127)


@pytest.mark.parametrize("method", ["max", "percentile", "mse"])
def test_scale_methods(method):
    x = torch.randn(10000)
    q = Quantizer(QuantSpec(IntFormat(4), scale=ScaleSpec(method, percentile=99.0)))
    q(x)
    s = float(q.scale())
    assert {"max": x.abs().max() / 7, "percentile": x.abs().quantile(0.99) / 7}.get(
        method, s
    ) == pytest.approx(s, rel=1e-3)
    if method == "mse":  # the MSE-optimal clip beats max scaling
        g = make_grid(IntFormat(4))
        err = lambda s_: (fake_quantize(x, s_, None, g) - x).pow(2).mean()  # noqa: E731
        assert err(s) < err(float(x.abs().max() / 7))


def test_power_of_two_and_asymmetric_scales():
    q = Quantizer(QuantSpec(IntFormat(8), scale=ScaleSpec(power_of_two=True)))
    q(torch.randn(100) * 3)
    assert float(torch.log2(q.scale())).is_integer()
    ql = Quantizer(QuantSpec(IntFormat(8), scale=ScaleSpec(learned=True, power_of_two=True)))
    ql(torch.randn(100) * 3)
    assert float(torch.log2(ql.scale().detach())).is_integer()
    qa = Quantizer(QuantSpec(IntFormat(8, signed=False), zero_point="asymmetric"))
    x = torch.rand(1000) * 3 - 1  # [-1, 2]
    y = qa(x)
    assert float(qa.zero_point()) == pytest.approx(85, abs=1)
    assert (y - x).abs().max() <= float(qa.scale()) / 2 + 1e-6


def test_calibration_mode():
    from hwquant.models import MLP

    qm = hwquant.quantize(MLP((8, 16, 4)), hwquant.Recipe.uniform(weights=W8, activations=A8))
    x = torch.randn(64, 8)
    with hwquant.calibration(qm):
        out = qm(x)
    hwquant.set_quantization(qm, False)
    torch.testing.assert_close(out, qm(x))  # calibration ran the float model
    hwquant.set_quantization(qm, True)
    first = qm.layers[0].input_quant
    assert float(first.scale()) == pytest.approx(
        float(x.abs().max() / 127), rel=1e-3
    )  # P99.99 of 512
    with pytest.raises(ValueError, match="NaN"), hwquant.calibration(qm):
        qm(torch.full((4, 8), float("nan")))


def test_learned_scales_receive_gradients():
    q = QuantLinear(8, 4, spec=LayerSpec(input=A4, weight=W4))
    q(torch.randn(16, 8)).pow(2).sum().backward()
    assert q.weight_quant.scale_param.grad.abs().sum() > 0
    assert q.input_quant.scale_param.grad.abs().sum() > 0
    assert q.weight.grad.abs().sum() > 0


def test_spec_type_errors():
    with pytest.raises(ValueError, match="LayerSpec"):
        QuantLinear(4, 4, spec=W4)
    with pytest.raises(ValueError, match="QuantSpec"):
        Quantizer("int8")


def test_learned_zero_point_trains():
    """A learned zero point rounds straight-through, gets the LSQ gradient, and moves
    toward the data's offset."""
    spec = QuantSpec(
        IntFormat(4, signed=False), zero_point="learned", scale=ScaleSpec(learned=True)
    )
    q = Quantizer(spec)
    x = torch.rand(4096) * 2 - 0.5  # [-0.5, 1.5]
    q(x)
    z0 = float(q.zero_point())
    assert z0 == round(z0) and z0 > 0
    with torch.no_grad():
        q.zero_param.fill_(0.0)  # wrong offset: negative inputs all clip to 0
    opt = torch.optim.Adam([q.zero_param], 5e-2)
    err0 = float((q(x) - x).pow(2).mean())
    for _ in range(200):
        loss = (q(x) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(float(q.zero_point()) - z0) <= 1
    assert float((q(x) - x).pow(2).mean()) < err0 / 5


def test_calibration_through_avgpool():
    """Calibration runs the pool in float, so the next layer sees real activations."""
    a = QuantSpec(IntFormat(8, signed=False), scale=ScaleSpec("max"))
    model = nn.Sequential(
        QuantAvgPool2d(2, spec=LayerSpec(input=a)),
        nn.Flatten(),
        QuantLinear(4, 2, spec=LayerSpec(input=a, weight=W8)),
    )
    x = torch.rand(16, 1, 4, 4) * 3
    with hwquant.calibration(model):
        model(x)
    expected = F.avg_pool2d(x, 2).max() / 255
    assert float(model[2].input_quant.scale()) == pytest.approx(float(expected), rel=1e-5)
    assert torch.isfinite(model(x)).all()


def test_quantizer_state_is_a_public_value():
    """Export and integer execution read ``state``, never private slots."""
    from hwquant.spec import A8, W4

    layer = QuantLinear(4, 2, spec=LayerSpec(input=A8, weight=W4))
    q = layer.input_quant
    weight_state = "static" if W4.scale.learned else "dynamic"  # learned: a parameter
    assert q.state == "uninitialized" and layer.weight_quant.state == weight_state
    layer(torch.randn(8, 4))
    assert q.state == "warmup" and q.spec.scale.warmup  # training-mode batches set it
    assert layer.eval().input_quant.state == "static"
    with hwquant.calibration(layer):
        assert q.state == "observing"
        layer(torch.randn(8, 4))
    hwquant.set_quantization(layer, False)
    assert q.state == "float" and layer.weight_quant.state == "float"
    hwquant.set_quantization(layer, True)
    s, z = layer.weight_quant.scale_zero_for(layer.weight)
    assert z is None and s.shape == (2, 1) and not s.requires_grad
