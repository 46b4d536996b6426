"""Heads built from scikit-learn parts: ``logreg``, ``svc``, ``rf`` and ``chain``.

They compose scikit-learn's own multi-label machinery (``OneVsRestClassifier``,
``ClassifierChain``, ``CalibratedClassifierCV``, multi-output random forests) and add only what
the toolkit needs: one (n, G) ``predict_proba``, a regularisation search on the validation split,
and class weights for rare genres.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.multioutput import ClassifierChain
from sklearn.svm import LinearSVC

from genrekit.errors import ConfigError
from genrekit.evaluation.metrics import macro_average_precision
from genrekit.heads.base import MultiLabelHead, l2_normalise, require_both_classes, stack_proba
from genrekit.heads.joint import SideBySideCalibratedSVM, SideBySideLogistic

log = logging.getLogger(__name__)


def search_on_validation(
    make: Callable[[float], BaseEstimator],
    Cs: Sequence[float],
    X: np.ndarray,
    Y: np.ndarray,
    X_val: np.ndarray | None,
    Y_val: np.ndarray | None,
    default: float,
    widen: int = 2,
    solver: SideBySideLogistic | SideBySideCalibratedSVM | None = None,
    patience: int = 2,
) -> tuple[BaseEstimator, float, dict[float, float]]:
    """Fit ``make(C)`` for each C and keep the one with the best validation macro AP.

    The grid is walked from the smallest C up and left once ``patience`` Cs in a row score below
    the best (validation mAP rises to one peak and falls as C grows; the largest Cs are also the
    slowest to fit). A best C at either end of the grid may mean the grid stops too early, so it is widened
    past that end by its own step, up to ``widen`` times, while the validation score still improves
    (a C still at the edge after that is named by :func:`grid_notes` in the leaderboard). Without a
    validation set, fits ``make(default)`` only; with one C, no search: that C's model. Returns the
    fitted model, its C and the validation mAP of every C tried (the search record written to the
    results).

    ``solver``, when given, solves the same model at every C another way (:mod:`genrekit.heads.joint`:
    every genre side by side, one pass over X a step): it scores each C and makes the chosen C's
    model (or the one C's: the runner's baseline), ``solver.fitted(make(C), C)``, with no
    scikit-learn fit at all.
    """
    if X_val is None or len(Cs) <= 1:
        C = float(Cs[0]) if len(Cs) == 1 else default
        return (make(C).fit(X, Y) if solver is None else solver.fitted(make(C), C)), C, {}
    best, best_c, scores = None, None, {}

    def attempt(C: float) -> bool:
        nonlocal best, best_c
        model = None
        if solver is not None:
            scores[float(C)] = solver.validation_map(float(C), X_val, Y_val)
        else:
            model = make(C).fit(X, Y)
            scores[float(C)] = macro_average_precision(Y_val, np.asarray(model.predict_proba(X_val)))
        if best_c is None or scores[float(C)] > scores[float(best_c)]:
            best, best_c = model, float(C)
            return True
        return False

    worse = 0
    for C in sorted(Cs):  # smallest first: stop once two larger Cs in a row scored below the best
        worse = 0 if attempt(float(C)) else worse + 1
        if worse == patience:
            break
    for _ in range(widen):
        cs = sorted(scores)
        if best_c == cs[0]:
            nxt = cs[0] * cs[0] / cs[1]
        elif best_c == cs[-1]:
            nxt = cs[-1] * cs[-1] / cs[-2]
        else:
            break
        if not attempt(float(f"{nxt:.6g}")):  # 10, not 10.000000000000002, in the search record
            break
    log.info("validation mAP by C: %s -> C=%g", {c: round(s, 4) for c, s in sorted(scores.items())}, best_c)
    if best is None:
        best = solver.fitted(make(best_c), best_c)
    return best, float(best_c), dict(sorted(scores.items()))


def grid_notes(head) -> list[str]:
    """A line for each hyper-parameter a fitted head chose at the edge of what it searched.

    The search record is the head's ``search_`` (value -> validation mAP) and the choice its ``C_``
    or ``k_``; a choice at the smallest or largest value tried may be short of the best one.
    """
    search = getattr(head, "search_", None) or {}
    notes = []
    for attr, name in (("C_", "C"), ("k_", "k")):
        chosen = getattr(head, attr, None)
        if chosen is None or len(search) < 3 or not isinstance(search, dict):
            continue
        tried = sorted(float(v) for v in search)
        if float(chosen) in (tried[0], tried[-1]):
            end = "smallest" if float(chosen) == tried[0] else "largest"
            notes.append(f"{name}={chosen:g} is the {end} value searched ({tried[0]:g} .. {tried[-1]:g}); "
                         f"the best may lie beyond: pass a wider grid with head_params")  # fmt: skip
    return notes


def positive_columns(P: np.ndarray, n_genres: int) -> np.ndarray:
    """One-vs-rest probabilities as (n, G). ``OneVsRestClassifier`` fitted on a single (n, 1)
    genre sees a binary problem and returns (n, 2) [negative, positive] columns."""
    P = np.asarray(P, dtype=np.float32)
    return P[:, 1:] if n_genres == 1 and P.shape[1] == 2 else P


def ovr_n_iter(model) -> np.ndarray:
    """Solver iterations of each genre's model in a one-vs-rest or chain model (0 for a constant genre)."""
    return np.array([int(np.max(getattr(e, "n_iter_", 0))) for e in model.estimators_], dtype=np.int32)


