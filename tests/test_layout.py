"""The package layout shows the pipeline, and imports flow one way along it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each layer may import only from itself and the layers before it. `base` is what every layer
# shares (errors, the version, the core count, progress callbacks). The store is the format that
# extraction writes into, and feature maths (normalisation, joining stores) works on stores, so
# both sit before extraction. The run-directory format (genrekit/rundir.py) sits below both the
# trainers (runs) and the predictors (inference), so neither carries its own copy.
LAYERS = ["base", "data", "backbones", "store", "features", "extraction", "evaluation", "rundir", "heads", "runs", "inference"]
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


def _leaf_commands(group, path=()):
    """(path, click command) of every runnable command under a click group."""
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _leaf_commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_every_command_lives_in_a_file_named_after_it():
    """`genrekit predict` is cli/genrekit_cli/commands/predict.py; a sub-command (`data split`) is in its group's file."""
    import typer

    from genrekit_cli.main import app

    misplaced = [
        f"genrekit {' '.join(path)} is in {cmd.callback.__module__}"
        for path, cmd in _leaf_commands(typer.main.get_command(app))
        if cmd.callback.__module__ != f"genrekit_cli.commands.{path[0]}"
    ]
    assert not misplaced, "\n".join(misplaced)


def test_the_cli_starts_without_the_heavy_libraries():
    """`genrekit --help` (and every COMMAND --help) must answer at once: the command modules import the
    library inside the command functions, so loading the app imports no heavy library, not even numpy."""
    import subprocess
    import sys

    code = "import sys, genrekit_cli.main; print(sorted(m for m in ('torch', 'sklearn', 'scipy', 'pandas', 'h5py', 'matplotlib', 'fastapi', 'numpy', 'PIL') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"importing the CLI loads {out}"


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
