"""LayerSpec (the quantizers one layer owns) and Recipe (which layer gets which).

Example:
    >>> from hwquant.spec.quant_spec import W4, A4U
    >>> r = Recipe.uniform(weights=W4, activations=A4U, keep_float=("fc_out",))
    >>> r.spec_for("fc_out", "Linear") is None
    True
    >>> r.spec_for("features.0", "Conv2d").weight is W4
    True
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from hwquant.spec.formats import IntFormat
from hwquant.spec.quant_spec import QuantSpec, ScaleSpec

__all__ = [
    "WEIGHT_LAYERS",  # noqa: F822 (module __getattr__: the registered kinds)
    "LayerSpec",
    "Recipe",
    "accumulator_bias",
    "recipe_types",
    "register_recipe_type",
]

# The torch.nn class names a ``Recipe.by_type`` key may use, by role: each quantized
# layer kind registers its float twin's name when it is defined
# (``hwquant.nn.kinds.layer_kind`` calls :func:`register_recipe_type`), so the names
# are said once, beside the layer; spec/ sits below nn/ and cannot import the layers.
# ``takes_default``: the recipe's ``default`` LayerSpec applies (the layers that
# accumulate dot products: Linear, Conv*, ConvTranspose*).
_RECIPE_TYPES: dict[str, str] = {
    "AdaptiveAvgPool2d": "pool",  # no quantized twin yet; Recipe.uniform asks for it
}
_DEFAULT_TYPES: list[str] = []


def recipe_types(role: str | None = None) -> tuple[str, ...]:
    """The module type names ``Recipe.by_type`` accepts (of one ``role``: "weight",
    "activation", "pool", ...), sorted."""
    return tuple(sorted(n for n, r in _RECIPE_TYPES.items() if role in (None, r)))


def register_recipe_type(name: str, *, takes_default: bool = False, role: str = "other") -> None:
    """Allow ``name`` (a torch module class name) as a ``Recipe.by_type`` key;
    ``takes_default``: ``Recipe.default`` applies to it (a weight layer with an
    accumulator)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"register_recipe_type: a class name is needed, got {name!r}")
    _RECIPE_TYPES[name] = role
    if takes_default and name not in _DEFAULT_TYPES:
        _DEFAULT_TYPES.append(name)


def __getattr__(name: str):
    # WEIGHT_LAYERS (kept for compatibility): the type names Recipe.default applies to,
    # as registered by the layer kinds (hwquant.nn.kinds).
    if name == "WEIGHT_LAYERS":
        return tuple(_DEFAULT_TYPES)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def accumulator_bias(bits: int = 32) -> QuantSpec:
    """Bias spec on the accumulator's scale (s_input · s_weight), ``bits`` wide."""
    return QuantSpec(IntFormat(bits), scale=ScaleSpec("accumulator"))


@dataclass(frozen=True)
class LayerSpec:
    """The quantizers of one layer; ``None`` leaves that tensor in float.

    ``input``: the layer's input; ``weight`` / ``bias``: its parameters;
    ``output``: its result (activation layers and merges quantize here).
    ``shared_input_scale``: merges (add, cat) quantize all operands with one
    quantizer so an integer adder / concatenation needs no re-scaling.
    """

    input: QuantSpec | None = None
    weight: QuantSpec | None = None
    bias: QuantSpec | None = None
    output: QuantSpec | None = None
    shared_input_scale: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.shared_input_scale, bool):
            raise ValueError(
                f"LayerSpec.shared_input_scale must be a bool, got {self.shared_input_scale!r}"
            )
        for name in ("input", "weight", "bias", "output"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, QuantSpec):
                raise ValueError(f"LayerSpec.{name} must be a QuantSpec or None, got {v!r}")
        if self.bias is not None and self.bias.scale.method == "accumulator":
            if self.input is None or self.weight is None:
                raise ValueError(
                    "LayerSpec.bias on the accumulator scale needs both input and weight quantizers"
                )
            if not self.input.granularity.per_tensor:
                raise ValueError(
                    "LayerSpec.bias on the accumulator scale needs a per-tensor input scale"
                )
            if self.weight.granularity.grouped:
                raise ValueError(
                    "LayerSpec.bias on the accumulator scale cannot use per-group weights"
                )

    def describe(self, short: bool = False) -> dict[str, str]:
        """{"input": ..., "weight": ..., "bias": ..., "output": ...} summaries."""
        out = {}
        for k in ("input", "weight", "bias", "output"):
            q = getattr(self, k)
            out[k] = "float" if q is None else (q.short() if short else q.describe())
        return out


def _pairs(
    m: Mapping[str, LayerSpec | None] | Iterable,
) -> tuple[tuple[str, LayerSpec | None], ...]:
    items = m.items() if isinstance(m, Mapping) else m
    out = tuple((str(k), v) for k, v in items)
    for k, v in out:
        if v is not None and not isinstance(v, LayerSpec):
            raise ValueError(f"Recipe entry {k!r} must be a LayerSpec or None, got {v!r}")
    return out


