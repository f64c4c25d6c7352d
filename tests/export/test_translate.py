"""hwquant's own ONNX translation against torch's exporter: the same cleaned graph
(op for op) and the same outputs in onnxruntime, for every zoo model; anything it
does not cover falls back to torch's exporter."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import hwquant
from hwquant.algorithms.common import eval_mode
from hwquant.export import to_qonnx
from hwquant.export.emit import emitting
from hwquant.export.qonnx import _qonnx_cleanup, _trace_to_onnx
from hwquant.export.translate import translate
from hwquant.export.zoo import ZOO, build, calibrate, resnet8
from hwquant.spec import A8, W4, LayerSpec, Recipe

MODELS = [*ZOO, "resnet8"]


def _model(name):
    if name == "resnet8":
        return calibrate(resnet8(), (3, 32, 32)), (3, 32, 32)
    return build(name)


def _graphs(model, x, dynamic_batch):
    with eval_mode(model):
        own = _trace_to_onnx(model, (x,), dynamic_batch, own=True)
        theirs = _trace_to_onnx(model, (x,), dynamic_batch, own=False)
    return _qonnx_cleanup(own), _qonnx_cleanup(theirs)


def _run(proto, x):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    from hwquant.export.qcdq import qonnx_to_qcdq

    sess = ort.InferenceSession(qonnx_to_qcdq(proto).SerializeToString(), opts)
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def _signature(proto):
    """Op types, attributes and the module each node came from."""
    rows = []
    for n in proto.graph.node:
        attrs = sorted((a.name, str(onnx.helper.get_attribute_value(a))) for a in n.attribute)
        meta = sorted((m.key, m.value) for m in n.metadata_props if m.key.startswith("hwquant"))
        rows.append((n.op_type, n.domain, attrs, meta))
    return rows


@pytest.mark.parametrize("name", MODELS)
def test_own_translation_covers_the_zoo(name):
    model, shape = _model(name)
    with eval_mode(model), emitting(model), torch.no_grad():
        ep = torch.export.export(model, (torch.randn(2, *shape),), strict=False)
    assert translate(ep) is not None


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_own_translation_equals_torchs_exporter(name, dynamic_batch):
    model, shape = _model(name)
    x = torch.randn(3 if dynamic_batch else 1, *shape)
    own, theirs = _graphs(model, x, dynamic_batch)
    assert _signature(own) == _signature(theirs)
    for a, b in zip(own.graph.input, theirs.graph.input, strict=True):
        assert a.type == b.type
    for a, b in zip(own.graph.output, theirs.graph.output, strict=True):
        assert a.type == b.type
    if ZOO.get(name) is None or ZOO[name].qcdq:  # same outputs, exactly
        xs = torch.randn(3, *shape) * 2
        xs = xs if dynamic_batch else xs[:1]
        np.testing.assert_array_equal(_run(own, xs), _run(theirs, xs))


def test_an_op_outside_the_table_falls_back_to_torchs_exporter(tmp_path):
    class Softmaxed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return torch.softmax(self.fc(x), dim=-1)

    model = hwquant.quantize(Softmaxed(), Recipe.uniform(weights=W4, activations=A8)).eval()
    model(torch.randn(16, 4))
    with emitting(model), torch.no_grad():
        ep = torch.export.export(model, (torch.randn(2, 4),), strict=False)
    assert translate(ep) is None
    path = to_qonnx(model, torch.randn(1, 4), tmp_path / "s.onnx")
    assert "Softmax" in [n.op_type for n in onnx.load(path).graph.node]


def test_linear_on_a_sequence_falls_back():
    from hwquant.nn import QuantLinear

    layer = QuantLinear(4, 2, spec=LayerSpec(input=A8, weight=W4)).eval()
    layer(torch.randn(8, 5, 4))
    with emitting(layer), torch.no_grad():
        ep = torch.export.export(layer, (torch.randn(2, 5, 4),), strict=False)
    assert translate(ep) is None  # rank-3 linear: torch's exporter writes MatMul + Add


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_step_bodies_translate_as_torchs_exporter_writes_them(cell):
    from hwquant.export.recurrent import _Step

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = cell(3, 4, bidirectional=True), nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(self.rnn(x)[0])

    model = hwquant.quantize(Seq(), Recipe.uniform(weights=W4, activations=A8)).eval()
    model(torch.randn(6, 5, 3))
    layer = model.rnn
    H, G = layer.hidden_size, layer.gate_count * layer.hidden_size
    example = (*[torch.zeros(1, H) for _ in range(layer.n_states)], torch.zeros(G, H))
    example = (*example, torch.zeros(G), torch.zeros(1, G))
    for key in layer.directions:
        with emitting(model), torch.no_grad():
            ep = torch.export.export(_Step(layer, key), example, strict=False)
            theirs = torch.onnx.export(ep, example, dynamo=True, verbose=False).model_proto
        own = translate(ep)
        assert own is not None
        assert _signature(own) == _signature(theirs)
        assert len(own.graph.initializer) == len(theirs.graph.initializer)
