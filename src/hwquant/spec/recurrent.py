"""RecurrentSpec: the quantizers of a recurrent layer (LSTM, GRU, RNN), FINN-L style.

Everything the hardware stores or computes has a quantizer (REFERENCE.md §7):

- ``input``: the layer input x_t (layer 0; upper layers take the hidden states of the
  layer below, see :class:`hwquant.nn.QuantLSTM`);
- ``weight`` / ``weight_hh``: the input-to-hidden and hidden-to-hidden weights
  (``weight_hh="same"``, the default, uses ``weight``'s spec for both);
- ``bias``: b_ih and b_hh, each on its own accumulator's scale with
  ``accumulator_bias`` (s_x·s_ih and s_h·s_hh), or with its own scale;
- ``gate``: the gate pre-activations W_ih·x + b_ih + W_hh·h + b_hh (the accumulators,
  re-quantized to feed the sigmoid / tanh tables);
- ``sigmoid`` / ``tanh``: the gate non-linearities' outputs (tables in hardware);
- ``cell``: the LSTM cell state c_t, wider than the hidden state (FINN-L: 16 bits with
  8 fractional bits);
- ``hidden``: the hidden state h_t (also the layer's output).

Any of them may be ``None`` (that tensor stays float). A field a cell type does not
have (``cell``, ``sigmoid`` and ``tanh`` on an RNN, ``cell`` on a GRU) must be None:
the layer refuses a spec it would partly ignore (each layer class names its
quantizers, ``QuantLSTM.cell_quantizers``).

:func:`recurrent_spec` derives the FINN-L defaults from an ordinary :class:`LayerSpec`
(what ``Recipe.uniform`` gives every weight layer), with A = the bits of its input
format: sigmoid outputs unsigned A-bit on the fixed grid k/(2^A − 1) (0 and 1 exact),
tanh outputs and hidden states signed narrow A-bit on k/(2^(A−1) − 1) (±1 and 0
exact), gate pre-activations signed max(A, 8)-bit with a learned scale, and the cell
state INT16 with the fixed scale 2^-8. The fixed grids let an upper layer and the
next layer take the hidden codes as they are.

Example:
    >>> from hwquant.spec import A4, W4, LayerSpec
    >>> lstm = ("gate", "sigmoid", "tanh", "cell", "hidden")
    >>> r = recurrent_spec(LayerSpec(input=A4, weight=W4), lstm)
    >>> r.sigmoid.format.name, r.tanh.format.name, r.cell.format.name, r.gate.format.name
    ('UINT4', 'INT4n', 'INT16', 'INT8')
    >>> RecurrentSpec(input=A4, weight=W4, cell=A4, hidden=r.hidden.__class__(
    ...     r.hidden.format.__class__(8), scale=r.hidden.scale))
    Traceback (most recent call last):
    ...
    ValueError: RecurrentSpec.cell (INT4, 4 bits) must be at least as wide as RecurrentSpec.hidden (INT8, 8 bits): the cell state accumulates what the hidden state shows
"""

from __future__ import annotations

from dataclasses import dataclass

from hwquant.spec.formats import IntFormat
from hwquant.spec.layer_spec import LayerSpec
from hwquant.spec.quant_spec import PER_TENSOR, QuantSpec, ScaleSpec
from hwquant.spec.serialize import serializable

__all__ = ["CELL_QUANTIZERS", "RecurrentSpec", "recurrent_spec"]

#: Every cell quantizer a RecurrentSpec can name (beyond input / weights / biases).
CELL_QUANTIZERS = ("gate", "sigmoid", "tanh", "cell", "hidden")
_EXTRA = CELL_QUANTIZERS


