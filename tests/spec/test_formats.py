import math

import pytest

from hwquant.spec import serialize
from hwquant.spec.formats import (
    FP4_E2M1,
    FP6_E2M3,
    FP6_E3M2,
    FP8_E4M3,
    FP8_E4M3FN,
    FP8_E4M3FNUZ,
    FP8_E5M2,
    FP8_E5M2FNUZ,
    APoTFormat,
    BipolarFormat,
    IntFormat,
    MinifloatFormat,
    MSQFormat,
    PowerOfTwoFormat,
    TernaryFormat,
)


@pytest.mark.parametrize(
    ("fmt", "lo", "hi"),
    [
        (IntFormat(8), -128, 127),
        (IntFormat(8, narrow=True), -127, 127),
        (IntFormat(4, signed=False), 0, 15),
        (IntFormat(4, signed=False, narrow=True), 0, 14),
        (IntFormat(1), -1, 1),
        (IntFormat(32), -(2**31), 2**31 - 1),
    ],
)
def test_int_ranges(fmt, lo, hi):
    assert (fmt.min_int, fmt.max_int) == (lo, hi)


@pytest.mark.parametrize(
    ("fmt", "max_value"),
    [  # REFERENCE.md §3
        (FP8_E4M3, 480.0),
        (MinifloatFormat(5, 2), 114688.0),
        (FP6_E3M2, 28.0),
        (FP6_E2M3, 7.5),
        (FP4_E2M1, 6.0),
        (MinifloatFormat(3, 1), 24.0),
        (FP8_E4M3FN, 448.0),
        (FP8_E5M2, 57344.0),
        (FP8_E4M3FNUZ, 240.0),
        (FP8_E5M2FNUZ, 57344.0),
    ],
)
def test_minifloat_max(fmt, max_value):
    assert fmt.max_value == max_value
    assert fmt.levels()[-1] == max_value


def test_minifloat_levels_match_ml_dtypes():
    """Every finite value of the OCP / FNUZ types, enumerated by ml_dtypes."""
    import ml_dtypes
    import numpy as np

    pairs = [
        (FP8_E4M3FN, ml_dtypes.float8_e4m3fn),
        (FP8_E5M2, ml_dtypes.float8_e5m2),
        (FP8_E4M3FNUZ, ml_dtypes.float8_e4m3fnuz),
        (FP8_E5M2FNUZ, ml_dtypes.float8_e5m2fnuz),
        (FP6_E3M2, ml_dtypes.float6_e3m2fn),
        (FP6_E2M3, ml_dtypes.float6_e2m3fn),
        (FP4_E2M1, ml_dtypes.float4_e2m1fn),
    ]
    for fmt, dt in pairs:
        bits = fmt.bits
        codes = np.arange(2**bits, dtype=np.uint8)
        values = codes.view(dt).astype(np.float64) if bits == 8 else _decode_sub8(codes, dt)
        finite = sorted({float(v) for v in values if np.isfinite(v)})
        assert tuple(finite) == fmt.levels(), fmt.name


def _decode_sub8(codes, dt):
    import numpy as np

    # ml_dtypes stores sub-byte floats one per byte; round-trip every finite value
    # we can produce by casting a fine grid and keep the distinct results.
    grid = np.linspace(-1000, 1000, 400001, dtype=np.float32)
    return np.unique(grid.astype(dt).astype(np.float64))


def test_small_level_sets():
    assert PowerOfTwoFormat(4).levels()[-3:] == (0.25, 0.5, 1.0)
    assert len(PowerOfTwoFormat(4).levels()) == 16
    assert 0.0 in PowerOfTwoFormat(4, has_zero=True).levels()
    assert APoTFormat(4).magnitudes() == (0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
    assert MSQFormat(4).magnitudes() == (0.0, 0.125, 0.25, 0.5, 0.625, 0.75, 1.0)
    assert BipolarFormat().levels() == (-1.0, 1.0)
    assert TernaryFormat().levels() == (-1.0, 0.0, 1.0)
    for b in range(3, 9):
        assert len(MSQFormat(b).levels()) <= 2**b
        assert len(APoTFormat(b).levels()) <= 2**b


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: IntFormat(0), "bits"),
        (lambda: IntFormat(33), "bits"),
        (lambda: IntFormat(4.0), "bits"),
        (lambda: IntFormat(4, signed="yes"), "signed"),
        (lambda: MinifloatFormat(0, 3), "exponent_bits"),
        (lambda: MinifloatFormat(4, -1), "mantissa_bits"),
        (lambda: MinifloatFormat(4, 3, has_inf=True), "has_inf"),
        (lambda: PowerOfTwoFormat(1), "bits"),
        (lambda: MSQFormat(2), "bits"),
    ],
)
def test_bad_formats_name_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_misspelled_argument_fails():
    with pytest.raises(TypeError, match="bitz"):
        IntFormat(bitz=4)


@pytest.mark.parametrize(
    "fmt",
    [
        IntFormat(5, False, True),
        FP8_E5M2,
        PowerOfTwoFormat(3, True),
        APoTFormat(5),
        MSQFormat(4),
        BipolarFormat(),
        TernaryFormat(),
        MinifloatFormat(3, 2, bias=2, has_subnormal=False),
    ],
)
def test_serialization_roundtrip(fmt):
    assert serialize.loads(serialize.dumps(fmt)) == fmt


def test_serialization_errors():
    with pytest.raises(ValueError, match="unknown spec type"):
        serialize.from_dict({"hwquant_spec_version": 1, "type": "PositFormat", "bits": 8})
    with pytest.raises(ValueError, match="unknown field"):
        serialize.from_dict({"hwquant_spec_version": 1, "type": "IntFormat", "bitz": 8})
    with pytest.raises(ValueError, match="version"):
        serialize.from_dict({"type": "IntFormat", "bits": 8})
    with pytest.raises(ValueError, match="bits"):  # validation re-runs
        serialize.from_dict({"hwquant_spec_version": 1, "type": "IntFormat", "bits": 40})


def test_no_subnormal_levels():
    f = MinifloatFormat(2, 1, has_subnormal=False)
    assert min(v for v in f.levels() if v > 0) == f.min_normal == 1.0
    assert math.isclose(f.max_value, 6.0)
