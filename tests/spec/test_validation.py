"""Every bad spec input is a ValueError naming the class and field (issue 9, items 2–3)."""

import dataclasses
import re

import pytest

from hwquant.spec import A4U, W4
from hwquant.spec.formats import (
    APoTFormat,
    IntFormat,
    MinifloatFormat,
    MSQFormat,
    PowerOfTwoFormat,
)
from hwquant.spec.layer_spec import LayerSpec, Recipe, recipe_types
from hwquant.spec.quant_spec import Granularity, QuantSpec, ScaleSpec


# ---------------------------------------------------------------- minifloats that cannot work
@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: MinifloatFormat(1, 0, has_nan=True), "E1M0"),  # max 0: only 0 and nan
        (lambda: MinifloatFormat(4, 3, bias=1000), "bias"),
        (lambda: MinifloatFormat(4, 3, bias=-1000), "bias"),
        (lambda: MinifloatFormat(8, 23, bias=-1024), "bias"),
        (lambda: MinifloatFormat(8, 23), "bias"),  # max 2^128·(2 − 2^−23): beyond float32
        (lambda: MinifloatFormat(4, 3, bias=128), "bias"),  # min normal 2^−127: float32 subnormal
        (lambda: MinifloatFormat(4, 3, bias=-113), "bias"),  # max 2^128·1.875
        (lambda: MinifloatFormat(4, 3, bias=2.0), "bias"),
        (lambda: MinifloatFormat(4, 3, bias=True), "bias"),
        (lambda: MinifloatFormat(4, 3, saturating=False), "saturating"),  # no inf, no nan
        (lambda: MinifloatFormat(2, 1, saturating=False), "saturating"),
    ],
)
def test_minifloat_refused_at_construction(make, field):
    with pytest.raises(ValueError, match=rf"MinifloatFormat.*{field}"):
        make()


def test_minifloat_bias_range_is_stated():
    with pytest.raises(ValueError, match=re.escape("[-112, 127]")):
        MinifloatFormat(4, 3, bias=1000)
    # ends of the range are accepted; a format with inf frees one more exponent
    assert MinifloatFormat(4, 3, bias=127).max_value > 0
    assert MinifloatFormat(4, 3, bias=-112).max_value < 2.0**128
    assert MinifloatFormat(8, 23, has_inf=True, has_nan=True).max_value == 3.4028234663852886e38
    assert MinifloatFormat(5, 2, has_inf=True, has_nan=True, saturating=False).name.endswith(
        "_nosat"
    )


# ---------------------------------------------------------------- bools and numbers
def _bool_fields(cls, base):
    return [f.name for f in dataclasses.fields(cls) if isinstance(getattr(base, f.name), bool)]


SPECS = [
    (IntFormat, {}),
    (MinifloatFormat, {}),
    (PowerOfTwoFormat, {}),
    (ScaleSpec, {"method": "max", "learned": True}),
    (LayerSpec, {}),
    (Recipe, {}),
]


@pytest.mark.parametrize(("cls", "kw"), SPECS, ids=lambda v: getattr(v, "__name__", ""))
@pytest.mark.parametrize("bad", ["no", 1, 0, None])
def test_every_bool_field_must_be_a_bool(cls, kw, bad):
    base = cls(**kw)
    names = _bool_fields(cls, base)
    assert names, cls
    for name in names:
        with pytest.raises(ValueError, match=rf"{cls.__name__}\.{name}"):
            cls(**{**kw, name: bad})


