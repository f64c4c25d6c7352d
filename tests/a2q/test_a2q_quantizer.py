"""A2Q / A2Q+ specs and weight quantizer: the L1 budget holds by construction, before
and after training, on every layer kind; bad input fails at construction."""

import copy
import io

import pytest
import torch
from torch import nn

import hwquant
from hwquant.algorithms.a2q_init import ep_init, unfreeze
from hwquant.core.accumulator import a2q_l1_bound, a2q_plus_l1_bound
from hwquant.nn import (
    QuantConv1d,
    QuantConv2d,
    QuantConvTranspose1d,
    QuantConvTranspose2d,
    QuantLinear,
)
from hwquant.nn.a2q import (
    A2QWeightQuantizer,
    a2q_penalty,
    check_bounds,
)
from hwquant.spec import (
    A2Q,
    A4U,
    A8,
    A2QPlus,
    Granularity,
    IntFormat,
    LayerSpec,
    QuantSpec,
    Recipe,
    ScaleSpec,
)

W4 = IntFormat(4, narrow=True)


def layers(spec_cls, P):
    """(layer, input shape) of every supported kind with an A2Q(+) weight spec."""
    w = spec_cls(W4, accumulator_bits=P)
    s_u, s_s = LayerSpec(input=A4U, weight=w), LayerSpec(input=A8, weight=w)
    return [
        (QuantLinear(64, 8, spec=s_u), (4, 64)),
        (QuantConv1d(4, 6, 3, padding=1, spec=s_s), (2, 4, 9)),
        (QuantConv2d(8, 16, 3, padding=1, spec=s_u), (2, 8, 6, 6)),
        (QuantConv2d(8, 16, 3, groups=4, spec=s_u), (2, 8, 6, 6)),  # grouped
        (QuantConv2d(8, 8, 3, groups=8, spec=s_s), (2, 8, 6, 6)),  # depthwise
        (QuantConvTranspose1d(4, 3, 4, stride=2, spec=s_u), (2, 4, 6)),
        (QuantConvTranspose2d(8, 4, 3, stride=2, spec=s_s), (2, 8, 5, 5)),
    ]


def codes_per_output_channel(layer):
    """Integer weight codes, one row per output channel (transposed convs: axis 1)."""
    wq = layer.weight_quant
    q = torch.round(layer.quant_weight() / wq.scale()).detach()
    axis = 1 if isinstance(layer, nn.modules.conv._ConvTransposeNd) else 0
    return q.movedim(axis, 0).reshape(q.shape[axis], -1)


def assert_within_budget(layer):
    wq: A2QWeightQuantizer = layer.weight_quant
    q = codes_per_output_channel(layer)
    fmt = wq.input_format
    if wq.zero_centre:
        half = a2q_plus_l1_bound(wq.accumulator_bits, fmt.bits) / 2
        assert q.clamp(min=0).sum(1).max() <= half
        assert (-q).clamp(min=0).sum(1).max() <= half
    else:
        T = a2q_l1_bound(wq.accumulator_bits, fmt.bits, fmt.signed)
        assert q.abs().sum(1).max() <= T
    assert wq.check(layer.weight).ok


def train_adversarially(layer, shape, steps=15):
    """Push the weights to grow (maximize the output magnitude): the budget must hold."""
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(steps):
        y = layer(torch.rand(shape) * 4)
        loss = -y.abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("spec_cls", [A2Q, A2QPlus])
@pytest.mark.parametrize("P", [10, 12, 16])
def test_budget_holds_at_init_ep_init_and_after_training(spec_cls, P):
    for layer, shape in layers(spec_cls, P):
        assert_within_budget(layer)
        with torch.no_grad():
            layer.weight.copy_(layer.weight_quant.ep_init(layer.weight))
        assert_within_budget(layer)
        train_adversarially(layer, shape)
        assert_within_budget(layer)


def test_budget_binds_and_rounding_is_toward_zero():
    layer = QuantLinear(256, 4, spec=LayerSpec(input=A4U, weight=A2Q(W4, accumulator_bits=10)))
    with torch.no_grad():
        layer.weight.copy_(layer.weight_quant.ep_init(layer.weight))
    q = codes_per_output_channel(layer)
    T = a2q_l1_bound(10, 4, False)
    w = layer.weight_quant.effective_weight(layer.weight).detach()
    s = layer.weight_quant.scale().detach()
    # the float weights use the whole budget; truncation can only shrink the codes
    assert (w / s).abs().sum(1).max() == pytest.approx(T, rel=1e-4)
    assert q.abs().sum(1).max() <= T
    assert torch.equal(q, torch.trunc((w / s).clamp(-7, 7)))


