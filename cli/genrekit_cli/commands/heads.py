"""`genrekit heads`: train, tune and rank heads on cached features; the leaderboard printers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from genrekit_cli.main import app
from genrekit_cli.options import ForceOpt, JsonOpt, csv_list as _csv
from genrekit_cli.ui import console, err_console, fmt as _fmt, loading, print_json, print_per_genre as _print_per_genre, progress_bar


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
    force: ForceOpt = False,
) -> None:
    """Train heads on cached features, tune thresholds on validation, rank them on test."""
    from genrekit.atomic import check_output_dir
    with loading("starting: importing scikit-learn"):
        from genrekit.errors import ConfigError
        from genrekit.runs.leaderboard import HeadsConfig, run_heads
        from genrekit.store import FeatureStore

    check_output_dir(out, {f"the store {s}": s for s in store}, "--out", "run", ("results.json", "run.json"), force)
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
    with loading(f"reading {store[0]}"):
        features = fs.load()
    with progress_bar("heads", waiting="splitting and training the first heads") as progress:
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
    with loading(f"reading and joining {len(stores)} stores"):
        joined = join_stores(stores, join)
    with progress_bar("heads", waiting="splitting and training the first heads") as progress:
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
        err_console.print(Text.assemble(("no test item has every store", "yellow"), ": fusion cannot be compared with each store alone"), highlight=False)
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
    t.add_row(Text("best on val", "bold"), *(f"{_fmt(same['best'][p]['map_macro'])} ({same['best'][p]['head']})" if p in same["best"] else "-" for p in parts))
    console.print(t)
    if res["late"] and res["late"]["best"]:
        b = res["late"]["heads"][res["late"]["best"]]
        per_genre = b.get("per_genre_weights")
        weights = ", ".join(f"{n} {(sum(w) / len(w) if per_genre else w):.2f}" for n, w in b["weights"].items())
        what = "per-genre weights tuned on validation, mean" if per_genre else "weights tuned on validation"
        console.print(f"late fusion {res['late']['best']}: {what}: {weights}", highlight=False)
    for part in ("early", "late"):
        for name, e in ((res.get(part) or {}).get("heads") or {}).items():
            for note in e.get("notes") or ():
                err_console.print(Text.assemble(("note ", "yellow"), f"{part}/{name}: {note}"))
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
        err_console.print(Text.assemble((f"dropped {len(dropped)} genre(s)", "yellow"), f" with too few positives or negatives ({need}): {counts}"), highlight=False)
    for h, why in res["skipped_heads"].items():
        err_console.print(Text.assemble(("skipped head", "yellow"), f" {h}: {why}"), highlight=False)
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
        label = Text(f"{e['head']}*", "bold green") if name == res["best"] else e["head"]
        t.add_row(
            label, *([e["balance"]] if multi else []), _fmt(m["f1_micro"]), _fmt(m["f1_macro"]), _fmt(m["map_macro"]),
            _fmt(m["roc_auc_macro"]), _fmt(m["hamming_loss"]), _fmt(z["f1_micro"]), f"{e['fit_seconds']:.1f}",
        )  # fmt: skip
    b = res.get("baseline")
    if b:
        z = b["test"]["at_0.5"]
        t.add_row(
            Text("baseline", "dim"), *(["none"] if multi else []), _fmt(z["f1_micro"]), _fmt(z["f1_macro"]), _fmt(z["map_macro"]),
            _fmt(z["roc_auc_macro"]), _fmt(z["hamming_loss"]), _fmt(z["f1_micro"]), f"{b['fit_seconds']:.1f}",
        )  # fmt: skip
    console.print(t)
    for name, e in res["heads"].items():
        for note in e.get("notes") or ():
            err_console.print(Text.assemble(("note ", "yellow"), f"{name}: {note}"))
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
