"""`run_heads`: split, genre selection, every head side by side, results files, saved heads that reload."""

from __future__ import annotations

import csv
import json
import threading

import numpy as np
import pytest

from genrekit.errors import ConfigError, LabelError, StoreMismatchError, UnknownNameError, UntrustedFileError
from genrekit.evaluation import METRIC_KEYS
from genrekit.inference import evaluate_run
from genrekit.runs.leaderboard import HeadsConfig, run_heads
from genrekit.heads.saved import load_head
from synthetic import synthetic_features
from genrekit.store import FeatureSet, StoreHeader

PREV = [0.5, 0.3, 0.2, 0.12]
GENRES = ["Drama", "Comedy", "Horror", "Western"]


def header(genres=GENRES, name="test-enc", dim=16) -> StoreHeader:
    return StoreHeader(
        encoder={"family": "test", "name": name, "weights": "none"},
        preprocessing={"size": 32},
        normalisation="none",
        modality="image",
        dim=dim,
        dtype="float32",
        genres=tuple(genres),
        config={},
    )


def features(n=500, seed=0):
    fs = synthetic_features(n, 16, prevalence=dict(zip(GENRES, PREV)), signal=4.0, noise=0.5, seed=seed)
    return fs


def fake_text_tower(texts):
    # Deterministic 16-d "embeddings" of prompts: enough for the mechanics of zeroshot and chain order.
    return np.stack([np.random.default_rng(sum(map(ord, t))).standard_normal(16) for t in texts]).astype(np.float32)


# Heads trained quickly; the defaults are sized for 6,000 x 1280.
FAST = ("logreg", "chain", "zeroshot", "knn")


def run(tmp_path, fs=None, **cfg):
    cfg.setdefault("heads", FAST)
    cfg.setdefault("jobs", 1)
    return run_heads(fs or features(), tmp_path / "runs", HeadsConfig(**cfg), header=header(), text_encoder=fake_text_tower)


def test_run_writes_a_leaderboard_and_one_reloadable_directory_per_head(tmp_path):
    calls = []
    fs = features()
    res = run_heads(fs, tmp_path / "runs", HeadsConfig(heads=FAST, jobs=1), header=header(), text_encoder=fake_text_tower,
                    progress=lambda *a: calls.append(a))  # fmt: skip
    out = tmp_path / "runs"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["best"] == res["best"] in FAST
    assert res["best"] == max(res["heads"], key=lambda h: res["heads"][h]["val"]["map_macro"])
    assert list(res["heads"]) == list(FAST)
    for name, e in res["heads"].items():
        assert tuple(e["test"]["tuned"]) == METRIC_KEYS and tuple(e["test"]["at_0.5"]) == METRIC_KEYS
        assert {r["genre"] for r in e["per_genre"]} == set(GENRES)
        assert e["fit_seconds"] >= 0 and e["thresholds"]["rule"] == "per-genre"
        saved = load_head(out / name)
        X_test = fs.X[np.asarray(_split(out)) == "test"]
        np.testing.assert_allclose(saved.predict_proba(X_test).shape, (len(X_test), 4))
    assert tuple(res["baseline"]["test"]["at_0.5"]) == METRIC_KEYS
    assert res["split"]["source"] == "stratified" and (out / "split.csv").is_file()
    assert res["chain_order"]["source"] == "text similarity"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["entry"] for r in rows] == [*FAST, "baseline"] and "f1_micro" in rows[0]
    assert calls[0] == ("heads", 0, 5) and calls[-1] == ("heads", 5, 5)


def _split(out):
    return [r["split"] for r in csv.DictReader((out / "split.csv").open())]


def test_runs_are_reproducible(tmp_path):
    a = run(tmp_path / "a", heads=("logreg", "knn"))
    b = run(tmp_path / "b", heads=("logreg", "knn"))
    for h in ("logreg", "knn"):
        assert a["heads"][h]["test"]["tuned"] == b["heads"][h]["test"]["tuned"]


def test_tuned_thresholds_beat_one_half_on_micro_f1(tmp_path):
    # Rare genres and a weak signal, as on real posters: probabilities seldom reach 0.5.
    fs = synthetic_features(600, 16, prevalence=[0.3, 0.15, 0.1, 0.05], signal=2.0, noise=0.5, seed=0)
    res = run(tmp_path, fs=fs, heads=("logreg",), threshold="global")
    e = res["heads"]["logreg"]
    assert e["test"]["tuned"]["f1_micro"] > e["test"]["at_0.5"]["f1_micro"]


def test_genre_absent_from_validation_is_dropped_with_the_reason(tmp_path):
    fs = features()
    split = np.array(["train"] * 350 + ["val"] * 75 + ["test"] * 75, dtype=object)
    fs.split = split
    fs.Y[split == "val", 3] = 0
    res = run(tmp_path, fs=fs, heads=("logreg",))
    assert res["genres"] == GENRES[:3] and res["split"]["source"] == "store"
    assert "0 val" in res["dropped_genres"]["Western"]
    assert any("Western" in w for w in res["split"]["warnings"])


