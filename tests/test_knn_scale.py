"""The knn head at scale: index chosen by size, sampled training, blocked search, built from a streamed store."""

from __future__ import annotations

import numpy as np
import pytest

import genrekit.heads.knn as knn
from genrekit.heads.knn import KNNHead, exact_search, exact_search_batches, knn_from_store
from genrekit.store import FeatureStore, StoreHeader, StoreWriter

pytest.importorskip("faiss")


def clustered(n, dim=32, clusters=40, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    c = rng.integers(0, clusters, n)
    X = centres[c] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    Y = np.stack([(c % 3) == 0, (c % 5) == 1, (c % 2) == 0], axis=1).astype(np.uint8)
    return X, Y


def test_exact_search_over_batches_equals_one_search():
    X, _ = clustered(1000)
    Q = X[:50] / np.linalg.norm(X[:50], axis=1, keepdims=True)
    B = X / np.linalg.norm(X, axis=1, keepdims=True)
    s1, i1 = exact_search(Q, B, 7)
    s2, i2 = exact_search_batches(Q, (B[s : s + 128] for s in range(0, 1000, 128)), 7)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, rtol=1e-6)


def test_auto_index_is_exact_when_small_and_ivf_when_large(monkeypatch):
    X, Y = clustered(3000)
    small = KNNHead(ks=(10,)).fit(X[:500], Y[:500])
    assert small.index_ is None and small.recall_ == 1.0
    monkeypatch.setattr(knn, "AUTO_EXACT_BELOW", 1000)
    big = KNNHead(ks=(10,)).fit(X, Y)
    assert big.index_spec_.startswith("IVF") and big.index_.ntotal == 3000
    assert 0.9 <= big.recall_ <= 1.0
    exact = KNNHead(ks=(10,), index="Flat", exact_below=10**9).fit(X, Y)
    assert np.abs(big.predict_proba(X[:200]) - exact.predict_proba(X[:200])).mean() < 0.05


def _store(path, X, Y, split=None):
    header = StoreHeader(encoder={"family": "test", "name": "synthetic"}, preprocessing={}, normalisation="none",
                         modality="image", dim=X.shape[1], dtype="float32", genres=("A", "B", "C"), config={})  # fmt: skip
    w = StoreWriter(path, header)
    ids = [f"i{k:05d}" for k in range(len(X))]
    for s in range(0, len(X), 500):
        w.write_part(ids[s : s + 500], X[s : s + 500], Y[s : s + 500], [""] * len(X[s : s + 500]), [-1] * len(X[s : s + 500]))
    store = w.finalize()
    if split is not None:
        store.write_split(dict(zip(ids, split)))
    return store


def test_knn_from_a_streamed_store_matches_the_in_memory_head(tmp_path, monkeypatch):
    X, Y = clustered(3000, seed=1)
    split = np.where(np.arange(3000) % 10 == 0, "test", "train")
    store = _store(tmp_path / "s.h5", X, Y, split)
    monkeypatch.setattr(knn, "AUTO_EXACT_BELOW", 1000)
    monkeypatch.setattr(FeatureStore, "load", lambda self: pytest.fail("the store was loaded whole"))
    head = knn_from_store(store, k=10, batch_size=256)
    train = split == "train"
    assert head.X_ is None and head.index_.ntotal == train.sum()
    np.testing.assert_array_equal(head.Y_, Y[train])
    assert head.recall_ >= 0.9
    monkeypatch.undo()
    ref = KNNHead(ks=(10,), index="Flat", exact_below=10**9).fit(X[train], Y[train])
    assert np.abs(head.predict_proba(X[~train]) - ref.predict_proba(X[~train])).mean() < 0.05
    meta, arrays = head.get_state()
    again = KNNHead(ks=(10,)).set_state(meta, arrays)
    assert "X_" not in arrays and again.recall_ == head.recall_
    np.testing.assert_allclose(again.predict_proba(X[:50]), head.predict_proba(X[:50]))


def test_a_small_store_is_loaded_and_searched_exactly(tmp_path):
    X, Y = clustered(400, seed=2)
    head = knn_from_store(_store(tmp_path / "s.h5", X, Y), k=5)
    assert head.index_ is None and head.Y_.shape == (400, 3)
