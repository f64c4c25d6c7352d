"""One config check for every algorithm: the error names the config, the field, the
value and the allowed range."""

from __future__ import annotations

import pytest

from hwquant.algorithms.bias_correction import BiasCorrectionConfig
from hwquant.algorithms.calibrate import CalibrateConfig
from hwquant.algorithms.common import check_range
from hwquant.algorithms.equalize import EqualizeConfig
from hwquant.algorithms.gptq import GPTQConfig


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: GPTQConfig(damp=1.5), r"GPTQConfig\.damp must be a number in \[0, 1\), got 1\.5"),
        (
            lambda: GPTQConfig(block_size=0),
            r"GPTQConfig\.block_size must be an int in \[1, ∞\), got 0",
        ),
        (lambda: GPTQConfig(act_order=1), r"GPTQConfig\.act_order must be a bool, got 1"),
        (
            lambda: BiasCorrectionConfig(max_batches=True),
            r"BiasCorrectionConfig\.max_batches .* got True",
        ),
        (
            lambda: EqualizeConfig(iterations=0),
            r"EqualizeConfig\.iterations must be an int in \[1, ∞\), got 0",
        ),
        (
            lambda: EqualizeConfig(tolerance=-1.0),
            r"EqualizeConfig\.tolerance must be a number in \[0, ∞\), got -1\.0",
        ),
        (
            lambda: CalibrateConfig(percentile=0),
            r"CalibrateConfig\.percentile must be a number in \(0, 100\], got 0",
        ),
        (
            lambda: CalibrateConfig(max_batches=0),
            r"CalibrateConfig\.max_batches must be an int or None in \[1, ∞\), got 0",
        ),
        (
            lambda: CalibrateConfig(method="maxx"),
            r"CalibrateConfig\.method must be one of 'max', 'percentile', 'mse' or None, got 'maxx'",
        ),
    ],
)
def test_messages(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_check_range_rejects_nan_and_accepts_none_when_optional():
    class C:
        x = float("nan")
        y = None

    with pytest.raises(ValueError, match=r"C\.x must be a number in \[0, 1\], got nan"):
        check_range(C(), "x", 0, 1)
    check_range(C(), "y", 0, 1, optional=True)
