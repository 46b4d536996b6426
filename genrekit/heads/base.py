"""What every head shares: the scikit-learn estimator protocol for multi-label genre prediction.

A head is fitted on an (n, D) float matrix and an (n, G) multi-hot matrix, optionally with a
validation pair for early stopping or searches, and answers ``predict_proba(X) -> (n, G)``
(one probability per genre, not scikit-learn's list-of-arrays form).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from genrekit.errors import LabelError
from genrekit.features import l2_normalise  # noqa: F401  (heads normalise as stores do)


def check_labels(Y: np.ndarray, n_rows: int, what: str = "Y") -> np.ndarray:
    """``Y`` as a uint8 multi-hot matrix with ``n_rows`` rows, or a clear :class:`LabelError`."""
    if Y is None:
        raise LabelError(f"a head requires y to be passed, but the target y is None; give {what} as an (n_items, n_genres) 0/1 matrix")
    Y = np.asarray(Y)
    if Y.ndim != 2 or Y.shape[0] != n_rows:
        raise LabelError(
            f"{what} has shape {Y.shape}; expected a multi-hot matrix with {n_rows} rows (n_items, n_genres); one genre is an (n_items, 1) column"
        )
    if Y.shape[1] == 0:
        raise LabelError(f"{what} has no genre columns; heads need labelled features")
    if Y.dtype.kind not in "biuf" or not np.isin(Y, (0, 1)).all():
        try:
            kind = type_of_target(Y)
        except ValueError:
            kind = "unknown"
        got = "values of an Unknown label type" if kind == "unknown" else f"{kind} values"
        raise LabelError(f"{what} must hold only 0 and 1 (multi-hot genres); got {got} {np.unique(Y.astype(str))[:5].tolist()}")
    return Y.astype(np.uint8)


def require_both_classes(Y: np.ndarray, head: str) -> None:
    """Raise if some genre is all-0 or all-1 in training data: no classifier can learn it."""
    pos = Y.sum(axis=0)
    bad = np.flatnonzero((pos == 0) | (pos == len(Y)))
    if len(bad):
        raise LabelError(
            f"{head}: genre column(s) {bad.tolist()} have only one class ({'no positives' if pos[bad[0]] == 0 else 'no negatives'}) "
            "in the training data; drop them first (`genrekit heads` does, see --min-positives)"
        )


# scikit-learn's multi-output convention (RandomForestClassifier, ClassifierChain): one array of
# classes per output. Scorers read it to treat predict_proba's (n, G) matrix as multi-label.
_BINARY = np.array([0, 1])


class MultiLabelHead(ClassifierMixin, BaseEstimator):
    """Base class: validation helpers and ``predict`` at 0.5 from ``predict_proba``.

    Subclasses implement ``fit(X, Y, X_val=None, Y_val=None)`` (through :meth:`_fit_inputs`,
    which sets ``n_features_in_``, ``n_genres_`` and ``classes_``) and ``predict_proba``, which
    starts with :meth:`_check_X` (``NotFittedError`` before fit).

    A head is multi-label only: ``Y`` is an (n, G) 0/1 matrix, G >= 1 (one genre is a (n, 1)
    column); the tags say so, so scikit-learn's checks and scorers treat it as such.
    """

    def _fit_inputs(self, X, Y, X_val=None, Y_val=None):
        X = validate_data(self, X, dtype=np.float32, reset=True)
        Y = check_labels(Y, X.shape[0])
        self.n_genres_ = Y.shape[1]
        self.classes_ = [_BINARY.copy() for _ in range(Y.shape[1])]
        if (X_val is None) != (Y_val is None):
            raise LabelError("give both X_val and Y_val, or neither")
        if X_val is not None:
            X_val = validate_data(self, X_val, dtype=np.float32, reset=False)
            Y_val = check_labels(Y_val, X_val.shape[0], "Y_val")
            if Y_val.shape[1] != Y.shape[1]:
                raise LabelError(f"Y_val has {Y_val.shape[1]} genres, Y has {Y.shape[1]}")
        return X, Y, X_val, Y_val

    def _check_X(self, X) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, dtype=np.float32, reset=False)

    def predict(self, X) -> np.ndarray:
        """0/1 genre predictions (int64, the dtype of integer targets) at a 0.5 threshold.

        Use :class:`~genrekit.evaluation.Thresholds` for tuned ones.
        """
        return (self.predict_proba(X) >= 0.5).astype(np.int64)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = False  # Y is always (n, G); one genre is (n, 1)
        tags.classifier_tags.multi_label = True
        tags.classifier_tags.multi_class = False  # genres are 0/1 columns, not class labels
        return tags


def stack_proba(probas) -> np.ndarray:
    """scikit-learn's multi-output list of (n, 2) arrays (one (n, 2) array for a single output)
    as one (n, G) positive-class matrix."""
    probas = probas if isinstance(probas, list) else [probas]
    return np.column_stack([p[:, 1] for p in probas]).astype(np.float32)
