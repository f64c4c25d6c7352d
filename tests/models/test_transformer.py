import pytest
import torch
from torch import nn

import hwquant
from hwquant.datasets import digits
from hwquant.models import DigitsTransformer
from hwquant.models.registry import architecture_of, build_registered
from hwquant.nn import QuantLinear
from hwquant.spec import A8, IntFormat, QuantSpec, Recipe, ScaleSpec, per_channel
from hwquant.training import evaluate, fit

W8 = QuantSpec(IntFormat(8, narrow=True), per_channel(0), ScaleSpec("max"))
LINEARS = 1 + 2 * 6 + 1  # embed, (q, k, v, out, fc1, fc2) per block, head


def test_shapes_and_patches():
    m = DigitsTransformer()
    assert m(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert m.pos.shape == (1, 16, 32)
    # a patch token is a 2x2 block of pixels, row-major: changing one pixel changes
    # only its own token's embedding
    seen = []
    handle = m.embed.register_forward_hook(lambda mod, args, out: seen.append(out.detach()))
    x = torch.zeros(1, 1, 8, 8)
    y = x.clone()
    y[0, 0, 2, 5] = 1.0  # patch row 1, column 2 -> token 1 * 4 + 2 = 6
    with torch.no_grad():
        m(x), m(y)
    handle.remove()
    diff = (seen[1] - seen[0]).abs().sum(-1)[0]
    assert diff.nonzero().flatten().tolist() == [6]
    assert sum(isinstance(mod, nn.Linear) for mod in m.modules()) == LINEARS
    assert not any(isinstance(mod, nn.MultiheadAttention) for mod in m.modules())


def test_argument_errors():
    with pytest.raises(ValueError, match="heads"):
        DigitsTransformer(dim=30, heads=4)
    with pytest.raises(ValueError, match="patch"):
        DigitsTransformer(patch=3)


def test_architecture_is_recorded_and_rebuilds():
    m = DigitsTransformer(dim=16, depth=1, heads=4)
    arch = architecture_of(m)
    assert arch["name"] == "DigitsTransformer" and arch["kwargs"]["heads"] == 4
    rebuilt = build_registered(arch["name"], arch["kwargs"])
    assert [n for n, _ in rebuilt.named_parameters()] == [n for n, _ in m.named_parameters()]


def test_quantize_swaps_every_linear_and_the_residual_adds():
    m = DigitsTransformer(dim=16, depth=1).eval()
    q = hwquant.quantize(m, Recipe.uniform(weights=W8, activations=A8)).eval()
    quantized = [n for n, mod in q.named_modules() if isinstance(mod, QuantLinear)]
    assert len(quantized) == 1 + 6 + 1
    rows = {e.type for e in q.hwquant_report.entries if e.quantized}
    assert "fn add" in rows  # embed + pos and both residual adds
    x = torch.randn(8, 1, 8, 8)
    with hwquant.calibration(q):
        q(x)
    with torch.no_grad():
        y, ref = q(x), m(x)
    assert torch.isfinite(y).all()
    assert 0 < float((y - ref).abs().max()) < 0.5 * float(ref.abs().max())


@pytest.mark.parametrize("quantized", [False, True])
def test_model_file_round_trip(tmp_path, quantized):
    torch.manual_seed(0)
    m = DigitsTransformer(dim=16, depth=1).eval()
    x = torch.randn(4, 1, 8, 8)
    if quantized:
        m = hwquant.quantize(m, Recipe.uniform(weights=W8, activations=A8)).eval()
        with hwquant.calibration(m):
            m(x)
    path = tmp_path / "t.pt"
    hwquant.save_checkpoint(m, path, (1, 1, 8, 8))
    loaded, shape = hwquant.load_checkpoint(path)
    assert shape == (1, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), m(x))


def test_learns_digits_quickly():
    """A few epochs already put it far above chance (the full run reaches >= 90 %)."""
    torch.manual_seed(0)
    d = digits(seed=0)
    m = DigitsTransformer()
    fit(m, d.train, d.test, epochs=6, lr=3e-3, progress=False)
    assert evaluate(m, d.test) > 0.6
