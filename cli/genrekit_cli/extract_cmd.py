"""`genrekit backbones`, `genrekit extract`, `genrekit store info`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from genrekit_cli.main import app
from genrekit_cli.options import (
    ColumnsOpt,
    DeviceOpt,
    FormatOpt,
    GenreSepOpt,
    GenresOpt,
    JsonOpt,
    MinCountOpt,
    NoSynonymsOpt,
    OtherOpt,
    SynonymOpt,
    TopKOpt,
    WeightsOpt,
    load_manifest,
    vocab_config,
)
from genrekit_cli.ui import console, err_console, print_json, progress_bar

store_app = typer.Typer(help="Look into feature stores.", no_args_is_help=True)
app.add_typer(store_app, name="store")


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
        offline = {True: "[green]yes[/]", False: "[yellow]no[/]", None: "n/a"}[r["offline"]]
        tags = r["weights"][0] + (f" (+{len(r['weights']) - 1})" if len(r["weights"]) > 1 else "") if r["weights"] else "-"
        layers = f"{r['layers']} ({r['stages']})" if r["stages"] else r["layers"]
        table.add_row(r["name"], r["family"], r["modality"], str(r["dim"] or "?"), str(r["input"] or "-"), layers, tags, offline)
    console.print(table)
    console.print(
        "Any open_clip architecture name and [bold]timm:<name>[/] work too. Every backbone takes "
        "--weights TAG, a local checkpoint path, or none (random init). dim is the last layer's; "
        "layers: what extract pools by default (--layers; in brackets, the stages it knows).",
        style="dim",
    )


EXTRACT_EXAMPLES = """
Examples:
  genrekit extract --backbone ViT-L-14 --data posters/labels.csv --out posters.h5
  genrekit extract --backbone mobilenet_v2 --weights mobilenet_v2.pth --data labels.csv --out mnv2.h5
  genrekit extract --backbone minilm --modality text --data labels.csv --out plots.h5
  genrekit extract --backbone ViT-L-14 --data labels.csv --out posters.h5 --engine ray --ray-address auto --num-gpus-per-worker 1
  genrekit extract --backbone minilm --modality text --field title --data labels.csv --out titles.h5
