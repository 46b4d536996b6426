"""The C searches solve every genre side by side and reach scikit-learn's own solutions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.multioutput import ClassifierChain
from sklearn.svm import LinearSVC

from genrekit.evaluation.metrics import macro_average_precision
from genrekit.heads.joint import SideBySideCalibratedSVM, SideBySideLogistic, lbfgs_columns
from genrekit.heads.sklearn_heads import LogRegHead, search_on_validation
from synthetic import synthetic_features


@pytest.fixture(scope="module")
def data():
    fs = synthetic_features(600, 20, prevalence=[0.5, 0.3, 0.2, 0.1], signal=1.5, noise=1.0, seed=1)
    X = ((fs.X - fs.X.mean(0)) / fs.X.std(0)).astype(np.float32)
    return X[:400], fs.Y[:400], X[400:], fs.Y[400:]


def test_lbfgs_columns_solves_independent_quadratics():
    rng = np.random.default_rng(0)
    A = np.stack([np.diag(rng.uniform(0.5, 20, 5)) for _ in range(3)])  # three problems, three curvatures
    target = rng.normal(size=(5, 3))

    def evaluate(theta, cols):
        d = theta - target[:, cols]
        g = np.einsum("kij,jk->ik", A[cols], d)
        return 0.5 * np.einsum("ik,ik->k", d, g), g

    x, iters = lbfgs_columns(evaluate, np.zeros((5, 3)), tol=1e-8, max_iter=200)
    np.testing.assert_allclose(x, target, atol=1e-6)
    assert (iters > 0).all()


@pytest.mark.parametrize("class_weight", [None, "balanced"])
@pytest.mark.parametrize("chain", [False, True])
def test_side_by_side_logistic_matches_sklearn(data, class_weight, chain):
    X, Y, Xv, Yv = data
    C = 0.05
    order = [2, 0, 3, 1] if chain else None
    solver = SideBySideLogistic(X, Y, class_weight, order, tol=1e-6, max_iter=1000)
    base = LogisticRegression(C=C, class_weight=class_weight, tol=1e-8, max_iter=2000)
    ref = (ClassifierChain(base, order=order) if chain else OneVsRestClassifier(base)).fit(X, Y)
    # float32 products over X: agreement to ~1e-4 (the search needs the validation mAP to 1e-3)
    np.testing.assert_allclose(solver.predict_proba(C, Xv), ref.predict_proba(Xv), atol=1e-3)
    assert solver.validation_map(C, Xv, Yv) == pytest.approx(macro_average_precision(Yv, ref.predict_proba(Xv)), abs=1e-3)
    # the head's model: scikit-learn's own estimator holding the solution, saved and loaded as the head's entry allows
    made = solver.fitted(clone(ref), C)
    np.testing.assert_allclose(made.predict_proba(Xv), solver.predict_proba(C, Xv), atol=1e-5)
    np.testing.assert_allclose(made.predict(Xv), ref.predict(Xv))
    # in the dtype scikit-learn's fit on float32 gives (predicting then reads X as it is)
    assert {e.coef_.dtype for e in made.estimators_} == {e.coef_.dtype for e in ref.estimators_} == {np.dtype(np.float32)}
    np.testing.assert_allclose(_skops_round_trip(made, "chain" if chain else "logreg").predict_proba(Xv), made.predict_proba(Xv))


def test_side_by_side_calibrated_svm_matches_sklearn(data):
    X, Y, Xv, Yv = data
    C = 0.3
    solver = SideBySideCalibratedSVM(X, Y, cv=3, tol=1e-7, max_iter=3000)
    ref = OneVsRestClassifier(CalibratedClassifierCV(LinearSVC(C=C, dual=False, tol=1e-8), method="sigmoid", cv=3)).fit(X, Y)
    np.testing.assert_allclose(solver.predict_proba(C, Xv), ref.predict_proba(Xv), atol=2e-3)
    made = solver.fitted(clone(ref), C)
    np.testing.assert_allclose(made.predict_proba(Xv), solver.predict_proba(C, Xv), atol=1e-5)
    np.testing.assert_allclose(_skops_round_trip(made, "svc").predict_proba(Xv), made.predict_proba(Xv))
    assert len(made.estimators_[0].calibrated_classifiers_) == 3
    svms = [cc.estimator for e in (made, ref) for cc in e.estimators_[0].calibrated_classifiers_]
    assert {s.coef_.dtype for s in svms} == {np.dtype(np.float64)}  # liblinear's, as scikit-learn fits it


def _skops_round_trip(model, head: str):
    import skops.io as sio

    from genrekit.heads.registry import get_head_spec

    return sio.loads(sio.dumps(model), trusted=sorted(get_head_spec(head).skops_types()))


class _Solver:
    """A side-by-side solver's interface with made-up validation scores."""

    def __init__(self, scores=None):
        self.scores, self.tried = scores or {}, []

    def validation_map(self, C, X_val, Y_val):
        self.tried.append(C)
        return self.scores[C]

    def fitted(self, model, C):
        model.fitted_at = C
        return model


class _Unfitted:
    def __init__(self, C):
        self.C = C

    def fit(self, X, Y):
        raise AssertionError("the solver makes the model; nothing is fitted again")


def test_search_walks_up_from_the_smallest_c_and_stops_after_two_worse():
    solver = _Solver({0.001: 0.30, 0.01: 0.35, 0.1: 0.33, 1.0: 0.31, 10.0: 0.5})  # 10 would win, but lies past the fall
    model, C, record = search_on_validation(_Unfitted, (10.0, 1.0, 0.1, 0.01, 0.001), None, None, np.zeros(1), np.zeros(1), 0.1, solver=solver)
    assert solver.tried == [0.001, 0.01, 0.1, 1.0] and C == 0.01 and model.C == model.fitted_at == 0.01 and set(record) == set(solver.tried)


def test_one_c_with_validation_is_solved_side_by_side_as_the_search_is(data):
    """The runner's baseline (scikit-learn's defaults: C=1, max_iter=100) is one C: no search, and
    its model is the side-by-side solution, as a searched head's chosen C is."""
    model, C, record = search_on_validation(_Unfitted, (1,), None, None, np.zeros(1), np.zeros(1), 0.1, solver=_Solver())
    assert C == model.fitted_at == 1.0 and isinstance(C, float) and record == {}

    X, Y, Xv, Yv = data
    head = LogRegHead(Cs=(1.0,), max_iter=100).fit(X, Y, Xv, Yv)
    ref = OneVsRestClassifier(LogisticRegression(C=1.0, max_iter=100)).fit(X, Y)
    np.testing.assert_allclose(head.predict_proba(Xv), ref.predict_proba(Xv), atol=2e-3)
    assert head.C_ == 1.0 and head.search_ == {}
