"""Integer execution of quantized LSTM / GRU / RNN: the codes equal the fake-quantized
layer's (float64), P-bit accumulators per gate matmul, A2Q bounds hold."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hwquant
from hwquant.analysis import run_integer
from hwquant.spec import A2Q, A4, W4, IntFormat, QuantSpec, Recipe, ScaleSpec


class Seq(nn.Module):
    """A recurrent layer whose output sequence is the model output."""

    def __init__(self, cell: type, bidirectional: bool, layers: int, batch_first: bool):
        super().__init__()
        self.rnn = cell(
            6, 10, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first
        )

    def forward(self, x):
        y, _ = self.rnn(x)
        return y


def _trained_scales(m: nn.Module, x: torch.Tensor) -> None:
    """Move learned scales off their initial values (as QAT would)."""
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        m(x).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN], ids=lambda c: c.__name__)
def test_integer_run_equals_fake_quantized_codes(cell, bidirectional, layers, batch_first):
    torch.manual_seed(3)
    model = Seq(cell, bidirectional, layers, batch_first)
    m = hwquant.quantize(model, Recipe.uniform(weights=W4, activations=A4)).double()
    x = torch.randn(5, 7, 6, dtype=torch.float64) * 2
    _trained_scales(m.train(), x)
    y = m.eval()(x)
    r = run_integer(m, x)
    assert r.float_ops == []
    s_h = m.rnn.directions["l0"].hidden_quant.scale().detach().double()
    assert torch.equal((r.outputs / s_h).round(), (y / s_h).round())  # identical codes
    D = 2 if bidirectional else 1
    expected = {
        f"rnn.l{k}{d}.{w}"
        for k in range(layers)
        for d in ["", "_reverse"][:D]
        for w in ("ih", "hh")
    }
    assert set(r.layers) == expected
    assert all(s.n_values > 0 for s in r.layers.values())


def test_narrow_accumulators_overflow_and_a2q_prevents_it():
    torch.manual_seed(4)
    a8 = QuantSpec(IntFormat(8), scale=ScaleSpec("percentile", learned=True))
    x = torch.randn(12, 4, 6, dtype=torch.float64) * 3
    plain = hwquant.quantize(
        Seq(nn.LSTM, True, 1, False), Recipe.uniform(weights=W4, activations=a8)
    ).double()
    plain.eval()(x)
    wide = run_integer(plain, x)
    assert wide.overflows == 0
    bits = {k: 8 for k in wide.layers}  # far below what the products need
    narrow = run_integer(plain, x, accumulator_bits=bits)
    assert narrow.overflows > 0
    assert narrow.layers["rnn.l0.ih"].accumulator_bits == 8
    # A2Q: every gate matmul bounded for its own K (6 inputs, 10 hidden units)
    w = A2Q(IntFormat(4, narrow=True), accumulator_bits=12)
    a2q = hwquant.quantize(
        Seq(nn.LSTM, True, 1, False), Recipe.uniform(weights=w, activations=a8)
    ).double()
    y = a2q.eval()(x * 10)  # large inputs: codes saturate at the range ends
    r = run_integer(a2q, x * 10)
    assert r.overflows == 0
    assert {s.accumulator_bits for s in r.layers.values()} == {12}
    assert max(s.max_abs for s in r.layers.values()) <= 2**11 - 1
    s_h = a2q.rnn.directions["l0"].hidden_quant.scale().double()
    assert torch.equal((r.outputs / s_h).round(), (y / s_h).round())


def test_float_input_quantizer_runs_the_layer_in_float():
    from hwquant.spec import LayerSpec

    m = Seq(nn.GRU, False, 1, False)
    m.rnn = hwquant.nn.QuantGRU(6, 10, spec=LayerSpec(weight=W4))  # weights only
    x = torch.randn(4, 2, 6)
    r = run_integer(m, x)
    assert any("QuantGRU" in op for op in r.float_ops)
    assert torch.allclose(r.outputs, m.eval()(x))


def test_accumulator_report_covers_every_gate_matmul():
    from hwquant.analysis import accumulators

    torch.manual_seed(6)
    w = A2Q(IntFormat(4, narrow=True), accumulator_bits=11)
    m = hwquant.quantize(Seq(nn.LSTM, True, 2, True), Recipe.uniform(weights=w, activations=A4))
    x = torch.randn(3, 5, 6)
    m.eval()(x)
    report = accumulators(m, x)
    rows = {r.name: r for r in report.layers}
    run = run_integer(m, x)
    assert set(rows) == set(run.layers)  # same names as integer execution
    for name, row in rows.items():
        assert (
            6
            if name.startswith("rnn.l0") and name.endswith("ih")
            else (20 if name.endswith("ih") else 10)
        ) == row.K
        assert row.a2q_bits == 11 and row.exact_bits <= 11
        assert row.observed_max_abs <= max(max(row.exact_max), -min(row.exact_min))
        assert row.note.startswith("gates i: ") and "o: " in row.note


def test_cost_counts_every_gate_matmul_per_time_step():
    from hwquant.analysis import cost

    m = hwquant.quantize(Seq(nn.GRU, True, 1, True), Recipe.uniform(weights=W4, activations=A4))
    m.eval()(torch.randn(2, 7, 6))
    r = cost(m, (1, 7, 6))  # batch-first: 7 time steps of 6 features
    names = [lc.name for lc in r.layers]
    assert names == ["rnn.l0.ih", "rnn.l0.hh", "rnn.l0_reverse.ih", "rnn.l0_reverse.hh"]
    assert r.macs == 2 * 7 * 3 * 10 * (6 + 10)  # directions · T · G·H · (I + H)
    assert all(lc.n_pix == 7 and lc.MH == 30 for lc in r.layers)
