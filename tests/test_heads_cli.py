"""`genrekit heads / predict / evaluate / zeroshot` through the CLI, on a tiny CLIP store of generated posters."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from conftest import make_heads_run
from typer.testing import CliRunner

from genrekit.store import StoreHeader, StoreWriter
from genrekit_cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_heads_run(tmp_path_factory.mktemp("tinyclip"), "test-tiny-clip", ["logreg", "zeroshot", "knn"], n=160, min_positives=5)


def test_heads_prints_one_leaderboard_and_the_best_heads_per_genre_report(tiny):
    out = tiny["out"]
    assert "leaderboard" in out and "baseline" in out and "per genre" in out
    res = json.loads((tiny["runs"] / "results.json").read_text())
    assert set(res["heads"]) == {"logreg", "zeroshot", "knn"} and res["best"] in res["heads"]
    assert res["chain_order"]["source"] == "text similarity"  # the tiny CLIP has a text tower
    assert (tiny["runs"] / "results.csv").is_file() and (tiny["runs"] / "logreg" / "run.json").is_file()


def test_predict_sorts_genres_and_marks_the_predicted_set(tiny):
    res = runner.invoke(app, ["predict", "--run", str(tiny["runs"] / "logreg"), *map(str, tiny["images"][:2]), "--json"])
    assert res.exit_code == 0, res.output
    preds = json.loads(res.output)["predictions"]
    assert len(preds) == 2
    probs = list(preds[0]["probabilities"].values())
    assert probs == sorted(probs, reverse=True)
    assert set(preds[0]["predicted"]) <= set(preds[0]["probabilities"])
    text = runner.invoke(app, ["predict", "--run", str(tiny["runs"] / "knn"), str(tiny["images"][0]), str(tiny["root"] / "missing.jpg")])
    assert text.exit_code == 0 and "missing file" in text.output and "predicted: the genres at or above their threshold" in text.output


def test_predict_shows_each_genres_threshold_beside_its_probability(tiny):
    saved = json.loads((tiny["runs"] / "logreg" / "run.json").read_text())
    th = dict(zip(saved["genres"], saved["thresholds"]["values"]))
    res = runner.invoke(app, ["predict", "--run", str(tiny["runs"] / "logreg"), str(tiny["images"][0]), "--json", "--top", "0"])
    p = json.loads(res.output)["predictions"][0]
    rows = p["genres"]
    assert [r["genre"] for r in rows] == list(p["probabilities"])  # most probable first
    assert [r["probability"] for r in rows] == sorted((r["probability"] for r in rows), reverse=True)
    assert all(r["threshold"] == pytest.approx(th[r["genre"]], abs=1e-6) for r in rows)
    assert [r["genre"] for r in rows if r["predicted"]] == p["predicted"]  # the predicted set in probability order
    assert all(r["predicted"] == (r["probability"] >= r["threshold"]) for r in rows) and p["rule"] == saved["thresholds"]["rule"]
    assert {r["genre"] for r in rows if r["threshold_is_global_fallback"]} == set(saved["thresholds"]["fallback"])
    text = runner.invoke(app, ["predict", "--run", str(tiny["runs"] / "logreg"), str(tiny["images"][0]), "--top", "0"])
    assert f"threshold ({p['rule']})" in text.output
    for r in rows:  # every genre's row: name, probability, threshold
        assert re.search(rf"{re.escape(r['genre'])}\s+{r['probability']:.2f}\s+{r['threshold']:.2f}", text.output), (r, text.output)
    short = runner.invoke(app, ["predict", "--run", str(tiny["runs"] / "logreg"), str(tiny["images"][0]), "--top", "1"])
    assert all(g in short.output for g in p["predicted"])  # the predicted set is always shown, whatever --top


def test_evaluate_writes_scores_and_predictions(tiny, tmp_path):
    js, preds = tmp_path / "scores.json", tmp_path / "preds.csv"
    res = runner.invoke(app, ["evaluate", "--run", str(tiny["runs"] / "logreg"), "--store", str(tiny["store"]),
                              "--json", str(js), "--predictions", str(preds)])  # fmt: skip
    assert res.exit_code == 0, res.output
    scores = json.loads(js.read_text())
    assert "f1_micro" in scores["metrics"] and scores["items"] == 160
    rows = list(csv.reader(preds.open()))
    saved = json.loads((tiny["runs"] / "logreg" / "run.json").read_text())
    genres = saved["genres"]
    assert rows[0] == ["id", "true_genres", "predicted_genres", *genres]
    assert len(rows) == 161
    from genrekit.evaluation.thresholds import Thresholds
    from genrekit.store import FeatureStore

    fs = FeatureStore(tiny["store"]).load()
    true = {i: {g for g, v in zip(fs.genres, y) if v} for i, y in zip(fs.ids, fs.Y)}
    th = Thresholds.from_json(saved["thresholds"])
    for row in rows[1:]:
        probs = np.array([float(v) for v in row[3:]])
        assert set(filter(None, row[1].split("|"))) == true[row[0]]  # the item's own labels
        chosen = [g for g, d in zip(genres, th.apply(probs[None])[0]) if d]
        assert (row[2].split("|") if row[2] else []) == sorted(chosen, key=lambda g: -probs[genres.index(g)])  # probability order


def test_zeroshot_runs_end_to_end_with_a_random_clip(tiny):
    res = runner.invoke(app, ["zeroshot", str(tiny["images"][0]), "--backbone", "test-tiny-clip", "--weights", "none",
                              "--genres", "Horror,Comedy,Drama", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    p = json.loads(res.stdout)["predictions"][0]
    assert set(p["probabilities"]) == {"Horror", "Comedy", "Drama"}
    # Random weights give noise, and the command says so before anything else (on stderr: --json stays JSON).
    assert "warning: test-tiny-clip with random weights" in " ".join(res.stderr.split())
    assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-4) and p["predicted"]


def test_evaluate_refuses_a_store_from_another_encoder(tiny, tmp_path):
    other = tmp_path / "other.h5"
    w = StoreWriter(other, StoreHeader({"family": "test", "name": "test-tiny-cnn", "weights": "none"}, {}, "none", "image",
                                       16, "float32", ("Drama",), {}))  # fmt: skip
    w.write_part(["a", "b"], np.ones((2, 16)), np.array([[1], [0]]), ["", ""], [None, None])
    w.finalize()
    res = runner.invoke(app, ["evaluate", "--run", str(tiny["runs"] / "logreg"), "--store", str(other)])
    assert res.exit_code == 1 and "encoder" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--head", "lgreg"], "did you mean: logreg"),
        ([], "--all"),
        (["--all", "--threshold", "per_genre"], "did you mean: per-genre"),
        (["--all", "--balance", "weigths"], "did you mean: weights"),
    ],
)
def test_bad_options_are_one_red_line(tiny, tmp_path, args, message):
    res = runner.invoke(app, ["heads", "--store", str(tiny["store"]), "--out", str(tmp_path / "r"), *args])
    assert res.exit_code == 1 and message in res.output and len(res.output.strip().splitlines()) <= 2


def test_store_without_labels_is_one_red_line(tmp_path):
    s = tmp_path / "nolabels.h5"
    # A genre column with no positive anywhere: an unlabelled collection.
    w = StoreWriter(s, StoreHeader({"family": "test", "name": "x", "weights": "none"}, {}, "none", "image", 4, "float32", ("Drama",), {}))
    w.write_part(["a", "b", "c"], np.ones((3, 4)), np.zeros((3, 1)), ["", "", ""], [None] * 3)
    w.finalize()
    res = runner.invoke(app, ["heads", "--store", str(s), "--all", "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "no genre labels" in res.output
