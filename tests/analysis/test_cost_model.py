"""cost() on torch models: shapes, MACs, folding, accumulators, fit, special formats."""

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from hwquant.analysis import Target, cost
from hwquant.analysis.cost import formulas as F
from hwquant.analysis.cost.estimate import choose_folding
from hwquant.analysis.cost.records import LayerRecord
from hwquant.checkpoint import save_checkpoint
from hwquant.nn import QuantConv2d, QuantConvTranspose2d, Quantizer, QuantLinear
from hwquant.spec import (
    A4U,
    FP8_E4M3,
    W4,
    APoTFormat,
    IntFormat,
    LayerSpec,
    MSQFormat,
    PowerOfTwoFormat,
    QuantSpec,
    ScaleSpec,
    per_channel,
)

W4A4 = LayerSpec(input=A4U, weight=W4)


def _linear(i=64, o=32, spec=W4A4):
    return nn.Sequential(QuantLinear(i, o, spec=spec))


def test_linear_matches_finn_formula():
    r = cost(_linear(), (1, 64), Target(weight_memory="bram"), folding={"0": (4, 8)})
    lc = r.layers[0]
    assert (lc.MW, lc.MH, lc.pe, lc.simd, lc.cycles) == (64, 32, 4, 8, 64)
    assert lc.accumulator.datatype == 15 and lc.out_bits is None
    assert lc.luts == F.finn_mvau_luts(64, 32, 4, 8, 4, 4, lc.accumulator.used)
    assert lc.bram18 == 4 and lc.dsps == 0 and not lc.mult_in_dsp
    assert r.macs == 64 * 32 and r.weight_memory_bits == 64 * 32 * 4
    assert r.activation_memory_bits == 64 * 4
    assert r.bops_psqs == pytest.approx(F.bops(32, 64, 4, 4, lc.pruned_fraction))


def test_conv_geometries():
    spec = W4A4
    net = nn.Sequential(
        QuantConv2d(3, 8, 3, padding=1, spec=spec),
        QuantConv2d(8, 8, 3, padding=1, groups=8, spec=spec),
        QuantConvTranspose2d(8, 2, 2, stride=2, spec=spec),
    )
    r = cost(net, (2, 3, 8, 8), Target(folding="fully_folded"))
    conv, dw, tconv = r.layers
    assert (conv.op, conv.MW, conv.MH, conv.n_pix, conv.macs) == ("conv", 27, 8, 64, 27 * 8 * 64)
    assert (dw.op, dw.MW, dw.MH, dw.macs) == ("depthwise_conv", 9, 8, 9 * 8 * 64)
    # transposed: every input pixel feeds C_out·k outputs; stride = kernel → fan-in C_in
    assert (tconv.op, tconv.MW, tconv.MH, tconv.n_pix) == ("conv_transpose", 8, 8, 64)
    assert tconv.macs == 8 * 2 * 4 * 64 and tconv.fan_in == 8
    assert conv.cycles == 27 * 8 * 64  # fully folded: one MAC per cycle
    assert conv.activation_memory_bits == 3 * 64 * 4  # per frame, batch divided out


def test_thresholds_come_from_the_next_activation_quantizer():
    net = nn.Sequential(
        QuantLinear(16, 8, spec=W4A4),
        nn.ReLU(),
        QuantLinear(8, 4, spec=LayerSpec(input=QuantSpec(IntFormat(3, False)), weight=W4)),
    )
    r = cost(net, (1, 16))
    assert [lc.out_bits for lc in r.layers] == [3, None]
    assert r.layers[0].lut_breakdown["thresholds"] > 0


def test_folding_errors_name_layer_and_dimension():
    with pytest.raises(ValueError, match=r"layer '0': PE=3 does not divide MH=32"):
        cost(_linear(), (1, 64), folding={"0": (3, 8)})
    with pytest.raises(ValueError, match=r"layer '0': SIMD=5 does not divide MW=64"):
        cost(_linear(), (1, 64), Target(layers={"0": {"pe": 4, "simd": 5}}))
    with pytest.raises(ValueError, match=r"unknown layer 'fc'"):
        cost(_linear(), (1, 64), folding={"fc": (1, 1)})
    with pytest.raises(ValueError, match="input_shape"):
        cost(_linear(), None)


