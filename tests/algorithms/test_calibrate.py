import numpy as np
import pytest
import torch

from hwquant import quantize
from hwquant.algorithms.calibrate import CalibrateConfig, apply
from hwquant.models import MLP
from hwquant.spec import A8, W4, Recipe

NAME = "layers.0.input_quant"


def _model():
    return quantize(MLP((8, 4)), Recipe.uniform(weights=W4, activations=A8))


def _data():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    x[0, 0] = 12.0  # an outlier that percentile / mse clip
    return x


def _np_mse(x: np.ndarray, s: float) -> float:
    q = np.clip(np.round(x / s), -128, 127) * s
    return float(((x - q) ** 2).mean())


def test_max_matches_numpy():
    x = _data()
    r = apply(_model(), x, CalibrateConfig(method="max"))
    want = np.abs(x.numpy()).max() / 127
    assert r.quantizers[NAME]["method"] == "max"
    assert r.quantizers[NAME]["scale_max"] == pytest.approx(want, rel=1e-6)


def test_percentile_matches_numpy():
    x = _data()
    r = apply(_model(), x, CalibrateConfig(method="percentile", percentile=99.0))
    want = np.percentile(np.abs(x.numpy()), 99.0) / 127
    assert r.quantizers[NAME]["scale_max"] == pytest.approx(want, rel=2e-2)


def test_mse_beats_max_in_numpy_reference():
    x = _data()
    s_mse = apply(_model(), x, CalibrateConfig(method="mse")).quantizers[NAME]["scale_max"]
    xn = x.numpy()
    s_max = np.abs(xn).max() / 127
    assert s_mse < s_max
    assert _np_mse(xn, s_mse) < _np_mse(xn, s_max)
    # within 5 % of the best of a fine NumPy grid search over clipping values
    grid = np.linspace(0.05, 1.0, 400) * s_max
    best = min(_np_mse(xn, s) for s in grid)
    assert _np_mse(xn, s_mse) <= best * 1.05


def test_recipe_method_kept_without_override():
    r = apply(_model(), _data())
    assert r.quantizers[NAME]["method"] == "percentile"


def test_errors():
    with pytest.raises(ValueError, match=r"expected input shape \(batch, \.\.\., 8\)"):
        apply(_model(), torch.randn(3, 5))
    with pytest.raises(ValueError, match="NaN"):
        apply(_model(), torch.full((2, 8), float("nan")))
    with pytest.raises(ValueError, match="method"):
        CalibrateConfig(method="minmax")
    with pytest.raises(ValueError, match="no activation quantizers"):
        apply(torch.nn.Linear(2, 2), torch.randn(2, 2))
