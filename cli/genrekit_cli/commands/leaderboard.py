"""`genrekit leaderboard`: re-print the leaderboard of one or more finished runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from genrekit_cli.main import app
from genrekit_cli.options import JsonOpt
from genrekit_cli.ui import console, fmt, print_json

LEADERBOARD_EXAMPLES = """
Examples:
  genrekit leaderboard runs/
  genrekit leaderboard runs/ fused/ ft/ --sort map_macro
  genrekit leaderboard runs/ --sort hamming_loss --json
"""

# Column -> (results key, header); "val" and "fit" are not test metrics.
COLUMNS = {
    "f1_micro": "F1mic",
    "f1_macro": "F1mac",
    "map_macro": "mAP",
    "roc_auc_macro": "AUC",
    "hamming_loss": "Hamm",
    "f1_micro@0.5": "F1@.5",
    "val_map": "valAP",
    "fit_seconds": "fit s",
}
LOWER_IS_BETTER = {"hamming_loss", "fit_seconds", "coverage_error"}
ALIASES = {"map": "map_macro", "mAP": "map_macro", "auc": "roc_auc_macro", "AUC": "roc_auc_macro", "f1": "f1_micro",
           "hamming": "hamming_loss", "val": "val_map", "fit": "fit_seconds"}  # fmt: skip


def _value(row, metric: str) -> float | None:
    if metric == "val_map":
        return row.val_map
    if metric == "fit_seconds":
        return row.fit_seconds
    if metric.endswith("@0.5"):
        return row.test_at_05.get(metric.removesuffix("@0.5"))
    return row.test.get(metric)


@app.command(epilog=LEADERBOARD_EXAMPLES)
def leaderboard(
    runs: Annotated[list[Path], typer.Argument(help="Run directories: `genrekit heads` output (RUNS/), fused runs, fine-tune runs.")],
    sort: Annotated[Optional[str], typer.Option("--sort", help="Sort by a test metric (map_macro, f1_micro, f1_macro, roc_auc_macro, hamming_loss, any key of results.json's test scores), val_map, fit_seconds, or METRIC@0.5. Best first.", show_default="each run's own order")] = None,
    json: JsonOpt = False,
) -> None:
    """The leaderboard of finished runs again: test scores at the thresholds tuned on validation, best head starred."""
    from genrekit.errors import UnknownNameError
    from genrekit.rundir import leaderboard_rows

    rows = []  # (run, results, row)
    for run in runs:
        results, entries = leaderboard_rows(run)
        rows += [(run, results, r) for r in entries]
    metric = ALIASES.get(sort, sort) if sort else None
    if metric is not None:
        known = {*COLUMNS, *(k for _, _, r in rows for k in r.test), *(f"{k}@0.5" for _, _, r in rows for k in r.test_at_05)}
        if metric not in known:
            raise UnknownNameError("metric", metric, sorted(known))
        sign = 1 if metric.removesuffix("@0.5") in LOWER_IS_BETTER else -1
        # Rows without the metric go last, whatever the direction.
        rows.sort(key=lambda t: (_value(t[2], metric) is None, sign * (_value(t[2], metric) or 0.0)))
    if json:
        print_json({"sort": metric, "rows": [{
            "run": str(run), "kind": res.kind, "entry": r.entry, "head": r.head, "balance": r.balance, "best": r.entry == res.best,
            "val_map_macro": r.val_map, "test": dict(r.test), "test_at_0.5": dict(r.test_at_05), "fit_seconds": r.fit_seconds,
            "threshold_rule": r.thresholds.rule if r.thresholds else None, "threshold_fallback": list(r.threshold_fallback),
        } for run, res, r in rows]})  # fmt: skip
        return
    many = len(runs) > 1
    title = "leaderboard" + (f" of {runs[0]}" if not many else f" of {len(runs)} runs") + (f", sorted by {metric}" if metric else "")
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    if many:
        t.add_column("run", overflow="fold")
    t.add_column("head", overflow="fold")
    for key, header in COLUMNS.items():
        t.add_column(header, justify="right", style="bold" if key == metric else None, no_wrap=True, min_width=5)
    for run, res, r in rows:
        name = r.entry + ("*" if r.entry == res.best else "")
        cells = [fmt(_value(r, k)) if k != "fit_seconds" else ("-" if r.fit_seconds is None else f"{r.fit_seconds:.1f}") for k in COLUMNS]
        t.add_row(*([Text(str(run))] if many else []), Text(name), *cells)
    console.print(t)
    console.print("* the run's best head (on validation mAP); test scores at the thresholds tuned on validation "
                  "(baseline: scikit-learn defaults at 0.5); F1mic/mac: micro/macro F1, AUC: macro ROC AUC, Hamm: Hamming loss, F1@.5: F1 micro at 0.5, valAP: validation mAP",
                  style="dim", highlight=False)  # fmt: skip
