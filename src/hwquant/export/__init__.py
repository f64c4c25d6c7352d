"""Export to QONNX and QCDQ, and verification against qonnx, onnxruntime and hls4ml.

onnx, onnxruntime, qonnx and hls4ml are imported only when a function runs.
"""

from hwquant.export.qonnx import to_qonnx

__all__ = ["to_qonnx"]
