"""Overflow policies of minifloats: saturation, ±inf and nan (issue 9, item 1).

References: ml_dtypes casts (IEEE rules: round with unbounded exponent, then
overflow to inf where the format has it, else nan) and qonnx's ``float_quant``.
Results are compared exactly (codes): no summation is involved.
"""

import ml_dtypes
import numpy as np
import pytest
import torch

from hwquant.core.grid import fake_quantize, make_grid
from hwquant.core.minifloat import minifloat_quantize
from hwquant.nn.quantizer import Quantizer
from hwquant.spec.formats import (
    FP6_E3M2,
    FP8_E4M3FN,
    FP8_E4M3FNUZ,
    FP8_E5M2,
    FP8_E5M2FNUZ,
    MinifloatFormat,
)
from hwquant.spec.quant_spec import QuantSpec, ScaleSpec

NONSAT = {
    "e5m2": (MinifloatFormat(5, 2, has_inf=True, has_nan=True, saturating=False), "float8_e5m2"),
    "e4m3fn": (MinifloatFormat(4, 3, has_nan=True, saturating=False), "float8_e4m3fn"),
    "e4m3fnuz": (
        MinifloatFormat(4, 3, bias=8, has_nan=True, nan_is_negative_zero=True, saturating=False),
        "float8_e4m3fnuz",
    ),
    "e5m2fnuz": (
        MinifloatFormat(5, 2, bias=16, has_nan=True, nan_is_negative_zero=True, saturating=False),
        "float8_e5m2fnuz",
    ),
}


def _probe(fmt: MinifloatFormat) -> np.ndarray:
    """Values in range, near ±max (both sides of the overflow tie), far beyond, ±inf, nan."""
    rng = np.random.default_rng(0)
    m = fmt.max_value
    step = 2.0 ** (np.floor(np.log2(m)) - fmt.mantissa_bits)  # spacing at the top binade
    edges = m + step * np.array([-0.5, -0.25, 0.25, 0.5, 0.51, 0.75, 1.0, 1.5, 3.0])
    x = np.concatenate(
        [
            rng.uniform(-m, m, 2000),
            rng.standard_normal(2000) * 2.0 ** rng.integers(-10, 4, 2000),
            edges,
            -edges,
            [1e30, -1e30, 3e38, -3e38, np.inf, -np.inf, np.nan, 0.0],
        ]
    )
    return x.astype(np.float32)


@pytest.mark.parametrize("key", list(NONSAT))
def test_non_saturating_matches_ml_dtypes_cast(key):
    fmt, dtype = NONSAT[key]
    x = _probe(fmt)
    ref = x.astype(getattr(ml_dtypes, dtype)).astype(np.float32)
    got = minifloat_quantize(torch.from_numpy(x), fmt).numpy()
    np.testing.assert_array_equal(got, ref)  # nan == nan, inf == inf here


@pytest.mark.parametrize("key", list(NONSAT))
def test_quantizer_honours_saturating_false(key):
    """The Quantizer (fake_quantize through the grid) no longer clamps to ±max."""
    fmt, dtype = NONSAT[key]
    spec = QuantSpec(fmt, scale=ScaleSpec("fixed", value=0.5))
    q = Quantizer(spec)
    x = _probe(fmt) * np.float32(0.5)
    ref = (x / np.float32(0.5)).astype(getattr(ml_dtypes, dtype)).astype(np.float32) * 0.5
    xt = torch.from_numpy(x)
    np.testing.assert_array_equal(q(xt).numpy(), ref)
    # The autograd path too (training): same values, STE gradient inside the range.
    xg = xt.clone().requires_grad_(True)
    y = q(xg)
    np.testing.assert_array_equal(y.detach().numpy(), ref)
    inside = torch.isfinite(y) & torch.isfinite(xg)
    y[inside].sum().backward()
    assert bool((xg.grad[inside] == 1).all())


def test_overflow_beyond_max_is_inf_or_nan():
    x = torch.tensor([1e30, -1e30, 1.0])
    e5m2 = NONSAT["e5m2"][0]
    assert fake_quantize(x, 1.0, None, make_grid(e5m2)).tolist() == [
        float("inf"),
        -float("inf"),
        1.0,
    ]
    got = fake_quantize(x, 1.0, None, make_grid(NONSAT["e4m3fn"][0]))
    assert torch.isnan(got[:2]).all() and got[2] == 1.0