def test_genre_every_training_item_has_is_dropped_like_one_none_has(tmp_path):
    fs = features()
    split = np.array(["train"] * 350 + ["val"] * 75 + ["test"] * 75, dtype=object)
    fs.split = split
    fs.Y[split == "train", 0] = 1  # every training film is a Drama: nothing to tell Drama from
    res = run(tmp_path, fs=fs, heads=("logreg", "chain"))
    assert res["genres"] == GENRES[1:] and res["dropped_genres"]["Drama"].startswith("0 train / ")
    assert "negatives" in res["dropped_genres"]["Drama"] and set(res["heads"]) >= {"logreg", "chain"}


def test_store_without_labels_is_one_clear_error(tmp_path):
    fs = features()
    fs.Y = np.zeros((len(fs.X), 0), np.uint8)
    with pytest.raises(LabelError, match="no genre labels"):
        run(tmp_path, fs=fs)
    # with jobs, their processes start before the labels are read; the error waits for that start
    with pytest.raises(LabelError, match="no genre labels"):
        run(tmp_path, fs=fs, jobs=2)
    assert not [t for t in threading.enumerate() if t.name == "genrekit-start-jobs"]


def test_unknown_head_and_inapplicable_head(tmp_path):
    with pytest.raises(UnknownNameError, match="did you mean: knn"):
        run(tmp_path, heads=("knnn",))
    with pytest.raises(ConfigError, match="does not apply"):
        run_heads(features(), tmp_path / "r", HeadsConfig(heads=("zeroshot",), jobs=1), header=None)


def test_all_names_the_heads_it_skips(tmp_path):
    small = {"rf": {"n_estimators": 10}, "svc": {"Cs": (0.1,), "n_components": 32},
             "mlp": {"hidden": 16, "max_epochs": 5}, "softf1": {"hidden": 16, "max_epochs": 5}}  # fmt: skip
    config = HeadsConfig(heads=(), jobs=1, baseline=False, head_params=small)
    res = run_heads(features(), tmp_path / "r", config, header=None, text_encoder=None)
    assert res["config"]["head_params"]["rf"] == {"n_estimators": 10}
    assert "zeroshot" in res["skipped_heads"] and "zeroshot" not in res["heads"]
    assert res["chain_order"]["source"] == "label frequency"
    assert set(res["heads"]) == {"logreg", "rf", "svc", "mlp", "chain", "softf1", "knn", "ensemble"}  # --all includes the ensemble
    assert res["heads"]["ensemble"]["val"]["map_macro"] >= max(e["val"]["map_macro"] for h, e in res["heads"].items() if h != "ensemble")


def test_several_balance_modes_show_their_effect_on_macro_f1(tmp_path):
    res = run(tmp_path, heads=("logreg", "knn"), balance=("none", "weights", "oversample"), baseline=False)
    # knn takes no class weights: it runs once unweighted instead of twice.
    assert set(res["heads"]) == {"logreg-none", "logreg-weights", "logreg-oversample", "knn-none", "knn-oversample"}
    assert res["heads"]["logreg-weights"]["balance"] == "weights"
    eff = res["balance_effect"]["logreg"]
    assert set(eff) == {"none", "weights", "oversample"} and "f1_macro_tuned" in eff["weights"]


def test_chain_order_given_by_the_user(tmp_path):
    res = run(tmp_path, heads=("chain",), chain_order=("Western", "Horror"))
    assert res["chain_order"] == {"source": "given", "genres": ["Western", "Horror", "Drama", "Comedy"]}
    with pytest.raises(UnknownNameError, match="Western"):
        run(tmp_path, heads=("chain",), chain_order=("Westren",))


def test_saved_head_refuses_features_from_another_encoder_and_aligns_genres(tmp_path):
    full = features(800)
    rows = np.arange(800) >= 500
    other = FeatureSet(full.ids[rows], full.X[rows], full.Y[rows], list(GENRES), full.titles[rows], full.years[rows], None)
    for f in ("ids", "X", "Y", "titles", "years"):
        setattr(full, f, getattr(full, f)[~rows])
    run(tmp_path, fs=full, heads=("logreg",), baseline=False)
    saved = load_head(tmp_path / "runs" / "logreg")
    with pytest.raises(StoreMismatchError, match="encoder.name"):
        evaluate_run(saved, other, header(name="another-enc"))
    # Another collection: genres in another order, one unknown to the head, one missing.
    perm = [2, 0, 1]
    other.Y = np.column_stack([other.Y[:, perm], np.ones(len(other.Y), np.uint8)])
    other.genres = [GENRES[j] for j in perm] + ["Anime"]
    ev = evaluate_run(saved, other, header(genres=other.genres))
    r = ev.results
    assert set(r["genres"]) == {"Drama", "Comedy", "Horror"} and r["head_genres_missing_here"] == ["Western"]
    assert r["genres_unknown_to_head"] == ["Anime"] and tuple(r["metrics"]) == METRIC_KEYS
    assert ev.P.shape == (300, 4) and r["metrics"]["roc_auc_macro"] > 0.8