def _type_pairs(m: Mapping | Iterable) -> tuple[tuple[str, LayerSpec | None], ...]:
    """by_type entries: keys are class names (a class is taken by its name), known ones."""
    items = m.items() if isinstance(m, Mapping) else m
    named = [(k.__name__ if isinstance(k, type) else k, v) for k, v in items]
    for k, _ in named:
        if not isinstance(k, str) or k not in _RECIPE_TYPES:
            close = difflib.get_close_matches(str(k), sorted(_RECIPE_TYPES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"Recipe.by_type: unknown module type {k!r}{hint} "
                f"(known: {', '.join(recipe_types())})"
            )
    return _pairs(named)


@dataclass(frozen=True)
class Recipe:
    """Which LayerSpec each module gets.

    Resolution order for a module at path ``name`` of type ``T``: the first
    matching ``by_name`` pattern (fnmatch; ``None`` keeps it float), then
    ``by_type[T]``, then ``default`` for weight layers. ``merge`` is the spec of
    add / concat operands; ``unsigned_after_relu`` turns a signed activation
    format unsigned where the graph shows the input is non-negative.
    """

    default: LayerSpec | None = None
    by_type: tuple[tuple[str, LayerSpec | None], ...] = field(default_factory=tuple)
    by_name: tuple[tuple[str, LayerSpec | None], ...] = field(default_factory=tuple)
    merge: LayerSpec | None = None
    unsigned_after_relu: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_type", _type_pairs(self.by_type))
        object.__setattr__(self, "by_name", _pairs(self.by_name))
        if not isinstance(self.unsigned_after_relu, bool):
            raise ValueError(
                f"Recipe.unsigned_after_relu must be a bool, got {self.unsigned_after_relu!r}"
            )
        if self.default is not None and not isinstance(self.default, LayerSpec):
            raise ValueError(f"Recipe.default must be a LayerSpec, got {self.default!r}")
        if self.merge is not None and not isinstance(self.merge, LayerSpec):
            raise ValueError(f"Recipe.merge must be a LayerSpec, got {self.merge!r}")

    def spec_for(self, name: str, type_name: str) -> LayerSpec | None:
        for pattern, spec in self.by_name:
            if fnmatch.fnmatchcase(name, pattern):
                return spec
        for t, spec in self.by_type:
            if t == type_name:
                return spec
        return self.default if type_name in _DEFAULT_TYPES else None

    def has_entry_for(self, name: str, type_name: str) -> bool:
        """True when a pattern or type entry names this module (even to keep it float)."""
        return any(fnmatch.fnmatchcase(name, p) for p, _ in self.by_name) or any(
            t == type_name for t, _ in self.by_type
        )

    @classmethod
    def uniform(
        cls,
        weights: QuantSpec,
        activations: QuantSpec | None,
        *,
        bias: QuantSpec | str | None = "accumulator",
        activation_outputs: bool = False,
        keep_float: Iterable[str] = (),
        by_name: Mapping[str, LayerSpec | None] | None = None,
    ) -> Recipe:
        """Every weight layer gets ``weights`` and quantizes its input with
        ``activations``; avg-pooling and merges quantize their inputs too. With
        ``activation_outputs`` the activation functions (ReLU, Sigmoid, ...)
        also quantize their outputs. ``keep_float``: name patterns left in float.
        ``bias``: a QuantSpec, None (float), or "accumulator" (the default: 32-bit
        on the accumulator scale when inputs are quantized per tensor, else float)."""
        _check_uniform_args(weights, activations, bias, activation_outputs, keep_float, by_name)
        if bias == "accumulator":
            per_tensor_in = activations is not None and activations.granularity.per_tensor
            bias = (
                accumulator_bias(32) if per_tensor_in and not weights.granularity.grouped else None
            )
        layer = LayerSpec(input=activations, weight=weights, bias=bias)
        act = LayerSpec(input=activations)
        by_type: dict[str, LayerSpec | None] = {"AvgPool2d": act, "AdaptiveAvgPool2d": act}
        if activation_outputs and activations is not None:
            out = LayerSpec(output=activations)
            for t in recipe_types("activation"):
                by_type[t] = out
        keep = (keep_float,) if isinstance(keep_float, str) else keep_float
        names: dict[str, LayerSpec | None] = {p: None for p in keep}
        names.update(by_name or {})
        merge = LayerSpec(input=activations) if activations is not None else None
        return cls(default=layer, by_type=_pairs(by_type), by_name=_pairs(names), merge=merge)

    def with_default(self, **changes) -> Recipe:
        """A copy whose default LayerSpec has ``changes`` applied."""
        return replace(self, default=replace(self.default or LayerSpec(), **changes))


def _check_uniform_args(weights, activations, bias, activation_outputs, keep_float, by_name):
    def bad(name: str, want: str, got: object) -> ValueError:
        return ValueError(f"Recipe.uniform: {name} must be {want}, got {got!r}")

    if not isinstance(weights, QuantSpec):
        raise bad("weights", "a QuantSpec (e.g. hwquant.spec.W4)", weights)
    if activations is not None and not isinstance(activations, QuantSpec):
        raise bad("activations", "a QuantSpec (e.g. hwquant.spec.A4U) or None", activations)
    if bias is not None and bias != "accumulator" and not isinstance(bias, QuantSpec):
        raise bad("bias", "a QuantSpec, None or 'accumulator'", bias)
    if not isinstance(activation_outputs, bool):
        raise bad("activation_outputs", "a bool", activation_outputs)
    if not isinstance(keep_float, str) and (
        not isinstance(keep_float, Iterable) or not all(isinstance(p, str) for p in keep_float)
    ):
        raise bad("keep_float", "name patterns (str)", keep_float)
    if by_name is not None and not isinstance(by_name, Mapping):
        raise bad("by_name", "a mapping of name pattern → LayerSpec or None", by_name)