def test_auto_folding_smallest_parallelism():
    r = cost(_linear(), (1, 64), Target(target_cycles_per_frame=64))
    lc = r.layers[0]
    assert (lc.pe, lc.simd, lc.cycles) == (1, 32, 64)  # PE·SIMD = 32, SIMD first
    r = cost(_linear(), (1, 64), Target(target_cycles_per_frame=1))
    assert (r.layers[0].pe, r.layers[0].simd) == (32, 64)
    r = cost(
        nn.Sequential(QuantConv2d(1, 4, 3, spec=W4A4)),
        (1, 1, 6, 6),
        Target(target_cycles_per_frame=10),
    )
    assert not r.layers[0].meets_cycle_target and any("cannot meet" in n for n in r.notes)


def _rec(MW, MH, n_pix):
    return LayerRecord("l", "conv", MW, MH, n_pix, MW, MW * MH, 0, None, None)


@given(
    st.sampled_from([1, 2, 3, 8, 9, 16, 36, 144]),
    st.sampled_from([1, 4, 10, 16, 32]),
    st.sampled_from([1, 4, 64]),
    st.integers(1, 50_000),
)
def test_auto_folding_is_minimal(MW, MH, n_pix, budget):
    rec = _rec(MW, MH, n_pix)
    pe, simd, meets = choose_folding(rec, Target(target_cycles_per_frame=budget))
    assert MH % pe == 0 and MW % simd == 0
    cycles = F.mvau_cycles(MW, MH, pe, simd, n_pix)
    assert meets == (cycles <= budget)
    if meets:
        for p in F.divisors(MH):
            for s in F.divisors(MW):
                if p * s < pe * simd:
                    assert F.mvau_cycles(MW, MH, p, s, n_pix) > budget


def test_fit_and_dominant_layer():
    net = nn.Sequential(QuantLinear(64, 64, spec=W4A4), nn.ReLU(), QuantLinear(64, 8, spec=W4A4))
    r = cost(net, (1, 64), Target(luts=500, dsps=10, target_cycles_per_frame=8))
    assert not r.fits
    lut = next(x for x in r.resources if x.resource == "LUT")
    assert lut.dominant_layer == "0" and lut.used == sum(lc.luts for lc in r.layers)
    assert r.violations and "LUT" in r.violations[0] and "largest: 0" in r.violations[0]
    assert cost(net, (1, 64), Target(luts=10**7)).fits
    json.dumps(r.to_dict())


def test_float_layers_are_reported():
    r = cost(nn.Sequential(nn.Linear(8, 4)), (1, 8))
    lc = r.layers[0]
    assert (lc.weight_bits, lc.input_bits, lc.input_format) == (32, 32, "FLOAT32")
    assert lc.mult_in_dsp and lc.dsps > 0 and lc.accumulator.used == 32
    assert any("float input" in n for n in r.notes)


def test_accumulator_widths_from_trained_weights():
    layer = QuantLinear(4, 1, bias=False, spec=W4A4)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.7, -0.7, 0.7, 0.7]]))
    layer.reset_weight_scale()  # s = 0.1 → q = [7, -7, 7, 7], ‖q‖₁ = 28
    acc = cost(nn.Sequential(layer), (1, 4)).layers[0].accumulator
    # exact: acc ∈ [-105, 315] → 10 bits; β = log2 28 + 4 → 10; α = 2 + 4 + 4 − 1 = 9 → 11
    assert (acc.exact, acc.weight, acc.datatype, acc.a2q, acc.used) == (10, 10, 11, None, 10)


def test_a2q_guarantee_is_read_from_the_quantizer():
    net = _linear()
    net[0].weight_quant.accumulator_bits = 12
    acc = cost(net, (1, 64)).layers[0].accumulator
    assert acc.a2q == 12 and acc.used <= 12


