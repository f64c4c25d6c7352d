import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hwquant
from hwquant.nn import QuantAdd, QuantCat, QuantConv2d, QuantLinear, QuantReLU
from hwquant.spec import A8, W4, W8, IntFormat, LayerSpec, QuantSpec, Recipe, ScaleSpec


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.branch = nn.Conv2d(4, 2, 1)
        self.head = nn.Linear(6 * 16, 3)
        self.norm = nn.LayerNorm(6 * 16)  # unsupported: must be reported, not crash

    def forward(self, x):
        y = F.relu(self.conv1(x))
        y = self.conv2(y) + x
        z = torch.cat([F.relu(y), self.branch(y)], 1)
        return self.head(self.norm(torch.flatten(z, 1)))


def test_quantize_rewrites_functional_ops_and_reports():
    recipe = Recipe.uniform(weights=W8, activations=A8, activation_outputs=True)
    qm = hwquant.quantize(Residual(), recipe)
    report = qm.hwquant_report
    assert report.traced
    kinds = {type(m) for m in qm.modules()}
    assert {QuantAdd, QuantCat, QuantReLU, QuantConv2d, QuantLinear} <= kinds
    norm = next(e for e in report.entries if e.name == "norm")
    assert not norm.quantized and "unsupported" in norm.detail
    # conv2's input comes from F.relu: its 8-bit input format becomes unsigned
    assert qm.conv2.input_quant.spec.format == IntFormat(8, signed=False)
    assert qm.conv1.input_quant.spec.format == IntFormat(8, signed=True)
    x = torch.randn(2, 4, 4, 4)
    assert qm(x).shape == (2, 3)
    assert isinstance(report.to_dict(), dict) and "conv1" in str(report)


def test_untraceable_model_still_swaps_modules():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return self.fc(x)
            return -self.fc(x)

    qm = hwquant.quantize(Dynamic(), Recipe.uniform(weights=W4, activations=A8))
    assert not qm.hwquant_report.traced and qm.hwquant_report.trace_error
    assert isinstance(qm.fc, QuantLinear)


def test_recipe_name_patterns_and_original_untouched():
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    qm = hwquant.quantize(m, Recipe.uniform(weights=W4, activations=A8, keep_float=("2",)))
    assert isinstance(qm[0], QuantLinear) and type(qm[2]) is nn.Linear
    assert type(m[0]) is nn.Linear  # copied, not modified
    with pytest.raises(ValueError, match="Recipe"):
        hwquant.quantize(m, W4)


def test_bad_bias_spec_combination():
    with pytest.raises(ValueError, match="accumulator"):
        LayerSpec(
            input=QuantSpec(IntFormat(8), hwquant.per_channel(1)),
            weight=W4,
            bias=hwquant.spec.accumulator_bias(),
        )


def test_fold_bn_matches_eval_model():
    from hwquant.algorithms import fold_bn
    from hwquant.models import DigitsCNN

    m = DigitsCNN()
    for bn in (mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
    m.eval()
    x = torch.randn(8, 1, 8, 8)
    ref = m(x)
    report = fold_bn.apply(m)
    assert len(report.folded) == 3
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-5)


def test_fold_bn_into_quantized_layer_keeps_scales_consistent():
    from hwquant.algorithms import fold_bn

    m = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4)).eval()
    m[1].running_var.fill_(4.0)
    qm = hwquant.quantize(
        m,
        Recipe.uniform(
            weights=QuantSpec(IntFormat(8), hwquant.per_channel(0), ScaleSpec(learned=True)),
            activations=None,
        ),
    )
    fold_bn.apply(qm)
    w = qm[0].weight
    torch.testing.assert_close(
        qm[0].weight_quant.scale().detach().flatten(), w.abs().amax((1, 2, 3)) / 127
    )


def test_fold_bn_updates_the_quantize_report():
    from hwquant.algorithms import fold_bn
    from hwquant.models import DigitsCNN

    qm = hwquant.quantize(DigitsCNN(), Recipe.uniform(weights=W4, activations=A8)).eval()
    fold_bn.apply(qm)
    notes = {e.name: e.detail for e in qm.hwquant_report.entries}
    assert notes["features.1"] == "folded into features.0"


def test_fold_bn_bias_is_quantized_as_the_spec_asks():
    """Folding BN into a bias-less conv adds a bias: it gets the layer's accumulator-scale
    integer bias quantizer, not a float bias (it stayed float before)."""
    from hwquant.algorithms import fold_bn
    from hwquant.nn import BiasQuantizer

    m = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4)).eval()
    m[1].running_mean.uniform_(-1, 1)
    m[1].bias.data.uniform_(-1, 1)
    qm = hwquant.quantize(m, Recipe.uniform(weights=W8, activations=A8))
    x = torch.randn(8, 2, 5, 5)
    qm(x)
    fold_bn.apply(qm)
    conv = qm[0]
    assert isinstance(conv.bias_quant, BiasQuantizer)
    s_acc = conv.input_quant.scale() * conv.weight_quant.scale_for(conv.weight)
    codes = conv.quant_bias() / s_acc.reshape(-1)
    assert torch.equal(codes, codes.round())  # integer codes on the accumulator scale
    assert "bias=INT32" in str(qm.hwquant_report).split("\n")[0]  # the report tells the truth
