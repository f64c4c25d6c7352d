"""Structure of the exported QONNX graph: ops, attributes, scales, metadata, datatypes."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import hwquant
from hwquant.export import accumulator_bits, to_qonnx, verify
from hwquant.export.zoo import PO2, build, calibrate
from hwquant.nn import QuantAct, QuantConv2d, QuantConv3d, Quantizer, QuantLinear
from hwquant.spec import (
    FP4_E2M1,
    FP6_E2M3,
    FP6_E3M2,
    FP8_E4M3,
    FP8_E4M3FN,
    FP8_E5M2,
    PER_TENSOR,
    BipolarFormat,
    IntFormat,
    LayerSpec,
    MinifloatFormat,
    QuantSpec,
    ScaleSpec,
    per_channel,
    per_group,
    serialize,
)

DOMAIN = "qonnx.custom_op.general"


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory):
    model, shape = build("cnn")
    path = to_qonnx(model, torch.randn(1, *shape), tmp_path_factory.mktemp("cnn") / "cnn.onnx")
    return model, onnx.load(path)


def _exact(r) -> bool:
    """torch's codes: no value off by half an output step or more (float sums may
    differ in order on other CPUs); outputs without a step within 1e-5 relative."""
    return r.ran and r.mismatched == 0


def _inits(proto):
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_header_and_domain(cnn_file):
    _, proto = cnn_file
    imports = {i.domain: i.version for i in proto.opset_import}
    assert imports[DOMAIN] == 2  # Trunc v2 needs opset 2 of the qonnx domain
    assert proto.ir_version <= 10  # onnxruntime 1.32 rejects IR 14
    ops = {(n.domain, n.op_type) for n in proto.graph.node}
    assert {
        (DOMAIN, "Quant"),
        (DOMAIN, "Trunc"),
        ("", "Conv"),
        ("", "MaxPool"),
        ("", "AveragePool"),
        ("", "Gemm"),
    } <= ops
    # everything else is standard ONNX
    assert all(d in ("", DOMAIN) for d, _ in ops)
    onnx.checker.check_model(proto)


def test_quant_attributes_always_written(cnn_file):
    _, proto = cnn_file
    for n in proto.graph.node:
        a = _attrs(n)
        if n.op_type == "Quant":
            assert {"signed", "narrow", "rounding_mode"} <= set(a)
            assert a["rounding_mode"] == b"ROUND"
        if n.op_type == "Trunc":
            assert len(n.input) == 6 and a["rounding_mode"] == b"FLOOR"


def test_weights_are_float_initializers_followed_by_quant(cnn_file):
    _, proto = cnn_file
    inits = _inits(proto)
    producer = {o: n for n in proto.graph.node for o in n.output}
    for n in proto.graph.node:
        if n.op_type in ("Conv", "Gemm"):
            q = producer[n.input[1]]
            assert q.op_type == "Quant"
            w = inits[q.input[0]]
            assert w.dtype == np.float32 and w.ndim in (2, 4)
            # bias: on the accumulator scale, also a float initializer + Quant
            b = producer[n.input[2]]
            assert b.op_type == "Quant" and inits[b.input[0]].ndim == 1


def test_scale_shapes_per_tensor_channel_group(tmp_path):
    w_t = QuantSpec(IntFormat(4), PER_TENSOR, PO2)
    w_c = QuantSpec(IntFormat(4), per_channel(0), PO2)
    w_g = QuantSpec(IntFormat(4), per_group(4, axis=1), PO2)
    a = QuantSpec(IntFormat(8), PER_TENSOR, PO2)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.t = QuantLinear(8, 6, bias=False, spec=LayerSpec(input=a, weight=w_t))
            self.c = QuantConv2d(1, 6, 3, bias=False, spec=LayerSpec(input=a, weight=w_c))
            self.g = QuantLinear(8, 6, bias=False, spec=LayerSpec(input=a, weight=w_g))

        def forward(self, x):
            img = x[:, :1].reshape(-1, 1, 1, 1).expand(-1, 1, 3, 3)
            return self.t(x) + self.g(x) + self.c(img)[: len(x)].reshape(len(x), 6)[:, :6]

    model = calibrate(M(), (8,))
    x = torch.randn(50, 8)
    path = to_qonnx(model, x, tmp_path / "s.onnx")
    proto = onnx.load(path)
    inits = _inits(proto)
    shapes = {}
    for n in proto.graph.node:
        meta = {m.key: m.value for m in n.metadata_props}
        if n.op_type == "Quant":
            shapes[meta["hwquant.module"]] = inits[n.input[1]].shape
    assert shapes["t.weight_quant"] == ()
    assert shapes["c.weight_quant"] == (6, 1, 1, 1)
    assert shapes["g.weight_quant"] == (6, 8)  # per group of 4, expanded to the tensor
    assert shapes["t.input_quant"] == ()
    assert _exact(verify(model, path, x, backends=("qonnx",))["qonnx"])


def test_metadata(cnn_file):
    model, proto = cnn_file
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["hwquant.version"] == hwquant.__version__
    recipe = serialize.loads(meta["hwquant.recipe"])  # round-trips to a Recipe
    by_name = dict(recipe.by_name)
    assert by_name["conv1"].weight.format == IntFormat(4, narrow=True)
    assert by_name["conv1"].weight.granularity.kind == "channel"
    assert by_name["conv1"] == model.conv1.layer_spec
    acc = json.loads(meta["hwquant.accumulator_bits"])
    assert acc == accumulator_bits(model)
    assert set(acc) == {"conv1", "conv2", "fc"}
    assert all(isinstance(v, int) and 8 < v <= 32 for v in acc.values())


def test_accumulator_bits_worst_case():
    fixed = ScaleSpec("fixed", value=1.0)
    spec = LayerSpec(
        input=QuantSpec(IntFormat(4, signed=False), scale=fixed),
        weight=QuantSpec(IntFormat(4), scale=fixed),
    )
    layer = QuantLinear(3, 2, bias=False, spec=spec)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[7.0, 7.0, 7.0], [-8.0, -8.0, 1.0]]))
    # row 0 spans [0, 315], row 1 [-240, 15]: one layer-wide type holding [-240, 315]
    # is INT10 (⌈log2 316⌉ + 1)
    assert accumulator_bits(layer) == {"<root>": 10}
    with torch.no_grad():
        layer.weight[0] = -1.0  # now [-45, 0] and [-240, 15] → INT9
    assert accumulator_bits(layer) == {"<root>": 9}


def test_infer_datatypes_integer_where_scale_is_one(tmp_path):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_datatypes import InferDataTypes

    one = ScaleSpec("fixed", value=1.0)
    spec = LayerSpec(
        input=QuantSpec(IntFormat(4, signed=False), scale=one),
        weight=QuantSpec(IntFormat(3), scale=one),
    )
    layer = QuantLinear(5, 3, bias=False, spec=spec)
    out = QuantAct(QuantSpec(IntFormat(6), scale=ScaleSpec("fixed", value=0.5)))
    binary = QuantAct(QuantSpec(BipolarFormat(), scale=one))
    model = nn.Sequential(layer, binary, out).eval()
    path = to_qonnx(model, torch.randn(2, 5), tmp_path / "dt.onnx")
    mw = ModelWrapper(str(path)).transform(InferDataTypes())
    types = {}
    for n in mw.graph.node:
        meta = {m.key: m.value for m in n.metadata_props}
        if "hwquant.module" in meta:
            types[meta["hwquant.module"]] = mw.get_tensor_datatype(n.output[0]).name
    assert types == {
        "0.input_quant": "UINT4",
        "0.weight_quant": "INT3",
        "1": "BIPOLAR",
        "2": "FLOAT32",
    }  # scale 0.5: not an integer type


def test_dynamic_and_fixed_batch(tmp_path):
    model, shape = build("mlp")
    fixed = onnx.load(to_qonnx(model, torch.randn(7, *shape), tmp_path / "f.onnx"))
    dyn = onnx.load(to_qonnx(model, torch.randn(1, *shape), tmp_path / "d.onnx", True))
    for proto, dim0 in ((fixed, (7, "")), (dyn, (0, "batch"))):
        for vi in (proto.graph.input[0], proto.graph.output[0]):
            d = vi.type.tensor_type.shape.dim[0]
            assert (d.dim_value, d.dim_param) == dim0


def test_stock_qonnx_cleanup_runs_on_the_file(tmp_path):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    for name in ("cnn", "minifloat_cnn", "binary_mlp"):
        model, shape = build(name)
        x = torch.randn(64, *shape)
        path = to_qonnx(model, x, tmp_path / f"{name}.onnx")
        clean = cleanup_model(ModelWrapper(str(path)))
        clean.save(str(tmp_path / f"{name}_clean.onnx"))
        r = verify(model, tmp_path / f"{name}_clean.onnx", x, backends=("qonnx",))
        assert _exact(r["qonnx"]), r


def test_export_leaves_the_model_unchanged(tmp_path):
    model, shape = build("cnn")
    model.train()
    model.fc.eval()
    before = {k: v.clone() if torch.is_tensor(v) else v for k, v in model.state_dict().items()}
    forwards = {n: m._forward for n, m in model.named_modules() if isinstance(m, Quantizer)}
    quant_bias = model.conv1.quant_bias
    to_qonnx(model, torch.randn(2, *shape), tmp_path / "m.onnx")
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(
        torch.equal(v, after[k]) if torch.is_tensor(v) else v == after[k] for k, v in before.items()
    )  # the quantizers' specs ride along as strings
    assert all(m._forward == forwards[n] for n, m in model.named_modules() if n in forwards)
    assert model.conv1.quant_bias == quant_bias
    assert "forward" not in model.pool2.__dict__
    assert model.training and not model.fc.training and model.conv1.training
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


MINIFLOATS = [
    FP8_E4M3,
    FP8_E4M3FN,
    FP8_E5M2,
    FP6_E3M2,
    FP6_E2M3,
    FP4_E2M1,
    MinifloatFormat(3, 3, bias=2),
]


def test_minifloat_formats_exact_in_qonnx(tmp_path):
    acts = [QuantAct(QuantSpec(f, PER_TENSOR, PO2)) for f in MINIFLOATS]
    w = QuantSpec(FP6_E3M2, per_channel(0), PO2)
    out = QuantSpec(FP8_E4M3FN, PER_TENSOR, PO2)
    conv = QuantConv2d(
        3, 4, 3, padding=1, bias=False, spec=LayerSpec(input=acts[0].spec, weight=w, output=out)
    )

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.acts = nn.ModuleList(acts)
            self.conv = conv

        def forward(self, x):
            return torch.cat([q(x) for q in self.acts] + [self.conv(x)], dim=1)

    model = calibrate(M(), (3, 6, 6))
    x = 3 * torch.randn(500, 3, 6, 6)
    path = to_qonnx(model, x[:2], tmp_path / "mf.onnx", dynamic_batch=True)
    ops = [n.op_type for n in onnx.load(path).graph.node]
    # + weight (not folded) and output; the conv's input Quant equals acts[0]'s (same x,
    # same scale) and the exporter's common-subexpression pass merges them
    assert ops.count("FloatQuant") == len(MINIFLOATS) + 2
    r = verify(model, path, x, backends=("qonnx",))["qonnx"]
    assert _exact(r), r


def test_qonnx_executor_ignores_has_subnormal(tmp_path):
    """Pinned qonnx 1.0 behaviour: FloatQuant always keeps subnormals (its
    has_subnormal attribute only informs backends), so a format without them
    is exported faithfully but qonnx's reference executor disagrees."""
    fmt = MinifloatFormat(4, 3, has_subnormal=False)
    model = nn.Sequential(QuantAct(QuantSpec(fmt, PER_TENSOR, ScaleSpec("fixed", value=1.0))))
    x = torch.tensor([[0.001, 0.004, 0.01, 1.0, 3.3]])  # below 2^-6 = 0.0156: no subnormal
    path = to_qonnx(model, x, tmp_path / "nosub.onnx")
    node = next(n for n in onnx.load(path).graph.node if n.op_type == "FloatQuant")
    assert _attrs(node)["has_subnormal"] == 0
    r = verify(model, path, x, backends=("qonnx",))["qonnx"]
    assert not r.passed and r.mismatched > 0


