"""Power-of-two / APoT / MSQ weights export exactly: integer Quant nodes on their codes,
verified against torch in qonnx's executor (QONNX) and onnxruntime (QCDQ), every
exported weight an allowed level of its row."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import hwquant
from hwquant.export import check_levels, to_qcdq, to_qonnx, verify
from hwquant.export.ops.quant import LEVELS_KEY
from hwquant.nn.codes import weight_codes
from hwquant.spec import (
    A8U,
    APoTFormat,
    MSQFormat,
    PoTWeight,
    PowerOfTwoFormat,
    QuantSpec,
    Recipe,
    per_channel,
)

SPECS = {
    "pot4": PoTWeight(PowerOfTwoFormat(4)),
    "apot4-wn": PoTWeight(APoTFormat(4), weight_norm=True),
    "msq4-mix": PoTWeight(MSQFormat(4), sp2_fraction=0.5),
    "plain-pot3z": QuantSpec(PowerOfTwoFormat(3, has_zero=True), per_channel(0)),
}


def model(spec):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 5)
    )
    m = hwquant.quantize(net, Recipe.uniform(weights=spec, activations=A8U))
    with torch.no_grad():
        m(torch.rand(64, 1, 6, 6))
    return m.eval()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_export_is_exact_in_qonnx_and_onnxruntime(name, tmp_path):
    m = model(SPECS[name])
    x = torch.rand(48, 1, 6, 6)
    q = to_qonnx(m, x[:1], tmp_path / "m.onnx")
    # passed: no output off by a step beyond the float32 rounding boundary flips that
    # verify explains (a different summation order in front of a quantizer)
    rep = verify(m, q, x, backends=("qonnx",))
    assert rep.passed and rep["qonnx"].real_mismatches == 0, rep.results
    c = to_qcdq(m, x[:1], tmp_path / "m_qcdq.onnx")
    rep = verify(m, c, x, backends=("onnxruntime", "onnxruntime-noopt"))
    assert rep.passed, rep.results
    checks = check_levels(q)
    assert [c.module for c in checks] == ["0.weight_quant", "3.weight_quant"]
    assert all(c.ok for c in checks) and sum(c.n_weights for c in checks) == 54 + 1080


def test_exported_codes_are_the_layer_codes(tmp_path):
    m = model(SPECS["msq4-mix"])
    proto = onnx.load(to_qonnx(m, torch.rand(1, 1, 6, 6), tmp_path / "m.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    nodes = [n for n in proto.graph.node if any(p.key == LEVELS_KEY for p in n.metadata_props)]
    for node, layer in zip(nodes, (m[0], m[3]), strict=True):
        got = np.round(inits[node.input[0]] / inits[node.input[1]])
        want = weight_codes(layer).codes.numpy()
        np.testing.assert_array_equal(got, want)
        assert int(inits[node.input[3]]) == 5  # 4-bit MSQ: codes up to 8 in 5 bits
        # both row kinds are there: SP2 rows (D = 8) and fixed-point rows (D = 7)
        scheme = json.loads(next(p.value for p in node.metadata_props if p.key == LEVELS_KEY))
        assert scheme["scheme"] == "msq" and scheme["magnitudes"] == [0, 1, 2, 4, 5, 6, 8]
        sp2 = layer.weight_quant.sp2_rows
        assert scheme["row_multipliers"] == [8 if r else 7 for r in sp2.tolist()]
        assert 0 < int(sp2.sum()) < sp2.numel()


def test_level_check_catches_a_non_level_weight(tmp_path):
    m = model(SPECS["apot4-wn"])
    proto = onnx.load(to_qonnx(m, torch.rand(1, 1, 6, 6), tmp_path / "m.onnx"))
    node = next(n for n in proto.graph.node if any(p.key == LEVELS_KEY for p in n.metadata_props))
    init = next(t for t in proto.graph.initializer if t.name == node.input[0])
    s = next(numpy_helper.to_array(t) for t in proto.graph.initializer if t.name == node.input[1])
    w = numpy_helper.to_array(init).copy()
    w.reshape(-1)[0] = 5 * s.reshape(-1)[0]  # 5 is not an APoT-4 magnitude (0,1,2,3,4,6,8,10)
    w.reshape(-1)[1] = 2.5 * s.reshape(-1)[0]  # off the integer grid
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    bad = check_levels(proto)[0]
    assert not bad.ok and bad.off_level >= 1 and bad.off_grid == 1
