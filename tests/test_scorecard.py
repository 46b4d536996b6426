"""The one scorecard: thresholds tuned on validation, scores on test, fallbacks and grid edges said."""

from __future__ import annotations

import numpy as np
from genrekit.evaluation.scorecard import score, score_collection
from genrekit.heads.sklearn_heads import LogRegHead, grid_notes
from genrekit.runs.leaderboard import HeadsConfig, run_heads
from synthetic import synthetic_features
from test_heads_runner import GENRES, header

RNG = np.random.default_rng(0)


def _probs(n, G, seed=0):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, G)) < 0.3).astype(np.uint8)
    return Y, np.clip(0.6 * Y + 0.4 * rng.random((n, G)), 0, 1)


def test_a_genre_whose_threshold_fell_back_says_so():
    Y_val, P_val = _probs(200, 3)
    Y_val[:, 2] = 0
    Y_val[:2, 2] = 1  # 2 validation positives: below min_positives, so the global threshold
    Y_te, P_te = _probs(200, 3, seed=1)
    card = score(Y_val, P_val, Y_te, P_te, ["A", "B", "C"], "per-genre", min_positives=5)
    assert card.thresholds.fallback == ("C",)
    rows = {r["genre"]: r for r in card.per_genre}
    assert rows["C"]["fallback"] and rows["C"]["threshold_source"] == "global"
    assert not rows["A"]["fallback"] and rows["A"]["threshold_source"] == "tuned"
    assert rows["A"]["threshold"] == card.thresholds.values[0]
    assert card.to_json()["threshold_fallback"] == ["C"]
    # the same rule applied to another collection keeps saying which genres fell back
    res = score_collection(card.thresholds, P_te, ["A", "B", "C"], Y_te, ["C", "A"])
    assert res["genres"] == ["A", "C"] and res["threshold_fallback"] == ["C"]
    assert [r["fallback"] for r in res["per_genre"]] == [False, True]


def test_the_leaderboard_and_the_cli_show_fallback_thresholds(tmp_path):
    fs = synthetic_features(300, 16, prevalence=dict(zip(GENRES, [0.5, 0.3, 0.2, 0.06])), signal=4.0, noise=0.5, seed=0)
    res = run_heads(fs, tmp_path / "runs", HeadsConfig(heads=("logreg",), baseline=False, min_train_positives=3, min_threshold_positives=10),
                    header=header())  # fmt: skip
    e = res["heads"]["logreg"]
    assert e["threshold_fallback"], "a 6% genre has fewer than 10 validation positives in 45 items"
    assert all(r["fallback"] == (r["genre"] in e["threshold_fallback"]) for r in e["per_genre"])
    from genrekit_cli.commands.heads import _print_leaderboard
    from genrekit_cli.ui import console

    with console.capture() as cap:
        _print_leaderboard(res)
    shown = cap.get()
    assert "(global)" in shown and "use the global threshold" in shown and all(g in shown for g in e["threshold_fallback"])


class _Sharper:
    """An estimator whose validation ranking improves with C up to ``best`` (a known optimum)."""

    def __init__(self, C, best):
        self.C, self.best = C, best

    def fit(self, X, Y):
        return self

    def predict_proba(self, X):
        noise = np.random.default_rng(0).random(X.shape) * (1 + abs(np.log10(self.C / self.best)))
        return X + noise


def test_a_c_at_the_edge_of_its_grid_widens_the_grid_or_is_named():
    from genrekit.heads.sklearn_heads import search_on_validation

    Y = (np.random.default_rng(1).random((200, 3)) < 0.3).astype(np.uint8)
    X = Y.astype(float)

    def run(Cs, best):
        head = LogRegHead(Cs=Cs)
        head.model_, head.C_, head.search_ = search_on_validation(lambda C: _Sharper(C, best), Cs, X, Y, X, Y, 1.0)
        return head

    # The optimum lies one step past the top of the grid: widening finds it, inside the widened grid.
    head = run((0.01, 0.1, 1.0), best=10.0)
    assert head.C_ == 10.0 and max(head.search_) == 100.0 and grid_notes(head) == []
    # Far past the grid: two widenings still end at the edge, and the note says so.
    head = run((0.01, 0.1, 1.0), best=1e6)
    assert head.C_ == 100.0 and len(head.search_) == 5
    assert len(grid_notes(head)) == 1 and "largest value searched" in grid_notes(head)[0]
    # The bottom edge too; a best value inside the grid neither widens nor is named.
    assert grid_notes(run((0.01, 0.1, 1.0), best=1e-9))[0].startswith("C=0.0001 is the smallest")
    head = run((0.01, 0.1, 1.0), best=0.1)
    assert head.C_ == 0.1 and len(head.search_) == 3 and grid_notes(head) == []


def test_the_leaderboard_names_a_hyper_parameter_at_its_grid_edge(tmp_path):
    # With clean clusters more neighbours vote better, so k ends at the largest value searched.
    fs = synthetic_features(300, 16, prevalence=dict(zip(GENRES, [0.5, 0.3, 0.2, 0.12])), signal=4.0, noise=0.5, seed=0)
    cfg = HeadsConfig(heads=("knn",), baseline=False, min_train_positives=3, head_params={"knn": {"ks": (1, 2, 3)}})
    res = run_heads(fs, tmp_path / "runs", cfg, header=header())
    e = res["heads"]["knn"]
    assert e["fitted"]["k_"] == 3 and e["notes"] == [grid_notes_for_k(3)]
    from genrekit_cli.commands.heads import _print_leaderboard
    from genrekit_cli.ui import err_console

    with err_console.capture() as cap:
        _print_leaderboard(res)
    assert "k=3 is the largest value searched" in cap.get()


def grid_notes_for_k(k):
    return f"k={k} is the largest value searched (1 .. {k}); the best may lie beyond: pass a wider grid with head_params"


def test_a_head_that_predicts_the_genre_frequencies_is_named():
    from genrekit.evaluation.scorecard import flat_note

    rng = np.random.default_rng(0)
    prior = np.array([0.56, 0.35, 0.1])
    assert flat_note(prior + rng.normal(0, 0.001, (200, 3)))  # every film about Drama 0.56
    assert flat_note(np.clip(prior + rng.normal(0, 0.2, (200, 3)), 0, 1)) == []
