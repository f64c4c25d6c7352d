import pytest

from hwquant.spec import (
    FP4_E2M1,
    W4,
    Granularity,
    IntFormat,
    LayerSpec,
    QuantSpec,
    Recipe,
    ScaleSpec,
    accumulator_bias,
    per_channel,
    per_group,
)


def test_scale_shapes():
    assert per_channel(0).scale_shape((8, 4, 3, 3)) == (8, 1, 1, 1)
    assert per_channel(1).scale_shape((2, 8, 5)) == (1, 8, 1)
    assert per_group(2, axis=1).scale_shape((8, 4, 3, 3)) == (8, 2, 1, 1, 1)
    assert per_group(2, axis=1).grouped_shape((8, 4, 3, 3)) == (8, 2, 2, 3, 3)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: per_group(0), "group_size"),
        (lambda: per_group(-4), "group_size"),
        (lambda: per_group(3).grouped_shape((8, 4)), "group_size"),
        (lambda: Granularity("row"), "kind"),
        (lambda: QuantSpec(IntFormat(4), rounding="nearest"), "rounding"),
        (lambda: QuantSpec(IntFormat(4), zero_point="auto"), "zero_point"),
        (lambda: QuantSpec(FP4_E2M1, zero_point="asymmetric"), "zero_point"),
        (lambda: ScaleSpec("minmax"), "method"),
        (lambda: ScaleSpec("fixed"), "value"),
        (lambda: ScaleSpec(percentile=120), "percentile"),
        (lambda: QuantSpec("int4"), "format"),
        (lambda: LayerSpec(weight=W4, bias=accumulator_bias()), "bias"),
    ],
)
def test_bad_specs_name_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_misspelled_spec_argument():
    with pytest.raises(TypeError):
        QuantSpec(IntFormat(4), granulatiry=per_channel(0))


def test_recipe_resolution():
    a = QuantSpec(IntFormat(8), scale=ScaleSpec(learned=True))
    r = Recipe.uniform(weights=W4, activations=a, keep_float=("head*",))
    assert r.spec_for("head.fc", "Linear") is None
    assert r.spec_for("body.0", "Conv2d").weight is W4
    assert r.spec_for("body.0", "Conv2d").bias.scale.method == "accumulator"
    assert r.spec_for("body.1", "ReLU") is None
    assert r.spec_for("pool", "AvgPool2d").input is a
    with pytest.raises(ValueError, match="LayerSpec"):
        Recipe(by_type={"Linear": W4})
