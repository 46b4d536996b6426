"""The package layout shows the pipeline, and imports flow one way along it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each layer may import only from itself and the layers before it. `base` is what every layer
# shares (errors, the version, the core count, progress callbacks). The store is the format that
# extraction writes into, and feature maths (normalisation, joining stores) works on stores, so
# both sit before extraction.
LAYERS = ["base", "data", "backbones", "store", "features", "extraction", "evaluation", "heads", "runs", "inference"]
BASE = {"genrekit", "errors", "system", "progress", "atomic"}


def _layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "genrekit":
        raise ValueError(module)
    if len(parts) == 1 or parts[1] in BASE:
        return "base"
    return parts[1]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_every_library_module_belongs_to_a_layer():
    for path in (ROOT / "genrekit").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        assert _layer(module) in LAYERS, f"{module} is in no layer of {LAYERS}"


def test_imports_flow_one_way():
    backwards = []
    for path in (ROOT / "genrekit").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        mine = LAYERS.index(_layer(module))
        for imported in _imports(path):
            if imported.split(".")[0] == "genrekit_cli":
                backwards.append(f"{module} imports the CLI ({imported})")
            elif imported.split(".")[0] == "genrekit" and LAYERS.index(_layer(imported)) > mine:
                backwards.append(f"{module} ({_layer(module)}) imports {imported} ({_layer(imported)})")
    assert not backwards, "\n".join(backwards)


def test_test_support_is_not_in_the_library():
    assert not list((ROOT / "genrekit").rglob("synthetic*.py"))


def test_predictors_never_import_trainers():
    """Nothing under genrekit/inference imports genrekit.runs, not even inside a function: using a
    run (predict, evaluate, serve) must not load the code that trains one (what both need, such as
    the fine-tuned network, lives a layer down)."""
    found = []
    for path in (ROOT / "genrekit" / "inference").rglob("*.py"):
        for imported in _imports(path):
            if imported == "genrekit.runs" or imported.startswith("genrekit.runs."):
                found.append(f"{path.relative_to(ROOT)} imports {imported}")
    for path in (ROOT / "genrekit" / "inference").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):  # `from genrekit import runs`
            if isinstance(node, ast.ImportFrom) and node.module == "genrekit" and any(a.name == "runs" for a in node.names):
                found.append(f"{path.relative_to(ROOT)} imports genrekit.runs")
    assert not found, "\n".join(found)
