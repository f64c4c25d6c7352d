"""ScaleSpec.warmup: a lazily initialized learned scale follows the running mean of the
training batches' statistics for N batches (no gradient), then it is learned."""

import pytest
import torch

import hwquant
from hwquant.nn import Quantizer
from hwquant.spec import IntFormat, QuantSpec, ScaleSpec

MAX_U4 = QuantSpec(IntFormat(4, signed=False), scale=ScaleSpec("max", learned=True, warmup=3))


@pytest.mark.parametrize(
    "kwargs",
    [{"warmup": -1}, {"warmup": True}, {"warmup": 2.0}, {"warmup": 5, "learned": False}],
)
def test_bad_warmup_is_refused(kwargs):
    with pytest.raises(ValueError, match="warmup"):
        ScaleSpec("max", **{"learned": True, **kwargs})


def test_scale_is_the_running_mean_of_batch_maxima_then_learned():
    q = Quantizer(MAX_U4).train()
    batches = [torch.full((4, 3), m, requires_grad=True) for m in (15.0, 30.0, 45.0, 60.0, 75.0)]
    q(batches[0])  # lazy init: s = 15 / 15
    assert q.state == "warmup" and float(q.scale().detach()) == pytest.approx(1.0)
    expected = [1.0]
    for i, x in enumerate(batches[1:4], start=2):
        y = q(x)
        expected.append(float(x.detach().max()) / 15)
        assert float(q.scale().detach()) == pytest.approx(sum(expected) / i, rel=1e-6)
        y.sum().backward()
        assert not q.scale_param.grad.any()  # statistics, not gradients, set it now
    assert q.state == "static"
    q(batches[4]).sum().backward()
    assert q.scale_param.grad.abs().sum() > 0  # learned from here on


def test_eval_batches_do_not_count():
    q = Quantizer(MAX_U4).train()
    q(torch.ones(2, 2))
    q.eval()
    q(torch.full((2, 2), 100.0))
    assert q.state == "static" and float(q.scale().detach()) == pytest.approx(1 / 15)
    assert q.train().state == "warmup"


def test_loading_or_calibrating_ends_the_warmup():
    q = Quantizer(MAX_U4).train()
    q(torch.ones(2, 2))
    fresh = Quantizer(MAX_U4)
    fresh.load_state_dict(q.state_dict())
    assert fresh.state == "static"
    with hwquant.calibration(torch.nn.Sequential(q)):
        q(torch.full((2, 2), 3.0))
    assert q.state == "static" and float(q.scale().detach()) == pytest.approx(3 / 15)


def test_describe_names_the_warmup():
    assert "warmup=3" in MAX_U4.describe()
