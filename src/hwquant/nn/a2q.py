"""The A2Q / A2Q+ weight quantizer (REFERENCE.md §1–2) and model-level helpers.

Per output channel c (rows of the weight seen as [C, K']):

    r_c = v_c                     (A2Q)      r_c = v_c − mean(v_c)      (A2Q+)
    g_c = min(2^γ_c, T·s_c)       γ (log2 g) and s (log2 s) learned
    w_c = g_c · r_c / ‖r_c‖₁      the effective float weight, ‖w_c‖₁ = g_c
    q_c = clip(round_toward_zero(w_c / s_c), −q_max, q_max)

so ‖q_c‖₁ ≤ ‖w_c‖₁/s_c = g_c/s_c ≤ T by construction (truncation and clipping only
shrink magnitudes): every dot product Σ x·q of N-bit inputs fits a P-bit signed
accumulator. T = (2^(P−1) − 1)·2^(1_s − N) for A2Q and (2^P − 2)/(2^N − 1) for A2Q+,
where zero-centring also bounds each sign half by T/2, which is what A2Q+ needs
(:mod:`hwquant.core.accumulator`).

The normalization runs in the weight's dtype with float64 sums, and the clamp keeps a
relative margin of 1e-6 below T: a float32 w and w/s carry at most 6 roundings of
relative 2^-24 each (3.6e-7 < 1e-6), so ‖q‖₁ ≤ T holds despite round-off. For A2Q+ the
divisor is ‖r‖₁ + |Σ r| (Σ r = 0 exactly for exact centring; its round-off is what
the second term absorbs, detached), so each sign half of w is at most g/2 however
inexactly float32 centres a long row.

The bias shares the accumulator. A layer whose bias is quantized on the accumulator
scale (code b = round(bias/(s_in·s_w))) clips it, on every forward pass, to the codes
that keep b + Σ x·q within P bits for every input of the N-bit format
(:meth:`~A2QWeightQuantizer.bias_code_range`, exact per channel given the current codes
q, :func:`hwquant.core.accumulator.bias_code_range`):

    −2^(P−1) − min_x Σ x·q ≤ b ≤ 2^(P−1) − 1 − max_x Σ x·q

(a range that always contains 0 within the weight budget). The weights keep their whole
budget and gradient; the bias learns straight-through inside the range (its gradient
stops where it is clipped, like any clipped quantizer) and the clip is what the
integer executor adds to its P-bit register, so the guarantee covers the whole
accumulator by construction. In the L1 form this is ‖q‖₁ ≤ T − |b|/2^(N−1_s) (A2Q) and
‖q‖₁ ≤ T⁺ − 2|b|/(2^N − 1) (A2Q+), :func:`~hwquant.core.accumulator.l1_budget_with_bias`.
A spec with ``bias_in_accumulator=False`` (bias applied after the accumulator, FINN
thresholds) leaves the bias alone.

The quantizer is a :class:`~hwquant.nn.Quantizer`: its scale is the per-channel s, its
grid the weight format with round-toward-zero, and its input (what the export pass
writes a ``Quant`` node for) the effective weight w — an ordinary QONNX ``Quant``
(rounding_mode ``DOWN``) on a float weight.

Initialization from a float model (``hwquant.quantize``): s = max|r|/q_max and
g = ‖r‖₁ per channel (as in the A2Q papers). Where ‖r‖₁ exceeds the budget T·s the
clamp holds g at T·s, so the codes start on the whole budget in the float channel's
direction, and g only takes over once training brings the channel inside. (Starting g
at the clamp instead, where its gradient can shrink it, cost up to 9 points of digits
accuracy at P = 10–11; ``benchmarks/peers.py``.) :func:`ep_init` projects each channel
onto the L1 ball of radius s·T instead (A2Q+ paper). Where the budget is so tight that
*every* code of a layer truncates to 0 (T·max|r|/‖r‖₁ < 1 in every channel: the layer
passes no signal and no gradient, so QAT cannot start), the layer is initialized by
:func:`ep_init` instead, with a :class:`DeadLayerWarning`, when it is built (its
random init) and again by ``hwquant.quantize`` / ``reset_weight_scale`` (the float
weights) (:meth:`~A2QWeightQuantizer.revive`; on digits, A2Q at P = 10 then trains to
60–70 % where it stays at chance, ``benchmarks/peers.py``). :mod:`hwquant.algorithms.a2q_ptq` computes budget-respecting
codes from data (:meth:`~A2QWeightQuantizer.freeze_codes`; :func:`unfreeze` resumes
QAT from them). Layers build the quantizer from an A2Q weight spec and their input
quantizer; other matmuls (e.g. recurrent gates) can build one directly with
``A2QWeightQuantizer(spec, weight, input_format)``.

Example:
    >>> import torch
    >>> from hwquant.nn import QuantLinear
    >>> from hwquant.spec import A2Q, A4U, IntFormat, LayerSpec
    >>> spec = LayerSpec(input=A4U, weight=A2Q(IntFormat(4, narrow=True), accumulator_bits=10))
    >>> layer = QuantLinear(64, 8, spec=spec)
    >>> wq = layer.weight_quant
    >>> wq.accumulator_bits, round(wq.l1_bound, 3)   # T = 511 / 16
    (10, 31.938)
    >>> bool(wq.code_rows(layer.weight).abs().sum(1).max() <= wq.l1_bound)
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hwquant.core import kernels
from hwquant.core.accumulator import (
    bias_code_range,
    l1_budget,
    min_feasible_bits,
    project_l1_ball,
    worst_case_range,
)
from hwquant.core.scaling import EPS, check_finite
from hwquant.nn.kinds import kind_of
from hwquant.nn.quantizer import BiasQuantizer, QuantCodes, Quantizer
from hwquant.spec.a2q import A2Q
from hwquant.spec.formats import IntFormat
from hwquant.spec.quant_spec import QuantSpec

__all__ = [
    "MARGIN",
    "A2QWeightQuantizer",
    "BoundCheck",
    "DeadLayerWarning",
    "a2q_input_format",
    "a2q_layers",
    "a2q_penalty",
    "accumulator_bias_codes",
    "check_bounds",
    "ep_init",
    "layer_label",
    "unfreeze",
]

#: relative margin kept below the L1 budget T (absorbs float32 round-off).
MARGIN = 1e-6


class DeadLayerWarning(UserWarning):
    """An A2Q layer's every weight code is 0 at the default init under its budget; it
    is initialized by ep_init instead (:meth:`A2QWeightQuantizer.revive`)."""


def layer_label(layer: nn.Module) -> str:
    """``QuantConv2d(16→32)``-style label for error messages (layers have no path yet)."""
    t = type(layer).__name__
    if hasattr(layer, "in_features"):
        return f"{t}({layer.in_features}→{layer.out_features})"
    if hasattr(layer, "in_channels"):
        return f"{t}({layer.in_channels}→{layer.out_channels})"
    return t


class A2QWeightQuantizer(Quantizer):
    """Accumulator-aware weight quantizer (see the module docstring).

    Args:
        spec: an :class:`~hwquant.spec.A2Q` or :class:`~hwquant.spec.A2QPlus` spec.
        weight: the weight it quantizes (shape; initial g and s from its statistics).
        input_format: the N-bit integer format of the layer's input.
        owner: label of the owning layer, used in error messages.

    Attributes: ``accumulator_bits`` (P), ``input_format``, ``zero_centre``,
    ``l1_bound`` (T or T⁺), ``norm_param`` (log2 g per channel),
    ``bias_in_accumulator`` (the layer's bias shares the P-bit register and is clipped
    to fit, :meth:`clip_bias`), ``rows_are_outputs`` (each channel row feeds one output:
    False for transposed convolutions, whose bias is then not clipped).
    """

    def __init__(
        self,
        spec: A2Q,
        weight: Tensor,
        input_format: IntFormat,
        *,
        owner: str = "",
        name: str = "",
    ) -> None:
        if not isinstance(spec, A2Q):
            raise ValueError(f"A2QWeightQuantizer needs an A2Q / A2QPlus spec, got {spec!r}")
        if not isinstance(input_format, IntFormat):
            raise ValueError(f"input_format must be an IntFormat, got {input_format!r}")
        owner = owner or "layer"
        bits, n_in, signed = spec.accumulator_bits, input_format.bits, input_format.signed
        p_min = min_feasible_bits(n_in, signed, spec.zero_centre)
        if bits < p_min:
            raise ValueError(
                f"{owner}: {type(spec).__name__}(accumulator_bits={bits}) can never be met with "
                f"{input_format.name} inputs (every weight would round to zero); "
                f"the minimum accumulator for this layer is P = {p_min}"
            )
        super().__init__(spec, tuple(weight.shape), name=name)
        self.role = "weight"
        self.owner = owner
        self.input_format = input_format
        self.accumulator_bits = bits
        self.zero_centre = spec.zero_centre
        self.bias_in_accumulator = spec.bias_in_accumulator
        self.rows_are_outputs = True
        self.l1_bound = l1_budget(bits, n_in, signed, spec.zero_centre)
        self.axis = spec.granularity.axis % weight.dim()
        self.channels = int(weight.shape[self.axis])
        self.norm_param = nn.Parameter(torch.zeros(self.channels))
        self.register_buffer("frozen", torch.tensor(False))
        self.init_from(weight.detach())

    @classmethod
    def for_layer(cls, layer: nn.Module, spec: A2Q) -> A2QWeightQuantizer:
        """The quantizer of ``layer.weight``; the input format comes from the layer's
        input quantizer (``layer.layer_spec.input``) or, if it has none, from
        ``spec.input_format``; neither is a ``ValueError`` naming the layer."""
        owner = layer_label(layer)
        q = cls(spec, layer.weight, _input_format(layer, spec, owner), owner=owner)
        kind = kind_of(layer)
        q.rows_are_outputs = kind is None or not kind.transposed
        return q

    # ---------------------------------------------------------------- rows
    def _rows(self, v: Tensor) -> Tensor:
        """[C, K'] rows in v's dtype, one per output channel (zero-centred for A2Q+)."""
        rows = self._rows_raw(v)
        return rows - rows.mean(1, keepdim=True) if self.zero_centre else rows

    def _unrows(self, rows: Tensor, like: Tensor) -> Tensor:
        rows = rows.to(like.dtype)
        if self.axis == 0:
            return rows.reshape(like.shape)
        return rows.reshape(like.movedim(self.axis, 0).shape).movedim(0, self.axis)

    def _scale_rows(self) -> Tensor:
        return self.scale().reshape(self.channels)

    # ---------------------------------------------------------------- g and w
    def max_norm(self) -> Tensor:
        """T·s per channel (with the round-off margin): the largest allowed g."""
        return self._scale_rows() * (self.l1_bound * (1.0 - MARGIN))

    def norm(self) -> Tensor:
        """g = min(2^γ, T·s) per channel."""
        return torch.minimum(torch.exp2(self.norm_param), self.max_norm())

    def effective_weight(self, v: Tensor) -> Tensor:
        """w = g·r/‖r‖₁ per channel (r = v, or v − mean(v) for A2Q+), in v's layout
        (round-off: module docstring)."""
        w, _, _ = _normalized(self._rows(v), self.norm(), self.zero_centre)
        return self._unrows(w, v)

    def _frozen_weight(self, v: Tensor) -> Tensor:
        return v

    def _set_forward(self) -> None:
        super()._set_forward()
        frozen = getattr(self, "frozen", None)  # absent while Quantizer.__init__ runs
        self._weight_fn = (
            self._frozen_weight if frozen is not None and bool(frozen) else self.effective_weight
        )
        self._fused = self._weight_fn == self.effective_weight and self.grid.saturating

    def forward(self, v: Tensor) -> Tensor:
        if self._fused and self._forward == self._forward_static:
            # one autograd node, the values of the two-step path below (_A2QFakeQuant,
            # or compiled with 2^γ and s(p) inside, hwquant.core.kernels)
            bound, g = self.l1_bound * (1.0 - MARGIN), self.grid
            src = self.scale_source() if self.axis == 0 else None
            if src is not None:
                args = (bound, self.zero_centre, g.lo, g.hi)
                out = kernels.a2q_fake_quant(v, self.norm_param, *src, *args)
                if out is not None:
                    return out
            a = torch.exp2(self.norm_param)
            rows, s = self._rows_raw(v), self._scale_rows()
            y = _A2QFakeQuant.apply(rows, a, s, self.zero_centre, bound, g)[0]
            return self._unrows(y, v)
        return self._forward(self._weight_fn(v))

    def _rows_raw(self, v: Tensor) -> Tensor:
        return (v if self.axis == 0 else v.movedim(self.axis, 0)).reshape(self.channels, -1)

    # ---------------------------------------------------------------- initialization
    @torch.no_grad()
    def _set_state(self, s: Tensor, g: Tensor) -> None:
        s = s.float().clamp(min=EPS)
        p = torch.log2(s) if self.log2 else s
        self.scale_param.copy_(p.reshape(self.scale_shape))
        self.norm_param.copy_(torch.log2(g.float().clamp(min=EPS)))
        self.initialized.fill_(True)
        self._set_forward()

    def _init_scale(self, rows: Tensor) -> Tensor:
        return (rows.abs().amax(1) / self.grid.hi).clamp(min=EPS)

    @torch.no_grad()
    def init_from(self, x: Tensor) -> None:
        """s = max|r|/q_max and g = ‖r‖₁ per channel: where that exceeds the budget the
        clamp holds g at T·s (module docstring; :meth:`ep_init` projects instead)."""
        check_finite(x, f"weight of {self.owner}")
        if bool(getattr(self, "frozen", False)):
            self.frozen.fill_(False)
        rows = self._rows(x.detach().double())
        self._set_state(self._init_scale(rows), rows.abs().sum(1))

    @torch.no_grad()
    def ep_init(self, v: Tensor) -> Tensor:
        """Euclidean-projection init (A2Q+ paper, REFERENCE.md §2): s from max|r|, each
        channel projected onto the L1 ball of radius s·T (Duchi et al.), g = min(‖r*‖₁,
        s·T). Returns the projected weight (v's layout) for the caller to store."""
        check_finite(v, f"weight of {self.owner}")
        self.frozen.fill_(False)
        rows = self._rows(v.detach().double())
        s = self._init_scale(rows)
        radius = s * (self.l1_bound * (1.0 - MARGIN))
        proj = project_l1_ball(rows, radius)
        self._set_state(s, torch.minimum(proj.abs().sum(1), radius))
        return self._unrows(proj, v)

    @torch.no_grad()
    def revive(self, v: Tensor, stacklevel: int = 2) -> Tensor | None:
        """None where some code of ``v`` is nonzero in the current state; where every
        code is 0 (the budget truncates the whole layer away, so it passes no signal
        and gets no gradient), :meth:`ep_init` of ``v`` with a
        :class:`DeadLayerWarning` (``stacklevel`` above the caller): returns the
        weight for the caller to store (module docstring)."""
        if bool((self.code_rows(v) != 0).any()):
            return None
        warnings.warn(
            f"{self.owner}: every weight code is 0 under the {self.accumulator_bits}-bit "
            f"accumulator budget (T = {self.l1_bound:.4g} code units per channel) at the "
            "default A2Q init, so the layer would pass no signal; it is initialized by "
            "Euclidean projection (ep_init) of its weights instead, which changes them",
            DeadLayerWarning,
            stacklevel=stacklevel + 1,
        )
        return self.ep_init(v)

    @torch.no_grad()
    def freeze_codes(self, q: Tensor, s: Tensor) -> Tensor:
        """Fix the integer codes (e.g. from accumulator-aware PTQ): ``q`` [C, K'] rows,
        ``s`` [C] scales. Checks the budget (``ValueError`` if exceeded), stops the
        normalization and returns the weight to store, s·(q + sign(q)/2), which rounds
        toward zero back to exactly q. :meth:`init_from` / :meth:`ep_init` unfreeze."""
        q = q.double().reshape(self.channels, -1)
        bad = int((~_within_budget(q, self.l1_bound, self.zero_centre)).sum())
        if bad:
            raise ValueError(
                f"{self.owner}: {bad} channel(s) of the given codes exceed the "
                f"{'A2Q+' if self.zero_centre else 'A2Q'} budget {self.l1_bound:.4g}"
            )
        if q.numel() and float(q.abs().max()) > self.grid.hi:
            raise ValueError(f"{self.owner}: codes exceed the weight format {self.spec.format}")
        s = s.double().reshape(self.channels, 1).clamp(min=EPS)
        rows = s * (q + 0.5 * torch.sign(q))
        self.frozen.fill_(True)
        limit = s.reshape(-1) * (self.l1_bound * (1.0 - MARGIN))
        self._set_state(s.reshape(-1), torch.minimum(rows.abs().sum(1), limit))
        shape = (self.channels, *[n for i, n in enumerate(self.shape) if i != self.axis])
        return rows.float().reshape(shape).movedim(0, self.axis)

    @torch.no_grad()
    def unfreeze(self, v: Tensor) -> Tensor:
        """Back to the trainable normalized form, starting from the frozen codes q
        (e.g. QAT after accumulator-aware PTQ): returns the weight s·(q + δ·sign(q))
        with δ ≤ 1/2 per channel small enough that ‖w/s‖₁ stays within the budget, so
        the codes survive (A2Q+ re-centres the channels, which moves them slightly)."""
        if not bool(self.frozen):
            return v
        q = self.code_rows(v).double()  # [C, K']
        s = self._scale_rows().detach().double().unsqueeze(1)
        nnz = (q != 0).sum(1, keepdim=True).clamp(min=1)
        room = self.l1_bound * (1.0 - 2 * MARGIN) - q.abs().sum(1, keepdim=True)
        delta = (0.9 * room / nnz).clamp(min=0.0, max=0.5)
        rows = s * (q + delta * torch.sign(q))
        self.frozen.fill_(False)
        limit = s.squeeze(1) * (self.l1_bound * (1.0 - MARGIN))
        self._set_state(s.squeeze(1), torch.minimum(rows.abs().sum(1), limit))
        return self._unrows(rows, v)

    # ---------------------------------------------------------------- the bias
    @torch.no_grad()
    def bias_code_range(self, v: Tensor, w_hat: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per channel, the bias codes [lo, hi] (int64 [C], accumulator scale) that keep
        b + Σ x·q within the P-bit register for every input of the format, given the
        current codes q of ``v`` (module docstring): lo = −2^(P−1) − min Σ x·q,
        hi = 2^(P−1) − 1 − max Σ x·q. ``w_hat``: the fake-quantized weight of ``v``
        when the caller has it (its codes are read instead of recomputed)."""
        fmt, bits = self.input_format, self.accumulator_bits
        if w_hat is not None:  # one compiled pass where it applies (the same values)
            s = self.scale().detach().reshape(-1)
            found = kernels.a2q_bias_range(self._rows_raw(w_hat), s, fmt.min_int, fmt.max_int, bits)
            if found is not None:
                return found
        codes = self.code_rows(v) if w_hat is None else self._codes_of(w_hat)
        y_min, y_max = worst_case_range(codes, fmt.min_int, fmt.max_int)
        return bias_code_range(y_min, y_max, bits)

    def _clips(self, bias: Tensor) -> bool:
        """Whether :meth:`clip_bias` clips ``bias`` (else it returns it unchanged)."""
        return (
            self.bias_in_accumulator
            and self.rows_are_outputs
            and bias.numel() == self.channels
            and self._forward != self._forward_float
        )

    def bias_clip_args(self, bias: Tensor, w_hat: Tensor | None) -> tuple | None:
        """:meth:`clip_bias` as :func:`hwquant.core.kernels.accumulator_bias` takes it:
        () where it leaves ``bias`` alone, (weight rows, x_min, x_max, P) where it
        clips given the layer's fake-quantized weight ``w_hat``; None without ``w_hat``."""
        if not self._clips(bias):
            return ()
        if w_hat is None:
            return None
        fmt = self.input_format
        return self._rows_raw(w_hat), fmt.min_int, fmt.max_int, self.accumulator_bits

    def clip_bias(
        self, bias: Tensor, acc_scale: Tensor, v: Tensor, w_hat: Tensor | None = None
    ) -> Tensor:
        """``bias`` (float, [C]) clipped to s_acc·[lo, hi] (:meth:`bias_code_range`), so
        that its code on the accumulator scale ``acc_scale`` (s_in·s_w) fits beside the
        weights ``v``. Unchanged when the bias is applied after the accumulator, when
        this quantizer is disabled (float model, calibration) or when channel rows are
        not outputs. Differentiable: straight-through inside the range; the bounds move
        with the scale (lo, hi are constants of the current codes)."""
        if not self._clips(bias):
            return bias
        lo, hi = self.bias_code_range(v, w_hat)
        s = acc_scale.reshape(-1)
        bits, dtype = self.accumulator_bits, bias.dtype
        return torch.clamp(bias, _inward(lo, dtype, bits) * s, _inward(hi, dtype, bits) * s)

    # ---------------------------------------------------------------- training aids
    def penalty(self) -> Tensor:
        """Σ_c ReLU(2^γ_c − T·s_c): keeps g from drifting above the clamp (A2Q)."""
        return torch.relu(torch.exp2(self.norm_param) - self.max_norm()).sum()

    # ---------------------------------------------------------------- inspection
    def codes(self, v: Tensor) -> QuantCodes:
        """The codes of the effective weight w of ``v`` (what the layer uses), in v's
        layout, with their scale (:meth:`Quantizer.codes`; ValueError when disabled)."""
        with torch.no_grad():
            return super().codes(self._weight_fn(v.detach()))

    @torch.no_grad()
    def _codes_of(self, w_hat: Tensor) -> Tensor:
        """[C, K'] integer codes of the fake-quantized weight ``w_hat`` (= s·q)."""
        q = torch.round(w_hat.detach() / self.scale().detach())
        return (q if self.axis == 0 else q.movedim(self.axis, 0)).reshape(self.channels, -1)

    @torch.no_grad()
    def code_rows(self, v: Tensor) -> Tensor:
        """Integer codes q as [C, K'] rows (one per quantizer channel), whatever the
        enabled state."""
        s = self.scale().detach()
        w = self.quantize(self._weight_fn(v.detach()), s, None)
        return torch.round(w / s).movedim(self.axis, 0).reshape(self.channels, -1)

    @torch.no_grad()
    def check(self, v: Tensor, bias_codes: Tensor | None = None) -> BoundCheck:
        """Whether the codes of ``v`` respect the budget (see :class:`BoundCheck`), and,
        given the layer's bias codes on the accumulator scale (``bias_codes`` [C]; only
        counted when the bias is in the accumulator), whether b + Σ x·q fits P bits."""
        q = self.code_rows(v).double()
        pos = q.clamp(min=0).sum(1)
        neg = (-q).clamp(min=0).sum(1)
        ok = _within_budget(q, self.l1_bound, self.zero_centre)
        bias_bad = 0
        if bias_codes is not None and self.bias_in_accumulator and self.rows_are_outputs:
            lo, hi = self.bias_code_range(v)
            b = bias_codes.reshape(-1).long()
            bias_bad = int(((b < lo) | (b > hi)).sum())
        return BoundCheck(
            owner=self.owner,
            accumulator_bits=self.accumulator_bits,
            zero_centre=self.zero_centre,
            bound=self.l1_bound,
            l1_max=float((pos + neg).max()),
            half_max=float(torch.maximum(pos, neg).max()),
            violations=int((~ok).sum()),
            sparsity=float((q == 0).double().mean()),
            bias_violations=bias_bad,
        )

    def extra_repr(self) -> str:
        kind = "A2Q+" if self.zero_centre else "A2Q"
        return (
            f"{self.spec.format.name} {kind} P={self.accumulator_bits} "
            f"input={self.input_format.name} T={self.l1_bound:.4g}"
            + ("" if self.bias_in_accumulator else " bias-after")
            + (" frozen" if bool(self.frozen) else "")
        )


def _normalized(rows: Tensor, g: Tensor, zero_centre: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(w, factor, divisor): w = rows·factor with factor = g/divisor per row, divisor =
    max(‖r‖₁ (+ |Σ r| detached, A2Q+), g·1e-6) in float64 (module docstring). The one
    formula of :meth:`A2QWeightQuantizer.effective_weight` and :class:`_A2QFakeQuant`."""
    l1 = rows.abs().sum(1, dtype=torch.float64)
    if zero_centre:
        l1 = l1 + rows.detach().sum(1, dtype=torch.float64).abs()
    g64 = g.double()
    # ‖w‖₁ ≤ g still holds with the floor, which keeps the gradient of an (almost)
    # all-zero channel finite (g / ‖r‖₁ would overflow).
    divisor = torch.maximum(l1, g64 * 1e-6)
    factor = (g64 / divisor).to(rows.dtype)
    return rows * factor.unsqueeze(1), factor, divisor


class _A2QFakeQuant(torch.autograd.Function):
    """ŵ = s·trunc(clamp(w/s, ±q_max)) of w = g·r/‖r‖₁, g = min(a, T·s), as one
    autograd node: the same values as ``_forward_static(effective_weight(v))`` (the
    same ops in the same order) and the gradients autograd derives for that path
    (straight-through for w, LSQ for s; checked against it in the tests). Per call it
    saves some thirty small autograd nodes, which dominate the step of a small model.

    Inputs: v rows [C, K] (not yet centred), a = 2^γ [C], s [C], whether to centre
    the rows (A2Q+), the ℓ1 bound T·(1 − MARGIN) and the grid. Written in the ``torch.func`` style
    (forward without ctx): what backward needs rides along as further outputs, so
    ``torch.func.grad`` / ``vmap`` work through it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(v: Tensor, a: Tensor, s: Tensor, zero_centre: bool, bound: float, grid):  # type: ignore[override]
        r = v - v.mean(1, keepdim=True) if zero_centre else v.view_as(v)  # saved: a view
        m = s * bound
        clamped = a > m
        g = torch.where(clamped, m, a)
        w, factor, divisor = _normalized(r, g, zero_centre)
        s2 = s.unsqueeze(1)
        u = w / s2
        c = u.clamp(grid.lo, grid.hi)
        codes = grid.fn(c)
        inside = c == u
        return codes * s2, r, u, codes, inside, factor, divisor, g, clamped

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        saved = output[1:]
        ctx.mark_non_differentiable(*saved)
        ctx.save_for_backward(*saved)
        ctx.zero_centre, ctx.bound = inputs[3], inputs[4]

    @staticmethod
    def backward(ctx, grad: Tensor, *_saved_grads):  # type: ignore[override]
        r, u, codes, inside, factor, divisor, g, clamped = ctx.saved_tensors
        gw = grad * inside  # straight-through inside the code range
        gs = (grad * torch.where(inside, codes - u, codes)).sum(1)  # LSQ
        gf = (gw * r).sum(1, dtype=torch.float64)
        live = divisor > g.double() * 1e-6  # the floor makes factor a constant
        gg = torch.where(live, gf / divisor, 0.0)
        gl1 = torch.where(live, -gf * factor.double() / divisor, 0.0)
        gr = gw * factor.unsqueeze(1) + gl1.to(r.dtype).unsqueeze(1) * torch.sign(r)
        if ctx.zero_centre:
            gr = gr - gr.mean(1, keepdim=True)
        gg = gg.to(g.dtype)
        ga = torch.where(clamped, 0.0, gg)
        gs = gs + torch.where(clamped, gg, 0.0) * ctx.bound
        return gr, ga, gs, None, None, None


def _inward(bound: Tensor, dtype: torch.dtype, bits: int) -> Tensor:
    """Integer bounds in ``dtype``, moved toward 0 by a few ulps of their magnitude, so
    that a bias clipped to s·bound and quantized (round(b/s)) in that precision, and
    its code recovered from the float value in float64, never lands outside [lo, hi]
    (exact, no move, below 2^20 codes in float32). The bounds of a ``bits``-bit
    accumulator lie within ±2^(bits−1), so at most 20 bits (float32) nothing moves."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    if 2.0 ** (bits - 1) * 8 * eps < 1:
        return bound.to(dtype)
    b = bound.double()
    slack = torch.floor(b.abs() * (8 * eps))
    return (b - torch.sign(b) * slack).to(dtype)


def _within_budget(q: Tensor, bound: float, zero_centre: bool) -> Tensor:
    """Per row: ‖q‖₁ ≤ T (A2Q), or each sign half ≤ T⁺/2 (A2Q+)."""
    pos = q.clamp(min=0).sum(1)
    neg = (-q).clamp(min=0).sum(1)
    if zero_centre:
        return torch.maximum(pos, neg) <= bound / 2
    return pos + neg <= bound


def _input_format(layer: nn.Module, spec: A2Q, owner: str) -> IntFormat:
    in_spec = getattr(getattr(layer, "layer_spec", None), "input", None)
    return a2q_input_format(in_spec, spec, owner)


def a2q_input_format(in_spec: QuantSpec | None, spec: A2Q, owner: str) -> IntFormat:
    """The N-bit input format an A2Q weight quantizer bounds its accumulator for: that
    of the matmul's input quantizer ``in_spec``, else ``spec.input_format``; ValueError
    (naming ``owner``) when there is neither, or the input is not a symmetric integer."""
    name = type(spec).__name__
    declared = spec.input_format
    if in_spec is None:
        if declared is None:
            raise ValueError(
                f"{owner}: {name} needs the N-bit format of the layer's input to bound its "
                "accumulator, but the input is not quantized: give the layer an input "
                f"quantizer (LayerSpec.input) or declare it, e.g. {name}(..., "
                "input_format=IntFormat(4, signed=False))"
            )
        return declared
    fmt = in_spec.format
    if not isinstance(fmt, IntFormat) or in_spec.zero_point != "symmetric":
        raise ValueError(
            f"{owner}: {name} needs a symmetric integer input quantizer, got {in_spec.describe()}"
        )
    if declared is not None and declared.bits != fmt.bits:
        raise ValueError(
            f"{owner}: {name}.input_format={declared.name} contradicts the layer's input "
            f"quantizer ({fmt.name})"
        )
    return fmt


@dataclass(frozen=True)
class BoundCheck:
    """Budget check of one constrained layer: the largest ‖q‖₁ and sign half over its
    channels, the budget T, how many channels violate it (0 by construction) and how
    many overflow P bits once their bias code is added (``bias_violations``; 0 by
    construction, and 0 when the bias is applied after the accumulator)."""

    owner: str
    accumulator_bits: int
    zero_centre: bool
    bound: float
    l1_max: float
    half_max: float
    violations: int
    sparsity: float
    bias_violations: int = 0

    @property
    def ok(self) -> bool:
        return self.violations == 0 and self.bias_violations == 0

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"ok": self.ok}


# -------------------------------------------------------------------- model helpers
def a2q_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module, A2QWeightQuantizer]]:
    """(path, layer, quantizer) for every layer whose weight has an A2Q quantizer."""
    for path, m in model.named_modules():
        q = getattr(m, "weight_quant", None)
        if isinstance(q, A2QWeightQuantizer):
            yield path, m, q


@torch.no_grad()
def accumulator_bias_codes(layer: nn.Module) -> Tensor | None:
    """The integer bias codes b = round(b̂/s_acc) (int64 [C]) of a layer whose bias is
    quantized on the accumulator scale s_acc = s_in·s_w/D (an enabled
    :class:`BiasQuantizer`, ``layer.accumulator_scale()``; D = 1 for integer weights),
    b̂ the layer's own ``quant_bias()`` (clipped for A2Q layers); None without such a
    bias."""
    bq = getattr(layer, "bias_quant", None)
    if getattr(layer, "bias", None) is None or not isinstance(bq, BiasQuantizer):
        return None
    if bq._forward != bq._forward_quant:
        return None
    s_acc = layer.accumulator_scale(layer.weight)
    b = layer.quant_bias().detach().double()
    return torch.round(b / s_acc.detach().double().reshape(-1)).long()


@torch.no_grad()
def ep_init(model: nn.Module) -> list[str]:
    """Euclidean-projection init of every A2Q layer of ``model``, in place (the
    weights are replaced by their projection). Returns the layer paths."""
    done = []
    for path, layer, q in a2q_layers(model):
        layer.weight.copy_(q.ep_init(layer.weight))
        done.append(path)
    return done


@torch.no_grad()
def unfreeze(model: nn.Module) -> list[str]:
    """:meth:`~A2QWeightQuantizer.unfreeze` every frozen A2Q layer of ``model`` in place
    (QAT from accumulator-aware PTQ codes). Returns the layer paths."""
    done = []
    for path, layer, q in a2q_layers(model):
        if bool(q.frozen):
            layer.weight.copy_(q.unfreeze(layer.weight))
            done.append(path)
    return done


def a2q_penalty(model: nn.Module) -> Tensor:
    """Σ over A2Q layers of their :meth:`~A2QWeightQuantizer.penalty` (add λ times it to
    the loss, e.g. ``fit(..., extra_loss=lambda m: 1e-3 * a2q_penalty(m))``)."""
    terms = [q.penalty() for _, _, q in a2q_layers(model)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def check_bounds(model: nn.Module) -> dict[str, BoundCheck]:
    """{layer path: BoundCheck} for every A2Q layer.

    >>> from hwquant.models import MLP
    >>> from hwquant.spec import A2Q, A4U, Recipe
    >>> import hwquant
    >>> m = hwquant.quantize(MLP((64, 10)), Recipe.uniform(A2Q(accumulator_bits=12), A4U))
    >>> {k: v.ok for k, v in check_bounds(m).items()}
    {'layers.0': True}
    """
    return {
        path: q.check(layer.weight, accumulator_bias_codes(layer))
        for path, layer, q in a2q_layers(model)
    }