def test_per_channel_activations_and_conv3d(tmp_path):
    a = QuantSpec(IntFormat(6), per_channel(1), PO2)
    model = nn.Sequential(
        QuantAct(a, shape=(1, 2, 1, 1, 1)),
        QuantConv3d(
            2,
            3,
            2,
            spec=LayerSpec(
                input=QuantSpec(IntFormat(8), PER_TENSOR, PO2),
                weight=QuantSpec(IntFormat(4), per_channel(0), PO2),
            ),
        ),
    )
    with torch.no_grad():
        model[0].init_from(
            torch.randn(8, 2, 3, 3, 3) * torch.tensor([1.0, 8.0]).view(1, 2, 1, 1, 1)
        )
    calibrate(model, (2, 3, 3, 3))
    x = torch.randn(200, 2, 3, 3, 3)
    path = to_qonnx(model, x, tmp_path / "pc.onnx")
    r = verify(model, path, x, backends=("qonnx",))["qonnx"]
    assert _exact(r), r


def test_learned_non_power_of_two_scales(tmp_path):
    """LSQ scales are arbitrary floats: outputs agree up to float32 noise."""
    from hwquant.spec import A8U, W4

    model = nn.Sequential(
        QuantLinear(10, 16, spec=LayerSpec(input=A8U, weight=W4)),
        QuantLinear(16, 4, spec=LayerSpec(input=A8U, weight=W4)),
    )
    calibrate(model, (10,))
    x = torch.rand(1000, 10)
    r = verify(model, to_qonnx(model, x[:1], tmp_path / "lsq.onnx"), x, backends=("qonnx",))
    assert r["qonnx"].passed and r["qonnx"].mismatched == 0, r


