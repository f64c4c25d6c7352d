"""Typed cost results: per-layer :class:`LayerCost` and the whole :class:`CostReport`.

Both are plain dataclasses with ``to_dict()`` (JSON-able); the CLI renders them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["AccumulatorWidths", "CostReport", "LayerCost", "ResourceFit"]


@dataclass
class AccumulatorWidths:
    """Accumulator widths of one layer (REFERENCE.md §1, §3).

    ``datatype``: data-type bound (any weights of the type); ``weight``: weight-based
    bound (max over output channels of the trained weights); ``exact``: exact worst
    case of the trained weights (FINN's sizing); ``a2q``: the width A2Q training
    guarantees (None when not accumulator-aware); ``minifloat``: exact (Kulisch)
    minifloat MAC accumulator; ``used``: the width the LUT estimate uses (the
    smallest guaranteed one).
    """

    datatype: int | None = None
    weight: int | None = None
    exact: int | None = None
    a2q: int | None = None
    minifloat: int | None = None
    used: int = 32


@dataclass
class LayerCost:
    """Cost of one weight layer (per frame).

    Two bit-operation counts, each named for its definition (they differ by the
    accumulator additions, so third-party tools that quote one are comparable only
    with that one):

    - ``bops_qonnx``: qonnx's ``inference_cost`` convention, (1 − f_p)·b_a·b_w·MACs
      (f_p the fraction of zero weights; equals ``inference_cost``'s ``total_bops``
      with its default ``discount_sparsity=True``);
    - ``bops_psqs``: Hawks et al. 2021 ("Ps and Qs", REFERENCE.md §6),
      m·n·((1 − f_p)·b_a·b_w + b_a + b_w + log2 n).
    """

    name: str
    op: str
    MW: int
    MH: int
    n_pix: int
    fan_in: int
    weight_format: str
    input_format: str
    weight_bits: int
    input_bits: int
    out_bits: int | None
    macs: int
    bops_qonnx: float
    bops_psqs: float
    pruned_fraction: float
    weight_memory_bits: int
    activation_memory_bits: int
    accumulator: AccumulatorWidths
    pe: int
    simd: int
    reuse_factor: int
    cycles: int
    mult_in_dsp: bool
    weights_in_lutram: bool
    luts: int
    lut_breakdown: dict[str, float]
    dsps: int
    bram18: int
    minifloat_mac_relative_cost: float | None = None
    shift_pe: dict[str, float | int | str] | None = None
    meets_cycle_target: bool = True
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def minifloat_luts(self) -> tuple[float, float, float | None]:
        """(LUTs, MAC-datapath LUTs, relative cost used) with a minifloat × minifloat
        layer's MAC datapath (multipliers, adder tree, accumulator) costed at
        :func:`~hwquant.analysis.cost.formulas.calibrated_minifloat_cost` times the
        integer one; other layers as estimated (relative cost None)."""
        from hwquant.analysis.cost.formulas import calibrated_minifloat_cost

        b = self.lut_breakdown
        mac = b["mult"] + b["addertree"] + b["acc"]
        if self.minifloat_mac_relative_cost is None:
            return float(self.luts), mac, None
        r = calibrated_minifloat_cost(self.minifloat_mac_relative_cost)
        return self.luts + mac * (r - 1.0), mac * r, r


@dataclass
class ResourceFit:
    """One resource against its budget."""

    resource: str
    used: int
    budget: int | None
    dominant_layer: str | None
    dominant_share: float

    @property
    def fits(self) -> bool:
        return self.budget is None or self.used <= self.budget

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"fits": self.fits}


@dataclass
class CostReport:
    """Per-layer costs, totals and whether the design fits its target
    (``bops_qonnx`` / ``bops_psqs``: the two BOPs definitions, see :class:`LayerCost`).

    ``cycles_per_frame`` is the dataflow initiation interval (the slowest layer);
    ``latency_cycles`` adds the layers up (no overlap, an upper bound).
    """

    source: str
    target: dict
    layers: list[LayerCost]
    macs: int
    bops_qonnx: float
    bops_psqs: float
    weight_memory_bits: int
    activation_memory_bits: int
    luts: int
    dsps: int
    bram18: int
    cycles_per_frame: int
    latency_cycles: int
    fps: float
    bottleneck_layer: str
    resources: list[ResourceFit]
    shift_pe: dict[str, float | int | str] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        """True when every budgeted resource is within its budget."""
        return all(r.fits for r in self.resources)

    @property
    def violations(self) -> list[str]:
        """One sentence per resource over budget, naming the dominant layer."""
        return [
            f"{r.resource}: {r.used:,} > budget {r.budget:,} (largest: {r.dominant_layer}, "
            f"{r.dominant_share:.0%})"
            for r in self.resources
            if not r.fits
        ]

    def layer(self, name: str) -> LayerCost:
        for lc in self.layers:
            if lc.name == name:
                return lc
        raise ValueError(
            f"no layer {name!r} in the report; layers: {', '.join(lc.name for lc in self.layers)}"
        )

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["layers"] = [lc.to_dict() for lc in self.layers]
        d["resources"] = [r.to_dict() for r in self.resources]
        d["fits"] = self.fits
        d["violations"] = self.violations
        return d
