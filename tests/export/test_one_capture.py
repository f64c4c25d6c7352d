"""to_qonnx_and_qcdq: both formats from one trace, the same bytes as two exports."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import hwquant
from hwquant.export import to_qcdq, to_qonnx, to_qonnx_and_qcdq
from hwquant.export.zoo import build
from hwquant.spec import A4, W4, Recipe


def _same_files(tmp_path, model, x, **kw):
    qonnx_kw = {k: v for k, v in kw.items() if k != "int4"}
    a = to_qonnx(model, x, tmp_path / "a.onnx", **qonnx_kw)
    b = to_qcdq(model, x, tmp_path / "b.onnx", **kw)
    c, d = to_qonnx_and_qcdq(model, x, tmp_path / "c.onnx", tmp_path / "d.onnx", **kw)
    assert a.read_bytes() == c.read_bytes()
    assert b.read_bytes() == d.read_bytes()


@pytest.mark.parametrize("name", ["residual", "concat"])
@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_one_capture_writes_the_same_files(tmp_path, name, dynamic_batch):
    model, shape = build(name)
    _same_files(tmp_path, model, torch.randn(1, *shape), dynamic_batch=dynamic_batch)


def test_one_capture_with_int4_and_a_recurrent_layer_in_both_forms(tmp_path):
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = nn.GRU(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.rnn(x)[0])

    torch.manual_seed(0)
    m = hwquant.quantize(Seq(), Recipe.uniform(weights=W4, activations=A4)).eval()
    x = torch.randn(3, 2, 3)
    m(x)
    a, b = to_qonnx(m, x, tmp_path / "a.onnx"), to_qcdq(m, x, tmp_path / "b.onnx", int4=True)
    c, d = to_qonnx_and_qcdq(m, x, tmp_path / "c.onnx", tmp_path / "d.onnx", int4=True)
    # qonnx's cleanup names some tensors at random: two to_qonnx calls differ in those
    # names too. The graphs are the same ops on the same constants, with the same outputs.
    for one, other in ((a, c), (b, d)):
        g1, g2 = onnx.load(one).graph, onnx.load(other).graph
        assert [n.op_type for n in g1.node] == [n.op_type for n in g2.node]
        init = [sorted(numpy_helper.to_array(t).tobytes() for t in g.initializer) for g in (g1, g2)]
        assert init[0] == init[1]
    sessions = [ort.InferenceSession(str(p)) for p in (b, d)]
    run = [s.run(None, {s.get_inputs()[0].name: x.numpy()})[0] for s in sessions]
    np.testing.assert_array_equal(run[0], run[1])


def test_dynamic_length_needs_scan_in_both(tmp_path):
    model, shape = build("mlp")
    with pytest.raises(ValueError, match="dynamic_length needs recurrent='scan'"):
        to_qonnx_and_qcdq(
            model, torch.randn(2, *shape), tmp_path / "a", tmp_path / "b", dynamic_length=0
        )
    assert not list(tmp_path.iterdir())  # nothing written
