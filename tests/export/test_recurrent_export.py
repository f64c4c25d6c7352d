"""Export of quantized LSTM / GRU / RNN: unrolled QONNX verified in qonnx's executor,
Scan QCDQ (any sequence length) in onnxruntime (default and no optimizations) and
in qonnx's executor."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

import hwquant
from hwquant.export import to_qcdq, to_qonnx, verify
from hwquant.spec import A4, W4, Recipe


class Seq(nn.Module):
    def __init__(self, cell: type, bidirectional: bool, layers: int, batch_first: bool = False):
        super().__init__()
        self.rnn = cell(
            5, 8, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first
        )
        self.fc = nn.Linear(16 if bidirectional else 8, 3)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y)


def _model(cell, bidirectional=True, layers=2, batch_first=False):
    torch.manual_seed(5)
    m = hwquant.quantize(
        Seq(cell, bidirectional, layers, batch_first), Recipe.uniform(weights=W4, activations=A4)
    ).eval()
    m(torch.randn(6, 3, 5) * 2)  # activation scales
    return m


def _passed(report, backends):
    rows = {r.backend: r for r in report.results}
    for b in backends:
        assert rows[b].ran and rows[b].passed, (b, rows[b])
        assert rows[b].mismatched == 0
    assert report.passed


def test_lstm_bidirectional_two_layers_unrolled_qonnx_in_qonnx(tmp_path):
    m = _model(nn.LSTM)
    x = torch.randn(4, 3, 5)
    path = to_qonnx(m, x, tmp_path / "lstm.onnx")
    g = onnx.load(path).graph
    ops = {n.op_type for n in g.node}
    assert "Quant" in ops and "Scan" not in ops  # flat: qonnx's executor walks it
    _passed(verify(m, path, x), ["qonnx"])


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN], ids=lambda c: c.__name__)
def test_scan_qcdq_runs_any_length_in_onnxruntime_and_qonnx(cell, tmp_path):
    m = _model(cell, layers=2 if cell is nn.LSTM else 1)
    path = to_qcdq(m, torch.randn(4, 3, 5), tmp_path / "scan.onnx", dynamic_length=0)
    g = onnx.load(path).graph
    assert [n.op_type for n in g.node].count("Scan") == (4 if cell is nn.LSTM else 2)
    body_ops = {b.op_type for n in g.node if n.op_type == "Scan" for b in n.attribute[0].g.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= body_ops  # the gates quantized inside
    for T in (2, 9):  # exported at T = 4
        _passed(
            verify(m, path, torch.randn(T, 3, 5)), ["onnxruntime", "onnxruntime-noopt", "qonnx"]
        )


def test_batch_first_gru_unrolled_qcdq_in_onnxruntime(tmp_path):
    m = _model(nn.GRU, bidirectional=True, layers=1, batch_first=True)
    x = torch.randn(3, 4, 5)
    path = to_qcdq(m, x, tmp_path / "gru.onnx", recurrent="unrolled")
    assert "Scan" not in {n.op_type for n in onnx.load(path).graph.node}
    _passed(verify(m, path, x), ["onnxruntime", "onnxruntime-noopt"])


def test_export_errors_are_clear(tmp_path):
    m = _model(nn.RNN, bidirectional=False, layers=1)
    with pytest.raises(ValueError, match="dynamic_length needs recurrent='scan'"):
        to_qonnx(m, torch.randn(4, 3, 5), tmp_path / "a.onnx", dynamic_length=0)
    with pytest.raises(ValueError, match="recurrent must be one of"):
        to_qcdq(m, torch.randn(4, 3, 5), tmp_path / "b.onnx", recurrent="loop")
    assert not list(tmp_path.iterdir())  # nothing written
