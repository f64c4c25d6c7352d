"""Run an exported QONNX graph through hls4ml: convert → compile (g++) → predict.

hls4ml 1.3 ingests QONNX after qonnx's cleanup, ``ConvertToChannelsLastAndClean``
and ``GemmToMatMul`` (REFERENCE.md §4). Its Vivado backend's ``compile()`` builds
a C++ emulation of the HLS code with g++, no vendor tools needed, so the
prediction is what the generated fixed-point hardware computes.

What it takes (checked by :func:`hls4ml_rejects` before spending a compile):
``Quant`` with ROUND / FLOOR rounding, zero point 0 and per-tensor power-of-two
scales (they become ``ap_fixed`` types). Not ``FloatQuant``, ``Trunc``,
``ConvTranspose`` or QCDQ; per-channel or non-power-of-two scales and
``BipolarQuant`` make its conversion crash (pinned by
``tests/export/test_hls4ml.py``).

Precision settings: every layer precision hls4ml can infer is left ``auto``
(Quant nodes fix the activation and weight types, accumulators are sized from
them); ``default_precision`` (``fixed<32,16>``) only covers what has no quantizer
(float biases, the unquantized graph input is quantized first anyway).

>>> hls4ml_rejects_ops({"FloatQuant", "Gemm"})
'hls4ml does not take FloatQuant'
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = [
    "DEFAULT_PRECISION",
    "hls4ml_predict",
    "hls4ml_rejects",
    "hls4ml_rejects_ops",
    "prepare_for_hls4ml",
]

DEFAULT_PRECISION = "fixed<48,16>"
#: standard ops hls4ml does not take (the QONNX ops say so themselves:
#: ``OnnxOp.hls4ml_reject_type`` / ``OnnxOp.hls4ml_rejects`` in :mod:`hwquant.export.ops`).
_UNSUPPORTED = ("QuantizeLinear", "DequantizeLinear")


def hls4ml_rejects_ops(op_types: Iterable[str]) -> str | None:
    """Why hls4ml cannot take a graph with these op types (None if it may)."""
    from hls4ml.converters import get_supported_onnx_layers

    from hwquant.export import ops

    present = set(op_types)
    for op in _UNSUPPORTED:
        if op in present:
            return f"hls4ml does not take {op}"
    for qop in ops.all_ops():
        if qop.hls4ml_reject_type and qop.op_type in present:
            return qop.hls4ml_reject_type
    known = set(get_supported_onnx_layers()) | {"Gemm", "Dropout", "Identity"}
    missing = sorted(present - known)
    return f"hls4ml has no converter for {', '.join(missing)}" if missing else None


def hls4ml_rejects(proto: onnx.ModelProto) -> str | None:
    """Why hls4ml 1.3 cannot take this QONNX graph, or None if it should.

    Per-channel and non-power-of-two scales are rejected here because hls4ml's
    scale propagation fails on them (``move_scales``: "Failed to propagate
    quantization scales down MatMul node")."""
    from onnx import numpy_helper

    from hwquant.export import ops

    why = hls4ml_rejects_ops(n.op_type for n in proto.graph.node)
    if why:
        return why
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for n in proto.graph.node:
        op = ops.find(n.op_type)
        why = None if op is None else op.hls4ml_rejects(n, inits)
        if why:
            return why
    return None


def prepare_for_hls4ml(proto: onnx.ModelProto) -> onnx.ModelProto:
    """qonnx cleanup → channels-last → Gemm to MatMul → cleanup (batch size 1)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.util.cleanup import cleanup_model

    from hwquant.export.batch import with_batch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mw = cleanup_model(ModelWrapper(with_batch(proto, 1)))
        mw = mw.transform(ConvertToChannelsLastAndClean())
        mw = mw.transform(GemmToMatMul())
        mw = cleanup_model(mw)
    return mw.model


@contextlib.contextmanager
def _silent() -> Iterator[None]:
    buf = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
        warnings.simplefilter("ignore")
        yield


def hls4ml_predict(
    proto: onnx.ModelProto,
    x: np.ndarray,
    *,
    output_dir: str | os.PathLike | None = None,
    default_precision: str = DEFAULT_PRECISION,
    io_type: str = "io_parallel",
) -> np.ndarray:
    """Convert ``proto`` (a QONNX graph) with hls4ml's Vivado backend, compile it
    with g++ and predict ``x`` (inputs and outputs in the graph's own layout).

    The build goes to ``output_dir`` (a temporary directory by default, removed
    afterwards)."""
    import hls4ml

    model = prepare_for_hls4ml(proto)
    # The channels-last conversion keeps the graph's interface (it inserts Transposes
    # after the input and before the output), so data stay NCHW.
    x = np.ascontiguousarray(x, dtype=np.float32)
    with contextlib.ExitStack() as stack:
        if output_dir is None:
            output_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="hwquant-hls4ml-"))
        with _silent():
            cfg = hls4ml.utils.config.config_from_onnx_model(
                model, granularity="name", backend="Vivado", default_precision=default_precision
            )
            hm = hls4ml.converters.convert_from_onnx_model(
                model,
                output_dir=str(output_dir),
                backend="Vivado",
                io_type=io_type,
                hls_config=cfg,
            )
            hm.compile()
            y = np.asarray(hm.predict(x), dtype=np.float64)
    out_shape = _output_shape(model)
    return y.reshape((x.shape[0], *out_shape[1:])) if out_shape else y


def _output_shape(model: onnx.ModelProto) -> list[int] | None:
    dims = model.graph.output[0].type.tensor_type.shape.dim
    shape = [d.dim_value for d in dims]
    return shape if all(shape[1:]) else None
