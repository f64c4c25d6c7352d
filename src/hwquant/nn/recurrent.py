"""Fully quantized recurrent layers: QuantLSTM, QuantGRU, QuantRNN (FINN-L style).

Each is its ``torch.nn`` twin (``QuantLSTM`` subclasses ``nn.LSTM``: same
constructor, parameters and state-dict names, so float checkpoints load) whose forward
runs the recurrence with a quantizer on every tensor the hardware stores or computes
(:class:`hwquant.spec.RecurrentSpec`). For one layer and direction, with x̂ the
quantized input, Ŵ the quantized weights, b̂ the quantized biases and Q_* the
quantizers:

- all time steps' input projections at once: a_x = x̂·Ŵ_ihᵀ + b̂_ih, [T, B, G·H];
- per step, the gate pre-activations p = Q_gate(a_x[t] + ĥ·Ŵ_hhᵀ + b̂_hh), then
  LSTM: i, f, o = Q_σ(σ(p_i, p_f, p_o)), g = Q_tanh(tanh(p_g)),
  ĉ = Q_cell(f·ĉ + i·g), ĥ = Q_hidden(o·Q_tanh(tanh(ĉ)));
  GRU: r, z = Q_σ(σ(p_r, p_z)), n = Q_tanh(tanh(Q_gate(a_x,n[t] + r·(ĥ·Ŵ_hn + b̂_hn)))),
  ĥ = Q_hidden((1 − z)·n + z·ĥ);
  RNN: ĥ = Q_hidden(tanh(p)) (or relu);
- upper layers take the concatenated hidden states of the layer below, through their
  own input quantizer (on the hidden grid by default, so the codes pass unchanged).

With every quantizer disabled (``hwquant.set_quantization(m, False)``) the layer
computes exactly what ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` compute (up to float
round-off). Supported: ``num_layers``, ``bidirectional``, ``batch_first``,
``dropout`` (between layers, in training), ``bias``, initial states, unbatched inputs
and packed sequences (each sequence stops at its length; the reverse direction starts
at its last step). Not supported: LSTM ``proj_size`` (a clear error).

Learned activation scales are set by the first batch when it reaches them: the
gate quantizer by the first time step's pre-activations (no hidden-state term yet), a
learned hidden-state scale after the first step (until then b_hh stays float). QAT
trains them from there; for PTQ, calibrate (``hwquant.calibration``), which observes
every time step.

A bias on the accumulator scale (``accumulator_bias``) puts b_ih on s_x·s_ih and b_hh
on s_h·s_hh, each preloaded into its own integer accumulator; A2Q weight specs bound
each accumulator (ih with K = the input size, hh with K = hidden size) and clip their
bias as the linear layers do.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from hwquant.spec import A4, W4, LayerSpec
    >>> float_lstm = nn.LSTM(8, 16, bidirectional=True)
    >>> q = QuantLSTM.from_float(float_lstm, LayerSpec(input=A4, weight=W4))
    >>> y, (h, c) = q(torch.randn(5, 3, 8))
    >>> tuple(y.shape), tuple(h.shape)
    ((5, 3, 32), (2, 3, 16))
    >>> len(set((y * 7).round().flatten().tolist())) <= 15  # hidden: signed narrow 4-bit grid
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from hwquant.core.grid import fake_quantize
from hwquant.nn.a2q import A2QWeightQuantizer, a2q_input_format
from hwquant.nn.kinds import layer_kind
from hwquant.nn.layer import activation_quantizer
from hwquant.nn.quantizer import BiasQuantizer, Quantizer
from hwquant.spec.a2q import A2Q
from hwquant.spec.layer_spec import LayerSpec
from hwquant.spec.quant_spec import QuantSpec
from hwquant.spec.recurrent import RecurrentSpec, recurrent_spec

__all__ = [
    "HiddenProjection",
    "Matmul",
    "QuantGRU",
    "QuantLSTM",
    "QuantRNN",
    "QuantRecurrent",
    "RecurrentQuantizers",
    "StepQuant",
]

_ACT = ("gate_quant", "sigmoid_quant", "tanh_quant", "cell_quant", "hidden_quant")
Fn = Callable[[Tensor], Tensor]


class StepQuant(NamedTuple):
    """The activation quantizers of one direction as functions for the time steps of
    one forward pass (:meth:`hwquant.nn.Quantizer.step_function`)."""

    gate: Fn
    sigmoid: Fn
    tanh: Fn
    cell: Fn
    hidden: Fn


def _step_fn(m: nn.Module) -> Fn:
    return m.step_function() if isinstance(m, Quantizer) else m


class HiddenProjection:
    """h ↦ h·Ŵ_hhᵀ + b̂_hh for the steps of one direction; ``weight`` / ``bias`` are the
    quantized tensors (export writes them as the recurrence's inputs)."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        self.weight, self.bias = weight, bias

    def __call__(self, h: Tensor) -> Tensor:
        y = h @ self.weight.transpose(-1, -2)  # MatMul (+ Add): no Gemm to re-fuse
        return y if self.bias is None else y + self.bias


def _weight_quantizer(spec: QuantSpec | None, w: Tensor, in_spec, owner: str) -> nn.Module:
    if spec is None:
        return nn.Identity()
    if isinstance(spec, A2Q):  # accumulator-aware: needs this matmul's input format
        return A2QWeightQuantizer(spec, w, a2q_input_format(in_spec, spec, owner), owner=owner)
    if type(spec) is not QuantSpec:  # e.g. a power-of-two weight scheme
        raise ValueError(
            f"{owner}: recurrent layers take QuantSpec or A2Q weight specs, not "
            f"{type(spec).__name__}"
        )
    return Quantizer.for_weight(spec, w)


def _bias_quantizer(spec: QuantSpec | None, b: Tensor | None) -> nn.Module:
    if spec is None or b is None:
        return nn.Identity()
    if spec.scale.method == "accumulator":
        return BiasQuantizer(spec)
    return Quantizer.for_weight(spec, b)


class RecurrentQuantizers(nn.Module):
    """The quantizers of one layer and direction: ``weight_ih_quant``,
    ``weight_hh_quant``, ``bias_ih_quant``, ``bias_hh_quant`` and the activation
    quantizers ``gate_quant``, ``sigmoid_quant``, ``tanh_quant``, ``cell_quant``,
    ``hidden_quant`` (``nn.Identity`` where the spec leaves a tensor float)."""

    def __init__(
        self, spec: RecurrentSpec, in_spec, params: dict[str, Tensor | None], owner: str
    ) -> None:
        super().__init__()
        self.weight_ih_quant = _weight_quantizer(spec.weight, params["w_ih"], in_spec, owner)
        self.weight_hh_quant = _weight_quantizer(
            spec.hh_weight, params["w_hh"], spec.hidden, owner + " (hh)"
        )
        self.bias_ih_quant = _bias_quantizer(spec.bias, params["b_ih"])
        self.bias_hh_quant = _bias_quantizer(spec.bias, params["b_hh"])
        for name in _ACT:
            setattr(self, name, activation_quantizer(getattr(spec, name.removesuffix("_quant"))))

    def step_quant(self) -> StepQuant:
        """The activation quantizers for the steps of one forward pass."""
        return StepQuant(*(_step_fn(getattr(self, n)) for n in _ACT))

    def weight_codes(self, which: str, w: Tensor) -> tuple[Tensor, Tensor] | None:
        """(q, s) of the ``which`` ("ih" / "hh") weight ``w`` [G·H, K]: int64 codes and
        the per-row scale [G·H] (float64), or None when the weight is not on a
        symmetric integer grid (float, minifloat, per-group, disabled)."""
        wq = getattr(self, f"weight_{which}_quant")
        spec = getattr(wq, "spec", None)
        if (
            spec is None
            or not spec.format.integer_codes
            or spec.zero_point != "symmetric"
            or spec.granularity.grouped
        ):
            return None
        try:
            c = wq.codes(w)
        except ValueError:  # disabled / uninitialized
            return None
        s = c.scale.double().expand(w.shape)[:, 0].contiguous()
        return c.codes.long(), s

    def weights(self, w_ih: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor]:
        """The fake-quantized (Ŵ_ih, Ŵ_hh)."""
        return self.weight_ih_quant(w_ih), self.weight_hh_quant(w_hh)

    def bias(self, which: str, b: Tensor | None, s_in: Tensor | None, w: Tensor) -> Tensor | None:
        """The quantized b_ih / b_hh (``which``): on the accumulator scale s_in·s_w
        (clipped by an A2Q weight quantizer to fit beside the weights) or its own.
        Float while the bias quantizer is off (calibration) or the input scale is not
        known yet (``s_in`` None: a learned scale before its first batch)."""
        bq = getattr(self, f"bias_{which}_quant")
        if b is None or not isinstance(bq, BiasQuantizer):
            return bq(b) if b is not None else None
        if bq.state == "float" or s_in is None:
            return b
        wq = getattr(self, f"weight_{which}_quant")
        s_acc = (s_in * wq.scale_for(w)).reshape(-1)
        if isinstance(wq, A2QWeightQuantizer):
            b = wq.clip_bias(b, s_acc, w)
        return bq(b, s_acc)


class Matmul(NamedTuple):
    """One gate matmul of a recurrent layer: ``key`` (``l0.ih``, ``l1_reverse.hh``),
    its weight [G·H, K] and bias, the quantizer of its input (the layer's input
    quantizer for ih, the hidden-state quantizer for hh) and the direction's
    quantizers."""

    key: str
    which: str
    weight: Tensor
    bias: Tensor | None
    input_quant: nn.Module
    quantizers: RecurrentQuantizers

    @property
    def weight_quant(self) -> nn.Module:
        return getattr(self.quantizers, f"weight_{self.which}_quant")

    @property
    def bias_quant(self) -> nn.Module:
        return getattr(self.quantizers, f"bias_{self.which}_quant")

    def weight_codes(self) -> tuple[Tensor, Tensor] | None:
        """(codes [G·H, K] int64, scale [G·H] float64), or None (not integer)."""
        return self.quantizers.weight_codes(self.which, self.weight)

    @torch.no_grad()
    def bias_codes(self) -> Tensor | None:
        """The integer bias codes b = round(b̂/(s_in·s_w)) preloaded into this matmul's
        accumulator (int64 [G·H]); None without a bias on the accumulator scale."""
        bq, s_in = self.bias_quant, self.input_quant
        if self.bias is None or not isinstance(bq, BiasQuantizer) or bq.state == "float":
            return None
        s = s_in.scale().detach()
        b = self.quantizers.bias(self.which, self.bias, s, self.weight).detach().double()
        s_acc = s.double().reshape(()) * self.weight_quant.scale_for(self.weight).double()
        return torch.round(b / s_acc.reshape(-1)).long()


class QuantRecurrent(nn.Module):
    """Shared forward of QuantLSTM / QuantGRU / QuantRNN (module docstring)."""

    float_type: ClassVar[type[nn.Module]]
    n_states: ClassVar[int] = 1  # h (and c for LSTM)
    gate_count: ClassVar[int] = 1  # G: rows of W_ih per hidden unit (LSTM 4, GRU 3)
    #: the cell's activation quantizers (RecurrentSpec fields it uses)
    cell_quantizers: ClassVar[tuple[str, ...]]

    def _setup_quant(self, spec: LayerSpec) -> None:
        if getattr(self, "proj_size", 0):
            raise ValueError(
                f"{type(self).__name__} does not support proj_size (got {self.proj_size})"
            )
        relu = getattr(self, "nonlinearity", "tanh") == "relu"
        rspec = recurrent_spec(
            spec, self.cell_quantizers, relu_hidden=relu, owner=type(self).__name__
        )
        on_acc = rspec.bias is not None and rspec.bias.scale.method == "accumulator"
        if on_acc and (rspec.hidden is None or rspec.hh_weight is None):
            raise ValueError(
                f"{type(self).__name__}: a bias on the accumulator scale needs quantized "
                "hidden states and hh weights (RecurrentSpec.hidden, weight_hh)"
            )
        self.layer_spec = rspec
        # layer 0 quantizes x with ``input``; upper layers take the hidden states below
        upper = rspec.hidden if rspec.hidden is not None else rspec.input
        in_specs = [rspec.input] + [upper] * (self.num_layers - 1)
        self.input_quant = nn.ModuleList(activation_quantizer(s) for s in in_specs)
        self.directions = nn.ModuleDict()
        for layer in range(self.num_layers):
            for sfx in self.suffixes():
                p = self.params(layer, sfx)
                owner = f"{type(self).__name__} layer {layer}{sfx}"
                self.directions[f"l{layer}{sfx}"] = RecurrentQuantizers(
                    rspec, in_specs[layer], p, owner
                )

    def matmuls(self) -> list[Matmul]:
        """Every gate matmul (ih and hh per layer and direction), in execution order."""
        out = []
        for layer in range(self.num_layers):
            for sfx in self.suffixes():
                key, p = f"l{layer}{sfx}", self.params(layer, sfx)
                q = self.directions[key]
                for which, iq in (("ih", self.input_quant[layer]), ("hh", q.hidden_quant)):
                    w, b = p[f"w_{which}"], p[f"b_{which}"]
                    out.append(Matmul(f"{key}.{which}", which, w, b, iq, q))
        return out

    def suffixes(self) -> tuple[str, ...]:
        """The direction suffixes of the parameter names: ("",) or ("", "_reverse")."""
        return ("", "_reverse") if self.bidirectional else ("",)

    def params(self, layer: int, sfx: str) -> dict[str, Tensor | None]:
        """{"w_ih", "w_hh", "b_ih", "b_hh"} of ``layer`` and direction ``sfx``."""
        g = lambda n: getattr(self, f"{n}_l{layer}{sfx}", None)  # noqa: E731
        return {
            "w_ih": g("weight_ih"),
            "w_hh": g("weight_hh"),
            "b_ih": g("bias_ih"),
            "b_hh": g("bias_hh"),
        }

    @classmethod
    def from_float(cls, module: nn.Module, spec: LayerSpec) -> QuantRecurrent:
        """The quantized twin of ``module`` (same hyper-parameters, weights copied)."""
        p = next(module.parameters())
        q = cls(**cls.float_kwargs(module), spec=spec, device=p.device, dtype=p.dtype)
        q.load_state_dict(module.state_dict(), strict=False)
        q.reset_weight_scale()
        q.train(module.training)
        return q

    @staticmethod
    def float_kwargs(m: nn.Module) -> dict:
        kw = {
            "input_size": m.input_size,
            "hidden_size": m.hidden_size,
            "num_layers": m.num_layers,
            "bias": m.bias,
            "batch_first": m.batch_first,
            "dropout": m.dropout,
            "bidirectional": m.bidirectional,
        }
        if getattr(m, "proj_size", 0):
            kw["proj_size"] = m.proj_size
        if isinstance(m, nn.RNN):
            kw["nonlinearity"] = m.nonlinearity
        return kw

    @torch.no_grad()
    def reset_weight_scale(self) -> None:
        """Re-derive learned weight / bias scales from the current parameters."""
        for mm in self.matmuls():
            for q, t in ((mm.weight_quant, mm.weight), (mm.bias_quant, mm.bias)):
                if isinstance(q, Quantizer) and q.spec.scale.learned and t is not None:
                    q.init_from(t)

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        if not any(k.startswith(prefix + "directions.") for k in state_dict):
            self.reset_weight_scale()  # a float checkpoint: scales from its weights

    # ---------------------------------------------------------------- checks
    def _check_input(self, x: Tensor, hx) -> tuple[Tensor, bool]:
        name = type(self).__name__
        if not isinstance(x, Tensor) or x.dim() not in (2, 3):
            got = x.dim() if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name}: input must be 2-D (unbatched) or 3-D, got {got}-D")
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"{name}: input feature size must be {self.input_size}, got {x.shape[-1]}"
            )
        batched = x.dim() == 3
        if not batched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        return x, batched

    def _initial(self, hx, batch: int, batched: bool, like: Tensor) -> list[Tensor]:
        """[h0] (or [h0, c0] for LSTM), [L·D, B, H] each, zeros when hx is None."""
        n_state = self.n_states
        want = (self.num_layers * (2 if self.bidirectional else 1), batch, self.hidden_size)
        if hx is None:
            return [like.new_zeros(want) for _ in range(n_state)]
        states = list(hx) if n_state == 2 else [hx]
        if n_state == 2 and (not isinstance(hx, tuple | list) or len(hx) != 2):
            raise ValueError(f"{type(self).__name__}: hx must be a tuple (h0, c0)")
        out = []
        for i, s in enumerate(states):
            s = s if batched else s.unsqueeze(1)
            if tuple(s.shape) != want:
                what = "c0" if i == 1 else "h0"
                raise ValueError(
                    f"{type(self).__name__}: {what} must have shape {want} "
                    f"(num_layers·directions, batch, hidden_size), got {tuple(s.shape)}"
                )
            out.append(s)
        return out

    # ---------------------------------------------------------------- forward
    def forward(self, input, hx=None):
        packed = isinstance(input, PackedSequence)
        lengths = None
        if packed:
            x, lengths = pad_packed_sequence(input)  # [T, B, F], original batch order
            batched = True
            if x.shape[-1] != self.input_size:
                raise ValueError(
                    f"{type(self).__name__}: input feature size must be {self.input_size}, "
                    f"got {x.shape[-1]}"
                )
        else:
            x, batched = self._check_input(input, hx)
        states = self._initial(hx, x.shape[1], batched, x)
        y, finals = self._layers(x, states, lengths, given=hx is not None)
        if packed:
            order = input.sorted_indices
            y_sorted = y if order is None else y.index_select(1, order)
            lens = lengths if order is None else lengths.index_select(0, order.cpu())
            data = pack_padded_sequence(y_sorted, lens, enforce_sorted=True).data
            y = PackedSequence(
                data, input.batch_sizes, input.sorted_indices, input.unsorted_indices
            )
        elif not batched:
            y = y.squeeze(1)
            finals = [f.squeeze(1) for f in finals]
        elif self.batch_first:
            y = y.transpose(0, 1)
        return y, (tuple(finals) if self.n_states == 2 else finals[0])

    def _layers(
        self, x: Tensor, states: list[Tensor], lengths: Tensor | None, given: bool
    ) -> tuple[Tensor, list[Tensor]]:
        """All layers and directions; ``given``: the initial states came from the
        caller (they are quantized; zeros are on every grid)."""
        finals: list[list[Tensor]] = [[] for _ in states]
        mask = None
        if lengths is not None:  # [T, B, 1]: step t is inside sequence b
            t = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
            mask = (t < lengths.to(x.device).unsqueeze(0)).unsqueeze(2)
        D = 2 if self.bidirectional else 1
        for layer in range(self.num_layers):
            xq = self.input_quant[layer](x)
            if D == 2:
                init = [[s[layer * 2 + d] for s in states] for d in (0, 1)]
                if given:
                    init = [
                        self._quantized_init(layer, sfx, v)
                        for sfx, v in zip(("", "_reverse"), init, strict=True)
                    ]
                fused = self._both_directions(layer, xq, init, mask)
                if fused is not None:
                    x, lasts = fused
                    for f, v in zip(finals, lasts, strict=True):
                        f.extend(v)
                    if self.dropout and self.training and layer < self.num_layers - 1:
                        x = F.dropout(x, self.dropout, True)
                    continue
            outs = []
            for d, sfx in enumerate(self.suffixes()):
                i = layer * D + d
                init = [s[i] for s in states]
                init = self._quantized_init(layer, sfx, init) if given else init
                out, last = self._direction(layer, sfx, xq, init, mask, reverse=d == 1)
                outs.append(out)
                for f, v in zip(finals, last, strict=True):
                    f.append(v)
            x = outs[0] if D == 1 else torch.cat(outs, 2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        return x, [torch.stack(f) for f in finals]

    def _direction(
        self,
        layer: int,
        sfx: str,
        xq: Tensor,
        init: list[Tensor],
        mask: Tensor | None,
        reverse: bool,
    ) -> tuple[Tensor, list[Tensor]]:
        q: RecurrentQuantizers = self.directions[f"l{layer}{sfx}"]
        p = self.params(layer, sfx)
        w_ih, w_hh = q.weights(p["w_ih"], p["w_hh"])
        s_x = self._scale(self.input_quant[layer])
        b_ih = q.bias("ih", p["b_ih"], s_x, p["w_ih"])
        b_hh = q.bias("hh", p["b_hh"], self._scale(q.hidden_quant), p["w_hh"])
        ax = F.linear(xq, w_ih, b_ih)  # [T, B, G·H]: every step's input projection at once
        hh = HiddenProjection(w_hh, b_hh)
        return self.recurrence(ax, hh, q.step_quant(), init, mask, reverse, f"l{layer}{sfx}")

    def _quantized_init(self, layer: int, sfx: str, init: list[Tensor]) -> list[Tensor]:
        """A caller's initial h (and c) on the hidden (and cell) grid."""
        q = self.directions[f"l{layer}{sfx}"]
        return [q.hidden_quant(init[0]), *(q.cell_quant(c) for c in init[1:])]

    def _both_directions(
        self, layer: int, xq: Tensor, init: list[list[Tensor]], mask: Tensor | None
    ) -> tuple[Tensor, list[list[Tensor]]] | None:
        """Both directions of a bidirectional layer in one time loop, each step one
        batched op for the two (the reverse direction reads its projections backwards):
        the same arithmetic as two :meth:`recurrence` calls with half the per-step
        calls. None when a quantizer is not static (calibrating, disabled one-sided,
        exporting: then the directions run one by one)."""
        qs = [self.directions[f"l{layer}{sfx}"] for sfx in ("", "_reverse")]
        f = _stacked_steps(qs[0].step_quant(), qs[1].step_quant())
        if f is None:  # e.g. exporting: each direction becomes its own loop node
            return None
        axs, hhs = [], []
        for sfx, q in zip(("", "_reverse"), qs, strict=True):
            p = self.params(layer, sfx)
            w_ih, w_hh = q.weights(p["w_ih"], p["w_hh"])
            s_x = self._scale(self.input_quant[layer])
            b_ih = q.bias("ih", p["b_ih"], s_x, p["w_ih"])
            b_hh = q.bias("hh", p["b_hh"], self._scale(q.hidden_quant), p["w_hh"])
            axs.append(F.linear(xq, w_ih, b_ih))
            hhs.append((w_hh, b_hh))
        ax = torch.stack((axs[0], axs[1].flip(0)), 1)  # [T, 2, B, G·H]
        w = torch.stack((hhs[0][0], hhs[1][0]))  # [2, G·H, H]
        b = None if hhs[0][1] is None else torch.stack((hhs[0][1], hhs[1][1])).unsqueeze(1)
        state = [torch.stack(v) for v in zip(*init, strict=True)]  # [2, B, H] each
        if mask is not None:  # [T, B, 1] → [T, 2, B, 1], the reverse half read backwards
            mask = torch.stack((mask, mask.flip(0)), 1)
        out, last = self.recurrence(ax, HiddenProjection(w, b), f, state, mask)
        y = torch.cat((out[:, 0], out[:, 1].flip(0)), -1)  # [T, B, 2H]
        return y, [[v[0], v[1]] for v in last]

    def recurrence(
        self,
        ax: Tensor,
        hh: Fn,
        f: StepQuant,
        state: list[Tensor],
        mask: Tensor | None = None,
        reverse: bool = False,
        direction: str = "l0",
    ) -> tuple[Tensor, list[Tensor]]:
        """The time steps of one direction (``direction``: its key in ``directions``):
        ``ax`` [T, B, G·H] the input projections, ``hh`` the hidden projection
        h ↦ h·Ŵ_hhᵀ + b̂_hh (a :class:`HiddenProjection`), ``f`` the activation
        quantizers, ``state`` the initial [h] or [h, c]. Returns the hidden states
        [T, B, H] and the final state. Integer execution calls it with integer
        projections and re-quantizing step functions (the same cell arithmetic);
        export replaces it with one node that becomes an ONNX ``Scan``
        (:mod:`hwquant.export.recurrent`)."""
        T = ax.shape[0]
        steps = range(T - 1, -1, -1) if reverse else range(T)
        outs: list[Tensor] = [ax.new_empty(0)] * T
        ax_t = ax.unbind(0)  # one backward node (indexing ax[t] would zero-fill ax per step)
        for t in steps:
            new = self.step(f, ax_t[t], state, hh)
            if mask is not None:  # past a sequence's end: keep the state, output 0
                m = mask[t]
                new = [torch.where(m, n, s) for n, s in zip(new, state, strict=True)]
                outs[t] = torch.where(m, new[0], torch.zeros_like(new[0]))
            else:
                outs[t] = new[0]
            state = new
        return torch.stack(outs), state

    @staticmethod
    def _scale(q: nn.Module) -> Tensor | None:
        return q.scale() if isinstance(q, Quantizer) and q.state == "static" else None

    def step(self, q: StepQuant, ax: Tensor, state: list[Tensor], hh: Fn) -> list[Tensor]:
        """One time step: the new [h] (or [h, c]) from the input projection ``ax``."""
        raise NotImplementedError  # pragma: no cover - each cell type defines it


def _stacked_steps(a: StepQuant, b: StepQuant) -> StepQuant | None:
    """The two directions' step quantizers as one acting on [2, ...] tensors (each
    direction its own scale), or None unless each pair is two static quantizers on
    the same grid or two identities."""
    out = []
    for fa, fb in zip(a, b, strict=True):
        sa, sb = getattr(fa, "static", None), getattr(fb, "static", None)
        if isinstance(fa, nn.Identity) and isinstance(fb, nn.Identity):
            out.append(fa)
        elif (
            sa is not None
            and sb is not None
            and sa.grid == sb.grid
            and sa.z is None
            and sb.z is None
        ):
            s = torch.stack((sa.s.reshape(()), sb.s.reshape(()))).reshape(2, 1, 1)
            out.append(lambda x, s=s, g=sa.grid: fake_quantize(x, s, None, g))
        else:
            return None
    return StepQuant(*out)


def _init(self: QuantRecurrent, base: type, args, spec: LayerSpec, kwargs) -> None:
    base.__init__(self, *args, **kwargs)
    self._setup_quant(spec)


@layer_kind(role="recurrent", takes_default=True)
class QuantLSTM(QuantRecurrent, nn.LSTM):
    """``nn.LSTM`` with every tensor quantized (module docstring)."""

    float_type = nn.LSTM
    n_states = 2
    gate_count = 4
    cell_quantizers = ("gate", "sigmoid", "tanh", "cell", "hidden")

    def __init__(self, *args, spec: LayerSpec, **kwargs) -> None:
        _init(self, nn.LSTM, args, spec, kwargs)

    def step(self, q, ax, state, hh):
        h, c = state
        H = self.hidden_size
        p = q.gate(ax + hh(h))  # [B, 4H]: i, f, g, o
        s = q.sigmoid(torch.sigmoid(torch.cat((p[..., : 2 * H], p[..., 3 * H :]), -1)))
        g = q.tanh(torch.tanh(p[..., 2 * H : 3 * H]))
        c = q.cell(s[..., H : 2 * H] * c + s[..., :H] * g)
        h = q.hidden(s[..., 2 * H :] * q.tanh(torch.tanh(c)))
        return [h, c]


@layer_kind(role="recurrent", takes_default=True)
class QuantGRU(QuantRecurrent, nn.GRU):
    """``nn.GRU`` with every tensor quantized (module docstring)."""

    float_type = nn.GRU
    cell_quantizers = ("gate", "sigmoid", "tanh", "hidden")
    gate_count = 3

    def __init__(self, *args, spec: LayerSpec, **kwargs) -> None:
        _init(self, nn.GRU, args, spec, kwargs)

    def step(self, q, ax, state, hh):
        (h,) = state
        H = self.hidden_size
        ah = hh(h)  # [B, 3H]: r, z, n
        rz = q.sigmoid(torch.sigmoid(q.gate(ax[..., : 2 * H] + ah[..., : 2 * H])))
        r, z = rz[..., :H], rz[..., H:]
        n = q.tanh(torch.tanh(q.gate(ax[..., 2 * H :] + r * ah[..., 2 * H :])))
        return [q.hidden(n + z * (h - n))]


@layer_kind(role="recurrent", takes_default=True)
class QuantRNN(QuantRecurrent, nn.RNN):
    """``nn.RNN`` (tanh or relu) with every tensor quantized (module docstring)."""

    float_type = nn.RNN
    cell_quantizers = ("gate", "hidden")

    def __init__(self, *args, spec: LayerSpec, **kwargs) -> None:
        _init(self, nn.RNN, args, spec, kwargs)

    def step(self, q, ax, state, hh):
        (h,) = state
        p = q.gate(ax + hh(h))
        return [q.hidden(torch.tanh(p) if self.nonlinearity == "tanh" else torch.relu(p))]
