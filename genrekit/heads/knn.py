"""``knn``: genres by distance-weighted votes of the nearest training items, cosine similarity.

Neighbours come from a FAISS index built from a spec string (``"Flat"`` exact, ``"HNSW32"``,
``"IVF256,Flat"`` ...) with inner product on L2-normalised vectors, i.e. cosine similarity. Small
training sets (below ``exact_below`` rows) use an exact numpy search instead, which is also the
oracle the FAISS path is tested against.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from genrekit.errors import ConfigError, MissingDependencyError
from genrekit.evaluation.metrics import macro_average_precision
from genrekit.heads.base import MultiLabelHead, l2_normalise

log = logging.getLogger(__name__)


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise MissingDependencyError(f"the knn head's FAISS path needs faiss ({e}); pip install faiss-cpu") from None
    return faiss


def exact_search(queries: np.ndarray, base: np.ndarray, k: int, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product search, in blocks of queries (memory O(block x n)).

    Ties are broken by the lower base index, so results are deterministic.

    Returns:
        (similarities (nq, k) float32, indices (nq, k) int64), best first.
    """
    k = min(k, len(base))
    sims = np.empty((len(queries), k), np.float32)
    idx = np.empty((len(queries), k), np.int64)
    # float64 products: a float32 BLAS sums in an order that depends on the batch shape, and the
    # vote weight 1 / (1 - cosine) turns that last-bit noise into visible probability changes.
    base = base.astype(np.float64)
    for s in range(0, len(queries), block):
        S = queries[s : s + block].astype(np.float64) @ base.T
        part = np.argpartition(-S, k - 1, axis=1)[:, :k] if k < S.shape[1] else np.tile(np.arange(S.shape[1]), (len(S), 1))
        ps = np.take_along_axis(S, part, axis=1)
        order = np.lexsort((part, -ps), axis=1)
        idx[s : s + block] = np.take_along_axis(part, order, axis=1)
        sims[s : s + block] = np.take_along_axis(ps, order, axis=1)
    return sims, idx


def vote(sims: np.ndarray, idx: np.ndarray, Y: np.ndarray, weights: str = "distance", eps: float = 1e-3) -> np.ndarray:
    """Each genre's share of the neighbours' votes, a vote weighing 1 / (cosine distance + eps)."""
    if weights == "distance":
        w = 1.0 / (np.clip(1.0 - sims, 0.0, None) + eps)
    elif weights == "uniform":
        w = np.ones_like(sims)
    else:
        raise ConfigError(f"knn weights={weights!r}; expected 'distance' or 'uniform'")
    w = np.where(idx >= 0, w, 0.0)  # FAISS pads missing neighbours with -1
    P = np.einsum("nk,nkg->ng", w, Y[np.maximum(idx, 0)].astype(np.float32))
    P /= np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    return np.clip(P, 0.0, 1.0, out=P).astype(np.float32)  # rounding can overshoot 1 by an ulp