def test_a2q_plus_centres_and_is_looser():
    lin = nn.Linear(64, 8)
    a = QuantLinear.from_float(lin, LayerSpec(input=A4U, weight=A2Q(W4, accumulator_bits=12)))
    b = QuantLinear.from_float(lin, LayerSpec(input=A4U, weight=A2QPlus(W4, accumulator_bits=12)))
    assert b.weight_quant.l1_bound > 2 * a.weight_quant.l1_bound
    w = b.weight_quant.effective_weight(b.weight).detach()
    assert w.sum(1).abs().max() < 1e-5  # zero-centred channels


def test_penalty_and_gradients():
    layer, shape = layers(A2Q, 10)[2]
    wq = layer.weight_quant
    with torch.no_grad():  # g inside the budget: no penalty
        wq.norm_param.copy_(torch.log2(wq.max_norm() / 2))
    assert float(wq.penalty().detach()) == 0.0
    with torch.no_grad():
        wq.norm_param.add_(3.0)  # g drifts above the clamp
    pen = a2q_penalty(nn.Sequential(layer))
    assert float(pen.detach()) > 0
    (layer(torch.rand(shape)).sum() + pen).backward()
    for p in (layer.weight, wq.norm_param, wq.scale_param):
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_zero_channel_gradient_stays_finite():
    layer = QuantLinear(16, 2, spec=LayerSpec(input=A4U, weight=A2Q(W4, accumulator_bits=8)))
    with torch.no_grad():
        layer.weight[0].zero_()
    layer.weight_quant.init_from(layer.weight)
    layer(torch.rand(4, 16)).sum().backward()
    assert torch.isfinite(layer.weight.grad).all()


def test_input_format_declared_when_input_not_quantized():
    spec = A2Q(W4, accumulator_bits=12, input_format=IntFormat(4, signed=False))
    layer = QuantLinear(16, 4, spec=LayerSpec(weight=spec))
    assert layer.weight_quant.input_format == IntFormat(4, signed=False)


def test_missing_input_format_is_an_error_naming_the_layer():
    with pytest.raises(ValueError, match=r"QuantConv2d\(3→8\).*not quantized"):
        QuantConv2d(3, 8, 3, spec=LayerSpec(weight=A2Q(W4, accumulator_bits=12)))
    with pytest.raises(ValueError, match=r"QuantLinear\(16→4\)"):
        hwquant.quantize(
            nn.Sequential(nn.Linear(16, 4)), Recipe.uniform(A2Q(accumulator_bits=16), None)
        )


def test_p_below_minimum_names_layer_and_minimum():
    # 8-bit unsigned inputs: A2Q needs P ≥ 10 (T ≥ 1); A2Q+ needs P ≥ 9
    with pytest.raises(ValueError, match=r"QuantLinear\(16→4\).*minimum .* P = 10"):
        QuantLinear(16, 4, spec=LayerSpec(input=_u8(), weight=A2Q(W4, accumulator_bits=9)))
    with pytest.raises(ValueError, match=r"P = 9"):
        QuantLinear(16, 4, spec=LayerSpec(input=_u8(), weight=A2QPlus(W4, accumulator_bits=8)))
    QuantLinear(16, 4, spec=LayerSpec(input=_u8(), weight=A2Q(W4, accumulator_bits=10)))


def _u8():
    return QuantSpec(IntFormat(8, signed=False), scale=ScaleSpec(learned=True))


def test_contradicting_declaration_and_bad_input_quantizer():
    spec = A2Q(W4, accumulator_bits=12, input_format=IntFormat(8))
    with pytest.raises(ValueError, match="contradicts"):
        QuantLinear(16, 4, spec=LayerSpec(input=A4U, weight=spec))
    asym = QuantSpec(IntFormat(8), zero_point="asymmetric")
    with pytest.raises(ValueError, match="symmetric integer input"):
        QuantLinear(16, 4, spec=LayerSpec(input=asym, weight=A2Q(W4, accumulator_bits=12)))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rounding": "half_even"}, "rounding"),
        ({"format": IntFormat(4, signed=False)}, "format"),
        ({"granularity": Granularity("tensor")}, "granularity"),
        ({"scale": ScaleSpec("max")}, "scale"),
        ({"input_format": "int4"}, "input_format"),
        ({"accumulator_bits": 1}, "accumulator_bits"),
        ({"accumulator_bits": 65}, "accumulator_bits"),
        ({"accumulator_bits": 16.0}, "accumulator_bits"),
    ],
)
def test_spec_validation_names_the_field(kwargs, field):
    args = {"accumulator_bits": 12} | kwargs
    with pytest.raises(ValueError, match=rf"A2Q\.{field}"):
        A2Q(**args)


def test_spec_needs_accumulator_bits():
    with pytest.raises(TypeError):
        A2Q()


