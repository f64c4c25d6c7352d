"""QONNX export: the traced model with ``Quant`` / ``BipolarQuant`` / ``FloatQuant`` /
``Trunc`` nodes (domain ``qonnx.custom_op.general``, opset 2) and standard ONNX
ops for everything else.

The pipeline: check that every quantizer has a scale and that the example input
fits (errors name the module path) → trace with ``torch.export`` while the
quantizers emit QONNX nodes (:mod:`hwquant.export.emit`) → translate to ONNX
(:mod:`hwquant.export.translate` for the ops hwquant's layers produce, else
``torch.onnx.export``, dynamo) → qonnx's cleanup, shape and datatype inference →
metadata → write ``<path>.partial-<pid>`` next to ``path`` and rename it (a failed
export leaves no file behind; see :func:`write_atomic`).

Weights stay float initializers followed by their ``Quant`` node (the QONNX
convention), so consumers see the float weight, its scale and its bit width.

Example:
    >>> import tempfile, torch
    >>> from hwquant.nn import QuantLinear
    >>> from hwquant.spec import A8, W4, LayerSpec
    >>> layer = QuantLinear(4, 2, spec=LayerSpec(input=A8, weight=W4)).eval()
    >>> _ = layer(torch.randn(16, 4))  # initialize the input scale
    >>> path = to_qonnx(layer, torch.randn(1, 4), tempfile.mkdtemp() + "/lin.onnx")
    >>> import onnx
    >>> [n.op_type for n in onnx.load(path).graph.node]
    ['Quant', 'Quant', 'Gemm']
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from hwquant.algorithms.common import eval_mode
from hwquant.export import ops
from hwquant.export.emit import QONNX_DOMAIN, QONNX_OPSET, check_ready, emitting
from hwquant.export.translate import onnx_model
from hwquant.nn.codes import accumulator_bits
from hwquant.nn.quantizer import Quantizer
from hwquant.spec import serialize
from hwquant.spec.layer_spec import LayerSpec, Recipe

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = [
    "ORT_MAX_IR_VERSION",
    "Capture",
    "accumulator_bits",
    "capture",
    "finish",
    "qonnx_proto",
    "recipe_of",
    "to_qonnx",
    "write_atomic",
]

#: IR version stamped on exported files: onnxruntime 1.31/1.32 reject IR 14
#: (what onnx 1.23 stamps), 10 is read by every runtime in the tested stack.
ORT_MAX_IR_VERSION = 10

Inputs = Tensor | Sequence[Tensor]


# ---------------------------------------------------------------- public entry point
def to_qonnx(
    model: nn.Module,
    example_input: Inputs,
    path: str | os.PathLike,
    dynamic_batch: bool = False,
    *,
    recipe: Recipe | None = None,
    recurrent: str = "unrolled",
    dynamic_length: int | None = None,
) -> Path:
    """Export ``model`` as a QONNX graph to ``path`` and return the path.

    Args:
        model: a model built from hwquant layers (its quantizers initialized).
        example_input: a tensor (or tuple of tensors) with the input shape; its
            batch size is the graph's batch size unless ``dynamic_batch``.
        path: the ``.onnx`` file to write (its directory must exist).
        dynamic_batch: make dimension 0 of every input and output symbolic
            (onnxruntime runs any batch; qonnx's ``execute_onnx`` checks inputs
            against fixed shapes: run such a file there after
            ``hwquant.export.with_batch(path, n)``, as ``verify`` does).
        recipe: stored as JSON in the metadata; by default the recipe that
            reproduces the model's layer specs (module path → LayerSpec).
        recurrent: how QuantLSTM / QuantGRU / QuantRNN time loops are written:
            ``"unrolled"`` (T steps, what qonnx's executor and FINN-style tools
            read) or ``"scan"`` (an ONNX Scan whose body holds the Quant nodes;
            :mod:`hwquant.export.recurrent`).
        dynamic_length: the axis of the (first) input that is the sequence length,
            made symbolic (needs ``recurrent="scan"``); None keeps it fixed.

    Raises ``ValueError`` (naming the module path) for an example input the model
    rejects, a quantizer without a scale, a format or an op that cannot be
    exported. Nothing is written then.

    >>> import tempfile, torch
    >>> from hwquant.nn import QuantReLU
    >>> from hwquant.spec import A4U, LayerSpec
    >>> act = QuantReLU(spec=LayerSpec(output=A4U)).eval()
    >>> _ = act(torch.rand(8, 3))
    >>> p = to_qonnx(act, torch.rand(2, 3), tempfile.mkdtemp() + "/a.onnx", dynamic_batch=True)
    >>> p.suffix
    '.onnx'
    """
    proto = qonnx_proto(
        model,
        example_input,
        dynamic_batch,
        recipe=recipe,
        recurrent=recurrent,
        dynamic_length=dynamic_length,
    )
    return write_atomic(proto, path)


def qonnx_proto(
    model: nn.Module,
    example_input: Inputs,
    dynamic_batch: bool = False,
    *,
    recipe: Recipe | None = None,
    cleanup: bool = True,
    recurrent: str = "unrolled",
    dynamic_length: int | None = None,
) -> onnx.ModelProto:
    """The cleaned QONNX ``ModelProto`` that :func:`to_qonnx` writes (in memory)."""
    check_recurrent_form(recurrent, dynamic_length)
    traced = capture(model, example_input, dynamic_batch, dynamic_length, cleanup=cleanup)
    return finish(traced, model, recurrent, recipe, cleanup=cleanup)


@dataclass(frozen=True)
class Capture:
    """One trace of a model (:func:`capture`): its QONNX graph before recurrent loops
    are expanded, whether it has any, and the model's accumulator widths."""

    proto: onnx.ModelProto
    loops: bool
    accumulators: dict


