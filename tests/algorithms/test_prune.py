"""Pruning: masks, structures, schedules, rewinding, persistence, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hwquant.algorithms import get, prune
from hwquant.algorithms.prune import PruneConfig
from hwquant.api import quantize
from hwquant.checkpoint import load_checkpoint, save_checkpoint
from hwquant.models import MLP
from hwquant.nn import QuantLinear
from hwquant.spec import A8U, W4, W8, BipolarFormat, LayerSpec, QuantSpec, Recipe


def _model(seed: int = 0, w=W8) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = quantize(MLP((16, 64, 32, 32, 5)), Recipe.uniform(weights=w, activations=A8U))
    m(torch.randn(64, 16))  # activation scales from a first batch
    return m


def _pruned_counts(model) -> dict[str, int]:
    return {n: int((~m).sum()) for n, m in prune.masks(model).items()}


def test_registered():
    algo = get("prune")
    assert algo.config_type is PruneConfig and not algo.needs_data


def test_global_unstructured_fraction_and_zeros():
    m = _model()
    r = prune.apply(m, None, PruneConfig(fraction=0.6))
    total = sum(layer.n_weights for layer in r.layers)
    assert sum(layer.n_pruned for layer in r.layers) == int(0.6 * total)
    for name, s in prune.sparsity(m).items():
        mask = prune.masks(m)[name]
        assert s == float((~mask).sum()) / mask.numel()  # zeros are exactly the mask


def test_per_layer_scope_prunes_every_layer_alike():
    m = _model()
    r = prune.apply(m, None, PruneConfig(fraction=0.5, scope="layer"))
    assert [layer.n_pruned for layer in r.layers] == [w // 2 for w in (1024, 2048, 1024, 160)]


def test_masks_only_grow_and_schedule_reaches_the_target():
    m = _model()
    before = None
    fractions = prune.schedule(0.989, 0, per_step=0.1)
    assert len(fractions) == 10 and fractions[-1] == 0.989
    for f in fractions:
        prune.apply(m, None, PruneConfig(fraction=f))
        masks = prune.masks(m)
        if before is not None:
            assert all(bool((masks[n] <= before[n]).all()) for n in masks)  # never unpruned
        before = masks
    kept = sum(int(v.sum()) for v in before.values())
    assert kept == 4256 - int(0.989 * 4256)


def test_channel_pruning_removes_whole_rows():
    m = _model()
    prune.apply(m, None, PruneConfig(fraction=0.25, structure="channel", layers=("layers.0",)))
    mask = prune.masks(m)["layers.0"]
    rows = mask.all(1) | (~mask).all(1)
    assert bool(rows.all()) and int((~mask).all(1).sum()) == 16


def test_block_pruning_zeroes_whole_pe_simd_tiles():
    m = _model()
    r = prune.apply(
        m, None, PruneConfig(fraction=0.5, structure="block", block=(4, 8), exclude=("layers.6",))
    )
    for name in ("layers.0", "layers.2", "layers.4"):
        w = dict(m.named_modules())[name].weight.detach()
        mh, mw = w.shape
        tiles = (w != 0).reshape(mh // 4, 4, mw // 8, 8).any(dim=(1, 3))
        dense = (w != 0).reshape(mh // 4, 4, mw // 8, 8).all(dim=(1, 3))
        assert bool((tiles == dense).all())  # each tile all zero or all kept
    assert r.pruned_fraction == 0.5


def test_masks_survive_training_steps_with_momentum():
    m = _model()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x, y = torch.randn(64, 16), torch.randint(0, 5, (64,))
    for _ in range(3):  # build up momentum before pruning
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    prune.apply(m, None, PruneConfig(fraction=0.8))
    masks = prune.masks(m)
    layer = m.layers[0]
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        assert bool((layer.weight.grad[~masks["layers.0"]] == 0).all())
        opt.step()
        assert bool((layer.quant_weight()[~masks["layers.0"]] == 0).all())
    m.eval()  # leaving training mode restores exact zeros in the parameter
    for name, mod in m.named_modules():
        if name in masks:
            assert bool((mod.weight[~masks[name]] == 0).all())


def test_model_file_round_trip_keeps_masks(tmp_path):
    m = _model()
    prune.apply(
        m, None, PruneConfig(fraction=0.7, structure="block", block=(4, 8), exclude=("layers.6",))
    )
    m.eval()
    path = tmp_path / "pruned.pt"
    save_checkpoint(m, path, (1, 16))
    loaded, _ = load_checkpoint(path)
    a, b = prune.masks(m), prune.masks(loaded)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(8, 16)
    assert torch.equal(loaded(x), m(x))
    # the loaded model trains with its masks
    loaded.train()
    loaded(x).sum().backward()
    assert bool((loaded.layers[0].weight.grad[~b["layers.0"]] == 0).all())


def test_rewind_restores_initial_weights_and_keeps_masks():
    m = _model()
    init = prune.snapshot(m)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    prune.apply(m, None, PruneConfig(fraction=0.5))
    masks = prune.masks(m)
    prune.rewind(m, init)
    w = m.layers[0].weight
    keep = masks["layers.0"]
    assert torch.equal(w[keep], init["layers.0.weight"][keep])
    assert bool((w[~keep] == 0).all())
    assert torch.equal(prune.masks(m)["layers.0"], keep)


def test_exported_weights_hold_the_zeros(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from hwquant.export import to_qonnx

    m = _model()
    prune.apply(m, None, PruneConfig(fraction=0.9))
    m.eval()
    path = to_qonnx(m, torch.randn(1, 16), tmp_path / "p.onnx")
    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    masks = prune.masks(m)
    by_shape = {tuple(mod.weight.shape): n for n, mod in m.named_modules() if n in masks}
    seen = 0
    for arr in inits.values():
        name = by_shape.get(tuple(arr.shape)) or by_shape.get(tuple(arr.shape[::-1]))
        if name is None or arr.size < 100:
            continue
        zeros = int((arr == 0).sum())
        assert zeros == int((~masks[name]).sum())
        seen += 1
    assert seen == 4


def test_accumulator_bounds_use_the_pruned_weights():
    from hwquant.analysis import cost

    m = _model(w=W4)
    dense = cost(m, (1, 16))
    prune.apply(m, None, PruneConfig(fraction=0.9))
    sparse = cost(m, (1, 16))
    masks = prune.masks(m)
    for d, s in zip(dense.layers, sparse.layers, strict=True):
        assert s.accumulator.exact <= d.accumulator.exact
        # zero codes: the pruned weights plus any that round to zero
        assert s.pruned_fraction >= float((~masks[s.name]).float().mean())
    assert sparse.layers[0].accumulator.weight < dense.layers[0].accumulator.weight


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5, float("nan"), True])
def test_fraction_outside_the_range(fraction):
    with pytest.raises(ValueError, match=r"PruneConfig.fraction must be a number in \[0, 1\)"):
        PruneConfig(fraction=fraction)


def test_block_that_does_not_divide():
    m = _model()
    with pytest.raises(ValueError, match=r"block 3×8 does not divide layer 'layers\.0'"):
        prune.apply(m, None, PruneConfig(0.5, structure="block", block=(3, 8)))
    assert prune.masks(m) == {}  # nothing pruned


@pytest.mark.parametrize("block", [None, (0, 4), (4,), "4x8"])
def test_bad_block_shape(block):
    with pytest.raises(ValueError, match=r"PruneConfig\.block"):
        PruneConfig(0.5, structure="block", block=block)


def test_layer_without_weights():
    m = _model()
    with pytest.raises(ValueError, match=r"layer 'layers.1' \(ReLU\) has no weights to prune"):
        prune.apply(m, None, PruneConfig(0.5, layers=("layers.1",)))
    with pytest.raises(ValueError, match="unknown module 'nope'"):
        prune.apply(m, None, PruneConfig(0.5, layers=("nope",)))


def test_float_layer_and_format_without_zero():
    with pytest.raises(ValueError, match="quantize the model first"):
        prune.apply(torch.nn.Sequential(torch.nn.Linear(4, 2)), None, PruneConfig(0.5))
    spec = QuantSpec(BipolarFormat(), W4.granularity, W4.scale)
    net = torch.nn.Sequential(QuantLinear(4, 2, spec=LayerSpec(weight=spec)))
    with pytest.raises(ValueError, match="has no zero level"):
        prune.apply(net, None, PruneConfig(0.5))


def test_schedules():
    assert prune.schedule(0.5, 5) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    g = prune.schedule(0.9, 4, kind="geometric")
    assert g[-1] == pytest.approx(0.9) and np.all(np.diff(g) > 0)
    with pytest.raises(ValueError, match="final must be in"):
        prune.schedule(1.0, 3)
    with pytest.raises(ValueError, match="kind must be"):
        prune.schedule(0.5, 3, kind="cubic")


def test_qap_study_smoke(tmp_path):
    """The reference study runs end to end at a toy size and writes its outputs."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parents[2] / "examples" / "pruning" / "qap_study.py"
    spec = importlib.util.spec_from_file_location("qap_study", path)
    study = importlib.util.module_from_spec(spec)
    sys.modules["qap_study"] = study  # dataclasses look their module up
    try:
        spec.loader.exec_module(study)
    finally:
        sys.modules.pop("qap_study", None)
    argv = ["--samples", "600", "--epochs", "1", "--step-epochs", "1", "--steps", "1"]
    argv += ["--bits", "4", "--qap-bits", "4", "--rewind-bits", "4", "--out", str(tmp_path)]
    points = study.main(argv)
    families = {p.family for p in points}
    assert {"QAT only", "pruning only", "QAP rewind, unstructured"} <= families
    assert all(0 <= p.efficiency <= 1 and p.luts > 0 for p in points)
    assert (tmp_path / "qap_study.png").stat().st_size > 0


def test_conv_blocks_follow_finn_column_order():
    from hwquant.nn import QuantConv2d

    torch.manual_seed(0)
    net = torch.nn.Sequential(QuantConv2d(2, 8, 3, spec=LayerSpec(weight=W4)))
    r = prune.apply(net, None, PruneConfig(0.5, structure="block", block=(2, 9)))
    assert r.layers[0].n_blocks == 8 and r.layers[0].n_blocks_pruned == 4
    # FINN's MVAU matrix: [C_out, kh·kw·C_in], kernel position major
    m = (net[0].weight != 0).permute(0, 2, 3, 1).reshape(8, 18)
    tiles = m.reshape(4, 2, 2, 9)
    assert bool((tiles.any(dim=(1, 3)) == tiles.all(dim=(1, 3))).all())
