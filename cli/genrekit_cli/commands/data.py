"""`genrekit data ...`: inspect, clean, split, download and demo. Thin: parse, call, render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from genrekit_cli.main import app
from genrekit_cli.options import (
    ColumnsOpt,
    ForceOpt,
    FormatOpt,
    GenreSepOpt,
    GenresOpt,
    JsonOpt,
    ManifestArg,
    MinCountOpt,
    NoSynonymsOpt,
    OtherOpt,
    SynonymOpt,
    TopKOpt,
    load_manifest,
    vocab_config,
)
from genrekit_cli.ui import console, err_console, print_json, progress_bar

data_app = typer.Typer(no_args_is_help=True, help="Read, inspect, clean, split and download labelled collections.")
app.add_typer(
    data_app,
    name="data",
    help="Data: inspect, clean and split manifests, download posters, make the demo set.",
)


def _warn(lines: list[str]) -> None:
    for w in lines:
        err_console.print(Text.assemble(("warning:", "yellow"), f" {w}"), highlight=False, soft_wrap=True)


def _render_inspect(r) -> None:
    console.print(Text.assemble((str(r.source), "bold"), f" ({r.format}): {r.rows:,} rows"), highlight=False)
    t = Table(title="genres", show_lines=False)
    for col, just in (("genre", "left"), ("items", "right"), ("share", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for g, c in r.genre_counts.items():
        t.add_row(g, f"{c:,}", f"{100 * r.genre_shares[g]:.1f}%")
    console.print(t)
    console.print("labels per item: " + ", ".join(f"{k}: {v:,}" for k, v in r.labels_per_item.items()))
    if r.top_pairs:
        console.print("most frequent pairs: " + ", ".join(f"{a}+{b} {c:,}" for a, b, c in r.top_pairs))
    years = f"{r.year_range[0]}-{r.year_range[1]}" if r.year_range else "none"
    console.print(f"years: {years} ({r.without_year:,} without a year)")
    console.print(f"with image: {r.with_image:,} ({r.image_urls:,} URLs), with plot: {r.with_plot:,}")
    console.print(
        f"duplicates: {len(r.duplicate_ids)} repeated ids, {len(r.duplicate_title_year)} same title+year, "
        f"{len(r.duplicate_images)} identical images"
    )
    if not r.images_checked:
        console.print("images: not checked (--no-images)")
    elif r.image_problems:
        console.print(
            Text.assemble((f"image problems: {len(r.image_problems):,}", "red"), " ("
                          + ", ".join(f"{k}: {v}" for k, v in r.image_problem_counts.items()) + ")")
        )
        for i, reason in list(r.image_problems.items())[:10]:
            console.print(f"  {i}: {reason}", highlight=False)
    else:
        console.print("images: all readable", style="green")
    _warn(r.warnings)


@data_app.command("inspect")
def inspect_cmd(
    manifest: ManifestArg,
    format: FormatOpt = "auto",
    columns: ColumnsOpt = None,
    genre_sep: GenreSepOpt = None,
    images: Annotated[bool, typer.Option("--images/--no-images", help="Check that every image opens.")] = True,
    deep: Annotated[bool, typer.Option("--deep", help="Fully decode every image (finds truncated files).")] = False,
    top_pairs: Annotated[int, typer.Option("--top-pairs", help="How many co-occurring genre pairs to list.")] = 10,
    json: JsonOpt = False,
) -> None:
    """Rows, genre counts and shares, labels per item, frequent pairs, years, duplicates, bad images.

    Example: genrekit data inspect data/labels.csv --deep
    """
    from genrekit.data.inspection import inspect_manifest

    m = load_manifest(manifest, format, columns, genre_sep)
    with progress_bar("images") as progress:
        report = inspect_manifest(m, check_images=images, deep=deep, top_pairs=top_pairs, progress=progress)
    if json:
        print_json(report.to_json())
    else:
        _render_inspect(report)


@data_app.command("clean")
def clean_cmd(
    manifest: ManifestArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Cleaned manifest CSV to write.")],
    removed: Annotated[Optional[Path], typer.Option("--removed", help="Write the removed rows (id,reason,detail,title) here.")] = None,
    format: FormatOpt = "auto",
    columns: ColumnsOpt = None,
    genre_sep: GenreSepOpt = None,
    deep: Annotated[bool, typer.Option("--deep", help="Fully decode every image.")] = False,
    require_image: Annotated[
        Optional[bool], typer.Option("--require-image/--allow-no-image", help="Remove items without a readable image (default: if the manifest has images).")
    ] = None,
    keep_title_year: Annotated[bool, typer.Option("--keep-same-title-year", help="Keep items sharing title and year.")] = False,
    keep_identical: Annotated[bool, typer.Option("--keep-identical-images", help="Keep byte-identical images.")] = False,
    top_k: TopKOpt = None,
    min_count: MinCountOpt = 1,
    genres: GenresOpt = None,
    other: OtherOpt = False,
    synonym: SynonymOpt = None,
    no_synonyms: NoSynonymsOpt = False,
    json: JsonOpt = False,
    force: ForceOpt = False,
) -> None:
    """Remove duplicates, rows without genres or images, unreadable images; apply the vocabulary.

    Example: genrekit data clean MovieGenre.csv --out clean.csv --removed removed.csv --top-k 20 --other
    """
    from genrekit.atomic import MANIFEST_CSV, REMOVED_CSV, check_output
    from genrekit.data.clean import CleanConfig, clean_manifest
    from genrekit.data.manifest import write_manifest
    from genrekit.data.vocab import apply_vocabulary

    check_output(out, {"the manifest": manifest}, "--out", MANIFEST_CSV, force)
    if removed:
        check_output(removed, {"the manifest": manifest, "--out": out}, "--removed", REMOVED_CSV, force)
    m = load_manifest(manifest, format, columns, genre_sep)
    vcfg = vocab_config(top_k, min_count, genres, other, synonym, no_synonyms)
    cfg = CleanConfig(require_image, True, deep, not keep_title_year, not keep_identical)
    with progress_bar("images") as progress:
        cleaned, report = clean_manifest(m, cfg, progress=progress)
    final, vreport = apply_vocabulary(cleaned, vcfg)
    write_manifest(final, out)
    if removed:
        report.write_csv(removed)
    if json:
        print_json({**report.to_json(), "vocabulary": vreport.__dict__, "out": str(out), "rows_out": len(final)})
        return
    console.print(f"{report.rows_in:,} rows in, {len(final):,} out -> {out}")
    for reason, n in report.counts.items():
        console.print(f"  removed {n:,}: {reason}")
    if report.latin1_rows:
        console.print(f"  kept {len(report.latin1_rows):,} line(s) that were not valid UTF-8 (read as Latin-1)")
    if vreport.renamed:
        console.print("  renamed: " + ", ".join(f"{a} -> {b}" for a, b in vreport.renamed.items()), highlight=False)
    if vreport.dropped or vreport.to_other:
        what = "to Other" if vreport.to_other else "dropped"
        console.print(f"  genres {what}: " + ", ".join(f"{g} ({c})" for g, c in (vreport.dropped or vreport.to_other).items()))
    if vreport.emptied:
        console.print(f"  removed {len(vreport.emptied):,}: no genre left in the vocabulary")
    console.print(f"vocabulary ({len(vreport.vocabulary)}): {', '.join(vreport.vocabulary)}", highlight=False)
    if removed:
        console.print(f"removed rows listed in {removed}")
    _warn(m.warnings)


@data_app.command("split")
def split_cmd(
    manifest: ManifestArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="SPLIT.csv to write (id,split).")],
    by: Annotated[str, typer.Option("--by", help="stratified, year or column (the manifest's split column).")] = "stratified",
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same split.")] = 0,
    ratios: Annotated[str, typer.Option("--ratios", help="train,val,test shares for --by stratified.")] = "0.7,0.15,0.15",
    test_from: Annotated[Optional[int], typer.Option("--test-from", help="First test year for --by year.")] = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of older items used for val (--by year).")] = 0.15,
    format: FormatOpt = "auto",
    columns: ColumnsOpt = None,
    genre_sep: GenreSepOpt = None,
    json: JsonOpt = False,
    force: ForceOpt = False,
) -> None:
    """Write a reproducible train/val/test split (iterative stratification, by year, or a column).

    Example: genrekit data split labels.csv --out split.csv --seed 1
             genrekit data split labels.csv --out split.csv --by year --test-from 2010
    """
    from genrekit.atomic import SPLIT_CSV, check_output
    from genrekit.data.split import PARTS, SplitConfig, split_manifest, write_split_file
    from genrekit.errors import ConfigError

    try:
        r = tuple(float(x) for x in ratios.split(","))
    except ValueError:
        raise ConfigError(f"--ratios {ratios!r} must be three numbers, e.g. 0.7,0.15,0.15") from None
    cfg = SplitConfig(by, r, seed, test_from, val_fraction)  # type: ignore[arg-type]
    check_output(out, {"the manifest": manifest}, "--out", SPLIT_CSV, force)
    m = load_manifest(manifest, format, columns, genre_sep)
    split, warnings = split_manifest(m, cfg)
    warnings = [*m.warnings, *warnings]
    write_split_file(out, list(split), split)
    counts = {p: sum(1 for v in split.values() if v == p) for p in PARTS}
    if json:
        print_json({"out": str(out), "counts": counts, "warnings": warnings})
        return
    console.print(f"{len(split):,} items -> {out}: " + ", ".join(f"{p} {c:,}" for p, c in counts.items()))
    _warn(warnings)


@data_app.command("download")
def download_cmd(
    manifest: ManifestArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for images/, labels.csv (labels.downloaded.csv if labels.csv is MANIFEST) and failures.csv.")],
    workers: Annotated[int, typer.Option("--workers", help="Concurrent requests.")] = 8,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds for the connection and for each read.")] = 20.0,
    deadline: Annotated[float, typer.Option("--deadline", help="Total seconds per URL, retries and redirects included.")] = 120.0,
    retries: Annotated[int, typer.Option("--retries", help="Retries after 5xx, 429, timeouts, truncated bodies.")] = 3,
    backoff: Annotated[float, typer.Option("--backoff", help="Seconds before the first retry (doubles).")] = 1.0,
    max_retry_after: Annotated[float, typer.Option("--max-retry-after", help="Longest Retry-After (seconds) to wait for; longer is a failure.")] = 60.0,
    format: FormatOpt = "auto",
    columns: ColumnsOpt = None,
    genre_sep: GenreSepOpt = None,
    json: JsonOpt = False,
) -> None:
    """Fetch URL-only posters (bounded, retried, resumable) and write a manifest of local paths.

    Example: genrekit data download MovieGenre.csv --out posters/
    """
    from genrekit.data.download import DownloadConfig, download_posters

    m = load_manifest(manifest, format, columns, genre_sep)
    cfg = DownloadConfig(workers=workers, timeout=timeout, deadline=deadline, retries=retries, backoff=backoff,
                         max_retry_after=max_retry_after)
    _warn(m.warnings)
    with progress_bar("posters") as progress:
        _, report = download_posters(m, out, cfg, progress=progress)
    if json:
        print_json(report.to_json())
        return
    console.print(
        f"downloaded {report.downloaded:,}, already on disk {report.skipped_existing:,}, local {report.local:,}, "
        f"failed {len(report.failures):,} -> {report.manifest_path}"
    )
    if report.failures:
        console.print(f"failures with reasons: {report.failures_path}")


@data_app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the demo collection into.")],
    n: Annotated[int, typer.Option("--n", help="Number of posters.")] = 360,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same bytes.")] = 0,
    force: ForceOpt = False,
) -> None:
    """Draw a license-clean demo collection (posters, titles, years, plots) for a first run.

    Example: genrekit data demo --out demo_out/data
    """
    from genrekit.atomic import MANIFEST_CSV, check_output, check_output_dir
    from genrekit.data.demo import make_demo

    check_output_dir(out, {}, "--out", "demo collection", ("images",), force)
    check_output(out / "labels.csv", {}, "--out", MANIFEST_CSV, force)

    with progress_bar("posters") as progress:
        labels = make_demo(out, n=n, seed=seed, progress=progress)
    console.print(f"{n} demo posters -> {labels}")