def check_recurrent_form(recurrent: str, dynamic_length: int | None) -> None:
    """ValueError for an unknown recurrent form, or a dynamic length without a Scan."""
    from hwquant.export.recurrent import FORMS

    if recurrent not in FORMS:
        raise ValueError(f"recurrent must be one of {list(FORMS)}, got {recurrent!r}")
    if dynamic_length is not None and recurrent != "scan":
        raise ValueError(
            "dynamic_length needs recurrent='scan' (an unrolled loop has a fixed length)"
        )


def capture(
    model: nn.Module,
    example_input: Inputs,
    dynamic_batch: bool = False,
    dynamic_length: int | None = None,
    *,
    cleanup: bool = True,
) -> Capture:
    """Check and trace ``model`` once (the slow part of an export: torch.export and
    the translation to ONNX); :func:`finish` turns the capture into a QONNX graph as
    often as needed (``to_qonnx_and_qcdq`` writes both formats from one capture)."""
    from hwquant.export.recurrent import has_recurrences

    inputs = as_inputs(example_input)
    with eval_mode(model):
        check_quantizers_ready(model)
        warn_ignored_subnormals(model)
        check_example(model, inputs)
        proto = _trace_to_onnx(model, inputs, dynamic_batch, dynamic_length)
        loops = has_recurrences(proto)
        if loops and cleanup:  # clean the small graph, expand the loops after
            proto = _qonnx_cleanup(proto)
        acc = accumulator_bits(model)
    return Capture(proto, loops, acc)


def finish(
    traced: Capture,
    model: nn.Module,
    recurrent: str = "unrolled",
    recipe: Recipe | None = None,
    *,
    cleanup: bool = True,
) -> onnx.ModelProto:
    """The QONNX graph of a :func:`capture` (a copy: the capture stays as it was):
    recurrent loops expanded in the ``recurrent`` form, qonnx's cleanup, metadata."""
    import onnx

    from hwquant.export.recurrent import expand_recurrences

    proto = onnx.ModelProto()
    proto.CopyFrom(traced.proto)
    if traced.loops:
        with eval_mode(model):
            expand_recurrences(proto, model, recurrent)
    if cleanup:
        # qonnx's passes are quadratic in the node count: an unrolled loop gets only
        # shape and datatype inference (its step was traced clean, its names are unique)
        proto = _qonnx_cleanup(proto, light=traced.loops)
    _stamp(proto, model, recipe, traced.accumulators)
    return proto


