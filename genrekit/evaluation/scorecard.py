"""One scorecard: tune the decision rule on validation, score on test, the same way everywhere.

The leaderboard (every head and the ensemble), late fusion, fine-tune and ``genrekit evaluate``
all report what :func:`score` returns, so a number means the same thing in each of them:

- ``thresholds``: the rule tuned on validation only (never on test);
- ``val``: validation mAP (what runs are ranked by) and micro F1 at the tuned thresholds;
- ``test``: every metric at the tuned thresholds (``tuned``) and at 0.5 (``at_0.5``);
- ``per_genre``: precision, recall, F1, support, AUC and AP per genre, each with the threshold it
  used and whether that threshold was tuned for the genre or fell back to the global one (too few
  validation positives): a fallback is never shown as "tuned";
- ``rules``: test F1 of every rule, each tuned on validation (what the choice of rule costs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from genrekit.evaluation.metrics import evaluate, macro_average_precision, multilabel_metrics
from genrekit.evaluation.thresholds import RULES, Thresholds, fixed, tune_thresholds

RULE_KEYS = ("f1_micro", "f1_macro", "f1_samples", "hamming_loss")


@dataclass(frozen=True)
class Scorecard:
    """Thresholds tuned on validation and the scores they give on test (JSON: :meth:`to_json`)."""

    thresholds: Thresholds
    val: dict[str, float | None]
    test: dict[str, dict]  # "tuned" and "at_0.5": metric -> value
    per_genre: list[dict]
    skipped: list[str]  # genres left out of AUC/AP averages (no positives or no negatives in test)
    rules: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "thresholds": self.thresholds.to_json(),
            "threshold_fallback": list(self.thresholds.fallback),
            "val": self.val,
            "test": self.test,
            "rules": self.rules,
            "per_genre": self.per_genre,
            "skipped_for_ranking": self.skipped,
        }


def flat_note(P: np.ndarray, min_spread: float = 0.02) -> list[str]:
    """A note when a head's probabilities hardly vary across items: it predicts the genre frequencies.

    The spread is the mean over genres of the 5-95 percentile range of each genre's probabilities;
    a head under ``min_spread`` gives every item about the same genres whatever it sees (seen on a
    fused run of 800 posters whose C search ended at its grid edge: Drama 0.56 for every film).
    """
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 2 or len(P) < 10:
        return []
    spread = float(np.mean(np.percentile(P, 95, axis=0) - np.percentile(P, 5, axis=0)))
    if spread >= min_spread:
        return []
    return [f"its probabilities hardly vary across test items (mean 5-95% range {spread:.3f}): it predicts about the "
            f"genre frequencies, whatever the poster; the features or the regularisation do not let it tell items apart"]  # fmt: skip


def annotate_thresholds(per_genre: list[dict], thresholds: Thresholds) -> list[dict]:
    """Each per-genre row with its threshold and where the threshold came from.

    ``threshold_source`` is ``tuned`` (fitted to this genre on validation), ``global`` (the rule is
    one threshold for all genres, or this genre fell back to it for lack of validation positives:
    then ``fallback`` is true), ``0.5``, or ``top-k`` (no threshold: each item's k best genres).
    """
    fallback = set(thresholds.fallback)
    rows = []
    for j, r in enumerate(per_genre):
        g = r["genre"]
        source = {"per-genre": "tuned", "at-least-one": "tuned", "global": "global", "0.5": "0.5", "top-k": "top-k"}[thresholds.rule]
        if g in fallback:
            source = "global"
        thr = None if thresholds.rule == "top-k" else float(thresholds.values[j])
        rows.append({**r, "threshold": thr, "threshold_source": source, "fallback": g in fallback})
    return rows


def apply_scorecard(thresholds: Thresholds, Y: np.ndarray, P: np.ndarray, genres: Sequence[str]) -> tuple[dict, list[dict], list[str]]:
    """Scores of a fixed rule on (Y, P): metrics, annotated per-genre rows and genres left out of averages."""
    ev = evaluate(Y, P, thresholds.apply(P), genres)
    return ev.metrics, annotate_thresholds(ev.per_genre, thresholds), ev.skipped


def score(
    Y_val: np.ndarray,
    P_val: np.ndarray,
    Y_test: np.ndarray,
    P_test: np.ndarray,
    genres: Sequence[str],
    rule: str = "per-genre",
    min_positives: int = 10,
    compare_rules: bool = True,
    val_map: float | None = None,
) -> Scorecard:
    """Tune ``rule`` on validation and score on test.

    Args:
        Y_val, P_val: validation truth and probabilities (n_val, G).
        Y_test, P_test: test truth and probabilities (n_test, G).
        genres: the G column names.
        rule: the decision rule (:data:`~genrekit.evaluation.thresholds.RULES`).
        min_positives: genres with fewer validation positives fall back to the global threshold.
        compare_rules: also score every other rule (each tuned on validation).
        val_map: the validation mAP when the caller already has it (the ensemble's selection does).

    Example:
        >>> card = score(Y_val, P_val, Y_test, P_test, genres)  # doctest: +SKIP
        >>> card.test["tuned"]["map_macro"], card.thresholds.fallback
    """
    th = tune_thresholds(Y_val, P_val, rule, genres, min_positives=min_positives)
    tuned, per_genre, skipped = apply_scorecard(th, Y_test, P_test, genres)
    val = {
        "map_macro": macro_average_precision(Y_val, P_val) if val_map is None else val_map,
        "f1_micro_tuned": multilabel_metrics(Y_val, P_val, th.apply(P_val))["f1_micro"],
    }
    test = {"at_0.5": multilabel_metrics(Y_test, P_test, fixed(len(genres)).apply(P_test)), "tuned": tuned}
    rules = {}
    if compare_rules:
        for r in RULES:
            t = th if r == rule else tune_thresholds(Y_val, P_val, r, genres, min_positives=min_positives)
            m = multilabel_metrics(Y_test, P_test, t.apply(P_test))
            rules[r] = {k: m[k] for k in RULE_KEYS}
    return Scorecard(th, val, test, per_genre, skipped, rules)


def score_collection(thresholds: Thresholds, P: np.ndarray, head_genres: Sequence[str], Y: np.ndarray, genres: Sequence[str]) -> dict:
    """Score a trained rule on another collection, genres aligned by name (``genrekit evaluate``).

    Args:
        thresholds: the rule tuned on the run's own validation split (never re-tuned here).
        P: probabilities, columns ``head_genres``.
        head_genres: the run's genres.
        Y: the collection's labels, columns ``genres``.
        genres: the collection's genres.

    Returns:
        The results fields: shared genres, the genres on one side only, thresholds (with the
        genres that fell back), metrics at the rule and at 0.5, the annotated per-genre report.
    """
    from genrekit.errors import LabelError

    where = {g: j for j, g in enumerate(genres)}
    mine = [i for i, g in enumerate(head_genres) if g in where]
    if not mine:
        raise LabelError(f"none of the run's genres ({', '.join(list(head_genres)[:5])}...) is among this collection's "
                         f"({', '.join(list(genres)[:5])}...); genres are matched by exact name")  # fmt: skip
    shared = [head_genres[i] for i in mine]
    Ps, Ys = np.asarray(P)[:, mine], np.asarray(Y)[:, [where[g] for g in shared]]
    if not Ys.any():
        raise LabelError("this collection has no positive label among the shared genres; it cannot be scored")
    th = thresholds.subset(mine)
    metrics, per_genre, skipped = apply_scorecard(th, Ys, Ps, shared)
    return {
        "genres": shared,
        "head_genres_missing_here": [g for g in head_genres if g not in where],
        "genres_unknown_to_head": [g for g in genres if g not in set(head_genres)],
        "thresholds": th.to_json(),
        "threshold_fallback": [g for g in th.fallback if g in set(shared)],
        "metrics": metrics,
        "metrics_at_0.5": multilabel_metrics(Ys, Ps, fixed(len(shared)).apply(Ps)),
        "per_genre": per_genre,
        "skipped_for_ranking": skipped,
    }
