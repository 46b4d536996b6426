"""`genrekit report`: one self-contained HTML file with every figure of a run (the page: genrekit_cli.apps.report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from genrekit_cli.main import app
from genrekit_cli.options import ForceOpt
from genrekit_cli.ui import console, loading

REPORT_EXAMPLES = """
Examples:

  genrekit report runs/                                # runs/report.html: leaderboard, curves, data, gallery
  genrekit report runs/ --out report.html --head knn   # also detail the knn head
"""

@app.command(epilog=REPORT_EXAMPLES)
def report(
    run: Annotated[Path, typer.Argument(help="A run directory: `genrekit heads` output (RUNS/), a fused run or a fine-tune run.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="HTML file to write.", show_default="RUN/report.html")] = None,
    head: Annotated[Optional[list[str]], typer.Option("--head", help="Also detail this head (repeatable); the best head always is.")] = None,
    force: ForceOpt = False,
) -> None:
    """One self-contained HTML report of a run: every figure embedded, opens from disk with no network."""
    with loading("starting: importing matplotlib and scikit-learn") as status:
        from genrekit.atomic import REPORT_HTML, check_output
        from genrekit_cli.apps.report import write_report

        check_output(out if out is not None else run / "report.html", {"the run's results": run / "results.json"}, "--out", REPORT_HTML, force)
        status.update("drawing the report")
        path = write_report(run, out, head or (), progress=lambda s: status.update(f"drawing: {s}"))
    size = path.stat().st_size / 1e6
    console.print(Text.assemble("report: ", (str(path), "bold"), f" ({size:.1f} MB, self-contained; open it in a browser)"), highlight=False)
