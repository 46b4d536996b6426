"""Entry point: the typer app, its sub-commands, and the one error boundary."""

from __future__ import annotations

import logging
import os

import typer
from rich.text import Text

# typer >= 0.20 bundles its own copy of click (typer._click); its usage errors and exits are not
# the `click` package's classes, so the boundary names typer's (pyproject pins the typer range).
from typer import _click as click
from typer.core import TyperGroup

from genrekit import __version__
from genrekit.errors import GenrekitError


def _fail(msg: str, code: int = 1) -> None:
    from genrekit_cli.ui import err_console

    # User text (paths, ids, genres) is printed literally: a Text is never parsed for markup.
    err_console.print(Text.assemble(("error:", "bold red"), " ", str(msg)), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class _ErrorBoundary(TyperGroup):
    """Known errors become one red line and exit code 1; GENREKIT_DEBUG=1 shows tracebacks."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, click.ClickException):
            raise  # --help, usage errors (exit 2, with the usage) and deliberate exits keep their own messages and codes
        except KeyboardInterrupt:
            _fail("interrupted; re-run the same command to resume", code=130)
        except Exception as e:
            if os.environ.get("GENREKIT_DEBUG"):
                raise
            if isinstance(e, GenrekitError):
                _fail(str(e))
            if isinstance(e, OSError) and e.filename:
                _fail(f"{e.strerror or e}: {e.filename}")
            _fail(f"{type(e).__name__}: {e} (set GENREKIT_DEBUG=1 for the traceback)")


app = typer.Typer(
    name="genrekit",
    cls=_ErrorBoundary,
    help="Predict film and anime genres from posters and plots: extract frozen features once, "
    "then train and compare cheap multi-label heads on them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        print(f"genrekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the library's log messages."),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


# Each module adds its commands to `app` when imported; import order is the order in --help. Command
# modules import the library inside the command functions, so `--help` loads neither torch nor sklearn.
from genrekit_cli.commands import data, backbones, extract, store, heads, predict, evaluate, zeroshot  # noqa: E402, F401
from genrekit_cli.commands import finetune, serve, report, explain, leaderboard  # noqa: E402, F401


def main() -> None:
    """Console-script entry point."""
    from genrekit.system import exit_without_collection, share_main_arena

    share_main_arena()  # before any thread (rich's refresh thread included) has an arena of its own
    exit_without_collection()
    app()
