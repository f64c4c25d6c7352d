"""Declarative hardware target: device family, clock, budgets, toolchain, folding.

A :class:`Target` is a frozen dataclass; load one from TOML (flat keys, plus an
optional ``[layers.<name>]`` table per layer with explicit ``pe`` / ``simd``).
Unknown fields are errors that name the field.

Example:
    >>> t = Target.from_dict({"device_family": "DSP58", "luts": 100_000,
    ...                       "layers": {"conv1": {"pe": 4, "simd": 9}}})
    >>> t.folding_for("conv1"), t.cycle_budget
    (LayerFolding(pe=4, simd=9), 1000)
    >>> Target.from_dict({"lut": 1})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown target field 'lut'; known fields: bram18, clock_mhz, ...
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from hwquant.analysis.cost.formulas import DSP_FAMILIES

__all__ = [
    "FOLDING_POLICIES",
    "TARGETS",
    "TOOLCHAINS",
    "LayerFolding",
    "Target",
    "load_target",
]

TOOLCHAINS = ("finn", "hls4ml")
FOLDING_POLICIES = ("auto", "fully_folded", "fully_parallel")
MULT_STYLES = ("auto", "lut", "dsp")
WEIGHT_MEMORIES = ("auto", "bram", "lutram")
#: Default cycle budget of automatic folding (FINN's SetFolding default).
DEFAULT_CYCLES_PER_FRAME = 1000
#: With ``mult_style="auto"``, multipliers whose operands are all at most this many
#: bits go to LUTs (FINN: 4-bit and narrower in LUTs; hls4ml / Vivado HLS maps
#: products of narrow ap_fixed types, up to about 10 bits, to LUTs — Duarte et al. 2018).
DEFAULT_LUT_MULT_MAX_BITS = {"finn": 4, "hls4ml": 10}


def _one_of(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"Target.{name} must be one of {list(allowed)}, got {value!r}")


def _opt_positive(name: str, value: object, kind: type = int) -> None:
    if value is None:
        return
    ok = isinstance(value, int | float) if kind is float else isinstance(value, int)
    if isinstance(value, bool) or not ok or not math.isfinite(value) or value <= 0:
        raise ValueError(f"Target.{name} must be a positive {kind.__name__} or None, got {value!r}")


@dataclass(frozen=True)
class LayerFolding:
    """Explicit folding of one layer: PE divides the output dimension MH (channels),
    SIMD divides the input dimension MW (fan-in)."""

    pe: int
    simd: int

    def __post_init__(self) -> None:
        for name in ("pe", "simd"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LayerFolding.{name} must be a positive int, got {v!r}")

    @classmethod
    def from_value(cls, layer: str, value: object) -> LayerFolding:
        """From a LayerFolding, a (pe, simd) pair or a {"pe", "simd"} mapping."""
        if isinstance(value, LayerFolding):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"pe", "simd"})
            if unknown:
                raise ValueError(
                    f"unknown folding field {unknown[0]!r} for layer {layer!r}; "
                    "known fields: pe, simd"
                )
            missing = sorted({"pe", "simd"} - set(value))
            if missing:
                raise ValueError(f"folding for layer {layer!r} is missing {missing[0]!r}")
            return cls(value["pe"], value["simd"])
        if isinstance(value, tuple | list) and len(value) == 2:
            return cls(*value)
        raise ValueError(
            f"folding for layer {layer!r} must be (pe, simd) or "
            f"{{pe = .., simd = ..}}, got {value!r}"
        )


@dataclass(frozen=True)
class Target:
    """What the design is built for and how it is folded.

    Attributes:
        name: label for reports.
        device_family: DSP block family, ``DSP48E1`` (7-series), ``DSP48E2``
            (UltraScale/+), ``DSP58`` (Versal).
        clock_mhz: clock frequency (for frames per second).
        luts, dsps, bram18: resource budgets (None: unlimited).
        toolchain: ``finn`` (MVAU/VVAU, PE/SIMD folding) or ``hls4ml`` (the same
            datapath model; folding reported as reuse factor).
        folding: policy for layers without an explicit entry in ``layers``:
            ``auto`` (smallest PE·SIMD meeting the cycle budget), ``fully_folded``
            (PE = SIMD = 1), ``fully_parallel`` (PE = MH, SIMD = MW).
        target_cycles_per_frame / target_fps: the budget of ``auto`` folding (fps is
            converted with the clock); default 1000 cycles, FINN's SetFolding default.
        mult_style: ``lut``, ``dsp`` or ``auto`` (LUTs when every operand has at most
            ``lut_mult_max_bits`` bits; default 4 for FINN, 10 for hls4ml).
        weight_memory: ``bram``, ``lutram`` or ``auto`` (LUTRAM when the weight memory
            is at most ``lutram_max_depth`` words deep, as FINN's embedded mode).
        threshold_memory: where folded activation thresholds live, ``lutram`` (FINN's
            default, costs LUTs growing as 2^B) or ``bram``.
        float_bits: width assumed for float (unquantized) operands.
        layers: explicit per-layer folding, name → LayerFolding.
    """

    name: str = "generic"
    device_family: str = "DSP48E2"
    clock_mhz: float = 200.0
    luts: int | None = None
    dsps: int | None = None
    bram18: int | None = None
    toolchain: str = "finn"
    folding: str = "auto"
    target_cycles_per_frame: int | None = None
    target_fps: float | None = None
    mult_style: str = "auto"
    lut_mult_max_bits: int | None = None
    weight_memory: str = "auto"
    lutram_max_depth: int = 128
    threshold_memory: str = "lutram"
    float_bits: int = 32
    layers: tuple[tuple[str, LayerFolding], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ValueError(f"Target.name must be a str, got {self.name!r}")
        _one_of("device_family", self.device_family, tuple(DSP_FAMILIES))
        _one_of("toolchain", self.toolchain, TOOLCHAINS)
        _one_of("folding", self.folding, FOLDING_POLICIES)
        _one_of("mult_style", self.mult_style, MULT_STYLES)
        _one_of("weight_memory", self.weight_memory, WEIGHT_MEMORIES)
        _one_of("threshold_memory", self.threshold_memory, ("lutram", "bram"))
        _opt_positive("clock_mhz", self.clock_mhz, float)
        _opt_positive("target_fps", self.target_fps, float)
        for name in (
            "luts",
            "dsps",
            "bram18",
            "target_cycles_per_frame",
            "lut_mult_max_bits",
            "lutram_max_depth",
            "float_bits",
        ):
            _opt_positive(name, getattr(self, name))
        if self.clock_mhz is None:
            raise ValueError("Target.clock_mhz must be a positive float, got None")
        if self.target_fps is not None and self.target_cycles_per_frame is not None:
            raise ValueError("Target: give target_cycles_per_frame or target_fps, not both")
        items = self.layers.items() if isinstance(self.layers, Mapping) else self.layers
        layers = tuple((str(k), LayerFolding.from_value(str(k), v)) for k, v in items)
        object.__setattr__(self, "layers", layers)

    # ------------------------------------------------------------------ derived values
    @property
    def cycle_budget(self) -> int:
        """Cycles per frame that ``auto`` folding aims for."""
        if self.target_cycles_per_frame is not None:
            return self.target_cycles_per_frame
        if self.target_fps is not None:
            return max(1, math.floor(self.clock_mhz * 1e6 / self.target_fps))
        return DEFAULT_CYCLES_PER_FRAME

    @property
    def mult_max_lut_bits(self) -> int:
        if self.lut_mult_max_bits is not None:
            return self.lut_mult_max_bits
        return DEFAULT_LUT_MULT_MAX_BITS[self.toolchain]

    def folding_for(self, layer: str) -> LayerFolding | None:
        """The explicit folding of ``layer``, or None."""
        return dict(self.layers).get(layer)

    def mult_in_dsp(self, W: int, A: int) -> bool:
        """Whether W×A multipliers go to DSP blocks."""
        if self.mult_style != "auto":
            return self.mult_style == "dsp"
        return max(W, A) > self.mult_max_lut_bits

    def weights_in_lutram(self, depth: int) -> bool:
        if self.weight_memory != "auto":
            return self.weight_memory == "lutram"
        return depth <= self.lutram_max_depth

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "layers"}
        d["layers"] = {k: {"pe": v.pe, "simd": v.simd} for k, v in self.layers}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> Target:
        """Build from a mapping (e.g. parsed TOML); unknown fields raise ValueError."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a target description must be a table, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(
                    f"unknown target field {key!r}; known fields: {', '.join(sorted(known))}"
                )
        d = dict(d)
        if "layers" in d and not isinstance(d["layers"], Mapping):
            raise ValueError("Target.layers must be a table of layer name → {pe, simd}")
        return cls(**d)

    @classmethod
    def from_toml(cls, path: str | Path) -> Target:
        """Load a target description from a TOML file.

        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "t.toml")
        >>> _ = open(p, "w").write('device_family = "DSP48E1"\\nluts = 53200\\n')
        >>> Target.from_toml(p).luts
        53200
        """
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML: {e}") from None
        except OSError as e:
            raise ValueError(f"cannot read target file {path}: {e}") from None
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


