"""The zoo: every model runs bit-exactly in qonnx's executor (QONNX) and in
onnxruntime (QCDQ, integer models ≤ 8 bits; a default session and one with graph
optimizations off) on 1,000 random inputs."""

import pytest
import torch

from hwquant.export import to_qcdq, to_qonnx, verify
from hwquant.export.zoo import ZOO, build

N = 1000


def _inputs(shape: tuple[int, ...], n: int = N) -> torch.Tensor:
    # N(0, 1.5²): wider than the calibration data, so saturation is exercised too.
    return 1.5 * torch.randn((n, *shape), generator=torch.Generator().manual_seed(123))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_qonnx_equals_torch(name, tmp_path):
    model, shape = build(name)
    x = _inputs(shape)
    path = to_qonnx(model, x[:1], tmp_path / f"{name}.onnx", dynamic_batch=True)
    r = verify(model, path, x, backends=("qonnx",))["qonnx"]
    assert r.ran and r.passed, r
    if ZOO[name].exact:
        assert r.mismatched == 0 and r.max_steps < 0.5, r
        assert r.n_values >= N


@pytest.mark.parametrize("name", sorted(n for n, e in ZOO.items() if e.qcdq))
def test_qcdq_onnxruntime_equals_torch(name, tmp_path):
    model, shape = build(name)
    x = _inputs(shape)
    path = to_qcdq(model, x[:1], tmp_path / f"{name}.qcdq.onnx", dynamic_batch=True)
    backends = ("onnxruntime", "onnxruntime-noopt", "qonnx")  # default session and as written
    rep = verify(model, path, x, backends=backends)
    for backend in backends:
        r = rep[backend]
        assert r.ran and r.passed, rep
        if ZOO[name].exact:
            assert r.mismatched == 0, rep


@pytest.mark.parametrize("name", ["mlp", "cnn", "residual"])
def test_fixed_batch(name, tmp_path):
    """A fixed-batch graph (batch 100) runs 1,000 inputs in chunks, exactly."""
    model, shape = build(name)
    x = _inputs(shape)
    q = to_qonnx(model, x[:100], tmp_path / "q.onnx")
    c = to_qcdq(model, x[:100], tmp_path / "c.onnx")
    assert verify(model, q, x, backends=("qonnx",))["qonnx"].mismatched == 0
    assert verify(model, c, x, backends=("onnxruntime",))["onnxruntime"].mismatched == 0


def test_zoo_covers_the_layers():
    """Every layer kind of the foundation issue appears in some zoo model."""
    kinds = set()
    for name in ZOO:
        model, _ = build(name)
        kinds |= {type(m).__name__ for m in model.modules()}
    wanted = {
        "QuantLinear",
        "QuantConv1d",
        "QuantConv2d",
        "QuantConvTranspose1d",
        "QuantConvTranspose2d",
        "QuantMaxPool2d",
        "QuantAvgPool2d",
        "QuantAdd",
        "QuantCat",
        "QuantReLU",
        "QuantReLU6",
        "QuantHardtanh",
        "QuantSigmoid",
        "QuantTanh",
        "QuantAct",
    }
    assert wanted <= kinds, wanted - kinds
    dw = build("depthwise_cnn")[0].dw
    assert dw.groups == dw.in_channels == dw.out_channels
