"""The run-directory format has one home (genrekit/rundir.py): kinds, best heads, typed results."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_heads_run
from genrekit.errors import StoreError
from genrekit.inference import Item, load_run, predict_items
from genrekit.rundir import KINDS, Results, open_run
from genrekit_cli.main import app


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_heads_run(tmp_path_factory.mktemp("rundir"), "test-tiny-cnn", ["logreg", "knn", "ensemble"])


def test_every_head_directory_a_run_lists_loads_by_itself(run):
    """results.json may name the ensemble as best; RUNS/ensemble must then load like any head (it did not)."""
    runs = run["runs"]
    res = Results.read(runs)
    assert res.kind == "heads" and set(res.heads) == {"logreg", "knn", "ensemble"}
    items = [Item(str(p), image=str(p)) for p in run["images"][:3]]
    for name in res.heads:
        d = open_run(runs / name)
        assert d.kind == "head" and d.best() == d
        preds, failures = predict_items(load_run(runs / name), items)
        assert len(preds) == 3 and not failures
    out = CliRunner().invoke(app, ["evaluate", "--run", str(runs / "ensemble"), "--store", str(run["store"])])
    assert out.exit_code == 0, out.output


def test_a_whole_run_means_its_best_head(run):
    runs = run["runs"]
    res = Results.read(runs)
    assert open_run(runs).best().path == runs / res.best
    assert load_run(runs).name == res.heads[res.best].head
    row = res.heads["logreg"]
    assert row.val_map is not None and 0 <= row.test["map_macro"] <= 1 and row.thresholds is not None
    assert set(row.threshold_fallback) == {r["genre"] for r in row.per_genre if r["fallback"]}


def test_kinds_are_recognised_in_one_place(run, tmp_path):
    assert open_run(run["runs"]).kind == "heads" and open_run(run["runs"] / "logreg").kind == "head"
    assert set(KINDS) == {"heads", "head", "fused", "late", "finetune"}
    with pytest.raises(StoreError, match="is not a run directory"):
        open_run(tmp_path)
    with pytest.raises(StoreError, match="is a file, not a directory"):
        open_run(run["store"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text(json.dumps({"something": 1}))
    with pytest.raises(StoreError, match="neither a heads, a fused nor a fine-tune"):
        open_run(bad)
    (bad / "results.json").write_text(json.dumps({"heads": {}, "best": "../../etc"}))
    with pytest.raises(StoreError, match="not the name of a head directory"):
        open_run(bad).best()
    (bad / "results.json").write_text("[" * 100000)
    with pytest.raises(StoreError, match="not readable JSON"):
        open_run(bad)


def test_predict_json_of_a_head_equals_the_runs_best(run):
    runs = run["runs"]
    best = Results.read(runs).best
    items = [Item(str(p), image=str(p)) for p in run["images"][:2]]
    a = predict_items(load_run(runs), items)[0]
    b = predict_items(load_run(runs / best), items)[0]
    assert [p.to_json() for p in a] == [p.to_json() for p in b]
    assert np.isfinite([v for p in a for v in p.to_json()["probabilities"].values()]).all()
