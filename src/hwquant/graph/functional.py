"""A torch.fx pass: functional add / cat / relu nodes → quantized modules.

``QuantizeFunctional(recipe).apply(gm) -> (gm, changed)`` replaces ``+`` /
``torch.add`` / ``torch.cat`` by ``QuantAdd`` / ``QuantCat`` (the recipe's ``merge``
spec, unsigned where the inputs are provably ≥ 0) and ``F.relu`` / ``torch.relu``
by ``QuantReLU`` when the recipe quantizes ReLU outputs; ``added`` lists what it
inserted (name, kind, LayerSpec).

>>> import torch
>>> from torch import fx, nn
>>> from hwquant.spec import A8, W4, Recipe
>>> class Res(nn.Module):
...     def forward(self, x):
...         return x + torch.relu(x)
>>> gm, changed = QuantizeFunctional(Recipe.uniform(W4, A8)).apply(fx.symbolic_trace(Res()))
>>> changed, [type(m).__name__ for m in gm.children()]
(True, ['QuantAdd'])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from hwquant.graph.nonnegative import ADD_FUNCS, input_unsigned, nonnegative_nodes
from hwquant.nn import QuantAdd, QuantCat, QuantReLU
from hwquant.spec.layer_spec import LayerSpec, Recipe

__all__ = ["QuantizeFunctional"]

_RELU_FUNCS = {F.relu, torch.relu}


@dataclass
class QuantizeFunctional:
    """Replace functional add / cat / relu nodes by quantized modules (module docstring)."""

    recipe: Recipe
    added: list[tuple[str, str, LayerSpec]] = field(default_factory=list)

    def apply(self, gm: fx.GraphModule) -> tuple[fx.GraphModule, bool]:
        nonneg = nonnegative_nodes(gm)
        changed = False
        for i, n in enumerate(list(gm.graph.nodes)):
            if n.op != "call_function":
                continue
            found = self._module_for(n, n in nonneg)
            if found is None:
                continue
            module, kind, args = found
            name = f"hwquant_{kind}_{i}"
            gm.add_submodule(name, module)
            with gm.graph.inserting_after(n):
                new = gm.graph.call_module(name, args)
            n.replace_all_uses_with(new)
            gm.graph.erase_node(n)
            self.added.append((name, kind, module.layer_spec))
            changed = True
        if changed:
            gm.graph.lint()
            gm.recompile()
        return gm, changed

    def _module_for(self, n: fx.Node, nonneg: bool) -> tuple[nn.Module, str, tuple] | None:
        recipe, args = self.recipe, n.args
        merge = recipe.merge
        if merge is not None and nonneg:
            merge = input_unsigned(merge)
        if (
            n.target in ADD_FUNCS
            and merge is not None
            and len(args) == 2
            and all(isinstance(a, fx.Node) for a in args)
            and not n.kwargs
        ):
            return QuantAdd(merge), "add", args
        if n.target is torch.cat and merge is not None:
            xs = args[0]
            dim = args[1] if len(args) > 1 else n.kwargs.get("dim", 0)
            return QuantCat(merge, dim=dim, n_inputs=len(xs)), "cat", (xs,)
        relu_spec = recipe.spec_for("", "ReLU") if recipe.by_type else None
        if n.target in _RELU_FUNCS and relu_spec is not None and not n.kwargs.get("inplace"):
            return QuantReLU(spec=relu_spec), "relu", args[:1]
        return None
