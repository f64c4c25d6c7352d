"""``hwquant cost`` and the plots."""

import json

import pytest
from torch import nn

from hwquant.analysis.plots import pareto_front, plot_pareto
from hwquant.checkpoint import save_checkpoint
from hwquant.cli.cost import parse_folding, parse_shape
from hwquant.cli.main import main
from hwquant.nn import QuantLinear
from hwquant.spec import A4U, W4, LayerSpec

PNG = b"\x89PNG"


@pytest.fixture
def checkpoint(tmp_path):
    spec = LayerSpec(input=A4U, weight=W4)
    net = nn.Sequential(QuantLinear(16, 8, spec=spec), nn.ReLU(), QuantLinear(8, 4, spec=spec))
    path = tmp_path / "net.pt"
    save_checkpoint(net, path, (1, 16))
    return path


def test_table(checkpoint, capsys):
    assert main(["cost", str(checkpoint), "--target", "pynq-z2"]) == 0
    out = capsys.readouterr().out
    assert "pynq-z2" in out and "fits the target" in out and "UINT4" in out


def test_json_and_plots(checkpoint, tmp_path, capsys):
    sweep = tmp_path / "sweep.json"
    sweep.write_text(
        json.dumps(
            [
                {"label": "a", "luts": 10, "accuracy": 0.9},
                {"label": "b", "luts": 20, "accuracy": 0.95},
            ]
        )
    )
    png = tmp_path / "cost.png"
    rc = main(
        [
            "cost",
            str(checkpoint),
            "--json",
            "--plot",
            str(png),
            "--sweep",
            str(sweep),
            "--fold",
            "0=2,4",
        ]
    )
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["macs"] == 16 * 8 + 8 * 4 and d["layers"][0]["pe"] == 2 and d["fits"]
    assert png.read_bytes()[:4] == PNG
    assert (tmp_path / "cost_pareto.png").read_bytes()[:4] == PNG


def test_errors_exit_2(checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("lutz = 5\n")
    assert main(["cost", str(checkpoint), "--target", str(bad)]) == 2
    assert "unknown target field 'lutz'" in capsys.readouterr().err
    assert main(["cost", str(checkpoint), "--fold", "0=3,4"]) == 2
    assert "PE=3 does not divide MH=8" in capsys.readouterr().err
    assert main(["cost", str(checkpoint), "--check", "--target", "pynq-z2"]) == 0
    small = tmp_path / "small.toml"
    small.write_text("luts = 100\n")
    assert main(["cost", str(checkpoint), "--check", "--target", str(small)]) == 1
    assert "does not fit" in capsys.readouterr().out


def test_argument_parsing():
    assert parse_shape("1,1,8,8") == (1, 1, 8, 8)
    assert parse_folding(["conv=4,9", "fc=2x8"]) == {"conv": (4, 9), "fc": (2, 8)}
    with pytest.raises(ValueError, match="LAYER=PE,SIMD"):
        parse_folding(["conv=4"])
    with pytest.raises(ValueError, match="comma-separated"):
        parse_shape("a,b")


def test_pareto_front(tmp_path):
    pts = [
        {"luts": 5, "accuracy": 0.5},
        {"luts": 1, "accuracy": 0.6},
        {"luts": 3, "accuracy": 0.9},
        {"luts": 3, "accuracy": 0.8},
        {"luts": 9, "accuracy": 0.9},
    ]
    assert pareto_front(pts, "luts") == [1, 2]
    # an over-budget design (590 DSPs on a 220-DSP part) cannot be on the front
    over = [*pts, {"luts": 4, "accuracy": 0.99, "fits": False}]
    assert pareto_front(over, "luts") == [1, 2]
    with pytest.raises(ValueError, match="no 'bops' field"):
        pareto_front(pts, "bops")
    assert plot_pareto(pts, tmp_path / "p.png").read_bytes()[:4] == PNG


def test_input_shape_takes_the_batch_first(checkpoint, tmp_path, capsys):
    """One convention in every command: the batch dimension first."""
    from hwquant.export.zoo import build

    assert main(["cost", str(checkpoint), "--input-shape", "4,16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] == 16 * 8 + 8 * 4  # per frame
    assert main(["cost", str(checkpoint), "--input-shape", "16"]) == 2
    assert "give the batch first, e.g. 1,16" in capsys.readouterr().err
    model, shape = build("cnn")
    cnn = tmp_path / "cnn.pt"
    save_checkpoint(model, cnn, (1, *shape))
    assert main(["cost", str(cnn), "--input-shape", "3,8,8"]) == 2
    err = capsys.readouterr().err
    assert "without its batch dimension" in err and "(1, 3, 8, 8)" in err
