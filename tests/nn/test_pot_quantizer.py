"""PoTWeight quantizers: level sets of REFERENCE.md §8, PoT rounding against a NumPy
reference, APoT weight normalization (no NaN on constant rows) and the RCF gradient of
α, the MSQ row mix, stored / packed codes, and clear errors for what is not supported."""

import numpy as np
import pytest
import torch

import hwquant
from hwquant.core.pot import pack_codes, unpack_codes
from hwquant.nn import QuantConv2d, QuantLinear
from hwquant.nn.pot import PoTWeightQuantizer
from hwquant.spec import (
    A8U,
    APoTFormat,
    IntFormat,
    LayerSpec,
    MSQFormat,
    PoTWeight,
    PowerOfTwoFormat,
    ScaleSpec,
)
from hwquant.spec.serialize import dumps, loads


def quantizer(spec, w):
    return PoTWeightQuantizer(spec, w)


def row_levels(q, w):
    """Per row: the set of normalized levels the quantized weight uses."""
    c = q.codes(w)
    rows = c.codes.double().reshape(w.shape[0], -1).numpy()
    return [sorted(set(np.round(r, 6).tolist())) for r in rows]


def test_level_sets_match_reference():
    # REFERENCE.md §8
    pot = PowerOfTwoFormat(4).levels()
    assert pot[8:] == tuple(2.0**e for e in range(-7, 1)) and 0.0 not in pot
    assert APoTFormat(4).magnitudes() == (0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
    assert MSQFormat(4).magnitudes() == tuple(v / 8 for v in (0, 1, 2, 4, 5, 6, 8))
    w = torch.randn(16, 200)
    for fmt in (PowerOfTwoFormat(4), APoTFormat(4), MSQFormat(4), PowerOfTwoFormat(3, True)):
        q = quantizer(PoTWeight(fmt), w)
        allowed = {round(v, 6) for v in fmt.levels()}
        for used in row_levels(q, w):
            assert set(used) <= allowed
        # x̂ = scale · level, and the scale is α = max|w| per row (levels max 1)
        c = q.codes(w)
        torch.testing.assert_close(q(w), c.scale * c.codes)
        torch.testing.assert_close(c.scale.flatten(), w.abs().amax(1))


def test_pot_rounds_in_the_log_domain_like_numpy():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 64, generator=g)
    q = quantizer(PoTWeight(PowerOfTwoFormat(4), scale=ScaleSpec("max")), w)
    got = q(w).numpy()
    a = w.abs().amax(1, keepdim=True).numpy()
    v = np.clip(w.numpy() / a, -1, 1)
    want = np.sign(v) * 2.0 ** np.clip(np.round(np.log2(np.abs(v))), -7, 0) * a
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_weight_norm_constant_and_zero_rows_stay_finite():
    w = torch.randn(4, 9)
    w[1] = 0.0
    w[2] = 0.37  # constant row
    w.requires_grad_(True)
    layer = QuantLinear(9, 4, spec=LayerSpec(weight=PoTWeight(APoTFormat(4), weight_norm=True)))
    with torch.no_grad():
        layer.weight.copy_(w)
    layer.reset_weight_scale()
    y = layer(torch.randn(5, 9))
    y.square().sum().backward()
    for t in (y, layer.weight.grad, layer.weight_quant.scale_param.grad):
        assert torch.isfinite(t).all()
    wq = layer.quant_weight().detach()
    assert torch.equal(wq[1], torch.zeros(9)) and torch.equal(wq[2], torch.zeros(9))
    # standardized rows: the layer's scale per row is σ·α
    s = layer.weight_quant.scale_for(layer.weight).detach().flatten()
    sigma = layer.weight.detach().std(1, unbiased=False)
    assert float(s[0] / sigma[0]) == pytest.approx(
        float(layer.weight_quant.scale_param.detach().abs()[0, 0]), rel=1e-4
    )


def test_alpha_gets_the_rcf_gradient():
    # ∂ŵ/∂α = L(w/α) − w/α inside the clip, sign(w) outside (Li et al., eq. 4)
    w = torch.tensor([[0.05, -0.33, 0.9, -2.0, 1.5]])
    q = quantizer(PoTWeight(APoTFormat(4)), w)
    with torch.no_grad():
        q.scale_param.fill_(1.2)
    q(w).sum().backward()
    v = w.numpy() / 1.2
    levels = np.asarray(APoTFormat(4).levels())
    lv = levels[np.abs(np.clip(v, -1, 1)[..., None] - levels).argmin(-1)]
    want = np.where(np.abs(v) > 1, np.sign(v), lv - v).sum()
    assert float(q.scale_param.grad) == pytest.approx(float(want), rel=1e-5)


