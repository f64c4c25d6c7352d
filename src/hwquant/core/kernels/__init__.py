"""The compiled CPU kernels behind :func:`hwquant.core.grid.fake_quantize`, the A2Q
weight quantizer and the bias on the accumulator scale.

For a saturating integer grid without zero point, rounding half to even or toward
zero, fake quantization on the CPU runs as one C++ loop with one autograd node
(``fake_quant.cpp``) instead of about seven tensor ops and a Python autograd node;
the A2Q / A2Q+ weight node likewise (``a2q.cpp``), and a layer's bias on the
accumulator scale with its A2Q clip (``bias.cpp``); ``fake_quant_tangent`` gives a
first convolution x̂ and ∂x̂/∂s in one pass (:mod:`hwquant.nn.conv`). The values and gradients are
those of the PyTorch formula, bit for bit (tested); a QAT step of a small MLP takes
about a third less time. ``bindings.cpp`` makes them one Python module (pybind11:
a call costs about 0.3 µs, a ``torch.ops`` call about 2.5 µs).

The kernels are built from source on first use with PyTorch's extension builder
(``torch.utils.cpp_extension.load``: a C++ compiler and ``ninja``; about 20 s, once
per machine and kernel version, cached in :func:`build_directory`). ``make`` builds
them while setting up (``python -m hwquant.core.kernels``). Where they cannot be
built, hwquant warns once, naming the reason, and uses the PyTorch formula (same
results, slower steps); :func:`enable` ``(False)`` chooses that path without the
warning.

They serve plain CPU tensors in eager mode only: CUDA tensors, tensor subclasses,
tracing (``torch.compile``, ``torch.export``, ``torch.fx``) and ``torch.func``
transforms (``grad``, ``vmap``) take the PyTorch formula, which those tools understand.

>>> import torch
>>> y = fake_quant(torch.tensor([0.26, -3.0, 9.0]), torch.tensor(0.25), -8.0, 7.0, HALF_EVEN)
>>> y is None or y.tolist() == [0.25, -2.0, 1.75]
True
>>> y = fake_quant(torch.tensor([0.26]), torch.tensor(-2.0), -8.0, 7.0, HALF_EVEN, EXP2_SCALE)
>>> y is None or y.tolist() == [0.25]
True
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "ABS_SCALE",
    "EXP2_SCALE",
    "HALF_EVEN",
    "SCALE",
    "TOWARD_ZERO",
    "a2q_bias_range",
    "a2q_fake_quant",
    "accumulator_bias",
    "available",
    "build_directory",
    "describe",
    "enable",
    "fake_quant",
    "fake_quant_tangent",
    "load",
    "unavailable_reason",
]

#: rounding codes of the kernel
HALF_EVEN, TOWARD_ZERO = 0, 1
#: scale codes: the kernel's s from the tensor passed, p: p, |p| or 2^p
SCALE, ABS_SCALE, EXP2_SCALE = 0, 1, 2

SOURCES = [
    Path(__file__).with_name(f) for f in ("fake_quant.cpp", "a2q.cpp", "bias.cpp", "bindings.cpp")
]
NAME = "hwquant_kernels"
# IEEE semantics kept: no fast-math; -fno-trapping-math only lets the compiler
# vectorize the clamp / select (FP exceptions are never observed here).
# -fopenmp-simd: only the `omp simd` loop hints (no OpenMP runtime).
CFLAGS = ["-O3", "-fno-trapping-math", "-ffp-contract=off", "-fopenmp-simd"]

_PLAIN = (Tensor, torch.nn.Parameter)
# What torch says when a kernel runs inside a torch.func transform (grad, vjp, ...),
# whose tensors are wrapped in C++ (their Python type stays Tensor, and torch has no
# public test for them): a C++ autograd node refuses to run, a raw loop finds no
# storage. The caller then takes the formula (vmap runs the kernels per sample).
_TRANSFORM_ERRORS = ("functorch transforms", "doesn't have storage")
_state: dict = {"op": None, "tried": False, "enabled": True, "why": ""}
_op = None  # the loaded module while enabled (the per-call fast path reads only this)
_is_compiling = torch.compiler.is_compiling


def enable(on: bool = True) -> None:
    """Use the compiled kernel where it applies (the default), or never (``False``:
    always the PyTorch formula, e.g. to compare the two, or without a compiler)."""
    global _op
    _state["enabled"] = bool(on)
    _op = _state["op"] if on else None


def available() -> bool:
    """Whether the kernel is loaded (building it first if needed)."""
    return load() is not None


def unavailable_reason() -> str:
    """Why the kernel is not in use ('' when it is)."""
    load()
    return "" if _state["op"] is not None else _state["why"] or "disabled by enable(False)"


def describe() -> str:
    """``"compiled"``, or ``"unavailable (why)"`` (benchmarks print it: the numbers
    of the two paths differ)."""
    return "compiled" if available() else f"unavailable ({unavailable_reason()})"


def load():
    """The compiled module (``fake_quant``, ``a2q_fake_quant``, ``a2q_bias_range``,
    ``accumulator_bias``: each returns None where it does not serve its arguments),
    or None (not buildable, or disabled)."""
    global _op
    if not _state["enabled"]:
        return None
    if not _state["tried"]:
        _state["tried"] = True
        try:
            _state["op"] = _build()
        except Exception as e:  # no compiler, no ninja, read-only cache, ...
            _state["why"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}"
            warnings.warn(
                f"hwquant: the compiled CPU fake-quantization kernel is unavailable "
                f"({_state['why']}); using PyTorch ops instead (same results, slower "
                "training steps). hwquant.core.kernels.enable(False) silences this.",
                RuntimeWarning,
                stacklevel=3,
            )
    _op = _state["op"]
    return _op


def build_directory() -> Path:
    """Where the kernel is built and cached: ``$TORCH_EXTENSIONS_DIR/hwquant`` if set,
    else ``~/.cache/hwquant``, one folder per torch version and Python."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    base = Path(root) / "hwquant" if root else Path.home() / ".cache" / "hwquant"
    return base / f"kernels-torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}"


