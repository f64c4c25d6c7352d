"""The shift-PE cost: PoTAcc's measured ratios (the calibration) applied to the
multiplier design, the lane structure (one shifter for PoT, two shifts and an add for
APoT / MSQ), and the same estimate from the torch model and from its QONNX export."""

import pytest
import torch
from torch import nn

import hwquant
from hwquant.analysis.cost import cost
from hwquant.analysis.cost import formulas as F
from hwquant.export import to_qonnx
from hwquant.spec import A8U, APoTFormat, MSQFormat, PoTWeight, PowerOfTwoFormat, Recipe


def test_ratios_are_potacc_pynq_z2():
    # REFERENCE.md §8: multiplier 37,133 LUT / 48 DSP; PoT 25,734 / 32; MSQ 26,795 / 32;
    # APoT 28,508 / 32
    for kind, (lut, dsp) in {"pot": (25734, 32), "msq": (26795, 32), "apot": (28508, 32)}.items():
        assert F.shift_pe_ratio(kind) == pytest.approx((lut / 37133, dsp / 48))


def test_lane_structure():
    assert F.SHIFT_PE_STRUCTURE == {"pot": (1, 0), "apot": (2, 1), "msq": (2, 1)}
    # 8-bit activations: a 4-bit PoT weight shifts by up to 7, APoT-4 / SP2-4 terms by 3
    pot, apot = F.shift_pe_lane_luts("pot", 8, 7), F.shift_pe_lane_luts("apot", 8, 3)
    assert pot == 15 * 2 and apot == 2 * 11 * 1 + 12
    # a lane is cheaper than the LUT multiplier of the same integer operands (9 / 5 bits)
    assert pot < F.finn_lut_multiplier(9, 8) and apot < F.finn_lut_multiplier(5, 8)
    with pytest.raises(ValueError, match="unknown shift-PE kind"):
        F.shift_pe_lane_luts("mult", 8, 3)


def _model(fmt):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    m = hwquant.quantize(net, Recipe.uniform(weights=PoTWeight(fmt), activations=A8U))
    with torch.no_grad():
        m(torch.rand(16, 1, 8, 8))
    return m.eval()


@pytest.mark.parametrize(
    ("fmt", "kind"), [(PowerOfTwoFormat(4), "pot"), (APoTFormat(4), "apot"), (MSQFormat(4), "msq")]
)
def test_torch_and_qonnx_costs_agree(fmt, kind, tmp_path):
    m = _model(fmt)
    a = cost(m, (1, 1, 8, 8))
    path = to_qonnx(m, torch.rand(1, 1, 8, 8), tmp_path / "m.onnx")
    b = cost(path)
    for lc_a, lc_b in zip(a.layers, b.layers, strict=True):
        assert lc_a.weight_format == lc_b.weight_format == fmt.name
        assert lc_a.shift_pe == lc_b.shift_pe and lc_a.shift_pe["kind"] == kind
    r_lut, _ = F.shift_pe_ratio(kind)
    assert a.shift_pe["luts"] == sum(round(lc.luts * r_lut) for lc in a.layers) < a.luts
