"""Bit-exact integer execution: equals the fake-quantized forward pass, emulates P-bit
wrapping / saturating accumulators, counts overflows."""

import copy

import pytest
import torch
from torch import nn

import hwquant
from hwquant.algorithms.a2q_init import ep_init
from hwquant.analysis import overflow_audit, run_integer
from hwquant.nn import QuantLinear
from hwquant.spec import (
    A2Q,
    A2QPlus,
    IntFormat,
    LayerSpec,
    QuantSpec,
    Recipe,
    ScaleSpec,
    per_channel,
)

A8 = QuantSpec(IntFormat(8), scale=ScaleSpec("percentile", learned=True))
A4 = QuantSpec(IntFormat(4), scale=ScaleSpec("percentile", learned=True))
W4 = QuantSpec(IntFormat(4, narrow=True), per_channel(0), ScaleSpec(learned=True))


class Net2d(nn.Module):
    """conv · ReLU · grouped conv · ReLU · maxpool · conv · ReLU · avgpool · flatten · linear,
    with a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.pool = nn.MaxPool2d(2)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1, stride=1, dilation=1)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = torch.relu(self.c2(a)) + a
        b = self.pool(b)
        c = torch.relu(self.c3(b))
        return self.fc(self.avg(c).flatten(1))


class Net1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(3, 6, 5, padding=2, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 8, 4)
        )

    def forward(self, x):
        return self.body(x)


def quantized(net, weights, acts, x, relu_outputs=False):
    torch.manual_seed(0)
    m = hwquant.quantize(
        net, Recipe.uniform(weights=weights, activations=acts, activation_outputs=relu_outputs)
    )
    ep_init(m)
    # first-call initialization rather than hwquant.calibration(): while calibrating,
    # QuantAvgPool2d rounds with its not-yet-set scale (1.0) and starves the next layer
    with torch.no_grad():
        m(x)
        # scales initialized from already-quantized tensors are exact multiples of the
        # previous ones (s' = 2s puts half the codes on rounding ties, where float32
        # round-off decides); learned scales are not: jitter them as training would
        for _, q in hwquant.quantizers(m):
            if q.role == "activation":
                q.scale_param.mul_(1 + 0.05 * torch.rand(()))
    return m.eval()


CASES = [
    ("2d-W4A8", Net2d, W4, A8, (64, 1, 8, 8), False),
    (
        "2d-A2Q",
        Net2d,
        A2Q(IntFormat(4, narrow=True), accumulator_bits=14),
        A4,
        (64, 1, 8, 8),
        False,
    ),
    ("2d-A2Q+relu-out", Net2d, A2QPlus(accumulator_bits=20), A8, (64, 1, 8, 8), True),
    ("1d-W4A4", Net1d, W4, A4, (64, 3, 16), False),
]


@pytest.mark.parametrize(
    ("name", "net", "w", "a", "shape", "relu_out"), CASES, ids=[c[0] for c in CASES]
)
def test_float64_integer_execution_is_bit_exact(name, net, w, a, shape, relu_out):
    torch.manual_seed(1)
    x = torch.randn(shape)
    m = quantized(net(), w, a, x, relu_out).double()
    with torch.no_grad():
        ref = m(x.double())
    run = run_integer(m, x.double())
    assert float(ref.std()) > 0  # a live network
    assert run.float_ops == []  # every op ran on integers
    scale = ref.abs().max()
    assert float((run.outputs - ref).abs().max()) <= 1e-9 * float(scale)
    assert torch.equal(run.outputs.argmax(1), ref.argmax(1))
    assert run.overflows == 0


@pytest.mark.parametrize(
    ("name", "net", "w", "a", "shape", "relu_out"), CASES, ids=[c[0] for c in CASES]
)
def test_float32_integer_execution_within_one_step(name, net, w, a, shape, relu_out):
    torch.manual_seed(1)
    x = torch.randn(shape)
    m = quantized(net(), w, a, x, relu_out)
    with torch.no_grad():
        ref = m(x)
    run = run_integer(m, x)
    fc = m.get_submodule("fc" if hasattr(m, "fc") else "body.3")
    assert float(fc.input_quant.scale().detach()) > 1e-6  # a live network, not all-zero activations
    step = (fc.input_quant.scale() * fc.weight_quant.scale_for(fc.weight)).reshape(-1).detach()
    diff_steps = (run.outputs - ref).abs() / step
    # float32 round-off in the fake-quantized pass can move a value across a rounding
    # boundary (the float64 test above is the bit-exact one): a few outputs may differ
    assert float((diff_steps > 1.01).float().mean()) <= 0.03
    assert float(diff_steps.median()) <= 1.0
    assert float((run.outputs.argmax(1) == ref.argmax(1)).float().mean()) >= 0.98


def fixed_layer(weights, in_bits=4):
    fixed = ScaleSpec("fixed", value=1.0)
    spec = LayerSpec(
        input=QuantSpec(IntFormat(in_bits, signed=False), scale=fixed),
        weight=QuantSpec(IntFormat(8), scale=fixed),
    )
    layer = QuantLinear(len(weights[0]), len(weights), bias=False, spec=spec)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weights, dtype=torch.float32))
    return layer


def test_wrap_and_saturate_emulation():
    layer = nn.Sequential(fixed_layer([[100, 100, -100, 50]]))
    x = torch.tensor([[15.0, 15.0, 0.0, 15.0]])  # exact Σ = 3750
    assert float(run_integer(layer, x).outputs) == 3750  # exact without a target
    wrap = run_integer(layer, x, accumulator_bits=12, mode="wrap")
    assert float(wrap.outputs) == 3750 - 4096 and wrap.overflows == 1
    sat = run_integer(layer, x, accumulator_bits=12, mode="saturate")
    # 1500 → 2047 (clamped) → 2047 → 2047 + 750 clamps again
    assert float(sat.outputs) == 2047 and sat.overflows == 1
    ok = run_integer(layer, x, accumulator_bits=13)
    assert float(ok.outputs) == 3750 and ok.overflows == 0
    st = ok.layers["0"]
    assert (st.max_abs, st.n_values, st.accumulator_bits) == (3750, 1, 13)
    per_layer = run_integer(layer, x, accumulator_bits={"0": 12})
    assert per_layer.overflows == 1


def test_a2q_never_overflows_while_baseline_does():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.sign(p))  # a wide float model: large L1 norms
    x = torch.rand(256, 64) * 3
    base = quantized(net, W4, A4, x)
    a2q = quantized(net, A2Q(IntFormat(4, narrow=True), accumulator_bits=10), A4, x)
    assert sum(a.overflowing for a in overflow_audit(base, 10)) > 0
    assert run_integer(base, x, 10, "wrap").overflows > 0
    assert sum(a.overflowing for a in overflow_audit(a2q)) == 0  # at its own P = 10
    for mode in ("wrap", "saturate"):
        assert run_integer(a2q, x, None, mode).overflows == 0
        assert sum(a.overflowing for a in overflow_audit(a2q, 10, mode)) == 0
    # worst-case inputs of the baseline really give wrong sums
    assert max(a.max_error for a in overflow_audit(base, 10)) > 0


def test_model_is_not_modified_and_training_flag_restored():
    x = torch.randn(16, 1, 8, 8)
    m = quantized(Net2d(), W4, A8, x).train()
    before = copy.deepcopy(m.state_dict())
    run_integer(m, x)
    assert m.training
    for k, v in m.state_dict().items():  # tensors, and the specs riding along as text
        assert torch.equal(v, before[k]) if isinstance(v, torch.Tensor) else v == before[k], k


def test_errors():
    net = hwquant.quantize(
        nn.Sequential(nn.Linear(4, 2)), Recipe.uniform(weights=W4, activations=A8)
    )
    with pytest.raises(ValueError, match="no scale yet"):
        run_integer(net, torch.randn(2, 4))
    net(torch.randn(8, 4))
    with pytest.raises(ValueError, match="mode"):
        run_integer(net, torch.randn(2, 4), mode="clip")
    with pytest.raises(ValueError, match="accumulator_bits"):
        run_integer(net, torch.randn(2, 4), accumulator_bits=80)

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = net

        def forward(self, x):
            return self.inner(x) if float(x.sum()) > 0 else x

    with pytest.raises(ValueError, match=r"torch\.fx"):
        run_integer(Untraceable(), torch.randn(2, 4))


def test_float_layers_fall_back_and_are_listed():
    net = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 2))
    m = hwquant.quantize(net, Recipe.uniform(weights=W4, activations=A8, keep_float=("2",)))
    x = torch.randn(16, 4)
    with torch.no_grad():
        ref = m.eval()(x)
    run = run_integer(m, x)
    assert any("Sigmoid" in op for op in run.float_ops)
    torch.testing.assert_close(run.outputs, ref, atol=1e-5, rtol=1e-5)
