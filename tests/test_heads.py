"""Every head is a scikit-learn estimator that learns genres from synthetic features with known structure."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from genrekit.errors import ConfigError, LabelError, UnknownNameError
from genrekit.heads import create_head, get_head_spec, list_heads
from genrekit.heads.balance import imbalance_ratios, oversample_indices
from genrekit.heads.knn import KNNHead, exact_search
from genrekit.heads.sklearn_heads import ChainHead, RandomForestHead, similarity_order
from synthetic import synthetic_features
from genrekit.heads.zeroshot import build_prompt_embeddings, genre_phrase

PREV = [0.5, 0.3, 0.2, 0.1]
# Small settings so the whole file runs in seconds; defaults are tuned for 6,000 x 1280.
FAST = {
    "logreg": {"Cs": (0.01, 0.1)},
    "rf": {"n_estimators": 30},
    "svc": {"Cs": (0.1,), "n_components": 64},
    "mlp": {"hidden": 32, "max_epochs": 15, "patience": 4, "batch_size": 64, "lr": 3e-3},
    "chain": {"Cs": (0.1,)},
    "softf1": {"hidden": 32, "max_epochs": 15, "patience": 4, "batch_size": 128, "lr": 3e-3},
    "knn": {"ks": (5, 15)},
    "zeroshot": {},
}


@pytest.fixture(scope="module")
def data():
    fs = synthetic_features(700, 24, prevalence=PREV, signal=4.0, noise=0.5, seed=0)
    s = {"tr": slice(0, 400), "va": slice(400, 550), "te": slice(550, 700)}
    return fs, s


def _params(name, fs, s):
    p = dict(FAST[name])
    if name == "zeroshot":
        # Prompt embeddings aligned with each genre's mean item: what a good text tower gives.
        X, Y = fs.X[s["tr"]], fs.Y[s["tr"]]
        p["prompt_embeddings"] = np.stack([X[Y[:, j] == 1].mean(0) - X.mean(0) for j in range(Y.shape[1])])
    return p


def test_registry_has_the_eight_heads_and_suggests_close_names():
    assert list_heads() == ["logreg", "rf", "svc", "mlp", "chain", "softf1", "zeroshot", "knn"]
    assert get_head_spec("zeroshot").needs_text and not get_head_spec("logreg").needs_text
    with pytest.raises(UnknownNameError, match="did you mean: logreg"):
        get_head_spec("logrege")


@pytest.mark.parametrize("name", list_heads())
def test_head_learns_the_synthetic_genres(name, data):
    fs, s = data
    head = create_head(name, **_params(name, fs, s))
    clone(head)  # __init__ only stores arguments
    assert head.fit(fs.X[s["tr"]], fs.Y[s["tr"]], fs.X[s["va"]], fs.Y[s["va"]]) is head
    P = head.predict_proba(fs.X[s["te"]])
    assert P.shape == (150, 4) and P.dtype == np.float32
    assert (P >= 0).all() and (P <= 1).all()
    assert roc_auc_score(fs.Y[s["te"]], P, average="macro") > 0.8
    assert set(np.unique(head.predict(fs.X[s["te"]]))) <= {0, 1}
    with pytest.raises(ValueError, match="24 features"):
        head.predict_proba(fs.X[s["te"], :10])
    again = pickle.loads(pickle.dumps(head))
    np.testing.assert_allclose(again.predict_proba(fs.X[s["te"]]), P, atol=1e-6)


@pytest.mark.parametrize("name", ["mlp", "softf1", "rf", "svc"])
def test_seeded_heads_are_reproducible(name, data):
    fs, s = data
    a = create_head(name, **_params(name, fs, s)).fit(fs.X[s["tr"]], fs.Y[s["tr"]], fs.X[s["va"]], fs.Y[s["va"]])
    b = create_head(name, **_params(name, fs, s)).fit(fs.X[s["tr"]], fs.Y[s["tr"]], fs.X[s["va"]], fs.Y[s["va"]])
    np.testing.assert_array_equal(a.predict_proba(fs.X[s["te"]]), b.predict_proba(fs.X[s["te"]]))


@pytest.mark.parametrize("class_weight", [None, "balanced_subsample"])
def test_a_forest_grown_in_parts_is_the_forest_fit_grows(class_weight, data):
    fs, s = data
    X, Y = fs.X[s["tr"]], fs.Y[s["tr"]]
    make = lambda: RandomForestHead(n_estimators=12, class_weight=class_weight, random_state=3)  # noqa: E731
    whole = make().fit(X, Y)
    for parts in (2, 5, 12):
        # each part as it comes back from a worker process, joined in part order
        grown = [pickle.loads(pickle.dumps(make().fit_part(X, Y, i, parts))) for i in range(parts)]
        joined = RandomForestHead.join_parts(grown)
        assert np.array_equal(joined.predict_proba(fs.X), whole.predict_proba(fs.X)), parts
        assert joined.model_.get_params() == whole.model_.get_params()
        for a, b in zip(joined.model_.estimators_, whole.model_.estimators_, strict=True):
            assert np.array_equal(a.tree_.threshold, b.tree_.threshold) and np.array_equal(a.tree_.value, b.tree_.value)
    with pytest.raises(ConfigError, match="12 trees splits into 1 to 12 parts"):
        make().fit_part(X, Y, 0, 13)
    with pytest.raises(ConfigError, match="the parts hold 6 trees, the forest has 12"):
        RandomForestHead.join_parts([make().fit_part(X, Y, 0, 2)])


def test_torch_head_early_stops_without_a_validation_set(data):
    fs, s = data
    # A wide, fast-learning, unregularised net overfits 360 items quickly: validation loss turns.
    h = create_head("mlp", hidden=256, lr=1e-2, weight_decay=0.0, dropout=0.0, max_epochs=200, patience=3)
    h.fit(fs.X[s["tr"]], fs.Y[s["tr"]])
    assert len(h.history_) < 200 and 1 <= h.best_epoch_ <= len(h.history_)


def test_bad_labels_are_one_clear_error(data):
    fs, s = data
    X, Y = fs.X[s["tr"]], fs.Y[s["tr"]].copy()
    with pytest.raises(LabelError, match="rows"):
        create_head("logreg").fit(X, Y[:10])
    Y[:, 2] = 0
    with pytest.raises(LabelError, match="no positives"):
        create_head("chain").fit(X, Y)
    with pytest.raises(ConfigError, match="permutation"):
        ChainHead(order=[0, 0, 1, 2]).fit(X, fs.Y[s["tr"]])


def test_logreg_on_a_genre_of_one_class_predicts_that_class(data):
    fs, s = data
    X = fs.X[s["tr"]]
    for value in (1, 0):  # an all-1 genre used to predict 0
        Y = np.full((len(X), 1), value, np.uint8)
        P = create_head("logreg", Cs=(1.0,)).fit(X, Y).predict_proba(X[:5])
        np.testing.assert_array_equal(P, np.full((5, 1), float(value), np.float32))
    Y = fs.Y[s["tr"]].copy()
    Y[:, 1] = 1  # among other genres too
    P = create_head("logreg", Cs=(1.0,)).fit(X, Y).predict_proba(X[:5])
    np.testing.assert_array_equal(P[:, 1], np.ones(5, np.float32))


def test_search_on_validation_records_every_candidate(data):
    fs, s = data
    h = create_head("logreg", Cs=(0.001, 0.1)).fit(fs.X[s["tr"]], fs.Y[s["tr"]], fs.X[s["va"]], fs.Y[s["va"]])
    # every C of the grid is recorded (and any the search widened to at an edge of it)
    assert {0.001, 0.1} <= set(h.search_) and h.C_ == max(h.search_, key=h.search_.get)


# -- knn: FAISS against the exact oracle ----------------------------------------------------------
@pytest.mark.parametrize("spec,params,min_recall", [("Flat", "", 1.0), ("HNSW32", "efSearch=128", 0.95), ("IVF8,Flat", "nprobe=8", 1.0)])
def test_knn_faiss_returns_the_exact_neighbours(spec, params, min_recall):
    rng = np.random.default_rng(0)
    X, Q = rng.standard_normal((1000, 32)).astype(np.float32), rng.standard_normal((50, 32)).astype(np.float32)
    Y = (rng.random((1000, 3)) < 0.3).astype(np.uint8)
    fast = KNNHead(ks=(10,), index=spec, search_params=params, exact_below=0).fit(X, Y)
    exact = KNNHead(ks=(10,), exact_below=10**9).fit(X, Y)
    assert fast.index_ is not None and exact.index_ is None
    fs_, fi = fast.kneighbors(Q)
    es, ei = exact.kneighbors(Q)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(fi, ei)])
    assert recall >= min_recall
    if min_recall == 1.0:
        np.testing.assert_array_equal(fi, ei)
        np.testing.assert_allclose(fs_, es, atol=1e-5)
        np.testing.assert_allclose(fast.predict_proba(Q), exact.predict_proba(Q), atol=1e-5)
    restored = pickle.loads(pickle.dumps(fast))  # the index travels as bytes
    np.testing.assert_array_equal(restored.kneighbors(Q)[1], fi)


def test_exact_search_is_brute_force_cosine():
    rng = np.random.default_rng(1)
    B, Q = rng.standard_normal((200, 8)).astype(np.float32), rng.standard_normal((7, 8)).astype(np.float32)
    sims, idx = exact_search(Q, B, 5, block=3)
    full = Q @ B.T
    np.testing.assert_array_equal(idx, np.argsort(-full, axis=1)[:, :5])
    np.testing.assert_allclose(sims, np.sort(full, axis=1)[:, ::-1][:, :5], rtol=1e-5)


def test_knn_distance_weighting_favours_the_nearest_item():
    X = np.array([[1, 0], [0.6, 0.4], [0, 1]], np.float32)
    Y = np.array([[1, 0], [0, 1], [0, 1]], np.uint8)
    head = KNNHead(ks=(3,), exact_below=100).fit(X, Y)
    P = head.predict_proba(np.array([[1, 0.01]], np.float32))
    assert P[0, 0] > 0.9  # the near-duplicate outvotes two farther items


def test_bad_faiss_spec_is_a_config_error():
    X = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    with pytest.raises(ConfigError, match="IVF4096"):
        KNNHead(ks=(3,), index="IVF4096,Flat", exact_below=0).fit(X, np.eye(20, 2, dtype=np.uint8))


# -- chain order, zero-shot prompts, oversampling ------------------------------------------------
def test_similarity_order_walks_to_the_most_similar_genre():
    E = np.array([[1, 0, 0], [0, 1, 0], [0.9, 0.1, 0], [0, 0.8, 0.2]], np.float32)
    assert similarity_order(E, start=0) == [0, 2, 1, 3]


def test_chain_defaults_to_frequency_order(data):
    fs, s = data
    h = ChainHead(Cs=(0.1,)).fit(fs.X[s["tr"]], fs.Y[s["tr"]])
    assert h.order_ == [int(j) for j in np.argsort(-fs.Y[s["tr"]].sum(0), kind="stable")]


def test_prompt_embeddings_ensemble_templates_per_genre():
    seen = []

    def encode(texts):
        seen.extend(texts)
        return np.stack([[len(t), t.count("o"), 1.0] for t in texts]).astype(np.float32)

    E = build_prompt_embeddings(encode, ["Horror", "Sci-Fi"], ("a {} movie.", "a {} film."))
    assert seen == ["a horror movie.", "a horror film.", "a science fiction movie.", "a science fiction film."]
    assert E.shape == (2, 3) and np.allclose(np.linalg.norm(E, axis=1), 1)
    assert genre_phrase("Film-Noir") == "film noir"
    with pytest.raises(ConfigError, match="prompt_embeddings"):
        create_head("zeroshot", prompt_embeddings=np.ones((3, 5))).fit(np.ones((4, 5)), np.eye(4, 2, dtype=np.uint8))


def test_oversampling_raises_rare_genres_towards_the_mean_ratio():
    fs = synthetic_features(2000, 4, prevalence=[0.6, 0.3, 0.05, 0.02], seed=3)
    idx = oversample_indices(fs.Y, max_added=0.5, seed=0)
    assert (idx[: len(fs.Y)] == np.arange(len(fs.Y))).all() and len(idx) <= 1.5 * len(fs.Y)
    before, after = imbalance_ratios(fs.Y), imbalance_ratios(fs.Y[idx])
    assert after[3] < before[3] / 2 and after[2] < before[2]
    np.testing.assert_array_equal(idx, oversample_indices(fs.Y, max_added=0.5, seed=0))


def test_a_torch_head_travels_as_arrays_and_unpickles_without_torch(data):
    """A fitted mlp pickles its network as numpy weights: a process that receives it (the heads
    runner's main one) can read its state and save it without torch, and gets the same network
    back when it does run it."""
    import subprocess
    import sys

    fs, s = data
    head = create_head("mlp", max_epochs=3, hidden=16).fit(fs.X[s["tr"]], fs.Y[s["tr"]], fs.X[s["va"]], fs.Y[s["va"]])
    blob = pickle.dumps(head)
    code = ("import pickle, sys; h = pickle.loads(sys.stdin.buffer.read()); meta, arrays = h.get_state(); "
            "print(sorted(arrays), meta['best_epoch_'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert out.stdout.decode().split() == ["['0.bias',", "'0.weight',", "'3.bias',", "'3.weight']", str(head.best_epoch_), "False"]
    again = pickle.loads(blob)
    assert "module_" not in again.__dict__ and "_module" not in again.__dict__  # weights only, until used
    for k, v in head.get_state()[1].items():
        np.testing.assert_array_equal(again.get_state()[1][k], v)
    np.testing.assert_array_equal(again.predict_proba(fs.X[s["te"]]), head.predict_proba(fs.X[s["te"]]))
    assert not hasattr(create_head("mlp"), "module_")  # unfitted: no network
    # the network it was fitted with, whatever the parameters say since; threads all find it
    from concurrent.futures import ThreadPoolExecutor

    renamed = pickle.loads(blob).set_params(hidden=5)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: renamed.predict_proba(fs.X[s["te"]]), range(8)))
    for P in got:
        np.testing.assert_array_equal(P, head.predict_proba(fs.X[s["te"]]))


def test_skops_is_imported_without_torch_and_trusts_the_same_estimators():
    """genrekit's skops import holds off scikit-learn's torch adapter while skops lists the
    estimators (else that walk imports torch), lists what a plain import lists, and leaves the
    adapter importable."""
    import subprocess
    import sys

    listed = "import skops.io._trusted_types as t; print('torch' in sys.modules, sorted(t.SKLEARN_ESTIMATOR_TYPE_NAMES))"
    ours = "import sys; from genrekit.heads.saved import skops_io; skops_io(); " + listed
    plain = "import sys; import skops.io; " + listed
    (ours_torch, ours_types), (plain_torch, plain_types) = (
        subprocess.run([sys.executable, "-c", c], capture_output=True, text=True, timeout=120, check=True).stdout.split(" ", 1) for c in (ours, plain)
    )
    assert (ours_torch, plain_torch) == ("False", "True")  # the plain import does load torch: the test can fail
    assert ours_types == plain_types and "RandomForestClassifier" in ours_types
    after = "import sys; from genrekit.heads.saved import skops_io; skops_io(); import sklearn.externals.array_api_compat.torch; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", after], capture_output=True, text=True, timeout=120, check=True).stdout.strip() == "True"
