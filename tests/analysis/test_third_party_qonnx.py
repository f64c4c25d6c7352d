"""QONNX graphs written by other tools: Brevitas exports (built below) and the
Brevitas-exported ESPCN / FINN-annotated graphs that qonnx ships. ``hwquant cost``
agrees with qonnx's ``inference_cost`` on MACs and on qonnx-convention BOPs, names
both BOPs definitions, and ``hwquant accumulators`` reads the files."""

from __future__ import annotations

import itertools
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hwquant.analysis import cost
from hwquant.analysis.cost import formulas as F
from hwquant.cli.main import main

onnx = pytest.importorskip("onnx")
pytest.importorskip("qonnx")
from onnx import numpy_helper  # noqa: E402

BREVITAS = ["tfc_w1a1", "tfc_w2a2", "cnn"]

# ---- the graphs: Brevitas' own QONNX export of small models (test-only dependency)


def _brevitas_models() -> dict:
    import brevitas.nn as qnn
    from brevitas.quant import (
        Int16Bias,
        SignedBinaryActPerTensorConst,
        SignedBinaryWeightPerTensorConst,
    )

    def act(bits: int) -> nn.Module:
        if bits == 1:
            return qnn.QuantIdentity(
                act_quant=SignedBinaryActPerTensorConst, return_quant_tensor=True
            )
        return qnn.QuantIdentity(bit_width=bits, return_quant_tensor=True)

    def linear(i: int, o: int, bits: int) -> nn.Module:
        if bits == 1:
            return qnn.QuantLinear(i, o, bias=False, weight_quant=SignedBinaryWeightPerTensorConst)
        return qnn.QuantLinear(i, o, bias=False, weight_bit_width=bits)

    class TFC(nn.Module):
        """FINN's TFC (brevitas_examples bnn_pynq), narrowed: 784 → 64 → 64 → 64 → 10."""

        def __init__(self, bits: int) -> None:
            super().__init__()
            dims = (784, 64, 64, 64, 10)
            feats: list[nn.Module] = [act(bits), nn.Dropout(0.2)]
            for a, b in itertools.pairwise(dims[:-1]):
                feats += [linear(a, b, bits), nn.BatchNorm1d(b), act(bits), nn.Dropout(0.2)]
            feats.append(linear(dims[-2], dims[-1], bits))
            self.features = nn.ModuleList(feats)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.view(x.shape[0], -1)  # a Shape → Gather → Concat → Reshape chain
            x = 2.0 * x - torch.tensor([1.0])
            for m in self.features:
                x = m(x)
            return x

    class CNN(nn.Module):
        """INT8 input → conv (INT4 weights, INT16 bias on the accumulator scale) → BN →
        UINT4 ReLU → max-pool → conv → UINT4 ReLU → linear (float bias)."""

        def __init__(self) -> None:
            super().__init__()
            self.inp = qnn.QuantIdentity(bit_width=8, return_quant_tensor=True)
            self.c1 = qnn.QuantConv2d(
                1, 8, 3, padding=1, weight_bit_width=4, bias=True, bias_quant=Int16Bias
            )
            self.b1 = nn.BatchNorm2d(8)
            self.r1 = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
            self.p1 = nn.MaxPool2d(2)
            self.c2 = qnn.QuantConv2d(8, 16, 3, weight_bit_width=4, bias=False)
            self.r2 = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
            self.fc = qnn.QuantLinear(16 * 5 * 5, 10, bias=True, weight_bit_width=4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.p1(self.r1(self.b1(self.c1(self.inp(x)))))
            x = self.r2(self.c2(x))
            return self.fc(x.view(x.shape[0], -1))

    return {
        "tfc_w1a1": (TFC(1), (1, 1, 28, 28)),
        "tfc_w2a2": (TFC(2), (1, 1, 28, 28)),
        "cnn": (CNN(), (1, 1, 14, 14)),
    }


@pytest.fixture(scope="session")
def brevitas_graphs(tmp_path_factory) -> dict:
    """{name: path} of Brevitas-exported QONNX files. ``tfc_w1a1``: TorchScript export
    with a symbolic batch (as FINN's TFC graphs come; the reshape chain is not
    folded); ``tfc_w2a2``: TorchScript export; ``cnn``: the dynamo export."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxoptimizer")  # Brevitas' ONNX export needs it
    pytest.importorskip("brevitas")
    from brevitas.export import export_qonnx

    out = tmp_path_factory.mktemp("brevitas")
    paths = {}
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (model, shape) in _brevitas_models().items():
            model.eval()
            with torch.no_grad():
                model(torch.randn(4, *shape[1:]))  # BN stats stay; activation scales are const
            path = out / f"{name}.onnx"
            x = torch.randn(*shape)
            if name == "tfc_w1a1":
                export_qonnx(
                    model,
                    x,
                    str(path),
                    dynamo=False,
                    input_names=["inp"],
                    dynamic_axes={"inp": {0: "batch"}},
                )
            else:
                export_qonnx(model, x, str(path), dynamo=name == "cnn")
            paths[name] = path
    return paths


def _inference_cost(path: Path, discount: bool) -> dict:
    """qonnx's inference_cost at batch 1 (with a symbolic batch it counts 0 MACs)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.change_batchsize import ChangeBatchSize
    from qonnx.util.inference_cost import inference_cost

    m = ModelWrapper(str(path)).transform(ChangeBatchSize(1))
    return inference_cost(m, discount_sparsity=discount)["total_cost"]


@pytest.mark.parametrize("name", BREVITAS)
def test_cost_macs_and_bops_equal_inference_cost(brevitas_graphs, name):
    r = cost(brevitas_graphs[name])
    dense, sparse = (
        _inference_cost(brevitas_graphs[name], False),
        _inference_cost(brevitas_graphs[name], True),
    )
    assert r.macs == dense["total_macs"] > 0
    assert r.macs == sum(lc.MW * lc.MH * lc.n_pix for lc in r.layers)
    if name == "tfc_w1a1":
        # pinned: qonnx 1.0 folds BipolarQuant weights to float before typing them, so
        # it counts BIPOLAR × FLOAT32 (32 bits per weight); hwquant reads ±1 weights
        assert set(k for k in dense if k.startswith("op_mac")) == {"op_mac_BIPOLAR_FLOAT32"}
        assert dense["total_bops"] == 32 * r.bops_qonnx
        assert r.bops_qonnx == r.macs  # 1 bit × 1 bit, no zero weights
        assert (
            {lc.input_format for lc in r.layers}
            == {lc.weight_format for lc in r.layers}
            == {"BIPOLAR"}
        )
    else:
        assert dense["total_bops"] == pytest.approx(
            sum(lc.macs * lc.input_bits * lc.weight_bits for lc in r.layers)
        )
        assert sparse["total_bops"] == pytest.approx(r.bops_qonnx)


def test_w2a2_reads_two_bit_weights_and_activations(brevitas_graphs):
    r = cost(brevitas_graphs["tfc_w2a2"])
    assert [lc.MW for lc in r.layers] == [784, 64, 64, 64]
    assert {lc.weight_bits for lc in r.layers} == {lc.input_bits for lc in r.layers} == {2}


def test_both_bops_definitions_are_named(brevitas_graphs):
    r = cost(brevitas_graphs["cnn"])
    for lc in r.layers:
        f = lc.pruned_fraction
        assert lc.bops_qonnx == pytest.approx((1 - f) * lc.macs * lc.input_bits * lc.weight_bits)
        assert lc.bops_psqs == pytest.approx(
            F.bops(lc.MH * lc.n_pix, lc.MW, lc.input_bits, lc.weight_bits, f)
        )
        assert lc.bops_psqs > lc.bops_qonnx  # Ps-and-Qs adds the accumulator bits
    d = r.to_dict()
    assert d["bops_qonnx"] == r.bops_qonnx and d["bops_psqs"] == r.bops_psqs
    assert not hasattr(r, "bops") and not hasattr(r, "mac_bops")  # no unnamed BOPs


@pytest.mark.parametrize("name", BREVITAS)
def test_cost_cli_runs(brevitas_graphs, name, capsys):
    assert main(["cost", str(brevitas_graphs[name])]) == 0
    out = capsys.readouterr().out
    assert "BOPs: qonnx" in out and "Ps-and-Qs" in out
    assert main(["cost", str(brevitas_graphs[name]), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["macs"] > 0 and d["bops_psqs"] > d["bops_qonnx"] > 0


# ----------------------------------------------------------------- accumulators
def _direct_exact_widths(path: Path) -> list[tuple[int, list[int], list[int]]]:
    """(width, acc_min, acc_max) per MatMul of a Brevitas TFC graph, computed here
    from the weight codes and input quantizers in the file, with NumPy only."""
    m = onnx.load(str(path))
    g = m.graph
    consts = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    attrs = lambda n: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}  # noqa: E731

    def code_range(quant) -> tuple[int, int]:
        if quant.op_type == "BipolarQuant":
            return -1, 1
        a, b = attrs(quant), int(consts[quant.input[3]])
        if a["signed"]:
            return -(2 ** (b - 1)) + a["narrow"], 2 ** (b - 1) - 1
        return 0, 2**b - 1 - a["narrow"]

    out = []
    for n in g.node:
        if n.op_type != "MatMul":
            continue
        wq = producer[producer[n.input[1]].input[0]]  # Quant → Transpose → MatMul
        w, s = consts[wq.input[0]], consts[wq.input[1]]
        if wq.op_type == "BipolarQuant":
            q = np.where(w >= 0, 1, -1)
        else:
            lo, hi = code_range(wq)
            q = np.clip(np.round(w / s), lo, hi)  # [out, in], zero point 0
        x_lo, x_hi = code_range(producer[n.input[0]])
        acc_max = np.maximum(q * x_lo, q * x_hi).sum(1)
        acc_min = np.minimum(q * x_lo, q * x_hi).sum(1)
        width = math.ceil(math.log2(max(-acc_min.min(), acc_max.max() + 1))) + 1
        out.append((width, acc_min.astype(int).tolist(), acc_max.astype(int).tolist()))
    return out


@pytest.mark.parametrize("name", ["tfc_w1a1", "tfc_w2a2"])
def test_exact_width_equals_numpy_on_the_graph(brevitas_graphs, name):
    from hwquant.analysis.onnx_accumulators import onnx_accumulators

    rows = onnx_accumulators(brevitas_graphs[name]).layers
    direct = _direct_exact_widths(brevitas_graphs[name])
    assert len(rows) == len(direct) == 4
    for row, (width, acc_min, acc_max) in zip(rows, direct, strict=True):
        assert (row.exact_bits, row.exact_min, row.exact_max) == (width, acc_min, acc_max)
        assert row.exact_bits <= row.l1_bits <= row.datatype_bits
    if name == "tfc_w1a1":  # ±1 × ±1 over K = 784: |y| ≤ 784 → 11 bits, every bound
        assert (rows[0].K, rows[0].N, rows[0].M, rows[0].signed_input) == (784, 1, 1, True)
        assert rows[0].datatype_bits == rows[0].exact_bits == 11


def test_bias_on_the_accumulator_scale_is_included(brevitas_graphs):
    from hwquant.analysis.onnx_accumulators import onnx_layers

    c1, c2, fc = onnx_layers(brevitas_graphs["cnn"])
    assert c1.bias is not None and "included" in c1.row.note  # Int16Bias: s_b = s_x·s_w
    q, b = c1.q, c1.bias
    assert (
        c1.row.exact_max == (np.maximum(q * c1.x_min, q * c1.x_max).sum(1) + b).astype(int).tolist()
    )
    assert c2.bias is None and c2.row.note == ""
    assert fc.bias is None and "float bias left out" in fc.row.note


@pytest.mark.parametrize("name", BREVITAS)
def test_audit_small_and_large_P(brevitas_graphs, name):
    from hwquant.analysis.onnx_accumulators import onnx_accumulators, onnx_overflow_audit

    path = brevitas_graphs[name]
    widest = max(r.exact_bits for r in onnx_accumulators(path).layers)
    at_exact = onnx_overflow_audit(path, widest)
    assert all(a.overflowing == 0 and a.max_error == 0 for a in at_exact)
    too_small = onnx_overflow_audit(path, widest - 1)
    assert sum(a.overflowing for a in too_small) > 0
    sat = onnx_overflow_audit(path, widest - 1, mode="saturate")
    assert sum(a.overflowing for a in sat) > 0


@pytest.mark.parametrize("name", BREVITAS)
def test_accumulators_cli_on_onnx(brevitas_graphs, name, capsys):
    path = str(brevitas_graphs[name])
    assert main(["accumulators", path, "--audit", "--bits", "8"]) == 0
    out = capsys.readouterr().out
    assert "worst-case audit" in out and "channels overflow" in out
    assert main(["accumulators", path, "--audit", "--bits", "32", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert all(r["exact_bits"] is not None for r in d["layers"])
    assert [a["overflowing"] for a in d["audit"]] == [0] * len(d["layers"])
    assert main(["accumulators", path, "--data", "digits"]) == 2  # no data for .onnx


# ----------------------------------------------------------------- graphs qonnx ships
def _qonnx_data(rel: str) -> Path:
    import qonnx

    path = Path(qonnx.__file__).parent / "data" / "onnx" / rel
    if not path.exists():  # pragma: no cover - depends on the qonnx wheel
        pytest.skip(f"qonnx does not ship {rel}")
    return path


@pytest.mark.parametrize("variant", ["nn_resize", "subpixel"])
def test_qonnx_shipped_brevitas_espcn(variant):
    path = _qonnx_data(f"bsd300x3-espcn/{variant}/quant_model.onnx")
    r = cost(path)
    dense, sparse = _inference_cost(path, False), _inference_cost(path, True)
    assert r.macs == dense["total_macs"]
    integer = [lc for lc in r.layers if not lc.input_format.startswith("FLOAT")]
    assert integer  # nearest Resize / DepthToSpace keep the grid
    if variant == "nn_resize":  # every layer integer: the BOPs agree too
        assert len(integer) == len(r.layers)
        assert sparse["total_bops"] == pytest.approx(r.bops_qonnx)
    from hwquant.analysis.onnx_accumulators import onnx_accumulators

    rows = onnx_accumulators(path).layers
    assert len(rows) == len(r.layers)
    assert any(row.exact_bits is not None for row in rows)


def test_qonnx_shipped_finn_annotated_graph():
    """A FINN-style graph: the input's type is a ``finn_datatype`` annotation (UINT8),
    not a quantizer node; the weights are float."""
    path = _qonnx_data("eltwise_chanlast_testcase.onnx")
    r = cost(path)
    (lc,) = r.layers
    assert (lc.input_format, lc.weight_format) == ("UINT8", "FLOAT32")
    assert r.macs == _inference_cost(path, False)["total_macs"]
