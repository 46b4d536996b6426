"""`genrekit finetune`: fine-tune a store's backbone end to end (LP-FT, grid, WiSE-FT, resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from genrekit_cli.main import app
from genrekit_cli.options import DeviceOpt, ForceOpt, JsonOpt
from genrekit_cli.ui import loading, console, err_console, print_json
from genrekit_cli.ui import fmt as _fmt

FINETUNE_EXAMPLES = """
Examples:
  genrekit finetune --store posters.h5 --run runs/ --out ft/
  genrekit finetune --store posters.h5 --out ft/ --epochs 50 --grid study
  genrekit finetune --store posters.h5 --out ft/ --grid lr=1e-4,3e-4 --grid optimizer=adamw,sgd
  genrekit predict --run ft/ poster.jpg
  genrekit extract --backbone mobilenet_v2 --weights ft/backbone.safetensors --data posters.csv --out ft.h5
"""


@app.command(epilog=FINETUNE_EXAMPLES)
def finetune(
    store: Annotated[Path, typer.Option("--store", "-s", help="Poster store (.h5): its manifest, split, genres, backbone and weights are used.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (re-run the same command to resume).")] = Path("ft"),
    run: Annotated[Optional[Path], typer.Option("--run", "-r", help="A `genrekit heads` run on this store: its split, genres and logreg head (the linear probe).")] = None,
    epochs: Annotated[int, typer.Option(help="Most epochs per grid cell (early stopping may end sooner).")] = 8,
    grid: Annotated[Optional[list[str]], typer.Option("--grid", help="KEY=V1,V2 for batch, lr, optimizer (adamw, sgd, rmsprop); or 'study' for 16/32/64 x 1e-3/1e-4/1e-5 x all three (repeatable).")] = None,
    image_size: Annotated[int, typer.Option(help="Training and inference resolution in pixels; 0: the backbone's own.")] = 0,
    train_stages: Annotated[int, typer.Option(help="Train only the last N stages of a CNN (earlier layers frozen: a cheaper backward pass); 0: every layer.")] = 3,
    loss: Annotated[str, typer.Option(help="bce or softf1.")] = "bce",
    lp_ft: Annotated[bool, typer.Option("--lp-ft/--no-lp-ft", help="Start the head from a linear probe (LP-FT), or from a random init.")] = True,
    head_lr_mult: Annotated[float, typer.Option(help="Head learning rate over the backbone's.")] = 10.0,
    patience: Annotated[int, typer.Option(help="Early stopping: epochs without a better val mAP.")] = 2,
    plateau_factor: Annotated[float, typer.Option(help="ReduceLROnPlateau factor.")] = 0.3,
    plateau_patience: Annotated[int, typer.Option(help="ReduceLROnPlateau patience (epochs).")] = 0,
    augment: Annotated[str, typer.Option(help="poster (small shift/zoom, colour jitter) or none.")] = "poster",
    flip: Annotated[bool, typer.Option(help="Also flip posters horizontally (mirrors their text).")] = False,
    wise_alphas: Annotated[str, typer.Option(help="WiSE-FT alphas tried on validation, comma-separated.")] = "0,0.25,0.5,0.75,1",
    threshold: Annotated[str, typer.Option(help="Rule tuned on validation: 0.5, global, per-genre, top-k, at-least-one.")] = "per-genre",
    seed: Annotated[int, typer.Option(help="Seeds the split (when made here), shuffles and augmentation.")] = 0,
    device: DeviceOpt = "auto",
    threads: Annotated[Optional[int], typer.Option(help="Torch CPU threads.", show_default="every core")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N items of each split part (a quick look).")] = None,
    json: JsonOpt = False,
    force: ForceOpt = False,
) -> None:
    """Fine-tune the store's backbone with a multi-label head: LP-FT, a seeded grid, early stopping,
    WiSE-FT; thresholds tuned on validation; results.json / results.csv like `heads`."""
    with loading("starting: importing torch"):
        from genrekit.atomic import check_output_dir
        from genrekit.errors import ConfigError
        from genrekit.runs.finetune import FinetuneConfig, parse_grid, run_finetune

    try:
        alphas = tuple(float(a) for a in wise_alphas.split(",") if a.strip())
    except ValueError:
        raise ConfigError(f"--wise-alphas {wise_alphas!r} must be comma-separated numbers between 0 and 1") from None
    config = FinetuneConfig(
        epochs=epochs, grid=parse_grid(grid or []), image_size=image_size or None, train_stages=train_stages or None, loss=loss, lp_ft=lp_ft,
        head_lr_mult=head_lr_mult, patience=patience, plateau_factor=plateau_factor, plateau_patience=plateau_patience,
        augment=augment, flip=flip, wise_alphas=alphas, threshold=threshold, seed=seed, device=device, threads=threads, limit=limit,
    )  # fmt: skip
    config.validate()
    check_output_dir(out, {"the store": store, "the heads run": run}, "--out", "fine-tune run", ("finetune.json", "results.json", "cells"), force)
    columns = [TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}", markup=False), TimeElapsedColumn()]
    with Progress(*columns, console=err_console, transient=False) as bar:
        tasks: dict[tuple[str, int], int] = {}
        # Until the first epoch reports: decoding the posters, the linear probe, the network.
        wait: list = [bar.add_task("decoding the posters and building the network", total=None, info="")]

        def progress(ev) -> None:
            if wait:
                bar.remove_task(wait.pop())
            key = (ev.cell, ev.epoch)
            if key not in tasks:
                tasks[key] = bar.add_task(f"{ev.cell} ({ev.cell_index}/{ev.cells}) epoch {ev.epoch}/{ev.epochs}", total=ev.total, info="")
            info = f"{ev.images_per_s:.1f} images/s  loss {ev.loss:.4f}"
            if ev.val_map is not None:
                info += f"  val mAP {ev.val_map:.4f}  lr {ev.lr:.2g}"
            bar.update(tasks[key], completed=ev.done, info=info)

        try:
            res = run_finetune(store, out, config, run=run, progress=progress)
        finally:  # failed before the first epoch: no waiting line left behind
            if wait:
                bar.remove_task(wait.pop())
    if json:
        print_json(res)
        return
    _print_results(res)
    console.print(f"results: {out / 'results.json'}, {out / 'results.csv'}; curves in {out}/cells/<cell>/curve.png; "
                  f"predict with `genrekit predict --run {out} POSTER`", style="dim")  # fmt: skip


def _print_results(res: dict) -> None:
    t = Table(title=f"fine-tuning ({res['image_size']} px, {res['device']}, {res['precision']}); test metrics at thresholds tuned on val")
    for c in ("cell", "val mAP", "mAP", "ROC AUC", "F1 micro", "F1 macro", "best/last epoch", "last LR", "seconds"):
        t.add_column(c, justify="left" if c == "cell" else "right")
    for name, e in res["cells"].items():
        m = e["test"]["tuned"]
        star = " *" if name == res["best"] else ""
        t.add_row(name + star, _fmt(e["val"]["map_macro"]), _fmt(m["map_macro"]), _fmt(m["roc_auc_macro"]), _fmt(m["f1_micro"]),
                  _fmt(m["f1_macro"]), f"{e['best_epoch']}/{e['last_epoch']}", f"{e['last_lr']:.2g}", f"{e['seconds']:.0f}")  # fmt: skip
    console.print(t)
    w = res["wise_ft"]
    console.print("WiSE-FT val mAP by alpha: " + ", ".join(f"{a:g}: {_fmt(v)}" for a, v in zip(w["alphas"], w["val_map"])) + f"  -> alpha {w['chosen']:g}")
    f = res["final"]["test"]["tuned"]
    console.print(
        f"final ({res['best']}, alpha {w['chosen']:g}): test mAP {_fmt(f['map_macro'])}, ROC AUC {_fmt(f['roc_auc_macro'])}, "
        f"F1 micro {_fmt(f['f1_micro'])}, F1 macro {_fmt(f['f1_macro'])}; peak RSS {res['peak_rss_mb']:.0f} MB"
        + (f", peak GPU {res['peak_gpu_mb']:.0f} MB" if res.get("peak_gpu_mb") else "")
    )
