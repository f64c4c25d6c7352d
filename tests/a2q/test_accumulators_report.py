"""hwquant.analysis.accumulators: bounds per layer against hand computations; the
`hwquant accumulators` command."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import hwquant
from hwquant.analysis import accumulators, overflow_audit
from hwquant.analysis.cost import formulas
from hwquant.cli.main import main
from hwquant.nn import QuantConv2d, QuantConvTranspose2d, QuantLinear
from hwquant.spec import A2Q, A2QPlus, IntFormat, LayerSpec, QuantSpec, Recipe, ScaleSpec

FIXED = ScaleSpec("fixed", value=1.0)
U4 = QuantSpec(IntFormat(4, signed=False), scale=FIXED)


def test_known_layer():
    spec = LayerSpec(input=U4, weight=QuantSpec(IntFormat(4), scale=FIXED))
    layer = QuantLinear(3, 2, bias=False, spec=spec)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [-7.0, -7.0, 0.0]]))
    r = accumulators(nn.Sequential(layer), torch.tensor([[15.0, 0.0, 15.0], [0.0, 15.0, 0.0]]))
    row = r["0"]
    assert (row.K, row.N, row.M, row.signed_input) == (3, 4, 4, False)
    assert row.datatype_bits == formulas.datatype_bound_bits(3, 4, 4, False)
    assert row.exact_max == [60, 0] and row.exact_min == [-30, -210]
    assert row.exact_bits == 9  # [-210, 60] → 9 bits signed
    assert row.l1_max == 14 and row.l1_bits == formulas.weight_bound_bits(14, 4, False)
    assert row.observed_max_abs == 105  # |−7·15| on the second input
    assert row.observed_bits == 8 and row.a2q_bits is None
    assert "exact" in r.table() and r.to_dict()["layers"][0]["K"] == 3


def test_a2q_layers_report_their_target_and_stay_below_it():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    a4 = QuantSpec(IntFormat(4), scale=ScaleSpec("percentile", learned=True))
    m = hwquant.quantize(
        net, Recipe.uniform(A2QPlus(IntFormat(4, narrow=True), accumulator_bits=11), a4)
    )
    x = torch.randn(32, 3, 6, 6)
    m(x)
    r = accumulators(m, x)
    for row in r.layers:
        assert row.a2q_bits == 11 and row.a2q_kind == "A2Q+"
        assert row.exact_bits <= 11 and row.observed_bits <= row.exact_bits
        assert max(row.exact_max) <= 2**10 - 1 and min(row.exact_min) >= -(2**10)
    assert r["0"].K == 27 and r["3"].K == 128


def test_transposed_and_grouped_fan_in():
    a8 = QuantSpec(IntFormat(8), scale=FIXED)
    w = A2Q(IntFormat(4, narrow=True), accumulator_bits=16)
    t = QuantConvTranspose2d(4, 6, 3, stride=2, spec=LayerSpec(input=a8, weight=w))
    g = QuantConv2d(8, 8, 3, groups=4, spec=LayerSpec(input=a8, weight=w))
    r = accumulators(nn.Sequential(t, g))
    assert r["0"].K == 4 * 2 * 2 and len(r["0"].exact_max) == 6  # C_in · ⌈3/2⌉²
    assert r["1"].K == 2 * 9 and len(r["1"].exact_max) == 8
    assert all(b <= 16 for b in (r["0"].exact_bits, r["1"].exact_bits))


def test_float_input_layer_is_listed_with_a_note():
    m = hwquant.quantize(
        nn.Sequential(nn.Linear(4, 2)),
        Recipe.uniform(QuantSpec(IntFormat(4), scale=ScaleSpec(learned=True)), None),
    )
    row = accumulators(m).layers[0]
    assert row.N is None and row.exact_bits is None and "float" in row.note
    assert overflow_audit(m, 8) == []


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    from hwquant.models import MLP

    a4 = QuantSpec(IntFormat(4), scale=ScaleSpec("percentile", learned=True))
    m = hwquant.quantize(
        MLP((64, 16, 10)), Recipe.uniform(A2Q(IntFormat(4, narrow=True), accumulator_bits=12), a4)
    )
    m(torch.randn(64, 64))
    path = tmp_path / "m.pt"
    hwquant.save_checkpoint(m, str(path), (1, 64))
    return path


def test_cli_table_audit_and_json(checkpoint, capsys):
    assert (
        main(["accumulators", str(checkpoint), "--data", "digits", "--audit", "--bits", "9"]) == 0
    )
    out = capsys.readouterr().out
    assert "layers.0" in out and "A2Q12" in out and "worst-case audit" in out
    assert main(["accumulators", str(checkpoint), "--data", "random", "--json", "--audit"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [a["overflowing"] for a in d["audit"]] == [0, 0]  # at the A2Q target P = 12
    assert all(np.isfinite(r["observed_max_abs"]) for r in d["layers"])


def test_cli_errors(tmp_path, capsys):
    assert main(["accumulators", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint" in capsys.readouterr().err
