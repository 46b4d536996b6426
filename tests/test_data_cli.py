"""`genrekit data ...` through the real typer app and its error boundary."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from data_fixtures import SHARED_DATA, write_csv, write_image, write_kaggle
from genrekit.data.manifest import read_manifest
from genrekit.data.split import read_split_file
from genrekit_cli.main import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, ["data", *map(str, args)])


def test_demo_then_inspect_split_clean(tmp_path):
    r = _run("demo", "--out", tmp_path / "demo", "--n", 60, "--seed", 2)
    assert r.exit_code == 0, r.output
    labels = tmp_path / "demo" / "labels.csv"
    r = _run("inspect", labels, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout[r.stdout.index("{"):])
    assert info["rows"] == 60 and not info["image_problems"]
    r = _run("inspect", labels)
    assert "labels per item" in r.stdout and "images: all readable" in r.stdout
    r = _run("split", labels, "--out", tmp_path / "split.csv", "--seed", 1)
    assert r.exit_code == 0, r.output
    split = read_split_file(tmp_path / "split.csv")
    assert len(split) == 60 and set(split.values()) == {"train", "val", "test"}
    r = _run("split", labels, "--out", tmp_path / "year.csv", "--by", "year", "--test-from", 2015)
    assert r.exit_code == 0, r.output
    years = {s.id: s.year for s in read_manifest(labels).samples}
    assert all((p == "test") == (years[i] >= 2015) for i, p in read_split_file(tmp_path / "year.csv").items())
    r = _run("clean", labels, "--out", tmp_path / "clean.csv", "--top-k", 3, "--other", "--removed", tmp_path / "rm.csv")
    assert r.exit_code == 0, r.output
    clean = read_manifest(tmp_path / "clean.csv")
    assert len(clean.vocabulary()) == 4 and "Other" in clean.vocabulary()
    assert (tmp_path / "rm.csv").read_text().startswith("id,reason,detail,title")


def test_clean_reports_reasons_and_columns_flag(tmp_path):
    write_image(tmp_path / "a.jpg")
    p = write_csv(tmp_path, "key,tags,pic\n1,Science Fiction,a.jpg\n2,,a.jpg\n3,Drama,gone.jpg\n1,Drama,a.jpg\n")
    r = _run("clean", p, "--columns", "id=key,genres=tags,image=pic", "--genre-sep", "|", "--out", tmp_path / "c.csv")
    assert r.exit_code == 0, r.output
    for line in ("removed 1: duplicate id", "removed 1: no genres", "removed 1: unreadable image", "Science Fiction -> Sci-Fi"):
        assert line in r.stdout
    assert read_manifest(tmp_path / "c.csv").samples[0].genres == ("Sci-Fi",)


@pytest.mark.parametrize(
    "args, message",
    [
        (["inspect", "{tmp}/missing.csv"], "does not exist"),
        (["inspect", "{tmp}/nogenres.csv"], "lacks column(s) genres; found: id, image"),
        (["inspect", "{tmp}/empty.csv"], "is empty"),
        (["inspect", "{tmp}/nogenres.csv", "--format", "mmdb"], "unknown manifest format 'mmdb'"),
        (["split", "{tmp}/ok.csv", "--out", "{tmp}/s.csv", "--by", "year"], "--test-from"),
        (["split", "{tmp}/ok.csv", "--out", "{tmp}/s.csv", "--ratios", "0.5,0.5,0.5"], "sum"),
        (["clean", "{tmp}/ok.csv", "--out", "{tmp}/c.csv", "--genres", "Dramaa"], "did you mean: Drama"),
        (["inspect", "{tmp}/ok.csv", "--columns", "idd=x"], "KEY=NAME"),
    ],
)
def test_bad_input_is_one_red_line(tmp_path, args, message):
    write_csv(tmp_path, "id,image\n1,a.jpg\n", "nogenres.csv")
    write_csv(tmp_path, "", "empty.csv")
    write_csv(tmp_path, "id,genres,image\n1,Drama,a.jpg\n2,Comedy,b.jpg\n", "ok.csv")
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "b.jpg", (0, 0, 255))
    r = _run(*[a.format(tmp=tmp_path) for a in args])
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("error:") and message in " ".join(r.output.split())
    assert "Traceback" not in r.output


def test_download_of_unreachable_urls_reports_failures(tmp_path):
    # Port 9 on loopback (discard) refuses connections: no network is needed for this test.
    p = write_csv(tmp_path, "id,genres,image\n1,Drama,http://127.0.0.1:9/a.jpg\n", "urls.csv")
    r = _run("download", p, "--out", tmp_path / "dl", "--retries", 0, "--timeout", 1, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout[r.stdout.index("{"):])
    assert report["downloaded"] == 0 and report["failed"] == 1
    assert report["failures"][0]["reason"].startswith(("cannot connect", "connection failed"))


def test_kaggle_inspect_counts_urls(tmp_path):
    r = _run("inspect", write_kaggle(tmp_path), "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout[r.stdout.index("{"):])
    assert info["format"] == "kaggle" and info["image_urls"] == 4 and info["year_range"] == [1918, 1995]


def test_inspect_movie_posters_prints_source_md_counts():
    labels = SHARED_DATA / "movie_posters" / "labels.csv"
    if not labels.is_file():
        pytest.skip("shared movie_posters data not present")
    r = _run("inspect", labels)
    assert r.exit_code == 0, r.output
    out = " ".join(r.stdout.split())
    for genre, count in (("Drama", "3,433"), ("Comedy", "2,293"), ("Western", "144"), ("Film-Noir", "45")):
        assert f"{genre} │ {count}" in out
    assert "6,000 rows" in out and "images: all readable" in out
