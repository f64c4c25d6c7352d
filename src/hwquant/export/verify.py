"""Differential verification of an exported graph against the torch model.

:func:`verify` runs the same inputs through torch (the reference), qonnx's
``execute_onnx`` (QONNX and QCDQ files), onnxruntime (QCDQ files: it has no
kernels for the QONNX ops) and hls4ml's compiled C++ (QONNX graphs hls4ml takes),
and reports per backend the largest difference in units of the *output
quantization step*: the scale of the quantizer that produces the output, the
accumulator step s_in·s_w of an un-quantized Gemm/Conv output, 2s for bipolar,
the local step s·2^(e−M) of a minifloat grid. Where no step can be read from
the graph (e.g. a float Sigmoid output) the absolute difference is used.

onnxruntime runs twice: ``onnxruntime`` with a default ``InferenceSession`` (what
users deploy: graph optimizations on, Q/DQ pairs fused into integer kernels) and
``onnxruntime-noopt`` with ``ORT_DISABLE_ALL`` (the graph as written, in float).

A backend passes when it is within ``tolerance`` steps (default: 0 — same code —
for qonnx and both onnxruntime runs, 1 for hls4ml's fixed-point emulation), not
counting *boundary flips*.

Boundary flips. With non-power-of-two scales the float32 value in front of a
quantizer depends on summation order, so a value that lies on a rounding
boundary may round one way in torch and the other in a backend; the one-step
difference then propagates. :func:`verify` separates these from real
mismatches when a backend differs: it reruns the torch model in float64 twice,
with every activation quantizer's input moved by ±ε, ε = ``BOUNDARY_RHO`` · (the
largest |x| of that sample's tensor; ≈ 16 float32 ulps of it, a bound on the
summation-order error of a float32 sum), i.e. every value within float32
rounding error of a boundary rounded up in one run and down in the other. A
mismatched output value is a *boundary flip* when one of these runs moves some
output of the same sample (batch row) away from torch's, by R steps at most,
and the backend is off by at most 2R + 1 steps there (a backend may flip any
subset of the ambiguous values, so its pattern need not match either run's);
every other mismatch is *real* (a saturated integer kernel, thousands of steps
off; a lost ReLU; any mismatch in a sample with no value near a boundary). Boundary flips
pass (``strict=True`` makes them fail) and are counted apart in the report;
:attr:`VerifyReport.exact` tells whether every backend gave torch's codes.
With power-of-two scales every float product and sum of the graph is exact and
no flips occur (the zoo: bit-exact everywhere).

Example:
    >>> import tempfile, torch
    >>> from hwquant.export.qonnx import to_qonnx
    >>> from hwquant.nn import QuantReLU
    >>> from hwquant.spec import A4U, LayerSpec
    >>> act = QuantReLU(spec=LayerSpec(output=A4U)).eval()
    >>> x = torch.randn(100, 8)
    >>> _ = act(x)
    >>> p = to_qonnx(act, x, tempfile.mkdtemp() + "/relu.onnx", dynamic_batch=True)
    >>> report = verify(act, p, x, backends=("qonnx",))
    >>> report.passed, report["qonnx"].max_steps
    (True, 0.0)
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from hwquant.algorithms.common import eval_mode
from hwquant.export import ops
from hwquant.export.batch import batch_of, inferred, rebatched, with_batch
from hwquant.export.ops import PATH_KEY, QONNX_DOMAIN, Step
from hwquant.export.qonnx import Inputs, as_inputs, check_example
from hwquant.spec.formats import ONNX_FLOAT8

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = [
    "BACKENDS",
    "BOUNDARY_RHO",
    "DEFAULT_TOLERANCE",
    "BackendResult",
    "VerifyReport",
    "graph_kind",
    "output_steps",
    "read_graph",
    "verify",
    "with_batch",
]

BACKENDS = ("qonnx", "onnxruntime", "onnxruntime-noopt", "hls4ml")
#: allowed difference in output steps per backend.
DEFAULT_TOLERANCE: dict[str, float] = {
    "qonnx": 0.0,
    "onnxruntime": 0.0,
    "onnxruntime-noopt": 0.0,
    "hls4ml": 1.0,
}
#: float32 rounding error in front of a quantizer, relative to the largest |x| of
#: the sample's tensor (2^-19 ≈ 16 float32 ulps of it): the boundary-flip criterion.
BOUNDARY_RHO = 2.0**-19
#: inputs per qonnx ``execute_onnx`` call (its cost is mostly per call and per node,
#: so a fixed-batch graph runs re-batched to this size: see ``_run_qonnx``).
QONNX_CHUNK = 256
#: a progress bar (tqdm, on a terminal) when a backend needs more calls than this.
PROGRESS_CALLS = 8
#: the packages of the ``export`` extra: a backend missing one raises (not a FAIL row).
_EXTRA_PACKAGES = frozenset({"onnx", "onnxruntime", "onnxscript", "qonnx", "hls4ml"})
#: float32 summation-order noise, relative to the largest output, that still counts as the same
#: code (un-quantized accumulator outputs with non-power-of-two scales).
_NOISE = 1e-6


@dataclass
class BackendResult:
    """One backend's outcome. ``max_steps`` is None when the output has no known
    step (then ``max_abs`` decides) or when the backend did not run (``note``
    says why)."""

    backend: str
    ran: bool
    passed: bool | None = None
    max_steps: float | None = None
    max_abs: float | None = None
    #: values off by half a step or more (all of them, boundary flips included).
    mismatched: int = 0
    n_values: int = 0
    seconds: float = 0.0
    note: str = ""
    #: the mismatches explained by rounding boundaries (module docstring).
    boundary_flips: int = 0
    #: largest difference, in steps, of the mismatches that are not boundary flips.
    real_max_steps: float | None = None

    @property
    def real_mismatches(self) -> int:
        """Mismatches that are not boundary flips."""
        return self.mismatched - self.boundary_flips

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "real_mismatches": self.real_mismatches}


@dataclass
class VerifyReport:
    """Per-backend results of :func:`verify` (the torch reference first)."""

    path: str
    kind: str
    n_inputs: int
    results: list[BackendResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every backend that ran passed (and at least one besides torch ran);
        boundary flips pass unless ``verify(..., strict=True)``."""
        ran = self._ran()
        return bool(ran) and all(r.passed for r in ran)

    @property
    def exact(self) -> bool:
        """Passed, and every backend gave torch's codes (no mismatch at all, not
        even a boundary flip)."""
        return self.passed and all(r.mismatched == 0 for r in self._ran())

    def _ran(self) -> list[BackendResult]:
        return [r for r in self.results if r.ran and r.backend != "torch"]

    def __getitem__(self, backend: str) -> BackendResult:
        for r in self.results:
            if r.backend == backend:
                return r
        raise KeyError(
            f"no result for backend {backend!r}; have {[r.backend for r in self.results]}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "n_inputs": self.n_inputs,
            "passed": self.passed,
            "exact": self.exact,
            "results": [r.to_dict() for r in self.results],
        }

    def table(self) -> str:
        """A plain-text table, one line per backend."""
        lines = [f"{self.kind.upper()} {self.path}: {self.n_inputs} inputs"]
        lines.append(
            f"  {'backend':<17} {'status':<8} {'max steps':>10} {'max |diff|':>11} "
            f"{'mismatched':>13} {'boundary':>9} {'seconds':>8}  note"
        )
        for r in self.results:
            status = "skipped" if not r.ran else ("pass" if r.passed else "FAIL")
            if r.ran and r.passed and r.mismatched:
                status = "pass*"
            steps = "-" if r.max_steps is None else f"{r.max_steps:.3g}"
            absd = "-" if r.max_abs is None else f"{r.max_abs:.3g}"
            mism = f"{r.mismatched}/{r.n_values}" if r.ran else "-"
            flips = str(r.boundary_flips) if r.ran and r.backend != "torch" else "-"
            lines.append(
                f"  {r.backend:<17} {status:<8} {steps:>10} {absd:>11} {mism:>13} {flips:>9} "
                f"{r.seconds:8.2f}  {r.note}"
            )
        if any(r.boundary_flips for r in self.results):
            lines.append(
                "  * boundary: mismatches where torch's float64 pre-rounding value lies within "
                "float32 rounding error of a rounding boundary (summation order; power-of-two "
                "scales are exact)"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# ---------------------------------------------------------------- graph helpers
def graph_kind(proto: onnx.ModelProto) -> str:
    """``"qonnx"`` if the graph has QONNX ops, ``"qcdq"`` if it has Q/DQ, else ``"onnx"``."""
    types = {(n.domain, n.op_type) for n in proto.graph.node}
    if any(d == QONNX_DOMAIN or ops.find(t) is not None for d, t in types):
        return "qonnx"
    if any(t in ("QuantizeLinear", "DequantizeLinear") for _, t in types):
        return "qcdq"
    return "onnx"


def read_graph(path: str | os.PathLike) -> onnx.ModelProto:
    """The ``ModelProto`` at ``path``; ``ValueError`` naming the file when it is
    missing or not an ONNX model."""
    import onnx

    if not os.path.isfile(path):
        raise ValueError(f"no exported graph at {path}")
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # protobuf's DecodeError and friends: not a model file
        first = str(e).strip().splitlines()
        raise ValueError(
            f"cannot read {path} as ONNX: {first[0] if first else type(e).__name__}"
        ) from None
    if not proto.graph.input or not proto.graph.output:
        raise ValueError(f"{path} is not an ONNX model with inputs and outputs")
    return proto


# ---------------------------------------------------------------- output steps
#: the grid step of a tensor (kept under its old name; see :class:`hwquant.export.ops.Step`).
_Step = Step


_PASS_SHAPED = {"Relu", "MaxPool", "Identity", "Dropout", "Clip", "Pad", "Max", "Min", "Neg"}
_PASS_FLAT = {
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Gather",
    "Split",
    "Expand",
    "Tile",
}


@functools.cache
def _fp8_types() -> dict[int, tuple[int, int]]:
    """ONNX float8 TensorProto code → (mantissa bits, 1 − bias), from spec.formats."""
    from onnx import TensorProto

    return {
        getattr(TensorProto, n): (f.mantissa_bits, f.min_exponent) for f, n in ONNX_FLOAT8.items()
    }


class _StepFinder:
    """Walks back from a tensor to the quantizer (or accumulator) that sets its grid."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        from onnx import numpy_helper

        g = proto.graph
        self.inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in g.initializer}
        self.zp_types = {t.name: t.data_type for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.rank = {
            vi.name: len(vi.type.tensor_type.shape.dim)
            for vi in (*g.value_info, *g.input, *g.output)
        }
        self.memo: dict[str, _Step | None] = {}

    def __call__(self, name: str) -> _Step | None:
        if name not in self.memo:
            self.memo[name] = None  # guards against cycles
            self.memo[name] = self._find(name)
        return self.memo[name]

    def const(self, name: str) -> np.ndarray | None:
        """The float64 value of an initializer (``GraphView``), else None."""
        return self.inits.get(name)

    def attr(self, node: Any, name: str, default: Any = None) -> Any:
        """Attribute of a node (``GraphView``), else ``default``."""
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def _find(self, name: str) -> _Step | None:
        n = self.producer.get(name)
        if n is None:
            return None
        op, ins = n.op_type, n.input
        const = self.inits.get
        qonnx_op = ops.find(op)
        if qonnx_op is not None:  # Quant, BipolarQuant, FloatQuant, Trunc: the op knows
            return qonnx_op.step(n, self)
        if op == "DequantizeLinear":
            return self._dq(n)
        if op in ("Floor", "Ceil", "Round"):
            return _Step(np.asarray(1.0))  # integers
        if op in _PASS_SHAPED:
            return self(ins[0])
        if op in _PASS_FLAT:
            st = self(ins[0])
            return None if st is None else st.scalar()
        if op == "AveragePool":
            st = self(ins[0])
            k = float(np.prod(self.attr(n, "kernel_shape", [1])))
            return None if st is None or st.mantissa_bits else _Step(st.scale / k)
        if op in ("Concat", "Add", "Sub"):
            steps = [self(i) for i in ins]
            if any(s is None or s.mantissa_bits for s in steps):
                return None
            return _Step(np.asarray(min(float(np.min(s.scale)) for s in steps)))
        if op in ("Mul", "Div") and const(ins[1]) is not None and const(ins[1]).size == 1:
            st, c = self(ins[0]), abs(float(const(ins[1]).reshape(-1)[0]))
            if st is None or c == 0:
                return None
            return dataclasses.replace(st, scale=st.scale * c if op == "Mul" else st.scale / c)
        if op in ("Gemm", "MatMul", "Conv", "ConvTranspose"):
            return self._accumulator(n)
        return None

    def _dq(self, n: Any) -> _Step | None:
        s = self.inits.get(n.input[1])
        if s is None:
            return None
        zp_type = self.zp_types.get(n.input[2]) if len(n.input) > 2 else None
        if s.size > 1:
            rank = self.rank.get(n.input[0])
            if rank is None:
                s = np.asarray(np.min(s))
            else:
                axis = self.attr(n, "axis", 1) % rank
                s = s.reshape([-1 if i == axis else 1 for i in range(rank)])
        if zp_type in _fp8_types():
            m, e_min = _fp8_types()[zp_type]
            return _Step(s, m, e_min)
        return _Step(s)

    def _accumulator(self, n: Any) -> _Step | None:
        """Un-quantized Gemm / Conv output: step s_in · s_w (per output channel)."""
        a, w = self(n.input[0]), self(n.input[1])
        if a is None or w is None or a.mantissa_bits or w.mantissa_bits:
            return None
        sa, sw = np.min(a.scale), w.scale
        op = n.op_type
        if sw.size > 1:
            non1 = [i for i, d in enumerate(sw.shape) if d > 1]
            out_axis = {
                "Gemm": 0 if self.attr(n, "transB", 0) else 1,
                "MatMul": sw.ndim - 1,
                "Conv": 0,
                "ConvTranspose": 1,
            }[op]
            if non1 != [out_axis] or (op == "ConvTranspose" and self.attr(n, "group", 1) != 1):
                sw = np.asarray(np.min(sw))
            elif op in ("Gemm", "MatMul"):
                sw = sw.reshape(1, -1)
            else:
                sw = sw.reshape([1, -1] + [1] * (sw.ndim - 2))
        return _Step(sa * sw)


def output_steps(proto: onnx.ModelProto) -> list[_Step | None]:
    """The grid step of each graph output (None where the graph does not fix one)."""
    find = _StepFinder(proto)
    return [find(o.name) for o in proto.graph.output]


# ---------------------------------------------------------------- backends
def _torch_outputs(model: nn.Module, xs: tuple[Tensor, ...]) -> list[np.ndarray]:
    with eval_mode(model), torch.no_grad():
        y = model(*xs)
    leaves = torch.utils._pytree.tree_leaves(y)
    return [t.detach().double().numpy() for t in leaves]


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    """``x`` with its last row repeated up to ``size`` rows."""
    if x.shape[0] == size:
        return x
    return np.concatenate([x, np.repeat(x[-1:], size - x.shape[0], axis=0)])


def _in_chunks(
    run: Callable[[list[np.ndarray]], list[np.ndarray]],
    xs: Sequence[np.ndarray],
    size: int,
    desc: str,
) -> list[np.ndarray]:
    """``run`` on consecutive chunks of exactly ``size`` samples (the last one padded
    by repeating its last sample, whose outputs are dropped), outputs concatenated
    along the batch; a progress bar on a terminal when it takes many calls."""
    from tqdm.auto import tqdm

    n = xs[0].shape[0]
    calls = -(-n // size)
    outs: list[list[np.ndarray]] = []
    quiet = True if calls <= PROGRESS_CALLS else None  # None: shown on a terminal only
    with tqdm(total=n, desc=desc, unit="input", leave=False, disable=quiet) as bar:
        for i in range(0, n, size):
            k = min(size, n - i)
            ys = run([_pad(x[i : i + k], size) for x in xs])
            outs.append([np.asarray(y, np.float64)[:k] for y in ys])
            bar.update(k)
    return [np.concatenate(parts) for parts in zip(*outs, strict=True)]


def _qonnx_runner(proto: onnx.ModelProto) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    mw = ModelWrapper(proto)
    names = [i.name for i in mw.graph.input]

    def run(part: list[np.ndarray]) -> list[np.ndarray]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = execute_onnx(mw, dict(zip(names, part, strict=True)))
        return [res[o.name] for o in mw.graph.output]

    return run


def _agrees(
    big: onnx.ModelProto, proto: onnx.ModelProto, xs: Sequence[np.ndarray], old: int, new: int
) -> bool:
    """The re-batched graph gives the original's outputs on the first ``old`` samples."""
    try:
        ys = _qonnx_runner(big)([_pad(x[:new], new) for x in xs])
    except Exception:  # the copy does not run: the batch is baked in somewhere else
        return False
    refs = _qonnx_runner(proto)([_pad(x[:old], old) for x in xs])
    k = min(old, xs[0].shape[0])
    for y, r in zip(ys, refs, strict=True):
        y, r = np.asarray(y, np.float64), np.asarray(r, np.float64)
        if y.shape[1:] != r.shape[1:] or y.shape[0] != new:
            return False
        if not np.allclose(
            y[:k], r[:k], rtol=1e-6, atol=1e-6 * max(1.0, float(np.abs(r).max(initial=0.0)))
        ):
            return False
    return True


def _run_qonnx(proto: onnx.ModelProto, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """qonnx's executor; its cost is per call, so a graph with a fixed batch B (a
    call per B samples) runs as a copy re-batched to ``QONNX_CHUNK`` samples when
    that copy agrees with the original on the first B samples."""
    n = xs[0].shape[0]
    fixed = batch_of(proto)
    if fixed is None:
        return _in_chunks(_qonnx_runner(with_batch(proto, n)), xs, n, "qonnx")
    own = inferred(copy.deepcopy(proto))
    size = max(fixed, min(n, QONNX_CHUNK))
    if size > fixed:
        big = rebatched(proto, fixed, size)
        if big is not None and _agrees(big, own, xs, fixed, size):
            return _in_chunks(_qonnx_runner(big), xs, size, "qonnx")
    return _in_chunks(_qonnx_runner(own), xs, fixed, "qonnx")


def _run_onnxruntime(
    proto: onnx.ModelProto, xs: Sequence[np.ndarray], optimize: bool = True
) -> list[np.ndarray]:
    """A default session (graph optimizations fuse Q/DQ pairs into integer kernels,
    as users deploy), or with ``optimize=False`` the graph as written; a graph with a
    fixed batch runs as written, in chunks of its batch."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # logging only: numerics are the default session's
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def run(part: list[np.ndarray]) -> list[np.ndarray]:
        return sess.run(None, dict(zip(names, part, strict=True)))

    n = xs[0].shape[0]
    return _in_chunks(run, xs, batch_of(proto) or n, "onnxruntime")


def _run_hls4ml(proto: onnx.ModelProto, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
    from hwquant.export.hls4ml import hls4ml_predict

    if len(xs) != 1 or len(proto.graph.output) != 1:
        raise ValueError("the hls4ml check handles one input and one output")
    return [hls4ml_predict(proto, xs[0])]


def _run_onnxruntime_noopt(proto: onnx.ModelProto, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
    return _run_onnxruntime(proto, xs, optimize=False)


_RUNNERS: dict[str, Callable[[Any, Sequence[np.ndarray]], list[np.ndarray]]] = {
    "qonnx": _run_qonnx,
    "onnxruntime": _run_onnxruntime,
    "onnxruntime-noopt": _run_onnxruntime_noopt,
    "hls4ml": _run_hls4ml,
}


def _applicable(backend: str, kind: str, proto: onnx.ModelProto) -> str | None:
    """Why ``backend`` does not apply to this graph (None if it does)."""
    if backend.startswith("onnxruntime") and kind == "qonnx":
        return "onnxruntime has no kernels for QONNX ops (export with to_qcdq)"
    if backend == "hls4ml":
        if kind != "qonnx":
            return "hls4ml takes QONNX graphs only"
        from hwquant.export.hls4ml import hls4ml_rejects

        return hls4ml_rejects(proto)
    return None


# ---------------------------------------------------------------- boundary flips
def _nudged_outputs(model: nn.Module, xs: tuple[Tensor, ...]) -> tuple[list, list]:
    """torch in float64 with every activation quantizer's input moved up (first)
    and down (second) by ε = ``BOUNDARY_RHO`` · max|x| of the sample: each value
    within float32 rounding error of a rounding boundary rounds up, then down."""
    from hwquant.nn.quantizer import Quantizer

    m64 = copy.deepcopy(model).double()
    sign = [1.0]

    def nudge(q: Quantizer, args: tuple, out: Tensor) -> Tensor:
        x = args[0]
        dims = tuple(range(1, x.dim())) if x.dim() >= 2 else tuple(range(x.dim()))
        eps = BOUNDARY_RHO * x.detach().abs().amax(dim=dims, keepdim=True)
        return q.forward(x + sign[0] * eps)  # .forward: no hooks, no recursion

    handles = [
        m.register_forward_hook(nudge)
        for m in m64.modules()
        if isinstance(m, Quantizer) and m.role != "weight"  # weights: same float32 codes everywhere
    ]
    runs = []
    try:
        for sign[0] in (1.0, -1.0):
            runs.append(_torch_outputs(m64, tuple(x.double() for x in xs)))
    finally:
        for h in handles:
            h.remove()
    return runs[0], runs[1]


def _explained(
    d: np.ndarray, ref: np.ndarray, up: np.ndarray, down: np.ndarray, unit: Any, noise: float
) -> np.ndarray:
    """Values a boundary flip can explain: the up or down run moves some output of
    the same sample (batch row) away from torch's value, by R steps at most, and
    this value is off by at most 2R + 1 steps. (A backend may flip any subset of
    the ambiguous values, so its differences need not match either run's.)"""
    unit = np.broadcast_to(unit, ref.shape)
    mu, md = np.abs(up - ref), np.abs(down - ref)
    moved = np.maximum(mu, md)
    moved_steps = np.where(moved > 0.5 * unit + noise, moved / unit, 0.0)
    rows = moved_steps.reshape(moved_steps.shape[0], -1) if ref.ndim else moved_steps.reshape(1, 1)
    reach = rows.max(axis=1).reshape((-1,) + (1,) * max(ref.ndim - 1, 0))
    reach = np.broadcast_to(reach, ref.shape) if ref.ndim else reach.reshape(())
    return (reach > 0) & (d <= (2 * reach + 1) * unit + noise)


def _compare(
    backend: str,
    ys: list[np.ndarray],
    refs: list[np.ndarray],
    steps: list[_Step | None],
    tol: float,
    nudged: Callable[[], tuple[list, list]],
    strict: bool = False,
) -> BackendResult:
    if len(ys) != len(refs):
        return BackendResult(
            backend, True, False, note=f"{len(ys)} outputs, torch gave {len(refs)}"
        )
    worst_steps: float | None = 0.0
    real_steps: float | None = 0.0
    worst_abs, mism, flips, total, ok = 0.0, 0, 0, 0, True
    for j, (y, ref, st) in enumerate(zip(ys, refs, steps, strict=True)):
        if y.shape != ref.shape:
            return BackendResult(backend, True, False, note=f"shape {y.shape} vs torch {ref.shape}")
        d = np.abs(y - ref)
        worst_abs = max(worst_abs, float(d.max(initial=0.0)))
        total += d.size
        if st is None:  # no grid: a relative float tolerance
            worst_steps = real_steps = None
            unit: Any = 1e-5 * max(1.0, float(np.abs(ref).max(initial=0.0)))
            noise = 0.0
            bad = over = d > unit
        else:
            unit = st.at(ref)
            noise = _NOISE * float(np.abs(ref).max(initial=0.0))
            bad = d > 0.5 * unit + noise
            over = d > tol * unit + noise
            if worst_steps is not None:
                worst_steps = max(worst_steps, float((d / unit).max(initial=0.0)))
        flip = np.zeros_like(bad)
        if bad.any():
            up, down = nudged()
            flip = bad & _explained(d, ref, up[j], down[j], unit, noise)
        real = bad & ~flip
        if real_steps is not None and real.any():
            real_steps = max(real_steps, float((d / unit)[real].max()))
        mism += int(bad.sum())
        flips += int(flip.sum())
        ok &= not bool((over if strict else over & ~flip).any())
    return BackendResult(
        backend,
        True,
        ok,
        worst_steps,
        worst_abs,
        mism,
        total,
        boundary_flips=flips,
        real_max_steps=real_steps,
    )


def _backend_notes(backend: str, proto: onnx.ModelProto) -> str:
    """What the row should say about how the backend ran or what it ignores."""
    if backend == "onnxruntime":
        return "default session (graph optimizations on)"
    if backend == "onnxruntime-noopt":
        return "ORT_DISABLE_ALL (the graph as written)"
    if backend == "qonnx":
        caveats: dict[str, list[str]] = {}  # what qonnx's executor does differently → where
        for n in proto.graph.node:
            op = ops.find(n.op_type)
            why = None if op is None else op.qonnx_caveat(n)
            if why:
                where = next((m.value for m in n.metadata_props if m.key == PATH_KEY), n.name)
                caveats.setdefault(why, []).append(where)
        if caveats:
            return "; ".join(f"{why} at {', '.join(ps)}" for why, ps in caveats.items())
    if backend == "hls4ml":
        from hwquant.export.hls4ml import DEFAULT_PRECISION

        return f"Vivado, io_parallel, auto precisions, default {DEFAULT_PRECISION}"
    return ""


def _missing_package(e: BaseException) -> bool:
    """``e`` is the import of a package of the ``export`` extra failing."""
    return isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in _EXTRA_PACKAGES


def _check_inputs(proto: onnx.ModelProto, xs: tuple[Tensor, ...], path: Any) -> None:
    """``ValueError`` unless ``xs`` (at least one sample) fit the graph's inputs:
    their number, rank and every fixed dimension but the batch."""
    consts = {t.name for t in proto.graph.initializer}
    ins = [vi for vi in proto.graph.input if vi.name not in consts]
    if len(ins) != len(xs):
        raise ValueError(f"{path} takes {len(ins)} input(s), got {len(xs)}")
    if xs[0].shape[0] < 1:
        raise ValueError("verify needs at least one input sample")
    if any(x.shape[0] != xs[0].shape[0] for x in xs):
        raise ValueError(f"the inputs hold different numbers of samples: {[len(x) for x in xs]}")
    for vi, x in zip(ins, xs, strict=True):
        if not vi.type.tensor_type.HasField("shape"):
            continue
        want = [d.dim_value or None for d in vi.type.tensor_type.shape.dim]
        fits = len(want) == x.dim() and all(
            w is None or w == d for w, d in zip(want[1:], x.shape[1:], strict=True)
        )
        if not fits:
            dims = ", ".join(["N", *(str(w) if w else "?" for w in want[1:])])
            raise ValueError(
                f"inputs of shape {tuple(x.shape)} do not fit the graph's input "
                f"{vi.name!r} of shape ({dims})"
            )


def verify(
    model: nn.Module,
    path: str | os.PathLike,
    inputs: Inputs,
    *,
    backends: Sequence[str] | None = None,
    tolerance: Mapping[str, float] | None = None,
    strict: bool = False,
) -> VerifyReport:
    """Run ``inputs`` through torch and every applicable backend for the graph at
    ``path``; report the largest difference in output steps per backend.

    Args:
        model: the torch model the graph was exported from (the reference).
        path: a QONNX file (``to_qonnx``) or a QCDQ file (``to_qcdq``); a
            dynamic-batch file runs in qonnx's executor with its batch fixed to
            the inputs' (:func:`with_batch`).
        inputs: a batch of at least one sample (tensor or tuple of tensors) that
            fits the graph's inputs (``ValueError`` naming both shapes otherwise).
            A graph with a fixed batch B takes any number of samples: onnxruntime
            runs it as written in chunks of B (the last one padded); qonnx's
            executor, whose cost is per call, runs a copy re-batched to
            ``QONNX_CHUNK`` samples once that copy agrees with the original on the
            first B samples (else chunks of B), with a progress bar on a terminal.
        backends: subset of ``BACKENDS``; default all (``onnxruntime`` is a
            default session, ``onnxruntime-noopt`` one with graph optimizations
            off). Backends that do not apply (onnxruntime on QONNX ops, hls4ml on
            what it cannot take) are listed as skipped with the reason.
        tolerance: allowed steps per backend (defaults in ``DEFAULT_TOLERANCE``).
        strict: boundary flips (module docstring) fail the backend too.
    """
    chosen = tuple(BACKENDS if backends is None else backends)
    unknown = set(chosen) - set(BACKENDS)
    if unknown:
        raise ValueError(f"unknown backend(s) {sorted(unknown)}; known: {list(BACKENDS)}")
    tol = {**DEFAULT_TOLERANCE, **(tolerance or {})}
    proto = read_graph(path)
    kind = graph_kind(proto)
    xs = as_inputs(inputs)
    _check_inputs(proto, xs, path)
    with eval_mode(model):
        check_example(model, tuple(x[:1] for x in xs))
    report = VerifyReport(str(path), kind, int(xs[0].shape[0]))
    t0 = time.perf_counter()
    refs = _torch_outputs(model, xs)
    report.results.append(
        BackendResult(
            "torch",
            True,
            True,
            0.0,
            0.0,
            0,
            sum(r.size for r in refs),
            time.perf_counter() - t0,
            "reference",
        )
    )
    steps = output_steps(proto)
    arrays = [x.numpy() for x in xs]
    cache: list[tuple[list, list]] = []

    def nudged() -> tuple[list, list]:  # computed once, only if some backend differs
        if not cache:
            cache.append(_nudged_outputs(model, xs))
        return cache[0]

    for b in chosen:
        why = _applicable(b, kind, proto)
        if why is not None:
            report.results.append(BackendResult(b, False, note=why))
            continue
        t0 = time.perf_counter()
        try:
            ys = _RUNNERS[b](proto, arrays)
        except Exception as e:  # a backend that crashes fails, with its message
            if _missing_package(e):
                raise  # not a mismatch: the export extra is not installed
            msg = str(e).strip().splitlines()
            report.results.append(
                BackendResult(
                    b,
                    True,
                    False,
                    seconds=time.perf_counter() - t0,
                    note=f"{type(e).__name__}: {msg[0] if msg else ''}"[:300],
                )
            )
            continue
        r = _compare(b, ys, refs, steps, tol[b], nudged, strict)
        r.seconds = time.perf_counter() - t0
        extra = _backend_notes(b, proto)
        r.note = "; ".join(x for x in (r.note, extra) if x)
        report.results.append(r)
    return report
