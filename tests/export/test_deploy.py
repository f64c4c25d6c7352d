"""Verification tells the truth about deployment (issue 8): onnxruntime as users
run it (a default session), boundary flips apart from real mismatches, minifloats
without subnormals, dynamic-batch files in qonnx's executor."""

import sys
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from hwquant.export import to_qcdq, to_qonnx, verify
from hwquant.export.zoo import PO2, act, build, calibrate, weight
from hwquant.nn import QuantAct, QuantConv2d, QuantHardtanh, QuantLinear, QuantReLU
from hwquant.spec import (
    A8U,
    FP8_E4M3FN,
    PER_TENSOR,
    W8,
    LayerSpec,
    MinifloatFormat,
    QuantSpec,
    ScaleSpec,
    accumulator_bias,
    per_channel,
)

V = sys.modules["hwquant.export.verify"]  # the module (hwquant.export.verify is the function)


def _x(shape, n=256, seed=123, scale=1.5):
    return scale * torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


def _qcdq(model, shape, tmp_path, x=None, **kw):
    torch.manual_seed(0)
    calibrate(model, shape)
    x = _x(shape) if x is None else x
    path = to_qcdq(model, x[:2], tmp_path / "m.onnx", dynamic_batch=True)
    return path, verify(model, path, x, **kw)


