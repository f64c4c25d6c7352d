"""The ONNX op modules (hwquant.export.ops), one differential test per op.

Each case builds a single-node graph with the op module's own emitter (traced and
converted as ``to_qonnx`` does), then checks, in codes (round(y / step), never raw
floats), against qonnx's executor:

- the op's NumPy evaluation (its read-back for verify), with the output step the
  op reports (``OnnxOp.step``, what ``verify.output_steps`` reads);
- its QCDQ lowering in onnxruntime, default session and ORT_DISABLE_ALL (or the
  ``ValueError`` naming the module path where QCDQ has no form);
- the cost reader's read-back: the node's format / bit width, and the integer codes
  of the op applied to a constant (a weight).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from hwquant.analysis.cost.onnx_reader import OnnxGraph, read_weight
from hwquant.export import ops
from hwquant.export.ops import EMITTERS, QuantParams
from hwquant.export.qcdq import qonnx_to_qcdq
from hwquant.export.qonnx import qonnx_proto
from hwquant.export.verify import output_steps
from hwquant.spec import (
    FP8_E4M3FN,
    FP8_E5M2,
    BipolarFormat,
    IntFormat,
    MinifloatFormat,
    QuantSpec,
    TernaryFormat,
)

N = 64  # samples per graph


class _One(nn.Module):
    """A module whose forward is one emitter call."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@dataclass
class Case:
    """One single-node graph: the op, how it is emitted, its inputs, what to expect."""

    id: str
    op: str
    emit: Any  # Tensor -> Tensor, calling the op module's emitter
    x: np.ndarray
    fmt: Any  # what the cost reader must read back
    qcdq_error: str | None = None  # the ValueError QCDQ gives, None: it lowers
    codes: bool = True  # the cost reader returns integer weight codes


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _x(scale: float, span: float, shape=(N, 6)) -> np.ndarray:
    """Random values on both sides of the range, plus exact rounding ties."""
    r = _rng()
    x = r.normal(0.0, span / 2, shape).astype(np.float32)
    ties = (np.arange(-8, 8) + 0.5) * scale
    x.reshape(-1)[: ties.size] = ties
    return x


def _quant(fmt, scale, z=None, rounding="half_even"):
    spec = QuantSpec(fmt, rounding=rounding)
    s = torch.as_tensor(scale, dtype=torch.float32)
    zp = None if z is None else torch.tensor(float(z))
    p = QuantParams("layer.q", spec, s, zp)
    return lambda x: ops.EMITTERS.get(fmt)(x, p)


def _trunc(s, t, bits, signed=True):
    """Trunc of a sum of codes at scale s / 2^t to ``bits`` bits at scale s (avg pooling)."""
    in_scale, out_scale = torch.tensor(s / 2**t), torch.tensor(float(s))
    in_bits = torch.tensor(float(bits + t))
    meta = {ops.PATH_KEY: "pool", ops.SPEC_KEY: "test"}
    return lambda x: ops.TRUNC.emit(x, in_scale, in_bits, out_scale, bits, signed, False, meta)


