"""parse_format reads back the names formats give themselves."""

import re

import pytest

from hwquant.spec.formats import (
    FP8_E4M3FNUZ,
    FP8_E5M2,
    APoTFormat,
    BipolarFormat,
    IntFormat,
    MinifloatFormat,
    MSQFormat,
    PowerOfTwoFormat,
    TernaryFormat,
    parse_format,
)

ROUND_TRIP = [
    *(IntFormat(b, s, n) for b in (2, 3, 8, 17, 32) for s in (True, False) for n in (False, True)),
    *(MinifloatFormat(e, m) for e, m in ((1, 1), (2, 0), (2, 1), (3, 2), (4, 3), (5, 10))),
    MinifloatFormat(4, 3, has_nan=True),
    MinifloatFormat(3, 2, has_subnormal=False),
    PowerOfTwoFormat(4),
    PowerOfTwoFormat(5, has_zero=True),
    APoTFormat(4),
    MSQFormat(5),
    BipolarFormat(),
    TernaryFormat(),
    FP8_E4M3FNUZ,
    MinifloatFormat(4, 3, bias=5, has_nan=True, saturating=False),
]


@pytest.mark.parametrize("fmt", ROUND_TRIP, ids=lambda f: f.name)
def test_names_read_back(fmt):
    assert parse_format(fmt.name) == fmt
    assert parse_format(fmt.name.lower()) == fmt


def test_fp8_presets_keep_their_ocp_meaning():
    assert parse_format("fp8_e5m2") is FP8_E5M2 and FP8_E5M2.has_inf


@pytest.mark.parametrize(
    "text, message",
    [
        ("int0", "IntFormat.bits"),
        ("fp6_e2m1", "fp6 is not 1 + 2 + 1"),
        ("apot4z", "only pot"),
        ("float", "unknown format"),
        ("", "unknown format"),
    ],
)
def test_bad_names_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_format(text)