@pytest.mark.parametrize(
    ("make", "where"),
    [
        (lambda: ScaleSpec("fixed", value=True), "ScaleSpec.value"),
        (lambda: ScaleSpec("fixed", value="1.0"), "ScaleSpec.value"),
        (lambda: ScaleSpec(percentile="99"), "ScaleSpec.percentile"),
        (lambda: ScaleSpec(percentile=True), "ScaleSpec.percentile"),
        (lambda: ScaleSpec(percentile=float("nan")), "ScaleSpec.percentile"),
        (lambda: ScaleSpec(log2_domain=True), "ScaleSpec.log2_domain"),
        (lambda: IntFormat(True), "IntFormat.bits"),
        (lambda: IntFormat(4.0), "IntFormat.bits"),
        (lambda: MinifloatFormat(True, 3), "MinifloatFormat.exponent_bits"),
        (lambda: MinifloatFormat(4, 3.0), "MinifloatFormat.mantissa_bits"),
        (lambda: PowerOfTwoFormat(True), "PowerOfTwoFormat.bits"),
        (lambda: APoTFormat("4"), "APoTFormat.bits"),
        (lambda: MSQFormat(False), "MSQFormat.bits"),
        (lambda: Granularity("channel", axis=True), "Granularity.axis"),
        (lambda: Granularity("group", group_size=True), "Granularity.group_size"),
        (lambda: Granularity("group", group_size=8.0), "Granularity.group_size"),
        (lambda: Granularity(["tensor"]), "Granularity.kind"),
        (lambda: QuantSpec(IntFormat(4), rounding=["half_even"]), "QuantSpec.rounding"),
        (lambda: QuantSpec(IntFormat(1), zero_point="asymmetric"), "QuantSpec.zero_point"),
        (lambda: QuantSpec(IntFormat(1), zero_point="learned"), "QuantSpec.zero_point"),
    ],
)
def test_numbers_and_choices_are_checked(make, where):
    with pytest.raises(ValueError, match=re.escape(where)):
        make()


def test_unsigned_one_bit_may_have_a_zero_point():
    """{0, 1} with a zero point is a real (if odd) grid; only bipolar ±1 has none."""
    assert QuantSpec(IntFormat(1, signed=False), zero_point="asymmetric").format.bits == 1


# ---------------------------------------------------------------- recipes
def test_unknown_type_name_suggests_the_close_one():
    with pytest.raises(ValueError, match=r"Recipe\.by_type.*'Lienar'.*did you mean 'Linear'"):
        Recipe(by_type={"Lienar": LayerSpec(weight=W4)})
    with pytest.raises(ValueError, match=r"Recipe\.by_type.*'Conv2D'.*'Conv2d'"):
        Recipe(by_type={"Conv2D": None})
    with pytest.raises(ValueError, match=r"Recipe\.by_type"):
        Recipe(by_type={3: None})


def test_type_given_as_a_class_is_taken_by_name():
    from torch import nn

    r = Recipe(by_type={nn.ReLU: LayerSpec(output=A4U)})
    assert r.by_type == (("ReLU", LayerSpec(output=A4U)),)


def test_recipe_types_cover_hwquant_layers():
    """The hand-kept list in spec/ (which may not import hwquant.nn) matches the registry
    of quantized twins, plus the types Recipe.uniform names."""
    from hwquant.nn import QUANT_TYPES

    uniform = Recipe.uniform(weights=W4, activations=A4U, activation_outputs=True)
    expected = {t.__name__ for t in QUANT_TYPES} | {t for t, _ in uniform.by_type}
    assert set(recipe_types()) == expected


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"weights": W4, "activations": 4}, "activations"),
        ({"weights": "W4", "activations": A4U}, "weights"),
        ({"weights": W4, "activations": A4U, "bias": "acc"}, "bias"),
        ({"weights": W4, "activations": A4U, "activation_outputs": "yes"}, "activation_outputs"),
        ({"weights": W4, "activations": A4U, "keep_float": [1]}, "keep_float"),
        ({"weights": W4, "activations": A4U, "by_name": ["fc"]}, "by_name"),
    ],
)
def test_uniform_checks_its_arguments(kwargs, field):
    with pytest.raises(ValueError, match=rf"Recipe\.uniform: {field}"):
        Recipe.uniform(**kwargs)


def test_uniform_keep_float_string_is_one_pattern():
    r = Recipe.uniform(weights=W4, activations=A4U, keep_float="fc")
    assert r.spec_for("fc", "Linear") is None
    assert r.spec_for("f", "Linear") is not None  # not split into characters
