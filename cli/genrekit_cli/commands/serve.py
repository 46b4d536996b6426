"""`genrekit serve`: an upload page and a JSON API for a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from genrekit_cli.main import app
from genrekit_cli.options import DeviceOpt, PrecisionOpt
from genrekit_cli.ui import err_console

SERVE_EXAMPLES = """
Examples:
  genrekit serve --run runs/                    # the run's best head, on http://127.0.0.1:8000
  genrekit serve --run runs/logreg --port 8080 --workers 2
  curl -F image=@poster.jpg http://127.0.0.1:8000/api/predict
"""


@app.command(epilog=SERVE_EXAMPLES)
def serve(
    run: Annotated[Path, typer.Option("--run", "-r", help="A run: RUNS/ (its best head), RUNS/<head>, a fused or fine-tuned run.")],
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback is reachable from other machines.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes; each loads the run once.")] = 1,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Largest poster file in MB (413 above it).")] = 10.0,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="Largest image in pixels, width x height (413 above it).")] = 40_000_000,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Most items in one /api/predict/batch request.")] = 32,
    max_batch_mb: Annotated[float, typer.Option("--max-batch-mb", help="Largest /api/predict/batch request in MB (413 above it).")] = 64.0,
    max_pending: Annotated[int, typer.Option("--max-pending", help="Most requests with uploads at once per worker (503 + Retry-After beyond).")] = 16,
    max_explains: Annotated[int, typer.Option("--max-explains", help="Most saliency requests running or waiting per worker (503 beyond).")] = 2,
    request_timeout: Annotated[float, typer.Option("--request-timeout", help="Seconds a client has to send a whole request; slower connections are closed.")] = 30.0,
    device: DeviceOpt = "cpu",
    precision: PrecisionOpt = "auto",
) -> None:
    """Serve a run: a drop-a-poster page at / and a JSON API at /api/predict (OpenAPI docs at /docs)."""
    from genrekit.errors import MissingDependencyError

    try:
        from genrekit_cli.apps.serve import ServeConfig, is_loopback
        from genrekit_cli.apps.serve import serve as run_server
    except ImportError as e:
        raise MissingDependencyError(f"serving needs FastAPI and uvicorn ({e}); pip install 'genrekit[serve]'") from None
    cfg = ServeConfig(
        run=str(run), host=host, port=port, workers=workers, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
        max_batch=max_batch, max_batch_mb=max_batch_mb, max_pending=max_pending, max_explains=max_explains,
        request_timeout=request_timeout, device=device, precision=precision,
    ).check()  # fmt: skip
    if not is_loopback(host):
        err_console.print(Text.assemble(("warning:", "yellow"), f" binding to {host}: anyone who can reach this address can use the API (no authentication)"))
    shown = f"[{host}]" if ":" in host else host
    err_console.print(f"loading {run} ... then serving on http://{shown}:{port}/ (API docs at /docs); Ctrl+C stops", style="dim")
    run_server(cfg)
