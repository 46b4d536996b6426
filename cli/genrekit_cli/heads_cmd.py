"""`genrekit heads`, `genrekit predict`, `genrekit evaluate`, `genrekit zeroshot`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from genrekit_cli.main import app
from genrekit_cli.options import DeviceOpt, FormatOpt, JsonOpt, WeightsOpt
from genrekit_cli.ui import console, err_console, print_json, progress_bar

TopOpt = Annotated[int, typer.Option("--top", help="Genres shown per item (the predicted ones always are); 0: all.")]


def _csv(value: Optional[str]) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.3f}"


HEADS_EXAMPLES = """
Examples:
  genrekit heads --store posters.h5 --all --out runs/
  genrekit heads --store posters.h5 --head logreg --head knn --knn-index HNSW32 --out runs/
  genrekit heads --store posters.h5 --all --balance none,weights,oversample --out runs/
  genrekit heads --store posters.h5 --store plots.h5 --all --fusion both --out runs/
  genrekit heads --store posters.h5 --head chain --chain-encoder minilm --out runs/
"""


@app.command(epilog=HEADS_EXAMPLES)
def heads(
    store: Annotated[list[Path], typer.Option("--store", "-s", help="Feature store (.h5) with labels; repeat to fuse stores of one collection.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory: results.json, results.csv, <head>/.")] = Path("runs"),
    all_: Annotated[bool, typer.Option("--all", help="Every head that applies (the skipped ones are named).")] = False,
    head: Annotated[Optional[list[str]], typer.Option("--head", help="A head to train (repeatable); ensemble: greedy ensemble of the others.")] = None,
    threshold: Annotated[str, typer.Option(help="Rule tuned on validation: 0.5, global, per-genre, top-k, at-least-one.")] = "per-genre",
    balance: Annotated[str, typer.Option(help="none, weights, oversample, or several comma-separated to compare.")] = "none",
    seed: Annotated[int, typer.Option(help="Seeds the default split, the heads and oversampling.")] = 0,
    jobs: Annotated[int, typer.Option(help="Heads trained at once (0: one per core).")] = 0,
    knn_index: Annotated[str, typer.Option(help="FAISS index spec of the knn head (Flat, HNSW32, IVF256,Flat ...) or auto: exact below 50,000 items, IVF above.")] = "auto",
    chain_order: Annotated[Optional[str], typer.Option(help="Comma-separated genres that start the chain.")] = None,
    chain_encoder: Annotated[Optional[str], typer.Option(help="Backbone whose text tower orders the chain (e.g. minilm) when the store's encoder has none.")] = None,
    min_positives: Annotated[int, typer.Option(help="Drop genres with fewer training positives.")] = 10,
    fusion: Annotated[Optional[str], typer.Option(help="With several --store: early, late or both.", show_default="both")] = None,
    join: Annotated[str, typer.Option(help="With several --store: outer (every item of any store) or inner (items of every store).")] = "outer",
    per_genre_weights: Annotated[bool, typer.Option(help="With several --store: late fusion tunes one store weighting per genre.")] = False,
    json: JsonOpt = False,
) -> None:
    """Train heads on cached features, tune thresholds on validation, rank them on test."""
    from genrekit.atomic import refuse_overwrite
    from genrekit.errors import ConfigError
    from genrekit.runs.leaderboard import HeadsConfig, run_heads
    from genrekit.store import FeatureStore

    refuse_overwrite(out, {f"the store {s}": s for s in store}, "--out")
    if all_ == bool(head):
        raise ConfigError("name heads with --head NAME (repeatable) or train them all with --all (not both)")
    config = HeadsConfig(
        heads=tuple(head or ()), threshold=threshold, balance=_csv(balance), seed=seed, jobs=jobs,
        knn_index=knn_index, chain_order=_csv(chain_order), chain_encoder=chain_encoder, min_train_positives=min_positives,
    )  # fmt: skip
    config.validate()
    if len(store) > 1:
        _fused_heads(store, out, config, fusion or "both", join, json, per_genre_weights)
        return
    if fusion is not None:
        raise ConfigError("--fusion needs two or more --store (a poster store and a plot store of one collection)")
    fs = FeatureStore(store[0])
    features = fs.load()
    with progress_bar("heads") as progress:
        res = run_heads(features, out, config, header=fs.header, progress=progress)
    if json:
        print_json(res)
        return
    _print_leaderboard(res)
    console.print(f"results: {out / 'results.json'}, {out / 'results.csv'}; heads in {out}/<head>/", style="dim")


def _fused_heads(stores: list[Path], out: Path, config, fusion: str, join: str, json: bool, per_genre_weights: bool = False) -> None:
    from genrekit.features import join_stores
    from genrekit.runs.fused import FusionConfig, run_fused

    fconfig = FusionConfig(fusion=fusion, join=join, per_genre_weights=per_genre_weights)
    fconfig.validate()
    joined = join_stores(stores, join)
    with progress_bar("heads") as progress:
        res = run_fused(joined, out, config, fconfig, progress=progress)
    if json:
        print_json(res)
        return
    _print_fused(res)
    console.print(f"results: {out / 'results.json'}; per store: {', '.join(f'{out / n}/' for n in res['single'])}", style="dim")


def _print_fused(res: dict) -> None:
    cov = res["coverage"]
    per = ", ".join(f"{n} {c:,}" for n, c in cov["per_store"].items())
    only = ", ".join(f"only {n} {c:,}" for n, c in cov["only"].items())
    console.print(f"items: {cov['items']:,} ({per}; every store {cov['every_store']:,}; {only})", highlight=False)
    test = cov["by_part"]["test"]
    console.print("test items: " + ", ".join(f"{k} {v:,}" for k, v in test.items()), highlight=False)
    same = res["same_items"]
    if not same["heads"]:
        err_console.print("[yellow]no test item has every store[/]: fusion cannot be compared with each store alone", highlight=False)
        return
    parts = [*res["single"], *(["early"] if res["early"] else []), *(["late"] if res["late"] else [])]
    t = Table(
        title=f"mAP on the same {same['items']:,} test items (those with every store), {len(same['genres'])} genres; "
        "each column trained as its own run",
        title_justify="left",
    )
    t.add_column("head")
    for part in parts:
        t.add_column(part, justify="right")
    for entry, row in same["heads"].items():
        t.add_row(entry, *(_fmt(row[p]["map_macro"]) if p in row else "-" for p in parts))
    t.add_row("[bold]best on val[/]", *(f"{_fmt(same['best'][p]['map_macro'])} ({same['best'][p]['head']})" if p in same["best"] else "-" for p in parts))
    console.print(t)
    if res["late"] and res["late"]["best"]:
        b = res["late"]["heads"][res["late"]["best"]]
        per_genre = b.get("per_genre_weights")
        weights = ", ".join(f"{n} {(sum(w) / len(w) if per_genre else w):.2f}" for n, w in b["weights"].items())
        what = "per-genre weights tuned on validation, mean" if per_genre else "weights tuned on validation"
        console.print(f"late fusion {res['late']['best']}: {what}: {weights}", highlight=False)
    if res.get("best"):
        console.print(f"best fused head (validation mAP): {res['best']['part']}/{res['best']['entry']} (predict and evaluate use it)", highlight=False)
    console.print(
        f"early fusion: {res['fusion']['early_normalisation']}. Items missing a store: late fusion uses the stores they have.",
        style="dim",
    )


def _print_leaderboard(res: dict) -> None:
    dropped = res["dropped_genres"]
    if dropped:
        counts = ", ".join(f"{g} ({why.split('; ')[0]})" for g, why in dropped.items())
        need = next(iter(dropped.values())).split("; ")[-1]
        err_console.print(f"[yellow]dropped {len(dropped)} genre(s)[/] with too few positives or negatives ({need}): {counts}", highlight=False)
    for h, why in res["skipped_heads"].items():
        err_console.print(f"[yellow]skipped head[/] {h}: {why}", highlight=False)
    split = res["split"]
    t = Table(
        title=f"leaderboard: {res['features']['n_items']:,} items x {res['features']['dim']}, {len(res['genres'])} genres, "
        f"split {split['counts']['train']}/{split['counts']['val']}/{split['counts']['test']} ({split['source']}); "
        f"test scores at tuned thresholds ({res['config']['threshold']})",
        title_justify="left",
    )
    multi = len(res["config"]["balance"]) > 1
    cols = ["head", *(["balance"] if multi else []), "F1 mic", "F1 mac", "mAP", "AUC", "Hamm", "F1 mic@.5", "fit s"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("head", "balance") else "right", no_wrap=True)
    for name, e in res["heads"].items():
        m, z = e["test"]["tuned"], e["test"]["at_0.5"]
        label = f"[bold green]{e['head']}*[/]" if name == res["best"] else e["head"]
        t.add_row(
            label, *([e["balance"]] if multi else []), _fmt(m["f1_micro"]), _fmt(m["f1_macro"]), _fmt(m["map_macro"]),
            _fmt(m["roc_auc_macro"]), _fmt(m["hamming_loss"]), _fmt(z["f1_micro"]), f"{e['fit_seconds']:.1f}",
        )  # fmt: skip
    b = res.get("baseline")
    if b:
        z = b["test"]["at_0.5"]
        t.add_row(
            "[dim]baseline[/]", *(["none"] if multi else []), _fmt(z["f1_micro"]), _fmt(z["f1_macro"]), _fmt(z["map_macro"]),
            _fmt(z["roc_auc_macro"]), _fmt(z["hamming_loss"]), _fmt(z["f1_micro"]), f"{b['fit_seconds']:.1f}",
        )  # fmt: skip
    console.print(t)
    console.print(
        "* best on validation mAP. F1 mic/mac: micro/macro F1; AUC: macro ROC AUC; Hamm: Hamming loss"
        + ("; baseline: one-vs-rest LogisticRegression with scikit-learn defaults, at 0.5" if b else ""),
        style="dim",
    )
    if res["best"]:
        best = res["heads"][res["best"]]
        rules = ", ".join(f"{r} {m['f1_micro']:.3f}/{m['f1_macro']:.3f}" for r, m in best["rules"].items())
        console.print(f"threshold rules for {res['best']} (test F1 micro/macro, each tuned on validation): {rules}", highlight=False)
        _print_per_genre(best, f"best head {res['best']} on test, per genre")


def _print_per_genre(entry: dict, title: str) -> None:
    t = Table(title=title, title_justify="left")
    for c in ("genre", "precision", "recall", "F1", "support", "AUC", "AP"):
        t.add_column(c, justify="left" if c == "genre" else "right")
    for r in entry["per_genre"]:
        t.add_row(Text(r["genre"]), _fmt(r["precision"]), _fmt(r["recall"]), _fmt(r["f1"]), str(r["support"]), _fmt(r["auc"]), _fmt(r["ap"]))
    console.print(t)


PREDICT_EXAMPLES = """
Examples:
  genrekit predict --run runs/logreg poster.jpg other.jpg
  genrekit predict --run runs/mlp posters/*.jpg --json
  genrekit predict --run plot_runs/logreg --text "A detective hunts a killer in 1920s Berlin."
  genrekit predict --run fused_runs/ poster.jpg --title "The Texas Chain Saw Massacre"
  genrekit predict --run fused_runs/ --title "Alien" --plot "A crew answers a distress call."
"""


@app.command(epilog=PREDICT_EXAMPLES)
def predict(
    run: Annotated[Path, typer.Option("--run", "-r", help="A saved head, RUNS/<head>, or RUNS/ for its best head (fused runs too).")],
    posters: Annotated[Optional[list[Path]], typer.Argument(help="Poster image files.")] = None,
    text: Annotated[Optional[list[str]], typer.Option("--text", help="A text for a head trained on one text field (repeatable).")] = None,
    title: Annotated[Optional[list[str]], typer.Option("--title", help="A title, one per poster (or alone); for runs that read titles.")] = None,
    plot: Annotated[Optional[list[str]], typer.Option("--plot", help="A plot, one per poster (or alone); for runs that read plots.")] = None,
    device: DeviceOpt = "cpu",
    top: TopOpt = 8,
    json: JsonOpt = False,
) -> None:
    """Genres of new posters, titles or plots, sorted by probability; the predicted set is starred."""
    from genrekit.errors import ConfigError
    from genrekit.inference import Item, load_run, predict_items

    if text and (title or plot):
        raise ConfigError("--text is for a head trained on one text field; with --title / --plot name the field instead")
    if not (posters or text or title or plot):
        raise ConfigError("give poster files, and/or texts with --title / --plot (or --text)")
    loaded = load_run(run, device=device)
    if text:
        if posters:
            raise ConfigError("give poster files, or texts with --text (one of them); a fused run takes --title / --plot beside posters")
        field = next((f for f in loaded.inputs if f != "image"), None)
        if field is None:
            raise ConfigError(f"the {loaded.name} head was trained on posters; pass poster files")
        items = [Item(t, texts={field: t}) for t in text]
    else:
        texts = {f: list(v) for f, v in (("title", title), ("plot", plot)) if v}
        for f in texts:
            if f not in loaded.inputs:
                raise ConfigError(f"the {loaded.name} run reads {', '.join(loaded.inputs)}, not {f}s; drop --{f}")
        if posters and "image" not in loaded.inputs:
            raise ConfigError(f"the {loaded.name} run reads {', '.join(loaded.inputs)}, not posters")
        n = len(posters) if posters else max(len(v) for v in texts.values())
        for f, v in texts.items():
            if len(v) != n:
                raise ConfigError(f"got {len(v)} --{f} for {n} item(s); give one per poster (in order)")
        items = []
        for k in range(n):
            t = {f: v[k] for f, v in texts.items()}
            name = str(posters[k]) if posters else next(iter(t.values()))
            items.append(Item(name, image=str(posters[k]) if posters else None, texts=t))
    preds, failures = predict_items(loaded, items)
    notes = loaded.fallbacks([it for it in items if it.name in {p.item for p in preds}]) if hasattr(loaded, "fallbacks") else []
    _print_predictions(preds, failures, json, top, notes)


def _print_predictions(preds, failures, json: bool, top: int | None = 8, notes=()) -> None:
    if json:
        print_json({"predictions": [p.to_json() for p in preds], "failures": [{"item": i, "reason": r} for i, r in failures],
                    "fallbacks": [{"item": i, "note": n} for i, n in notes]})  # fmt: skip
    else:
        for p in preds:
            console.print(f"[bold]{escape(p.item)}[/]: {escape(p.line(max(top or 0, len(p.predicted)) or None))}", highlight=False)
        if preds:
            console.print("* = predicted genre", style="dim")
        for item, note in notes:
            err_console.print(f"[yellow]fallback[/] {escape(item)}: {escape(note)}", highlight=False)
        done = {p.item for p in preds}
        for item, reason in failures:  # a fused run predicts an item whose poster failed from its texts
            label = "predicted without it" if item in done else "skipped"
            err_console.print(f"[yellow]{label}[/] {escape(item)}: {escape(reason)}", highlight=False)
    if failures and not preds:
        raise typer.Exit(1)


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
    predictions: Annotated[Optional[Path], typer.Option(help="Write id + one probability column per genre (CSV).")] = None,
    split: Annotated[Optional[str], typer.Option(help="Score only train, val or test of the store's (or manifest's) split.", show_default="all")] = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Score a saved run on another collection's stores or manifest (genres aligned by name)."""
    from genrekit.atomic import atomic_write_json, refuse_overwrite
    from genrekit.errors import ConfigError, GenrekitError
    from genrekit.heads.saved import _json_default
    from genrekit.inference import evaluate_manifest, evaluate_stores, load_run, write_predictions
    from genrekit.store import FeatureStore

    if bool(store) == bool(data):  # a usage error: exit 2 with the usage, like a missing option
        raise typer.BadParameter("give the collection's stores (one per store of the run), or its manifest", param_hint="'--store' or '--data'")
    for out, flag in ((json_out, "--json"), (predictions, "--predictions")):
        if out:
            for s in store or []:
                refuse_overwrite(out, {"the store being evaluated": s}, flag)
            refuse_overwrite(out, {"the manifest": data, "the run": run}, flag)
    if json_out and predictions and json_out.resolve() == predictions.resolve():
        raise ConfigError(f"--json and --predictions both name {json_out}; give them different files")
    try:
        loaded = load_run(run, device=device)
    except GenrekitError:
        for s in store or []:  # when both are wrong, a damaged store is the first thing to name
            FeatureStore(s).load()
        raise
    if data:
        with progress_bar("items") as progress:
            ev = evaluate_manifest(loaded, data, split=split, format=format, progress=progress)
        source = str(data)
    else:
        ev = evaluate_stores(loaded, store, split=split)
        source = " + ".join(map(str, store))
    res = ev.results
    if json_out:
        atomic_write_json(json_out, res, default=_json_default)
    if predictions:
        write_predictions(predictions, ev.ids, ev.genres, ev.P)
    t = Table(title=f"{res['head']} on {escape(source)} ({res['items']:,} items, {len(res['genres'])} shared genres)", title_justify="left")
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
    if res.get("fallbacks"):
        console.print(f"{res['fallbacks']:,} item(s) predicted without some modality (fallback as in training)", style="dim")
    if res.get("failures"):
        err_console.print(f"[yellow]{len(res['failures']):,} item(s) not predicted[/], e.g. {escape(res['failures'][0]['item'])}: {escape(res['failures'][0]['reason'])}", highlight=False)
    for p, what in ((json_out, "scores"), (predictions, "predictions")):
        if p:
            console.print(f"{what}: {p}", style="dim")


ZEROSHOT_EXAMPLES = """
Examples:
  genrekit zeroshot poster.jpg
  genrekit zeroshot poster.jpg --backbone ViT-L-14 --genres Horror,Comedy,Romance,Western
  genrekit zeroshot --plot "A sheriff hunts an outlaw across the desert." --backbone minilm
"""


@app.command(epilog=ZEROSHOT_EXAMPLES)
def zeroshot(
    posters: Annotated[Optional[list[Path]], typer.Argument(help="Poster image files.")] = None,
    plot: Annotated[Optional[list[str]], typer.Option("--plot", help="A plot to classify instead of posters (repeatable).")] = None,
    backbone: Annotated[
        Optional[str],
        typer.Option("--backbone", "-b", help="Posters: a model with image and text towers; plots: any text tower.", show_default="ViT-B-32 for posters, minilm for plots"),
    ] = None,
    weights: WeightsOpt = None,
    genres: Annotated[Optional[str], typer.Option(help="Comma-separated genres.", show_default="21 common IMDb genres")] = None,
    # Not --top-k: that flag chooses the vocabulary in `extract` and `data clean`.
    top_k: Annotated[int, typer.Option("--pick", help="Genres predicted per item (0: those above 1/number of genres).")] = 0,
    device: DeviceOpt = "cpu",
    top: TopOpt = 8,
    json: JsonOpt = False,
) -> None:
    """Genres of posters from prompts ("a poster of a horror movie."), or of plots from genre descriptions; no training."""
    from genrekit.errors import ConfigError
    from genrekit.inference import zeroshot_files, zeroshot_texts

    if bool(posters) == bool(plot):
        raise ConfigError("give poster files, or plots with --plot (one of them)")
    failures: list[tuple[str, str]] = []
    if plot:
        preds = zeroshot_texts(plot, backbone=backbone or "minilm", weights=weights, genres=_csv(genres) or None, device=device, top_k=top_k)
    else:
        preds, failures = zeroshot_files(
            [str(p) for p in posters or []], backbone=backbone or "ViT-B-32", weights=weights, genres=_csv(genres) or None,
            device=device, top_k=top_k,
        )  # fmt: skip
    _print_predictions(preds, failures, json, top)
