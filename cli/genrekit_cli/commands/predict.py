"""`genrekit predict`: genres of new posters, titles or plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from genrekit_cli.main import app
from genrekit_cli.options import DeviceOpt, JsonOpt, PrecisionOpt, TopOpt
from genrekit_cli.ui import loading, print_predictions as _print_predictions


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
    precision: PrecisionOpt = "auto",
    top: TopOpt = 8,
    json: JsonOpt = False,
) -> None:
    """Genres of new posters, titles or plots, sorted by probability; the predicted set is starred."""
    with loading("starting: importing torch and scikit-learn") as status:
        from genrekit.errors import ConfigError
        from genrekit.inference import Item, load_run, predict_items
        from genrekit.inference.predict import text_name

        if text and (title or plot):
            raise ConfigError("--text is for a head trained on one text field; with --title / --plot name the field instead")
        if not (posters or text or title or plot):
            raise ConfigError("give poster files, and/or texts with --title / --plot (or --text)")
        status.update(f"loading the run {run}")
        loaded = load_run(run, device=device, precision=precision)
        if text:
            if posters:
                raise ConfigError("give poster files, or texts with --text (one of them); a fused run takes --title / --plot beside posters")
            field = next((f for f in loaded.inputs if f != "image"), None)
            if field is None:
                raise ConfigError(f"the {loaded.name} head was trained on posters; pass poster files")
            items = [Item(text_name(t), texts={field: t}) for t in text]
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
                name = str(posters[k]) if posters else text_name(next(iter(t.values())))
                items.append(Item(name, image=str(posters[k]) if posters else None, texts=t))
        status.update(f"predicting {len(items)} item(s) (the encoder is built on first use)")
        preds, failures = predict_items(loaded, items)
        notes = loaded.fallbacks([it for it in items if it.name in {p.item for p in preds}]) if hasattr(loaded, "fallbacks") else []
    _print_predictions(preds, failures, json, top, notes, precision=loaded.precision if preds else None)
