"""``hwquant ptq`` end to end on a small built-in model, and its user errors."""

from __future__ import annotations

import json

import pytest
import torch

from hwquant.checkpoint import load_checkpoint
from hwquant.cli.main import main
from hwquant.datasets import digits


def test_ptq_mlp_writes_a_model_file_a_summary_and_a_verified_qonnx(tmp_path, capsys):
    out, js, onnx_path = tmp_path / "q.pt", tmp_path / "q.json", tmp_path / "q.onnx"
    rc = main(
        [
            "ptq",
            "digits-mlp",
            "--weights",
            "e2m1",
            "--acts",
            "int8",
            "--epochs",
            "2",
            "--algorithms",
            "gptq",
            "-o",
            str(out),
            "--json",
            str(js),
            "--export",
            str(onnx_path),
        ]
    )
    assert rc == 0
    summary = json.loads(js.read_text())
    assert summary["weights"] == "FP4_E2M1" and summary["export"]["passed"]
    assert summary["accuracy"] > 0.8 and len(summary["layer_sqnr_db"]) == 3
    gptq = summary["reports"]["gptq"]["layers"]
    assert all(r["gptq_error"] < r["rtn_error"] for r in gptq)
    model, shape = load_checkpoint(out)  # the file holds what was measured
    x = digits(flat=True).test.dataset.tensors[0]
    from hwquant.training import evaluate

    data = digits(flat=True)
    assert shape == (1, 64) and evaluate(model, data.test) == summary["accuracy"]
    assert "output SQNR" in capsys.readouterr().out
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ptq", "digits-mlp", "--weights", "int"], "unknown format 'int'"),
        (["ptq", "digits-mlp", "--algorithms", "gptq,adarond"], "unknown algorithm 'adarond'"),
        (["ptq", "nothere.pt"], "neither a built-in model"),
    ],
)
def test_ptq_user_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
