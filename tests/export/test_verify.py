"""verify(): output steps, the report, and that it catches a wrong graph."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from hwquant.export import to_qcdq, to_qonnx, verify
from hwquant.export.verify import VerifyReport, output_steps
from hwquant.export.zoo import PO2, build, calibrate
from hwquant.nn import QuantAct, QuantLinear
from hwquant.spec import (
    FP8_E4M3,
    PER_TENSOR,
    BipolarFormat,
    IntFormat,
    LayerSpec,
    QuantSpec,
    ScaleSpec,
    per_channel,
)


def _fixed(fmt, s, gran=PER_TENSOR):
    return QuantSpec(fmt, gran, ScaleSpec("fixed", value=s))


def _steps(model, x, tmp_path):
    calibrate(model, tuple(x.shape[1:]))
    proto = onnx.load(to_qonnx(model, x, tmp_path / "s.onnx"))
    return output_steps(proto)


def test_step_of_a_quantizer_output(tmp_path):
    (st,) = _steps(nn.Sequential(QuantAct(_fixed(IntFormat(4), 0.25))), torch.randn(2, 3), tmp_path)
    assert float(st.at(np.zeros((2, 3))).max()) == 0.25
    (st,) = _steps(
        nn.Sequential(QuantAct(_fixed(BipolarFormat(), 0.5))), torch.randn(2, 3), tmp_path
    )
    assert float(st.at(np.zeros((2, 3))).max()) == 1.0  # ±s: one step is 2s


def test_step_of_an_accumulator_output_per_channel(tmp_path):
    w = QuantSpec(IntFormat(4), per_channel(0), PO2)
    layer = QuantLinear(4, 3, bias=False, spec=LayerSpec(input=_fixed(IntFormat(8), 0.5), weight=w))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[7.0] * 4, [0.7] * 4, [0.07] * 4]))
    (st,) = _steps(nn.Sequential(layer), torch.randn(2, 4), tmp_path)
    np.testing.assert_allclose(st.at(np.zeros((2, 3)))[0], 0.5 * np.array([1.0, 2**-3, 2**-6]))
    # (s_w = 2^⌈log2(max|w| / 7)⌉ per output channel, s_in = 0.5)


def test_step_of_a_minifloat_output_depends_on_the_value(tmp_path):
    (st,) = _steps(nn.Sequential(QuantAct(_fixed(FP8_E4M3, 1.0))), torch.randn(1, 4), tmp_path)
    # E4M3: 3 mantissa bits; binade [8, 16) has step 1, [1, 2) step 1/8, subnormals 2^-9
    np.testing.assert_array_equal(
        st.at(np.array([8.0, 1.5, 0.0, 400.0])), [1.0, 0.125, 2.0**-9, 32.0]
    )


def test_no_step_for_a_float_output(tmp_path):
    (st,) = _steps(
        nn.Sequential(QuantAct(_fixed(IntFormat(4), 0.25)), nn.Sigmoid()),
        torch.randn(2, 3),
        tmp_path,
    )
    assert st is None


def test_report(tmp_path):
    model, shape = build("cnn")
    x = torch.randn(64, *shape)
    path = to_qcdq(model, x[:1], tmp_path / "c.onnx", dynamic_batch=True)
    rep = verify(model, path, x)
    assert isinstance(rep, VerifyReport) and rep.kind == "qcdq" and rep.n_inputs == 64
    assert [r.backend for r in rep.results] == [
        "torch",
        "qonnx",
        "onnxruntime",
        "onnxruntime-noopt",
        "hls4ml",
    ]
    assert rep.passed and rep.exact
    assert not rep["hls4ml"].ran and "QONNX graphs only" in rep["hls4ml"].note
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["passed"] and d["exact"] and d["results"][2]["mismatched"] == 0
    assert d["results"][3]["backend"] == "onnxruntime-noopt" and d["results"][3]["mismatched"] == 0
    assert d["results"][2]["boundary_flips"] == 0 and d["results"][2]["real_mismatches"] == 0
    table = rep.table()
    assert "onnxruntime" in table and "skipped" in table and "pass" in table
    with pytest.raises(KeyError):
        rep["tvm"]


def test_verify_catches_a_wrong_graph(tmp_path):
    model, shape = build("mlp")
    x = torch.randn(200, *shape)
    path = to_qonnx(model, x[:1], tmp_path / "m.onnx", dynamic_batch=True)
    proto = onnx.load(path)
    producer = {o: n for n in proto.graph.node for o in n.output}
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    w_name = producer[gemm.input[1]].input[0]
    for t in proto.graph.initializer:
        if t.name == w_name:  # nudge one weight across a rounding boundary
            w = numpy_helper.to_array(t).copy()
            w[0, 0] += 0.5 * np.abs(w).max()
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    onnx.save(proto, tmp_path / "bad.onnx")
    r = verify(model, tmp_path / "bad.onnx", x, backends=("qonnx",))["qonnx"]
    assert not r.passed and r.max_steps >= 1 and r.mismatched > 0
