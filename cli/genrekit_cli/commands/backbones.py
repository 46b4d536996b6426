"""`genrekit backbones`: the registered encoders."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.text import Text
from rich.table import Table

from genrekit_cli.main import app
from genrekit_cli.options import JsonOpt
from genrekit_cli.ui import console, err_console, print_json


BACKBONES_EXAMPLES = """
Examples:
  genrekit backbones
  genrekit backbones 'ViT-*'
  genrekit backbones text
"""


@app.command(epilog=BACKBONES_EXAMPLES)
def backbones(
    pattern: Annotated[Optional[str], typer.Argument(help="Shell-style name pattern or family, e.g. 'ViT-*', text.")] = None,
    json: JsonOpt = False,
) -> None:
    """List the registered encoders: family, modality, embedding size, input size, weights."""
    from genrekit.backbones import list_backbones, weights_present

    specs = list_backbones(pattern)
    rows = [
        {
            "name": s.name,
            "family": s.family,
            "modality": "+".join(s.modalities),
            "dim": s.dim or None,
            "input": s.input_size,
            "layers": s.layers,
            "stages": len(s.options.get("stages") or ()) or None,
            "weights": list(s.weights),
            "offline": weights_present(s),
            "description": s.description,
        }
        for s in specs
    ]
    if json:
        print_json(rows)
        return
    if not rows:
        err_console.print(f"no backbone matches {pattern!r}; `genrekit backbones` lists them all", markup=False)
        raise typer.Exit(1)
    table = Table(title="genrekit backbones", title_justify="left")
    for col in ("name", "family", "modality", "dim", "input", "layers", "default weights", "offline"):
        table.add_column(col, justify="right" if col in ("dim", "input") else "left", no_wrap=col in ("name", "layers"))
    for r in rows:
        offline = {True: Text("yes", "green"), False: Text("no", "yellow"), None: "n/a"}[r["offline"]]
        tags = r["weights"][0] + (f" (+{len(r['weights']) - 1})" if len(r["weights"]) > 1 else "") if r["weights"] else "-"
        layers = f"{r['layers']} ({r['stages']})" if r["stages"] else r["layers"]
        table.add_row(r["name"], r["family"], r["modality"], str(r["dim"] or "?"), str(r["input"] or "-"), layers, tags, offline)
    console.print(table)
    console.print(
        "Any open_clip architecture name, timm:<name> and onnx:PATH.onnx (any ONNX image encoder) work too. Every backbone takes "
        "--weights TAG, a local checkpoint path, or none (random init). dim is the last layer's; "
        "layers: what extract pools by default (--layers; in brackets, the stages it knows).",
        style="dim",
    )
