"""Export of QuantLSTM / QuantGRU / QuantRNN: the recurrence as an ONNX ``Scan`` or
unrolled.

While the model is traced (:func:`hwquant.export.emit.emitting`), everything around
the recurrence is ordinary graph: the input quantizer, the quantized weights (Quant on
the float initializers), the input projection of every time step at once (one MatMul),
the biases, the concatenation of directions and the stacking of layers. The time loop
of each layer and direction (:meth:`hwquant.nn.QuantLSTM.recurrence`) becomes one
placeholder node ``hwquant.recurrent::Recurrence`` (inputs: the projections ax
[T, B, G·H], Ŵ_hh, b̂_hh, the initial state; outputs: the hidden states, the final
state). :func:`expand_recurrences` then replaces each placeholder by

- ``form="scan"``: an ONNX ``Scan`` whose body is one time step, traced from the
  layer's own :meth:`~hwquant.nn.QuantLSTM.step` with the quantizers emitting (Quant
  nodes on the gates, sigmoid / tanh outputs, cell and hidden state). The sequence
  length stays dynamic (export with ``dynamic_length=<time axis of the input>``); the
  reverse direction scans backwards (``scan_input_directions`` /
  ``scan_output_directions`` = 1). Ŵ_hh and b̂_hh enter the body as loop-carried state
  passed through unchanged, so the body names nothing of the outer graph and survives
  qonnx's renaming passes. onnxruntime runs it after the QCDQ lowering (which lowers
  the body too); qonnx's executor cannot run it (it hands standard nodes to
  onnxruntime, and a body with Quant nodes is not standard ONNX).
- ``form="unrolled"``: T copies of the step (T from the example input), wired state to
  state, their outputs stacked: a flat graph of standard ops and Quant nodes that
  qonnx's executor, FINN-style tools and hls4ml's QONNX reader can walk. It is what
  :func:`hwquant.export.to_qonnx` writes by default; its length is fixed.

Both forms compute exactly what the layer computes; :mod:`hwquant.export.verify`
checks them (qonnx's executor on the unrolled QONNX graph, onnxruntime with default
and with disabled optimizations on the QCDQ graph).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from hwquant.export.emit import RECURRENCE, RECURRENT_DOMAIN, emitting
from hwquant.export.translate import onnx_model
from hwquant.nn.recurrent import HiddenProjection, QuantRecurrent, StepQuant

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = [
    "FORMS",
    "RECURRENCE",
    "RECURRENT_DOMAIN",
    "expand_recurrences",
    "has_recurrences",
]

FORMS = ("scan", "unrolled")


class _Step(nn.Module):
    """One time step of one direction, to be traced as the Scan body: inputs
    (h[, c], Ŵ_hh, b̂_hh, ax_t), outputs (h'[, c'], Ŵ_hh, b̂_hh, y_t)."""

    def __init__(self, layer: QuantRecurrent, key: str) -> None:
        super().__init__()
        object.__setattr__(self, "layer", layer)  # not a submodule: its state is constant
        self.key = key

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        *state, w, b, ax_t = args
        f: StepQuant = self.layer.directions[self.key].step_quant()
        new = self.layer.step(f, ax_t, list(state), HiddenProjection(w, b))
        return (*new, w + 0.0, b + 0.0, new[0] + 0.0)  # fresh outputs (no aliasing)


def _step_graph(model: nn.Module, layer: QuantRecurrent, key: str, B: int) -> onnx.GraphProto:
    """The step of ``layer``'s direction ``key`` as an ONNX graph (Quant nodes emitted
    by the quantizers of ``model``), its constants as Constant nodes."""
    from onnx import helper

    H = layer.hidden_size
    G = layer.gate_count * H
    example = [torch.zeros(B, H) for _ in range(layer.n_states)]  # distinct: no aliasing
    example += [torch.zeros(G, H), torch.zeros(G)]
    example.append(torch.zeros(B, G))
    with emitting(model), torch.no_grad():
        ep = torch.export.export(_Step(layer, key), tuple(example), strict=False)
        g = onnx_model(ep, tuple(example)).graph
    consts = [
        helper.make_node("Constant", [], [t.name], value=t, name=f"const_{t.name}")
        for t in g.initializer
    ]
    body = helper.make_graph(
        consts + list(g.node), "step", list(g.input), list(g.output), value_info=[]
    )
    return body


# ---------------------------------------------------------------- after tracing
def has_recurrences(proto: onnx.ModelProto) -> bool:
    """Whether ``proto`` holds placeholder recurrences (to be expanded)."""
    return any(n.domain == RECURRENT_DOMAIN for n in proto.graph.node)


def expand_recurrences(proto: onnx.ModelProto, model: nn.Module, form: str) -> int:
    """Replace every placeholder of ``proto`` by a Scan or its unrolled steps (module
    docstring), in place; the number replaced."""
    if form not in FORMS:
        raise ValueError(f"recurrent export form must be one of {list(FORMS)}, got {form!r}")
    g = proto.graph
    shapes = _shapes(proto)
    nodes, done = [], 0
    for n in g.node:
        if n.domain != RECURRENT_DOMAIN:
            nodes.append(n)
            continue
        a = {x.name: x for x in n.attribute}
        path, key = a["layer"].s.decode(), a["direction"].s.decode()
        reverse = bool(a["reverse"].i)
        layer = model.get_submodule(path)
        B = shapes.get(n.input[0], (None, 2))[1]
        B = B if isinstance(B, int) else 2
        body = _uniquely_named(_step_graph(model, layer, key, B), f"{n.name or path}_{key}")
        if form == "scan":
            nodes.append(_scan(n, body, reverse))
        else:
            T = shapes.get(n.input[0], (None,))[0]
            if not isinstance(T, int):
                raise ValueError(
                    f"{path}: an unrolled recurrence needs a fixed sequence length "
                    "(export without dynamic_length, or use the scan form)"
                )
            nodes.extend(_unrolled(n, body, reverse, layer.n_states, T, g))
        done += 1
    del g.node[:]
    g.node.extend(nodes)
    if done:
        keep = [(o.domain, o.version) for o in proto.opset_import if o.domain != RECURRENT_DOMAIN]
        del proto.opset_import[:]
        for domain, version in keep:
            proto.opset_import.add(domain=domain, version=version)
    return done


def _shapes(proto: onnx.ModelProto) -> dict[str, tuple]:
    """{tensor: its shape (ints, or dim_param names)} from the graph's value_info."""
    out = {}
    for v in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output):
        dims = v.type.tensor_type.shape.dim
        out[v.name] = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims)
    return out


