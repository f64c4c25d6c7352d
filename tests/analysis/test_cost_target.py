"""Target descriptions: TOML loading, validation, built-ins."""

from pathlib import Path

import pytest

from hwquant.analysis.cost.target import TARGETS, LayerFolding, Target, load_target

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path, text):
    p = tmp_path / "t.toml"
    p.write_text(text)
    return p


def test_toml_round_trip(tmp_path):
    p = _write(
        tmp_path,
        """
name = "mine"
device_family = "DSP58"
clock_mhz = 250
luts = 1000
toolchain = "hls4ml"
target_fps = 5000.0
[layers.fc1]
pe = 2
simd = 4
""",
    )
    t = Target.from_toml(p)
    assert (t.name, t.device_family, t.luts, t.toolchain) == ("mine", "DSP58", 1000, "hls4ml")
    assert t.folding_for("fc1") == LayerFolding(2, 4)
    assert t.cycle_budget == 250e6 // 5000
    assert Target.from_dict(t.to_dict()) == t


def test_unknown_field_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"t.toml: unknown target field 'dsp'"):
        Target.from_toml(_write(tmp_path, "dsp = 10\n"))
    with pytest.raises(ValueError, match=r"unknown folding field 'pes' for layer 'fc'"):
        Target.from_dict({"layers": {"fc": {"pes": 2, "simd": 1}}})
    with pytest.raises(ValueError, match=r"folding for layer 'fc' is missing 'simd'"):
        Target.from_dict({"layers": {"fc": {"pe": 2}}})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("device_family", "DSP48", "device_family must be one of"),
        ("toolchain", "vitis", "toolchain must be one of"),
        ("folding", "greedy", "folding must be one of"),
        ("luts", -5, "luts must be a positive int"),
        ("luts", 1.5, "luts must be a positive int"),
        ("clock_mhz", 0, "clock_mhz must be a positive float"),
        ("weight_memory", "uram", "weight_memory must be one of"),
    ],
)
def test_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        Target.from_dict({field: value})


def test_cycles_and_fps_exclusive():
    with pytest.raises(ValueError, match="not both"):
        Target(target_cycles_per_frame=100, target_fps=10.0)
    assert Target().cycle_budget == 1000
    assert Target(target_cycles_per_frame=77).cycle_budget == 77


def test_bad_toml(tmp_path):
    with pytest.raises(ValueError, match="not valid TOML"):
        Target.from_toml(_write(tmp_path, "luts = = 3"))
    with pytest.raises(ValueError, match="cannot read target file"):
        Target.from_toml(tmp_path / "missing.toml")


def test_builtins_and_shipped_files_agree():
    for name in ("pynq-z2", "zcu104", "vck190"):
        assert Target.from_toml(ROOT / "targets" / f"{name}.toml") == TARGETS[name]
    t = load_target(ROOT / "targets" / "example-explicit.toml")
    assert t.toolchain == "hls4ml" and t.folding_for("classifier") == LayerFolding(2, 8)
    assert load_target(None) == Target()
    with pytest.raises(ValueError, match="unknown target 'pynq'"):
        load_target("pynq")


def test_multiplier_and_memory_policy():
    t = Target()
    assert not t.mult_in_dsp(4, 4) and t.mult_in_dsp(8, 4)
    assert not Target(toolchain="hls4ml").mult_in_dsp(8, 8)
    assert Target(mult_style="dsp").mult_in_dsp(2, 2)
    assert t.weights_in_lutram(128) and not t.weights_in_lutram(129)
    assert not Target(weight_memory="bram").weights_in_lutram(1)
