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