# ---------------------------------------------------------------- checks
def as_inputs(example_input: Inputs) -> tuple[Tensor, ...]:
    """A tuple of tensors (a single tensor is wrapped): floating-point inputs as float32,
    integer ones (token indices of an embedding) as they are."""
    xs = (example_input,) if isinstance(example_input, Tensor) else tuple(example_input)
    if not xs or not all(isinstance(x, Tensor) for x in xs):
        raise ValueError(
            f"example_input must be a tensor or a sequence of tensors, got {type(example_input)}"
        )
    if any(x.dim() == 0 for x in xs):
        raise ValueError("example_input needs a batch dimension (got a 0-d tensor)")
    return tuple(x.detach().float() if x.is_floating_point() else x.detach() for x in xs)


def check_quantizers_ready(model: nn.Module) -> None:
    """ValueError naming the first quantizer that has no scale yet or is calibrating."""
    for path, q in model.named_modules():
        if not isinstance(q, Quantizer):
            continue
        check_ready(q, path or type(model).__name__)


def warn_ignored_subnormals(model: nn.Module) -> list[str]:
    """Warn (``UserWarning`` naming each quantizer) about minifloats without
    subnormals: the FloatQuant node says ``has_subnormal=0``, but qonnx's executor
    ignores the attribute and rounds to subnormals, so it differs from torch on
    values below the smallest normal. Returns the quantizer paths."""
    paths = [
        path or "<root>"
        for path, q in model.named_modules()
        if isinstance(q, Quantizer)
        and q.spec.format.is_minifloat
        and not q.spec.format.has_subnormal
        and q.state != "float"
    ]
    if paths:
        warnings.warn(
            f"{', '.join(paths)}: minifloat without subnormals; the QONNX FloatQuant node is "
            "written with has_subnormal=0, but qonnx's executor ignores it (rounds to "
            "subnormals), so it differs from torch below the smallest normal value "
            "(verify notes it; QCDQ refuses these formats)",
            UserWarning,
            stacklevel=3,
        )
    return paths


@contextlib.contextmanager
def module_tracker(model: nn.Module) -> Iterator[list[tuple[str, nn.Module]]]:
    """Yields the live stack of (path, module) being called (hooks removed on exit)."""
    stack: list[tuple[str, nn.Module]] = []

    def enter(path: str, mod: nn.Module) -> None:
        stack.append((path, mod))

    def leave() -> None:
        stack.pop()

    handles = []
    for path, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(lambda mod, a, p=path: enter(p, mod)))
        handles.append(m.register_forward_hook(lambda mod, a, o: leave()))
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def check_example(model: nn.Module, inputs: tuple[Tensor, ...]) -> None:
    """Run the model once; a failure becomes a ValueError naming the module and shapes."""
    shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
    with module_tracker(model) as stack, torch.no_grad():
        try:
            model(*inputs)
        except Exception as e:
            where = (
                f"module '{stack[-1][0] or '<root>'}' ({type(stack[-1][1]).__name__})"
                if stack
                else "the model"
            )
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(
                f"example input of shape {shapes} does not fit the model: {where} failed: {msg}"
            ) from e


