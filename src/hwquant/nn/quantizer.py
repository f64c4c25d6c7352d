"""Quantizer: the module that holds a quantizer's state (scale, zero point).

A quantizer is built from a :class:`~hwquant.spec.QuantSpec`. Its forward is a
handful of tensor ops (:func:`hwquant.core.grid.fake_quantize`). What it does on
a call is chosen when its *state* changes, never checked per call: ``_forward``
is one of

- ``_forward_static``  quantize with the stored / learned scale;
- ``_forward_dynamic`` weights with a statistics scale: recompute it from the
  tensor each call (no state);
- ``_forward_init``    first call of an uninitialized activation quantizer:
  derive the scale from this batch, then switch to ``_forward_static``;
- ``_forward_observe`` calibration: collect statistics, return x unchanged;
- ``_forward_float``   disabled: identity.

Example:
    >>> import torch
    >>> from hwquant.spec import W4
    >>> w = torch.randn(8, 16)
    >>> q = Quantizer.for_weight(W4, w)
    >>> bool((q(w) / q.scale()).round().abs().max() <= 7)
    True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from hwquant.core import kernels
from hwquant.core.grid import (
    fake_quantize,
    fake_quantize_param,
    fake_quantize_tangent,
    make_grid,
)
from hwquant.core.rounding import round_ste
from hwquant.core.scaling import (
    EPS,
    absmax_rows,
    check_finite,
    mse_clip_rows,
    percentile_rows,
    pow2_ceil,
    scale_zero_from_minmax,
    to_rows,
)
from hwquant.spec import serialize
from hwquant.spec.quant_spec import QuantSpec

__all__ = [
    "CLIP_WARN_FRACTION",
    "BiasQuantizer",
    "ClippingWarning",
    "QuantCodes",
    "Quantizer",
]

MAX_OBSERVED = 1 << 20  # values kept per scale row while calibrating percentile / mse
#: An unsigned activation quantizer warns when more of its input than this is negative.
CLIP_WARN_FRACTION = 0.1


class QuantCodes(NamedTuple):
    """A tensor as integer hardware holds it: x̂ = scale · (codes − zero_point)."""

    codes: Tensor
    scale: Tensor
    zero_point: Tensor | None


class StaticStep:
    """x ↦ fake_quantize(x, s, z) with the scale read once (``static``: itself, so a
    caller may combine several, e.g. the two directions of a recurrent layer)."""

    def __init__(self, s: Tensor, z: Tensor | None, grid) -> None:
        self.s, self.z, self.grid = s, z, grid

    @property
    def static(self) -> StaticStep:
        return self

    def __call__(self, x: Tensor) -> Tensor:
        return fake_quantize(x, self.s, self.z, self.grid)


class ClippingWarning(UserWarning):
    """An unsigned quantizer's input is largely negative: those values all become 0.

    Issued once per scale derivation (first batch or end of calibration), never per
    call; the fraction is kept as ``Quantizer.clipped_fraction``."""


class Quantizer(nn.Module):
    """Fake quantizer for a weight or activation tensor, built from a QuantSpec.

    Args:
        spec: what to quantize to and how scales are chosen.
        shape: the tensor's shape (weights), or a template with 1 in the batch /
            free dimensions (per-channel activations, e.g. ``(1, C, 1, 1)``);
            needed for every granularity but per-tensor.
        dynamic: recompute a statistics scale from the tensor on every call
            (the default for weights whose scale is not learned).
        name: used in error messages (``quantize`` sets the module path).
    """

    def __init__(
        self,
        spec: QuantSpec,
        shape: Sequence[int] | None = None,
        *,
        dynamic: bool = False,
        name: str = "",
    ) -> None:
        super().__init__()
        if not isinstance(spec, QuantSpec):
            raise ValueError(f"Quantizer.spec must be a QuantSpec, got {spec!r}")
        if spec.scale.method == "accumulator":
            raise ValueError("scale method 'accumulator' is for biases: use BiasQuantizer")
        if getattr(spec, "weight_only", False) and type(self) is Quantizer:
            raise ValueError(
                f"{type(spec).__name__} ({spec.describe()}) quantizes weights only: it cannot "
                f"quantize an activation or a bias{f' ({name})' if name else ''}; use it as "
                "LayerSpec.weight"
            )
        if not spec.granularity.per_tensor and shape is None:
            raise ValueError(f"a {spec.granularity} quantizer needs the tensor shape (shape=...)")
        self.spec = spec
        self.name = name
        self.grid = make_grid(spec.format, spec.rounding)
        self.shape = tuple(shape) if shape is not None else None
        self.scale_shape = spec.granularity.scale_shape(self.shape) if self.shape else ()
        self._grouped = spec.granularity.grouped
        sc = spec.scale
        self.log2 = sc.learned and (sc.log2_domain or sc.power_of_two)
        if sc.learned:
            self.scale_param = nn.Parameter(
                torch.zeros(self.scale_shape) if self.log2 else torch.ones(self.scale_shape)
            )
        else:
            value = sc.value if sc.method == "fixed" else 1.0
            self.register_buffer("scale_buf", torch.full(self.scale_shape, float(value)))
        if spec.zero_point == "learned":
            self.zero_param = nn.Parameter(torch.zeros(self.scale_shape))
        elif spec.zero_point == "asymmetric":
            self.register_buffer("zero_buf", torch.zeros(self.scale_shape))
        self.register_buffer("initialized", torch.tensor(sc.method == "fixed"))
        #: s(p) of a learned symmetric scale that fake_quantize_param fuses ("abs" /
        #: "exp2"), else None (the scale is computed first, :meth:`scale`)
        self._param_scale = (
            None
            if not sc.learned or sc.power_of_two or spec.zero_point != "symmetric" or self._grouped
            else ("exp2" if self.log2 else "abs")
        )
        #: the kernels' code for what scale() computes from its tensor (s, |p| or 2^p;
        #: None: more than that, e.g. a power-of-two learned scale), :meth:`scale_source`
        if type(self).scale is not Quantizer.scale or (sc.learned and sc.power_of_two):
            self._scale_code = None
        elif not sc.learned:
            self._scale_code = kernels.SCALE
        else:
            self._scale_code = kernels.EXP2_SCALE if self.log2 else kernels.ABS_SCALE
        self.dynamic = dynamic and not sc.learned and sc.method != "fixed"
        #: scale_tangent can serve: one learned scale, saturating grid, no zero point
        self._tangent_ok = (
            sc.learned
            and spec.granularity.per_tensor
            and spec.zero_point == "symmetric"
            and self.grid.saturating
            and type(self).scale is Quantizer.scale
            and type(self).quantize is Quantizer.quantize
        )
        self.built_dynamic = self.dynamic
        self.role = "activation"  # "weight" for quantizers made by for_weight
        self.fixed = False  # fix_scale: an algorithm chose the scale (kept in state dicts)
        self._observed: list[Tensor] = []
        self._negatives = [0, 0]  # (count < 0, count) seen while calibrating, as tensors
        #: Fraction of the input below an unsigned range (clipped to 0) when the scale
        #: was last derived from data; None for signed / asymmetric / weight quantizers.
        self.clipped_fraction: float | None = None
        #: training batches left in the statistics warm-up (ScaleSpec.warmup), and
        #: the running sum of their scales
        self._warmup_left = 0
        self._warmup_sum: list = [None, 0]
        self.register_load_state_dict_post_hook(_after_load)
        self._set_forward()

    # ---------------------------------------------------------------- construction
    @classmethod
    def for_weight(cls, spec: QuantSpec, weight: Tensor, name: str = "") -> Quantizer:
        """A weight quantizer: learned scales start from ``weight``'s statistics;
        other statistics scales are recomputed from the weight on every call."""
        q = cls(spec, tuple(weight.shape), dynamic=True, name=name)
        q.role = "weight"
        if spec.scale.learned:
            q.init_from(weight.detach())
        return q

    # ---------------------------------------------------------------- state
    def _set_forward(self) -> None:
        if self.dynamic:
            self._forward = self._forward_dynamic
        elif bool(self.initialized):
            warm = getattr(self, "_warmup_left", 0) > 0  # absent while __init__ runs
            self._forward = self._forward_warmup if warm else self._forward_static
        else:
            self._forward = self._forward_init

    @property
    def state(self) -> str:
        """What a call does now, as a value others may read: ``"float"`` (disabled),
        ``"observing"`` (calibration), ``"uninitialized"`` (the first batch sets the
        scale), ``"warmup"`` (training-mode batches set a learned scale from
        statistics, ScaleSpec.warmup; in eval mode it is ``"static"``), ``"dynamic"`` (a statistics scale from each tensor) or
        ``"static"`` (the stored / learned scale)."""
        f = self._forward
        if f == self._forward_float:
            return "float"
        if f == self._forward_observe:
            return "observing"
        if f == self._forward_init:
            return "uninitialized"
        if f == self._forward_warmup:  # an eval-mode call uses the stored scale
            return "warmup" if self.training else "static"
        return "dynamic" if f == self._forward_dynamic else "static"

    def scale_zero_for(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(scale, zero point) used to quantize ``x`` now (dynamic quantizers derive
        them from ``x``); shaped like the scale, no gradients."""
        with torch.no_grad():
            if self.dynamic:
                return self._stats(x)
            z = self.zero_point()
            return self.scale().detach(), None if z is None else z.detach()

    def codes(self, x: Tensor) -> QuantCodes:
        """``x`` as it is quantized now: (codes, scale, zero point) with
        x̂ = scale · (codes − zero point). ``codes`` has x's shape and holds grid
        values (the integer codes for formats with ``integer_codes``); scale and
        zero point broadcast against x (grouped scales are expanded to x's shape).
        No gradients. A disabled, calibrating or uninitialized quantizer has no
        codes: ValueError.

        >>> from hwquant.spec import W4
        >>> w = torch.tensor([[0.3, -1.0, 0.26]])
        >>> c = Quantizer.for_weight(W4, w).codes(w)
        >>> c.codes.tolist(), round(float(c.scale), 4), c.zero_point
        ([[2.0, -7.0, 2.0]], 0.1429, None)
        """
        if self.state in ("float", "observing", "uninitialized"):
            raise ValueError(
                f"quantizer {self.name!r} is {self.state}: it has no codes yet "
                "(enable it, finish calibration or run one batch first)"
            )
        s, z = self.scale_zero_for(x)
        with torch.no_grad():
            v = x.detach().reshape(self._group_view) if self._grouped else x.detach()
            v = v / s if z is None else v / s + z
            g = self.grid
            c = g.fn(v.clamp(g.lo, g.hi) if g.saturating else v)
            if self._grouped:
                c = c.reshape(x.shape)
                s = s.expand(self._group_view).reshape(x.shape)
                z = None if z is None else z.expand(self._group_view).reshape(x.shape)
        return QuantCodes(c, s, z)

    def code_multiplier(self) -> Tensor | int | None:
        """D with codes·D integers (the integer codes are codes·D at scale s/D): the
        format's :attr:`~hwquant.spec.formats.Format.code_multiplier` (1 for integer
        grids, None for minifloats); a tensor shaped like the scale where rows differ."""
        return self.spec.format.code_multiplier

    def scale(self) -> Tensor:
        """The current scale, shaped to broadcast against the tensor (learned scales
        carry gradients; power-of-two learned scales round log2 s straight-through)."""
        if self.dynamic:
            raise ValueError(
                f"quantizer {self.name!r} derives its scale from each tensor: use scale_for(x)"
            )
        if not self.spec.scale.learned:
            return self.scale_buf
        p = self.scale_param
        if self.log2:
            return torch.exp2(round_ste(p) if self.spec.scale.power_of_two else p)
        return p.abs()

    def zero_point(self) -> Tensor | None:
        """The zero point (None when symmetric); learned ones round straight-through."""
        if self.spec.zero_point == "learned":
            return round_ste(self.zero_param)
        if self.spec.zero_point == "asymmetric":
            return self.zero_buf
        return None

    def scale_source(self) -> tuple[Tensor, int] | None:
        """What :meth:`scale` computes the scale from, for the compiled kernels
        (:mod:`hwquant.core.kernels`): (the scale buffer, ``SCALE``) or (the learned
        parameter p, ``ABS_SCALE`` / ``EXP2_SCALE`` for s = |p| / 2^p); None where the
        scale takes more (dynamic or power-of-two learned scales, subclasses)."""
        code = self._scale_code
        if code is None or self.dynamic:
            return None
        return (self.scale_buf, code) if code == kernels.SCALE else (self.scale_param, code)

    def scale_tangent(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """(x̂, ∂x̂/∂s, s) for an ``x`` that needs no gradient while this quantizer's one
        learned scale s does (static state, saturating grid, no zero point; x̂ and
        ∂x̂/∂s without gradients, s with its own). A layer linear in x̂ gives s its
        gradient from them as ⟨∂L/∂y, layer(∂x̂/∂s)⟩, without forming ∂L/∂x̂
        (:mod:`hwquant.nn.conv`). None in every other case: call the quantizer.

        >>> import dataclasses
        >>> from hwquant.spec import A4
        >>> q = Quantizer(dataclasses.replace(A4, scale=dataclasses.replace(A4.scale, warmup=0)))
        >>> _ = q(torch.tensor([1.0, -1.0]))  # the first batch sets the scale
        >>> x_hat, d, s = q.scale_tangent(torch.tensor([0.3, 2.0]))
        >>> torch.equal(x_hat, q(torch.tensor([0.3, 2.0]))), s.requires_grad
        (True, True)
        """
        if (
            x.requires_grad
            or not self._tangent_ok
            or self._forward != self._forward_static
            or not self.scale_param.requires_grad
            or not torch.is_grad_enabled()
        ):
            return None
        s = self.scale()
        return (*fake_quantize_tangent(x, s.detach(), self.grid), s)

    def scale_for(self, x: Tensor) -> Tensor:
        """The scale used to quantize ``x`` (dynamic quantizers derive it from x)."""
        if self.dynamic:
            with torch.no_grad():
                return self._stats(x)[0]
        return self.scale()

    @torch.no_grad()
    def fix_scale(self, scale: Tensor, zero_point: Tensor | None = None) -> None:
        """Quantize with ``scale`` (and ``zero_point``) from now on: a weight quantizer
        with a statistics scale stops re-deriving it from each tensor, so the codes a
        PTQ algorithm chose stay the codes. Kept in state dicts (and model files).

        >>> from hwquant.spec import QuantSpec, IntFormat, per_channel
        >>> w = torch.tensor([[1.0, 0.5], [2.0, -1.0]])
        >>> q = Quantizer.for_weight(QuantSpec(IntFormat(4), per_channel(0)), w)
        >>> q.fix_scale(torch.tensor([[0.25], [0.5]]))
        >>> q.state, q(w * 0.5).tolist()
        ('static', [[0.5, 0.25], [1.0, -0.5]])
        """
        s = torch.as_tensor(scale, dtype=torch.float32).detach()
        if s.numel() != max(1, math.prod(self.scale_shape)) or not bool(
            (torch.isfinite(s) & (s > 0)).all()
        ):
            raise ValueError(
                f"quantizer {self.name!r}: fix_scale needs {self.scale_shape or 'one'} positive "
                f"finite scale(s), got shape {tuple(s.shape)}"
            )
        if (zero_point is not None) != (self.spec.zero_point != "symmetric"):
            raise ValueError(
                f"quantizer {self.name!r} has zero point {self.spec.zero_point!r}: "
                f"{'a' if zero_point is None else 'no'} zero_point is needed"
            )
        z = None if zero_point is None else torch.as_tensor(zero_point).reshape(self.scale_shape)
        self.fixed, self.dynamic = True, False
        self._warmup_left = 0
        self._store(s.reshape(self.scale_shape), z)

    def init_from(self, x: Tensor) -> None:
        """Set the scale (and zero point) from the statistics of ``x``."""
        self._check_data(x, "input")
        if self._clips_negatives:
            self._note_clipping(float((x.detach() < 0).sum()) / x.numel())
        self._store(*self._stats(x.detach()))

    def _check_data(self, x: Tensor, what: str) -> None:
        label = self.name or self.spec.describe()
        if x.numel() == 0:
            raise ValueError(
                f"{what} of quantizer {label!r} is empty (shape {tuple(x.shape)}): "
                "a scale needs at least one value"
            )
        check_finite(x, f"{what} of quantizer {label}")

    @property
    def _clips_negatives(self) -> bool:
        """Unsigned activation grid without a zero point: negative inputs become 0."""
        return (
            self.role == "activation" and self.grid.lo >= 0 and self.spec.zero_point == "symmetric"
        )

    def _note_clipping(self, fraction: float) -> None:
        self.clipped_fraction = fraction
        if fraction > CLIP_WARN_FRACTION:
            warnings.warn(
                f"quantizer {self.name or self.spec.describe()!r} ({self.spec.format.name}, "
                f"unsigned): {fraction:.0%} of its input values are negative and become 0; "
                "use a signed format for this input (e.g. hwquant.spec.A4 / A8), or an "
                "asymmetric zero point",
                ClippingWarning,
                stacklevel=3,
            )

    @torch.no_grad()
    def _store(self, s: Tensor, z: Tensor | None) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Replicas initialized from different batches must agree: average.
            s = s.clone()
            dist.all_reduce(s)
            s /= dist.get_world_size()
        if self.spec.scale.learned:
            self.scale_param.copy_(torch.log2(s) if self.log2 else s)
        else:
            self.scale_buf.copy_(s)
        if z is not None:
            (self.zero_param if self.spec.zero_point == "learned" else self.zero_buf).copy_(z)
        self.initialized.fill_(True)
        if self._forward != self._forward_float:  # a disabled quantizer stays disabled
            self._set_forward()

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(scale, zero point) from x, shaped like the scale."""
        return self._from_rows(to_rows(x.detach().float(), self.spec.granularity))

    def _from_rows(self, rows: Tensor) -> tuple[Tensor, Tensor | None]:
        sc, g = self.spec.scale, self.grid
        signed = g.lo < 0
        z = None
        if self.spec.zero_point != "symmetric":
            s, z = scale_zero_from_minmax(rows.amin(1), rows.amax(1), g.lo, g.hi)
        elif self.spec.format.is_bipolar:
            s = rows.abs().mean(1)
        elif sc.method == "percentile":
            s = percentile_rows(rows, sc.percentile, signed) / g.hi
        elif sc.method == "mse":
            s = mse_clip_rows(rows, g, signed) / g.hi
        else:
            s = absmax_rows(rows, signed) / g.hi
        s = s.clamp(min=EPS)
        if sc.power_of_two:
            s = pow2_ceil(s)
        shape = self.scale_shape
        return s.reshape(shape), (z.reshape(shape) if z is not None else None)

    # ---------------------------------------------------------------- calibration
    def calibrate(self) -> None:
        """Start collecting statistics: calls return their input unchanged."""
        self._observed = []
        self._negatives = [0, 0]
        self._forward = self._forward_observe

    def finish_calibration(self) -> None:
        """Derive the scale from what was observed, then quantize."""
        if not self._observed:
            raise ValueError(f"quantizer {self.name!r} saw no data during calibration")
        rows = torch.cat(self._observed, dim=1)
        self._observed = []
        self._warmup_left = 0
        if self._clips_negatives:
            neg, total = self._negatives
            self._note_clipping(float(neg) / float(total))
        self._store(*self._from_rows(rows))

    def disable(self) -> None:
        """Identity until ``enable()``."""
        self._forward = self._forward_float

    def enable(self) -> None:
        self._set_forward()

    # ---------------------------------------------------------------- forward paths
    def forward(self, x: Tensor) -> Tensor:
        return self._forward(x)

    def step_function(self) -> Callable[[Tensor], Tensor]:
        """This quantizer as a function for the many calls of one forward pass (the
        time steps of a recurrence): a static quantizer reads its (learned) scale once
        and returns x ↦ fake_quantize(x, s, z); in any other state (calibrating,
        uninitialized, disabled, exporting) it returns itself, so each call still goes
        through its state. Gradients reach a learned scale through every call."""
        if self._forward != self._forward_static or self._grouped:
            return self
        return StaticStep(self.scale(), self.zero_point(), self.grid)

    def quantize(self, x: Tensor, s: Tensor, z: Tensor | None) -> Tensor:
        """Fake-quantize x with scale s and zero point z (handles grouped views)."""
        if self._grouped:
            shape = x.shape
            return fake_quantize(x.reshape(self._group_view), s, z, self.grid).reshape(shape)
        return fake_quantize(x, s, z, self.grid)

    @property
    def _group_view(self) -> tuple[int, ...]:
        return self.spec.granularity.grouped_shape(self.shape)

    def _forward_static(self, x: Tensor) -> Tensor:
        if self._param_scale is not None:  # s = |p| or 2^p inside one node
            return fake_quantize_param(x, self.scale_param, self._param_scale, self.grid)
        return self.quantize(x, self.scale(), self.zero_point())

    def _forward_dynamic(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            s, z = self._stats(x)
        return self.quantize(x, s, z)

    def _forward_init(self, x: Tensor) -> Tensor:
        self.init_from(x)
        if self.spec.scale.warmup:
            self._warmup_left = self.spec.scale.warmup
            self._warmup_sum = [self.scale().detach().clone(), 1]
            self._set_forward()
        return self._forward_static(x)

    # Not traced by torch.compile: its counter would be a new constant (a recompile)
    # on every batch; the compiled graph calls it, and switches to the static path once.
    @torch.compiler.disable
    def _forward_warmup(self, x: Tensor) -> Tensor:
        if not self.training:
            return self._forward_static(x)
        with torch.no_grad():
            self._check_data(x, "input")
            s, z = self._stats(x)
            total, n = self._warmup_sum
            self._warmup_sum = [total + s, n + 1]
            self._warmup_left -= 1
            self._store((total + s) / (n + 1), z)  # back to static after the last one
        s = self.scale()
        # a zero gradient, not none: DDP expects every parameter to receive one
        return self.quantize(x, s + (s.detach() - s), self.zero_point())

    def _forward_observe(self, x: Tensor) -> Tensor:
        self._check_data(x, "calibration data")
        if self._clips_negatives:  # counted on the device: no sync per batch
            self._negatives[0] = self._negatives[0] + (x.detach() < 0).sum()
            self._negatives[1] += x.numel()
        rows = to_rows(x.detach().float(), self.spec.granularity)
        if self.spec.scale.method in ("percentile", "mse"):
            if rows.shape[1] > MAX_OBSERVED // 8:
                idx = torch.randint(0, rows.shape[1], (MAX_OBSERVED // 8,), device=rows.device)
                rows = rows[:, idx]
            self._observed.append(rows)
            if sum(r.shape[1] for r in self._observed) > MAX_OBSERVED:
                self._observed = [torch.cat(self._observed, 1)[:, -MAX_OBSERVED:]]
        else:  # min / max statistics are enough
            stat = torch.stack([rows.amin(1), rows.amax(1)], dim=1)
            if self._observed:
                prev = self._observed[0]
                stat = torch.stack(
                    [torch.minimum(prev[:, 0], stat[:, 0]), torch.maximum(prev[:, 1], stat[:, 1])],
                    1,
                )
            self._observed = [stat]
        return x

    def _forward_float(self, x: Tensor) -> Tensor:
        return x

    def get_extra_state(self) -> str | dict:
        if self.fixed:  # the scale an algorithm fixed is part of the state
            return {"spec": spec_state(self.spec), "fixed_scale": True}
        return spec_state(self.spec)

    def set_extra_state(self, state: str | dict) -> None:
        # The spec was checked against this quantizer's before loading (check_spec_state).
        if isinstance(state, dict) and state.get("fixed_scale") is True:
            self.fixed, self.dynamic = True, False

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        # A float checkpoint carries no quantizer entries: keep this quantizer's
        # state (its layer re-derives weight scales) instead of reporting them missing.
        if any(k.startswith(prefix) for k in state_dict):
            check_spec_state(self.spec, state_dict, prefix)
            super()._load_from_state_dict(state_dict, prefix, *args)
            _forgive_missing_spec(prefix, args)

    def extra_repr(self) -> str:
        # How it was built (a fixed scale is state, kept in the state dict).
        return self.spec.describe() + (" dynamic" if self.built_dynamic else "")


def _after_load(module: Quantizer, incompatible_keys) -> None:
    module._warmup_left = 0  # a loaded scale is not warmed up again
    module._set_forward()


_SPEC_KEY = "_extra_state"  # torch's key for get_extra_state()


def spec_state(spec: QuantSpec) -> str:
    """A quantizer's spec as it rides along in state dicts (versioned JSON)."""
    return serialize.dumps(spec)


def check_spec_state(spec: QuantSpec, state_dict, prefix: str) -> None:
    """Refuse a state dict whose quantizer at ``prefix`` was built from another spec:
    its scales and codes would mean something else here."""
    saved = state_dict.get(prefix + _SPEC_KEY)
    if isinstance(saved, dict):  # a fixed scale rides along with the spec
        saved = saved.get("spec")
    if saved is None:
        return  # float checkpoints and state dicts from before specs rode along
    theirs = serialize.loads(saved) if isinstance(saved, str) else None
    if theirs != spec:
        got = theirs.describe() if isinstance(theirs, QuantSpec) else repr(saved)[:80]
        raise ValueError(
            f"quantizer {prefix.rstrip('.')!r} differs: the state dict holds {got}, "
            f"this model's quantizer is {spec.describe()}"
        )


def _forgive_missing_spec(prefix: str, load_args: tuple) -> None:
    missing_keys = load_args[2]  # (local_metadata, strict, missing_keys, unexpected, errors)
    if prefix + _SPEC_KEY in missing_keys:
        missing_keys.remove(prefix + _SPEC_KEY)


class BiasQuantizer(nn.Module):
    """Bias quantizer with the accumulator's scale: s_b = s_input · s_weight, so the
    bias adds to the integer accumulator without re-scaling (``bits`` wide, signed).

    >>> import torch
    >>> from hwquant.spec.formats import IntFormat
    >>> from hwquant.spec.quant_spec import QuantSpec, ScaleSpec
    >>> bq = BiasQuantizer(QuantSpec(IntFormat(16), scale=ScaleSpec("accumulator")))
    >>> bq(torch.tensor([0.1234]), torch.tensor([0.25])).tolist()
    [0.0]
    >>> bq(torch.tensor([0.3]), torch.tensor([0.25])).tolist()
    [0.25]
    """

    def __init__(self, spec: QuantSpec, name: str = "") -> None:
        super().__init__()
        if spec.scale.method != "accumulator":
            raise ValueError("BiasQuantizer needs ScaleSpec(method='accumulator')")
        self.spec = spec
        self.name = name
        self.grid = make_grid(spec.format, spec.rounding)
        self._forward = self._forward_quant

    def forward(self, bias: Tensor, acc_scale: Tensor) -> Tensor:
        return self._forward(bias, acc_scale)

    def _forward_quant(self, bias: Tensor, acc_scale: Tensor) -> Tensor:
        return fake_quantize(bias, acc_scale.reshape(-1), None, self.grid)

    def _forward_float(self, bias: Tensor, acc_scale: Tensor) -> Tensor:
        return bias

    def disable(self) -> None:
        self._forward = self._forward_float

    def enable(self) -> None:
        self._forward = self._forward_quant

    @property
    def state(self) -> str:
        """``"float"`` (disabled) or ``"static"`` (quantizing on the accumulator scale)."""
        return "float" if self._forward == self._forward_float else "static"

    def get_extra_state(self) -> str:
        return spec_state(self.spec)

    def set_extra_state(self, state: str) -> None:
        pass

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        check_spec_state(self.spec, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args)
        _forgive_missing_spec(prefix, args)

    def extra_repr(self) -> str:
        return f"{self.spec.format.name} scale=input·weight"
