"""Multi-label metrics with scikit-learn's definitions, and a per-genre report.

Every results JSON carries exactly :data:`METRIC_KEYS`. Ranking metrics (ROC AUC, average
precision) are undefined for a genre with no positives (or no negatives) in the evaluated part:
such genres are left out of those averages and named in :attr:`Evaluation.skipped`, instead of
crashing or silently scoring 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn import metrics as skm

from genrekit.errors import LabelError

log = logging.getLogger(__name__)

METRIC_KEYS: tuple[str, ...] = (
    "hamming_loss",
    "accuracy_elementwise",
    "subset_accuracy",
    "f1_micro",
    "f1_macro",
    "f1_weighted",
    "f1_samples",
    "precision_micro",
    "precision_macro",
    "recall_micro",
    "recall_macro",
    "roc_auc_macro",
    "roc_auc_weighted",
    "map_macro",
    "coverage_error",
    "label_ranking_ap",
)


@dataclass
class Evaluation:
    """Scores of one set of predictions.

    Attributes:
        metrics: exactly :data:`METRIC_KEYS`; ``None`` where a metric is undefined (no genre has
            both classes, so no AUC).
        per_genre: one dict per genre: genre, precision, recall, f1, support, auc, ap.
        skipped: genres left out of the AUC/AP averages because the evaluated part has no
            positives or no negatives for them.
    """

    metrics: dict[str, float | None]
    per_genre: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"metrics": self.metrics, "per_genre": self.per_genre, "skipped_for_ranking": self.skipped}


def _check(Y_true: np.ndarray, P: np.ndarray, Y_pred: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    Y_true = np.asarray(Y_true)
    P = np.asarray(P, dtype=np.float64)
    if Y_true.ndim != 2 or P.shape != Y_true.shape:
        raise LabelError(
            f"labels have shape {Y_true.shape} and probabilities {P.shape}; expected the same (n_items, n_genres)"
        )
    if Y_pred is not None and np.shape(Y_pred) != Y_true.shape:
        raise LabelError(f"predicted labels have shape {np.shape(Y_pred)}, expected {Y_true.shape}")
    if len(Y_true) == 0:
        raise LabelError("nothing to evaluate: 0 items")
    return (Y_true > 0).astype(np.uint8), P


def ranking_defined(Y_true: np.ndarray) -> np.ndarray:
    """Boolean mask of genres with at least one positive and one negative (AUC/AP defined)."""
    pos = np.asarray(Y_true).sum(axis=0)
    return (pos > 0) & (pos < len(Y_true))


# Ranking metrics in numpy, all genres at once: scikit-learn's definitions (tests/test_metrics.py
# checks them against it), without its per-genre input validation, which made scoring a head's
# predictions cost longer than fitting a linear head (benchmarks/README.md, "Heads in a minute").
def average_precisions(Y_true: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Each column's average precision, as ``sklearn.metrics.average_precision_score``: the sum
    over distinct scores, highest first, of (recall gained) x (precision there); tied scores form
    one step. Columns need a positive (else NaN)."""
    Y_true, P = np.asarray(Y_true), np.asarray(P, dtype=np.float64)
    order = np.argsort(-P, axis=0, kind="mergesort")
    scores = np.take_along_axis(P, order, axis=0)
    tp = np.cumsum(np.take_along_axis(Y_true, order, axis=0), axis=0, dtype=np.float64)
    n = len(P)
    last = np.ones_like(scores, dtype=bool)  # the last row of each run of tied scores
    last[:-1] = scores[1:] != scores[:-1]
    rank = np.arange(1, n + 1, dtype=np.float64)[:, None]
    precision = tp / rank
    total = tp[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / total
    out = np.empty(P.shape[1])
    for j in range(P.shape[1]):
        r, p = recall[last[:, j], j], precision[last[:, j], j]
        out[j] = np.sum(np.diff(r, prepend=0.0) * p)
    out[total == 0] = np.nan
    return out


def roc_aucs(Y_true: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Each column's ROC AUC, as ``sklearn.metrics.roc_auc_score`` (ties count half: the
    Mann-Whitney statistic on average ranks). Columns need both classes (else NaN)."""
    from scipy.stats import rankdata

    Y_true = np.asarray(Y_true) > 0
    ranks = rankdata(np.asarray(P, dtype=np.float64), axis=0)
    pos = Y_true.sum(axis=0).astype(np.float64)
    neg = len(Y_true) - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * Y_true).sum(axis=0) - pos * (pos + 1) / 2) / (pos * neg)


def label_ranking_average_precision(Y_true: np.ndarray, P: np.ndarray) -> float:
    """``sklearn.metrics.label_ranking_average_precision_score``: per item, the mean over its
    genres of (true genres scored at least as high) / (genres scored at least as high); an item
    with no true genre, or all of them, scores 1."""
    Y_true, P = np.asarray(Y_true) > 0, np.asarray(P, dtype=np.float64)
    at_least = P[:, None, :] >= P[:, :, None]  # [i, j, k]: genre k scored at least genre j's score
    above = at_least.sum(axis=2)
    true_above = (at_least & Y_true[:, None, :]).sum(axis=2)
    n_true = Y_true.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_item = np.where(Y_true, true_above / above, 0.0).sum(axis=1) / n_true
    per_item[(n_true == 0) | (n_true == Y_true.shape[1])] = 1.0
    return float(per_item.mean())


def macro_average_precision(Y_true: np.ndarray, P: np.ndarray) -> float:
    """Mean average precision over the genres where it is defined (NaN if none is); the model-selection score."""
    Y_true = np.asarray(Y_true)
    ok = ranking_defined(Y_true)
    if not ok.any():
        return float("nan")
    return float(np.mean(average_precisions(Y_true[:, ok], np.asarray(P)[:, ok])))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (scikit-learn's ``zero_division=0``)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def precision_recall_f1(Y_true: np.ndarray, Y_pred: np.ndarray, average: str | None) -> tuple:
    """``sklearn.metrics.precision_recall_fscore_support(..., zero_division=0)`` for 0/1 matrices,
    from the counts in numpy: (precision, recall, F1) averaged (``micro``, ``macro``, ``weighted``,
    ``samples``) or per genre (``None``, with the support as a fourth element)."""
    t, p = np.asarray(Y_true) > 0, np.asarray(Y_pred) > 0
    axis = 1 if average == "samples" else 0
    tp, fp, fn = (t & p).sum(axis), (~t & p).sum(axis), (t & ~p).sum(axis)
    if average == "micro":
        tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
    prec, rec, f1 = _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn)
    if average is None:
        return prec, rec, f1, t.sum(axis=0)
    if average == "micro":
        return float(prec), float(rec), float(f1)
    if average == "weighted":
        w = t.sum(axis=0)
        if not w.sum():
            return 0.0, 0.0, 0.0
        return tuple(float(np.average(x, weights=w)) for x in (prec, rec, f1))
    return float(prec.mean()), float(rec.mean()), float(f1.mean())  # macro (per genre), samples (per item)


def _none_if_nan(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def multilabel_metrics(Y_true: np.ndarray, P: np.ndarray, Y_pred: np.ndarray) -> dict[str, float | None]:
    """The :data:`METRIC_KEYS` for probabilities ``P`` and thresholded predictions ``Y_pred``.

    Args:
        Y_true: (n, G) multi-hot truth.
        P: (n, G) scores in [0, 1] (ranking metrics use these).
        Y_pred: (n, G) 0/1 predictions (set metrics use these).

    Returns:
        A dict with exactly :data:`METRIC_KEYS`, in that order.
    """
    Y_true, P = _check(Y_true, P, Y_pred)
    Y_pred = (np.asarray(Y_pred) > 0).astype(np.uint8)
    ok = ranking_defined(Y_true)
    prf = {avg: precision_recall_f1(Y_true, Y_pred, avg) for avg in ("micro", "macro", "weighted", "samples")}
    if ok.any():
        yt, pp = Y_true[:, ok], P[:, ok]
        auc = roc_aucs(yt, pp)
        support = yt.sum(axis=0)
        auc_macro, auc_weighted = float(np.mean(auc)), float(np.average(auc, weights=support))
        map_macro = macro_average_precision(Y_true, P)
    else:
        auc_macro = auc_weighted = map_macro = float("nan")
    hl = float(np.mean(Y_true != Y_pred))
    out = {
        "hamming_loss": hl,
        "accuracy_elementwise": 1.0 - hl,
        "subset_accuracy": float(np.mean((Y_true == Y_pred).all(axis=1))),
        "f1_micro": prf["micro"][2],
        "f1_macro": prf["macro"][2],
        "f1_weighted": prf["weighted"][2],
        "f1_samples": prf["samples"][2],
        "precision_micro": prf["micro"][0],
        "precision_macro": prf["macro"][0],
        "recall_micro": prf["micro"][1],
        "recall_macro": prf["macro"][1],
        "roc_auc_macro": auc_macro,
        "roc_auc_weighted": auc_weighted,
        "map_macro": map_macro,
        "coverage_error": float(skm.coverage_error(Y_true, P)),
        "label_ranking_ap": label_ranking_average_precision(Y_true, P),
    }
    return {k: _none_if_nan(float(out[k])) for k in METRIC_KEYS}


def per_genre_report(Y_true: np.ndarray, P: np.ndarray, Y_pred: np.ndarray, genres: Sequence[str]) -> list[dict]:
    """Precision, recall, F1, support, ROC AUC and average precision of each genre.

    AUC and AP are ``None`` for a genre with no positives or no negatives in ``Y_true``.
    """
    Y_true, P = _check(Y_true, P, Y_pred)
    if len(genres) != Y_true.shape[1]:
        raise LabelError(f"{len(genres)} genre names for {Y_true.shape[1]} label columns")
    p, r, f, s = precision_recall_f1(Y_true, Y_pred, None)
    ok = ranking_defined(Y_true)
    aucs, aps = roc_aucs(Y_true, P), average_precisions(Y_true, P)
    rows = []
    for j, g in enumerate(genres):
        auc = float(aucs[j]) if ok[j] else None
        ap = float(aps[j]) if ok[j] else None
        rows.append(
            {"genre": g, "precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]), "support": int(s[j]), "auc": auc, "ap": ap}
        )
    return rows


def evaluate(Y_true: np.ndarray, P: np.ndarray, Y_pred: np.ndarray, genres: Sequence[str]) -> Evaluation:
    """Metrics, per-genre report and the genres skipped by the ranking averages, in one call.

    Example:
        >>> ev = evaluate(Y_test, P_test, P_test >= 0.5, genres)  # doctest: +SKIP
        >>> ev.metrics["f1_macro"], ev.skipped
    """
    metrics = multilabel_metrics(Y_true, P, Y_pred)
    report = per_genre_report(Y_true, P, Y_pred, genres)
    skipped = [g for g, ok in zip(genres, ranking_defined((np.asarray(Y_true) > 0))) if not ok]
    if skipped:
        log.warning(
            "left %d genre(s) out of ROC AUC / mAP averages (no positives or no negatives here): %s",
            len(skipped),
            ", ".join(skipped),
        )
    return Evaluation(metrics, report, skipped)
