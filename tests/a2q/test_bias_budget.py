"""The accumulator guarantee covers the whole accumulator: the bias code shares the
P-bit register (issue 8, part 4). A2Q / A2Q+ layers clip it to what fits beside their
weights; the report, the worst-case audit and the integer executor count it, unless the
spec declares the bias applied after the accumulator (FINN thresholds).

Every comparison is in integer codes (output / s_acc, rounded), and scales are powers of
two where exactness matters, so no check depends on float summation order."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hwquant.analysis import accumulators, overflow_audit, run_integer
from hwquant.nn import QuantConv2d, QuantLinear
from hwquant.nn.a2q import check_bounds
from hwquant.spec import (
    A2Q,
    A2QPlus,
    IntFormat,
    LayerSpec,
    QuantSpec,
    ScaleSpec,
    accumulator_bias,
    per_channel,
)
from hwquant.spec.serialize import dumps, loads

ONE = ScaleSpec("fixed", value=1.0)  # input codes are the input values
W4 = QuantSpec(IntFormat(4, narrow=True), per_channel(0), ScaleSpec(learned=True))


def in_spec(bits: int = 4, signed: bool = False) -> QuantSpec:
    return QuantSpec(IntFormat(bits, signed=signed), scale=ONE)


def linear(weight_spec, K: int, C: int, n_bits: int = 4, signed: bool = False) -> QuantLinear:
    spec = LayerSpec(input=in_spec(n_bits, signed), weight=weight_spec, bias=accumulator_bias(32))
    return QuantLinear(K, C, spec=spec)


@torch.no_grad()
def pow2_scales(layer) -> None:
    """Weight scales rounded to powers of two (log2 domain): every product and sum of
    the fake-quantized forward is then exact in float32."""
    p = layer.weight_quant.scale_param
    p.copy_(p.round() if layer.weight_quant.log2 else torch.exp2(torch.log2(p.abs()).round()))
    layer.weight_quant._set_forward()


@torch.no_grad()
def set_bias_codes(layer, codes) -> None:
    layer.bias.copy_(torch.as_tensor(codes, dtype=torch.float32) * acc_scale(layer))


@torch.no_grad()
def acc_scale(layer) -> torch.Tensor:
    return (layer.input_quant.scale() * layer.weight_quant.scale_for(layer.weight)).reshape(-1)


@torch.no_grad()
def weight_rows(layer) -> torch.Tensor:
    w = layer.quant_weight()
    s = layer.weight_quant.scale_for(layer.weight)
    return torch.round(w / s).reshape(w.shape[0], -1)


def worst_inputs(layer, fmt: IntFormat) -> torch.Tensor:
    """[2C, K]: per channel c, the input maximizing Σ x·q_c, then the one minimizing it."""
    q = weight_rows(layer)
    hi = torch.where(q > 0, fmt.max_int, fmt.min_int)
    lo = torch.where(q > 0, fmt.min_int, fmt.max_int)
    return torch.cat([hi, lo]).float()


@torch.no_grad()
def worst_accumulators(layer, fmt: IntFormat) -> torch.Tensor:
    """The fake-quantized model's accumulator b + Σ x·q, in codes, of each channel on its
    two extreme inputs ([2, C])."""
    x = worst_inputs(layer, fmt)
    y = torch.round(layer(x) / acc_scale(layer))  # [2C, C]
    C = y.shape[1]
    idx = torch.arange(C)
    return torch.stack([y[idx, idx], y[C + idx, idx]])


def p_range(P: int) -> tuple[int, int]:
    return -(2 ** (P - 1)), 2 ** (P - 1) - 1


# ------------------------------------------------------------------ the core formulas
def test_core_bias_range_budget_and_preloaded_accumulator():
    from hwquant.core.accumulator import (
        accumulate,
        bias_code_range,
        l1_budget_with_bias,
        worst_case_range,
    )

    q = torch.tensor([[3, -2, 0, 1], [-7, -7, 0, 0]])
    y_min, y_max = worst_case_range(q, 0, 15)
    assert y_min.tolist() == [-30, -210] and y_max.tolist() == [60, 0]
    lo, hi = bias_code_range(y_min, y_max, 9)  # register [-256, 255]
    assert lo.tolist() == [-226, -46] and hi.tolist() == [195, 255]
    # A2Q: ‖q‖₁·2^(N−1_s) + |b| ≤ 2^(P−1) − 1; A2Q+: (2^N − 1)·‖q‖₁/2 + |b| ≤ 2^(P−1) − 1
    assert l1_budget_with_bias(10, 4, False, False, 255) == (511 - 255) / 16
    assert l1_budget_with_bias(10, 4, True, False, -255) == (511 - 255) / 8
    assert l1_budget_with_bias(10, 4, False, True, 100) == pytest.approx((1022 - 200) / 15)
    # the bias is preloaded: wrap of b + Σ x·q; saturation starts from the (clamped) bias
    x = torch.tensor([[15, 15, 15, 15]])
    emu, exact, over = accumulate(x, q, 9, "wrap", bias=torch.tensor([200, 0]))
    assert exact.tolist() == [[230, -210]] and emu.tolist() == [[230, -210]]
    emu, exact, over = accumulate(x, q, 9, "wrap", bias=torch.tensor([250, -100]))
    assert exact.tolist() == [[280, -310]] and over.tolist() == [[True, True]]
    assert emu.tolist() == [[280 - 512, -310 + 512]]
    emu, _, over = accumulate(x, q, 9, "saturate", bias=torch.tensor([300, 0]))
    assert emu[0, 0] == 255 + 15 * -2 + 15 and over[0, 0]  # 300 → 255, then −30, +15


# ------------------------------------------------------------------ counted everywhere
def test_plain_layer_bias_is_counted_by_report_audit_and_integer_run():
    """A plain (not A2Q) layer whose dot products fit 10 bits but whose bias does not:
    the report, the worst-case audit and the integer run count the bias."""
    layer = linear(W4, 8, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1, 0, 0, 0, 0, 0, 0]] * 3) * 0.5)
    layer.reset_weight_scale()
    pow2_scales(layer)
    set_bias_codes(layer, [600, -600, 5])
    model = nn.Sequential(layer)
    (a,) = overflow_audit(model, 10)
    assert a.overflowing == 2 and a.worst_exact >= 600 and a.bias == "accumulator"
    x = worst_inputs(layer, IntFormat(4, signed=False))
    run = run_integer(model, x, 10, "wrap")
    exact = torch.round(layer(x).detach() / acc_scale(layer)).long()
    wrapped = ((exact + 512) % 1024) - 512  # the P-bit register wraps b + Σ x·q
    assert torch.equal(torch.round(run.outputs / acc_scale(layer)).long(), wrapped)
    assert run.overflows > 0 and run.layers["0"].max_abs == int(exact.abs().max())
    assert run.layers["0"].bias_in_accumulator
    row = accumulators(model)["0"]
    q = weight_rows(layer)
    dot_max = (q.clamp(min=0).sum(1) * 15).long()
    dot_min = (q.clamp(max=0).sum(1) * 15).long()
    assert row.exact_max == (dot_max + torch.tensor([600, -600, 5])).tolist()
    assert row.exact_min == (dot_min + torch.tensor([600, -600, 5])).tolist()
    assert row.exact_bits == 11 and row.bias == "accumulator"
    assert row.bias_codes == [600, -600, 5]
    assert " acc " in row_line(accumulators(model).table(), "0")


def row_line(table: str, name: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(name + " "))


# ------------------------------------------------------------------ A2Q clips the bias
@pytest.mark.parametrize("spec_cls", [A2Q, A2QPlus])
def test_large_bias_is_clipped_into_the_register(spec_cls):
    P = 10
    torch.manual_seed(1)
    layer = linear(spec_cls(IntFormat(4, narrow=True), accumulator_bits=P), 16, 4)
    pow2_scales(layer)
    set_bias_codes(layer, [1230, -1230, 400, -3])  # the 1,230 > 511
    lo, hi = p_range(P)
    fmt = IntFormat(4, signed=False)
    acc = worst_accumulators(layer, fmt)
    assert int(acc.min()) >= lo and int(acc.max()) <= hi
    model = nn.Sequential(layer)
    assert check_bounds(model)["0"].ok and check_bounds(model)["0"].bias_violations == 0
    assert overflow_audit(model)[0].overflowing == 0
    row = accumulators(model)["0"]
    assert row.exact_bits <= P and max(row.exact_max) <= hi and min(row.exact_min) >= lo
    assert row.bias_codes[3] == -3  # a bias that fits is kept
    # the clipped bias is what integer execution adds to its P-bit register
    x = worst_inputs(layer, fmt)
    for mode in ("wrap", "saturate"):
        run = run_integer(model, x, P, mode)
        assert run.overflows == 0
        ref = torch.round(layer(x).detach() / acc_scale(layer))
        assert torch.equal(torch.round(run.outputs / acc_scale(layer)), ref)


def test_clipped_bias_gradient_stops_and_weights_keep_theirs():
    layer = linear(A2Q(IntFormat(4, narrow=True), accumulator_bits=10), 8, 2)
    set_bias_codes(layer, [5000, 3])
    x = torch.rand(4, 8) * 15
    layer(x).sum().backward()
    g = layer.bias.grad
    assert g[0] == 0 and g[1] == 4  # clipped: no gradient; inside: straight through
    assert layer.weight.grad.abs().sum() > 0


@settings(max_examples=25, deadline=None)
@given(
    C=st.integers(1, 5),
    K=st.integers(1, 24),
    N=st.integers(2, 6),
    signed=st.booleans(),
    plus=st.booleans(),
    extra=st.integers(0, 6),
    bias_mult=st.floats(0.0, 8.0),
    seed=st.integers(0, 2**16),
)
def test_adversarial_bias_never_overflows(C, K, N, signed, plus, extra, bias_mult, seed):
    """A2Q / A2Q+ at any shape, P and N: biases up to 8× the register keep every
    worst-case accumulator within P bits, and P-bit integer execution equals the
    fake-quantized layer on those inputs."""
    from hwquant.core.accumulator import min_feasible_bits

    P = min_feasible_bits(N, signed, plus) + extra
    torch.manual_seed(seed)
    cls = A2QPlus if plus else A2Q
    layer = linear(cls(IntFormat(4, narrow=True), accumulator_bits=P), K, C, N, signed)
    with torch.no_grad():
        layer.weight.mul_(10.0)  # far over the budget: g/s clamped to T
    layer.reset_weight_scale()
    pow2_scales(layer)
    sign = torch.where(torch.rand(C) < 0.5, -1.0, 1.0)
    set_bias_codes(layer, torch.round(sign * torch.rand(C) * bias_mult * 2**P))
    fmt = IntFormat(N, signed=signed)
    lo, hi = p_range(P)
    acc = worst_accumulators(layer, fmt)
    assert int(acc.min()) >= lo and int(acc.max()) <= hi
    x = worst_inputs(layer, fmt)
    run = run_integer(nn.Sequential(layer), x, P, "wrap")
    assert run.overflows == 0
    ref = torch.round(layer(x).detach() / acc_scale(layer))
    assert torch.equal(torch.round(run.outputs / acc_scale(layer)), ref)


def test_grouped_conv_bias_counted_per_group():
    """A grouped A2Q convolution with large biases: the integer run's largest |acc| is
    the whole accumulator (bias included) and stays within P bits."""
    P = 11
    a4 = QuantSpec(IntFormat(4, signed=False), scale=ONE)
    spec = LayerSpec(
        input=a4,
        weight=A2Q(IntFormat(4, narrow=True), accumulator_bits=P),
        bias=accumulator_bias(32),
    )
    layer = QuantConv2d(4, 6, 3, padding=1, groups=2, spec=spec)
    pow2_scales(layer)
    set_bias_codes(layer, [3000, -3000, 700, -700, 10, 1500])
    model = nn.Sequential(layer)
    x = torch.randint(0, 16, (8, 4, 5, 5)).float()
    run = run_integer(model, x, P, "wrap")
    ref = torch.round(layer(x).detach() / acc_scale(layer).reshape(1, -1, 1, 1))
    assert run.overflows == 0
    assert torch.equal(torch.round(run.outputs / acc_scale(layer).reshape(1, -1, 1, 1)), ref)
    assert run.layers["0"].max_abs == int(ref.abs().max())
    assert int(ref.abs().max()) > 2 ** (P - 2)  # the clipped biases fill the register
    assert overflow_audit(model)[0].overflowing == 0


# ------------------------------------------------------------------ bias after the accumulator
def test_bias_after_accumulator_is_declared_not_clipped_and_reported():
    P = 10
    spec = A2Q(IntFormat(4, narrow=True), accumulator_bits=P, bias_in_accumulator=False)
    assert loads(dumps(spec)) == spec and "bias after accumulator" in spec.describe()
    layer = linear(spec, 16, 2)
    pow2_scales(layer)
    set_bias_codes(layer, [1230, -2000])
    model = nn.Sequential(layer)
    with torch.no_grad():
        codes = torch.round(layer.quant_bias() / acc_scale(layer))
    assert codes.tolist() == [1230, -2000]  # not clipped
    row = accumulators(model)["0"]
    q = weight_rows(layer)
    assert row.bias == "after accumulator" and row.bias_codes == [1230, -2000]
    assert row.exact_max == (q.clamp(min=0).sum(1) * 15).long().tolist()  # Σ x·q only
    assert row.exact_bits <= P and " after " in row_line(accumulators(model).table(), "0")
    (a,) = overflow_audit(model)
    assert (a.overflowing, a.bias) == (0, "after accumulator")
    assert check_bounds(model)["0"].ok
    x = worst_inputs(layer, IntFormat(4, signed=False))
    run = run_integer(model, x, P, "wrap")
    assert run.overflows == 0 and not run.layers["0"].bias_in_accumulator
    ref = torch.round(layer(x).detach() / acc_scale(layer))
    assert torch.equal(torch.round(run.outputs / acc_scale(layer)), ref)


def test_bias_declaration_validated():
    with pytest.raises(ValueError, match="bias_in_accumulator"):
        A2Q(accumulator_bits=12, bias_in_accumulator=1)
    assert A2QPlus(accumulator_bits=12).bias_in_accumulator is True
    assert A2QPlus(accumulator_bits=12, bias_in_accumulator=False).short().endswith("bias-after")
