"""Model files are data: round trips, malicious pickles, mismatched state."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import hwquant
from hwquant.algorithms import fold_bn
from hwquant.checkpoint import load_checkpoint, save_checkpoint
from hwquant.cli.main import main
from hwquant.export.zoo import ZOO, build
from hwquant.models import MLP, DigitsCNN
from hwquant.nn import QuantConv2d, QuantLinear
from hwquant.spec import A4U, A8, A8U, W4, W8, LayerSpec, Recipe

W4A4 = Recipe.uniform(weights=W4, activations=A4U)


def _roundtrip(model, x, tmp_path, **save):
    path = tmp_path / "m.pt"
    save_checkpoint(model, path, tuple(x[:1].shape), **save)
    loaded, shape = load_checkpoint(path, factory=save.get("architecture"))
    assert shape == tuple(x[:1].shape)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))  # bit-identical outputs
    return loaded


def _trained_digits(tmp_path):
    model = hwquant.quantize(DigitsCNN(channels=4), W4A4)
    with hwquant.calibration(model):
        model(torch.randn(32, 1, 8, 8))
    model.train()
    model(torch.randn(32, 1, 8, 8))  # BN running statistics move off their init
    model.eval()
    fold_bn.apply(model)
    return model


def test_reference_models_round_trip(tmp_path):
    loaded = _roundtrip(_trained_digits(tmp_path), torch.randn(16, 1, 8, 8), tmp_path)
    assert "folded into" in str(loaded.hwquant_report)  # fold_bn was replayed
    mlp = hwquant.quantize(MLP((16, 8, 4), batch_norm=True), W4A4)
    mlp(torch.randn(8, 16))
    _roundtrip(mlp, torch.randn(8, 16), tmp_path)
    _roundtrip(DigitsCNN(), torch.randn(4, 1, 8, 8), tmp_path)  # float models too


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_models_round_trip(name, tmp_path):
    model, shape = build(name)
    _roundtrip(model, torch.randn(8, *shape), tmp_path)


def test_sequential_of_layers_round_trips_without_a_builder(tmp_path):
    spec = LayerSpec(input=A8, weight=W4)
    model = nn.Sequential(
        QuantConv2d(1, 4, 3, padding=1, spec=spec),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        QuantLinear(16, 3, spec=LayerSpec(input=A4U, weight=W8)),
    )
    model(torch.randn(8, 1, 4, 4))
    _roundtrip(model, torch.randn(8, 1, 4, 4), tmp_path)


USER_MODULE = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.a = nn.Linear(6, width)
        self.b = nn.Linear(6, width)
        self.out = nn.Linear(width, 2)

    def forward(self, x):
        return self.out(torch.relu(self.a(x) + self.b(x)))
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_nets.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    return importlib.import_module("user_nets")


def test_user_model_round_trips_through_an_explicit_factory(tmp_path, user_module):
    model = hwquant.quantize(user_module.Net(width=5), W4A4)  # fx rewrite: a GraphModule
    assert isinstance(model, torch.fx.GraphModule)
    x = torch.randn(16, 6)
    model(x)
    loaded = _roundtrip(
        model, x, tmp_path, architecture="user_nets:Net", architecture_kwargs={"width": 5}
    )
    assert loaded.code == model.code
    path = tmp_path / "m.pt"
    with pytest.raises(ValueError, match="--factory user_nets:Net"):
        load_checkpoint(path)  # never imported unless asked for
    with pytest.raises(ValueError, match="not by the factory"):
        load_checkpoint(path, factory="os:system")
    again, _ = load_checkpoint(path, factory=lambda width: user_module.Net(width))
    assert torch.equal(again(x), model(x))


def test_a_model_that_no_description_rebuilds_is_refused(tmp_path, user_module):
    with pytest.raises(ValueError, match=r"architecture='package\.module:callable'"):
        save_checkpoint(user_module.Net(), tmp_path / "m.pt")
    model = hwquant.quantize(DigitsCNN(channels=4), W4A4)
    model.classifier = nn.Linear(16, 3)  # changed after quantize recorded the recipe
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        save_checkpoint(model, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_state_dict_with_other_quantizer_formats_is_refused():
    w4a8 = hwquant.quantize(MLP((8, 4)), Recipe.uniform(weights=W4, activations=A8U))
    w8a4 = hwquant.quantize(MLP((8, 4)), Recipe.uniform(weights=W8, activations=A4U))
    w4a8(torch.randn(4, 8))
    with pytest.raises(ValueError, match=r"quantizer 'layers\.0\.input_quant' differs"):
        w8a4.load_state_dict(w4a8.state_dict())
    float_sd = MLP((8, 4)).state_dict()  # float checkpoints still load (scales re-derived)
    w8a4.load_state_dict(float_sd)


# ----------------------------------------------------------------- malicious files
class _Payload:
    """Unpickling this writes a marker file: the proof that a loader ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.fixture