def _zp_types(path):
    proto = onnx.load(path)
    types = {t.name: t.data_type for t in proto.graph.initializer}
    return [types[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear"]


# ---------------------------------------------------------------- default sessions
def test_verify_runs_onnxruntime_default_and_noopt(tmp_path):
    model, shape = build("mlp")
    x = _x(shape)
    path = to_qcdq(model, x[:1], tmp_path / "m.onnx", dynamic_batch=True)
    rep = verify(model, path, x)
    names = [r.backend for r in rep.results]
    assert names == ["torch", "qonnx", "onnxruntime", "onnxruntime-noopt", "hls4ml"]
    assert "default session" in rep["onnxruntime"].note
    assert "ORT_DISABLE_ALL" in rep["onnxruntime-noopt"].note
    assert rep.passed and rep.exact
    assert "onnxruntime-noopt" in rep.table()


def test_a8u_w8_linear_is_exact_in_a_default_session(tmp_path):
    """QuantLinear 64→8, unsigned 8-bit input, 8-bit weights, accumulator bias:
    onnxruntime's u8×s8 kernels (AVX2, no VNNI) saturate pairs of products in 16
    bits; the weights must reach it as uint8 (u8×u8 kernels)."""
    layer = QuantLinear(64, 8, spec=LayerSpec(input=A8U, weight=W8, bias=accumulator_bias(32)))
    path, rep = _qcdq(nn.Sequential(layer), (64,), tmp_path)
    r = rep["onnxruntime"]
    assert r.passed and r.real_mismatches == 0, rep
    assert onnx.TensorProto.UINT8 in _zp_types(path)  # the 8-bit weights


def test_saturation_worst_case(tmp_path):
    """Every weight at +127 codes and inputs at the top of the uint8 range: pairs of
    255·127 products overflow int16 (2·32,385 > 32,767) in a saturating kernel."""
    layer = QuantLinear(
        64, 8, spec=LayerSpec(input=act(8, False), weight=weight(8), bias=accumulator_bias(32))
    )
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.0)
    x = 3 * _x((64,)).abs()
    _, rep = _qcdq(nn.Sequential(layer), (64,), tmp_path, x=x)
    assert rep.exact and rep["onnxruntime"].mismatched == 0, rep


def test_adaptive_avgpool_head_is_exact_in_a_default_session(tmp_path):
    model, shape = build("pool_head")
    x = _x(shape)
    path = to_qcdq(model, x[:1], tmp_path / "h.onnx", dynamic_batch=True)
    rep = verify(model, path, x, backends=("onnxruntime", "onnxruntime-noopt"))
    assert rep.exact and rep["onnxruntime"].mismatched == 0, rep


def test_seven_bit_weights_keep_int8(tmp_path):
    """≤ 7-bit weights cannot saturate (2·255·64 ≤ 32,767): they stay int8."""
    layer = QuantLinear(
        16, 4, spec=LayerSpec(input=act(8, False), weight=weight(7), bias=accumulator_bias(16))
    )
    path, rep = _qcdq(nn.Sequential(layer), (16,), tmp_path)
    assert onnx.TensorProto.UINT8 in _zp_types(path)  # the activation
    assert onnx.TensorProto.INT8 in _zp_types(path)  # the weights
    assert rep.exact, rep


class _Fp8Head(nn.Module):
    def __init__(self, clamp: nn.Module) -> None:
        super().__init__()
        fp = QuantSpec(FP8_E4M3FN, PER_TENSOR, PO2)
        w = QuantSpec(FP8_E4M3FN, per_channel(0), PO2)
        self.fc = QuantLinear(8, 8, bias=False, spec=LayerSpec(input=fp, weight=w))
        self.clamp = clamp

    def forward(self, x):
        return self.clamp(self.fc(x))


@pytest.mark.parametrize("which", ["relu", "hardtanh"])
def test_fp8_keeps_the_clamp_in_front_of_its_quantizer(which, tmp_path):
    """onnxruntime's optimizer drops a Relu before a float8 QuantizeLinear (negative
    values passed) and fails to load a Clip there: QCDQ writes Max / Min."""
    fp = QuantSpec(FP8_E4M3FN, PER_TENSOR, PO2)
    clamp = (
        QuantReLU(spec=LayerSpec(output=fp))
        if which == "relu"
        else QuantHardtanh(spec=LayerSpec(output=fp))
    )
    path, rep = _qcdq(_Fp8Head(clamp), (8,), tmp_path)
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert "Relu" not in ops and "Clip" not in ops and "Max" in ops
    r = rep["onnxruntime"]
    assert r.passed and r.mismatched == 0, rep


# ---------------------------------------------------------------- boundary flips
def _learned_residual():
    """The zoo's residual block with max (non-power-of-two) scales."""
    from hwquant.export import zoo

    saved = zoo.PO2
    zoo.PO2 = ScaleSpec("max")
    try:
        torch.manual_seed(0)
        model = zoo.ResidualBlock()
    finally:
        zoo.PO2 = saved
    calibrate(model, (3, 6, 6), seed=1)
    return model


def test_boundary_flips_are_told_apart(tmp_path):
    model = _learned_residual()
    x = _x((3, 6, 6), n=1000)
    path = to_qonnx(model, x[:1], tmp_path / "r.onnx", dynamic_batch=True)
    r = verify(model, path, x, backends=("qonnx",))["qonnx"]
    assert r.mismatched > 0, "expected summation-order flips with non-power-of-two scales"
    assert r.boundary_flips == r.mismatched and r.real_mismatches == 0, r
    assert r.passed and r.max_steps >= 1
    rep = verify(model, path, x, backends=("qonnx",))
    assert rep.passed and not rep.exact
    assert "pass*" in rep.table() and "boundary" in rep.table()
    assert not verify(model, path, x, backends=("qonnx",), strict=True).passed
    d = rep.to_dict()["results"][1]
    assert d["boundary_flips"] == r.boundary_flips and d["real_mismatches"] == 0


def test_a_real_mismatch_is_not_a_boundary_flip(tmp_path):
    """A wrong weight in a model full of boundary flips still fails."""
    model = _learned_residual()
    x = _x((3, 6, 6), n=1000)
    path = to_qonnx(model, x[:1], tmp_path / "r.onnx", dynamic_batch=True)
    proto = onnx.load(path)
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    producer = {o: n for n in proto.graph.node for o in n.output}
    w_name = producer[gemm.input[1]].input[0]
    for t in proto.graph.initializer:
        if t.name == w_name:
            w = onnx.numpy_helper.to_array(t).copy()
            w[0] *= 3.0  # one output channel's weights scaled: far from any boundary
            t.CopyFrom(onnx.numpy_helper.from_array(w, t.name))
    onnx.save(proto, tmp_path / "bad.onnx")
    r = verify(model, tmp_path / "bad.onnx", x, backends=("qonnx",))["qonnx"]
    assert not r.passed and r.real_mismatches > 0 and r.real_max_steps >= 2, r


def test_explained_criterion():
    """Flips are explained sample by sample: a row the nudged runs move, by at
    most 2R + 1 steps; an unmoved row explains nothing."""
    ref = np.zeros((2, 3))
    up = np.array([[2.0, 0, 0], [0, 0, 0]])
    down = np.zeros((2, 3))
    d = np.array([[1.0, 5.0, 6.0], [1.0, 0, 0]])
    got = V._explained(d, ref, up, down, 1.0, 0.0)
    np.testing.assert_array_equal(got, [[True, True, False], [False, False, False]])


# ---------------------------------------------------------------- minifloats without subnormals
def test_minifloat_without_subnormals_warns_and_verify_says_so(tmp_path):
    fmt = MinifloatFormat(exponent_bits=4, mantissa_bits=3, has_subnormal=False)
    model = nn.Sequential(QuantAct(QuantSpec(fmt, PER_TENSOR, PO2)))
    calibrate(model, (16,))
    x = _x((16,))
    with pytest.warns(UserWarning, match="^0: minifloat without subnormals.*has_subnormal=0"):
        path = to_qonnx(model, x[:1], tmp_path / "f.onnx", dynamic_batch=True)
    rep = verify(model, path, x, backends=("qonnx",))
    assert "ignores has_subnormal=0" in rep["qonnx"].note and rep["qonnx"].note.endswith(" at 0")
    with warnings.catch_warnings(), pytest.raises(ValueError, match="without subnormals"):
        warnings.simplefilter("ignore")
        to_qcdq(model, x[:1], tmp_path / "f.qcdq.onnx")


def test_minifloat_with_subnormals_does_not_warn(tmp_path):
    model = nn.Sequential(QuantAct(QuantSpec(FP8_E4M3FN, PER_TENSOR, PO2)))
    calibrate(model, (4,))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        to_qonnx(model, torch.randn(2, 4), tmp_path / "f.onnx")


# ---------------------------------------------------------------- dynamic batch in qonnx
def test_dynamic_batch_file_runs_in_execute_onnx_after_with_batch(tmp_path):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    model, shape = build("cnn")
    x = _x(shape, n=7)
    path = to_qonnx(model, x[:1], tmp_path / "d.onnx", dynamic_batch=True)
    mw = ModelWrapper(str(path))
    with pytest.raises(Exception, match=r"[Ss]hape"):  # qonnx checks fixed input shapes
        execute_onnx(mw, {mw.graph.input[0].name: x.numpy()})
    mw = ModelWrapper(V.with_batch(path, 7))  # a path is accepted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = execute_onnx(mw, {mw.graph.input[0].name: x.numpy()})[mw.graph.output[0].name]
    with torch.no_grad():
        ref = model(x).numpy()
    step = V.output_steps(onnx.load(path))[0].at(ref)  # compare codes, not float sums
    assert (np.abs(y - ref) / step).max() < 0.5


def test_cnn_conv_8bit_weights_default_session(tmp_path):
    """Conv (QLinearConv) with 8-bit weights on unsigned 8-bit inputs."""
    conv = QuantConv2d(
        16, 8, 3, spec=LayerSpec(input=act(8, False), weight=weight(8), bias=accumulator_bias(32))
    )
    with torch.no_grad():
        conv.weight.abs_()
    x = 3 * _x((16, 5, 5), n=64).abs()
    _, rep = _qcdq(nn.Sequential(conv), (16, 5, 5), tmp_path, x=x)
    assert rep.exact and rep["onnxruntime"].mismatched == 0, rep


@pytest.mark.parametrize("conv", [False, True])
def test_float_bias_before_a_quantizer_is_exact_in_a_default_session(conv, tmp_path):
    """onnxruntime fuses DQ → Conv/Gemm(float bias) → Relu → Q into an integer kernel and
    rounds the float bias onto s_x·s_w: one step off wherever it was not on that grid
    (the demo's folded-BN biases: 3,572 of 3,600 values). QCDQ adds float biases after."""
    if conv:
        layer = QuantConv2d(1, 8, 3, padding=1, spec=LayerSpec(input=act(4), weight=weight(4)))
        shape = (1, 8, 8)
    else:
        layer = QuantLinear(16, 8, spec=LayerSpec(input=act(4), weight=weight(4)))
        shape = (16,)
    with torch.no_grad():
        layer.bias.uniform_(-1, 1, generator=torch.Generator().manual_seed(1))
    model = nn.Sequential(layer, QuantReLU(spec=LayerSpec(output=act(4, signed=False))))
    path, rep = _qcdq(model, shape, tmp_path, backends=("onnxruntime", "onnxruntime-noopt"))
    assert rep["onnxruntime"].mismatched == 0, rep
    assert rep["onnxruntime-noopt"].mismatched == 0, rep
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert "Add" in ops  # the float bias, kept out of the integer kernel