def test_model_from_quantize(tmp_path):
    from hwquant.api import calibration, quantize
    from hwquant.models import MLP
    from hwquant.spec import A8U, W4, Recipe

    qm = quantize(MLP((16, 32, 10)).eval(), Recipe.uniform(weights=W4, activations=A8U))
    with calibration(qm):
        qm(torch.rand(64, 16))
    x = torch.rand(500, 16)
    r = verify(qm, to_qonnx(qm, x[:2], tmp_path / "q.onnx", True), x, backends=("qonnx",))
    assert r.passed, r


def test_import_does_not_pull_onnx():
    import subprocess
    import sys

    code = (
        "import sys, hwquant.export, hwquant.export.zoo, hwquant.export.verify; "
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'qonnx', 'hls4ml') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_float_quant_saturation_follows_the_format(tmp_path):
    """A non-saturating minifloat is written with saturation=0 (it was always 1)."""
    for saturating in (True, False):
        fmt = MinifloatFormat(exponent_bits=4, mantissa_bits=3, has_nan=True, saturating=saturating)
        model = nn.Sequential(QuantAct(QuantSpec(fmt, PER_TENSOR, PO2)))
        calibrate(model, (8,))
        proto = onnx.load(to_qonnx(model, torch.randn(4, 8), tmp_path / f"s{saturating}.onnx"))
        node = next(n for n in proto.graph.node if n.op_type == "FloatQuant")
        attrs = {a.name: a.i for a in node.attribute}
        assert attrs["saturation"] == int(saturating)