@pytest.mark.parametrize(
    "fmt", [FP8_E4M3FN, FP8_E5M2, FP8_E4M3FNUZ, FP8_E5M2FNUZ, FP6_E3M2], ids=lambda f: f.name
)
def test_saturating_maps_inf_to_max(fmt):
    """Saturating formats: ±inf → ±max in the core function (it used to give nan) and in
    the quantizer; nan stays nan."""
    x = torch.tensor([float("inf"), -float("inf"), 1e30, -3e38, float("nan")])
    m = fmt.max_value
    for got in (minifloat_quantize(x, fmt), fake_quantize(x, 1.0, None, make_grid(fmt))):
        assert got[:4].tolist() == [m, -m, m, -m]
        assert torch.isnan(got[4])


@pytest.mark.parametrize("fmt", [FP8_E4M3FN, FP8_E5M2], ids=lambda f: f.name)
def test_saturating_is_clipped_ml_dtypes_cast(fmt):
    dtype = {"FP8_E4M3FN": ml_dtypes.float8_e4m3fn, "FP8_E5M2": ml_dtypes.float8_e5m2}[fmt.name]
    x = _probe(fmt)
    x = x[~np.isnan(x)]
    m = np.float32(fmt.max_value)
    ref = np.clip(x, -m, m).astype(dtype).astype(np.float32)
    np.testing.assert_array_equal(minifloat_quantize(torch.from_numpy(x), fmt).numpy(), ref)


def test_fp6_e3m2_saturates_like_ml_dtypes():
    """float6_e3m2fn has neither inf nor nan: ml_dtypes saturates, as FP6_E3M2 does."""
    x = _probe(FP6_E3M2)
    x = x[~np.isnan(x)]  # ml_dtypes maps nan to -0 for this type
    ref = x.astype(ml_dtypes.float6_e3m2fn).astype(np.float32)
    np.testing.assert_array_equal(minifloat_quantize(torch.from_numpy(x), FP6_E3M2).numpy(), ref)


@pytest.mark.parametrize(
    "fmt",
    [
        FP8_E4M3FN,
        FP8_E5M2,
        NONSAT["e5m2"][0],
        NONSAT["e4m3fn"][0],
        MinifloatFormat(3, 2, has_nan=True, saturating=False),
    ],
    ids=lambda f: f.name,
)
def test_matches_qonnx_float_quant_saturation(fmt):
    """qonnx's reference with ``saturation`` = the format's flag agrees on finite inputs.

    (qonnx turns ±inf *inputs* into nan even when saturating — inf/inf inside its
    rounding — where hwquant saturates them to ±max; not compared here.)"""
    from qonnx.custom_op.general.floatquant import float_quant

    x = _probe(fmt)
    x = x[np.isfinite(x)] * np.float32(0.25)
    ref = float_quant(
        x.copy(),
        np.float32(0.25),
        fmt.exponent_bits,
        fmt.mantissa_bits,
        fmt.bias,
        max_val=fmt.max_value,
        has_inf=fmt.has_inf,
        has_nan=fmt.has_nan,
        has_subnormal=True,
        saturation=fmt.saturating,
    )
    got = fake_quantize(torch.from_numpy(x), 0.25, None, make_grid(fmt)).numpy()
    np.testing.assert_array_equal(got, ref.astype(np.float32))


@pytest.mark.parametrize("bias", [127, -112])
def test_bias_extremes_are_exact_in_float32(bias):
    """The ends of the accepted bias range: every level round-trips, nothing overflows."""
    fmt = MinifloatFormat(4, 3, bias=bias)
    levels = torch.tensor(fmt.levels(), dtype=torch.float32)
    assert torch.isfinite(levels).all()
    assert levels.tolist() == list(fmt.levels())  # exactly representable
    assert minifloat_quantize(levels, fmt).tolist() == list(fmt.levels())
    assert fake_quantize(levels, 1.0, None, make_grid(fmt)).tolist() == list(fmt.levels())
