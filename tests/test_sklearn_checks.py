"""scikit-learn's own estimator checks over every registered head, and sklearn's tools on heads.

Heads are multi-label only (``Y`` is (n, G), one genre is (n, 1)) and say so in their tags, so
scikit-learn reshapes its targets to (n, 1) for most checks. The checks below that still cannot
apply are listed per head with the reason (run ``pytest -rX`` to see any that start to pass).
The slowest part is the torch heads (``mlp``, ``softf1``): importing torch and many tiny fits.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from genrekit.heads import HEADS, create_head
from genrekit.heads.zeroshot import ZeroShotHead

# Small settings: the checks fit each head ~60 times on tens of rows.
SMALL: dict[str, dict] = {
    "logreg": {"Cs": (1.0,), "max_iter": 100},
    "rf": {"n_estimators": 5, "n_jobs": 1},
    "svc": {"Cs": (1.0,), "n_components": 16, "cv": 2},
    "mlp": {"hidden": 8, "max_epochs": 3, "patience": 2, "batch_size": 64, "n_threads": 1},
    "chain": {"Cs": (1.0,), "max_iter": 100},
    "softf1": {"hidden": 8, "max_epochs": 3, "patience": 2, "n_threads": 1},
    "zeroshot": {},
    "knn": {"ks": (3,)},
}


class CheckedZeroShotHead(ZeroShotHead):
    """``zeroshot`` with prompt embeddings made to the check data's shape.

    The real head takes (n_genres, n_features) prompt embeddings from the item encoder's text
    tower, a parameter that depends on the data; scikit-learn's checks use many shapes. Only that
    is supplied here (seeded, in ``fit``); every other line run is :class:`ZeroShotHead`'s.
    """

    def fit(self, X, Y, X_val=None, Y_val=None):
        if self.prompt_embeddings is None and np.ndim(X) == 2 and np.ndim(Y) == 2:
            rng = np.random.default_rng(0)
            self.prompt_embeddings = rng.standard_normal((np.shape(Y)[1], np.shape(X)[1])).astype(np.float32)
            try:
                return super().fit(X, Y, X_val, Y_val)
            finally:
                self.prompt_embeddings = None  # fit must not change a parameter
        return super().fit(X, Y, X_val, Y_val)


def checked_heads() -> list:
    heads = []
    for name in HEADS:
        heads.append(CheckedZeroShotHead(**SMALL[name]) if name == "zeroshot" else create_head(name, **SMALL[name]))
    return heads


ONE_D_Y = "gives a 1-d y; a head takes (n, G) genre columns (one genre is an (n, 1) column)"
NOT_0_1 = "its binary labels are {1, 2}; a genre column holds 0 and 1 only"
# Checks that do not apply to multi-label-only estimators, for every head.
MULTI_LABEL_ONLY: dict[str, str] = {
    "check_classifiers_one_label": ONE_D_Y,
    "check_classifiers_classes": ONE_D_Y,
    "check_class_weight_classifiers": ONE_D_Y,
    "check_estimators_dtypes": NOT_0_1,
    "check_classifier_data_not_an_array": NOT_0_1,
    "check_fit2d_1feature": NOT_0_1,
    "check_classifiers_regression_target": ONE_D_Y,
    "check_classifiers_train": "gives a (n, 1) y, then asserts a 1-d prediction; a head predicts (n, G) = (n, 1)",
    "check_classifier_not_supporting_multiclass": "wants scikit-learn's exact sentence 'Only binary classification is "
    "supported.'; the LabelError names the multiclass values and says genres are 0/1 columns",
}
PROBA_AT_0_OR_1 = "asserts probabilities strictly inside (0, 1); {} are exactly 0 or 1 where all agree"
PER_HEAD: dict[str, dict[str, str]] = {  # by class name
    "CheckedZeroShotHead": {  # the one head with a decision_function
        "check_decision_proba_consistency": ONE_D_Y,
        "check_classifier_multioutput": "indexes classes_ as one array with decision_function > 0; heads keep "
        "RandomForestClassifier's list of per-genre class arrays, which scikit-learn's scorers need"
    },
    "RandomForestHead": {"check_classifiers_multilabel_output_format_predict_proba": PROBA_AT_0_OR_1.format("leaf frequencies of a forest")},
    "KNNHead": {"check_classifiers_multilabel_output_format_predict_proba": PROBA_AT_0_OR_1.format("neighbour vote shares")},
}


# sklearn compares predictions of shuffled rows at rtol 1e-7; on CPUs with AVX-512 (every CPU with
# native bf16) the BLAS kernels round a row's float32 dot product differently by its position in
# the block, one float32 step apart. Elsewhere the check passes and runs as usual.
SAMPLE_ORDER = ("one float32 step: AVX-512 BLAS kernels round a float32 row by its place in the block, 1 ulp over "
                "sklearn's rtol 1e-7 (CPUs with native bf16 all have AVX-512)")  # fmt: skip
AVX512_BLAS = {"skylakex", "cooperlake", "sapphirerapids"}  # OpenBLAS core names of its AVX-512 kernels


def avx512_blas() -> bool:
    """Whether numpy's or scipy's BLAS runs AVX-512 kernels here (threadpoolctl names the core)."""
    from threadpoolctl import threadpool_info

    return any(str(i.get("architecture") or "").lower() in AVX512_BLAS for i in threadpool_info() if i.get("user_api") == "blas")


def expected_failed_checks(head) -> dict[str, str]:
    from genrekit.backbones.base import cpu_has_bf16

    out = {**MULTI_LABEL_ONLY, **PER_HEAD.get(type(head).__name__, {})}
    if avx512_blas() or cpu_has_bf16():
        out["check_methods_sample_order_invariance"] = SAMPLE_ORDER
    return out


@parametrize_with_checks(checked_heads(), expected_failed_checks=expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_the_sample_order_check_is_an_expected_failure_on_bf16_native_cpus(monkeypatch):
    import genrekit.backbones.base as base

    head = create_head("logreg")
    monkeypatch.setattr(base, "cpu_has_bf16", lambda: True)
    assert expected_failed_checks(head)["check_methods_sample_order_invariance"] == SAMPLE_ORDER
    monkeypatch.setattr(base, "cpu_has_bf16", lambda: False)
    assert ("check_methods_sample_order_invariance" in expected_failed_checks(head)) == avx512_blas()


# -- what the checks do not cover ------------------------------------------------------------------
def genre_directions(G: int, d: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((G, d)).astype(np.float32)


def multilabel_data(n=90, d=6, G=3, seed=0):
    """Items near the sum of their genres' directions (the zeroshot head gets those as prompts)."""
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, G)) < 0.4).astype(np.int64)
    Y[:3], Y[3:6] = 1, 0  # every genre has both classes in any fold
    X = (Y @ genre_directions(G, d) * 2.0 + rng.standard_normal((n, d))).astype(np.float32)
    return X, Y