def _build():
    from torch.utils import cpp_extension

    folder = build_directory()
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if not any(folder.glob(f"{NAME}*.so")):
        print("hwquant: compiling its CPU kernel (once, about 20 s)", file=sys.stderr)
    module = cpp_extension.load(
        name=NAME,
        sources=[str(f) for f in SOURCES],
        extra_cflags=CFLAGS,
        build_directory=str(folder),
        is_python_module=True,
        verbose=False,
    )
    _state["build_s"] = time.monotonic() - started
    return module


def _plain(a, b, c=None) -> bool:
    """Plain tensors (no subclass, no Python number; ``c`` may be None) in eager mode:
    what the module's functions may see (they check device, dtype and shapes)."""
    return (
        type(a) in _PLAIN
        and type(b) in _PLAIN
        and (c is None or type(c) in _PLAIN)
        and not _is_compiling()
    )


def fake_quant(
    x: Tensor, s, lo: float, hi: float, rounding: int, scale: int = SCALE
) -> Tensor | None:
    """s·round(clamp(x/s, lo, hi)) with the straight-through / LSQ gradients, by the
    compiled kernel; None where it does not apply (the caller uses the formula): it
    serves CPU float32 / float64 tensors of one dtype, s broadcasting to x's shape.
    ``scale``: what ``s`` holds, the scale (``SCALE``) or its parameter p with
    s = |p| (``ABS_SCALE``) or s = 2^p (``EXP2_SCALE``)."""
    if not _plain(x, s):
        return None
    return _call("fake_quant", x, s, lo, hi, rounding, scale)


def fake_quant_tangent(
    x: Tensor, s: Tensor, lo: float, hi: float, rounding: int
) -> tuple[Tensor, Tensor] | None:
    """(x̂, ∂x̂/∂s) of fake quantization with one scale ``s``, without autograd, in one
    pass: the values of :func:`hwquant.core.grid.fake_quantize_tangent`; None where the
    kernel does not apply (CPU float32 / float64 of one dtype, ``s`` one value)."""
    if not _plain(x, s):
        return None
    return _call("fake_quant_tangent", x, s, lo, hi, rounding)