def test_pruned_fraction_discounts_bops():
    net = _linear(16, 8)
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(8, 16).sign())
        net[0].weight[:, :8] = 0
    net[0].reset_weight_scale()
    lc = cost(net, (1, 16)).layers[0]  # zeros of the *quantized* weights count as pruned
    assert lc.pruned_fraction == pytest.approx(0.5)
    assert lc.bops_psqs == pytest.approx(F.bops(8, 16, 4, 4, 0.5))
    assert lc.bops_qonnx == pytest.approx(0.5 * 128 * 16)


@pytest.mark.parametrize(
    ("fmt", "kind", "M"),
    [(PowerOfTwoFormat(4), "pot", 9), (APoTFormat(4), "apot", 5), (MSQFormat(4), "msq", 5)],
)
def test_shift_pe_estimates(fmt, kind, M):
    spec = LayerSpec(input=A4U, weight=QuantSpec(fmt, per_channel(0), ScaleSpec(learned=True)))
    r = cost(_linear(16, 8, spec), (1, 16))
    lc = r.layers[0]
    r_lut, _ = F.shift_pe_ratio(kind)
    assert lc.shift_pe["kind"] == kind and lc.shift_pe["luts"] == round(lc.luts * r_lut)
    assert r.shift_pe["luts"] < r.luts
    assert lc.accumulator.datatype == F.datatype_bound_bits(16, 4, M, False)


def test_minifloat_mac():
    fp8 = QuantSpec(FP8_E4M3, per_channel(0), ScaleSpec(learned=True))
    spec = LayerSpec(input=QuantSpec(FP8_E4M3, scale=ScaleSpec("max")), weight=fp8)
    lc = cost(_linear(64, 8, spec), (1, 64)).layers[0]
    assert lc.accumulator.minifloat == 43 == lc.accumulator.used
    assert lc.accumulator.datatype is None
    assert lc.minifloat_mac_relative_cost == pytest.approx(
        F.minifloat_mac_relative_cost(4, 3, 4, 3, 64)
    )


def test_cost_does_not_touch_the_model():
    net = _linear(8, 4)
    q: Quantizer = net[0].input_quant
    assert not bool(q.initialized)
    cost(net, (1, 8))
    assert not bool(q.initialized)


def test_checkpoints(tmp_path):
    net = _linear(8, 4)
    ck = tmp_path / "m.pt"
    save_checkpoint(net, ck, (1, 8))
    assert cost(ck).macs == 32
    bare = tmp_path / "bare.pt"
    save_checkpoint(net, bare)
    with pytest.raises(ValueError, match="no 'input_shape'"):
        cost(bare)
    assert cost(bare, (1, 8)).macs == 32
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        cost(junk)
    with pytest.raises(ValueError, match="no such file"):
        cost(tmp_path / "missing.onnx")


def test_hls4ml_and_dsp58_targets():
    w8a8 = LayerSpec(input=QuantSpec(IntFormat(8, False)), weight=QuantSpec(IntFormat(8)))
    net = _linear(64, 32, w8a8)
    h = cost(net, (1, 64), Target(toolchain="hls4ml", target_cycles_per_frame=16))
    lc = h.layers[0]
    assert not lc.mult_in_dsp and lc.dsps == 0  # hls4ml: ≤ 10-bit products in LUTs
    assert lc.reuse_factor == (32 // lc.pe) * (64 // lc.simd) == lc.cycles <= 16
    assert any("hls4ml" in n for n in h.notes)
    f = cost(net, (1, 64), Target(device_family="DSP58"), folding={"0": (4, 8)})
    assert f.layers[0].mult_in_dsp and f.dsps == 4 * 3  # 3 products per DSP58 along SIMD
    two = nn.Sequential(QuantLinear(64, 32, spec=w8a8), nn.ReLU(), QuantLinear(32, 4, spec=w8a8))
    lut = cost(two, (1, 64), Target(weight_memory="bram"), folding={"0": (4, 8)}).layers[0]
    bram = cost(
        two, (1, 64), Target(weight_memory="bram", threshold_memory="bram"), folding={"0": (4, 8)}
    ).layers[0]
    assert lut.lut_breakdown["thresholds"] > 0 == bram.lut_breakdown["thresholds"]
    P = bram.accumulator.used
    assert bram.bram18 == F.finn_mvau_bram18(64, 32, 4, 8, 8) + F.threshold_bram18(32, 4, 8, P)
