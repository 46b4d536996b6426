"""`genrekit evaluate`: score a saved run on another collection."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text
from rich.table import Table

from genrekit_cli.main import app
from genrekit_cli.options import DeviceOpt, ForceOpt, FormatOpt, PrecisionOpt
from genrekit_cli.ui import console, err_console, fmt as _fmt, loading, print_per_genre as _print_per_genre, progress_bar


EVALUATE_EXAMPLES = """
Examples:
  genrekit evaluate --run runs/logreg --store holdout.h5
  genrekit evaluate --run runs/logreg --store holdout.h5 --json scores.json --predictions preds.csv
  genrekit evaluate --run fused_runs/ --store posters2.h5 --store titles2.h5 --predictions preds.csv
  genrekit evaluate --run fused_runs/ --data holdout/labels.csv
"""


@app.command(epilog=EVALUATE_EXAMPLES)
def evaluate(
    run: Annotated[Path, typer.Option("--run", "-r", help="A saved head, RUNS/<head>, or RUNS/ for its best head (fused runs too).")],
    store: Annotated[
        Optional[list[Path]], typer.Option("--store", "-s", help="Labelled store made as the run's was; one per store of a fused run.")
    ] = None,
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="Labelled manifest: every modality the run reads is embedded.")] = None,
    format: FormatOpt = "auto",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the scores to this JSON file.")] = None,
    predictions: Annotated[Optional[Path], typer.Option(help="Write a CSV: id, true genres, predicted genres (most probable first), one probability column per genre.")] = None,
    split: Annotated[Optional[str], typer.Option(help="Score only train, val or test of the store's (or manifest's) split.", show_default="all")] = None,
    device: DeviceOpt = "cpu",
    precision: PrecisionOpt = "auto",
    force: ForceOpt = False,
) -> None:
    """Score a saved run on another collection's stores or manifest (genres aligned by name)."""
    with loading("starting: importing torch and scikit-learn"):
        from genrekit.atomic import EVALUATE_JSON, PREDICTIONS_CSV, atomic_write_json, check_output
        from genrekit.errors import ConfigError, GenrekitError
        from genrekit.heads.saved import _json_default
        from genrekit.inference import evaluate_manifest, evaluate_stores, load_run, write_predictions
        from genrekit.store import FeatureStore

    if bool(store) == bool(data):  # a usage error: exit 2 with the usage, like a missing option
        raise typer.BadParameter("give the collection's stores (one per store of the run), or its manifest", param_hint="'--store' or '--data'")
    for out, flag, kind in ((json_out, "--json", EVALUATE_JSON), (predictions, "--predictions", PREDICTIONS_CSV)):
        if out:
            inputs = {"the manifest": data, "the run": run, **{f"the store being evaluated {s}": s for s in store or []}}
            check_output(out, inputs, flag, kind, force)
    if json_out and predictions and json_out.resolve() == predictions.resolve():
        raise ConfigError(f"--json and --predictions both name {json_out}; give them different files")
    with loading(f"loading the run {run}"):
        try:
            loaded = load_run(run, device=device, precision=precision)
        except GenrekitError:
            for s in store or []:  # when both are wrong, a damaged store is the first thing to name
                FeatureStore(s).load()
            raise
    if data:
        with progress_bar("items", waiting=f"reading {data.name}, building the run's encoder") as progress:
            ev = evaluate_manifest(loaded, data, split=split, format=format, progress=progress)
        source = str(data)
    else:
        with loading(f"scoring {len(store)} store(s)"):
            ev = evaluate_stores(loaded, store, split=split)
        source = " + ".join(map(str, store))
    res = ev.results
    if data:  # the encoders ran on the items: say in which precision
        res["precision"] = loaded.precision
    if json_out:
        atomic_write_json(json_out, res, default=_json_default)
    if predictions:
        write_predictions(predictions, ev.ids, ev.genres, ev.P, ev.true, ev.predicted)
    t = Table(title=f"{res['head']} on {source} ({res['items']:,} items, {len(res['genres'])} shared genres)", title_justify="left")
    t.add_column("metric")
    t.add_column(f"tuned ({res['thresholds']['rule']})", justify="right")
    t.add_column("at 0.5", justify="right")
    for k, v in res["metrics"].items():
        t.add_row(k, _fmt(v), _fmt(res["metrics_at_0.5"][k]))
    console.print(t)
    _print_per_genre(res, "per genre (tuned thresholds)")
    if res["head_genres_missing_here"]:
        console.print(f"head genres absent from this collection: {', '.join(res['head_genres_missing_here'])}", style="dim")
    if res["skipped_for_ranking"]:
        console.print(f"left out of AUC/AP averages (no positives or no negatives): {', '.join(res['skipped_for_ranking'])}", style="dim")
    if res.get("items_with_store"):
        console.print("items with each store: " + ", ".join(f"{n} {c:,}" for n, c in res["items_with_store"].items()), style="dim")
    if res.get("precision"):
        console.print(f"encoder precision: {res['precision']}", style="dim")
    if res.get("fallbacks"):
        console.print(f"{res['fallbacks']:,} item(s) predicted without some modality (fallback as in training)", style="dim")
    if res.get("failures"):
        err_console.print(Text.assemble((f"{len(res['failures']):,} item(s) not predicted", "yellow"), f", e.g. {res['failures'][0]['item']}: {res['failures'][0]['reason']}"), highlight=False)
    for p, what in ((json_out, "scores"), (predictions, "predictions")):
        if p:
            console.print(f"{what}: {p}", style="dim")
