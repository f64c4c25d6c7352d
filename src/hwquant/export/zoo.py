"""Small quantized models that exercise every exportable layer (the export tests'
zoo, also handy for demos and benchmarks).

Every scale is a power of two (``ScaleSpec(power_of_two=True)``), as integer
hardware wants: then every float product and sum in the exported graph is exact,
so qonnx, onnxruntime and torch must agree to the last bit whatever their
summation order (arbitrary float scales can differ by one step on rounding ties).

>>> model, shape = build("mlp")
>>> shape
(16,)
>>> sorted(ZOO)[:3]
['binary_mlp', 'bits_sweep', 'cnn']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hwquant.models.registry import record_architecture, register_model
from hwquant.nn import (
    QuantAdd,
    QuantAvgPool2d,
    QuantCat,
    QuantConv1d,
    QuantConv2d,
    QuantConvTranspose1d,
    QuantConvTranspose2d,
    QuantHardtanh,
    QuantLinear,
    QuantMaxPool2d,
    QuantReLU,
    QuantReLU6,
    QuantSigmoid,
    QuantTanh,
)
from hwquant.nn.activation import QuantAct
from hwquant.spec.formats import (
    FP6_E2M3,
    FP8_E4M3,
    BipolarFormat,
    Format,
    IntFormat,
    TernaryFormat,
)
from hwquant.spec.layer_spec import LayerSpec, accumulator_bias
from hwquant.spec.quant_spec import PER_TENSOR, QuantSpec, ScaleSpec, per_channel, per_group

__all__ = ["ZOO", "ZooEntry", "act", "build", "calibrate", "make", "resnet8", "weight"]

PO2 = ScaleSpec("max", power_of_two=True)


def act(bits: int = 8, signed: bool = True, fmt: Format | None = None) -> QuantSpec:
    """Per-tensor activation spec with a power-of-two max scale."""
    return QuantSpec(fmt or IntFormat(bits, signed=signed), PER_TENSOR, PO2)


def weight(bits: int = 4, channel: bool = True, fmt: Format | None = None) -> QuantSpec:
    """Narrow signed weight spec, per output channel (or per tensor), power-of-two scales."""
    return QuantSpec(
        fmt or IntFormat(bits, narrow=True), per_channel(0) if channel else PER_TENSOR, PO2
    )


def _layer(inp: QuantSpec | None, w: QuantSpec, bias: bool = True) -> LayerSpec:
    return LayerSpec(input=inp, weight=w, bias=accumulator_bias(16) if bias and inp else None)


# ---------------------------------------------------------------- the models
class MLP(nn.Module):
    """Linear → ReLU → Linear → ReLU → Linear (INT8 input, INT4 weights, UINT4 acts)."""

    def __init__(self, channel: bool = True) -> None:
        super().__init__()
        self.fc1 = QuantLinear(16, 32, spec=_layer(act(8), weight(4, channel)))
        self.relu1 = QuantReLU(spec=LayerSpec(output=act(4, signed=False)))
        self.fc2 = QuantLinear(32, 32, spec=_layer(act(4, False), weight(4, channel)))
        self.relu2 = QuantReLU(spec=LayerSpec(output=act(4, signed=False)))
        self.fc3 = QuantLinear(32, 5, spec=_layer(act(4, False), weight(4, channel)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


class CNN(nn.Module):
    """Conv → ReLU → MaxPool → Conv → ReLU → AvgPool (Trunc) → flatten → Linear."""

    def __init__(self, channel: bool = True, avgpool: bool = True) -> None:
        super().__init__()
        self.conv1 = QuantConv2d(3, 8, 3, padding=1, spec=_layer(act(8), weight(4, channel)))
        self.relu1 = QuantReLU(spec=LayerSpec(output=act(4, False)))
        self.pool1 = QuantMaxPool2d(2, spec=LayerSpec())
        self.conv2 = QuantConv2d(8, 8, 3, padding=1, spec=_layer(act(4, False), weight(4, channel)))
        self.relu2 = QuantReLU(spec=LayerSpec(output=act(4, False)))
        self.pool2 = (
            QuantAvgPool2d(2, spec=LayerSpec(input=act(4, False)))
            if avgpool
            else QuantMaxPool2d(2, spec=LayerSpec())
        )
        self.fc = QuantLinear(8 * 2 * 2, 5, spec=_layer(act(6, False), weight(4, channel)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


class DepthwiseCNN(nn.Module):
    """Conv → ReLU6 → depthwise Conv (groups = C) → Hardtanh → pointwise → AvgPool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = QuantConv2d(3, 8, 3, stride=2, padding=1, spec=_layer(act(8), weight(8)))
        self.relu = QuantReLU6(spec=LayerSpec(output=act(4, False)))
        self.dw = QuantConv2d(8, 8, 3, padding=1, groups=8, spec=_layer(act(4, False), weight(4)))
        self.clip = QuantHardtanh(spec=LayerSpec(output=act(4)))
        self.pw = QuantConv2d(8, 16, 1, spec=_layer(act(4), weight(4)))
        self.pool = QuantAvgPool2d(4, spec=LayerSpec(input=act(8)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.clip(self.dw(self.relu(self.stem(x))))
        return self.pool(self.pw(x)).reshape(x.shape[0], -1)


class ResidualBlock(nn.Module):
    """x → Conv → ReLU → Conv, + x (QuantAdd, shared scale) → ReLU → flatten → Linear."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = QuantConv2d(3, c, 3, padding=1, spec=_layer(act(8), weight(6)))
        self.relu0 = QuantReLU(spec=LayerSpec(output=act(6, False)))
        self.conv1 = QuantConv2d(c, c, 3, padding=1, spec=_layer(act(6, False), weight(4)))
        self.relu1 = QuantReLU(spec=LayerSpec(output=act(4, False)))
        self.conv2 = QuantConv2d(c, c, 3, padding=1, spec=_layer(act(4, False), weight(4)))
        self.add = QuantAdd(LayerSpec(input=act(8)))
        self.relu2 = QuantReLU(spec=LayerSpec(output=act(4, False)))
        self.fc = QuantLinear(c * 6 * 6, 4, spec=_layer(act(4, False), weight(4)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu0(self.stem(x))
        y = self.conv2(self.relu1(self.conv1(x)))
        return self.fc(self.relu2(self.add(x, y)).flatten(1))


class Upsampler(nn.Module):
    """Conv → ReLU → ConvTranspose2d (×2) → ReLU → ConvTranspose2d (×2, per-tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = QuantConv2d(1, 8, 3, padding=1, spec=_layer(act(8), weight(4)))
        self.relu1 = QuantReLU(spec=LayerSpec(output=act(4, False)))
        self.up1 = QuantConvTranspose2d(8, 8, 2, stride=2, spec=_layer(act(4, False), weight(4)))
        self.relu2 = QuantReLU(spec=LayerSpec(output=act(4, False)))
        self.up2 = QuantConvTranspose2d(
            8,
            1,
            3,
            stride=2,
            padding=1,
            output_padding=1,
            spec=_layer(act(4, False), weight(6, channel=False)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.up2(self.relu2(self.up1(self.relu1(self.conv(x)))))


class ConcatNet(nn.Module):
    """Two branches (1×1 and 3×3 conv) concatenated (QuantCat) → Conv → flatten → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.b1 = QuantConv2d(3, 4, 1, spec=_layer(act(8), weight(4)))
        self.b2 = QuantConv2d(3, 4, 3, padding=1, spec=_layer(act(8), weight(4)))
        self.cat = QuantCat(LayerSpec(input=act(6)))
        self.relu = QuantReLU(spec=LayerSpec(output=act(4, False)))
        self.conv = QuantConv2d(8, 4, 3, stride=2, spec=_layer(act(4, False), weight(4)))
        self.fc = QuantLinear(4 * 3 * 3, 3, spec=_layer(act(8), weight(4)))

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.cat([self.b1(x), self.b2(x)]))
        return self.fc(torch.flatten(self.conv(y), 1))


class MinifloatCNN(nn.Module):
    """FP8 E4M3 activations, FP6 E2M3 weights (FloatQuant), float biases."""

    def __init__(self) -> None:
        super().__init__()
        a, w = act(fmt=FP8_E4M3), weight(fmt=FP6_E2M3)
        self.conv1 = QuantConv2d(3, 8, 3, padding=1, bias=False, spec=LayerSpec(input=a, weight=w))
        self.relu1 = QuantReLU(spec=LayerSpec())
        self.conv2 = QuantConv2d(8, 8, 3, stride=2, bias=False, spec=LayerSpec(input=a, weight=w))
        self.relu2 = QuantReLU(spec=LayerSpec(output=a))
        self.fc = QuantLinear(8 * 3 * 3, 4, bias=False, spec=LayerSpec(input=a, weight=w, output=a))

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(torch.flatten(x, 1))


class BinaryMLP(nn.Module):
    """Bipolar weights and activations (BipolarQuant) between an INT8 input and
    a ternary output layer."""

    def __init__(self) -> None:
        super().__init__()
        b = QuantSpec(BipolarFormat(), PER_TENSOR, PO2)
        self.fc1 = QuantLinear(16, 32, bias=False, spec=LayerSpec(input=act(8), weight=b))
        self.fc2 = QuantLinear(32, 32, bias=False, spec=LayerSpec(input=b, weight=b))
        self.fc3 = QuantLinear(
            32, 4, bias=False, spec=LayerSpec(input=b, weight=weight(fmt=TernaryFormat()))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.fc2(self.fc1(x)))


class Conv1dNet(nn.Module):
    """Conv1d → ReLU → ConvTranspose1d → Tanh/Sigmoid-free 1-d path, per-channel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = QuantConv1d(2, 6, 5, padding=2, stride=2, spec=_layer(act(8), weight(5)))
        self.relu = QuantReLU(spec=LayerSpec(output=act(3, False)))
        self.up = QuantConvTranspose1d(
            6, 3, 4, stride=2, padding=1, spec=_layer(act(3, False), weight(3))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.relu(self.conv(x)))


class BitsSweep(nn.Module):
    """One activation quantizer per integer width 2–16 (signed, unsigned, narrow),
    plus per-group weights and an asymmetric zero point, side by side."""

    def __init__(self) -> None:
        super().__init__()
        specs = [act(b) for b in range(2, 17)] + [act(b, False) for b in (2, 5, 8, 12, 16)]
        specs.append(QuantSpec(IntFormat(7, narrow=True), PER_TENSOR, PO2))
        specs.append(QuantSpec(TernaryFormat(), PER_TENSOR, PO2))
        specs.append(
            QuantSpec(IntFormat(8, signed=False), PER_TENSOR, PO2, zero_point="asymmetric")
        )
        self.acts = nn.ModuleList(QuantAct(s) for s in specs)
        grouped = QuantSpec(IntFormat(4, narrow=True), per_group(4, axis=1), PO2)
        self.fc = QuantLinear(16, 8, bias=False, spec=LayerSpec(input=act(8), weight=grouped))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([q(x) for q in self.acts] + [self.fc(x)], dim=1)


class SmoothActs(nn.Module):
    """Linear → Sigmoid / Tanh with quantized outputs (float transcendental
    functions: runtimes may differ from torch by one ulp before the quantizer)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = QuantLinear(16, 16, spec=_layer(act(8), weight(8)))
        self.sig = QuantSigmoid(spec=LayerSpec(output=act(8, False)))
        self.tanh = QuantTanh(spec=LayerSpec(output=act(8)))

    def forward(self, x: Tensor) -> Tensor:
        y = self.fc(x)
        return torch.cat([self.sig(y), self.tanh(y)], dim=1)


class PoolHead(nn.Module):
    """Conv (INT8 × W8) → ReLU (UINT8) → AdaptiveAvgPool2d(1) → Linear (UINT8 × W8):
    8-bit weights against unsigned 8-bit activations, the case onnxruntime's
    saturating u8×s8 kernels get wrong unless QCDQ writes the weights as uint8."""

    def __init__(self) -> None:
        super().__init__()
        # 32-bit accumulator biases: onnxruntime fuses those into its integer kernels.
        bias = accumulator_bias(32)
        spec = LayerSpec(input=act(8), weight=weight(8), bias=bias)
        self.conv = QuantConv2d(3, 64, 3, padding=1, spec=spec)
        self.relu = QuantReLU(spec=LayerSpec(output=act(8, False)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = QuantLinear(
            64, 10, spec=LayerSpec(input=act(8, False), weight=weight(8), bias=bias)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


class ResNet8(nn.Module):
    """A ResNet-8-sized CNN (MLPerf Tiny's CIFAR-10 ResNet-8: 16/32/64 channels,
    3 residual stages), INT8 input, INT4 weights per channel, UINT4 activations."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = QuantConv2d(3, 16, 3, padding=1, spec=_layer(act(8), weight(8)))
        self.relu = QuantReLU(spec=LayerSpec(output=act(4, False)))
        self.stages = nn.ModuleList(
            _Stage(cin, cout, stride)
            for cin, cout, stride in ((16, 16, 1), (16, 32, 2), (32, 64, 2))
        )
        self.pool = QuantAvgPool2d(8, spec=LayerSpec(input=act(4, False)))
        self.fc = QuantLinear(64, num_classes, spec=_layer(act(4, False), weight(8)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.stem(x))
        for s in self.stages:
            x = s(x)
        return self.fc(torch.flatten(self.pool(x), 1))


class _Stage(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        a = act(4, False)
        self.conv1 = QuantConv2d(cin, cout, 3, stride, 1, spec=_layer(a, weight(4)))
        self.relu1 = QuantReLU(spec=LayerSpec(output=a))
        self.conv2 = QuantConv2d(cout, cout, 3, 1, 1, spec=_layer(a, weight(4)))
        self.skip = (
            QuantConv2d(cin, cout, 1, stride, spec=_layer(a, weight(4)))
            if stride != 1 or cin != cout
            else nn.Identity()
        )
        self.add = QuantAdd(LayerSpec(input=act(8)))
        self.relu2 = QuantReLU(spec=LayerSpec(output=a))

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.relu1(self.conv1(x)))
        return self.relu2(self.add(y, self.skip(x)))


def resnet8(num_classes: int = 10) -> ResNet8:
    """An uncalibrated ResNet-8 (call :func:`calibrate` before exporting)."""
    return ResNet8(num_classes)


# ---------------------------------------------------------------- registry
@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: how to build it, its input shape (without batch), and which
    targets must reproduce it exactly."""

    make: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    qcdq: bool = True  # every quantizer is a ≤ 8-bit integer (or FP8): QCDQ runs it
    exact: bool = True  # bit-exact in qonnx / onnxruntime (no transcendental float ops)


ZOO: dict[str, ZooEntry] = {
    "mlp": ZooEntry(MLP, (16,)),
    "cnn": ZooEntry(CNN, (3, 8, 8)),
    "depthwise_cnn": ZooEntry(DepthwiseCNN, (3, 8, 8)),
    "residual": ZooEntry(ResidualBlock, (3, 6, 6)),
    "upsampler": ZooEntry(Upsampler, (1, 5, 5)),
    "concat": ZooEntry(ConcatNet, (3, 8, 8)),
    "minifloat_cnn": ZooEntry(MinifloatCNN, (3, 8, 8), qcdq=False),
    "binary_mlp": ZooEntry(BinaryMLP, (16,), qcdq=False),
    "conv1d": ZooEntry(Conv1dNet, (2, 12)),
    "bits_sweep": ZooEntry(BitsSweep, (16,), qcdq=False),
    "smooth_acts": ZooEntry(SmoothActs, (16,), exact=False),
    "pool_head": ZooEntry(PoolHead, (3, 8, 8)),
}


@torch.no_grad()
def calibrate(
    model: nn.Module, input_shape: tuple[int, ...], n: int = 256, seed: int = 0
) -> nn.Module:
    """Initialize every activation scale from one batch of N(0, 1) inputs (eval mode)."""
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    model(torch.randn((n, *input_shape), generator=gen))
    return model


def build(name: str, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    """The zoo model ``name`` with seeded weights, calibrated; and its input shape."""
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; known: {sorted(ZOO)}")
    entry = ZOO[name]
    torch.manual_seed(seed)
    model = make(name)
    return calibrate(model, entry.input_shape, seed=seed + 1), entry.input_shape


def make(name: str) -> nn.Module:
    """The uncalibrated zoo model ``name`` (model files rebuild it by this name)."""
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; known: {sorted(ZOO)}")
    model = ZOO[name].make()
    record_architecture(model, "zoo", name=name)
    return model


register_model("zoo", make)
