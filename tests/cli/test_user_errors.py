"""Probe: every user error of the ``hwquant`` CLI is one line on stderr and exit
status 2, never a traceback, and writes nothing.

Each case runs in-process through ``main()``; a few run in a subprocess, to show
that no traceback reaches the terminal (and to hide an optional package from a
fresh interpreter)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from hwquant.checkpoint import save_checkpoint
from hwquant.cli.main import main
from hwquant.export import to_qonnx
from hwquant.export.zoo import build

PROC = "/proc/hwquant-probe" if os.path.isdir("/proc/self") else None


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    """A folder of inputs: a 16-input MLP checkpoint and its fixed-batch-1 QONNX file,
    a factory checkpoint whose builder cannot be imported any more, and bad files."""
    d = tmp_path_factory.mktemp("probe")
    model, shape = build("mlp")
    save_checkpoint(model, d / "mlp.pt", (1, *shape))
    to_qonnx(model, torch.zeros(1, *shape), d / "mlp.onnx")
    (d / "garbage.onnx").write_bytes(b"this is not an ONNX model")
    (d / "sweep.json").write_text("[1, 2]")
    np.save(d / "wrong_shape.npy", np.zeros((3, 5), np.float32))
    (d / "objects.pkl").write_bytes(pickle.dumps({"x": Path("a")}, protocol=2))  # a class
    (d / "plain.pkl").write_bytes(pickle.dumps({"x": [1, 2]}))  # protocol 4+: torch refuses
    (d / "adir").mkdir()
    _without_weight_scale(d / "mlp.onnx", d / "noscale.onnx")
    _factory_checkpoint(d)
    return d


def _without_weight_scale(src: Path, dst: Path) -> None:
    proto = onnx.load(src)
    g = proto.graph
    inits = {t.name: i for i, t in enumerate(g.initializer)}
    quant = next(n for n in g.node if n.op_type == "Quant" and n.input[0] in inits)
    del g.initializer[inits[quant.input[1]]]
    onnx.save(proto, dst)


def _factory_checkpoint(d: Path) -> None:
    """``factory.pt`` is built by ``hwq_probe_nets:Net``, a module removed after saving."""
    src = d / "src"
    src.mkdir()
    (src / "hwq_probe_nets.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(16, 4)

                def forward(self, x):
                    return self.fc(x)
            """
        )
    )
    sys.path.insert(0, str(src))
    try:
        import hwq_probe_nets

        save_checkpoint(
            hwq_probe_nets.Net(), d / "factory.pt", (1, 16), architecture="hwq_probe_nets:Net"
        )
    finally:
        sys.path.remove(str(src))
        sys.modules.pop("hwq_probe_nets", None)
    (src / "hwq_probe_nets.py").unlink()


