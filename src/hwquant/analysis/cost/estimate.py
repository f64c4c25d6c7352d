"""LayerRecords + Target → CostReport: folding, accumulators, resources, totals."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from hwquant.analysis.cost import formulas as F
from hwquant.analysis.cost.records import (
    LayerRecord,
    format_bits,
    integer_grid,
    integer_weight_bits,
)
from hwquant.analysis.cost.report import AccumulatorWidths, CostReport, LayerCost, ResourceFit
from hwquant.analysis.cost.target import LayerFolding, Target
from hwquant.spec.formats import APoTFormat, Format, MSQFormat, PowerOfTwoFormat

__all__ = ["accumulator_widths", "choose_folding", "estimate", "with_folding"]

_SHIFT_KINDS = {PowerOfTwoFormat: "pot", APoTFormat: "apot", MSQFormat: "msq"}


# --------------------------------------------------------------------------- folding
def _check_divides(rec: LayerRecord, f: LayerFolding) -> None:
    if rec.MH % f.pe:
        raise ValueError(
            f"folding for layer {rec.name!r}: PE={f.pe} does not divide "
            f"MH={rec.MH} (its output dimension)"
        )
    if rec.MW % f.simd:
        raise ValueError(
            f"folding for layer {rec.name!r}: SIMD={f.simd} does not divide "
            f"MW={rec.MW} (its input dimension / fan-in)"
        )


def choose_folding(rec: LayerRecord, target: Target) -> tuple[int, int, bool]:
    """(PE, SIMD, meets the cycle budget) for one layer.

    An explicit entry in ``target.layers`` must divide the layer's dimensions.
    ``auto`` picks the smallest PE·SIMD whose cycles n_pix·(MH/PE)·(MW/SIMD) fit the
    budget (ties: larger SIMD, as FINN's SetFolding raises SIMD first); when even the
    fully parallel layer is too slow it stays fully parallel and is flagged.
    """
    explicit = target.folding_for(rec.name)
    budget = target.cycle_budget
    if explicit is not None:
        _check_divides(rec, explicit)
        cycles = F.mvau_cycles(rec.MW, rec.MH, explicit.pe, explicit.simd, rec.n_pix)
        return explicit.pe, explicit.simd, target.folding != "auto" or cycles <= budget
    if target.folding == "fully_folded":
        return 1, 1, True
    if target.folding == "fully_parallel":
        return rec.MH, rec.MW, True
    best: tuple[int, int, int] | None = None
    for pe in F.divisors(rec.MH):
        for simd in F.divisors(rec.MW):
            if F.mvau_cycles(rec.MW, rec.MH, pe, simd, rec.n_pix) <= budget:
                key = (pe * simd, -simd, pe)
                if best is None or key < best:
                    best = key
                break  # larger SIMD only costs more at this PE
    if best is None:
        return rec.MH, rec.MW, False
    return best[2], -best[1], True


def with_folding(
    target: Target, folding: Mapping[str, object] | None, names: Sequence[str]
) -> Target:
    """``target`` with extra explicit folding; every named layer must exist."""
    merged = dict(target.layers)
    for k, v in (folding or {}).items():
        merged[str(k)] = LayerFolding.from_value(str(k), v)
    unknown = sorted(set(merged) - set(names))
    if unknown:
        raise ValueError(f"folding names unknown layer {unknown[0]!r}; layers: {', '.join(names)}")
    return dataclasses.replace(target, layers=tuple(merged.items()))


# --------------------------------------------------------------------------- accumulators
def accumulator_widths(rec: LayerRecord, float_bits: int = 32) -> AccumulatorWidths:
    """Data-type, weight-based and exact bounds (integer grids), the A2Q guarantee and
    the minifloat MAC width; ``used`` is the smallest guaranteed width."""
    wf, xf = rec.weight_format, rec.input_format
    acc = AccumulatorWidths(a2q=rec.a2q_bits)
    wgrid, xgrid = integer_grid(wf), integer_grid(xf)
    if wgrid is not None and xgrid is not None:
        N, M = integer_weight_bits(xf), integer_weight_bits(wf)
        signed_in = xgrid[1] < 0
        acc.datatype = F.datatype_bound_bits(rec.fan_in, N, M, signed_in)
        if rec.q is not None:
            l1 = np.abs(rec.q).sum(1)
            acc.weight = max(F.weight_bound_bits(float(v), N, signed_in) for v in l1)
            acc.exact = F.exact_accumulator_bits(rec.q, xgrid[1], xgrid[2])[0]
    if _minifloat(wf) and _minifloat(xf):
        acc.minifloat = F.minifloat_mac_acc_bits(
            xf.exponent_bits, xf.mantissa_bits, wf.exponent_bits, wf.mantissa_bits, rec.fan_in
        )
    bounds = [
        b for b in (acc.datatype, acc.weight, acc.exact, acc.a2q, acc.minifloat) if b is not None
    ]
    acc.used = min(bounds) if bounds else float_bits
    return acc


# --------------------------------------------------------------------------- one layer
def _layer_cost(rec: LayerRecord, target: Target) -> LayerCost:
    W = format_bits(rec.weight_format, target.float_bits)
    A = format_bits(rec.input_format, target.float_bits)
    signed_in = rec.input_format.signed if rec.input_format is not None else True
    pe, simd, meets = choose_folding(rec, target)
    acc = accumulator_widths(rec, target.float_bits)
    in_dsp = target.mult_in_dsp(W, A)
    lutram = target.weights_in_lutram(rec.MW * rec.MH // (pe * simd))
    thr_lutram = target.threshold_memory == "lutram"
    lut = F.mvau_lut_breakdown(
        rec.MW,
        rec.MH,
        pe,
        simd,
        W,
        A,
        acc.used,
        mult_in_dsp=in_dsp,
        out_bits=rec.out_bits,
        weights_in_lutram=lutram,
        thresholds_in_lutram=thr_lutram,
    )
    rho = rec.tile_density(pe, simd)
    lut = _sparse_luts(lut, rho)
    depth = rec.MW * rec.MH // (pe * simd)
    bram = 0 if lutram else F.bram18_count(math.ceil(rho * depth), pe * simd * W)
    if rec.out_bits is not None and not thr_lutram:
        bram += F.threshold_bram18(rec.MH, pe, rec.out_bits, acc.used)
    dsps = F.dsp_count(pe, simd, W, A, target.device_family, signed_in) if in_dsp else 0
    dsps = math.ceil(rho * dsps)
    notes = list(rec.notes)
    if rho < 1.0:
        notes.append(
            f"sparse MVAU: {rho:.3f} of the {pe}×{simd} weight tiles are non-zero; "
            "multiplier, adder-tree, DSP and weight-memory cost scaled by it"
        )
    if not meets:
        notes.append(f"cannot meet {target.cycle_budget} cycles/frame even fully parallel")
    lc = LayerCost(
        name=rec.name,
        op=rec.op,
        MW=rec.MW,
        MH=rec.MH,
        n_pix=rec.n_pix,
        fan_in=rec.fan_in,
        weight_format=rec.weight_format.name if rec.weight_format else f"FLOAT{target.float_bits}",
        input_format=rec.input_format.name if rec.input_format else f"FLOAT{target.float_bits}",
        weight_bits=W,
        input_bits=A,
        out_bits=rec.out_bits,
        macs=rec.macs,
        bops_qonnx=F.mac_bops(rec.macs, A, W, rec.pruned_fraction),
        bops_psqs=F.bops(rec.MH * rec.n_pix, rec.MW, A, W, rec.pruned_fraction),
        pruned_fraction=rec.pruned_fraction,
        weight_memory_bits=rec.n_weights * W,
        activation_memory_bits=rec.input_elems * A,
        accumulator=acc,
        pe=pe,
        simd=simd,
        reuse_factor=(rec.MH // pe) * (rec.MW // simd),
        cycles=F.mvau_cycles(rec.MW, rec.MH, pe, simd, rec.n_pix),
        mult_in_dsp=in_dsp,
        weights_in_lutram=lutram,
        luts=lut.total,
        lut_breakdown=lut.to_dict(),
        dsps=dsps,
        bram18=bram,
        meets_cycle_target=meets,
        notes=notes,
    )
    _minifloat_cost(rec, lc)
    _shift_pe(rec, lc)
    return lc


def _sparse_luts(lut: F.LutBreakdown, rho: float) -> F.LutBreakdown:
    """The FINN MVAU estimate of a unit that skips all-zero PE×SIMD tiles.

    hwquant's sparse-MVAU model (an assumption, not a FINN feature): a tile of the
    folded weight matrix (PE consecutive rows × SIMD consecutive inputs, one
    weight-memory word and one step of the schedule) that is all zero is neither
    stored nor computed. At the same cycles per frame, the unit then time-shares a
    datapath of ρ·PE·SIMD multipliers (ρ the fraction of non-zero tiles) and stores ρ
    of the weight words, so the multiplier, adder-tree and weight-memory terms (and
    DSPs, weight BRAM) scale by ρ; the base, accumulator and threshold terms do not.
    The index logic that skips tiles is not counted. Unstructured sparsity only helps
    where a whole tile happens to be zero.
    """
    if rho >= 1.0:
        return lut
    return dataclasses.replace(
        lut, mult=lut.mult * rho, addertree=lut.addertree * rho, weights=lut.weights * rho
    )


def _minifloat(fmt: Format | None) -> bool:
    return fmt is not None and fmt.is_minifloat


def _minifloat_cost(rec: LayerRecord, lc: LayerCost) -> None:
    wf, xf = rec.weight_format, rec.input_format
    if _minifloat(wf) and _minifloat(xf):
        lc.minifloat_mac_relative_cost = F.minifloat_mac_relative_cost(
            xf.exponent_bits, xf.mantissa_bits, wf.exponent_bits, wf.mantissa_bits, rec.fan_in
        )
        lc.notes.append(
            "minifloat operands: LUTs from the integer MVAU model with the "
            "Kulisch accumulator; see minifloat_mac_relative_cost"
        )
    elif _minifloat(wf) or _minifloat(xf):
        lc.notes.append("mixed minifloat × integer MAC: minifloat accumulator not modelled")


def _shift_pe(rec: LayerRecord, lc: LayerCost) -> None:
    """The layer on a shift-PE accelerator (PoTAcc): its multiplier-design LUT / DSP
    estimate times the measured PYNQ-Z2 ratios (the calibration), with the structure
    of one lane — one shifter (PoT), two shifts and an add (APoT, MSQ) — and its LUTs
    beside a LUT multiplier's for the same operands."""
    fmt = rec.weight_format
    kind = _SHIFT_KINDS.get(type(fmt))
    if kind is None:
        return
    r_lut, r_dsp = F.shift_pe_ratio(kind)
    shifters, adders = F.SHIFT_PE_STRUCTURE[kind]
    max_shift = int(fmt.code_multiplier).bit_length() - 1  # largest term 2^max_shift
    lc.shift_pe = {
        "kind": kind,
        "luts": round(lc.luts * r_lut),
        "dsps": round(lc.dsps * r_dsp),
        "lut_ratio": r_lut,
        "dsp_ratio": r_dsp,
        "structure": f"{shifters} shifter(s), {adders} adder(s) per MAC lane",
        "lane_luts": F.shift_pe_lane_luts(kind, lc.input_bits, max_shift),
        "multiplier_lane_luts": F.finn_lut_multiplier(integer_weight_bits(fmt), lc.input_bits),
    }


# --------------------------------------------------------------------------- whole model
def _fit(resource: str, layers: list[LayerCost], attr: str, budget: int | None) -> ResourceFit:
    used = sum(getattr(lc, attr) for lc in layers)
    top = max(layers, key=lambda lc: getattr(lc, attr))
    share = getattr(top, attr) / used if used else 0.0
    return ResourceFit(resource, used, budget, top.name if used else None, share)


def estimate(
    records: list[LayerRecord],
    target: Target,
    source: str = "",
    folding: Mapping[str, object] | None = None,
) -> CostReport:
    """The CostReport of ``records`` on ``target`` (``folding``: extra explicit
    per-layer (PE, SIMD), overriding the target's)."""
    if not records:
        raise ValueError("nothing to cost: no weight layers were found")
    target = with_folding(target, folding, [r.name for r in records])
    layers = [_layer_cost(r, target) for r in records]
    slowest = max(layers, key=lambda lc: lc.cycles)
    notes = sorted({n for lc in layers for n in lc.notes if n.startswith(("float", "graph: "))})
    if target.toolchain == "hls4ml":
        notes.append(
            "hls4ml: folding given as reuse factor; LUT/BRAM from the FINN-R "
            "datapath model (an approximation)"
        )
    if any(not lc.meets_cycle_target for lc in layers):
        notes.append(f"some layers cannot meet {target.cycle_budget} cycles/frame")
    report = CostReport(
        source=source,
        target=target.to_dict(),
        layers=layers,
        macs=sum(lc.macs for lc in layers),
        bops_qonnx=sum(lc.bops_qonnx for lc in layers),
        bops_psqs=sum(lc.bops_psqs for lc in layers),
        weight_memory_bits=sum(lc.weight_memory_bits for lc in layers),
        activation_memory_bits=sum(lc.activation_memory_bits for lc in layers),
        luts=sum(lc.luts for lc in layers),
        dsps=sum(lc.dsps for lc in layers),
        bram18=sum(lc.bram18 for lc in layers),
        cycles_per_frame=slowest.cycles,
        latency_cycles=sum(lc.cycles for lc in layers),
        fps=target.clock_mhz * 1e6 / slowest.cycles,
        bottleneck_layer=slowest.name,
        resources=[
            _fit("LUT", layers, "luts", target.luts),
            _fit("DSP", layers, "dsps", target.dsps),
            _fit("BRAM18", layers, "bram18", target.bram18),
        ],
        notes=notes,
    )
    if any(lc.shift_pe for lc in layers):
        report.shift_pe = {
            "luts": sum(lc.shift_pe["luts"] if lc.shift_pe else lc.luts for lc in layers),
            "dsps": sum(lc.shift_pe["dsps"] if lc.shift_pe else lc.dsps for lc in layers),
            "source": "PoTAcc PYNQ-Z2 measurements (REFERENCE.md §8), as ratios",
        }
    return report
