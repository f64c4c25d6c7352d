"""Quantizer.fix_scale: a scale an algorithm chose stays, through state dicts too."""

import pytest
import torch

from hwquant.nn.quantizer import Quantizer
from hwquant.spec import IntFormat, QuantSpec, per_channel

SPEC = QuantSpec(IntFormat(4), per_channel(0))


def test_fixed_scale_survives_a_state_dict_round_trip_and_new_weights():
    w = torch.randn(3, 8)
    q = Quantizer.for_weight(SPEC, w)
    assert q.state == "dynamic"
    s = torch.tensor([[0.1], [0.2], [0.3]])
    q.fix_scale(s)
    fresh = Quantizer.for_weight(SPEC, torch.randn(3, 8))
    fresh.load_state_dict(q.state_dict())
    assert fresh.state == "static" and fresh.fixed
    w2 = torch.randn(3, 8) * 5  # a statistics scale would change; the fixed one does not
    assert torch.equal(fresh.codes(w2).scale, s.expand(3, 1))
    assert torch.equal(fresh(w2), q(w2))


def test_unfixed_quantizers_keep_the_plain_spec_state():
    q = Quantizer.for_weight(SPEC, torch.randn(3, 8))
    assert isinstance(q.get_extra_state(), str)


@pytest.mark.parametrize(
    "scale, zp, message",
    [
        (torch.ones(2, 1), None, r"needs \(3, 1\) positive"),
        (torch.tensor([[1.0], [0.0], [1.0]]), None, "positive finite"),
        (torch.ones(3, 1), torch.zeros(3, 1), "no zero_point is needed"),
    ],
)
def test_fix_scale_refuses_wrong_values(scale, zp, message):
    q = Quantizer.for_weight(SPEC, torch.randn(3, 8))
    with pytest.raises(ValueError, match=message):
        q.fix_scale(scale, zp)
