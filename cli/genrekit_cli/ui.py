"""Rendering shared by all commands: one console, progress bars, tables."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console()
err_console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(unit: str = "items") -> Iterator[Any]:
    """A rich progress bar, yielded as a library ``ProgressFn`` (one bar per stage name)."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    tasks: dict[str, TaskID] = {}
    with Progress(*columns, console=err_console, transient=False) as bar:

        def update(stage: str, done: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, rate="")
            task = bar.tasks[tasks[stage]]
            speed = task.speed
            rate = f"{speed:,.1f} {unit}/s" if speed else ""
            bar.update(tasks[stage], completed=done, total=total, rate=rate)

        yield update


def print_json(obj: Any) -> None:
    """Machine output: plain JSON on stdout, nothing else."""
    print(json.dumps(obj, indent=2, default=str))