class KNNHead(MultiLabelHead):
    """k nearest neighbours over a FAISS index, cosine similarity, distance-weighted votes.

    Args:
        ks: numbers of neighbours tried; the best validation mAP wins (one search at the largest
            k serves all). One value: no search.
        index: FAISS ``index_factory`` spec; built with inner-product metric on normalised vectors.
        search_params: FAISS parameters for searching, e.g. ``"nprobe=16"`` or ``"efSearch=128"``.
        exact_below: training sets smaller than this use the exact numpy path (0: always FAISS).
        weights: ``"distance"`` (1 / cosine distance) or ``"uniform"``.
        n_threads: FAISS OpenMP threads (``None``: FAISS default).
    """

    def __init__(
        self,
        ks: Sequence[int] = (5, 10, 25, 50),
        index: str = "Flat",
        search_params: str = "",
        exact_below: int = 2048,
        weights: str = "distance",
        n_threads: int | None = None,
    ):
        self.ks = ks
        self.index = index
        self.search_params = search_params
        self.exact_below = exact_below
        self.weights = weights
        self.n_threads = n_threads

    def fit(self, X, Y, X_val=None, Y_val=None) -> KNNHead:
        X, Y, X_val, Y_val = self._fit_inputs(X, Y, X_val, Y_val)
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"knn ks={tuple(self.ks)}; expected positive neighbour counts such as (5, 10, 25)")
        self.X_ = l2_normalise(X)
        self.Y_ = Y
        self.index_ = self._build_index(self.X_) if len(X) >= self.exact_below else None
        ks = sorted({min(int(k), len(X)) for k in self.ks})
        self.search_ = {}
        if X_val is None or len(ks) == 1:
            self.k_ = ks[-1] if len(ks) == 1 else min(ks, key=lambda k: abs(k - 25))
            return self
        sims, idx = self.kneighbors(X_val, ks[-1])
        for k in ks:
            self.search_[k] = macro_average_precision(Y_val, vote(sims[:, :k], idx[:, :k], Y, self.weights))
        self.k_ = max(ks, key=lambda k: (self.search_[k], -k))
        log.info("knn validation mAP by k: %s -> k=%d", {k: round(v, 4) for k, v in self.search_.items()}, self.k_)
        return self

    def _build_index(self, Xn: np.ndarray):
        faiss = _faiss()
        if self.n_threads:
            faiss.omp_set_num_threads(self.n_threads)
        try:
            index = faiss.index_factory(Xn.shape[1], self.index, faiss.METRIC_INNER_PRODUCT)
            if not index.is_trained:
                index.train(Xn)
            index.add(Xn)
            if self.search_params:
                faiss.ParameterSpace().set_index_parameters(index, self.search_params)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
            raise ConfigError(
                f"FAISS index {self.index!r} (params {self.search_params!r}) failed on {len(Xn)} x {Xn.shape[1]} "
                f"vectors: {first}; use a smaller spec (e.g. 'Flat', 'HNSW32', or IVF with fewer lists)"
            ) from None
        return index

    def kneighbors(self, X, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarities and indices of the ``k`` nearest training items, best first."""
        Xn = l2_normalise(self._check_X(X))
        k = min(k or self.k_, len(self.X_))
        if self.index_ is None:
            return exact_search(Xn, self.X_, k)
        if self.n_threads:
            _faiss().omp_set_num_threads(self.n_threads)
        sims, idx = self.index_.search(Xn, k)
        return sims.astype(np.float32), idx.astype(np.int64)

    def predict_proba(self, X) -> np.ndarray:
        sims, idx = self.kneighbors(X)
        return vote(sims, idx, self.Y_, self.weights)

    # -- pickling and saving: a FAISS index is a C++ object, so it travels as its serialised bytes
    def __getstate__(self):
        # A copy: object.__getstate__ returns the live __dict__, and deepcopy/pickle must not
        # turn the fitted index of the original into bytes.
        state = dict(super().__getstate__())
        if state.get("index_") is not None:
            state["index_"] = _faiss().serialize_index(state["index_"])
        return state

    def __setstate__(self, state):
        if state.get("index_") is not None:
            state = {**state, "index_": _faiss().deserialize_index(np.asarray(state["index_"], dtype=np.uint8))}
        super().__setstate__(state)

    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Fitted state as (JSON-able dict, named arrays); the index as its serialised bytes."""
        meta = {
            "n_features_in_": int(self.n_features_in_),
            "n_genres_": int(self.n_genres_),
            "k_": int(self.k_),
            "search_": {str(k): v for k, v in self.search_.items()},
        }
        arrays = {"X_": self.X_, "Y_": self.Y_}
        if self.index_ is not None:
            arrays["index_"] = _faiss().serialize_index(self.index_)
        return meta, arrays

    def set_state(self, meta: dict, arrays: dict[str, np.ndarray]) -> KNNHead:
        """Restore what :meth:`get_state` returned."""
        self.n_features_in_ = meta["n_features_in_"]
        self.n_genres_ = meta["n_genres_"]
        self.k_ = meta["k_"]
        self.classes_ = [np.array([0, 1]) for _ in range(self.n_genres_)]
        self.search_ = {int(k): v for k, v in meta["search_"].items()}
        self.X_, self.Y_ = arrays["X_"].astype(np.float32), arrays["Y_"].astype(np.uint8)
        self.index_ = _faiss().deserialize_index(arrays["index_"]) if "index_" in arrays else None
        return self
