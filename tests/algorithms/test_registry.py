"""The algorithm registry (hwquant.algorithms.common) and ``hwquant apply``, which
runs a registered algorithm on a model file."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import hwquant
from hwquant.algorithms import common, get, names
from hwquant.analysis.accumulators import accumulators
from hwquant.checkpoint import load_checkpoint, save_checkpoint
from hwquant.cli.main import main
from hwquant.models import MLP
from hwquant.spec import A2Q, A8U, IntFormat, Recipe


def test_every_algorithm_module_is_registered_with_a_config_and_report():
    import importlib
    import pkgutil

    import hwquant.algorithms as pkg

    assert {"a2q_ep_init", "a2q_ptq", "fold_bn", "gptq"} <= set(names())
    for info in pkgutil.iter_modules(pkg.__path__):  # each algorithm file registers itself
        module = importlib.import_module(f"hwquant.algorithms.{info.name}")
        if hasattr(module, "apply"):
            assert any(get(n).apply is module.apply for n in names()), info.name
            assert hasattr(pkg, info.name), f"hwquant.algorithms does not import {info.name}"
    for name in names():
        algo = get(name)
        assert algo.summary, name
        cfg = common.config_from(algo.config_type)
        assert isinstance(cfg, algo.config_type)


def test_run_checks_data_and_config_fields():
    m = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="needs calibration data"):
        get("a2q_ptq").run(m)
    with pytest.raises(ValueError, match="A2QPTQConfig has no field 'mthod'"):
        get("a2q_ptq").run(m, torch.zeros(1, 4), {"mthod": "ep"})
    with pytest.raises(ValueError, match="algorithm 'fold_bn' is registered twice"):
        common.register("fold_bn", object, needs_data=False)(lambda m, d, c: None)


def test_batches_refuse_nan_and_empty_data():
    with pytest.raises(ValueError, match="batch 1 holds 2 NaN/inf"):
        common.batches([torch.zeros(2), torch.tensor([float("nan"), float("inf")])])
    with pytest.raises(ValueError, match="got no batches"):
        common.batches([])
    assert len(common.batches([torch.zeros(1)] * 5, 3)) == 3


def test_eval_mode_restores_each_module_flag_even_on_error():
    m = nn.Sequential(nn.Dropout(), nn.Linear(2, 2))
    m[1].eval()  # a half-frozen model: the flags differ per module
    with pytest.raises(RuntimeError), common.eval_mode(m):
        assert not any(x.training for x in m.modules())
        raise RuntimeError
    assert [x.training for x in m.modules()] == [True, True, False]


def test_captured_inputs_sees_the_input_and_removes_its_hook():
    lin = nn.Linear(3, 1)
    seen = []
    with common.captured_inputs(lin, lambda mod, x: seen.append(x.shape)):
        lin(torch.zeros(5, 3))
    lin(torch.zeros(2, 3))
    assert seen == [torch.Size([5, 3])] and not lin._forward_pre_hooks


@pytest.fixture
def a2q_file(tmp_path):
    torch.manual_seed(0)
    spec = A2Q(IntFormat(4), accumulator_bits=12)
    model = hwquant.quantize(MLP((64, 16, 10)), Recipe.uniform(spec, A8U))
    model(torch.randn(8, 64))  # activation scales from a first batch
    save_checkpoint(model, tmp_path / "m.pt", (1, 64))
    return tmp_path


def test_cli_apply_a2q_ptq_writes_a_model_whose_accumulators_cannot_overflow(a2q_file, capsys):
    out = a2q_file / "ptq.pt"
    rc = main(
        [
            "apply",
            "a2q_ptq",
            str(a2q_file / "m.pt"),
            "-o",
            str(out),
            "--data",
            "digits",
            "--set",
            "method=ep",
            "--batches",
            "2",
        ]
    )
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["algorithm"] == "a2q_ptq"
    assert all(layer["ok"] for layer in printed["report"]["layers"])
    model, shape = load_checkpoint(out)
    assert shape == (1, 64)
    rows = [r for r in accumulators(model).layers if r.a2q_bits is not None]
    assert rows and all(r.exact_bits <= r.a2q_bits == 12 for r in rows)


def test_cli_apply_user_errors_are_one_line(a2q_file, capsys):
    base = ["apply", "a2q_ptq", str(a2q_file / "m.pt"), "-o", str(a2q_file / "x.pt")]
    for extra, message in [
        ([], "needs calibration data"),
        (["--data", "digits", "--set", "nope"], "--set takes FIELD=VALUE"),
        (["--data", "digits", "--set", "mthod=ep"], "has no field 'mthod'"),
        (["--data", str(a2q_file / "none.npy")], "no calibration data file"),
    ]:
        rc = main(base + extra)
        err = capsys.readouterr().err
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (a2q_file / "x.pt").exists()
