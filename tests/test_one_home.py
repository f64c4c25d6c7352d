"""Each idea has one home (docs/architecture.md, "One home per idea").

The counts below are read from the source with ``ast``; they may only go down.
Run ``python tests/test_one_home.py`` to print them with every occurrence.

- format isinstance: ``isinstance`` / ``issubclass`` naming a format class
  (spec/formats.py) outside spec/ (where specs validate their arguments): format
  behaviour lives in the format or in a ``FormatRegistry`` keyed by its type;
- layer isinstance: the same naming a torch.nn or hwquant.nn layer class outside
  nn/: layer-kind knowledge lives in the layer-kind registry (``hwquant.nn.kinds``);
- private reads: ``obj._name`` with ``obj`` not ``self`` / ``cls`` outside nn/, for
  names the module does not define itself (reads of torch's / argparse's private
  names are counted on their own);
- layer lists: literal tuples / lists / sets / dicts naming two or more layer
  classes (as classes or as class-name strings) anywhere in the package, except
  ``__all__``.
"""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import torch.nn

SRC = Path(__file__).resolve().parents[1] / "src" / "hwquant"

# Ceilings: lower them when a change removes occurrences; never raise them.
CEILINGS = {
    "format isinstance": 3,
    "layer isinstance": 4,
    "private reads": 0,
    "third-party private reads": 3,
    "layer lists": 4,
}

_GENERIC = {"Module", "Sequential", "ModuleList", "ModuleDict", "Parameter", "Identity"}


def _format_classes() -> set[str]:
    tree = ast.parse((SRC / "spec" / "formats.py").read_text())
    # ``isinstance(x, Format)`` validates an argument; it asks nothing of a format.
    return {n.name for n in tree.body if isinstance(n, ast.ClassDef)} - {"Format", "FormatRegistry"}


def _layer_classes() -> set[str]:
    names = {
        n
        for n, c in vars(torch.nn).items()
        if inspect.isclass(c) and issubclass(c, torch.nn.Module) and n not in _GENERIC
    }
    for path in (SRC / "nn").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.endswith("Quantizer"):
                names.add(node.name)
    return names


FORMATS, LAYERS = _format_classes(), _layer_classes()


def _names(node: ast.AST) -> set[str]:
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
    return out


# Module aliases whose private names are torch's / the standard library's, not ours.
THIRD_PARTY = {"torch", "nn", "F", "argparse", "np", "onnx", "dist", "fx"}


def _root(node: ast.AST) -> str:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else ""


def _files():
    for path in sorted(SRC.rglob("*.py")):
        yield path, path.relative_to(SRC).as_posix(), ast.parse(path.read_text())


def occurrences() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {k: [] for k in CEILINGS}
    for _path, rel, tree in _files():
        in_nn = rel.startswith("nn/")
        # ONNX op types share names with torch classes (Flatten, Sigmoid): string
        # lists in modules that read ONNX graphs name ops, not layers.
        onnx_names = rel.startswith("export/") or rel == "analysis/cost/onnx_reader.py"
        # Private names this module defines itself (methods of its own classes, its
        # own self._x state) are module-internal, not reads of another module's state.
        own = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)} | {
            n.attr
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name)
            and n.value.id == "self"
        }
        skip = {
            id(n.value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Assign)
            and any(getattr(t, "id", "") == "__all__" for t in n.targets)
        }
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("isinstance", "issubclass")
                and len(node.args) == 2
            ):
                named = _names(node.args[1])
                if named & FORMATS and not rel.startswith("spec/"):
                    found["format isinstance"].append(f"{where} {sorted(named & FORMATS)}")
                if named & LAYERS and not in_nn:
                    found["layer isinstance"].append(f"{where} {sorted(named & LAYERS)}")
            elif (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                and not in_nn
                and node.attr not in own
            ):
                outside = _root(node.value) in THIRD_PARTY
                found["third-party private reads" if outside else "private reads"].append(
                    f"{where} .{node.attr}"
                )
            elif (
                isinstance(node, ast.Tuple | ast.List | ast.Set | ast.Dict) and id(node) not in skip
            ):
                items = node.keys if isinstance(node, ast.Dict) else node.elts
                named = set()
                for item in items:
                    if isinstance(item, ast.Constant) and isinstance(item.value, str):
                        if not onnx_names:
                            named.add(item.value)
                    elif isinstance(item, ast.Name | ast.Attribute):
                        named |= _names(item)
                if len(named & LAYERS) >= 2:
                    found["layer lists"].append(f"{where} {sorted(named & LAYERS)[:4]}")
    return found


def test_counts_stay_at_or_below_their_ceilings():
    found = occurrences()
    over = {k: v for k, v in found.items() if len(v) > CEILINGS[k]}
    assert not over, "\n".join(
        f"{k} ({len(v)} > {CEILINGS[k]}):\n  " + "\n  ".join(v) for k, v in over.items()
    )


def test_the_counter_sees_what_it_must():
    """A planted format check, layer check, private read and layer list are found."""
    code = (
        "def f(x, q):\n"
        "    if isinstance(x, IntFormat | TernaryFormat): pass\n"
        "    if isinstance(q, nn.Conv2d): pass\n"
        "    return q._forward, ('Linear', 'Conv2d')\n"
    )
    tree = ast.parse(code)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and n.func.id == "isinstance"]
    assert _names(calls[0].args[1]) & FORMATS == {"IntFormat", "TernaryFormat"}
    assert _names(calls[1].args[1]) & LAYERS == {"Conv2d"}
    tup = [n for n in ast.walk(tree) if isinstance(n, ast.Tuple) and len(n.elts) == 2][-1]
    assert {e.value for e in tup.elts} <= LAYERS


if __name__ == "__main__":
    verbose = "-v" in sys.argv
    for kind, hits in occurrences().items():
        print(f"{kind}: {len(hits)} (ceiling {CEILINGS[kind]})")
        if verbose:
            print("  " + "\n  ".join(hits))
