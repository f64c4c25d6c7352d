"""scikit-learn's handwritten digits (1,797 images of 8×8, 10 classes), shipped
inside scikit-learn: a fixed stratified split, normalized, as DataLoaders.

>>> d = digits(batch_size=64)
>>> x, y = next(iter(d.train))
>>> tuple(x.shape), len(d.test.dataset)
((64, 1, 8, 8), 360)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["DigitsData", "digits"]


@dataclass
class DigitsData:
    train: DataLoader
    test: DataLoader
    mean: float
    std: float
    input_shape: tuple[int, ...] = (1, 8, 8)
    num_classes: int = 10

    def calibration_batch(self, n: int = 256) -> torch.Tensor:
        """The first ``n`` training images (deterministic)."""
        return self.train.dataset.tensors[0][:n]


def digits(
    batch_size: int = 64, test_fraction: float = 0.2, seed: int = 0, flat: bool = False
) -> DigitsData:
    """Train/test DataLoaders over scikit-learn's digits.

    The split is stratified and fixed by ``seed``; pixels (0–16) are standardized
    with the training set's mean and std. ``flat`` gives 64-vectors instead of
    1×8×8 images. The training loader shuffles with a generator seeded by ``seed``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    data = load_digits()
    x = data.images.astype(np.float32)
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    mean, std = float(x_tr.mean()), float(x_tr.std())
    shape = (-1, 64) if flat else (-1, 1, 8, 8)

    def tensors(a: np.ndarray, b: np.ndarray) -> TensorDataset:
        t = torch.from_numpy((a - mean) / std).reshape(shape)
        return TensorDataset(t, torch.from_numpy(b))

    g = torch.Generator().manual_seed(seed)
    train = DataLoader(tensors(x_tr, y_tr), batch_size=batch_size, shuffle=True, generator=g)
    test = DataLoader(tensors(x_te, y_te), batch_size=512)
    return DigitsData(train, test, mean, std, (64,) if flat else (1, 8, 8))
