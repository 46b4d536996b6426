"""Fusion: stores joined by id, early (normalised concatenation) and late (weighted probabilities), the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from genrekit.errors import ConfigError, LabelError, UnknownNameError
from genrekit.features import combine, early_fusion, join_features, join_stores, weight_grid
from genrekit.runs.fused import FusionConfig, run_fused, tune_block_weights, tune_weights
from genrekit.inference import evaluate_run, predict_texts
from genrekit.runs.leaderboard import HeadsConfig
from genrekit.heads.saved import load_head
from genrekit.store import FeatureSet, StoreHeader, StoreWriter
from genrekit_cli.main import app

GENRES = ["Drama", "Comedy", "Horror", "Western"]
FAST = {"logreg": {"Cs": (0.1,)}}
PREV = np.array([0.45, 0.3, 0.2, 0.15])


def header(modality: str, name: str, dim: int, genres=GENRES) -> StoreHeader:
    return StoreHeader({"family": "test", "name": name, "weights": "none"}, {}, "none", modality, dim, "float32", tuple(genres), {})


def two_modalities(n=700, missing=0.3, seed=0):
    """Labels driven by 8 latent factors; the poster sees factors 0-3, the plot 4-7 (each half the signal).

    The plot store lacks ``missing`` of the items. Poster features are on a large scale (as CNN
    features are), plot features on a small one, so unnormalised concatenation would be lopsided.
    """
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 8))
    logits = 3.0 * Z @ rng.standard_normal((8, len(GENRES))) / np.sqrt(8) + rng.logistic(size=(n, len(GENRES)))
    cuts = np.array([np.quantile(logits[:, j], 1 - PREV[j]) for j in range(len(GENRES))])
    Y = (logits > cuts).astype(np.uint8)
    A = 40.0 * (Z[:, :4] @ rng.standard_normal((4, 24)) + 0.7 * rng.standard_normal((n, 24)))
    B = 0.1 * (Z[:, 4:] @ rng.standard_normal((4, 16)) + 0.7 * rng.standard_normal((n, 16)))
    ids = np.array([f"f{i:04d}" for i in range(n)], dtype=object)
    has_plot = rng.random(n) >= missing

    def fs(X, rows):
        return FeatureSet(ids[rows], X[rows].astype(np.float32), Y[rows], list(GENRES),
                          np.array([f"t{i}" for i in np.flatnonzero(rows)], dtype=object), np.full(rows.sum(), 2000, np.int32), None)  # fmt: skip

    posters = fs(A, np.ones(n, bool))
    plots = fs(B, has_plot)
    return {"image-cnn": (posters, header("image", "cnn", 24)), "text-lm": (plots, header("text", "lm", 16))}


def test_outer_and_inner_joins_count_each_store():
    sets = two_modalities(n=100)
    n_plot = len(sets["text-lm"][0].ids)
    outer = join_features(sets, "outer")
    assert len(outer.ids) == 100 and outer.names == ["image-cnn", "text-lm"]
    cov = outer.coverage()
    assert cov["per_store"] == {"image-cnn": 100, "text-lm": n_plot} and cov["every_store"] == n_plot
    assert cov["only"] == {"image-cnn": 100 - n_plot, "text-lm": 0}
    np.testing.assert_array_equal(outer.blocks["text-lm"][~outer.present["text-lm"]], 0)
    inner = join_features(sets, "inner")
    assert len(inner.ids) == n_plot and inner.coverage()["every_store"] == n_plot
    np.testing.assert_array_equal(inner.Y, sets["image-cnn"][0].Y[outer.present["text-lm"]])


def test_labels_are_the_union_by_genre_name_and_splits_must_agree():
    sets = two_modalities(n=50)
    posters, h = sets["image-cnn"]
    plots, _ = sets["text-lm"]
    # The plot store knows a genre the poster store does not, in another column order.
    plots.genres = ["Anime", *GENRES[::-1]]
    plots.Y = np.column_stack([np.ones(len(plots.ids), np.uint8), plots.Y[:, ::-1]])
    joined = join_features({"a": (posters, h), "b": (plots, None)})
    assert joined.genres == [*GENRES, "Anime"]
    np.testing.assert_array_equal(joined.Y[:, :4], posters.Y)
    assert joined.Y[joined.present["b"], 4].all() and not joined.Y[~joined.present["b"], 4].any()
    posters.split = np.array(["train"] * 50, dtype=object)
    plots.split = np.array(["test"] * len(plots.ids), dtype=object)
    with pytest.raises(ConfigError, match="must share one split"):
        join_features({"a": (posters, h), "b": (plots, None)})
    with pytest.raises(ConfigError, match="at least two stores"):
        join_features({"a": (posters, h)})
    with pytest.raises(UnknownNameError, match="did you mean: inner"):
        join_features({"a": (posters, h), "b": (plots, None)}, "iner")


def test_early_fusion_gives_each_store_its_share_of_variance_and_zeros_where_it_is_missing():
    joined = join_features(two_modalities(n=200))
    joined.split = np.array((["train", "val"] * 100), dtype=object)
    have, train = joined.present["text-lm"], joined.split == "train"
    for weights in (None, {"image-cnn": 0.25, "text-lm": 0.75}):
        fs = early_fusion(joined, weights)
        assert fs.X.shape == (200, 24 + 16)
        # Poster features are 400 times larger than plot features; standardised, each block's
        # total variance on the training items is its weight times the number of stores.
        share = weights or {"image-cnn": 0.5, "text-lm": 0.5}
        for name, sl, rows in (("image-cnn", slice(0, 24), train), ("text-lm", slice(24, 40), have & train)):
            block = fs.X[rows, sl]
            np.testing.assert_allclose(block.mean(axis=0), 0.0, atol=1e-5)
            assert block.var(axis=0).sum() == pytest.approx(2 * share[name], rel=1e-4)
        np.testing.assert_array_equal(fs.X[~have, 24:], 0.0)


def test_block_weights_favour_the_informative_store():
    sets = two_modalities(n=600)
    fs, h = sets["text-lm"]
    fs.X = np.random.default_rng(1).standard_normal(fs.X.shape).astype(np.float32)  # the plot store is noise
    joined = join_features(sets)
    joined.split = np.array(["train", "train", "val"] * 200, dtype=object)
    weights, scores = tune_block_weights(joined, 0.25)
    assert weights == {"image-cnn": 0.75, "text-lm": 0.25} and len(scores) == 3
    assert tune_block_weights(joined, 1.0)[0] == {"image-cnn": 0.5, "text-lm": 0.5}


def test_combine_falls_back_to_the_store_an_item_has():
    a = np.array([[0.8, 0.2], [0.6, np.nan]], np.float32)
    b = np.array([[0.4, 0.6], [np.nan, np.nan]], np.float32)
    P = combine({"a": a, "b": b}, {"a": 0.25, "b": 0.75})
    np.testing.assert_allclose(P[0], [0.25 * 0.8 + 0.75 * 0.4, 0.25 * 0.2 + 0.75 * 0.6])
    assert P[1, 0] == pytest.approx(0.6)  # only a has the item
    assert np.isnan(P[1, 1]) or P[1, 1] == 0.0  # no store has it: nothing to say
    # A zero weight still lets the other store speak for the items it alone covers.
    np.testing.assert_allclose(combine({"a": a, "b": b}, {"a": 0.0, "b": 1.0})[1, 0], 0.6)


def test_weight_grid_and_tuning_prefer_the_informative_store():
    grid = weight_grid(["a", "b"], 0.05)
    assert len(grid) == 21 and grid[0] == {"a": 0.5, "b": 0.5}
    assert all(sum(w.values()) == pytest.approx(1.0) for w in grid)
    assert len(weight_grid(["a", "b", "c"], 0.1)) == 66
    rng = np.random.default_rng(0)
    Y = (rng.random((300, 3)) < 0.3).astype(np.uint8)
    good = np.clip(Y * 0.6 + rng.random((300, 3)) * 0.5, 0, 1).astype(np.float32)
    noise = rng.random((300, 3)).astype(np.float32)
    w, score = tune_weights(Y, {"good": good, "noise": noise}, 0.1)
    assert w["good"] >= 0.8 and score > 0.8
    with pytest.raises(ConfigError, match="must divide 1"):
        FusionConfig(weight_step=0.3).validate()


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    out = tmp_path_factory.mktemp("fused") / "runs"
    joined = join_features(two_modalities())
    res = run_fused(joined, out, HeadsConfig(heads=("logreg", "knn"), jobs=1, baseline=False, head_params=FAST), FusionConfig())
    return out, res


def test_fusion_beats_each_store_alone_on_the_same_test_items(fused):
    out, res = fused
    same = res["same_items"]
    assert same["items"] == res["coverage"]["by_part"]["test"]["every_store"] > 0
    for head in ("logreg", "knn"):
        row = same["heads"][head]
        assert set(row) == {"image-cnn", "text-lm", "early", "late"}
        for fused_part in ("early", "late"):
            assert row[fused_part]["map_macro"] > max(row["image-cnn"]["map_macro"], row["text-lm"]["map_macro"])
    assert set(same["best"]) == {"image-cnn", "text-lm", "early", "late"}
    late = res["late"]["heads"]["logreg"]
    assert sum(late["weights"].values()) == pytest.approx(1.0) and 0 < late["weights"]["text-lm"] < 1
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["coverage"] == res["coverage"] and (out / "split.csv").is_file()


def test_fused_runs_record_every_store_and_predict_refuses_them(fused):
    out, res = fused
    early = load_head(out / "early" / "logreg")
    assert set(early.info["fusion"]["stores"]) == {"image-cnn", "text-lm"}
    assert early.info["fusion"]["block_weights"] == res["early"]["block_weights"] and not early.info["standardised"]
    assert early.info["fusion"]["stores"]["text-lm"]["modality"] == "text"
    late = json.loads((out / "late" / "logreg" / "fusion.json").read_text())
    assert set(late["weights"]) == set(late["stores"]) == {"image-cnn", "text-lm"}
    for run in (out / "early" / "logreg", out / "late" / "logreg"):
        with pytest.raises(ConfigError, match="one store"):
            predict_texts(run, ["a plot"])
    fs = two_modalities()["image-cnn"][0]
    with pytest.raises(ConfigError, match="one store"):
        evaluate_run(out / "early" / "knn", fs, None)
    # Each store's own heads stay ordinary single-store runs.
    single = load_head(out / "image-cnn" / "logreg")
    assert single.header.encoder["name"] == "cnn" and "fusion" not in single.info


def test_a_head_that_applies_to_no_store_is_skipped_and_named(tmp_path):
    sets = {name: (fs, None) for name, (fs, _) in two_modalities(n=300).items()}
    res = run_fused(join_features(sets), tmp_path, HeadsConfig(heads=("zeroshot", "knn"), jobs=1, baseline=False), FusionConfig())
    # zeroshot needs the text tower of the encoder that made the features: no store has one here.
    assert "zeroshot" in res["single"]["text-lm"]["skipped_heads"] and "zeroshot" in res["early"]["skipped_heads"]
    assert set(res["late"]["heads"]) == {"knn"} and res["same_items"]["best"]["late"]["head"] == "knn"


def test_a_store_without_items_in_a_part_is_refused(tmp_path):
    sets = two_modalities(n=300)
    joined = join_features(sets)
    joined.split = np.where(joined.present["text-lm"], "train", np.array(["train", "val", "test"] * 100, dtype=object))
    with pytest.raises(ConfigError, match="text-lm has no item in the val and test"):
        run_fused(joined, tmp_path, HeadsConfig(heads=("logreg",), jobs=1))
    joined.Y[:] = 0
    with pytest.raises(LabelError, match="no genre labels"):
        run_fused(joined, tmp_path, HeadsConfig(heads=("logreg",), jobs=1))


def _write_store(path, fs: FeatureSet, h: StoreHeader):
    w = StoreWriter(path, h)
    w.write_part(list(fs.ids), fs.X, fs.Y, list(fs.titles), list(fs.years))
    w.finalize()
    return path


def test_heads_cli_fuses_several_stores(tmp_path):
    sets = two_modalities(n=400)
    a = _write_store(tmp_path / "posters.h5", *sets["image-cnn"])
    b = _write_store(tmp_path / "plots.h5", *sets["text-lm"])
    assert join_stores([a, b]).names == ["image-cnn", "text-lm"]
    runner = CliRunner()
    out = tmp_path / "runs"
    res = runner.invoke(app, ["heads", "--store", str(a), "--store", str(b), "--head", "knn", "--jobs", "1",
                              "--fusion", "late", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "same" in res.output and "late fusion knn: weights" in res.output and "every store" in res.output
    saved = json.loads((out / "results.json").read_text())
    assert saved["early"] is None and saved["late"]["best"] == "knn"
    res = runner.invoke(app, ["heads", "--store", str(a), "--head", "logreg", "--fusion", "late", "--out", str(out)])
    assert res.exit_code == 1 and "two or more --store" in res.output
    res = runner.invoke(app, ["heads", "--store", str(a), "--store", str(b), "--head", "logreg", "--fusion", "erly", "--out", str(out)])
    assert res.exit_code == 1 and "did you mean: early" in res.output
    res = runner.invoke(app, ["predict", "--run", str(out / "late" / "knn"), "--text", "a plot"])
    # A fused run loads through the fused run kind; these stores' encoders are made up, so rebuilding one is refused.
    assert res.exit_code == 1 and "unknown backbone 'lm'" in res.output and "Traceback" not in res.output
