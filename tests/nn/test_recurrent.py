"""QuantLSTM / QuantGRU / QuantRNN against torch.nn, quantized behaviour and bad input."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import hwquant
from hwquant.nn import QuantGRU, QuantLSTM, QuantRNN
from hwquant.spec import (
    A2Q,
    A4,
    W4,
    IntFormat,
    LayerSpec,
    QuantSpec,
    Recipe,
    RecurrentSpec,
    ScaleSpec,
)
from hwquant.spec.serialize import dumps, loads

PAIRS = [(nn.LSTM, QuantLSTM), (nn.GRU, QuantGRU), (nn.RNN, QuantRNN)]
W4A4 = LayerSpec(input=A4, weight=W4)


def _states(h):
    return h if isinstance(h, tuple) else (h,)


def _max_diff(a, b) -> float:
    ya, ha = a
    yb, hb = b
    d = (ya - yb).abs().max().item()
    return max(
        [d] + [(x - y).abs().max().item() for x, y in zip(_states(ha), _states(hb), strict=True)]
    )


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: p[0].__name__)
def test_quantization_off_equals_torch(pair, bidirectional, layers, batch_first):
    ftype, qtype = pair
    torch.manual_seed(0)
    f = ftype(6, 9, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    q = qtype(
        6,
        9,
        num_layers=layers,
        bidirectional=bidirectional,
        batch_first=batch_first,
        spec=W4A4,
    )
    q.load_state_dict(f.state_dict(), strict=False)  # a float checkpoint of the torch layer
    hwquant.set_quantization(q, False)
    x = torch.randn(5, 4, 6)
    assert _max_diff(f(x), q(x)) <= 1e-5
    # initial states are used the same way
    D = 2 if bidirectional else 1
    h0 = torch.randn(layers * D, 4 if not batch_first else 5, 9)
    hx = (h0, torch.randn_like(h0)) if ftype is nn.LSTM else h0
    x2 = torch.randn(4, 5, 6) if batch_first else torch.randn(5, 4, 6)
    if batch_first:
        h0 = torch.randn(layers * D, 4, 9)
        hx = (h0, torch.randn_like(h0)) if ftype is nn.LSTM else h0
    assert _max_diff(f(x2, hx), q(x2, hx)) <= 1e-5


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: p[0].__name__)
def test_packed_sequences_and_unbatched_input_equal_torch(pair):
    ftype, qtype = pair
    torch.manual_seed(1)
    f = ftype(3, 5, num_layers=2, bidirectional=True)
    q = qtype.from_float(f, W4A4)
    hwquant.set_quantization(q, False)
    x = torch.randn(7, 4, 3)
    lengths = torch.tensor([3, 7, 1, 5])  # unsorted: enforce_sorted=False
    p = pack_padded_sequence(x, lengths, enforce_sorted=False)
    (yf, hf), (yq, hq) = f(p), q(p)
    assert torch.equal(yf.batch_sizes, yq.batch_sizes)
    assert torch.equal(yf.sorted_indices, yq.sorted_indices)
    assert (yf.data - yq.data).abs().max() <= 1e-5
    for a, b in zip(_states(hf), _states(hq), strict=True):
        assert (a - b).abs().max() <= 1e-5
    pad_f, _ = pad_packed_sequence(yf)
    pad_q, _ = pad_packed_sequence(yq)
    assert (pad_f - pad_q).abs().max() <= 1e-5
    assert _max_diff(f(x[:, 0]), q(x[:, 0])) <= 1e-5  # unbatched [T, F]


def test_quantize_swaps_recurrent_layers_and_loads_float_checkpoints():
    model = nn.Sequential(nn.LSTM(4, 8), nn.GRU(8, 8), nn.RNN(8, 8, nonlinearity="relu"))
    q = hwquant.quantize(model, Recipe.uniform(weights=W4, activations=A4))
    assert [type(m) for m in q] == [QuantLSTM, QuantGRU, QuantRNN]
    assert isinstance(q[0], nn.LSTM)  # still the torch class
    rows = {e.name: e for e in q.hwquant_report.entries}
    assert rows["0"].quantized and "cell" in rows["0"].detail
    # the relu RNN's hidden state is unsigned; the GRU has no cell quantizer
    assert q[2].layer_spec.hidden.format == IntFormat(4, signed=False)
    assert q[1].layer_spec.cell is None
    # float nn.LSTM weights load; scales are re-derived from them
    f = nn.LSTM(4, 8)
    q0 = QuantLSTM(4, 8, spec=W4A4)
    q0.load_state_dict(f.state_dict())
    wq = q0.directions["l0"].weight_ih_quant
    expected = f.weight_ih_l0.detach().abs().amax(1, keepdim=True) / 7
    assert torch.allclose(wq.scale().detach(), expected)


def test_quantized_lstm_runs_on_its_grids_and_trains():
    torch.manual_seed(2)
    q = QuantLSTM(4, 6, bidirectional=True, spec=W4A4)
    x = torch.randn(8, 3, 4)
    y, (_, c) = q(x)
    # hidden states on the signed narrow 4-bit grid k/7, cell state on k/256
    assert torch.allclose(y * 7, (y * 7).round(), atol=1e-5)
    assert torch.allclose(c * 256, (c * 256).round(), atol=1e-4)
    assert (y.abs() <= 1 + 1e-6).all()
    d = q.directions["l0"]
    w = d.weight_ih_quant(q.weight_ih_l0)
    s = d.weight_ih_quant.scale().detach()
    assert torch.allclose(w / s, (w / s).round(), atol=1e-5)
    y.square().mean().backward()  # QAT: gradients reach weights and learned scales
    assert q.weight_hh_l0.grad is not None and q.weight_hh_l0.grad.abs().sum() > 0
    assert d.gate_quant.scale_param.grad is not None
    assert d.weight_ih_quant.scale_param.grad.abs().sum() > 0
    assert q.input_quant[0].scale_param.grad is not None


def test_each_quantizer_can_be_switched_off():
    spec = RecurrentSpec(input=A4, weight=W4, weight_hh=None, gate=None, hidden=None)
    q = QuantLSTM(4, 6, spec=spec)
    d = q.directions["l0"]
    assert isinstance(d.weight_hh_quant, nn.Identity)
    assert isinstance(d.gate_quant, nn.Identity) and isinstance(d.hidden_quant, nn.Identity)
    assert isinstance(d.weight_ih_quant, hwquant.nn.Quantizer)
    y, _ = q(torch.randn(5, 2, 4))
    assert len(set(y.flatten().tolist())) > 15  # hidden state float
    wq = QuantGRU(4, 6, spec=LayerSpec(weight=W4))  # weights only
    assert isinstance(wq.input_quant[0], nn.Identity)
    assert isinstance(wq.directions["l0"].sigmoid_quant, nn.Identity)


def test_recurrent_spec_round_trips_and_model_state_reloads():
    q = QuantLSTM(4, 6, num_layers=2, spec=W4A4)
    spec = q.layer_spec
    assert loads(dumps(spec)) == spec
    r = Recipe(by_type={"LSTM": spec})
    assert loads(dumps(r)) == r
    _ = q(torch.randn(5, 2, 4))
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    q2 = QuantLSTM(4, 6, num_layers=2, spec=spec)
    q2.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(5, 2, 4)
    assert torch.equal(q.eval()(x)[0], q2.eval()(x)[0])


def test_a2q_on_both_gate_matmuls():
    a8 = QuantSpec(IntFormat(8), scale=ScaleSpec("percentile", learned=True))
    spec = LayerSpec(input=a8, weight=A2Q(IntFormat(4, narrow=True), accumulator_bits=14))
    q = QuantLSTM(16, 12, spec=spec)
    d = q.directions["l0"]
    assert d.weight_ih_quant.input_format == IntFormat(8)
    assert d.weight_hh_quant.input_format == IntFormat(8, narrow=True)  # the hidden grid
    for wq, w in ((d.weight_ih_quant, q.weight_ih_l0), (d.weight_hh_quant, q.weight_hh_l0)):
        rows = wq.code_rows(w).abs().sum(1)
        assert float(rows.max()) * 128 <= 2**13 - 1  # L1 bound of P = 14 with 8-bit inputs


@pytest.mark.parametrize(
    ("build", "call", "message"),
    [
        (lambda: QuantLSTM(4, 6, spec=W4A4), lambda m: m(torch.randn(5)), "2-D .* or 3-D"),
        (lambda: QuantLSTM(4, 6, spec=W4A4), lambda m: m(torch.randn(5, 2, 3)), "feature size"),
        (
            lambda: QuantLSTM(4, 6, spec=W4A4),
            lambda m: m(torch.randn(5, 2, 4), (torch.zeros(1, 3, 6), torch.zeros(1, 2, 6))),
            "h0 must have shape",
        ),
        (
            lambda: QuantLSTM(4, 6, spec=W4A4),
            lambda m: m(torch.randn(5, 2, 4), (torch.zeros(1, 2, 6), torch.zeros(2, 2, 6))),
            "c0 must have shape",
        ),
        (
            lambda: QuantGRU(4, 6, spec=W4A4),
            lambda m: m(torch.randn(5, 2, 4), torch.zeros(2, 2, 6)),
            "h0 must have shape",
        ),
    ],
)
def test_bad_input_is_a_clear_error(build, call, message):
    with pytest.raises(ValueError, match=message):
        call(build())


def test_bad_specs_are_clear_errors():
    a8 = QuantSpec(IntFormat(8), scale=ScaleSpec("fixed", value=1 / 127))
    with pytest.raises(ValueError, match=r"cell .* at least as wide as .*hidden"):
        RecurrentSpec(input=A4, weight=W4, cell=A4, hidden=a8)
    with pytest.raises(ValueError, match="no cell quantizer"):
        QuantGRU(4, 6, spec=RecurrentSpec(input=A4, weight=W4, cell=a8))
    with pytest.raises(ValueError, match="no sigmoid"):
        QuantRNN(4, 6, spec=RecurrentSpec(input=A4, weight=W4, sigmoid=a8))
    with pytest.raises(ValueError, match="output is not used"):
        QuantLSTM(4, 6, spec=LayerSpec(input=A4, weight=W4, output=A4))
    with pytest.raises(ValueError, match="proj_size"):
        QuantLSTM.from_float(nn.LSTM(4, 6, proj_size=3), W4A4)
    with pytest.raises(ValueError, match="weight_hh must be"):
        RecurrentSpec(weight=W4, weight_hh="W4")


def test_calibration_sees_every_time_step_and_dropout_acts_between_layers():
    torch.manual_seed(7)
    f = nn.LSTM(4, 6, num_layers=2, dropout=0.5)
    q = QuantLSTM.from_float(f, Recipe.uniform(weights=W4, activations=A4).default)  # acc. bias
    x = torch.randn(9, 3, 4)
    with hwquant.calibration(q):
        q(x)
    gate = q.directions["l0"].gate_quant
    assert gate.state == "static"
    # the scale covers the pre-activations of every step, not only of the first one
    hwquant.set_quantization(q, False)
    pre = []
    d = q.directions["l0"]
    d.gate_quant.disable()
    hook = d.gate_quant.register_forward_hook(lambda m, a, out: pre.append(a[0].abs().max()))
    q(x)
    hook.remove()
    hwquant.set_quantization(q, True)
    assert len(pre) == 9
    assert float(gate.scale()) * 127 >= 0.5 * float(torch.stack(pre).max())
    q.train()
    y1, _ = q(x)
    y2, _ = q(x)
    assert not torch.equal(y1, y2)  # dropout between the layers in training
    q.eval()
    assert torch.equal(q(x)[0], q(x)[0])


@pytest.mark.parametrize("packed", [False, True])
def test_both_directions_in_one_loop_equal_one_by_one(packed, monkeypatch):
    import hwquant.nn.recurrent as recurrent

    torch.manual_seed(8)
    q = QuantLSTM(3, 5, num_layers=2, bidirectional=True, spec=W4A4)
    x = torch.randn(7, 4, 3)
    q(x)
    q.eval()  # (training-mode calls would still warm the activation scales up)
    inp = pack_padded_sequence(x, torch.tensor([3, 7, 1, 5]), enforce_sorted=False) if packed else x
    y1, (h1, c1) = q(inp)
    monkeypatch.setattr(recurrent, "_stacked_steps", lambda a, b: None)  # one by one
    y2, (h2, c2) = q(inp)
    y1, y2 = (y.data if packed else y for y in (y1, y2))
    assert torch.allclose(y1, y2, atol=1e-6) and torch.allclose(h1, h2, atol=1e-6)
    assert torch.allclose(c1, c2, atol=1e-6)
