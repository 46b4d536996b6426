"""`genrekit leaderboard RUNS...`: a finished run's leaderboard again, as a table or JSON, sorted by any metric."""

from __future__ import annotations

import json

import pytest
from synthetic import synthetic_features
from test_fusion import FAST, two_modalities
from typer.testing import CliRunner

from genrekit.features import join_features
from genrekit.runs.fused import FusionConfig, run_fused
from genrekit.runs.leaderboard import HeadsConfig, run_heads
from genrekit_cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lb")
    fs = synthetic_features(n=300, dim=12, prevalence={"Drama": 0.45, "Comedy": 0.35, "Horror": 0.25}, seed=4)
    res = run_heads(fs, root / "runs", HeadsConfig(heads=("logreg", "knn"), jobs=1, head_params=FAST, min_train_positives=5))
    run_fused(join_features(two_modalities(n=300), "outer"), root / "fused", HeadsConfig(heads=("logreg",), jobs=1, head_params=FAST),
              FusionConfig(fusion="both", block_step=0.5))  # fmt: skip
    return {"runs": root / "runs", "fused": root / "fused", "results": res}


def _json(*args) -> dict:
    res = runner.invoke(app, ["leaderboard", *map(str, args), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_the_table_shows_every_head_the_baseline_and_the_best(runs):
    res = runner.invoke(app, ["leaderboard", str(runs["runs"])])
    assert res.exit_code == 0, res.output
    best = runs["results"]["best"]
    for h in runs["results"]["heads"]:
        assert (h + "*" if h == best else h) in res.output
    assert "baseline" in res.output and "mAP" in res.output
    rows = _json(runs["runs"])["rows"]
    assert [r["entry"] for r in rows] == [*runs["results"]["heads"], "baseline"]  # the run's own order
    assert [r["entry"] for r in rows if r["best"]] == [best]
    mine = {r["entry"]: r for r in rows}
    for h, v in runs["results"]["heads"].items():
        assert mine[h]["test"]["map_macro"] == pytest.approx(v["test"]["tuned"]["map_macro"])


@pytest.mark.parametrize("metric, key, best_first", [("map_macro", "map_macro", max), ("mAP", "map_macro", max),
                                                     ("hamming_loss", "hamming_loss", min)])  # fmt: skip
def test_sort_puts_the_best_first_in_each_metrics_direction(runs, metric, key, best_first):
    out = _json(runs["runs"], runs["fused"], "--sort", metric)
    assert out["sort"] == key
    vals = [r["test"].get(key) for r in out["rows"] if r["test"].get(key) is not None]
    assert vals == sorted(vals, reverse=best_first is max) and len(vals) >= 5
    entries = {r["entry"] for r in out["rows"]}
    assert {"early/logreg", "late/logreg"} <= entries  # a fused run's parts, each named


def test_bad_input_is_one_line(runs, tmp_path):
    res = runner.invoke(app, ["leaderboard", str(runs["runs"]), "--sort", "mapp"])
    assert res.exit_code == 1 and "unknown metric 'mapp'" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["leaderboard", str(tmp_path)])
    assert res.exit_code == 1 and "not a run directory" in res.output and "Traceback" not in res.output