@serializable
@dataclass(frozen=True)
class RecurrentSpec(LayerSpec):
    """The quantizers of one recurrent layer (module docstring); ``output`` is not
    used (the output is the hidden state: set ``hidden``)."""

    weight_hh: QuantSpec | str | None = "same"
    gate: QuantSpec | None = None
    sigmoid: QuantSpec | None = None
    tanh: QuantSpec | None = None
    cell: QuantSpec | None = None
    hidden: QuantSpec | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.output is not None:
            raise ValueError(
                "RecurrentSpec.output is not used: a recurrent layer's output is its hidden "
                "state, set RecurrentSpec.hidden"
            )
        if self.weight_hh != "same" and not (
            self.weight_hh is None or isinstance(self.weight_hh, QuantSpec)
        ):
            raise ValueError(
                f"RecurrentSpec.weight_hh must be a QuantSpec, None or 'same', got {self.weight_hh!r}"
            )
        for name in _EXTRA:
            v = getattr(self, name)
            if v is not None and not isinstance(v, QuantSpec):
                raise ValueError(f"RecurrentSpec.{name} must be a QuantSpec or None, got {v!r}")
            if v is not None and v.scale.method == "accumulator":
                raise ValueError(f"RecurrentSpec.{name} cannot use the 'accumulator' scale")
        if self.cell is not None and self.hidden is not None:
            c, h = self.cell.format, self.hidden.format
            if c.bits < h.bits:
                raise ValueError(
                    f"RecurrentSpec.cell ({c.name}, {c.bits} bits) must be at least as wide "
                    f"as RecurrentSpec.hidden ({h.name}, {h.bits} bits): the cell state "
                    "accumulates what the hidden state shows"
                )

    @property
    def hh_weight(self) -> QuantSpec | None:
        """The hidden-to-hidden weight spec (``weight`` when ``weight_hh`` is "same")."""
        return self.weight if self.weight_hh == "same" else self.weight_hh

    def check_fields(self, have: tuple[str, ...], owner: str) -> None:
        """ValueError when a cell quantizer is set that ``owner``'s cell lacks (it has
        the quantizers ``have``)."""
        extra = [n for n in _EXTRA if n not in have and getattr(self, n) is not None]
        if extra:
            raise ValueError(
                f"{owner} has no {' / '.join(extra)} quantizer: RecurrentSpec."
                f"{extra[0]} must be None for it (it uses {', '.join(have)})"
            )

    def describe(self, short: bool = False) -> dict[str, str]:
        out = super().describe(short)
        del out["output"]
        for k in ("weight_hh", *_EXTRA):
            q = self.hh_weight if k == "weight_hh" else getattr(self, k)
            out[k] = "float" if q is None else (q.short() if short else q.describe())
        return out


def _fixed(fmt: IntFormat, scale: float) -> QuantSpec:
    return QuantSpec(fmt, PER_TENSOR, ScaleSpec("fixed", value=scale))


def recurrent_spec(
    spec: LayerSpec,
    cell_quantizers: tuple[str, ...] = CELL_QUANTIZERS,
    *,
    relu_hidden: bool = False,
    owner: str = "the layer",
) -> RecurrentSpec:
    """``spec`` itself when it is a RecurrentSpec (checked against the cell's
    quantizers ``cell_quantizers``), else the FINN-L defaults built from its input /
    weight / bias (module docstring), for those quantizers. A spec without an input
    quantizer quantizes only the weights and biases. ``relu_hidden`` (a relu RNN): the
    hidden state is unsigned with the input's scale policy."""
    unknown = set(cell_quantizers) - set(CELL_QUANTIZERS)
    if unknown:
        raise ValueError(f"unknown cell quantizers {sorted(unknown)}; known: {CELL_QUANTIZERS}")
    if isinstance(spec, RecurrentSpec):
        spec.check_fields(cell_quantizers, owner)
        return spec
    if not isinstance(spec, LayerSpec):
        raise ValueError(f"a recurrent layer needs a LayerSpec or RecurrentSpec, got {spec!r}")
    if spec.output is not None:
        raise ValueError(
            "LayerSpec.output is not used by a recurrent layer (its output is the hidden "
            "state): give a RecurrentSpec with hidden=..."
        )
    if spec.input is None:
        return RecurrentSpec(weight=spec.weight, bias=spec.bias)
    a = spec.input.format.bits
    if a < 2:
        raise ValueError(
            f"recurrent defaults need an input format of at least 2 bits (got "
            f"{spec.input.format.name}): give a RecurrentSpec"
        )
    sig = _fixed(IntFormat(a, signed=False), 1.0 / (2**a - 1))
    tanh = _fixed(IntFormat(a, narrow=True), 1.0 / (2 ** (a - 1) - 1))
    gate = QuantSpec(IntFormat(max(a, 8)), PER_TENSOR, ScaleSpec("percentile", learned=True))
    hidden = tanh
    if relu_hidden:
        hidden = QuantSpec(IntFormat(a, signed=False), PER_TENSOR, spec.input.scale)
    cell = _fixed(IntFormat(max(16, a)), 2.0**-8)
    fields = {"gate": gate, "sigmoid": sig, "tanh": tanh, "cell": cell, "hidden": hidden}
    keep = {k: v for k, v in fields.items() if k in cell_quantizers}
    return RecurrentSpec(input=spec.input, weight=spec.weight, bias=spec.bias, **keep)
