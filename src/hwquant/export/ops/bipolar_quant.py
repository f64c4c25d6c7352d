"""``BipolarQuant(X, scale)``: y = s·(+1 if x ≥ 0 else −1) (REFERENCE.md §4).

Written for ``BipolarFormat`` quantizers (and 1-bit signed integers, whose canonical
format is bipolar). Its grid step is 2s. QCDQ has no form for it.

>>> import numpy as np
>>> BIPOLAR_QUANT.evaluate(None, [np.array([-0.1, 0.0, 3.0]), 0.5]).tolist()
[-0.5, 0.5, 0.5]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from hwquant.export.ops.base import GraphView, OnnxOp, QuantParams, Step, meta, register, symbolic
from hwquant.export.ops.lowering import Lowering
from hwquant.spec.formats import BipolarFormat, Format

__all__ = ["BIPOLAR_QUANT", "BipolarQuantOp"]


class BipolarQuantOp(OnnxOp):
    """The ``BipolarQuant`` op (module docstring)."""

    op_type = "BipolarQuant"
    formats = (BipolarFormat,)
    quantizes_weights = True
    integer_codes = True
    # listed by hls4ml, but its conversion crashes (IndexError) on every binary
    # graph tried, unit scales included (pinned in tests/export/test_hls4ml.py)
    hls4ml_reject_type = "hls4ml 1.3 fails to convert BipolarQuant graphs"

    def emit(self, x: Tensor, p: QuantParams) -> Tensor:
        """Write ``BipolarQuant(x, s)``."""
        return symbolic("BipolarQuant", (x, p.scale), {}, x, meta(p))

    def evaluate(self, node: Any, inputs: Sequence[np.ndarray]) -> np.ndarray:
        x, s = np.asarray(inputs[0]), np.asarray(inputs[1])
        return np.where(x >= 0, 1.0, -1.0).astype(x.dtype) * s

    def step(self, node: Any, graph: GraphView) -> Step | None:
        s = graph.const(node.input[1])
        return None if s is None else Step(2 * s)

    def read_format(self, node: Any, graph: GraphView) -> Format | None:
        return BipolarFormat()

    def weight_codes(self, node: Any, graph: GraphView, fmt: Format) -> np.ndarray | None:
        return np.where(graph.const(node.input[0]) >= 0, 1.0, -1.0)

    def lower(self, node: Any, ctx: Lowering) -> list:
        raise ValueError(
            f"{ctx.where(node)}: QCDQ cannot express bipolar (1-bit) quantizers; use to_qonnx"
        )


BIPOLAR_QUANT = register(BipolarQuantOp())