def _cases() -> list[Case]:
    codes = _rng(1).integers(-32, 32, (N, 6)).astype(np.float32)
    return [
        Case("int4", "Quant", _quant(IntFormat(4), 0.25), _x(0.25, 4), IntFormat(4)),
        Case(
            "uint3_zp",
            "Quant",
            _quant(IntFormat(3, signed=False), 0.5, z=2),
            _x(0.5, 4),
            IntFormat(3, signed=False),
        ),
        Case(
            "int8_narrow_per_channel",
            "Quant",
            _quant(IntFormat(8, narrow=True), [[0.01, 0.02, 0.04, 0.08, 0.1, 0.3]], None),
            _x(0.05, 8),
            IntFormat(8, narrow=True),
        ),
        Case("int16", "Quant", _quant(IntFormat(16), 2.0**-10), _x(2.0**-10, 40), IntFormat(16)),
        Case(
            "ternary", "Quant", _quant(TernaryFormat(), 0.5), _x(0.5, 2), IntFormat(2, narrow=True)
        ),
        Case(
            "int5_floor",
            "Quant",
            _quant(IntFormat(5), 0.125, rounding="floor"),
            _x(0.125, 3),
            IntFormat(5),
            qcdq_error="rounds half to even",
        ),
        Case(
            "bipolar",
            "BipolarQuant",
            _quant(BipolarFormat(), 0.5),
            _x(0.5, 2),
            BipolarFormat(),
            qcdq_error="cannot express bipolar",
        ),
        Case(
            "fp8_e4m3fn",
            "FloatQuant",
            _quant(FP8_E4M3FN, 2.0**-3),
            _x(2.0**-6, 80),
            FP8_E4M3FN,
            codes=False,
        ),
        Case(
            "fp8_e5m2", "FloatQuant", _quant(FP8_E5M2, 1.0), _x(2.0**-4, 1e4), FP8_E5M2, codes=False
        ),
        Case(
            "e4m3_ieee",
            "FloatQuant",
            _quant(MinifloatFormat(4, 3), 0.5),
            _x(2.0**-6, 200),
            MinifloatFormat(4, 3),
            qcdq_error="only the ONNX FP8 types",
            codes=False,
        ),
        Case(
            "trunc_s4",
            "Trunc",
            _trunc(0.25, 2, 4),
            codes * np.float32(0.25 / 4),
            IntFormat(4),
            codes=False,
        ),
        Case(
            "trunc_u3",
            "Trunc",
            _trunc(0.5, 3, 3, signed=False),
            np.abs(codes) * np.float32(0.5 / 8),
            IntFormat(3, signed=False),
            codes=False,
        ),
    ]


CASES = _cases()


@pytest.fixture(scope="module", params=CASES, ids=[c.id for c in CASES])
def built(request) -> tuple[Case, onnx.ModelProto]:
    case = request.param
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = qonnx_proto(_One(case.emit), torch.from_numpy(case.x))
    return case, proto


def _qonnx(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    mw = ModelWrapper(proto)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = execute_onnx(mw, {mw.graph.input[0].name: x})
    return np.asarray(out[mw.graph.output[0].name], np.float64)


def _node(proto: onnx.ModelProto) -> onnx.NodeProto:
    (node,) = [n for n in proto.graph.node if n.domain == ops.QONNX_DOMAIN]
    return node


def _ours(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The op module's NumPy evaluation of the single node."""
    node = _node(proto)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    inputs = [x if i == proto.graph.input[0].name else inits[i] for i in node.input]
    return np.asarray(ops.op_for(node.op_type).evaluate(node, inputs), np.float64)


def _ort(proto: onnx.ModelProto, x: np.ndarray, optimize: bool) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0], np.float64)


def _codes(y: np.ndarray, step: np.ndarray) -> np.ndarray:
    return np.round(y / step)


def _assert_same_codes(y: np.ndarray, ref: np.ndarray, step: np.ndarray, what: str) -> None:
    a, b = _codes(y, step), _codes(ref, step)
    bad = a != b
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} codes differ, e.g. {a[bad][:5]} vs {b[bad][:5]}"
    )


# ---------------------------------------------------------------- emission
def test_the_emitter_writes_one_node_with_the_op_attributes(built):
    case, proto = built
    node = _node(proto)
    assert node.op_type == case.op
    want = {
        "Quant": ({"signed", "narrow", "rounding_mode"}, 4),
        "BipolarQuant": (set(), 2),
        "FloatQuant": ({"has_inf", "has_nan", "has_subnormal", "saturation", "rounding_mode"}, 6),
        "Trunc": ({"signed", "narrow", "rounding_mode"}, 6),
    }[case.op]
    assert ({a.name for a in node.attribute}, len(node.input)) == want
    assert {i.domain: i.version for i in proto.opset_import}[ops.QONNX_DOMAIN] == ops.QONNX_OPSET