def quick_head(name: str, G: int, d: int):
    if name == "zeroshot":
        return ZeroShotHead(prompt_embeddings=genre_directions(G, d))
    if name in ("mlp", "softf1"):  # enough epochs to learn the synthetic genres
        return create_head(name, **{**SMALL[name], "lr": 1e-2, "max_epochs": 60, "patience": 15})
    return create_head(name, **SMALL[name])


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_raises_not_fitted_before_fit(name):
    head = quick_head(name, 3, 6)
    X, _ = multilabel_data()
    for method in ("predict", "predict_proba"):
        with pytest.raises(NotFittedError):
            getattr(head, method)(X)


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_fits_one_genre_and_exposes_classes(name):
    X, Y = multilabel_data(G=1)
    head = quick_head(name, 1, X.shape[1]).fit(X, Y)
    P, Yp = head.predict_proba(X), head.predict(X)
    assert P.shape == (len(X), 1) and Yp.shape == (len(X), 1)
    assert Yp.dtype == np.int64
    assert [c.tolist() for c in head.classes_] == [[0, 1]]


@pytest.mark.parametrize("name", ["logreg", "chain", "mlp", "softf1", "svc"])
def test_iterative_heads_record_n_iter(name):
    X, Y = multilabel_data()
    head = quick_head(name, 3, X.shape[1]).fit(X, Y)
    assert np.all(np.asarray(head.n_iter_) >= 1)


@pytest.mark.parametrize("scoring", ["average_precision", "roc_auc", "f1_micro"])
@pytest.mark.parametrize("name", list(HEADS))
def test_sklearn_scorers_work_in_cross_val_score(name, scoring):
    X, Y = multilabel_data()
    scores = cross_val_score(quick_head(name, Y.shape[1], X.shape[1]), X, Y, cv=KFold(3, shuffle=True, random_state=0), scoring=scoring)
    assert scores.shape == (3,) and np.all(np.isfinite(scores))
    assert scores.mean() > (0.7 if scoring != "f1_micro" else 0.55)  # chance: AP ~0.45, ROC AUC 0.5


@pytest.mark.parametrize(
    "name, grid",
    [("logreg", {"Cs": [(0.01,), (1.0,)]}), ("knn", {"ks": [(3,), (9,)]}), ("rf", {"min_samples_leaf": [1, 5]}),
     ("chain", {"Cs": [(0.01,), (1.0,)]})],
)  # fmt: skip
def test_grid_search_with_multilabel_scorers(name, grid):
    X, Y = multilabel_data()
    gs = GridSearchCV(quick_head(name, 3, X.shape[1]), grid, scoring=["average_precision", "roc_auc", "f1_micro"],
                      refit="average_precision", cv=KFold(3, shuffle=True, random_state=0))  # fmt: skip
    gs.fit(X, Y)
    assert set(gs.best_params_) == set(grid)
    assert np.all(np.isfinite(gs.cv_results_["mean_test_roc_auc"]))
    assert gs.predict(X).shape == Y.shape


def test_deepcopy_and_pickle_of_a_faiss_knn_leave_the_original_working():
    pytest.importorskip("faiss")
    X, Y = multilabel_data()
    head = create_head("knn", ks=(5,), exact_below=0).fit(X, Y)  # exact_below=0: the FAISS index
    before = head.predict_proba(X)
    twin = copy.deepcopy(head)
    blob = pickle.dumps(head)
    assert not isinstance(head.index_, (bytes, np.ndarray)), "pickling serialised the live index"
    np.testing.assert_array_equal(head.predict_proba(X), before)
    np.testing.assert_array_equal(twin.predict_proba(X), before)
    np.testing.assert_array_equal(pickle.loads(blob).predict_proba(X), before)
    np.testing.assert_array_equal(clone(head).fit(X, Y).predict_proba(X), before)
