"""hls4ml (Vivado backend, C++ emulation compiled by g++): what it takes, and
what it is pinned not to take in hls4ml 1.3."""

import onnx
import pytest
import torch

from hwquant.export import to_qonnx, verify
from hwquant.export.hls4ml import hls4ml_predict, hls4ml_rejects
from hwquant.export.verify import output_steps
from hwquant.export.zoo import CNN, MLP, build, calibrate
from hwquant.nn import QuantLinear
from hwquant.spec import A8U, W4, LayerSpec


def _export(model, shape, tmp_path, n=300):
    x = 1.5 * torch.randn(n, *shape, generator=torch.Generator().manual_seed(7))
    return to_qonnx(model, x[:1], tmp_path / "m.onnx", dynamic_batch=True), x


def test_mlp_compiles_and_matches(tmp_path):
    torch.manual_seed(0)
    model = calibrate(MLP(channel=False), (16,))
    path, x = _export(model, (16,), tmp_path)
    rep = verify(model, path, x, backends=("qonnx", "hls4ml"))
    r = rep["hls4ml"]
    assert r.ran and r.passed, rep
    assert r.mismatched == 0  # power-of-two scales: ap_fixed types reproduce torch codes


def test_cnn_compiles_and_matches(tmp_path):
    """Conv (with accumulator-scale bias) → ReLU → MaxPool → Conv → ReLU → MaxPool →
    flatten → Linear."""
    torch.manual_seed(0)
    model = calibrate(CNN(channel=False, avgpool=False), (3, 8, 8))
    path, x = _export(model, (3, 8, 8), tmp_path)
    r = verify(model, path, x, backends=("hls4ml",))["hls4ml"]
    assert r.ran and r.passed and r.max_steps <= 1.0, r


def test_input_precision_needs_more_than_16_fraction_bits(tmp_path):
    """hls4ml's usual default fixed<32,16> truncates the float input to 16 fraction
    bits before the first Quant rounds it: inputs just above a rounding tie fall
    onto the tie and round to even instead of up. hwquant's default fixed<48,16>
    (32 fraction bits) keeps them."""
    torch.manual_seed(0)
    model = calibrate(MLP(channel=False), (16,))
    s = float(model.fc1.input_quant.scale())
    k = torch.randint(-20, 20, (50, 16), generator=torch.Generator().manual_seed(3))
    x = (2 * k + 0.5 + 2.0**-14) * s  # codes 2k + 1 in torch
    path = to_qonnx(model, x, tmp_path / "m.onnx")
    ref = model(x).detach().numpy()
    proto = onnx.load(path)
    step = output_steps(proto)[0].at(ref)  # the accumulator step of the last Gemm
    assert (abs(hls4ml_predict(proto, x.numpy()) - ref) / step).max() < 0.5
    narrow = hls4ml_predict(proto, x.numpy(), default_precision="fixed<32,16>")
    assert (abs(narrow - ref) / step).max() >= 0.5  # inputs truncated to 16 fraction bits


def _per_channel_mlp():
    torch.manual_seed(0)
    model = MLP(channel=True)
    with torch.no_grad():
        model.fc1.weight[0] *= 8  # channel 0 gets a larger power-of-two scale
    return calibrate(model, (16,))


def test_per_channel_scales_fail_in_hls4ml(tmp_path):
    """Pinned hls4ml 1.3 behaviour: per-channel weight scales make its scale
    propagation (move_scales) fail and the conversion crash."""
    model = _per_channel_mlp()
    path, x = _export(model, (16,), tmp_path, n=20)
    proto = onnx.load(path)
    assert "per-channel" in hls4ml_rejects(proto)
    with pytest.raises(IndexError):
        hls4ml_predict(proto, x.numpy())
    r = verify(model, path, x, backends=("qonnx", "hls4ml"))
    assert r.passed and not r["hls4ml"].ran and "per-channel" in r["hls4ml"].note


def test_non_power_of_two_scales_fail_in_hls4ml(tmp_path):
    """Pinned: arbitrary float (LSQ) scales go through hls4ml's ApplyAlpha path,
    which crashes the same way."""
    torch.manual_seed(0)
    model = calibrate(
        torch.nn.Sequential(
            QuantLinear(
                16,
                8,
                bias=False,
                spec=LayerSpec(input=A8U, weight=W4.__class__(W4.format, scale=W4.scale)),
            )
        ),
        (16,),
    )
    path, x = _export(model, (16,), tmp_path, n=20)
    proto = onnx.load(path)
    assert "power-of-two" in hls4ml_rejects(proto)
    with pytest.raises(IndexError):
        hls4ml_predict(proto, x.numpy())


def test_bipolar_graphs_fail_in_hls4ml(tmp_path):
    """Pinned hls4ml 1.3 behaviour: a binary MLP (BipolarQuant) crashes its conversion."""
    model, shape = build("binary_mlp")
    path, x = _export(model, shape, tmp_path, n=20)
    proto = onnx.load(path)
    assert "BipolarQuant" in hls4ml_rejects(proto)
    with pytest.raises(IndexError):
        hls4ml_predict(proto, x.numpy())


def test_rejects_what_hls4ml_does_not_take(tmp_path):
    cases = (
        ("minifloat_cnn", "FloatQuant"),
        ("cnn", "Trunc"),
        ("upsampler", "ConvTranspose"),
        ("bits_sweep", "zero points"),
    )
    for name, why in cases:
        model, shape = build(name)
        path, x = _export(model, shape, tmp_path, n=10)
        r = verify(model, path, x, backends=("hls4ml",))["hls4ml"]
        assert not r.ran and why in r.note, r
