"""`genrekit store info` and `genrekit store merge`: look into and combine feature stores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table
from rich.text import Text

from genrekit_cli.main import app
from genrekit_cli.options import JsonOpt
from genrekit_cli.ui import console, print_failures, print_json

store_app = typer.Typer(help="Look into feature stores.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("info")
def store_info(
    store: Annotated[Path, typer.Argument(help="Feature store (.h5).")],
    json: JsonOpt = False,
) -> None:
    """Show what made a store: encoder, weights, preprocessing, genres, split, failures."""
    from genrekit.store import FeatureStore

    info = FeatureStore(store).info()
    if json:
        print_json(info)
        return
    enc = info["encoder"]
    t = Table(show_header=False, title=Text(str(store)), title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    weights = enc.get("weights", "")
    if enc.get("weights_sha256"):
        weights += f" (sha256 {enc['weights_sha256'][:12]}…)"
    pre = info["preprocessing"]
    if info["modality"] == "image" and "decoder" not in pre:  # made before the decoder was recorded
        pre = {**pre, "decoder": "pil (the older path: extend it with --decoder pil)"}
    pre_s = ", ".join(f"{k}={v}" for k, v in pre.items())
    for row in (
        ("rows", f"{info['rows']:,} x {info['dim']} {info['dtype']} ({info['size_bytes'] / 1e6:.1f} MB)"),
        ("encoder", f"{enc.get('name')} ({enc.get('family')}, {enc.get('precision', 'fp32')})"),
        ("weights", weights),
        ("layers", f"{enc['layers']} (each pooled to {enc.get('layer_stats', 'mean,std')})" if enc.get("layers") else "last (the pooled embedding)")
        if info["modality"] == "image" else None,
        ("modality", info["modality"] + (f" (field: {pre.get('field', 'plot')})" if info["modality"] == "text" else "")),
        ("preprocessing", pre_s),
        ("normalisation", info["normalisation"]),
        ("genres", f"{len(info['genre_counts'])}: " + ", ".join(f"{g} {c}" for g, c in info["genre_counts"].items())),
        ("split", ", ".join(f"{k} {v}" for k, v in info["split_counts"].items()) if info["split_counts"] else "none (heads make one)"),
        ("failures", str(len(info["failures"]))),
        ("made by", f"genrekit {info['genrekit_version']} on {info['created']} (format {info['format_version']})"),
    ):
        if row is None:  # layers: image stores only
            continue
        k, v = row
        t.add_row(k, Text(str(v)))  # genres, paths and weights are user text: never markup
    console.print(t, highlight=False)
    print_failures([(f["id"], f["reason"]) for f in info["failures"]])


MERGE_EXAMPLES = """
Examples:
  genrekit store merge node1.h5 node2.h5 node3.h5 --out all.h5
  genrekit store merge a.h5 b.h5 --out ab.h5 --genres intersect
"""


@store_app.command("merge", epilog=MERGE_EXAMPLES)
def store_merge(
    stores: Annotated[list[Path], typer.Argument(help="Two or more stores of one encoder and preprocessing.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The merged store to create (must not exist).")],
    genres: Annotated[
        Literal["same", "intersect"],
        typer.Option("--genres", help="same: the stores must list the same genres; intersect: keep only the genres every store lists "
                     "(a genre a store does not list is unknown for its items, never made a negative)."),
    ] = "same",
) -> None:
    """Merge stores made on different machines (same encoder identity; ids in several stores kept once)."""
    from genrekit.store import merge_stores

    merged = merge_stores(stores, out, genres=genres)
    console.print(Text.assemble((str(merged.path), "bold green"), f": {len(merged):,} rows, {len(merged.genres)} genres, "
                                f"{len(merged.failures)} failures, from {len(stores)} stores"))