def test_state_dict_deepcopy_and_pickle_roundtrip():
    layer, shape = layers(A2QPlus, 12)[2]
    train_adversarially(layer, shape, steps=3)
    x = torch.rand(shape)
    ref = layer.eval()(x)  # (a training-mode call would still warm the input scale up)
    twin = layers(A2QPlus, 12)[2][0]
    twin.load_state_dict(layer.state_dict())
    torch.testing.assert_close(twin(x), ref)
    torch.testing.assert_close(copy.deepcopy(layer)(x), ref)
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.load(buf, weights_only=False)(x), ref)


def test_frozen_codes_roundtrip_and_check():
    layer, _ = layers(A2Q, 12)[2]
    wq = layer.weight_quant
    q = torch.randint(-2, 3, (16, 72)).double()
    s = torch.rand(16) + 0.01
    with torch.no_grad():
        layer.weight.copy_(wq.freeze_codes(q, s))
    assert torch.equal(codes_per_output_channel(layer), q.float())
    twin = layers(A2Q, 12)[2][0]
    twin.load_state_dict(layer.state_dict())
    assert torch.equal(codes_per_output_channel(twin), q.float())
    # thawing keeps the codes (A2Q) and makes them trainable again
    unfreeze(nn.Sequential(layer))
    assert not bool(wq.frozen)
    assert torch.equal(codes_per_output_channel(layer), q.float())
    with pytest.raises(ValueError, match="exceed"):
        wq.freeze_codes(torch.full((16, 72), 7.0), s)


def test_quantize_recipe_ep_init_and_cost_model_reads_the_target():
    from hwquant.analysis import cost
    from hwquant.models import MLP

    m = hwquant.quantize(MLP((64, 32, 10)), Recipe.uniform(A2Q(W4, accumulator_bits=12), A4U))
    assert ep_init(m) == ["layers.0", "layers.2"]
    assert all(c.ok for c in check_bounds(m).values())
    report = cost(m, (1, 64))
    assert [lc.accumulator.a2q for lc in report.layers] == [12, 12]
    assert "A2Q12" in A2Q(W4, accumulator_bits=12).short()


@pytest.mark.parametrize("spec", [A2Q, A2QPlus])
@pytest.mark.parametrize("layer_cls", ["linear", "conv", "convT"])
def test_fused_forward_matches_two_step_path(spec, layer_cls):
    """The one-node training forward (_A2QFakeQuant) gives the values and the gradients
    (weight, log2 g, log2 s) of effective_weight followed by the plain fake quantizer,
    with channels both inside and held by the clamp."""
    torch.manual_seed(3)
    ls = LayerSpec(input=A4U, weight=spec(W4, accumulator_bits=11))
    layer = {
        "linear": lambda: QuantLinear(48, 6, bias=False, spec=ls),
        "conv": lambda: QuantConv2d(4, 6, 3, bias=False, spec=ls),
        "convT": lambda: QuantConvTranspose2d(6, 4, 3, bias=False, spec=ls),
    }[layer_cls]().double()
    wq = layer.weight_quant
    with torch.no_grad():
        wq.norm_param[:2] -= 4.0  # these channels are inside the budget
    assert wq._fused
    results = []
    for fused in (True, False):
        wq._fused = fused
        params = (layer.weight, wq.norm_param, wq.scale_param)
        for p in params:
            p.grad = None
        y = wq(layer.weight)
        (y * torch.linspace(-1, 2, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        results.append([y.detach()] + [p.grad.clone() for p in params])
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1:], results[1][1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # torch's vmap fallback
@pytest.mark.parametrize("kind", [A2Q, A2QPlus], ids=["A2Q", "A2Q+"])
def test_torch_func_grad_and_vmap_through_a2q_layers(kind):
    """torch.func (per-sample gradients, functional training) sees the A2Q node's
    gradients: grad through functional_call equals eager backward; vmap runs."""
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    spec = LayerSpec(input=A4U, weight=kind(IntFormat(4, narrow=True), accumulator_bits=12))
    layer = QuantLinear(16, 4, bias=False, spec=spec)
    x = torch.rand(8, 16)
    layer(x)
    layer.eval()  # no warm-up statistics: the transform may not mutate buffers
    params = {k: v.detach() for k, v in layer.named_parameters()}
    buffers = dict(layer.named_buffers())

    def loss(p, xs):
        return functional_call(layer, (p, buffers), (xs,)).square().sum()

    g = grad(loss)(params, x)
    layer(x).square().sum().backward()
    for name, p in layer.named_parameters():
        torch.testing.assert_close(g[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)
    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x[:, None])
    assert per_sample["weight"].shape == (8, 4, 16)
    torch.testing.assert_close(per_sample["weight"].sum(0), g["weight"], rtol=1e-4, atol=1e-6)
