"""Hardware cost models: operation counts, memory, accumulators, FPGA resources.

:func:`cost` reads a quantized torch model (one forward pass with hooks) or a
QONNX file, folds every weight layer for a :class:`Target`, and returns a
:class:`CostReport` per layer and in total.

Example:
    >>> import torch
    >>> from hwquant.nn import QuantLinear
    >>> from hwquant.spec import A4U, W4, LayerSpec
    >>> net = torch.nn.Sequential(QuantLinear(64, 32, spec=LayerSpec(input=A4U, weight=W4)))
    >>> r = cost(net, (1, 64), target=Target(weight_memory="bram"), folding={"0": (4, 8)})
    >>> r.macs, r.layers[0].accumulator.datatype, r.layers[0].cycles
    (2048, 15, 64)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hwquant.analysis.cost import formulas
from hwquant.analysis.cost.estimate import accumulator_widths, choose_folding, estimate
from hwquant.analysis.cost.model import load_checkpoint, records_from_module
from hwquant.analysis.cost.records import LayerRecord
from hwquant.analysis.cost.report import AccumulatorWidths, CostReport, LayerCost, ResourceFit
from hwquant.analysis.cost.target import TARGETS, LayerFolding, Target, load_target

__all__ = [
    "TARGETS",
    "AccumulatorWidths",
    "CostReport",
    "LayerCost",
    "LayerFolding",
    "LayerRecord",
    "ResourceFit",
    "Target",
    "accumulator_widths",
    "choose_folding",
    "cost",
    "formulas",
    "load_checkpoint",
    "load_target",
    "read_records",
]

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def read_records(
    model_or_onnx: Any, input_shape: Sequence[int] | None = None
) -> tuple[list[LayerRecord], str]:
    """(records, source label) from a torch module, a QONNX file / ModelProto, or a
    hwquant checkpoint path (``input_shape`` defaults to the checkpoint's)."""
    from torch import nn

    if isinstance(model_or_onnx, nn.Module):
        if input_shape is None:
            raise ValueError("costing a torch model needs input_shape, e.g. (1, 1, 8, 8)")
        _check_fits(model_or_onnx, input_shape)
        return records_from_module(model_or_onnx, input_shape), type(model_or_onnx).__name__
    if type(model_or_onnx).__name__ == "ModelProto":
        from hwquant.analysis.cost.onnx_reader import records_from_onnx

        return records_from_onnx(model_or_onnx), "ONNX model"
    if isinstance(model_or_onnx, str | Path):
        path = Path(model_or_onnx)
        if not path.exists():
            raise ValueError(f"no such file: {path}")
        if path.suffix.lower() in _CHECKPOINT_SUFFIXES:
            model, stored = load_checkpoint(str(path))
            shape = input_shape if input_shape is not None else stored
            if shape is None:
                raise ValueError(
                    f"{path}: the checkpoint has no 'input_shape'; "
                    "give one, e.g. input_shape=(1, 1, 8, 8)"
                )
            _check_fits(model, shape, stored)
            return records_from_module(model, shape), str(path)
        from hwquant.analysis.cost.onnx_reader import records_from_onnx

        return records_from_onnx(path), str(path)
    raise ValueError(
        f"cannot cost a {type(model_or_onnx).__name__}: give an nn.Module, "
        "a QONNX file or a hwquant checkpoint"
    )


def _check_fits(model: Any, shape: Sequence[int], stored: Sequence[int] | None = None) -> None:
    """``ValueError`` unless ``shape`` (batch first) is an input the model takes; it
    names the stored shape when ``shape`` is that shape without its batch."""
    from hwquant.analysis.cost.model import _check_shape
    from hwquant.export.qonnx import check_example

    shape = _check_shape(shape)
    if stored is not None and len(stored) > 1 and shape == tuple(stored[1:]):
        raise ValueError(
            f"input shape {shape} is the checkpoint's without its batch dimension; "
            f"the input shape takes the batch first: {tuple(stored)}"
        )
    import copy

    import torch

    try:  # on a copy in eval mode: the forward must not move any quantizer's state
        check_example(copy.deepcopy(model).eval(), (torch.zeros(shape),))
    except ValueError as e:
        raise ValueError(f"{e} (the input shape takes the batch dimension first)") from None


def cost(
    model_or_onnx: Any,
    input_shape: Sequence[int] | None = None,
    target: Target | str | Path | Mapping | None = None,
    *,
    folding: Mapping[str, Any] | None = None,
) -> CostReport:
    """Hardware cost of a quantized model on a target.

    Args:
        model_or_onnx: a torch module (quantized with hwquant or float), a QONNX file
            (``.onnx``) or ``ModelProto``, or a hwquant checkpoint (``.pt``).
        input_shape: the input's shape with a batch dimension first (torch models);
            costs are per frame (per batch element).
        target: a :class:`Target`, a built-in name (``pynq-z2``, ``zcu104``,
            ``vck190``), a TOML path or a mapping; default: ``generic``.
        folding: explicit (PE, SIMD) per layer name, overriding the target's; PE must
            divide the layer's output dimension MH and SIMD its input dimension MW.

    Returns:
        A :class:`CostReport` (``.fits``, ``.violations``, ``.to_dict()``).

    Example:
        >>> import torch
        >>> from hwquant.nn import QuantConv2d
        >>> from hwquant.spec import A4U, W4, LayerSpec
        >>> net = torch.nn.Sequential(QuantConv2d(1, 8, 3, spec=LayerSpec(input=A4U, weight=W4)))
        >>> r = cost(net, (1, 1, 8, 8), target="pynq-z2")
        >>> r.macs, r.layers[0].n_pix, r.fits
        (2592, 36, True)
    """
    records, source = read_records(model_or_onnx, input_shape)
    return estimate(records, load_target(target), source, folding)
