"""QCDQ export: structure, containers, and bit-exact onnxruntime runs."""

import onnx
import pytest
import torch
from torch import nn

from hwquant.export import to_qcdq, verify
from hwquant.export.zoo import PO2, build, calibrate
from hwquant.nn import QuantAct, QuantConv2d, QuantLinear
from hwquant.spec import (
    FP8_E4M3FN,
    FP8_E4M3FNUZ,
    FP8_E5M2,
    FP8_E5M2FNUZ,
    PER_TENSOR,
    IntFormat,
    LayerSpec,
    QuantSpec,
    accumulator_bias,
    per_channel,
    per_group,
)


def _act(fmt):
    return QuantSpec(fmt, PER_TENSOR, PO2)


def _ops(path):
    return [n.op_type for n in onnx.load(path).graph.node]


def _run(model, shape, tmp_path, n=500, **kw):
    calibrate(model, shape)
    x = 2 * torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))
    path = to_qcdq(model, x[:2], tmp_path / "m.onnx", dynamic_batch=True, **kw)
    return path, verify(model, path, x, backends=("onnxruntime", "qonnx"))


def test_structure(tmp_path):
    model = nn.Sequential(QuantAct(_act(IntFormat(4))), QuantAct(_act(IntFormat(8))))
    path, rep = _run(model, (6,), tmp_path)
    assert _ops(path) == [
        "QuantizeLinear",
        "Clip",
        "DequantizeLinear",  # INT4 in int8 + Clip
        "QuantizeLinear",
        "DequantizeLinear",
    ]  # INT8: the container clamps
    proto = onnx.load(path)
    assert {i.domain: i.version for i in proto.opset_import} == {"": 21}
    assert proto.ir_version <= 10
    assert all(n.domain == "" for n in proto.graph.node)
    onnx.checker.check_model(proto)
    assert rep.passed and rep["onnxruntime"].mismatched == 0, rep


@pytest.mark.parametrize("bits", [2, 3, 5, 6, 7])
def test_int_widths_signed_unsigned_narrow(bits, tmp_path):
    specs = [
        _act(IntFormat(bits)),
        _act(IntFormat(bits, signed=False)),
        _act(IntFormat(bits, narrow=True)),
    ]
    model = nn.ModuleList(QuantAct(s) for s in specs)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = model

        def forward(self, x):
            return torch.cat([q(x) for q in self.q], 1)

    _, rep = _run(M(), (8,), tmp_path)
    assert rep["onnxruntime"].mismatched == 0, rep


def test_native_int16_and_int4(tmp_path):
    model = nn.Sequential(
        QuantAct(_act(IntFormat(16))),
        QuantAct(_act(IntFormat(4))),
        QuantAct(_act(IntFormat(16, signed=False))),
    )
    path, rep = _run(model, (8,), tmp_path, int4=True)
    proto = onnx.load(path)
    zp_types = [
        next(t.data_type for t in proto.graph.initializer if t.name == n.input[2])
        for n in proto.graph.node
        if n.op_type == "QuantizeLinear"
    ]
    T = onnx.TensorProto
    assert zp_types == [T.INT16, T.INT4, T.UINT16]
    assert "Clip" not in _ops(path)  # onnxruntime has no int16 / int4 Clip kernel
    assert rep["onnxruntime"].mismatched == 0, rep


@pytest.mark.parametrize(
    "fmt", [FP8_E4M3FN, FP8_E5M2, FP8_E4M3FNUZ, FP8_E5M2FNUZ], ids=lambda f: f.name
)
def test_fp8(fmt, tmp_path):
    w = QuantSpec(fmt, per_channel(0), PO2)
    model = nn.Sequential(
        QuantLinear(8, 6, bias=False, spec=LayerSpec(input=_act(fmt), weight=w, output=_act(fmt)))
    )
    path, rep = _run(model, (8,), tmp_path)
    assert _ops(path).count("QuantizeLinear") == 3 and "Clip" not in _ops(path)
    assert rep["onnxruntime"].passed and rep["onnxruntime"].mismatched == 0, rep


def test_per_group_blocked_and_wide_bias(tmp_path):
    """Per-group weights → blocked quantization; a 32-bit accumulator bias (no Q
    container holds it) → its int32 codes → DequantizeLinear."""
    a = _act(IntFormat(8))
    g = QuantSpec(IntFormat(4, narrow=True), per_group(4, axis=1), PO2)
    c = QuantSpec(IntFormat(5, narrow=True), per_channel(0), PO2)
    model = nn.Sequential(
        QuantLinear(16, 8, spec=LayerSpec(input=a, weight=g)),
        QuantConv2d(8, 4, 1, spec=LayerSpec(input=a, weight=c, bias=accumulator_bias(32))),
    )

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m[1](self.m[0](x)[:, :, None, None])

    path, rep = _run(M(), (16,), tmp_path)
    proto = onnx.load(path)
    blocked = [n for n in proto.graph.node if any(a.name == "block_size" for a in n.attribute)]
    assert blocked and all(
        onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == "block_size")) == 4
        for n in blocked
    )
    int32_dq = [
        n
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear"
        and any(
            t.name == n.input[0] and t.data_type == onnx.TensorProto.INT32
            for t in proto.graph.initializer
        )
    ]
    assert len(int32_dq) == 1
    assert rep["onnxruntime"].mismatched == 0, rep


def test_qcdq_leaves_qonnx_ops_out_of_trunc(tmp_path):
    """Average pooling's Trunc becomes standard Div/Round/Floor/Clip/Mul ops."""
    model, shape = build("cnn")
    path = to_qcdq(model, torch.randn(4, *shape), tmp_path / "cnn.onnx")
    ops = _ops(path)
    assert "Trunc" not in ops and "Floor" in ops and "AveragePool" in ops
