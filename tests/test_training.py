"""QAT on scikit-learn digits: the accuracy targets of the foundation issue."""

import pytest
import torch

import hwquant
from hwquant.datasets import digits
from hwquant.models import DigitsCNN
from hwquant.spec import (
    FP4_E2M1,
    FP8_E4M3,
    IntFormat,
    QuantSpec,
    Recipe,
    ScaleSpec,
    per_channel,
)
from hwquant.training import fit


def _int(bits):
    w = QuantSpec(IntFormat(bits, narrow=True), per_channel(0), ScaleSpec(learned=True))
    a = QuantSpec(IntFormat(bits), scale=ScaleSpec("percentile", learned=True))
    return w, a


def _mf(fmt):
    return (
        QuantSpec(fmt, per_channel(0), ScaleSpec(learned=True)),
        QuantSpec(fmt, scale=ScaleSpec(learned=True)),
    )


def _train(specs, epochs=12, seed=0):
    torch.manual_seed(seed)
    data = digits(seed=seed)
    model = DigitsCNN()
    if specs is not None:
        w, a = specs
        model = hwquant.quantize(model, Recipe.uniform(weights=w, activations=a))
    return fit(model, data.train, data.test, epochs=epochs, progress=False).test_accuracy


@pytest.fixture(scope="module")
def float_accuracy():
    return _train(None)


def test_w4a4(float_accuracy):
    assert _train(_int(4)) >= 0.96


def test_w8a8_within_one_point_of_float(float_accuracy):
    assert _train(_int(8)) >= float_accuracy - 0.01


def test_w2a2():
    assert _train(_int(2), epochs=20) > 0.80


@pytest.mark.parametrize("fmt", [FP4_E2M1, FP8_E4M3], ids=lambda f: f.name)
def test_minifloat_qat(fmt):
    assert _train(_mf(fmt)) >= 0.95


def test_fit_compiled_tiny_mlp():
    from hwquant.models import MLP

    torch.manual_seed(0)
    data = digits(flat=True)
    w, a = _int(4)
    model = hwquant.quantize(MLP((64, 32, 10)), Recipe.uniform(weights=w, activations=a))
    assert (
        fit(model, data.train, data.test, epochs=2, progress=False, compile=True).test_accuracy
        > 0.8
    )