# (argv with {d} for the folder, words the one error line must contain)
CASES = [
    (["cost", "{d}/mlp.pt", "--input-shape", "1,17"], "(1, 17) does not fit the model"),
    (["cost", "{d}/mlp.pt", "--input-shape", "16"], "no batch dimension"),
    (["cost", "{d}/mlp.pt", "--input-shape", "1,a"], "comma-separated ints"),
    (["export", "{d}/mlp.pt", "-o", "{d}/no/such/dir/m.onnx"], "does not exist"),
    (["export", "{d}/mlp.pt", "-o", "{d}/adir"], "it is a directory"),
    (["cost", "{d}/mlp.pt", "--plot", "{d}/sweep.json/p.png"], "cannot write plot"),
    (["export", "{d}/mlp.pt", "-o", "{d}/b.onnx", "--batch", "-3"], "argument --batch"),
    (["export", "{d}/mlp.pt", "-o", "{d}/b.onnx", "--batch", "0"], "must be a positive integer"),
    (["export", "{d}/mlp.pt", "-o", "{d}/b.onnx", "--input-shape", "16"], "give the batch first"),
    (["cost", "{d}/mlp.pt", "--plot", "{d}/p.png", "--sweep", "{d}/sweep.json"], "sweep point 0"),
    (["cost", "{d}/mlp.pt", "--sweep", "{d}/sweep.json"], "sweep point 0"),
    (["verify", "{d}/mlp.pt", "{d}/garbage.onnx"], "cannot read"),
    (["verify", "{d}/mlp.pt", "{d}/mlp.onnx", "--inputs", "{d}/missing.npy"], "no inputs file"),
    (["verify", "{d}/mlp.pt", "{d}/mlp.onnx", "--inputs", "{d}/wrong_shape.npy"], "(3, 5)"),
    (["verify", "{d}/mlp.pt", "{d}/mlp.onnx", "--inputs", "{d}/objects.pkl"], "pickled"),
    (["verify", "{d}/mlp.pt", "{d}/mlp.onnx", "--inputs", "{d}/plain.pkl"], "cannot read inputs"),
    (["verify", "{d}/mlp.pt", "{d}/mlp.onnx", "-n", "0"], "argument -n/--n"),
    (["accumulators", "{d}/mlp.pt", "--audit", "--bits", "0"], "argument --bits"),
    (["accumulators", "{d}/mlp.pt", "--audit", "--bits", "-4"], "argument --bits"),
    (["accumulators", "{d}/mlp.pt", "--samples", "0"], "argument --samples"),
    (["accumulators", "{d}/mlp.pt", "--data", "digits"], "the model takes (16,)"),
    (["cost", "{d}/noscale.onnx"], "its scale"),
    (["export", "{d}/factory.pt", "--factory", "hwq_probe_nets:Net"], "cannot import factory"),
    (["export", "{d}/factory.pt", "--factory", "no.such.module:Net"], "not by the factory"),
    (["export", "{d}/factory.pt"], "--factory hwq_probe_nets:Net"),
    (["export", "{d}/mlp.pt", "--format", "onnx"], "invalid choice"),
    (["export", "{d}/mlp.pt", "-o", "{d}/i.onnx", "--int4"], "--int4 is for QCDQ files"),
]
if PROC:  # paths the kernel refuses to create, even for root
    CASES += [
        (["export", "{d}/mlp.pt", "-o", PROC + ".onnx"], "cannot write"),
        (["cost", "{d}/mlp.pt", "--plot", PROC + ".png"], "cannot write plot"),
    ]


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def _one_error_line(err: str, command: str, words: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"hwquant {command}: error: "), lines[0]
    assert words in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(("argv", "words"), CASES, ids=[" ".join(c[0][:4]) for c in CASES])
def test_user_error_is_one_line_and_status_2(d, capsys, argv, words):
    before = _files(d)
    rc = main([a.format(d=d) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    _one_error_line(err, argv[0], words)
    assert _files(d) == before  # no output, no plot, no partial file


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["verify", "{d}/mlp.pt", "{d}/mlp.onnx", "-n", "4"], "install the export extra"),
        (["export", "{d}/mlp.pt", "-o", "{d}/x.onnx"], "install the export extra"),
    ],
)
def test_missing_onnx_names_the_extra(d, capsys, monkeypatch, argv, words):
    monkeypatch.setitem(sys.modules, "onnx", None)
    before = _files(d)
    assert main([a.format(d=d) for a in argv]) == 2
    line = _one_error_line(capsys.readouterr().err, argv[0], words)
    assert "'onnx'" in line and "pip install 'hwquant[export]'" in line
    assert _files(d) == before


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_no_traceback_reaches_the_terminal(d):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "hwquant.cli.main",
            "cost",
            str(d / "mlp.pt"),
            "--input-shape",
            "1,17",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and r.stdout == ""
    _one_error_line(r.stderr, "cost", "does not fit the model")


def test_export_without_qonnx_names_the_extra(d):
    """A fresh interpreter, so nothing has imported qonnx already (an MLP's export no
    longer needs onnxscript: hwquant translates it to ONNX itself)."""
    out = d / "x.onnx"
    code = (
        "import sys; sys.modules['qonnx'] = None\n"
        "from hwquant.cli.main import main\n"
        f"sys.exit(main(['export', {str(d / 'mlp.pt')!r}, '-o', {str(out)!r}]))"
    )
    r = _run(code)
    assert r.returncode == 2
    line = _one_error_line(r.stderr, "export", "'qonnx'")
    assert "pip install 'hwquant[export]'" in line
    assert not out.exists()


def test_a_bug_still_shows_its_traceback(d, monkeypatch):
    """Only user errors are turned into one line: anything else propagates."""
    import hwquant.cli.cost as cost_cli

    def broken(*a, **k):
        raise KeyError("a bug")

    monkeypatch.setattr(cost_cli, "parse_folding", broken)
    with pytest.raises(KeyError):
        main(["cost", str(d / "mlp.pt")])
