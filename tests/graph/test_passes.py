"""torch.fx passes keep their contract: apply(gm) -> (gm, changed)."""

import torch
from torch import fx, nn

from hwquant.graph import QuantizeFunctional, nonnegative_nodes, unsigned_input_modules
from hwquant.nn import QuantAdd, QuantCat
from hwquant.spec import A8, W4, Recipe


class _Merge(nn.Module):
    def forward(self, x):
        a = torch.relu(x)
        return torch.cat([a + a, x], 1)


def test_rewrite_reports_what_it_added_and_keeps_the_function():
    gm = fx.symbolic_trace(_Merge())
    x = torch.randn(4, 3)
    ref = gm(x)
    rewrite = QuantizeFunctional(Recipe.uniform(W4, A8))
    gm, changed = rewrite.apply(gm)
    assert changed and [k for _, k, _ in rewrite.added] == ["add", "cat"]
    kinds = {type(m) for m in gm.children()}
    assert kinds == {QuantAdd, QuantCat}
    add = next(m for m in gm.children() if isinstance(m, QuantAdd))
    assert not add.layer_spec.input.format.signed  # relu + relu ≥ 0: an unsigned input
    from hwquant.api import set_quantization

    set_quantization(gm, False)
    assert torch.equal(gm(x), ref)  # with quantization off: the same function


def test_nothing_to_rewrite_is_unchanged():
    gm = fx.symbolic_trace(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    code = gm.code
    out, changed = QuantizeFunctional(Recipe.uniform(W4, A8)).apply(gm)
    assert out is gm and not changed and gm.code == code


def test_nonnegative_analysis():
    gm = fx.symbolic_trace(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3, 1)))
    names = {n.name for n in nonnegative_nodes(gm)}
    assert names == {"_1", "_2"}  # the ReLU and the Flatten after it
    assert unsigned_input_modules(gm) == {"2", "3"}
