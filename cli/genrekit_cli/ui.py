"""Rendering shared by all commands: one console, progress bars, tables."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any, Optional

import typer

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
from rich.table import Table
from rich.text import Text

# User text (genres, titles, ids, paths, reasons) reaches these consoles in f-strings, table cells and
# titles: markup is off, so "Drama[/i]" is printed as it is, never parsed. Styling is explicit: a
# ``style=``, a ``Text.assemble((label, style), ...)``, or ``markup=True`` with every user value escaped.
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)


@contextlib.contextmanager
def loading(what: str) -> Iterator[Any]:
    """A spinner on stderr saying what a command is doing before its first output (importing torch,
    loading a model): visible at once, gone when the block ends. Yields the status (``.update(text)``).

    Commands import the library inside their function, so this is the first thing they do.
    """
    with err_console.status(Text(what), spinner="dots") as status:

        class _Status:
            @staticmethod
            def update(text: str) -> None:
                status.update(Text(text))

        yield _Status()


@contextlib.contextmanager
def progress_bar(unit: str = "items", waiting: str | None = None) -> Iterator[Any]:
    """A rich progress bar, yielded as a library ``ProgressFn`` (one bar per stage name).

    ``waiting`` is shown with a pulsing bar until the first stage reports (reading a manifest,
    building an encoder), so the command is never silent.
    """
    columns = [
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    tasks: dict[str, TaskID] = {}
    with Progress(*columns, console=err_console, transient=False) as bar:
        wait = bar.add_task(waiting, total=None, rate="") if waiting else None

        def update(stage: str, done: int, total: int | None) -> None:
            nonlocal wait
            if wait is not None:
                bar.remove_task(wait)
                wait = None
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, rate="")
            task = next(t for t in bar.tasks if t.id == tasks[stage])  # ids are not list positions once one is removed
            speed = task.speed
            rate = f"{speed:,.1f} {unit}/s" if speed else ""
            bar.update(tasks[stage], completed=done, total=total, rate=rate)

        try:
            yield update
        finally:  # failed (or finished) before the first stage: no waiting line left behind
            if wait is not None:
                bar.remove_task(wait)


def print_json(obj: Any) -> None:
    """Machine output: plain JSON on stdout, nothing else."""
    print(json.dumps(obj, indent=2, default=str))


def fmt(v: Optional[float]) -> str:
    """A score with three decimals, or '-' where there is none."""
    return "-" if v is None or v != v else f"{v:.3f}"


def print_failures(failures: list[tuple[str, str]], examples: int = 10) -> None:
    """Counts per reason, then the first few ids of each (thousands of rows help nobody)."""
    by_reason: dict[str, list[str]] = {}
    for sid, reason in failures:
        by_reason.setdefault(reason.split(" (")[0], []).append(f"{sid}: {reason}")
    for reason, rows in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        console.print(f"  {len(rows)} x {reason}", highlight=False, markup=False)
        for row in rows[:examples]:
            console.print(f"      {row}", highlight=False, markup=False)
        if len(rows) > examples:
            console.print(f"      … and {len(rows) - examples} more")


def threshold_cell(row: dict) -> str:
    """A per-genre row's threshold, marked where it fell back to the global one (not tuned for the genre)."""
    thr = row.get("threshold")
    if thr is None:
        return "-"
    return f"{thr:.2f} (global)" if row.get("fallback") else f"{thr:.2f}"


def print_per_genre(entry: dict, title: str) -> None:
    """The per-genre table of a results entry (precision, recall, F1, support, AUC, AP, threshold)."""
    t = Table(title=title, title_justify="left")
    for c in ("genre", "precision", "recall", "F1", "support", "AUC", "AP", "threshold"):
        t.add_column(c, justify="left" if c in ("genre", "threshold") else "right")
    for r in entry["per_genre"]:
        t.add_row(Text(r["genre"]), fmt(r["precision"]), fmt(r["recall"]), fmt(r["f1"]), str(r["support"]), fmt(r["auc"]), fmt(r["ap"]),
                  threshold_cell(r))  # fmt: skip
    console.print(t)
    fell_back = [r["genre"] for r in entry["per_genre"] if r.get("fallback")]
    if fell_back:
        console.print(f"{len(fell_back)} genre(s) use the global threshold, not one tuned for them (too few validation "
                      f"positives): {', '.join(fell_back)}", style="dim", highlight=False, markup=False)  # fmt: skip


FALLBACK_MARK = "†"


def prediction_table(p, top: int | None = 8) -> Table:
    """One item's genres, most probable first, each with the threshold that decided it.

    The predicted genres are always shown (even below ``top``); a threshold that is the global
    fallback (too few validation positives to tune the genre's own) is marked with a dagger.
    """
    t = Table(title=Text(p.item, style="bold"), title_justify="left", box=None, header_style="dim", pad_edge=False)
    t.add_column("genre")
    t.add_column("probability", justify="right")
    t.add_column(f"threshold ({p.rule})" if p.rule else "threshold", justify="right")
    t.add_column("predicted")
    chosen, fell = set(p.predicted), set(p.fallback)
    ths = p.thresholds or (None,) * len(p.ranked)
    limit = top or len(p.ranked)
    rows = [(g, prob, thr) for i, ((g, prob), thr) in enumerate(zip(p.ranked, ths)) if i < limit or g in chosen]
    n = len(rows)
    for g, prob, thr in rows:
        is_in = g in chosen
        thr_s = "-" if thr is None else f"{thr:.2f}" + (f" {FALLBACK_MARK}" if g in fell else "  ")
        mark = ("yes" if thr is None or prob >= thr else "yes (the top genre)") if is_in else ""
        t.add_row(Text(g, style="bold green" if is_in else ""), f"{prob:.2f}", thr_s, Text(mark, style="green"))
    if n < len(p.ranked):
        t.caption = f"… and {len(p.ranked) - n} less probable genres (--top 0 shows all)"
        t.caption_justify = "left"
    return t


def print_predictions(preds, failures, json: bool, top: int | None = 8, notes=(), precision: str | None = None) -> None:
    """Ranked genres per item with their thresholds (or JSON, with the encoders' ``precision``); failures on stderr; exit 1 when nothing was predicted."""
    if json:
        print_json({"precision": precision, "predictions": [p.to_json() for p in preds], "failures": [{"item": i, "reason": r} for i, r in failures],
                    "fallbacks": [{"item": i, "note": n} for i, n in notes]})  # fmt: skip
    else:
        for k, p in enumerate(preds):
            if k:
                console.print()
            console.print(prediction_table(p, top or None))
        if preds:
            fell = any(g in p.fallback for p in preds for g, _ in p.ranked)
            console.print("predicted: the genres at or above their threshold, most probable first"
                          + (f"; {FALLBACK_MARK} the global threshold, used where validation had too few positives to tune the genre's own" if fell else ""),
                          style="dim", highlight=False)  # fmt: skip
        for item, note in notes:
            err_console.print(Text.assemble(("fallback", "yellow"), f" {item}: {note}"), highlight=False)
        done = {p.item for p in preds}
        for item, reason in failures:  # a fused run predicts an item whose poster failed from its texts
            label = "predicted without it" if item in done else "skipped"
            err_console.print(Text.assemble((label, "yellow"), f" {item}: {reason}"), highlight=False)
    if failures and not preds:
        raise typer.Exit(1)