def evil(tmp_path):
    """A file that holds a valid hwquant model file *and* a code-running pickle."""
    model, shape = build("mlp")
    good = tmp_path / "good.pt"
    save_checkpoint(model, good, (1, *shape))
    entry = torch.load(good, weights_only=True)
    marker = tmp_path / "MARKER"
    entry["payload"] = _Payload(marker)
    path = tmp_path / "evil.pt"
    torch.save(entry, path)
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": model, "input_shape": (1, *shape), "payload": _Payload(marker)}, legacy)
    onnx_path = tmp_path / "m.onnx"
    from hwquant.export import to_qonnx

    to_qonnx(model, torch.zeros(1, *shape), onnx_path)
    return path, legacy, marker, onnx_path


def test_loader_refuses_code_running_pickles(evil):
    path, legacy, marker, _ = evil
    for p in (path, legacy):
        with pytest.raises(ValueError, match="pickled Python objects"):
            load_checkpoint(p)
    assert not marker.exists()


def test_every_cli_command_refuses_code_running_pickles(evil, capsys):
    path, legacy, marker, onnx_path = evil
    good = path.with_name("good.pt")
    commands = [
        ["cost", "{}"],
        ["cost", "{}", "--input-shape", "1,16"],
        ["export", "{}", "-o", str(path.with_name("out.onnx"))],
        ["verify", "{}", str(onnx_path), "--backends", "qonnx", "-n", "4"],
        ["accumulators", "{}"],
    ]
    for p in (path, legacy):
        for cmd in commands:
            args = [a.format(p) for a in cmd]
            assert main(args) == 2, args
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "pickled Python objects" in err, (args, err)
    inputs = path.with_name("inputs.pt")
    torch.save({"x": _Payload(marker)}, inputs)
    verify_inputs = ["verify", str(good), str(onnx_path), "--inputs", str(inputs)]
    assert main([*verify_inputs, "--backends", "qonnx"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not marker.exists()
    assert not path.with_name("out.onnx").exists()


def test_cli_in_a_fresh_process_refuses_the_file(evil):
    path, _, marker, _ = evil
    out = subprocess.run(
        [sys.executable, "-m", "hwquant.cli.main", "cost", str(path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert not marker.exists()


def test_demo_style_file_feeds_every_command(tmp_path, capsys):
    model = _trained_digits(tmp_path)
    ckpt = tmp_path / "digits.pt"
    save_checkpoint(model, ckpt, (1, 1, 8, 8))
    assert main(["cost", str(ckpt), "--json"]) == 0
    capsys.readouterr()
    assert main(["export", str(ckpt), "-o", str(tmp_path / "d.onnx")]) == 0
    assert main(["accumulators", str(ckpt), "--data", "random"]) == 0
    x = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    args = ["verify", str(ckpt), str(tmp_path / "d.onnx"), "--inputs", str(tmp_path / "x.npy")]
    assert main([*args, "--backends", "qonnx"]) in (0, 1)  # runs; the verdict is verify's
