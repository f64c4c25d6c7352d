"""``hwquant export`` and ``hwquant verify``."""

import json
import os
import stat

import torch

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
    # --input-shape takes the batch first, as in every command and save_checkpoint
    assert main(["export", str(ckpt), "--input-shape", "1,16"]) == 0
    assert (tmp_path / "mlp.qonnx.onnx").exists()
    assert main(["export", str(ckpt), "--input-shape", "16", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "no batch dimension: give the batch first, e.g. 1,16" in capsys.readouterr().err
    assert main(["export", str(ckpt), "--input-shape", "1,15", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "does not fit the model" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_batch_replaces_the_shapes_first_dimension(tmp_path, capsys):
    import onnx

    model, shape = build("mlp")
    ckpt = tmp_path / "mlp.pt"
    save_checkpoint(model, str(ckpt), (1, *shape))
    out = tmp_path / "m.onnx"
    assert main(["export", str(ckpt), "-o", str(out), "--input-shape", "2,16"]) == 0
    assert "input (2, 16)" in capsys.readouterr().out
    assert main(["export", str(ckpt), "-o", str(out), "--input-shape", "2,16", "--batch", "3"]) == 0
    dims = onnx.load(out).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [3, 16]
    assert main(["export", str(ckpt), "-o", str(out), "--input-shape", "3,16,1"]) == 2
    assert "does not fit the model" in capsys.readouterr().err
    # the stored shape without its batch is the other convention: named as such
    cnn, cshape = build("cnn")
    save_checkpoint(cnn, str(tmp_path / "cnn.pt"), (1, *cshape))
    assert main(["export", str(tmp_path / "cnn.pt"), "--input-shape", "3,8,8"]) == 2
    assert "takes the batch first: 1,3,8,8" in capsys.readouterr().err


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


def test_export_file_mode_follows_the_umask_and_partials_are_cleaned(tmp_path, capsys):
    model, shape = build("mlp")
    ckpt = tmp_path / "mlp.pt"
    save_checkpoint(model, str(ckpt), (1, *shape))
    out = tmp_path / "m.onnx"
    dead = tmp_path / "m.onnx.partial-999999999"  # left by a killed export (no such pid)
    alive = tmp_path / "m.onnx.partial-1"  # pid 1 runs: maybe an export in progress
    dead.write_bytes(b"half")
    alive.write_bytes(b"half")
    old = os.umask(0o027)
    try:
        assert main(["export", str(ckpt), "-o", str(out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # 0666 & ~umask, as open() gives
    assert not dead.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", alive.name, "mlp.pt"]


def _count_qonnx_calls(monkeypatch) -> list[int]:
    import qonnx.core.onnx_exec as ox

    calls = [0]
    real = ox.execute_onnx

    def counted(*a, **k):
        calls[0] += 1
        return real(*a, **k)

    monkeypatch.setattr(ox, "execute_onnx", counted)
    return calls


def test_verify_runs_a_batch_1_graph_in_chunks(tmp_path, capsys, monkeypatch):
    """qonnx's cost is per call: a fixed-batch graph runs re-batched, not per sample."""
    model, shape = build("cnn")
    ckpt = tmp_path / "cnn.pt"
    save_checkpoint(model, str(ckpt), (1, *shape))
    out = tmp_path / "cnn.onnx"
    assert main(["export", str(ckpt), "-o", str(out)]) == 0  # batch 1 baked in
    calls = _count_qonnx_calls(monkeypatch)
    assert main(["verify", str(ckpt), str(out), "-n", "300", "--backends", "qonnx"]) == 0
    assert "pass" in capsys.readouterr().out
    assert calls[0] <= 5  # the check of the re-batched copy, then 2 chunks (not 300 calls)


def test_verify_fixed_batch_fallback_and_padding(tmp_path, monkeypatch):
    import sys

    from hwquant.export import to_qcdq, to_qonnx, verify

    V = sys.modules["hwquant.export.verify"]
    model, shape = build("mlp")
    path = to_qonnx(model, torch.zeros(4, *shape), tmp_path / "b4.onnx")
    x = torch.randn(10, *shape)  # not a multiple of 4: the last chunk is padded
    assert verify(model, path, x, backends=("qonnx",)).passed
    qcdq = to_qcdq(model, torch.zeros(4, *shape), tmp_path / "b4.qcdq.onnx")
    assert verify(model, qcdq, x, backends=("qonnx", "onnxruntime")).passed
    monkeypatch.setattr(V, "rebatched", lambda *a: None)  # a graph that cannot be re-batched
    calls = _count_qonnx_calls(monkeypatch)
    assert verify(model, path, x, backends=("qonnx",)).passed
    assert calls[0] == 3  # chunks of its own batch


def test_export_both_formats_from_one_trace(tmp_path, capsys):
    model, shape = build("residual")
    ckpt = tmp_path / "res.pt"
    save_checkpoint(model, str(ckpt), (1, *shape))
    assert main(["export", str(ckpt), "--format", "both", "--dynamic-batch"]) == 0
    out = capsys.readouterr().out
    qonnx, qcdq = tmp_path / "res.qonnx.onnx", tmp_path / "res.qcdq.onnx"
    assert f"wrote {qonnx} (QONNX" in out and f"wrote {qcdq} (QCDQ" in out
    for path, backend in ((qonnx, "qonnx"), (qcdq, "onnxruntime")):
        assert main(["verify", str(ckpt), str(path), "-n", "50", "--backends", backend]) == 0
    capsys.readouterr()
    named = tmp_path / "named.onnx"
    assert main(["export", str(ckpt), "--format", "both", "-o", str(named), "--int4"]) == 0
    assert named.exists() and (tmp_path / "named.qcdq.onnx").exists()