class LogRegHead(MultiLabelHead):
    """One-vs-rest logistic regression; C searched on validation mAP when a validation set is given.

    Args:
        Cs: inverse regularisation strengths tried (one value: no search).
        class_weight: ``None`` or ``"balanced"`` (reweights each genre's positives).
        max_iter: L-BFGS iterations per genre.
    """

    def __init__(self, Cs: Sequence[float] = (0.0003, 0.001, 0.003, 0.01, 0.03), class_weight: str | None = None, max_iter: int = 300):
        self.Cs = Cs
        self.class_weight = class_weight
        self.max_iter = max_iter

    def _make(self, C: float) -> BaseEstimator:
        return OneVsRestClassifier(LogisticRegression(C=C, class_weight=self.class_weight, max_iter=self.max_iter))

    def fit(self, X, Y, X_val=None, Y_val=None) -> LogRegHead:
        X, Y, X_val, Y_val = self._fit_inputs(X, Y, X_val, Y_val)
        solver = _logistic_solver(X, Y, X_val, self.class_weight, max_iter=self.max_iter)
        self.model_, self.C_, self.search_ = search_on_validation(self._make, tuple(self.Cs), X, Y, X_val, Y_val, 0.01, solver=solver)
        self.n_iter_ = ovr_n_iter(self.model_)
        return self

    def predict_proba(self, X) -> np.ndarray:
        X = self._check_X(X)
        classes = self.model_.classes_
        if self.n_genres_ == 1 and len(classes) == 1:
            # One genre of one class in training: scikit-learn's binariser maps its only class to
            # 0 (an all-1 genre would predict 0); the genre is that constant.
            return np.full((len(X), 1), float(classes[0]), np.float32)
        return positive_columns(self.model_.predict_proba(X), self.n_genres_)


class SVCHead(MultiLabelHead):
    """Support vector classifier with calibrated probabilities, linear in the number of items.

    An exact kernel SVC costs O(n^2) memory and O(n^2..n^3) time, which is minutes at 10^4 items
    per genre. Instead the RBF kernel is approximated by ``n_components`` Nystroem features and a
    linear SVM (primal LinearSVC) is trained on them, so cost grows linearly with n. Probabilities
    come from sigmoid (Platt) calibration with ``cv``-fold cross-validation inside each genre's
    one-vs-rest model. Measured on 4,200 x 1280 standardised features: ~4 s per C, whereas
    LinearSVC on the raw 1280-d features took 17-43 s. ``kernel="linear"`` skips the Nystroem map.

    Args:
        Cs: SVM penalties tried on validation mAP.
        kernel: ``"rbf"`` (Nystroem approximation) or ``"linear"``.
        n_components: Nystroem landmarks (rank of the kernel approximation).
        gamma: RBF width; ``None`` means 1 / n_features (SVC's "scale" on standardised features).
        cv: calibration folds.
        class_weight: ``None`` or ``"balanced"``.
        random_state: seeds the Nystroem landmarks.
    """

    def __init__(
        self,
        Cs: Sequence[float] = (0.03, 0.3, 3.0),
        kernel: str = "rbf",
        n_components: int = 512,
        gamma: float | None = None,
        cv: int = 3,
        class_weight: str | None = None,
        random_state: int = 0,
    ):
        self.Cs = Cs
        self.kernel = kernel
        self.n_components = n_components
        self.gamma = gamma
        self.cv = cv
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, X, Y, X_val=None, Y_val=None) -> SVCHead:
        X, Y, X_val, Y_val = self._fit_inputs(X, Y, X_val, Y_val)
        if self.kernel not in ("rbf", "linear"):
            raise ConfigError(f"SVCHead kernel={self.kernel!r}; expected 'rbf' or 'linear'")
        require_both_classes(Y, "svc")
        if self.kernel == "rbf":
            self.feature_map_ = Nystroem(
                gamma=self.gamma, n_components=min(self.n_components, len(X)), random_state=self.random_state
            ).fit(X)
            X = self.feature_map_.transform(X).astype(np.float32)
            X_val = None if X_val is None else self.feature_map_.transform(X_val).astype(np.float32)
        else:
            self.feature_map_ = None

        def make(C: float) -> BaseEstimator:
            svm = LinearSVC(C=C, dual=False, class_weight=self.class_weight)
            return OneVsRestClassifier(CalibratedClassifierCV(svm, method="sigmoid", cv=self.cv))

        solver = _svm_solver(X, Y, X_val, self.class_weight, self.cv)
        self.model_, self.C_, self.search_ = search_on_validation(make, tuple(self.Cs), X, Y, X_val, Y_val, 0.03, solver=solver)
        self.n_iter_ = np.array(
            [max(c.estimator.n_iter_ for c in e.calibrated_classifiers_) if hasattr(e, "calibrated_classifiers_") else 0
             for e in self.model_.estimators_], dtype=np.int32,
        )  # fmt: skip
        return self

    def predict_proba(self, X) -> np.ndarray:
        X = self._check_X(X)
        if self.feature_map_ is not None:
            X = self.feature_map_.transform(X)
        return positive_columns(self.model_.predict_proba(X), self.n_genres_)