def test_a_tampered_skops_file_is_refused(tmp_path):
    import skops.io as sio

    run(tmp_path, heads=("logreg",), baseline=False)
    d = tmp_path / "runs" / "logreg"
    sio.dump({"payload": StoreHeader}, d / "model.skops")  # a type outside the trusted list
    with pytest.raises(UntrustedFileError, match="StoreHeader"):
        load_head(d)


def test_a_forest_above_its_share_of_the_run_is_grown_in_parts_on_every_job():
    from genrekit.runs.leaderboard import _in_parts, _Task

    tasks = [_Task(h, h, "none", {}) for h in ("rf", "chain", "softf1", "mlp", "svc", "logreg", "knn")] + [_Task("baseline", "logreg", "none", {})]
    assert [t.part for t in _in_parts(tasks, 2)] == [None] * 8  # within one of 2 jobs' share: whole, as measured fastest
    eight = _in_parts(tasks, 8)
    assert [t.part for t in eight if t.entry == "rf"] == [(i, 4) for i in range(4)]
    assert eight[0].entry == "rf" and len(eight) == 11
    small = [_Task("rf", "rf", "none", {"n_estimators": 2}), *tasks[1:]]
    assert [t.part for t in _in_parts(small, 8) if t.entry == "rf"] == [(0, 2), (1, 2)]  # no part without a tree


def test_a_forest_grown_in_parts_across_jobs_is_the_one_grown_whole(tmp_path):
    params = {"rf": {"n_estimators": 12}}
    a = run(tmp_path / "whole", heads=("rf", "logreg"), jobs=1, baseline=False, head_params=params)
    b = run(tmp_path / "parts", heads=("rf", "logreg"), jobs=3, baseline=False, head_params=params)  # rf: 3 parts
    assert a["heads"]["rf"]["test"] == b["heads"]["rf"]["test"]
    pa, pb = np.load(tmp_path / "whole/runs/rf/predictions.npz"), np.load(tmp_path / "parts/runs/rf/predictions.npz")
    assert all(np.array_equal(pa[k], pb[k]) for k in pa.files)
    assert len(load_head(tmp_path / "parts/runs/rf").head.model_.estimators_) == 12


@pytest.mark.slow
def test_parallel_run_matches_the_sequential_one(tmp_path):
    a = run(tmp_path / "seq", heads=("logreg", "mlp", "knn"), jobs=1)
    b = run(tmp_path / "par", heads=("logreg", "mlp", "knn"), jobs=2)
    for h in ("logreg", "knn"):
        assert a["heads"][h]["test"]["tuned"] == b["heads"][h]["test"]["tuned"]
    assert b["config"]["jobs_used"] == 2


def test_the_runner_never_imports_torch_for_an_image_encoders_features(tmp_path):
    """The main process of `heads` (2 jobs: the heads come back pickled) learns from the header's
    family that a CNN has no text tower, receives the torch heads as arrays and saves the
    scikit-learn heads with skops, all without importing torch (2 s of the run's critical path)."""
    import subprocess
    import sys
    from dataclasses import asdict, replace
    from pathlib import Path

    h = replace(header(), encoder={"family": "torchvision", "name": "mobilenet_v2", "weights": "none"})
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from synthetic import synthetic_features
from genrekit.runs.leaderboard import HeadsConfig, run_heads
from genrekit.store import StoreHeader
fs = synthetic_features(500, 16, prevalence={dict(zip(GENRES, PREV))!r}, signal=4.0, noise=0.5, seed=0)
cfg = HeadsConfig(heads=("logreg", "mlp", "zeroshot"), jobs=2, skip_inapplicable=True,
                  head_params={{"logreg": {{"Cs": (0.1,)}}, "mlp": {{"max_epochs": 2}}}})
res = run_heads(fs, {str(tmp_path / "r")!r}, cfg, header=StoreHeader(**{asdict(h)!r}))
print(sorted(res["heads"]), res["skipped_heads"], "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    heads, rest = out.stdout.strip().split("] ", 1)
    assert "'logreg', 'mlp'" in heads
    assert "backbone mobilenet_v2 has no text tower" in rest and rest.endswith("False"), out.stdout
    from genrekit.heads.saved import load_head

    assert load_head(tmp_path / "r" / "mlp").predict_proba(features().X[:3]).shape == (3, 4)
