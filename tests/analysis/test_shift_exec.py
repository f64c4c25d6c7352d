"""Shift-add execution of power-of-two / APoT / MSQ layers: the same integers as
multiply-accumulate (wrap and saturate, P-bit overflow counts), and the fake-quantized
model's outputs exactly (in output codes, float64)."""

import pytest
import torch
from torch import nn

import hwquant
from hwquant.analysis.integer_exec import run_integer
from hwquant.analysis.shift_exec import run_shift_add, shift_accumulate, shift_codes
from hwquant.core.accumulator import accumulate
from hwquant.nn.codes import weight_codes
from hwquant.spec import (
    APoTFormat,
    IntFormat,
    MSQFormat,
    PoTWeight,
    PowerOfTwoFormat,
    QuantSpec,
    Recipe,
    ScaleSpec,
)

A8 = QuantSpec(IntFormat(8), scale=ScaleSpec("percentile", learned=True))

SPECS = {
    "pot4": PoTWeight(PowerOfTwoFormat(4)),
    "pot3z": PoTWeight(PowerOfTwoFormat(3, has_zero=True)),
    "apot4-wn": PoTWeight(APoTFormat(4), weight_norm=True),
    "apot3": PoTWeight(APoTFormat(3)),
    "msq4": PoTWeight(MSQFormat(4)),
    "msq4-mix": PoTWeight(MSQFormat(4), sp2_fraction=0.5, weight_norm=True),
    "msq3-mix": PoTWeight(MSQFormat(3), sp2_fraction=0.25),
    "pot4-stats": PoTWeight(PowerOfTwoFormat(4), scale=ScaleSpec("max")),
}


class Net(nn.Module):
    """conv · ReLU · grouped conv (+ residual) · maxpool · conv · avgpool · linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.pool = nn.MaxPool2d(2)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = self.pool(torch.relu(self.c2(a)) + a)
        c = torch.relu(self.c3(b))
        return self.fc(self.avg(c).flatten(1))


def quantized(spec, x, seed=0):
    torch.manual_seed(seed)
    m = hwquant.quantize(Net(), Recipe.uniform(weights=spec, activations=A8))
    with torch.no_grad():
        m(x)
        for _, q in hwquant.quantizers(m):  # learned scales are not exact multiples
            if q.role == "activation":
                q.scale_param.mul_(1 + 0.05 * torch.rand(()))
    return m.eval()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_shift_add_equals_fake_quantized_model(name):
    torch.manual_seed(1)
    x = torch.randn(32, 1, 8, 8)
    m = quantized(SPECS[name], x).double()
    with torch.no_grad():
        ref = m(x.double())
    run = run_shift_add(m, x.double())
    assert run.float_ops == [] and float(ref.std()) > 0
    # in output codes: the last layer's accumulator step s_in·s_w / D
    wc = weight_codes(m.fc)
    step = (m.fc.input_quant.scale().detach() * wc.scale.reshape(-1)).double()
    codes_diff = ((run.outputs - ref) / step).abs()
    assert float(codes_diff.max()) < 1e-6
    mac = run_integer(m, x.double())
    assert torch.equal(run.outputs, mac.outputs)
    assert {k: v.to_dict() for k, v in run.layers.items()} == {
        k: v.to_dict() for k, v in mac.layers.items()
    }


@pytest.mark.parametrize("name", ["pot4", "apot4-wn", "msq4-mix"])
def test_narrow_accumulators_overflow_alike(name):
    x = torch.randn(16, 1, 8, 8)
    m = quantized(SPECS[name], x)
    for mode in ("wrap", "saturate"):
        a = run_shift_add(m, x, accumulator_bits=12, mode=mode)
        b = run_integer(m, x, accumulator_bits=12, mode=mode)
        assert a.overflows == b.overflows > 0
        assert torch.equal(a.outputs, b.outputs)


def test_shift_accumulate_matches_multiply_accumulate():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-128, 128, (40, 24), generator=g)
    # codes of every kind: powers of two, two-term sums, uniform ints (signed digits)
    q = torch.randint(-300, 301, (7, 24), generator=g)
    bias = torch.randint(-5000, 5000, (7,), generator=g)
    for bits, mode in ((None, "wrap"), (14, "wrap"), (14, "saturate"), (20, "saturate")):
        got = shift_accumulate(x, q, bits, mode, bias)
        want = accumulate(x, q, bits, mode, bias)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b), (bits, mode)


def test_layer_shift_codes():
    x = torch.randn(8, 1, 8, 8)
    for name, terms in (("pot4", 1), ("apot4-wn", 2), ("msq4", 2), ("msq4-mix", 2)):
        m = quantized(SPECS[name], x)
        sc = shift_codes(m.c3)
        assert sc.terms == terms
        assert sc.shift.min() >= 0
        # the codes reconstruct the fake-quantized weight
        w = m.c3.quant_weight().detach().double().reshape(8, -1)
        rec = sc.integer_codes().double() * sc.scale.reshape(-1, 1)
        assert torch.allclose(rec, w, rtol=1e-6, atol=1e-9)


def test_shift_codes_need_integer_weights():
    with pytest.raises(ValueError, match="no integer codes"):
        shift_codes(nn.Linear(4, 2))
