"""Export to QONNX and QCDQ, and differential verification of the exported graph
against torch with qonnx's executor, onnxruntime and hls4ml's compiled C++.

onnx, onnxruntime, qonnx and hls4ml are imported only when a function runs, so
``import hwquant.export`` stays light.

Example:
    >>> import tempfile, torch
    >>> from hwquant.export.zoo import build
    >>> model, shape = build("mlp")
    >>> x = torch.randn(100, *shape)
    >>> path = to_qonnx(model, x, tempfile.mkdtemp() + "/mlp.onnx", dynamic_batch=True)
    >>> verify(model, path, x, backends=("qonnx",)).passed
    True
"""

from hwquant.export.levels import LevelCheck, check_levels
from hwquant.export.qcdq import to_qcdq, to_qonnx_and_qcdq
from hwquant.export.qonnx import accumulator_bits, to_qonnx
from hwquant.export.verify import BackendResult, VerifyReport, verify, with_batch

__all__ = [
    "BackendResult",
    "LevelCheck",
    "VerifyReport",
    "accumulator_bits",
    "check_levels",
    "to_qcdq",
    "to_qonnx",
    "to_qonnx_and_qcdq",
    "verify",
    "with_batch",
]
