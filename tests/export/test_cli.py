"""``hwquant export`` and ``hwquant verify``."""

import json

from hwquant.checkpoint import save_checkpoint
from hwquant.cli.main import main
from hwquant.export.zoo import build


def test_export_then_verify(tmp_path, capsys):
    model, shape = build("cnn")
    ckpt = tmp_path / "cnn.pt"
    save_checkpoint(model, str(ckpt), (1, *shape))  # shape with batch
    out = tmp_path / "cnn.onnx"
    assert main(["export", str(ckpt), "-o", str(out), "--dynamic-batch"]) == 0
    assert out.exists() and "wrote" in capsys.readouterr().out
    assert main(["verify", str(ckpt), str(out), "-n", "200", "--backends", "qonnx"]) == 0
    table = capsys.readouterr().out
    assert "qonnx" in table and "pass" in table
    qcdq = tmp_path / "cnn.qcdq.onnx"
    assert main(["export", str(ckpt), "--format", "qcdq", "--batch", "4"]) == 0
    assert qcdq.exists()
    capsys.readouterr()
    assert (
        main(["verify", str(ckpt), str(qcdq), "-n", "40", "--json", "--backends", "onnxruntime"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["kind"] == "qcdq"


def test_checkpoint_without_shape_needs_an_input_shape(tmp_path, capsys):
    model, _ = build("mlp")
    ckpt = tmp_path / "mlp.pt"
    save_checkpoint(model, ckpt)
    assert main(["export", str(ckpt)]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert main(["export", str(ckpt), "--input-shape", "16"]) == 0
    assert (tmp_path / "mlp.qonnx.onnx").exists()
    assert main(["export", str(ckpt), "--input-shape", "15", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "does not fit the model" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_verify_reports_failure(tmp_path, capsys):
    model, shape = build("mlp")
    ckpt = tmp_path / "mlp.pt"
    save_checkpoint(model, str(ckpt), (1, *shape))  # shape with batch
    out = tmp_path / "mlp.onnx"
    assert main(["export", str(ckpt), "-o", str(out), "--dynamic-batch"]) == 0
    other, _ = build("mlp", seed=5)  # different weights: the graph does not match it
    save_checkpoint(other, tmp_path / "other.pt")
    assert main(["verify", str(tmp_path / "other.pt"), str(out), "--backends", "qonnx"]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert main(["verify", str(ckpt), str(tmp_path / "none.onnx")]) == 2