def _uniquely_named(body: onnx.GraphProto, prefix: str) -> onnx.GraphProto:
    """``body`` with every tensor and node name prefixed (unique in the model)."""
    ren: dict[str, str] = {}

    def r(name: str) -> str:
        if not name:
            return name
        return ren.setdefault(name, f"{prefix}/{name}")

    out = copy.deepcopy(body)
    for v in list(out.input) + list(out.output):
        v.name = r(v.name)
    for i, node in enumerate(out.node):
        node.input[:] = [r(x) for x in node.input]
        node.output[:] = [r(x) for x in node.output]
        node.name = f"{prefix}/{node.name or node.op_type + str(i)}"
    del out.value_info[:]
    return out


def _scan(n: Any, body: onnx.GraphProto, reverse: bool) -> Any:
    """The Scan node replacing placeholder ``n`` (states h[, c], Ŵ_hh, b̂_hh; scan
    input ax; the reverse direction scans backwards)."""
    from onnx import helper

    # placeholder inputs: ax, w, b, state...; Scan: states (h[, c], w, b), then ax
    ax, w, b, *state = n.input
    ys, *finals = n.output
    outs = [*finals, f"{n.name}_w_out", f"{n.name}_b_out", ys]
    return helper.make_node(
        "Scan",
        [*state, w, b, ax],
        outs,
        name=n.name or "scan",
        body=body,
        num_scan_inputs=1,
        scan_input_directions=[int(reverse)],
        scan_output_directions=[int(reverse)],
    )


def _unrolled(
    n: Any, body: onnx.GraphProto, reverse: bool, n_states: int, T: int, g: onnx.GraphProto
) -> list:
    """T copies of ``body``; the constants once, as initializers."""
    from onnx import helper, numpy_helper

    ax, w, b, *state = n.input
    ys, *finals = n.output
    consts = [x for x in body.node if x.op_type == "Constant"]
    for c in consts:
        g.initializer.append(
            numpy_helper.from_array(numpy_helper.to_array(c.attribute[0].t), c.output[0])
        )
    step_nodes = [x for x in body.node if x.op_type != "Constant"]
    const_names = {c.output[0] for c in consts}
    ins = [v.name for v in body.input]
    outs = [v.name for v in body.output]
    out_nodes: list = []
    cur = list(state)
    y_at: dict[int, str] = {}
    order = range(T - 1, -1, -1) if reverse else range(T)
    idx_name = f"{n.name}_t"
    for t in order:
        tag = f"{n.name}_t{t}"
        t_const = f"{idx_name}{t}_index"
        g.initializer.append(numpy_helper.from_array(np.array(t, dtype=np.int64), t_const))
        ax_t = f"{tag}_ax"
        out_nodes.append(
            helper.make_node("Gather", [ax, t_const], [ax_t], axis=0, name=f"{tag}_gather")
        )
        mapping = dict(zip(ins, [*cur, w, b, ax_t], strict=True))

        def m(name: str, tag: str = tag, mapping: dict = mapping) -> str:
            if not name or name in const_names:
                return name
            return mapping.get(name, f"{tag}/{name}")

        for x in step_nodes:
            c = copy.deepcopy(x)
            c.input[:] = [m(v) for v in x.input]
            c.output[:] = [m(v) for v in x.output]
            c.name = f"{tag}/{x.name}"
            out_nodes.append(c)
        cur = [m(v) for v in outs[:n_states]]
        y_at[t] = m(outs[-1])
    unsq = []
    axes = f"{n.name}_axes0"
    g.initializer.append(numpy_helper.from_array(np.array([0], dtype=np.int64), axes))
    for t in range(T):
        u = f"{n.name}_y{t}"
        out_nodes.append(helper.make_node("Unsqueeze", [y_at[t], axes], [u], name=f"{u}_unsq"))
        unsq.append(u)
    out_nodes.append(helper.make_node("Concat", unsq, [ys], axis=0, name=f"{n.name}_stack"))
    for src, dst in zip(cur, finals, strict=True):
        out_nodes.append(helper.make_node("Identity", [src], [dst], name=f"{dst}_final"))
    return out_nodes