# ---------------------------------------------------------------- tracing
def _trace_to_onnx(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    dynamic_batch: bool,
    dynamic_length: int | None = None,
    own: bool = True,
) -> onnx.ModelProto:
    """Trace ``model`` with torch.export and translate it to ONNX: by
    :func:`hwquant.export.translate.translate` where it covers the graph (``own``),
    else (or with ``own=False``) by ``torch.onnx.export``."""
    if dynamic_batch and inputs[0].shape[0] == 1:
        # torch.export specializes size-1 dimensions: trace with a batch of 2.
        inputs = tuple(x.expand(2, *x.shape[1:]).contiguous() for x in inputs)
    dyn = tuple({0: torch.export.Dim("batch")} for _ in inputs) if dynamic_batch else None
    if dynamic_length is not None:
        axis = dynamic_length % inputs[0].dim()
        if dynamic_batch and axis == 0:
            raise ValueError("dynamic_length names the batch axis 0")
        first = dict(dyn[0]) if dyn else {}
        first[axis] = torch.export.Dim("length", min=2)
        dyn = (first, *(dyn[1:] if dyn else ({},) * (len(inputs) - 1)))
    with emitting(model), _quiet(), torch.no_grad():
        try:
            with module_tracker(model) as stack:
                ep = torch.export.export(model, inputs, dynamic_shapes=dyn, strict=False)
        except Exception as e:
            where = f" in module '{stack[-1][0] or '<root>'}' ({type(stack[-1][1]).__name__})"
            raise ValueError(
                f"torch.export could not trace the model{where if stack else ''}: {_first_line(e)}"
            ) from e
        try:
            proto = onnx_model(ep, inputs, own)
        except Exception as e:  # torch's exporter met an op it cannot translate
            raise _conversion_error(e, ep) from e
    _fix_header(proto)
    return proto


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress prints and warnings."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(open(os.devnull, "w")) as f:
            warnings.simplefilter("ignore")
            try:
                yield
            finally:
                f.close()
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


_NODE_RE = re.compile(r"target=torch\.ops\.([\w.]+)")


def _conversion_error(e: Exception, ep: torch.export.ExportedProgram) -> ValueError:
    """ValueError naming the op torch.onnx could not translate and the module using it."""
    text = str(e)
    while e.__cause__ is not None:
        e = e.__cause__  # type: ignore[assignment]
        text += "\n" + str(e)
    m = _NODE_RE.search(text)
    if m is None:
        return ValueError(f"the model cannot be exported to ONNX: {_first_line(e)}")
    op = m.group(1)
    base = op.split(".")[1] if op.count(".") >= 1 else op  # 'prims.zeta.default' → 'zeta'
    where = _module_of_op(ep, base)
    return ValueError(f"{where}: op '{op}' cannot be exported to ONNX")


def _module_of_op(ep: torch.export.ExportedProgram, base: str) -> str:
    for node in ep.graph.nodes:
        if node.op == "call_function" and base in str(node.target):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, cls = list(stack.values())[-1]
                name = getattr(cls, "__name__", str(cls).rsplit(".", 1)[-1].strip("'>"))
                return f"module '{path or '<root>'}' ({name})"
            return "the model's forward"
    return "the model"


def _fix_header(proto: onnx.ModelProto) -> None:
    """Declare the qonnx domain (opset 2) and an IR version onnxruntime reads."""
    proto.ir_version = min(proto.ir_version, ORT_MAX_IR_VERSION)
    for imp in proto.opset_import:
        if imp.domain == QONNX_DOMAIN:
            imp.version = QONNX_OPSET
            break
    else:
        proto.opset_import.add(domain=QONNX_DOMAIN, version=QONNX_OPSET)


#: never folded into constants by the cleanup (qonnx's own cleanup_model keeps only
#: Quant / BipolarQuant / Q / DQ and would fold minifloat weights into plain floats).
PRESERVED_OPS = (*ops.names(), "QuantizeLinear", "DequantizeLinear")


