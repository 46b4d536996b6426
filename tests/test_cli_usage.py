"""The CLI's contract with its user: usage errors as click prints them, literal user text, honest --help."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from genrekit_cli.main import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())  # help panels and wrapping aside


def commands():
    """(path, click command) for every command of the app."""
    out = []

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            out.append((path, cmd))

    walk(typer.main.get_command(app), [])
    return out


def options(cmd):
    return [p for p in cmd.params if getattr(p, "opts", None) and p.opts[0].startswith("-")]


# -- usage errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args,shown",
    [
        (["heads", "--bogus"], ["Usage: genrekit heads", "No such option: --bogus"]),
        (["heads", "--sed", "1"], ["No such option: --sed", "--seed"]),  # the close matches
        (["extrct"], ["Usage: genrekit", "No such command 'extrct'"]),
        (["heads", "--seed", "x"], ["Usage: genrekit heads", "Invalid value for '--seed'"]),
        (["heads", "--store"], ["Option '--store' requires an argument"]),
        (["store", "info"], ["Usage: genrekit store info", "Missing argument"]),
        (["evaluate", "--run", "r"], ["Usage: genrekit evaluate", "'--store' or '--data'"]),
    ],
)
def test_usage_errors_exit_2_with_clicks_usage(args, shown):
    res = run(*args)
    text = flat(res.output)
    assert res.exit_code == 2, res.output
    assert "GENREKIT_DEBUG" not in text and "Traceback" not in text
    for s in shown:
        assert s in text, (s, res.output)


# -- user text is printed literally -----------------------------------------------------------------
def test_paths_with_square_brackets_are_printed_literally(tmp_path):
    odd = tmp_path / "[bold]x[/bold] [red]y.h5"
    res = run("store", "info", odd)
    assert res.exit_code == 1 and str(odd) in flat(res.output), res.output
    manifest = tmp_path / "[link=http://x]m[/link].csv"
    res = run("extract", "--backbone", "test-tiny-cnn", "--data", manifest, "--out", tmp_path / "[i]s[/i].h5")
    assert res.exit_code == 1 and manifest.name in flat(res.output), res.output


def test_unreadable_ids_and_reasons_with_markup_are_listed_literally(tmp_path):
    from conftest import write_manifest

    m = write_manifest(tmp_path / "m.csv", [{"id": "[b]x[/b]", "genres": "Drama", "image": "[red]gone[/red].jpg"}])
    res = run("extract", "--backbone", "colorstats", "--data", m, "--out", tmp_path / "s.h5", "--workers", "0")
    assert res.exit_code == 0, res.output
    assert "[b]x[/b]: missing file" in flat(res.output)
    info = run("store", "info", tmp_path / "s.h5")
    assert info.exit_code == 0 and "[b]x[/b]" in flat(info.output)


# -- --help -------------------------------------------------------------------------------------------
@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setattr("typer.rich_utils.MAX_WIDTH", 400)


def test_help_shows_every_default_and_every_help_text_literally(wide):
    for path, cmd in commands():
        res = run(*path, "--help")
        assert res.exit_code == 0, (path, res.output)
        text = flat(res.output)
        for p in options(cmd):
            if p.help:
                assert flat(p.help) in text, (path, p.opts, p.help)
            if isinstance(p.show_default, str):
                assert f"[default: ({p.show_default})]" in text, (path, p.opts)


def test_extract_help_shows_the_computed_defaults(wide):
    text = flat(run("extract", "--help").output)
    assert "[default: (fastest measured for the backbone, shared among --streams)]" in text
    assert "[default: (the backbone's)]" in text and "[default: auto]" in text


def test_a_flag_means_the_same_in_every_command():
    seen: dict[str, list] = {}
    for path, cmd in commands():
        for p in options(cmd):
            for o in [*p.opts, *getattr(p, "secondary_opts", [])]:
                seen.setdefault(o, []).append((" ".join(path), p))
    # `--json` prints JSON instead of tables, except `evaluate --json FILE`, which writes the scores
    # there (the command the issues and the README give: evaluate ... --json out.json --predictions preds.csv).
    for flag in ("--json",):
        assert all(p.is_flag for c, p in seen[flag] if c != "evaluate"), [(c, p.is_flag) for c, p in seen[flag]]
    for flag in ("--out", "--store", "--device", "--data", "--backbone", "--run"):
        assert not any(p.is_flag for _, p in seen[flag]), flag
    # `explain --top-k K` picks the genres to explain, as the issue spells the command; elsewhere
    # --top-k keeps the K most frequent genres of the vocabulary.
    for flag in ("--device", "--weights", "--top-k", "--format", "--columns", "--genre-sep"):
        helps = {p.help for c, p in seen[flag] if (flag, c) != ("--top-k", "explain")}
        assert len(helps) == 1, [(c, p.help) for c, p in seen[flag]]
    for short, long in (("-o", "--out"), ("-s", "--store"), ("-b", "--backbone"), ("-d", "--data"), ("-r", "--run")):
        assert all(long in p.opts for _, p in seen.get(short, [])), short


def test_hints_name_flags_that_exist():
    known = {o for _, cmd in commands() for p in options(cmd) for o in [*p.opts, *getattr(p, "secondary_opts", [])]}
    known |= {"--help", "--version", "--verbose"}
    outside = {"--local-dir", "--no-deps"}  # `hf download --local-dir`, `pip install --no-deps`: other tools' flags
    named = {}
    for f in [*(ROOT / "genrekit").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]:
        # not CSS custom properties of the served page (`--fg: #222`, `var(--fg)`)
        for m in re.finditer(r"(?<![\w(-])--[a-z][a-z0-9-]+(?![\w:-])", f.read_text(encoding="utf-8")):
            named.setdefault(m.group(0), f.relative_to(ROOT))
    missing = {flag: str(where) for flag, where in named.items() if flag not in known | outside}
    assert not missing, missing
