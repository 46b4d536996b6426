"""`genrekit heads / predict / evaluate / zeroshot` through the CLI, on a tiny CLIP store of generated posters."""

from __future__ import annotations

import csv
import json

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
    assert text.exit_code == 0 and "missing file" in text.output and "* = predicted" in text.output


def test_evaluate_writes_scores_and_predictions(tiny, tmp_path):
    js, preds = tmp_path / "scores.json", tmp_path / "preds.csv"
    res = runner.invoke(app, ["evaluate", "--run", str(tiny["runs"] / "logreg"), "--store", str(tiny["store"]),
                              "--json", str(js), "--predictions", str(preds)])  # fmt: skip
    assert res.exit_code == 0, res.output
    scores = json.loads(js.read_text())
    assert "f1_micro" in scores["metrics"] and scores["items"] == 160
    rows = list(csv.reader(preds.open()))
    assert rows[0] == ["id", *json.loads((tiny["runs"] / "logreg" / "run.json").read_text())["genres"]]
    assert len(rows) == 161


def test_zeroshot_runs_end_to_end_with_a_random_clip(tiny):
    res = runner.invoke(app, ["zeroshot", str(tiny["images"][0]), "--backbone", "test-tiny-clip", "--weights", "none",
                              "--genres", "Horror,Comedy,Drama", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    p = json.loads(res.output)["predictions"][0]
    assert set(p["probabilities"]) == {"Horror", "Comedy", "Drama"}
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
