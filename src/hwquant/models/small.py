"""Small float models (FPGA-sized) for the digits task and tests.

>>> import torch
>>> DigitsCNN()(torch.zeros(2, 1, 8, 8)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import itertools

from torch import Tensor, nn

from hwquant.models.registry import record_architecture, register_model

__all__ = ["MLP", "DigitsCNN"]


class DigitsCNN(nn.Module):
    """conv(1→c)·BN·ReLU → conv(c→2c)·BN·ReLU → maxpool 2 → conv(2c→2c)·BN·ReLU →
    maxpool 2 → linear(2c·2·2 → 10), for 1×8×8 inputs."""

    def __init__(self, channels: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        c = channels

        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, c), *block(c, 2 * c), nn.MaxPool2d(2), *block(2 * c, 2 * c), nn.MaxPool2d(2)
        )
        self.classifier = nn.Linear(2 * c * 4, num_classes)
        if type(self) is DigitsCNN:  # a subclass is not rebuilt by this name
            record_architecture(self, "DigitsCNN", channels=channels, num_classes=num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


class MLP(nn.Module):
    """Fully connected ReLU network, e.g. MLP((64, 32, 10)) or the jet-tagging
    16 → 64 → 32 → 32 → 5 network of REFERENCE.md §6."""

    def __init__(self, sizes: tuple[int, ...] = (64, 64, 32, 10), batch_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                if batch_norm:
                    layers.append(nn.BatchNorm1d(b))
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)
        if type(self) is MLP:
            record_architecture(self, "MLP", sizes=tuple(sizes), batch_norm=batch_norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x.flatten(1))


register_model("DigitsCNN", DigitsCNN)
register_model("MLP", MLP)
