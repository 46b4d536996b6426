"""`genrekit extract`: run a frozen encoder over a collection into a feature store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from genrekit_cli.main import app
from genrekit_cli.options import ColumnsOpt, DeviceOpt, FormatOpt, GenreSepOpt, GenresOpt, MinCountOpt, NoSynonymsOpt, OtherOpt, SynonymOpt, TopKOpt, WeightsOpt, parse_columns, vocab_config
from genrekit_cli.ui import console, loading, print_failures, progress_bar


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
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size (of each forward).", show_default="fastest measured for the backbone, shared among --streams")] = None,
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
    streams: Annotated[Optional[int], typer.Option(help="CPU: encode N batches side by side, each stream decoding its own and running the model on its share of the threads (--batch-size is then each stream's).", show_default="the backbone's where no decode process runs (up to 2 cores): 2 for mobilenet_v2, else 1")] = None,
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
    with loading("starting: importing torch"):
        from genrekit.atomic import refuse_overwrite
        from genrekit.extraction import ExtractConfig
        from genrekit.extraction import extract as run

    refuse_overwrite(out, {"the manifest": data, "the split file": split}, "--out")
    config = ExtractConfig(
        backbone=backbone, data=str(data), out=str(out), weights=weights, modality=modality, text_field=field, format=format,
        columns=parse_columns(columns), genre_sep=genre_sep,
        batch_size=batch_size, device=device, precision=precision, resize=resize, decoder=decoder, layers=layers, layer_stats=layer_stats, workers=workers, threads=threads, decode_thread=decode_thread, streams=streams,
        limit=limit, dtype=dtype, normalize=normalize, split=str(split) if split else None,
        vocab=vocab_config(top_k, min_count, genres, other, synonym, no_synonyms),
        engine=engine, ray_address=ray_address, num_gpus_per_worker=num_gpus_per_worker,
    )
    waiting = f"reading {data.name}, building {backbone}"
    with progress_bar("posters" if modality == "image" else f"{field}s", waiting=waiting) as progress:
        report = run(config, progress=progress)
    s = report.seconds
    console.print(
        Text.assemble((str(report.store), "bold green"), f": {report.rows} rows "
        f"({report.encoded} encoded now, {report.skipped} already done), "
        f"{report.items_per_second:,.1f} {modality}s/s; time: read {s['read']:.1f}s, "
        f"encode {s['encode']:.1f}s, write {s['write']:.1f}s, total {s['total']:.1f}s")
    )
    if report.failures:
        what = "unreadable" if modality == "image" else f"without a usable {field}"
        console.print(Text.assemble((f"{len(report.failures)} {what} in this run", "yellow"), " (recorded in the store; "
                                    f"`genrekit store info {out} --json` lists all {report.all_failures}):"))
        print_failures(report.failures)
