"""`genrekit explain`: per-genre saliency maps of a run on posters, with sanity checks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from genrekit_cli.main import app
from genrekit_cli.options import ForceOpt
from genrekit_cli.ui import loading, console, err_console, print_json

EXPLAIN_EXAMPLES = """
Examples:

  genrekit explain --run runs/logreg poster.jpg                 # maps of the 3 most probable genres
  genrekit explain --run runs/ a.jpg b.jpg --genres Horror,Comedy --out maps/
  genrekit explain --run runs/rf poster.jpg --method occlusion   # rf/svc/knn always use occlusion
"""


@app.command(epilog=EXPLAIN_EXAMPLES)
def explain(
    run: Annotated[Path, typer.Option("--run", "-r", help="A saved head (RUNS/<head>), RUNS/ for its best head, or a fine-tune run.")],
    posters: Annotated[list[Path], typer.Argument(help="Poster image files.")],
    genres: Annotated[Optional[str], typer.Option("--genres", help="Genres to explain, e.g. Horror,Comedy (default: the --top-k most probable).")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Explain the K most probable genres.", show_default="3")] = None,
    method: Annotated[str, typer.Option(help="auto (Grad-CAM where the run is differentiable, else occlusion), gradcam or occlusion.")] = "auto",
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the overlays, maps.npz and explain.json.")] = Path("explain_out"),
    json: Annotated[bool, typer.Option("--json", help="Print the JSON summary instead of lines.")] = False,
    force: ForceOpt = False,
) -> None:
    """Per-genre saliency maps of the run's own encoder and head, with a sanity check and genre distinctness."""
    with loading("starting: importing torch and pytorch-grad-cam") as status:
        from genrekit.inference.explain import ExplainConfig, build_explainer, explain_poster, write_explanations
        from genrekit.inference.loaded import load_run

        from genrekit.errors import ConfigError

        if genres and top_k is not None:
            raise ConfigError("give --genres or --top-k, not both")
        names = tuple(g.strip() for g in (genres or "").split(",") if g.strip())
        config = ExplainConfig(genres=names, top_k=3 if top_k is None else top_k, method=method)
        config.validate()
        from genrekit.atomic import check_output_dir

        check_output_dir(out, {"the run": run, **{f"the poster {p}": p for p in posters}}, "--out", "overlays, maps.npz and explain.json",
                         ("explain.json",), force)  # fmt: skip
        status.update(f"loading the run {run} and a randomised copy of its encoder")
        loaded = load_run(run)
        ex = build_explainer(loaded, seed=config.sanity_seed)
    done, failures = [], []
    from genrekit.errors import UnreadableImageError

    with console.status("explaining") as status:
        for k, p in enumerate(posters, start=1):
            status.update(f"explaining {p.name} ({k}/{len(posters)}): the run's maps, then the random-encoder maps")
            try:
                done.append(explain_poster(ex, str(p), config))
            except UnreadableImageError as e:
                failures.append((str(p), str(e)))
    for item, reason in failures:
        err_console.print(Text.assemble(("skipped", "yellow"), f" {item}: {reason}"), highlight=False)
    if not done:
        raise typer.Exit(1)
    summary = write_explanations(done, ex, out, loaded.identity())
    if json:
        print_json(summary)
        return
    for e in done:
        console.print(Text.assemble((str(e.path), "bold"), f" ({e.size[0]}x{e.size[1]}): {e.method_detail}"), highlight=False)
        for g, pr, d in zip(e.genres, e.probabilities, e.predicted):
            s = e.sanity[g]
            sc = "undefined (a constant map)" if s is None else f"{s:+.2f}"
            console.print(f"  {g}{'*' if d else ''} p={pr:.2f}  sanity: rank correlation with the random-encoder map {sc}", highlight=False)
        dist = "n/a (one genre)" if e.distinctness is None else f"{e.distinctness:+.2f}"
        console.print(f"  genre distinctness: mean pairwise rank correlation of the maps {dist} (1 = the same map for every genre)", highlight=False)
    console.print(f"randomised for the sanity check: {ex.randomised_detail}", style="dim", highlight=False)
    console.print(f"wrote {out}/: one overlay PNG per poster, maps.npz, explain.json", highlight=False)