class RandomForestHead(MultiLabelHead):
    """A multi-output random forest (one forest shares its trees across genres).

    Args:
        n_estimators: trees; 150 keeps a 6,000 x 1280 fit near 30 s on one core.
        min_samples_leaf: larger leaves give smoother probabilities for rare genres.
        max_features: features tried per split.
        class_weight: ``None``, ``"balanced"`` or ``"balanced_subsample"``.
        n_jobs: threads for tree building.
        random_state: seed.
    """

    def __init__(
        self,
        n_estimators: int = 150,
        min_samples_leaf: int = 3,
        max_features: str | float = "sqrt",
        class_weight: str | None = None,
        n_jobs: int | None = None,
        random_state: int = 0,
    ):
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.class_weight = class_weight
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _forest(self, n_estimators: int, warm_start: bool = False) -> RandomForestClassifier:
        return RandomForestClassifier(
            n_estimators=n_estimators,
            min_samples_leaf=self.min_samples_leaf,
            max_features=self.max_features,
            class_weight=self.class_weight,
            n_jobs=self.n_jobs,
            random_state=self.random_state,
            warm_start=warm_start,
        )

    def fit(self, X, Y, X_val=None, Y_val=None) -> RandomForestHead:
        X, Y, _, _ = self._fit_inputs(X, Y, X_val, Y_val)
        require_both_classes(Y, "rf")
        self.model_ = self._forest(self.n_estimators).fit(X, _forest_y(Y))
        return self

    def fit_part(self, X, Y, part: int, parts: int) -> RandomForestHead:
        """Grow only the trees of ``part`` (0 .. parts-1) of the forest :meth:`fit` grows.

        Each tree gets the seed and bootstrap sample it gets in :meth:`fit` (scikit-learn's warm
        start draws the seeds of the trees it already has for the same reason), so parts grown in
        separate processes and joined with :meth:`join_parts` are that forest, tree for tree.
        """
        if not 0 <= part < parts <= self.n_estimators:
            raise ConfigError(f"part {part} of {parts}: a forest of {self.n_estimators} trees splits into 1 to {self.n_estimators} parts")
        X, Y, _, _ = self._fit_inputs(X, Y)
        require_both_classes(Y, "rf")
        start, stop = self.n_estimators * part // parts, self.n_estimators * (part + 1) // parts
        forest = self._forest(stop, warm_start=True)
        forest.estimators_ = [None] * start  # placeholders: fit draws their seeds, then grows the rest
        with warnings.catch_warnings():
            # its advice is for warm starts on other data; this is the data of every part
            warnings.filterwarnings("ignore", message="class_weight presets", category=UserWarning)
            forest.fit(X, _forest_y(Y))
        del forest.estimators_[:start]
        self.model_ = forest.set_params(n_estimators=self.n_estimators, warm_start=False)
        return self

    @staticmethod
    def join_parts(parts: Sequence[RandomForestHead]) -> RandomForestHead:
        """The forest of :meth:`fit` from its parts (:meth:`fit_part`, given in part order)."""
        head = parts[0]
        head.model_.estimators_ = [tree for p in parts for tree in p.model_.estimators_]
        if len(head.model_.estimators_) != head.n_estimators:
            raise ConfigError(f"the parts hold {len(head.model_.estimators_)} trees, the forest has {head.n_estimators}")
        return head

    def predict_proba(self, X) -> np.ndarray:
        X = self._check_X(X)
        return stack_proba(self.model_.predict_proba(X))