# ---------------------------------------------------------------- read-back: evaluation and step
def test_evaluation_matches_qonnx_in_output_steps(built):
    case, proto = built
    ref = _qonnx(proto, case.x)
    (step,) = output_steps(proto)
    assert step is not None
    unit = step.at(ref)
    assert np.all(unit > 0)
    _assert_same_codes(_ours(proto, case.x), ref, unit, f"{case.id}: evaluate vs qonnx")
    # the reference lies on the grid the step describes (whole codes; bipolar ±s is
    # ±half of its step 2s)
    offset = 0.5 if case.op == "BipolarQuant" else 0.0
    k = np.abs(ref / unit) - offset
    np.testing.assert_allclose(k, np.round(k), atol=1e-6)


def test_step_is_the_op_step(built):
    case, proto = built
    node = _node(proto)
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in proto.graph.initializer}
    s = inits[node.input[1]]
    (step,) = output_steps(proto)
    if case.op == "BipolarQuant":
        np.testing.assert_array_equal(step.scale, 2 * s)
    elif case.op == "Trunc":
        np.testing.assert_array_equal(step.scale, inits[node.input[4]])
    else:
        np.testing.assert_array_equal(step.scale, s)
    if case.op == "FloatQuant":
        assert step.mantissa_bits == case.fmt.mantissa_bits
        assert step.min_exponent == case.fmt.min_exponent
    else:
        assert step.mantissa_bits is None


# ---------------------------------------------------------------- QCDQ form
@pytest.mark.parametrize("optimize", [True, False], ids=["ort-default", "ort-noopt"])
def test_qcdq_lowering_matches_qonnx_in_onnxruntime(built, optimize):
    case, proto = built
    if case.qcdq_error is not None:
        with pytest.raises(ValueError, match=case.qcdq_error) as e:
            qonnx_to_qcdq(proto)
        assert str(e.value).startswith(("layer.q", "pool")), e.value  # names the module path
        return
    qcdq = qonnx_to_qcdq(proto)
    assert all(n.domain == "" for n in qcdq.graph.node)
    assert ops.QONNX_DOMAIN not in {i.domain for i in qcdq.opset_import}
    ref = _qonnx(proto, case.x)
    (step,) = output_steps(proto)
    y = _ort(qcdq, case.x, optimize)
    _assert_same_codes(y, ref, step.at(ref), f"{case.id}: QCDQ in onnxruntime vs qonnx")
    # verify reads the step off the QCDQ graph too: the same, or (a per-channel scale
    # behind a Clip, whose rank the lowered graph does not record) the smallest one
    (qstep,) = output_steps(qcdq)
    assert np.all(qstep.at(ref) <= step.at(ref)) and np.isclose(
        qstep.at(ref).min(), step.at(ref).min()
    )