def _first_load():
    """The module on a first call (building it if needed), else None at once."""
    return None if _state["tried"] or not _state["enabled"] else load()


def _call(name: str, *args):
    """The module's function ``name`` on args; None where the module is not loaded or
    inside a torch.func transform (see _TRANSFORM_ERRORS)."""
    op = _op if _op is not None else _first_load()
    if op is None:
        return None
    try:
        return getattr(op, name)(*args)
    except RuntimeError as e:
        if not any(m in str(e) for m in _TRANSFORM_ERRORS):
            raise
        return None


def a2q_fake_quant(
    v: Tensor,
    gamma: Tensor,
    p: Tensor,
    kind: int,
    bound: float,
    zero_centre: bool,
    lo: float,
    hi: float,
) -> Tensor | None:
    """The A2Q / A2Q+ weight fake quantization of v [C, ...] (rows: the output
    channels, axis 0) as one compiled node, from the parameters γ [C] (a = 2^γ) and
    p (one value per row; s = p, |p| or 2^p for ``kind`` ``SCALE`` / ``ABS_SCALE`` /
    ``EXP2_SCALE``): the values and gradients (for v, γ and p) of
    ``hwquant.nn.a2q._A2QFakeQuant`` fed with torch.exp2(γ) and s(p); None where the
    kernel does not apply."""
    if not _plain(v, gamma, p):
        return None
    return _call("a2q_fake_quant", v, gamma, p, kind, bound, zero_centre, lo, hi)


def a2q_bias_range(
    w_rows: Tensor, s: Tensor, x_min: int, x_max: int, bits: int
) -> tuple[Tensor, Tensor] | None:
    """Per row of the fake-quantized weight rows ``w_rows`` [C, K] (codes round(ŵ/s),
    ``s`` one value or [C]), the bias codes (lo, hi), int64 [C], that keep b + Σ x·q in
    a ``bits``-bit register for x ∈ [x_min, x_max]: the values of
    ``hwquant.core.accumulator.bias_code_range(*worst_case_range(q, x_min, x_max), bits)``
    in one pass (integer sums, exact); None where the kernel does not apply."""
    if not _plain(w_rows, s) or not 2 <= bits <= 62:
        return None
    return _call("a2q_bias_range", w_rows, s, x_min, x_max, bits)


def accumulator_bias(
    bias: Tensor,
    p_in: Tensor,
    kind_in: int,
    p_w: Tensor,
    kind_w: int,
    lo: float,
    hi: float,
    rounding: int,
    w_rows: Tensor | None = None,
    x_min: int = 0,
    x_max: int = 0,
    bits: int = 0,
) -> Tensor | None:
    """A layer's bias on its accumulator scale s = s_in·s_w in one compiled node:
    s·round(clamp(b'/s, lo, hi)), b' = the bias, or for A2Q layers (``w_rows`` [C, K],
    the fake-quantized weight rows) the bias clipped to the codes that keep
    b + Σ x·q in a ``bits``-bit register for x ∈ [x_min, x_max]; straight-through to
    the bias, no gradient to the scales. ``p_in`` (one value) and ``p_w`` (one or one
    per channel) are the scales or their parameters (scale codes ``kind_in`` /
    ``kind_w``, as in :func:`fake_quant`). The values and gradient of
    ``QuantWeightLayer._bias_on_accumulator_scale``; None where it does not apply."""
    if not _plain(bias, p_in, p_w) or not (w_rows is None or type(w_rows) in _PLAIN):
        return None
    args = (bias, p_in, kind_in, p_w, kind_w, lo, hi, rounding, w_rows, x_min, x_max, bits)
    return _call("accumulator_bias", *args)


def main() -> int:
    """``python -m hwquant.core.kernels``: build (or find) the kernel, say which."""
    op = load()
    if op is None:
        print(f"hwquant: compiled kernel unavailable ({_state['why']}); PyTorch ops are used")
    else:
        print(f"hwquant: compiled CPU kernel ready ({_state.get('build_s', 0):.1f} s)")
    return 0
