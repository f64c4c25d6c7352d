"""The design-space sweep: its points, one point's row, the runners (in process, local
processes, Ray) giving the same results file, resume, and the CLI's errors."""

from __future__ import annotations

import json

import pytest

from hwquant.cli.main import main
from hwquant.spec.formats import IntFormat, MinifloatFormat
from hwquant.sweep import Settings, design_space, evaluate_point, run_sweep
from hwquant.sweep.point import steps_of
from hwquant.sweep.report import comparison, front
from hwquant.sweep.space import formats, minifloats


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    cache = tmp_path_factory.mktemp("models")
    return Settings(techniques=("rtn", "gptq"), epochs=2, cache=str(cache))


def test_every_exmy_with_and_without_subnormals():
    for b in range(3, 9):
        fp = minifloats(b, subnormal=True)
        assert all(f.bits == b and f.exponent_bits >= 2 for f in fp)
        plain = [f for f in fp if not (f.has_inf or f.has_nan)]
        assert sorted(f.exponent_bits for f in plain) == list(range(2, b))
        assert {f.has_subnormal for f in minifloats(b, subnormal=False)} == {False}
    assert {f.name for f in minifloats(8, True)} >= {"FP8_E4M3FN", "FP8_E5M2"}
    pts = design_space(["digits-cnn"])
    assert len({p.key for p in pts}) == len(pts)
    per_side = {b: len(formats("fp", b, "weights")) for b in range(3, 9)}
    n_fp = sum(per_side[w] * per_side[a] for w in range(3, 9) for a in range(3, 9))
    assert sum(p.family == "fp" for p in pts) == n_fp
    assert sum(p.family == "int" for p in pts) == 36
    assert formats("int", 4, "weights") == [IntFormat(4, narrow=True)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"w_bits": [2]}, "weight bits: bit width 2 is outside 3..16"),
        ({"families": ["posit"]}, "unknown format family 'posit'"),
        ({"a_bits": []}, "activation bits: no bit widths given"),
    ],
)
def test_design_space_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        design_space(["digits-cnn"], **kwargs)


def test_technique_and_settings_errors():
    assert steps_of("equalize+gptq+bias_correction") == ["equalize", "gptq", "bias_correction"]
    with pytest.raises(ValueError, match="unknown step 'gptqq'"):
        steps_of("gptqq")
    with pytest.raises(ValueError, match="must come before gptq"):
        steps_of("gptq+equalize")
    with pytest.raises(ValueError, match="calib_rows must be ≥ 1"):
        Settings(calib_rows=0)
    with pytest.raises(ValueError, match="no techniques"):
        Settings(techniques=())


def test_point_row(settings):
    int_pt, fp_pt = design_space(["digits-cnn"], [4], [4], ["int", "fp"])[:2]
    row = evaluate_point(int_pt, settings)
    assert row == evaluate_point(int_pt, settings)  # seeded, single-threaded: the same row
    t = row["techniques"]
    assert row["best"] == max(t, key=lambda k: t[k]["val_sqnr_db"])
    assert row["accuracy"] == t[row["best"]]["accuracy"]
    assert t["gptq"]["val_sqnr_db"] > t["rtn"]["val_sqnr_db"]  # GPTQ beats RTN at W4
    fp = evaluate_point(fp_pt, settings)
    assert fp_pt.weights == MinifloatFormat(2, 1) and fp["weights"] == "FP4_E2M1"
    # the same widths cost more LUTs as minifloats (MAC datapath ×1.2 at least)
    assert fp["mac_luts"] >= 1.2 * row["mac_luts"] and fp["luts"] > row["luts"]
    lo, hi = fp["minifloat_mac_cost"]
    assert 1.2 <= lo <= hi <= 2.8


def test_processes_match_in_process_and_resume(settings, tmp_path):
    pts = design_space(["digits-cnn"], [3], [3, 8], ["int"])
    serial = run_sweep(pts, settings, tmp_path / "a", progress=False)
    parallel = run_sweep(pts, settings, tmp_path / "b", jobs=2, progress=False)
    assert serial == parallel
    for name in ("results.json", "results.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    again = run_sweep(pts, settings, tmp_path / "a", progress=False)  # nothing left to run
    assert again == serial
    assert json.loads((tmp_path / "a" / "timings.json").read_text())["points_run"] == 0
    with pytest.raises(ValueError, match="was made with other settings"):
        run_sweep(pts, Settings(techniques=("rtn",), epochs=2, cache=settings.cache),
                  tmp_path / "a", progress=False)  # fmt: skip
    assert front(serial, "digits-cnn")[0]["key"] == pts[0].key  # fewest LUTs
    assert comparison(serial, "digits-cnn")["cells"] == []  # no minifloat points


def test_cli_sweep_exports_front(tmp_path, capsys):
    out = tmp_path / "s"
    rc = main(["sweep", "--w-bits", "3", "--a-bits", "3", "--families", "int,fp",
               "--techniques", "rtn", "--epochs", "2", "-o", str(out), "--quiet"])  # fmt: skip
    assert rc == 0, capsys.readouterr()
    rows = json.loads((out / "results.json").read_text())["points"]
    assert [r["family"] for r in rows] == ["int", "fp"]
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto and all(r["verified"] and r["mismatched"] == 0 for r in pareto)
    assert (out / "digits-cnn_heatmaps.png").stat().st_size > 0
    assert (out / "digits-cnn_pareto.png").stat().st_size > 0
    assert "cells where the best minifloat / integer wins" in capsys.readouterr().out
    assert (out / "digits-cnn_sqnr_heatmaps.png").stat().st_size > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "resnet"], "unknown sweep model 'resnet'"),
        (["--w-bits", "3-x"], "bit widths '3-x'"),
        (["--techniques", "rtn,gptq+equalize"], "must come before gptq"),
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys, tmp_path):
    assert main(["sweep", *argv, "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


@pytest.mark.slow
def test_ray_matches_local_processes(settings, tmp_path):
    pytest.importorskip("ray")
    pts = design_space(["digits-cnn"], [3, 4], [3], ["int", "fp"])
    local = run_sweep(pts, settings, tmp_path / "local", jobs=2, progress=False)
    on_ray = run_sweep(pts, settings, tmp_path / "ray", jobs=2, ray_address="local", progress=False)
    assert local == on_ray
    assert (tmp_path / "local" / "results.json").read_bytes() == (
        tmp_path / "ray" / "results.json"
    ).read_bytes()
