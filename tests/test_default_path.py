"""The README's path with every default: what `extract` writes by default, `heads --all`,
`finetune`, `predict`, `serve` and `report` all take, run from another directory than the data.

`test-tiny-cnn-stages` defaults to multi-layer features as `mobilenet_v2` does, so the store here
is of the kind the README's `genrekit extract --backbone mobilenet_v2` writes.
"""

from __future__ import annotations

import json

import pytest
from conftest import make_collection
from typer.testing import CliRunner

from genrekit.store import FeatureStore
from genrekit_cli.main import app

runner = CliRunner()


def _ok(*args) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"genrekit {' '.join(map(str, args))}\n{res.output}"
    return res.stdout


def test_every_command_takes_what_the_one_before_wrote_by_default(tmp_path, monkeypatch):
    manifest = make_collection(tmp_path / "col", n=60)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the data lives elsewhere: every path below is as a user types it from here
    _ok("extract", "--backbone", "test-tiny-cnn-stages", "--data", manifest, "--out", "posters.h5")
    header = FeatureStore("posters.h5").header
    assert header.encoder["layers"] == "2,4"  # the default store is multi-layer
    _ok("heads", "--store", "posters.h5", "--all", "--min-positives", "3")  # writes runs/
    best = json.loads((work / "runs" / "results.json").read_text())["best"]
    _ok("finetune", "--store", "posters.h5", "--run", "runs", "--epochs", "1", "--threads", "1")  # writes ft/
    poster = sorted((tmp_path / "col" / "img").glob("*.jpg"))[0]
    for run in ("runs", f"runs/{best}", "ft"):
        out = json.loads(_ok("predict", "--run", run, poster, "--json"))
        assert len(out["predictions"]) == 1 and not out["failures"], run
    for run in ("runs", "ft"):
        _ok("report", run)
        assert (work / run / "report.html").stat().st_size > 10_000
    _ok("evaluate", "--run", "ft", "--data", manifest, "--json", "ev.json")

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from genrekit.inference.loaded import load_run
    from genrekit_cli.apps.serve import ServeConfig, create_app

    for run in ("runs", "ft"):
        cfg = ServeConfig(run=run)
        with TestClient(create_app(load_run(cfg.run), cfg)) as client:
            assert client.get("/api/info").status_code == 200
            r = client.post("/api/predict", files={"image": (poster.name, poster.read_bytes(), "image/jpeg")})
            assert r.status_code == 200, r.text
            assert r.json()["genres"], run


def test_report_and_finetune_work_from_a_third_directory_and_name_a_relative_store_record(tmp_path, monkeypatch):
    """The data in one folder, the store and run in another, the commands typed from a third: the
    store records its manifest absolute, so the gallery and fine-tuning find the posters. A store of
    an older genrekit (a relative manifest path) is refused saying where the path came from."""
    import h5py

    manifest = make_collection(tmp_path / "col", n=60)
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    _ok("extract", "--backbone", "test-tiny-cnn", "--data", "../col/labels.csv", "--out", "posters.h5")  # typed relative
    assert FeatureStore("posters.h5").header.config["data"] == str(manifest.resolve())
    _ok("heads", "--store", "posters.h5", "--head", "logreg", "--min-positives", "3")
    monkeypatch.chdir(elsewhere)
    _ok("report", work / "runs", "--out", "r.html")
    assert "data-gallery=" in (elsewhere / "r.html").read_text()  # the gallery, not silently dropped
    _ok("finetune", "--store", work / "posters.h5", "--out", "ft", "--epochs", "1", "--threads", "1")
    # An older store recorded the path as typed: from elsewhere it is named as the store's record.
    with h5py.File(work / "posters.h5", "r+") as f:
        cfg = json.loads(f.attrs["config"])
        cfg["data"] = "col/labels.csv"  # as typed in tmp_path; not there from elsewhere
        f.attrs["config"] = json.dumps(cfg)
    res = runner.invoke(app, ["finetune", "--store", str(work / "posters.h5"), "--out", "ft2", "--epochs", "1"])
    assert res.exit_code == 1 and "relative path" in res.output and "store records" in res.output, res.output
