"""Each package layer imports only from the layers before it (docs/architecture.md),
and no module imports itself back through others (no cycles).

Every import counts: module level and function level, absolute and relative,
``import hwquant.x``, ``from hwquant.x import y`` and ``from hwquant import x``.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "hwquant"
ORDER = ["spec", "core", "nn", "api", "algorithms", "export", "analysis", "cli"]
# Helpers at a layer's level: data and models use torch only; training is api-level.
LEVEL = {name: i for i, name in enumerate(ORDER)}
LEVEL.update(
    {
        "datasets": 0,
        "models": 0,
        "training": LEVEL["api"],
        "graph": LEVEL["nn"] + 0.5,  # torch.fx passes: on nn, used by api (quantize)
        "checkpoint": LEVEL["algorithms"],  # replays algorithms (fold_bn) on load
        "sweep": LEVEL["analysis"] + 0.5,  # PTQ + cost + export per point; used by the CLI
    }
)
ROOT = "hwquant"  # the curated public API: it imports the layers; only the CLI imports it


def _name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in SRC.rglob("*.py")}


def _imports(module: str) -> set[str]:
    """The hwquant modules ``module`` imports (the deepest module each import names)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from ..y import z
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.add(sub if sub in MODULES else target)
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: _imports(m) for m in MODULES}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def test_layering():
    bad = []
    for module, targets in GRAPH.items():
        own = _layer(module)
        for t in targets:
            theirs = _layer(t)
            if theirs == ROOT and own not in (ROOT, "cli"):
                bad.append(f"{module} imports the root package {t}")
            elif own in LEVEL and theirs in LEVEL and LEVEL[theirs] > LEVEL[own]:
                bad.append(f"{module} imports {t} (a later layer)")
            elif own != ROOT and theirs != ROOT and (own not in LEVEL or theirs not in LEVEL):
                bad.append(f"{module} → {t}: add the layer of {own!r} / {theirs!r} to LEVEL")
    assert not bad, "\n".join(sorted(bad))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_the_checks_see_what_they_must():
    """The parser resolves relative, function-level and ``from package import module``
    imports, and the cycle finder finds a planted cycle."""
    assert "hwquant.checkpoint" in GRAPH["hwquant"]  # from hwquant.checkpoint import …
    assert "hwquant.nn" in GRAPH["hwquant.nn.describe"]  # import hwquant.nn as hnn
    assert "hwquant.export.hls4ml" in GRAPH["hwquant.export.verify"]  # inside a function
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_import_hwquant_does_not_import_onnx():
    import subprocess
    import sys

    code = "import sys, hwquant, hwquant.nn, hwquant.api; print('onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
