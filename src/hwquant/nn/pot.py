"""The power-of-two / APoT / MSQ weight quantizer (spec: :class:`hwquant.spec.PoTWeight`).

Per output row c (the weight seen as rows [C, K']), with v the row (or, with weight
normalization, v = (w − mean)/σ, σ = sqrt(var + ε)):

    ŵ = σ · α · L(clamp(v/α, −1, 1))          (σ = 1 without weight normalization)

L rounds to the nearest level of the row's level set: the format's (PoT: log-domain
rounding, :func:`hwquant.core.pot.pot_round`; APoT / SP2: nearest level), or, for the
fixed-point rows of MSQ, the uniform grid k/Q (Q = 2^(b−1) − 1). α is the learned
clipping level (one per row), trained by :func:`hwquant.core.grid.fake_quantize`:
straight-through for v, and ∂ŵ/∂α = σ·(L(v/α) − v/α) inside the clip, σ·sign(v)
outside — the RCF gradient of APoT (Li et al., ICLR 2020, eq. 4). The row's scale, as
every reader sees it (:meth:`PoTWeightQuantizer.scale_for`, :meth:`codes`), is σ·α.

Integer view: with D_c the row's ``code_multiplier`` (PoT 2^(−e_min), APoT-4 10, SP2-4
8, fixed-point rows Q), m = L·D_c is an integer at scale σ·α/D_c; every m is a sum of
at most two powers of two for PoT (one), APoT and SP2 (two), and, at ≤ 4 bits, for
fixed-point rows in signed digits (7 = 8 − 1), which is what the shift-add executor
(:mod:`hwquant.analysis.shift_exec`) runs. :meth:`PoTWeightQuantizer.stored_codes`
gives the b-bit sign-magnitude code per weight a weight memory holds and
:meth:`~PoTWeightQuantizer.packed` packs them.

MSQ row assignment (Chang et al., HPCA 2021, choose per row; our rule): at
initialization, each row is quantized both ways at its own α; the ⌈f·C⌉ rows with the
smallest ratio (SP2 error / fixed-point error) — the rows whose distribution suits the
SP2 levels (dense near zero) best — are SP2 rows, the others fixed point. The choice
is a buffer (saved in state dicts) and is re-made only by :meth:`init_from`.

Example:
    >>> import torch
    >>> from hwquant.spec import PoTWeight, PowerOfTwoFormat
    >>> w = torch.tensor([[0.3, -0.7, 0.02, 1.0]])
    >>> q = PoTWeightQuantizer(PoTWeight(PowerOfTwoFormat(3)), w)
    >>> q(w).tolist()
    [[0.25, -0.5, 0.125, 1.0]]
    >>> q.stored_codes(w).tolist()   # sign bit, then the exponent index e − e_min
    [[1, 6, 0, 3]]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hwquant.core.grid import fake_quantize, make_grid
from hwquant.core.pot import pack_codes, sign_magnitude, standardize_rows
from hwquant.core.scaling import to_rows
from hwquant.nn.quantizer import QuantCodes, Quantizer
from hwquant.spec.pot import PoTWeight

__all__ = ["PoTWeightQuantizer", "pot_layers"]

#: ε of the weight normalization's σ = sqrt(var + ε)
NORM_EPS = 1e-8


class PoTWeightQuantizer(Quantizer):
    """Weight quantizer onto power-of-two / APoT / MSQ levels (module docstring).

    Args:
        spec: a :class:`~hwquant.spec.PoTWeight`.
        weight: the weight it quantizes (its shape; α starts from its statistics).
        name: used in error messages.
    """

    def __init__(self, spec: PoTWeight, weight: Tensor, *, name: str = "") -> None:
        if not isinstance(spec, PoTWeight):
            raise ValueError(f"PoTWeightQuantizer needs a PoTWeight spec, got {spec!r}")
        super().__init__(spec, tuple(weight.shape), dynamic=True, name=name)
        self.role = "weight"
        g = spec.granularity
        self.axis = 0 if g.per_tensor else g.axis % weight.dim()
        self.channels = 1 if g.per_tensor else int(weight.shape[self.axis])
        self.mixed = spec.mixed_rows
        fixed = spec.fixed_format
        self.fixed_q = fixed.max_int  # Q: fixed-point rows are k/Q, k ∈ [−Q, Q]
        self.fixed_grid = make_grid(fixed, spec.rounding)
        if self.mixed:
            self.register_buffer("sp2_rows", torch.ones(self.channels, dtype=torch.bool))
        if spec.scale.learned:
            self.init_from(weight.detach())

    @classmethod
    def for_layer(cls, layer: nn.Module, spec: PoTWeight) -> PoTWeightQuantizer:
        """The quantizer of ``layer.weight``."""
        return cls(spec, layer.weight)

    # ---------------------------------------------------------------- rows
    def _normalized(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        """(v, σ): the weight standardized per row (weight normalization) and σ shaped
        like the scale, or (w, None) without weight normalization."""
        if not self.spec.weight_norm:
            return w, None
        t = w.movedim(self.axis, 0)
        rows, sigma = standardize_rows(t.reshape(self.channels, -1), NORM_EPS)
        return rows.reshape(t.shape).movedim(0, self.axis), sigma.reshape(self.scale_shape)

    def _sp2_mask(self) -> Tensor:
        """True for SP2 rows, shaped like the scale."""
        return self.sp2_rows.reshape(self.scale_shape)

    def _fake(self, v: Tensor, alpha: Tensor) -> Tensor:
        """α·L(clamp(v/α)) with the row's level set (STE for v, RCF gradient for α)."""
        y = fake_quantize(v, alpha, None, self.grid)
        if not self.mixed:
            return y
        fixed = fake_quantize(v, alpha / self.fixed_q, None, self.fixed_grid)
        return torch.where(self._sp2_mask(), y, fixed)

    def _alpha(self, v: Tensor) -> Tensor:
        """α for the normalized weight v: learned, or from v's statistics (no grad)."""
        if self.dynamic:
            with torch.no_grad():  # in v's dtype: a float64 model stays float64
                return self._stats(v)[0].to(v.dtype)
        return super().scale()

    # ---------------------------------------------------------------- forward paths
    def _quantized(self, w: Tensor) -> Tensor:
        v, sigma = self._normalized(w)
        y = self._fake(v, self._alpha(v))
        return y if sigma is None else y * sigma

    def _forward_static(self, x: Tensor) -> Tensor:
        return self._quantized(x)

    def _forward_dynamic(self, x: Tensor) -> Tensor:
        return self._quantized(x)

    # ---------------------------------------------------------------- scales and codes
    def scale(self) -> Tensor:
        """α, the clipping level of the (normalized) weight. With weight normalization
        the weight's scale also depends on the weight: use :meth:`scale_for`."""
        if self.spec.weight_norm:
            raise ValueError(
                f"quantizer {self.name!r} normalizes its weight: its scale σ·α depends on "
                "the weight, use scale_for(weight)"
            )
        return super().scale()

    def scale_for(self, x: Tensor) -> Tensor:
        """The scale σ·α of weight ``x`` (per row; gradients flow for a learned α)."""
        v, sigma = self._normalized(x)
        alpha = self._alpha(v)
        return alpha if sigma is None else alpha * sigma

    def scale_zero_for(self, x: Tensor) -> tuple[Tensor, None]:
        with torch.no_grad():
            return self.scale_for(x.detach()).detach(), None

    def codes(self, x: Tensor) -> QuantCodes:
        """(levels L ∈ [−1, 1] in x's layout, scale σ·α, None): x̂ = scale · levels.
        A disabled quantizer has no codes (ValueError)."""
        if self.state in ("float", "observing", "uninitialized"):
            raise ValueError(f"quantizer {self.name!r} is {self.state}: it has no codes yet")
        with torch.no_grad():
            v, sigma = self._normalized(x.detach())
            alpha = self._alpha(v).detach()
            levels = self._fake(v, alpha) / alpha
            scale = alpha if sigma is None else alpha * sigma
            return QuantCodes(self._snap(levels), scale, None)

    def _snap(self, levels: Tensor) -> Tensor:
        """Levels recovered from α·L/α, made exact: round(L·D)/D."""
        d = self.code_multiplier()
        return torch.round(levels * d) / d

    def code_multiplier(self) -> Tensor | int:
        """D per row (shaped like the scale): the levels times D are integers
        (MSQ fixed-point rows: Q, SP2 rows: the format's)."""
        d = self.spec.format.code_multiplier
        if not self.mixed:
            return d
        return torch.where(self._sp2_mask(), float(d), float(self.fixed_q))

    def magnitude_table(self) -> tuple[Tensor, Tensor | None]:
        """The allowed integer magnitudes |m| (ascending, int64) of the format's rows and,
        with an MSQ mix, of the fixed-point rows (0..Q); else None."""
        fmt = self.spec.format
        mags = [v for v in fmt.levels() if v >= 0]
        table = torch.tensor([round(v * fmt.code_multiplier) for v in mags], dtype=torch.long)
        fixed = torch.arange(self.fixed_q + 1) if self.mixed else None
        return table, fixed

    @torch.no_grad()
    def stored_codes(self, x: Tensor) -> Tensor:
        """The ``bits``-wide code of every weight, in x's layout (int64): sign bit
        (1 = negative) above the index of |m| in the row's magnitude table (PoT without
        zero: the exponent index e − e_min)."""
        c = self.codes(x)
        d = self.code_multiplier()
        m = torch.round(c.codes * d).long()
        table, fixed = self.magnitude_table()
        if fixed is None:
            return sign_magnitude(m, table)
        sp2 = self._sp2_mask()
        codes = sign_magnitude(torch.where(sp2, m, 0), table)
        return torch.where(sp2, codes, sign_magnitude(torch.where(sp2, 0, m), fixed))

    def packed(self, x: Tensor) -> bytes:
        """:meth:`stored_codes` packed at ``bits`` per weight (row-major)."""
        return pack_codes(self.stored_codes(x), self.spec.format.bits)

    # ---------------------------------------------------------------- initialization
    @torch.no_grad()
    def init_from(self, x: Tensor) -> None:
        """α from the statistics of the (normalized) weight ``x`` (the spec's method)
        and, for an MSQ mix, the choice of SP2 rows (module docstring)."""
        self._check_data(x, "weight")
        v, _ = self._normalized(x.detach().float())
        s, _ = self._stats(v)
        if self.mixed:
            self._assign_rows(v, s)
        self._store(s, None)

    def _assign_rows(self, v: Tensor, alpha: Tensor) -> None:
        """SP2 for the ⌈f·C⌉ rows with the smallest SP2 / fixed-point error ratio."""
        rows = to_rows(v, self.spec.granularity)  # [C, K']
        a = alpha.reshape(-1, 1)
        g, fg = self.grid, self.fixed_grid
        sp2 = a * g.fn(torch.clamp(rows / a, g.lo, g.hi))
        fixed = a / self.fixed_q * fg.fn(torch.clamp(rows * self.fixed_q / a, fg.lo, fg.hi))
        e_sp2 = (sp2 - rows).pow(2).mean(1)
        e_fix = (fixed - rows).pow(2).mean(1)
        ratio = e_sp2 / e_fix.clamp(min=1e-30)
        k = self.spec.sp2_rows(self.channels)
        order = torch.sort(ratio, stable=True).indices
        mask = torch.zeros(self.channels, dtype=torch.bool)
        mask[order[:k]] = True
        self.sp2_rows.copy_(mask)

    def extra_repr(self) -> str:
        extra = ""
        if self.mixed:
            extra = f" sp2_rows={int(self.sp2_rows.sum())}/{self.channels}"
        return super().extra_repr() + extra


def pot_layers(model: nn.Module) -> list[tuple[str, nn.Module, PoTWeightQuantizer]]:
    """(path, layer, quantizer) for every layer whose weight has a PoT-family quantizer."""
    return [
        (path, m, m.weight_quant)
        for path, m in model.named_modules()
        if isinstance(getattr(m, "weight_quant", None), PoTWeightQuantizer)
    ]
