"""One module per QONNX op: ``Quant`` (:mod:`.quant`), ``BipolarQuant``
(:mod:`.bipolar_quant`), ``FloatQuant`` (:mod:`.float_quant`), ``Trunc``
(:mod:`.trunc`); the QCDQ rewrite context they lower into is :mod:`.lowering`.

Each module owns its op's emission, QCDQ form, output step and read-back (NumPy
evaluation, format and codes for the cost reader, hls4ml / qonnx notes for
verify); :mod:`hwquant.export.emit`, :mod:`hwquant.export.qcdq`,
:mod:`hwquant.export.verify`, :mod:`hwquant.export.hls4ml` and the cost reader
(:mod:`hwquant.analysis.cost.onnx_reader`) ask the registry. A new op is one new
module here, registered with :func:`register` and imported below.

>>> names()
('BipolarQuant', 'FloatQuant', 'Quant', 'Trunc')
>>> op_for("IntQuant").op_type
'Quant'
>>> op_for("Nope")
Traceback (most recent call last):
...
ValueError: no ONNX op 'Nope' is registered (known: BipolarQuant, FloatQuant, Quant, Trunc)
"""

from hwquant.export.ops.base import (
    EMITTERS,
    GROUP_KEY,
    PATH_KEY,
    QONNX_DOMAIN,
    QONNX_OPSET,
    SPEC_KEY,
    Emitter,
    GraphView,
    OnnxOp,
    QuantParams,
    Step,
    all_ops,
    find,
    names,
    op_for,
    op_types,
    quant_emitter,
    register,
)
from hwquant.export.ops.bipolar_quant import BIPOLAR_QUANT
from hwquant.export.ops.float_quant import FLOAT_QUANT
from hwquant.export.ops.lowering import Lowering
from hwquant.export.ops.quant import QUANT
from hwquant.export.ops.trunc import TRUNC

__all__ = [
    "BIPOLAR_QUANT",
    "EMITTERS",
    "FLOAT_QUANT",
    "GROUP_KEY",
    "PATH_KEY",
    "QONNX_DOMAIN",
    "QONNX_OPSET",
    "QUANT",
    "SPEC_KEY",
    "TRUNC",
    "Emitter",
    "GraphView",
    "Lowering",
    "OnnxOp",
    "QuantParams",
    "Step",
    "all_ops",
    "find",
    "names",
    "op_for",
    "op_types",
    "quant_emitter",
    "register",
]