def _forest_y(Y: np.ndarray) -> np.ndarray:
    return Y[:, 0] if Y.shape[1] == 1 else Y  # a forest wants one genre as a 1-d y


def similarity_order(embeddings: np.ndarray, start: int = 0) -> list[int]:
    """A chain order in which each genre follows the most similar genre not yet placed.

    Starting at ``start`` (e.g. the most frequent genre), the walk appends the unplaced genre whose
    text embedding has the highest cosine similarity with the last one placed, so related genres
    (Action, Adventure, Sci-Fi) sit next to each other and each link can use its neighbour.

    Args:
        embeddings: (G, d) one text embedding per genre.
        start: index of the first genre.
    """
    E = l2_normalise(embeddings)
    S = E @ E.T
    order, left = [start], set(range(len(E))) - {start}
    while left:
        last = order[-1]
        nxt = max(sorted(left), key=lambda j: S[last, j])
        order.append(nxt)
        left.remove(nxt)
    return order


class ChainHead(MultiLabelHead):
    """A classifier chain of logistic regressions, trained with the true previous labels.

    scikit-learn's ``ClassifierChain`` with ``cv=None`` feeds each link the true labels of the
    earlier genres while training (teacher forcing) and its own predictions at inference.

    Args:
        order: genre column indices in chain order; ``None`` orders by label frequency, most
            frequent first (the runner passes the text-embedding order when the backbone has a
            text tower, see :func:`similarity_order`).
        Cs: inverse regularisation strengths tried on validation mAP.
        class_weight: ``None`` or ``"balanced"``.
        max_iter: L-BFGS iterations per link.
        random_state: seed.
    """

    def __init__(
        self,
        order: Sequence[int] | None = None,
        Cs: Sequence[float] = (0.001, 0.003, 0.01),
        class_weight: str | None = None,
        max_iter: int = 300,
        random_state: int = 0,
    ):
        self.order = order
        self.Cs = Cs
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X, Y, X_val=None, Y_val=None) -> ChainHead:
        X, Y, X_val, Y_val = self._fit_inputs(X, Y, X_val, Y_val)
        require_both_classes(Y, "chain")
        G = Y.shape[1]
        if self.order is None:
            order = [int(j) for j in np.argsort(-Y.sum(axis=0), kind="stable")]
        else:
            order = [int(j) for j in self.order]
            if sorted(order) != list(range(G)):
                raise ConfigError(f"chain order {order} is not a permutation of the {G} genre columns 0..{G - 1}")
        self.order_ = order

        def make(C: float) -> BaseEstimator:
            base = LogisticRegression(C=C, class_weight=self.class_weight, max_iter=self.max_iter)
            return ClassifierChain(base, order=order, random_state=self.random_state)

        solver = _logistic_solver(X, Y, X_val, self.class_weight, order, self.max_iter)
        self.model_, self.C_, self.search_ = search_on_validation(make, tuple(self.Cs), X, Y, X_val, Y_val, 0.01, solver=solver)
        self.n_iter_ = ovr_n_iter(self.model_)
        return self

    def predict_proba(self, X) -> np.ndarray:
        X = self._check_X(X)
        return np.asarray(self.model_.predict_proba(X), dtype=np.float32)


def _logistic_solver(X, Y, X_val, class_weight, order=None, max_iter=300) -> SideBySideLogistic | None:
    """Every genre's logistic regression solved side by side (:mod:`genrekit.heads.joint`), for
    the C search and the chosen C's model. ``None`` (scikit-learn fits each C) without validation
    data, for a single genre or a constant one (scikit-learn answers those with its own special
    cases)."""
    pos = Y.sum(axis=0)
    if X_val is None or Y.shape[1] < 2 or not ((pos > 0) & (pos < len(Y))).all():
        return None
    return SideBySideLogistic(X, Y, class_weight, order, max_iter=max_iter)


def _svm_solver(X, Y, X_val, class_weight, cv) -> SideBySideCalibratedSVM | None:
    """svc's calibrated SVMs solved side by side, as :func:`_logistic_solver`; ``None`` also when
    ``cv`` is not a number of folds or a genre has fewer than ``cv`` items of a class."""
    pos = Y.sum(axis=0)
    if X_val is None or not isinstance(cv, int) or Y.shape[1] < 2 or not (np.minimum(pos, len(Y) - pos) >= cv).all():
        return None
    return SideBySideCalibratedSVM(X, Y, class_weight, cv)


__all__ = ["ChainHead", "LogRegHead", "RandomForestHead", "SVCHead", "grid_notes", "ovr_n_iter", "positive_columns", "search_on_validation", "similarity_order"]
