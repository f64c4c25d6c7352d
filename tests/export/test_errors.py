"""Bad input: clear errors naming the module path and the op, and no file left behind."""

import pytest
import torch
from torch import nn

from hwquant.export import to_qcdq, to_qonnx, verify
from hwquant.export.zoo import PO2, build, calibrate
from hwquant.nn import QuantAct, QuantLinear
from hwquant.spec import (
    FP6_E2M3,
    PER_TENSOR,
    IntFormat,
    LayerSpec,
    PowerOfTwoFormat,
    QuantSpec,
)

A8 = QuantSpec(IntFormat(8), PER_TENSOR, PO2)


class Zeta(nn.Module):
    def forward(self, x):
        return torch.special.zeta(x.abs() + 2, torch.ones_like(x))


class WithOddOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = QuantLinear(4, 4, spec=LayerSpec(input=A8, weight=A8))
        self.block = nn.Sequential(nn.ReLU(), Zeta())

    def forward(self, x):
        return self.block(self.fc(x))


def _nothing_left(tmp_path):
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("export", [to_qonnx, to_qcdq])
def test_unexportable_op_names_module_and_op(export, tmp_path):
    model = calibrate(WithOddOp(), (4,))
    with pytest.raises(ValueError, match=r"module 'block\.1' \(Zeta\).*zeta"):
        export(model, torch.randn(2, 4), tmp_path / "m.onnx")
    _nothing_left(tmp_path)


def test_unexportable_format_names_quantizer(tmp_path):
    # power-of-two weights export (as their integer codes); power-of-two activations
    # have no QONNX operator
    pot = QuantSpec(PowerOfTwoFormat(4), PER_TENSOR)
    model = calibrate(nn.Sequential(QuantLinear(4, 2, spec=LayerSpec(input=pot, weight=pot))), (4,))
    for export in (to_qonnx, to_qcdq):
        with pytest.raises(ValueError, match=r"0\.input_quant: POT4 is exported for weights"):
            export(model, torch.randn(2, 4), tmp_path / "m.onnx")
    _nothing_left(tmp_path)


def test_wrong_example_shape(tmp_path):
    model, _ = build("mlp")
    with pytest.raises(
        ValueError,
        match=r"example input of shape \(1, 7\) does not fit the "
        r"model: module 'fc1' \(QuantLinear\) failed",
    ):
        to_qonnx(model, torch.randn(1, 7), tmp_path / "m.onnx")
    model, _ = build("cnn")
    with pytest.raises(ValueError, match=r"\(2, 3, 12, 12\).*module 'fc'"):
        to_qonnx(model, torch.randn(2, 3, 12, 12), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"\(2, 4, 8, 8\).*module 'conv1'"):
        to_qonnx(model, torch.randn(2, 4, 8, 8), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="batch dimension"):
        to_qonnx(model, torch.tensor(1.0), tmp_path / "m.onnx")
    _nothing_left(tmp_path)


def test_uncalibrated_quantizer(tmp_path):
    model = nn.Sequential(QuantLinear(4, 2, spec=LayerSpec(input=A8, weight=A8)))
    with pytest.raises(ValueError, match=r"0\.input_quant: quantizer has no scale yet"):
        to_qonnx(model, torch.randn(2, 4), tmp_path / "m.onnx")
    assert not model[0].input_quant.initialized  # the check did not calibrate it
    _nothing_left(tmp_path)


def test_failed_export_keeps_an_existing_file(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")
    model = calibrate(WithOddOp(), (4,))
    with pytest.raises(ValueError):
        to_qonnx(model, torch.randn(2, 4), target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_missing_directory(tmp_path):
    model, shape = build("mlp")
    with pytest.raises(ValueError, match="does not exist"):
        to_qonnx(model, torch.randn(1, *shape), tmp_path / "no" / "m.onnx")
    _nothing_left(tmp_path)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (QuantSpec(FP6_E2M3, PER_TENSOR, PO2), r"q: QCDQ expresses only the ONNX FP8 types"),
        (QuantSpec(IntFormat(12), PER_TENSOR, PO2), r"q: QCDQ cannot express 12-bit activations"),
        (QuantSpec(IntFormat(16, narrow=True), PER_TENSOR, PO2), "16-bit"),
        (QuantSpec(IntFormat(4), PER_TENSOR, PO2, rounding="floor"), "rounds FLOOR"),
    ],
)
def test_qcdq_cannot_express(spec, message, tmp_path):
    model = nn.Sequential()
    model.add_module("q", QuantAct(spec))
    calibrate(model, (4,))
    with pytest.raises(ValueError, match=message):
        to_qcdq(model, torch.randn(2, 4), tmp_path / "m.onnx")
    _nothing_left(tmp_path)
    to_qonnx(model, torch.randn(2, 4), tmp_path / "ok.onnx")  # QONNX takes all of them


def test_qcdq_rejects_bipolar(tmp_path):
    model, shape = build("binary_mlp")
    with pytest.raises(ValueError, match=r"fc1\.weight_quant: QCDQ cannot express bipolar"):
        to_qcdq(model, torch.randn(1, *shape), tmp_path / "m.onnx")
    _nothing_left(tmp_path)


def test_verify_arguments(tmp_path):
    model, shape = build("mlp")
    x = torch.randn(10, *shape)
    with pytest.raises(ValueError, match="no exported graph"):
        verify(model, tmp_path / "missing.onnx", x)
    path = to_qonnx(model, x, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="unknown backend"):
        verify(model, path, x, backends=("tensorrt",))
    r = verify(model, path, torch.randn(15, *shape), backends=("qonnx",))
    assert r.passed  # a fixed-batch graph runs any number of inputs (re-batched / chunked)


class _Branch(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x  # data-dependent: not traceable


def test_untraceable_forward_names_the_module(tmp_path):
    model = calibrate(nn.Sequential(QuantAct(A8), _Branch()), (4,))
    with pytest.raises(ValueError, match=r"could not trace the model in module '1' \(_Branch\)"):
        to_qonnx(model, torch.randn(2, 4), tmp_path / "m.onnx")
    _nothing_left(tmp_path)
