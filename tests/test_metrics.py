"""Metrics follow scikit-learn's definitions, survive genres without positives; thresholds tune on validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from genrekit.errors import LabelError, UnknownNameError
from genrekit.evaluation import METRIC_KEYS, Thresholds, best_f1_threshold, evaluate, multilabel_metrics, tune_thresholds


def _data(n=200, g=4, seed=0):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, g)) < [0.5, 0.3, 0.2, 0.1][:g]).astype(np.uint8)
    P = np.clip(0.35 * Y + 0.65 * rng.random((n, g)), 0, 1)
    return Y, P


def test_metric_keys_are_exactly_the_issue_list_and_match_sklearn():
    Y, P = _data()
    Yp = (P >= 0.5).astype(np.uint8)
    m = multilabel_metrics(Y, P, Yp)
    assert tuple(m) == METRIC_KEYS and len(METRIC_KEYS) == 16
    assert m["hamming_loss"] == pytest.approx(skm.hamming_loss(Y, Yp))
    assert m["accuracy_elementwise"] == pytest.approx(1 - skm.hamming_loss(Y, Yp))
    assert m["subset_accuracy"] == pytest.approx(skm.accuracy_score(Y, Yp))
    for avg in ("micro", "macro", "weighted", "samples"):
        assert m[f"f1_{avg}"] == pytest.approx(skm.f1_score(Y, Yp, average=avg, zero_division=0))
    assert m["precision_macro"] == pytest.approx(skm.precision_score(Y, Yp, average="macro", zero_division=0))
    assert m["recall_micro"] == pytest.approx(skm.recall_score(Y, Yp, average="micro", zero_division=0))
    assert m["roc_auc_macro"] == pytest.approx(skm.roc_auc_score(Y, P, average="macro"))
    assert m["roc_auc_weighted"] == pytest.approx(skm.roc_auc_score(Y, P, average="weighted"))
    assert m["map_macro"] == pytest.approx(skm.average_precision_score(Y, P, average="macro"))
    assert m["coverage_error"] == pytest.approx(skm.coverage_error(Y, P))
    assert m["label_ranking_ap"] == pytest.approx(skm.label_ranking_average_precision_score(Y, P))
    json.dumps(m)  # plain floats


def test_genre_without_positives_is_left_out_of_ranking_averages_and_named():
    Y, P = _data()
    Y[:, 3] = 0  # absent from this part
    ev = evaluate(Y, P, (P >= 0.5).astype(np.uint8), ["a", "b", "c", "d"])
    assert ev.skipped == ["d"]
    assert ev.metrics["roc_auc_macro"] == pytest.approx(skm.roc_auc_score(Y[:, :3], P[:, :3], average="macro"))
    assert ev.metrics["map_macro"] == pytest.approx(skm.average_precision_score(Y[:, :3], P[:, :3]))
    row = ev.per_genre[3]
    assert row["genre"] == "d" and row["support"] == 0 and row["auc"] is None and row["ap"] is None


def test_no_genre_with_both_classes_gives_none_not_nan():
    Y = np.zeros((5, 2), np.uint8)
    m = multilabel_metrics(Y, np.full((5, 2), 0.3), np.zeros((5, 2)))
    assert m["roc_auc_macro"] is None and m["map_macro"] is None
    assert m["hamming_loss"] == 0.0


def test_shape_mismatch_is_one_clear_error():
    with pytest.raises(LabelError, match="same"):
        multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 3)), np.zeros((3, 2)))


def _brute_best_f1(y, s):
    best = 0.0
    for t in np.unique(s):
        best = max(best, skm.f1_score(y, s >= t, zero_division=0))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_best_f1_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(120) < 0.2).astype(int)
    s = np.round(0.3 * y + rng.random(120), 2)  # rounding makes ties
    t, f1 = best_f1_threshold(y, s)
    assert f1 == pytest.approx(_brute_best_f1(y, s))
    assert skm.f1_score(y, s >= t) == pytest.approx(f1)


def test_per_genre_thresholds_beat_one_half_on_validation_and_fall_back_when_positives_are_few():
    Y, P = _data(400)
    P[:, 1] *= 0.6  # a head that under-scores genre 1: 0.5 misses most of it
    Y[:, 3] = 0
    Y[:2, 3] = 1  # two validation positives only
    th = tune_thresholds(Y, P, "per-genre", ["a", "b", "c", "d"], min_positives=3)
    assert th.fallback == ("d",)
    glob = tune_thresholds(Y, P, "global")
    assert th.values[3] == pytest.approx(glob.values[0])
    f_tuned = skm.f1_score(Y, th.apply(P), average="micro")
    f_half = skm.f1_score(Y, (P >= 0.5), average="micro")
    assert f_tuned > f_half


def test_top_k_and_at_least_one_rules():
    P = np.array([[0.9, 0.8, 0.1], [0.2, 0.1, 0.3], [0.6, 0.7, 0.65]])
    Y = np.array([[1, 1, 0], [0, 0, 1], [0, 1, 1]])
    th = tune_thresholds(Y, P, "top-k", max_k=3)
    assert th.k == 2
    assert th.apply(P).sum(axis=1).tolist() == [2, 2, 2]
    alo = Thresholds("at-least-one", (0.95, 0.95, 0.95))
    assert alo.apply(P).tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]


def test_thresholds_round_trip_json_and_unknown_rule():
    th = Thresholds("per-genre", (0.2, 0.4), fallback=("b",))
    assert Thresholds.from_json(json.loads(json.dumps(th.to_json()))) == th
    with pytest.raises(UnknownNameError, match="top-k"):
        tune_thresholds(np.zeros((2, 2)), np.zeros((2, 2)), "topk")


@pytest.mark.parametrize("seed", range(6))
def test_numpy_ranking_metrics_are_sklearns_with_ties_and_float32(seed):
    from genrekit.evaluation.metrics import average_precisions, label_ranking_average_precision, roc_aucs

    rng = np.random.default_rng(seed)
    n, g = int(rng.integers(5, 300)), int(rng.integers(1, 12))
    Y = (rng.random((n, g)) < rng.uniform(0.05, 0.6)).astype(np.uint8)
    Y[0], Y[-1] = 1, 0  # both classes in every genre
    P = rng.random((n, g))
    P = np.round(P, 1) if seed % 2 else P.astype(np.float32)  # ties (many), or float32 scores
    np.testing.assert_allclose(average_precisions(Y, P), skm.average_precision_score(Y, P, average=None), rtol=0, atol=1e-12)
    np.testing.assert_allclose(roc_aucs(Y, P), skm.roc_auc_score(Y, P, average=None), rtol=0, atol=1e-12)
    Y[1] = 0  # an item with no genre, and one with all of them, score 1 in sklearn's LRAP
    Y[2] = 1
    assert label_ranking_average_precision(Y, P) == pytest.approx(skm.label_ranking_average_precision_score(Y, P), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_numpy_set_metrics_are_sklearns(seed):
    from genrekit.evaluation.metrics import precision_recall_f1

    rng = np.random.default_rng(seed)
    # two genres or more: scikit-learn reads one (n, 1) column as binary labels and averages
    # over the classes 0 and 1; genrekit scores genre columns alike however many there are
    n, g = int(rng.integers(3, 200)), int(rng.integers(2, 10))
    Y = (rng.random((n, g)) < rng.uniform(0.0, 0.5)).astype(np.uint8)
    Yp = (rng.random((n, g)) < rng.uniform(0.0, 0.5)).astype(np.uint8)
    Y[: n // 4] = 0  # items with no genre, predicted or not, and genres never true or never predicted
    Yp[: n // 8] = 0
    for avg in ("micro", "macro", "weighted", "samples", None):
        ours = precision_recall_f1(Y, Yp, avg)
        theirs = skm.precision_recall_fscore_support(Y, Yp, average=avg, zero_division=0)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12, err_msg=str(avg))
