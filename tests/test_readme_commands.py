"""Every `genrekit …` command the README shows parses as written (typer/click parsing only, nothing runs)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from genrekit_cli.main import app

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) of each ``$ genrekit …`` line, and each bare ``genrekit …`` line of a
    fenced code block; ``\\`` continuations joined, ``# comments`` left to shlex."""
    out, fenced, pending, start = [], False, "", 0
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            continue
        if pending:
            pending += " " + line.strip()
        else:
            s = line.strip()
            m = re.match(r"^(?:\$\s+)?(genrekit\s.*)$", s)
            if not m:
                continue
            pending, start = m.group(1), n
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        out.append((start, pending))
        pending = ""
    return out


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def parse(argv: list[str]) -> None:
    """Parse ``genrekit ARGV`` down to the leaf command, the way the CLI would, without invoking it."""
    cmd = typer.main.get_command(app)
    ctx = cmd.make_context("genrekit", list(argv), resilient_parsing=False)
    while hasattr(cmd, "resolve_command"):
        # The sub-command's name is kept apart from its arguments (click's protected args).
        protected = getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", None) or []
        rest = [*protected, *ctx.args]
        name, cmd, rest = cmd.resolve_command(ctx, rest)
        ctx = cmd.make_context(name, rest, parent=ctx, resilient_parsing=False)


def test_the_readme_shows_commands():
    assert len(COMMANDS) >= 25, COMMANDS
    names = {shlex.split(c, comments=True)[1] for _, c in COMMANDS}
    assert {"extract", "heads", "predict", "evaluate", "report", "explain", "zeroshot", "data", "leaderboard"} <= names, names


@pytest.mark.parametrize("line, command", COMMANDS, ids=[f"README:{n}" for n, _ in COMMANDS])
def test_each_readme_command_parses_as_written(line, command):
    argv = shlex.split(command, comments=True)[1:]
    try:
        parse(argv)
    except Exception as e:  # click's usage errors: say which README line, and why
        msg = e.format_message() if hasattr(e, "format_message") else str(e)
        pytest.fail(f"README.md line {line}: `{command}` does not parse: {msg}")
