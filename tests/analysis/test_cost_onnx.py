"""cost() on QONNX graphs: the reader, bad input, and the cross-check with qonnx's
``inference_cost`` (MACs and BOPs) on hand-built and hwquant-exported graphs."""

import numpy as np
import pytest
import torch

from hwquant.analysis import cost

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

QDOMAIN = "qonnx.custom_op.general"


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _quant(x, out, bits, signed, narrow=0, scale=0.1):
    inits = [_const(f"{out}_s", scale), _const(f"{out}_z", 0.0), _const(f"{out}_b", bits)]
    node = helper.make_node(
        "Quant",
        [x, f"{out}_s", f"{out}_z", f"{out}_b"],
        [out],
        domain=QDOMAIN,
        signed=signed,
        narrow=narrow,
        rounding_mode="ROUND",
    )
    return node, inits


def small_qonnx(quantized: bool = True, seed: int = 0):
    """x → Quant(INT4) → Conv 1→4 3×3 (INT4n weights) → Relu → Quant(UINT4) → MaxPool 2 →
    Flatten → Gemm 64→10 (INT4n weights)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(4, 1, 3, 3)) * 0.3
    w1[0, 0, 0, 0] = 0.0  # one pruned weight
    w2 = rng.normal(size=(10, 64)) * 0.3
    nodes, inits = [], [_const("w1", w1), _const("w2", w2)]

    def add(node_inits):
        nodes.append(node_inits[0])
        inits.extend(node_inits[1])

    x = "x"
    if quantized:
        add(_quant("x", "xq", 4, 1))
        add(_quant("w1", "w1q", 4, 1, narrow=1))
        add(_quant("w2", "w2q", 4, 1, narrow=1))
        x = "xq"
    w1n, w2n = ("w1q", "w2q") if quantized else ("w1", "w2")
    nodes.append(
        helper.make_node(
            "Conv", [x, w1n], ["c1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]
        )
    )
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"]))
    r = "r1"
    if quantized:
        add(_quant("r1", "r1q", 4, 0))
        r = "r1q"
    nodes.append(helper.make_node("MaxPool", [r], ["p1"], kernel_shape=[2, 2], strides=[2, 2]))
    nodes.append(helper.make_node("Flatten", ["p1"], ["f1"]))
    nodes.append(helper.make_node("Gemm", ["f1", w2n], ["y"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(QDOMAIN, 1)]
    )
    model.ir_version = 8
    return model


def test_reader_on_hand_built_graph(tmp_path):
    path = tmp_path / "small.onnx"
    onnx.save(small_qonnx(), str(path))
    r = cost(path, target="pynq-z2")
    conv, fc = r.layers
    assert (conv.name, conv.op, conv.MW, conv.MH, conv.n_pix) == ("conv1", "conv", 9, 4, 64)
    assert (conv.input_format, conv.weight_format, conv.out_bits) == ("INT4", "INT4n", 4)
    assert (fc.name, fc.MW, fc.MH, fc.input_format, fc.out_bits) == ("fc", 64, 10, "UINT4", None)
    assert r.macs == 9 * 4 * 64 + 64 * 10
    assert conv.pruned_fraction >= 1 / 36
    assert conv.accumulator.datatype == 11  # K = 9, N = M = 4, signed input: α = 9.17
    assert conv.accumulator.exact <= conv.accumulator.weight <= conv.accumulator.datatype


def _qonnx_totals(path, discount):
    from qonnx.util.inference_cost import inference_cost

    res = inference_cost(str(path), discount_sparsity=discount)["total_cost"]
    return res["total_macs"], res["total_bops"]


def test_cross_check_hand_built_graph_with_qonnx(tmp_path):
    path = tmp_path / "small.onnx"
    onnx.save(small_qonnx(), str(path))
    r = cost(path)
    macs, bops = _qonnx_totals(path, discount=False)
    assert macs == r.macs
    assert bops == pytest.approx(sum(lc.macs * lc.input_bits * lc.weight_bits for lc in r.layers))
    macs_sparse, bops_sparse = _qonnx_totals(path, discount=True)
    assert bops_sparse == pytest.approx(r.bops_qonnx)
    assert macs_sparse == pytest.approx(sum(lc.macs * (1 - lc.pruned_fraction) for lc in r.layers))


@pytest.mark.parametrize("bits", [4, 8])
def test_cross_check_hwquant_export_with_qonnx(tmp_path, bits):
    """On a hwquant-exported DigitsCNN (W4A4, W8A8): MACs and BOPs agree with qonnx, and
    the ONNX reader sees what the torch walker sees."""
    import hwquant
    from hwquant.export import to_qonnx
    from hwquant.models import DigitsCNN
    from hwquant.spec import IntFormat, QuantSpec, Recipe, ScaleSpec, per_channel

    acts = QuantSpec(IntFormat(bits), scale=ScaleSpec("percentile", learned=True))
    weights = QuantSpec(IntFormat(bits, narrow=True), per_channel(0), ScaleSpec(learned=True))
    model = hwquant.quantize(DigitsCNN(), Recipe.uniform(weights=weights, activations=acts))
    model.eval()
    model(torch.rand(16, 1, 8, 8))
    path = to_qonnx(model, torch.rand(1, 1, 8, 8), tmp_path / "digits.onnx")
    from_onnx, from_torch = cost(path), cost(model, (1, 1, 8, 8))
    assert from_onnx.macs == from_torch.macs
    assert [lc.name for lc in from_onnx.layers] == [lc.name for lc in from_torch.layers]
    assert [lc.weight_format for lc in from_onnx.layers] == [
        lc.weight_format for lc in from_torch.layers
    ]
    assert [lc.input_format for lc in from_onnx.layers] == [
        lc.input_format for lc in from_torch.layers
    ]
    assert [lc.out_bits for lc in from_onnx.layers] == [lc.out_bits for lc in from_torch.layers]
    assert from_onnx.luts == from_torch.luts
    macs, bops = _qonnx_totals(path, discount=True)
    assert macs == pytest.approx(sum(lc.macs * (1 - lc.pruned_fraction) for lc in from_onnx.layers))
    assert bops == pytest.approx(from_onnx.bops_qonnx)


def test_unquantized_onnx_is_rejected(tmp_path):
    path = tmp_path / "float.onnx"
    onnx.save(small_qonnx(quantized=False), str(path))
    with pytest.raises(ValueError, match=r"float.onnx is not a quantized \(QONNX\) graph"):
        cost(path)


def test_not_onnx_and_no_layers(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 definitely not protobuf")
    with pytest.raises(ValueError, match=r"cannot read .* as ONNX"):
        cost(junk)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    with pytest.raises(ValueError, match="has no Conv"):
        cost(helper.make_model(graph))


def _float_and_bipolar_graph():
    """x → FloatQuant(E4M3) → MatMul(FloatQuant(W1) [16, 8]) → BipolarQuant →
    Gemm(BipolarQuant(W2) [4, 8], transB=1)."""
    rng = np.random.default_rng(1)
    inits = [
        _const("w1", rng.normal(size=(16, 8))),
        _const("w2", rng.normal(size=(4, 8))),
        _const("one", 1.0),
        _const("e", 4.0),
        _const("m", 3.0),
        _const("bias", 7.0),
        _const("max", 480.0),
    ]
    fq = {"has_inf": 0, "has_nan": 0, "has_subnormal": 1, "saturation": 1, "rounding_mode": "ROUND"}
    nodes = [
        helper.make_node(
            "FloatQuant", ["x", "one", "e", "m", "bias", "max"], ["xq"], domain=QDOMAIN, **fq
        ),
        helper.make_node(
            "FloatQuant", ["w1", "one", "e", "m", "bias", "max"], ["w1q"], domain=QDOMAIN, **fq
        ),
        helper.make_node("MatMul", ["xq", "w1q"], ["h"], name="mm"),
        helper.make_node("BipolarQuant", ["h", "one"], ["hq"], domain=QDOMAIN),
        helper.make_node("BipolarQuant", ["w2", "one"], ["w2q"], domain=QDOMAIN),
        helper.make_node("Gemm", ["hq", "w2q"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "fb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
        initializer=inits,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(QDOMAIN, 1)]
    )


def test_reader_minifloat_and_bipolar():
    model = _float_and_bipolar_graph()
    # the Gemm needs a 2-D input: reshape [1, 3, 8] → [3, 8] between the two layers
    g = model.graph
    g.initializer.append(numpy_helper.from_array(np.array([3, 8], dtype=np.int64), "shape"))
    g.node[3].input[0] = "h2"
    g.node.insert(3, helper.make_node("Reshape", ["h", "shape"], ["h2"]))
    r = cost(model)
    mm, fc = r.layers
    assert (mm.op, mm.MW, mm.MH, mm.n_pix) == ("matmul", 16, 8, 3)
    assert mm.weight_format == mm.input_format == "FP8_E4M3"
    assert mm.accumulator.minifloat == 16 + 3 + 16 + 3 + 4 - 1 and mm.out_bits == 1
    assert mm.minifloat_mac_relative_cost is not None
    assert (fc.weight_format, fc.input_format, fc.MW, fc.MH) == ("BIPOLAR", "BIPOLAR", 8, 4)
    assert fc.accumulator.datatype == 5  # K = 8, N = M = 1 signed: α = 3 + 1 + 1 − 1 − 1 → ⌈4.17⌉
    assert fc.accumulator.exact == 5 and fc.pruned_fraction == 0


def test_reader_transposed_quantized_weight():
    """MatMul(x, Transpose(Quant(W))) — a weight stored [out, in] and transposed."""
    rng = np.random.default_rng(2)
    nodes, inits = [], [_const("w", rng.normal(size=(8, 16)))]
    for node, more in (_quant("x", "xq", 8, 0), _quant("w", "wq", 4, 1, narrow=1)):
        nodes.append(node)
        inits.extend(more)
    nodes += [
        helper.make_node("Transpose", ["wq"], ["wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["xq", "wt"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(QDOMAIN, 1)]
    )
    (lc,) = cost(model).layers
    assert (lc.MW, lc.MH, lc.weight_format, lc.input_format) == (16, 8, "INT4n", "UINT8")
    assert lc.accumulator.exact is not None
