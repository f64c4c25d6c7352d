"""An exported A2Q / A2Q+ model is an ordinary QONNX graph (Quant on the effective
float weight, rounding DOWN) that qonnx's executor runs to the same outputs."""

import json

import pytest
import torch
from torch import nn

import hwquant
from hwquant.algorithms import a2q_ptq
from hwquant.algorithms.a2q_init import ep_init
from hwquant.spec import A2Q, A2QPlus, IntFormat, QuantSpec, Recipe, ScaleSpec

pytest.importorskip("qonnx")
onnx = pytest.importorskip("onnx")

from hwquant.export import to_qonnx, verify  # noqa: E402

A4 = QuantSpec(IntFormat(4), scale=ScaleSpec("percentile", learned=True))


def model(spec):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    )
    m = hwquant.quantize(net, Recipe.uniform(weights=spec, activations=A4))
    ep_init(m)
    return m


@pytest.mark.parametrize("spec_cls", [A2Q, A2QPlus])
@pytest.mark.parametrize("frozen", [False, True], ids=["qat", "ptq"])
def test_a2q_model_verifies_in_qonnx(tmp_path, spec_cls, frozen):
    m = model(spec_cls(IntFormat(4, narrow=True), accumulator_bits=11))
    x = torch.randn(64, 1, 6, 6)
    if frozen:
        a2q_ptq.apply(m, x)  # frozen integer codes from accumulator-aware GPTQ
    else:
        m(x)
    path = to_qonnx(m, x[:1], tmp_path / "a2q.onnx", dynamic_batch=True)
    proto = onnx.load(path)
    quants = [n for n in proto.graph.node if n.op_type == "Quant"]
    modes = {a.s.decode() for n in quants for a in n.attribute if a.name == "rounding_mode"}
    assert "DOWN" in modes  # the weights round toward zero
    # the weights reach Quant as constants (the normalization is folded away)
    inits = {i.name for i in proto.graph.initializer}
    weight_quants = [n for n in quants if n.input[0] in inits and len(n.input) == 4]
    assert len(weight_quants) >= 2
    report = verify(m, path, x, backends=("qonnx",))
    assert report.passed, report.table()
    # the exporter's own worst-case accumulator widths respect the A2Q target
    meta = {p.key: p.value for p in proto.metadata_props}
    bits = json.loads(meta["hwquant.accumulator_bits"])
    assert bits and all(b <= 11 for b in bits.values())


@pytest.mark.parametrize("spec_cls", [A2Q, A2QPlus])
def test_clipped_bias_is_what_is_exported(tmp_path, spec_cls):
    m = model(spec_cls(IntFormat(4, narrow=True), accumulator_bits=11))
    x = torch.randn(64, 1, 6, 6)
    m(x)
    with torch.no_grad():
        for layer in (m[0], m[3]):  # biases far beyond the 11-bit register
            layer.bias.copy_(torch.sign(torch.randn_like(layer.bias)) * 10.0)
    path = to_qonnx(m, x[:1], tmp_path / "a2q_bias.onnx", dynamic_batch=True)
    report = verify(m, path, x, backends=("qonnx",))
    assert report.passed, report.table()
