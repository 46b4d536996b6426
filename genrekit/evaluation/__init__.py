"""Scoring multi-label predictions: metrics, per-genre reports, threshold rules tuned on validation."""

from genrekit.evaluation.metrics import METRIC_KEYS, Evaluation, evaluate, multilabel_metrics, per_genre_report
from genrekit.evaluation.thresholds import RULES, Thresholds, best_f1_threshold, tune_thresholds

__all__ = [
    "METRIC_KEYS",
    "RULES",
    "Evaluation",
    "Thresholds",
    "best_f1_threshold",
    "evaluate",
    "multilabel_metrics",
    "per_genre_report",
    "tune_thresholds",
]
