"""`genrekit zeroshot`: genres from prompts, no training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from genrekit_cli.main import app
from genrekit_cli.options import DeviceOpt, JsonOpt, TopOpt, WeightsOpt, csv_list as _csv
from genrekit_cli.ui import err_console, loading, print_predictions as _print_predictions


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
    with loading("starting: importing torch"):
        from genrekit.errors import ConfigError
        from genrekit.inference import zeroshot_files, zeroshot_texts
        from genrekit.backbones import random_weights

    if bool(posters) == bool(plot):
        raise ConfigError("give poster files, or plots with --plot (one of them)")
    name = backbone or ("minilm" if plot else "ViT-B-32")
    if random_weights(name, weights):
        err_console.print(
            Text.assemble(("warning:", "bold yellow"), f" {name} with random weights ({'--weights none' if weights else 'it has no pretrained weights'}): "
                          "its similarities to the genre prompts are noise, so the genres below are not predictions. "
                          "Pass pretrained weights (a tag or a checkpoint file) with --weights."), highlight=False)  # fmt: skip
    with loading(f"loading {name} and embedding the genre prompts"):
        failures: list[tuple[str, str]] = []
        if plot:
            preds = zeroshot_texts(plot, backbone=name, weights=weights, genres=_csv(genres) or None, device=device, top_k=top_k)
        else:
            preds, failures = zeroshot_files(
                [str(p) for p in posters or []], backbone=name, weights=weights, genres=_csv(genres) or None,
                device=device, top_k=top_k,
            )  # fmt: skip
    _print_predictions(preds, failures, json, top)