# ---------------------------------------------------------------- cost reader read-back
def _as_constant(proto: onnx.ModelProto, x: np.ndarray) -> onnx.ModelProto:
    """The graph with its input turned into a constant (the node then quantizes a weight)."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    name = m.graph.input[0].name
    del m.graph.input[:]
    m.graph.initializer.append(numpy_helper.from_array(x, name))
    return m


def test_cost_reader_reads_the_format_and_bits(built):
    case, proto = built
    g = OnnxGraph(proto)
    node = _node(proto)
    fmt = ops.op_for(node.op_type).read_format(node, g)
    assert fmt == case.fmt.canonical() or fmt == case.fmt, (fmt, case.fmt)
    assert fmt.bits == case.fmt.bits


def test_cost_reader_reads_weight_codes(built):
    case, proto = built
    if case.op == "Trunc":
        pytest.skip("Trunc re-quantizes sums, it is never a weight quantizer")
    g = OnnxGraph(_as_constant(proto, case.x))
    values, fmt, codes = read_weight(g, _node(proto).output[0])
    np.testing.assert_array_equal(values, case.x.astype(np.float64))
    assert fmt.bits == case.fmt.bits
    if not case.codes:
        assert codes is None
        return
    ref = _qonnx(proto, case.x)
    node = _node(proto)
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in proto.graph.initializer}
    if case.op == "BipolarQuant":
        np.testing.assert_array_equal(codes, ref / inits[node.input[1]])
    else:
        np.testing.assert_array_equal(codes, np.round(ref / inits[node.input[1]]))


# ---------------------------------------------------------------- the registry
def test_registry_lists_exactly_the_four_ops():
    assert ops.names() == ("BipolarQuant", "FloatQuant", "Quant", "Trunc")
    for name, module_op in [
        ("Quant", ops.QUANT),
        ("BipolarQuant", ops.BIPOLAR_QUANT),
        ("FloatQuant", ops.FLOAT_QUANT),
        ("Trunc", ops.TRUNC),
    ]:
        assert ops.op_for(name) is module_op and module_op.op_type == name
    assert ops.op_for("IntQuant") is ops.QUANT  # qonnx's newer name of Quant
    assert {type(o).__module__.rsplit(".", 1)[-1] for o in ops.all_ops()} == {
        "quant",
        "bipolar_quant",
        "float_quant",
        "trunc",
    }


def test_unknown_op_type_is_a_clear_value_error():
    with pytest.raises(ValueError, match=r"no ONNX op 'MultiThreshold' is registered.*Quant"):
        ops.op_for("MultiThreshold")
    assert ops.find("MultiThreshold") is None


def test_emitters_keyed_by_format_come_from_the_op_modules():
    assert EMITTERS.get(IntFormat(4)) == ops.QUANT.emit
    assert EMITTERS.get(TernaryFormat()) == ops.QUANT.emit
    assert EMITTERS.get(IntFormat(1, signed=True)) == ops.BIPOLAR_QUANT.emit  # canonical: bipolar
    assert EMITTERS.get(FP8_E4M3FN) == ops.FLOAT_QUANT.emit


def test_registering_a_taken_op_type_fails():
    with pytest.raises(ValueError, match="already registered"):
        ops.register(type(ops.TRUNC)())


def test_per_channel_scale_lowers_with_axis():
    """The per-channel Quant case lowers to QuantizeLinear with ``axis`` = the channel."""
    case = next(c for c in CASES if c.id == "int8_narrow_per_channel")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = qonnx_proto(_One(case.emit), torch.from_numpy(case.x))
    q = next(n for n in qonnx_to_qcdq(proto).graph.node if n.op_type == "QuantizeLinear")
    assert {a.name: a.i for a in q.attribute} == {"axis": 1}


# ---------------------------------------------------------------- nodes the emitters never write
def _hand_node(op: str, consts: dict[str, float], **attrs) -> onnx.ModelProto:
    """A one-node graph written with onnx.helper (for inputs no hwquant quantizer emits)."""
    from onnx import TensorProto, helper

    node = helper.make_node(op, ["x", *consts], ["y"], domain=ops.QONNX_DOMAIN, **attrs)
    inits = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in consts.items()]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [N, 6]) for n in ("x", "y")]
    graph = helper.make_graph([node], "one", io[:1], io[1:], inits)
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid(ops.QONNX_DOMAIN, ops.QONNX_OPSET)]
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize(
    "mode", ["ROUND", "HALF_EVEN", "FLOOR", "CEIL", "UP", "DOWN", "HALF_UP", "HALF_DOWN"]
)
def test_quant_evaluation_of_every_rounding_mode_matches_qonnx(mode):
    proto = _hand_node(
        "Quant", {"s": 0.25, "z": 0.0, "b": 5.0}, signed=1, narrow=0, rounding_mode=mode
    )
    x = _x(0.25, 4)
    ref = _qonnx(proto, x)
    _assert_same_codes(_ours(proto, x), ref, np.float64(0.25), f"Quant {mode}")


@pytest.mark.parametrize("signed,narrow", [(1, 0), (1, 1), (0, 0)])
def test_one_bit_quant_matches_qonnx(signed, narrow):
    """A 1-bit signed Quant executes as bipolar ±s (step 2s), unsigned as {0, s}."""
    proto = _hand_node(
        "Quant", {"s": 0.5, "z": 0.0, "b": 1.0}, signed=signed, narrow=narrow, rounding_mode="ROUND"
    )
    x = _x(0.5, 2)
    ref = _qonnx(proto, x)
    (step,) = output_steps(proto)
    assert float(step.scale) == (1.0 if signed else 0.5)
    np.testing.assert_array_equal(_ours(proto, x), ref)