"""


@app.command(epilog=EXTRACT_EXAMPLES)
def extract(
    backbone: Annotated[str, typer.Option("--backbone", "-b", help="Encoder name (see `genrekit backbones`).")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Manifest: CSV with id, image and/or plot, genres.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Feature store to create, extend or resume (.h5).")],
    weights: WeightsOpt = None,
    modality: Annotated[str, typer.Option(help="image (posters) or text (plots, titles).")] = "image",
    field: Annotated[str, typer.Option("--field", help="Text modality: plot, title (its '(Year)' suffix stripped) or another text column.")] = "plot",
    format: FormatOpt = "auto",
    columns: ColumnsOpt = None,
    genre_sep: GenreSepOpt = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size.", show_default="fastest measured for the backbone")] = None,
    device: DeviceOpt = "auto",
    precision: Annotated[str, typer.Option(help="Numeric precision of the encoder: auto (bf16 where the GPU or CPU runs it natively, else fp16 on GPU and fp32 on CPU), fp32, bf16, fp16 (GPU). Recorded in the store.")] = "auto",
    resize: Annotated[Optional[str], typer.Option(help="squash, center-crop or letterbox.", show_default="squash")] = None,
    decoder: Annotated[Optional[str], typer.Option(help="torchvision (libjpeg-turbo, uint8 resize), nvjpeg (decode and resize on the GPU) or pil (to extend stores made by the older PIL path).", show_default="torchvision")] = None,
    layers: Annotated[Optional[str], typer.Option(help="CNN stages to pool: last (the embedding), all, or stage numbers N,M counted from 1; the pooled stages are concatenated.", show_default="the backbone's: all for mobilenet_v2 (measured better with the heads), last for the others")] = None,
    layer_stats: Annotated[str, typer.Option(help="With --layers: what each stage is pooled to, mean or mean,std.")] = "mean,std",
    workers: Annotated[
        Optional[int], typer.Option(help="Image decoding processes; with --engine ray, encoder actors.", show_default="spare cores on GPU; on CPU none up to 2 cores, else 1; ray: one per GPU, else 1")
    ] = None,
    threads: Annotated[Optional[int], typer.Option(help="Torch CPU threads.", show_default="the cores decoding leaves")] = None,
    decode_thread: Annotated[bool, typer.Option(help="With no decode processes, decode the next batch in a thread while the model runs.")] = False,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N samples.")] = None,
    dtype: Annotated[str, typer.Option(help="Stored embedding type: float32 or float16.")] = "float32",
    normalize: Annotated[Optional[str], typer.Option(help="none or l2.", show_default="the backbone's")] = None,
    split: Annotated[Optional[Path], typer.Option(help="id,split CSV to store with the features.")] = None,
    top_k: TopKOpt = None,
    min_count: MinCountOpt = 1,
    genres: GenresOpt = None,
    other: OtherOpt = False,
    synonym: SynonymOpt = None,
    no_synonyms: NoSynonymsOpt = False,
    engine: Annotated[str, typer.Option(help="local (this machine) or ray (a Ray cluster; needs the ray extra of genrekit).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="With --engine ray: auto (a running cluster) or ray://HOST:PORT.", show_default="start Ray on this machine")] = None,
    num_gpus_per_worker: Annotated[float, typer.Option(help="With --engine ray: GPUs per encoder actor (1: one actor per GPU).")] = 0.0,
) -> None:
    """Run a frozen encoder once over a collection into an HDF5 feature store (resumable)."""
    from genrekit.atomic import refuse_overwrite
    from genrekit.extraction import ExtractConfig
    from genrekit.extraction import extract as run

    refuse_overwrite(out, {"the manifest": data, "the split file": split}, "--out")
    config = ExtractConfig(
        backbone=backbone, data=str(data), out=str(out), weights=weights, modality=modality, text_field=field, format=format,
        batch_size=batch_size, device=device, precision=precision, resize=resize, decoder=decoder, layers=layers, layer_stats=layer_stats, workers=workers, threads=threads, decode_thread=decode_thread,
        limit=limit, dtype=dtype, normalize=normalize, split=str(split) if split else None,
        vocab=vocab_config(top_k, min_count, genres, other, synonym, no_synonyms),
        engine=engine, ray_address=ray_address, num_gpus_per_worker=num_gpus_per_worker,
    )
    manifest = load_manifest(data, format, columns, genre_sep)
    with progress_bar("posters" if modality == "image" else f"{field}s") as progress:
        report = run(config, progress=progress, manifest=manifest)
    s = report.seconds
    console.print(
        f"[bold green]{escape(report.store)}[/]: {report.rows} rows "
        f"({report.encoded} encoded now, {report.skipped} already done), "
        f"{report.items_per_second:,.1f} {modality}s/s; time: read {s['read']:.1f}s, "
        f"encode {s['encode']:.1f}s, write {s['write']:.1f}s, total {s['total']:.1f}s"
    )
    if report.failures:
        what = "unreadable" if modality == "image" else f"without a usable {field}"
        console.print(f"[yellow]{len(report.failures)} {what} in this run[/] (recorded in the store; "
                      f"`genrekit store info {escape(str(out))} --json` lists all {report.all_failures}):")
        print_failures(report.failures)


def print_failures(failures: list[tuple[str, str]], examples: int = 10) -> None:
    """Counts per reason, then the first few ids of each (thousands of rows help nobody)."""
    by_reason: dict[str, list[str]] = {}
    for sid, reason in failures:
        by_reason.setdefault(reason.split(" (")[0], []).append(f"{sid}: {reason}")
    for reason, rows in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        console.print(f"  {len(rows)} x {reason}", highlight=False, markup=False)
        for row in rows[:examples]:
            console.print(f"      {row}", highlight=False, markup=False)
        if len(rows) > examples:
            console.print(f"      … and {len(rows) - examples} more")


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
"""


@store_app.command("merge", epilog=MERGE_EXAMPLES)
def store_merge(
    stores: Annotated[list[Path], typer.Argument(help="Two or more stores of one encoder and preprocessing.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The merged store to create (must not exist).")],
) -> None:
    """Merge stores made on different machines (same encoder identity; duplicate ids kept once)."""
    from genrekit.store import merge_stores

    merged = merge_stores(stores, out)
    console.print(f"[bold green]{escape(str(merged.path))}[/]: {len(merged):,} rows, {len(merged.genres)} genres, "
                  f"{len(merged.failures)} failures, from {len(stores)} stores")
