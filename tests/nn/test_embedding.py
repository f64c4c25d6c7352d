"""QuantEmbedding: a lookup of quantized weights. Against torch.nn.Embedding, on the
grid, swapped in by quantize, integer lookup in integer execution, and exported as
Gather on a Quant weight that qonnx's executor and onnxruntime run to the same codes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hwquant
from hwquant.analysis import run_integer
from hwquant.nn import QuantEmbedding
from hwquant.nn.kinds import kind_of
from hwquant.spec import A2Q, A8, IntFormat, LayerSpec, QuantSpec, Recipe, ScaleSpec, per_channel

W4_ROWS = QuantSpec(IntFormat(4, narrow=True), per_channel(0), ScaleSpec("max"))
POW2 = QuantSpec(IntFormat(4, narrow=True), per_channel(0), ScaleSpec("max", power_of_two=True))


class Tagger(nn.Module):
    """Token ids → embeddings → a linear read-out (the smallest model using one)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(idx))


def test_disabled_quantization_is_torch_embedding():
    torch.manual_seed(0)
    ref = nn.Embedding(10, 4)
    q = QuantEmbedding.from_float(ref, LayerSpec(weight=W4_ROWS))
    idx = torch.tensor([[0, 3, 9], [1, 1, 2]])
    hwquant.set_quantization(q, False)
    assert torch.equal(q(idx), ref(idx))


def test_lookups_are_rows_of_the_quantized_weight_on_the_grid():
    torch.manual_seed(0)
    q = QuantEmbedding(10, 4, spec=LayerSpec(weight=W4_ROWS))
    idx = torch.tensor([5, 0, 5])
    w = q.quant_weight()
    assert torch.equal(q(idx), w[idx])
    c = q.weight_quant.codes(q.weight)
    assert torch.equal(c.codes, c.codes.round()) and c.codes.abs().max() <= 7
    assert torch.equal(c.codes * c.scale, w)


def test_quantize_swaps_embedding_when_the_recipe_names_it():
    recipe = Recipe(by_type={"Embedding": LayerSpec(weight=W4_ROWS)})
    m = hwquant.quantize(Tagger(), recipe)
    assert isinstance(m.emb, QuantEmbedding) and isinstance(m.out, nn.Linear)
    assert kind_of(m.emb).geometry(m.emb, (1, 5), (1, 5, 6)).K == 1  # a lookup: no MACs


@pytest.mark.parametrize(
    "spec, message",
    [
        (LayerSpec(input=A8, weight=W4_ROWS), "integer indices"),
        (LayerSpec(weight=A2Q(IntFormat(4), accumulator_bits=12)), "lookup has none"),
    ],
)
def test_specs_that_cannot_apply_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        QuantEmbedding(10, 4, spec=spec)


def _model() -> nn.Module:
    torch.manual_seed(0)
    recipe = Recipe.uniform(weights=POW2, activations=A8, by_name={"emb": LayerSpec(weight=POW2)})
    m = hwquant.quantize(Tagger(), recipe).eval()
    idx = torch.randint(0, 12, (64, 5))
    with hwquant.calibration(m):
        m(idx)
    return m


def test_integer_execution_looks_up_codes():
    m = _model()
    idx = torch.randint(0, 12, (32, 5))
    with torch.no_grad():
        ref = m(idx)
    run = run_integer(m, idx)
    assert "emb" not in run.float_ops and run.overflows == 0
    torch.testing.assert_close(run.outputs, ref, rtol=1e-6, atol=1e-6)


def test_its_kind_says_a_lookup_has_no_macs():
    emb = _model().emb
    mat = kind_of(emb).matrix(emb, (1, 5), (1, 5, 6))
    assert (mat.op, mat.MW, mat.MH, mat.n_pix) == ("embedding", 6, 12, 0)  # 12 × 6 codes


def test_export_is_gather_on_a_quant_weight_verified_in_qonnx_and_qcdq_in_onnxruntime(tmp_path):
    import onnx

    from hwquant.export import to_qcdq, to_qonnx, verify

    m = _model()
    idx = torch.randint(0, 12, (1, 5))
    path = to_qonnx(m, idx, tmp_path / "emb.onnx")
    g = onnx.load(path).graph
    gather = next(n for n in g.node if n.op_type == "Gather")
    producer = {o: n for n in g.node for o in n.output}[gather.input[0]]
    assert producer.op_type == "Quant"
    report = verify(m, path, idx)
    assert report["qonnx"].ran and report["qonnx"].mismatched == 0, report.table()
    qcdq = to_qcdq(m, idx, tmp_path / "emb.qcdq.onnx")
    report = verify(m, qcdq, idx)
    for name in ("onnxruntime", "onnxruntime-noopt"):
        assert report[name].ran and report[name].mismatched == 0, report.table()