def test_msq_rows_split_by_distribution():
    g = torch.Generator().manual_seed(0)
    uniform = torch.rand(6, 256, generator=g) * 2 - 1
    peaked = torch.distributions.Laplace(0.0, 0.05).sample((6, 256))
    peaked[:, 0] = 1.0  # the same range as the uniform rows
    w = torch.cat([uniform, peaked])[torch.tensor([0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11])]
    q = quantizer(PoTWeight(MSQFormat(4), sp2_fraction=0.5), w)
    # the peaked (near-zero-dense) rows suit SP2, the uniform ones fixed point
    assert q.sp2_rows.tolist() == [False, True] * 6
    used = row_levels(q, w)
    sp2 = {round(v, 6) for v in MSQFormat(4).levels()}
    fixed = {round(k / 7, 6) for k in range(-7, 8)}
    for r, levels in enumerate(used):
        assert set(levels) <= (sp2 if r % 2 else fixed)
    assert int(quantizer(PoTWeight(MSQFormat(4), sp2_fraction=0.25), w).sp2_rows.sum()) == 3
    assert int(quantizer(PoTWeight(MSQFormat(4), sp2_fraction=0.0), w).sp2_rows.sum()) == 0


def test_stored_codes_pack_to_the_format_bits():
    w = torch.randn(6, 40)
    for spec in (
        PoTWeight(PowerOfTwoFormat(4)),
        PoTWeight(APoTFormat(4), weight_norm=True),
        PoTWeight(MSQFormat(4), sp2_fraction=0.5),
        PoTWeight(APoTFormat(3)),
    ):
        q = quantizer(spec, w)
        bits = spec.format.bits
        codes = q.stored_codes(w)
        assert int(codes.min()) >= 0 and int(codes.max()) < 2**bits
        packed = q.packed(w)
        assert len(packed) == (w.numel() * bits + 7) // 8
        assert torch.equal(unpack_codes(packed, bits, w.numel()), codes.flatten())
        # decoding sign + magnitude index gives back the integer codes m = L·D
        table, fixed = q.magnitude_table()
        half = 1 << (bits - 1)
        idx, neg = codes % half, codes >= half
        mags = table[idx.clamp(max=table.numel() - 1)]
        if fixed is not None:
            mags = torch.where(q.sp2_rows.reshape(-1, 1), mags, fixed[idx])
        m = torch.where(neg, -mags, mags)
        d = q.code_multiplier()
        assert torch.equal(m, torch.round(q.codes(w).codes * d).long())
    assert pack_codes(torch.tensor([1, 2, 3]), 2).hex() == "39"


def test_state_dict_and_spec_round_trip():
    spec = PoTWeight(MSQFormat(4), sp2_fraction=0.5, weight_norm=True)
    assert loads(dumps(spec)) == spec
    a = QuantConv2d(3, 8, 3, spec=LayerSpec(weight=spec))
    b = QuantConv2d(3, 8, 3, spec=LayerSpec(weight=spec))
    with torch.no_grad():
        a.weight.mul_(torch.linspace(0.1, 3, 8).reshape(8, 1, 1, 1))
    a.reset_weight_scale()
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.weight_quant.sp2_rows, b.weight_quant.sp2_rows)
    assert torch.equal(a.quant_weight(), b.quant_weight())


def test_clear_errors():
    with pytest.raises(ValueError, match=r"APoTFormat\.bits must be in \[2, 8\], got 1"):
        PoTWeight(APoTFormat(1))
    with pytest.raises(ValueError, match="PowerOfTwoFormat, APoTFormat or MSQFormat, got INT4"):
        PoTWeight(IntFormat(4))
    with pytest.raises(ValueError, match="sp2_fraction is the MSQ row mix"):
        PoTWeight(APoTFormat(4), sp2_fraction=0.5)
    with pytest.raises(ValueError, match=r"sp2_fraction must be a number in \[0, 1\]"):
        PoTWeight(MSQFormat(4), sp2_fraction=1.5)
    with pytest.raises(
        ValueError, match="quantizes weights only: it cannot quantize an activation"
    ):
        QuantLinear(4, 2, spec=LayerSpec(input=PoTWeight(PowerOfTwoFormat(4))))
    with pytest.raises(ValueError, match="quantizes weights only"):
        QuantLinear(4, 2, spec=LayerSpec(weight=PoTWeight(), bias=PoTWeight()))
    with pytest.raises(ValueError, match="quantizes weights only"):
        hwquant.quantize(
            torch.nn.Sequential(torch.nn.Linear(4, 2)),
            hwquant.spec.Recipe.uniform(weights=PoTWeight(), activations=PoTWeight()),
        )
    wn = quantizer(PoTWeight(APoTFormat(4), weight_norm=True), torch.randn(2, 3))
    with pytest.raises(ValueError, match="use scale_for"):
        wn.scale()


def test_qat_steps_learn_without_nan():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    with torch.no_grad():
        net[0].weight[3] = 0.0  # a dead row
    spec = PoTWeight(APoTFormat(4), weight_norm=True)
    m = hwquant.quantize(net, hwquant.spec.Recipe.uniform(weights=spec, activations=A8U))
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
