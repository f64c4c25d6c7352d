"""Costs that see sparsity: BOPs (both definitions) on pruned models and their
exports, qonnx's inference_cost with its sparsity discount, the sparse FINN MVAU."""

from __future__ import annotations

import pytest
import torch

from hwquant.algorithms import prune
from hwquant.algorithms.prune import PruneConfig
from hwquant.analysis import Target, cost
from hwquant.analysis.cost import formulas as F
from hwquant.api import quantize
from hwquant.models import MLP
from hwquant.spec import A4U, W4, Recipe


def _pruned(structure: str = "unstructured", fraction: float = 0.8) -> torch.nn.Module:
    torch.manual_seed(0)
    m = quantize(MLP((16, 64, 32, 32, 5)), Recipe.uniform(weights=W4, activations=A4U))
    m(torch.randn(64, 16))
    block = (4, 8) if structure == "block" else None
    excl = ("layers.6",) if structure == "block" else ()
    cfg = PruneConfig(fraction, scope="layer", structure=structure, block=block, exclude=excl)
    prune.apply(m, None, cfg)
    return m.eval()


def test_bops_use_the_pruned_fraction():
    m = _pruned()
    r = cost(m, (1, 16))
    for lc in r.layers:
        assert lc.bops_psqs == F.bops(lc.MH, lc.MW, 4, 4, lc.pruned_fraction)
        assert lc.bops_qonnx == F.mac_bops(lc.macs, 4, 4, lc.pruned_fraction)


def test_inference_cost_with_sparsity_discount_equals_hwquant(tmp_path):
    pytest.importorskip("qonnx")
    from qonnx.util.inference_cost import inference_cost

    from hwquant.export import to_qonnx

    m = _pruned()
    path = to_qonnx(m, torch.randn(1, 16), tmp_path / "pruned.onnx")
    q = inference_cost(str(path), discount_sparsity=True)["total_cost"]
    ours, from_file = cost(m, (1, 16)), cost(path)
    assert q["total_bops"] == pytest.approx(ours.bops_qonnx, rel=1e-12)
    assert from_file.bops_qonnx == pytest.approx(ours.bops_qonnx, rel=1e-12)
    zeros = sum(lc.pruned_fraction * lc.MW * lc.MH for lc in ours.layers)
    assert q["total_mem_w_elems"] == pytest.approx(4256 - zeros, abs=1e-6)
    dense = inference_cost(str(path), discount_sparsity=False)["total_cost"]
    assert dense["total_macs"] == ours.macs


def test_hardware_shaped_blocks_drop_luts_and_unstructured_barely():
    t = Target(weight_memory="lutram", folding="fully_folded")
    folding = {"layers.0": (4, 8), "layers.2": (4, 8), "layers.4": (4, 8), "layers.6": (5, 8)}
    block = cost(_pruned("block", 0.75), (1, 16), t, folding=folding)
    unstr = cost(_pruned("unstructured", 0.75), (1, 16), t, folding=folding)
    torch.manual_seed(0)
    dense_m = quantize(MLP((16, 64, 32, 32, 5)), Recipe.uniform(weights=W4, activations=A4U))
    dense_m(torch.randn(64, 16))
    dense = cost(dense_m.eval(), (1, 16), t, folding=folding)
    b0, u0, d0 = block.layers[1], unstr.layers[1], dense.layers[1]
    assert b0.lut_breakdown["mult"] < 0.5 * d0.lut_breakdown["mult"]
    assert u0.lut_breakdown["mult"] > 0.9 * d0.lut_breakdown["mult"]  # few all-zero tiles
    assert block.luts < unstr.luts < dense.luts + 1
    assert any("sparse MVAU" in n for n in b0.notes)


def test_tile_density_counts_tiles_with_a_nonzero():
    m = _pruned("block", 0.5)
    from hwquant.analysis.cost import read_records

    recs, _ = read_records(m, (1, 16))
    rec = recs[1]
    assert rec.tile_density(4, 8) == 0.5  # half the tiles pruned (codes rounding to 0 aside)
    assert rec.tile_density(1, 1) == 1 - rec.pruned_fraction
    assert rec.tile_density(rec.MH, rec.MW) == 1.0