#: Built-in targets (budgets from the vendor product tables; BRAM36 counted as 2 BRAM18).
TARGETS: dict[str, Target] = {
    "generic": Target(),
    "pynq-z2": Target(
        name="pynq-z2", device_family="DSP48E1", clock_mhz=100.0, luts=53_200, dsps=220, bram18=280
    ),
    "zcu104": Target(
        name="zcu104",
        device_family="DSP48E2",
        clock_mhz=200.0,
        luts=230_400,
        dsps=1_728,
        bram18=624,
    ),
    "vck190": Target(
        name="vck190",
        device_family="DSP58",
        clock_mhz=300.0,
        luts=899_840,
        dsps=1_968,
        bram18=1_934,
    ),
}


def load_target(target: Target | str | Path | Mapping | None) -> Target:
    """A Target from an instance, a built-in name (``pynq-z2``, ``zcu104``,
    ``vck190``, ``generic``), a TOML path or a mapping; None gives ``generic``.

    >>> load_target("pynq-z2").dsps
    220
    """
    if target is None:
        return TARGETS["generic"]
    if isinstance(target, Target):
        return target
    if isinstance(target, Mapping):
        return Target.from_dict(target)
    if isinstance(target, str) and target in TARGETS:
        return TARGETS[target]
    path = Path(target)
    if path.suffix == ".toml" or path.exists():
        return Target.from_toml(path)
    raise ValueError(
        f"unknown target {str(target)!r}: not a built-in ({', '.join(TARGETS)}) nor a TOML file"
    )