def _qonnx_cleanup(proto: onnx.ModelProto, light: bool = False) -> onnx.ModelProto:
    """qonnx's cleanup sequence (``qonnx.util.cleanup.cleanup_model``, with FloatQuant
    and Trunc also preserved), then shape and datatype inference (``light``: only
    those two)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.transformation.general import (
        GiveReadableTensorNames,
        GiveUniqueNodeNames,
        GiveUniqueParameterTensors,
        RemoveStaticGraphInputs,
        RemoveUnusedTensors,
    )
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.transformation.quant_constant_folding import FoldTransposeIntoQuantInit

    steps = [
        InferShapes(),
        GiveUniqueParameterTensors(),
        FoldConstants(exclude_op_types=list(PRESERVED_OPS)),
        FoldTransposeIntoQuantInit(),
        RemoveUnusedTensors(),
        RemoveStaticGraphInputs(),
        GiveUniqueNodeNames(),
        GiveReadableTensorNames(),
        InferShapes(),
        InferDataTypes(),
    ]
    if light:
        steps = steps[-2:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mw = ModelWrapper(proto)
        for t in steps:
            mw = mw.transform(t)
    out = mw.model
    _name_batch(out)
    _fix_header(out)
    return out


def _name_batch(proto: onnx.ModelProto) -> None:
    """Call the symbolic batch dimension ``batch`` (torch.export names it s0, s77, ...)."""
    for vi in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            dims[0].dim_param = "batch"


# ---------------------------------------------------------------- metadata
def recipe_of(model: nn.Module) -> Recipe:
    """The recipe that reproduces ``model``'s quantization: module path → its LayerSpec."""
    entries = [
        (path, m.layer_spec)
        for path, m in model.named_modules()
        if isinstance(getattr(m, "layer_spec", None), LayerSpec)
    ]
    return Recipe(by_name=tuple(entries))


def _stamp(
    proto: onnx.ModelProto, model: nn.Module, recipe: Recipe | None, acc: dict[str, int]
) -> None:
    rec = recipe if recipe is not None else recipe_of(model)
    props = {
        "hwquant.version": _version(),
        "hwquant.recipe": serialize.dumps(rec),
        "hwquant.accumulator_bits": json.dumps(acc),
    }
    keep = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in props.items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "hwquant"
    proto.producer_version = _version()


# ---------------------------------------------------------------- writing
#: the name of the file being written beside ``target``: ``<target>.partial-<pid>``.
PARTIAL = ".partial-"


def write_atomic(proto: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write ``proto`` to ``<path>.partial-<pid>`` beside ``path``, then rename it
    over ``path`` (readers never see a half-written model).

    The file gets the mode a plain ``open()`` gives (0666 minus the umask). The
    partial file is removed when writing fails; one a killed process left behind
    (its pid no longer running) is removed by the next export to the same path.
    ``ValueError`` naming the path when it cannot be written."""
    import onnx

    target = Path(path)
    if not target.parent.is_dir():
        raise ValueError(f"cannot write {target}: directory {target.parent} does not exist")
    if target.is_dir():
        raise ValueError(f"cannot write {target}: it is a directory")
    _remove_stale_partials(target)
    tmp = target.with_name(f"{target.name}{PARTIAL}{os.getpid()}")
    try:
        onnx.save(proto, str(tmp))  # a plain open(): mode 0666 minus the umask
        os.replace(tmp, target)
    except OSError as e:
        raise ValueError(f"cannot write {target}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return target


def _remove_stale_partials(target: Path) -> None:
    """Remove ``<target>.partial-<pid>`` files of processes that no longer run."""
    with contextlib.suppress(OSError):
        for p in target.parent.glob(f"{glob.escape(target.name)}{PARTIAL}*"):
            pid = p.name.rpartition(PARTIAL)[2]
            if pid.isdigit() and not _running(int(pid)):
                with contextlib.suppress(OSError):
                    p.unlink()


def _running(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate it there: never clean up
        return True
    if pid == os.getpid():
        return False  # a leftover of an earlier process that had our pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it runs, as another user
        return True
    return True


def _version() -> str:
    import importlib.metadata

    return importlib.metadata.version("hwquant")
