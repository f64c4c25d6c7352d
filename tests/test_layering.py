"""Each package layer imports only from the layers before it (DESIGN.md)."""

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
        "graph": LEVEL["algorithms"],
        "checkpoint": LEVEL["algorithms"],  # replays algorithms (fold_bn) on load
    }
)


def _layer(path: Path) -> str:
    rel = path.relative_to(SRC).parts
    return rel[0].removesuffix(".py") if rel else ""


def test_layering():
    bad = []
    for path in SRC.rglob("*.py"):
        own = _layer(path)
        if own not in LEVEL:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                parts = n.split(".")
                if parts[0] != "hwquant" or len(parts) < 2 or parts[1] not in LEVEL:
                    continue
                if LEVEL[parts[1]] > LEVEL[own]:
                    bad.append(f"{path.relative_to(SRC)} imports {n}")
    assert not bad, "\n".join(bad)


def test_import_hwquant_does_not_import_onnx():
    import subprocess
    import sys

    code = "import sys, hwquant, hwquant.nn, hwquant.api; print('onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
