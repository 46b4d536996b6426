"""``knn``: genres by distance-weighted votes of the nearest training items, cosine similarity.

Neighbours come from a FAISS index built from a spec string (``"Flat"`` exact, ``"HNSW32"``,
``"IVF256,Flat"`` ...) with inner product on L2-normalised vectors, i.e. cosine similarity. Small
training sets (below ``exact_below`` rows) use an exact numpy search instead, which is also the
oracle the FAISS path is tested against.

The default ``index="auto"`` picks by size: the exact numpy search below :data:`AUTO_EXACT_BELOW`
training rows (on CPU it beats FAISS ``Flat``, and below that size it also beats building an
approximate index; benchmarks/README.md), an IVF index above it (``nlist`` about 4 sqrt(n),
trained on a sample of 64 vectors per list, searched with ``nprobe=16``). Every approximate
index reports its recall@k against the exact search on a sample of queries (``recall_``).
:func:`knn_from_store` builds the head from a store streamed in batches, never loading it whole.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from genrekit.errors import ConfigError, MissingDependencyError
from genrekit.evaluation.metrics import macro_average_precision
from genrekit.heads.base import MultiLabelHead, l2_normalise

log = logging.getLogger(__name__)

# Below this many training rows the exact numpy search is the fastest path, counting the index
# build (the sizes mode of benchmarks/bench_knn.py); above it an IVF index.
AUTO_EXACT_BELOW = 50_000
TRAIN_PER_LIST = 64  # training vectors per IVF list (FAISS warns below 39)
SEARCH_BLOCK = 16_384  # queries per FAISS search call: bounded memory for any number of queries
RECALL_QUERIES = 256


def auto_index(n: int) -> tuple[str | None, str]:
    """(FAISS spec or ``None`` for exact search, search parameters) for ``n`` training rows."""
    if n < AUTO_EXACT_BELOW:
        return None, ""
    nlist = int(2 ** round(np.log2(4 * np.sqrt(n))))
    return f"IVF{nlist},Flat", "nprobe=16"


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
        index: FAISS ``index_factory`` spec, built with inner-product metric on normalised vectors,
            or ``"auto"``: exact search below :data:`AUTO_EXACT_BELOW` rows, IVF above.
        search_params: FAISS parameters for searching, e.g. ``"nprobe=16"`` or ``"efSearch=128"``.
        exact_below: training sets smaller than this use the exact numpy path (0: always FAISS).
        weights: ``"distance"`` (1 / cosine distance) or ``"uniform"``.
        n_threads: FAISS OpenMP threads (``None``: FAISS default).
    """

    def __init__(
        self,
        ks: Sequence[int] = (5, 10, 25, 50),
        index: str = "auto",
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
        spec, params = self._spec(len(X))
        self.index_ = self._build_index(self.X_, spec, params) if spec else None
        self.recall_ = self._recall(X_val if X_val is not None else X) if self.index_ is not None else 1.0
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

    def _spec(self, n: int) -> tuple[str | None, str]:
        """The FAISS spec and search parameters for ``n`` rows (``None``: exact numpy search)."""
        if self.index == "auto":
            spec, params = auto_index(n)
            return spec, self.search_params or params
        return (self.index if n >= self.exact_below else None), self.search_params

    def _build_index(self, Xn: np.ndarray, spec: str, params: str, batches=None):
        """A trained FAISS index of ``Xn`` (or, when ``batches`` is given, of the normalised batches it yields,
        trained on ``Xn`` as the sample)."""
        faiss = _faiss()
        if self.n_threads:
            faiss.omp_set_num_threads(self.n_threads)
        try:
            index = faiss.index_factory(Xn.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
            if not index.is_trained:
                nlist = getattr(faiss.extract_index_ivf(index), "nlist", 0) if "IVF" in spec else 0
                rows = np.random.default_rng(0).permutation(len(Xn))[: max(nlist * TRAIN_PER_LIST, 1)] if nlist else slice(None)
                index.train(np.ascontiguousarray(Xn[rows]))
            for block in batches if batches is not None else (Xn[s : s + SEARCH_BLOCK] for s in range(0, len(Xn), SEARCH_BLOCK)):
                index.add(np.ascontiguousarray(block))
            if params:
                faiss.ParameterSpace().set_index_parameters(index, params)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
            raise ConfigError(
                f"FAISS index {spec!r} (params {params!r}) failed on {len(Xn)}+ x {Xn.shape[1]} "
                f"vectors: {first}; use a smaller spec (e.g. 'Flat', 'HNSW32', or IVF with fewer lists)"
            ) from None
        self.index_spec_ = spec
        return index

    def _recall(self, queries: np.ndarray, k: int = 10, exact=None) -> float:
        """recall@k of the FAISS index against the exact search, on a sample of ``queries``."""
        Q = l2_normalise(queries[np.random.default_rng(1).permutation(len(queries))[:RECALL_QUERIES]])
        k = min(k, self.index_.ntotal)
        _, found = self.index_.search(Q, k)
        _, true = exact(Q, k) if exact is not None else exact_search(Q, self.X_, k)
        r = float(np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found, true)]))
        log.info("knn %s recall@%d against exact search: %.3f", self.index_spec_, k, r)
        return r

    def kneighbors(self, X, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarities and indices of the ``k`` nearest training items, best first."""
        Xn = l2_normalise(self._check_X(X))
        k = min(k or self.k_, len(self.Y_))
        if self.index_ is None:
            return exact_search(Xn, self.X_, k)
        if self.n_threads:
            _faiss().omp_set_num_threads(self.n_threads)
        sims = np.empty((len(Xn), k), np.float32)
        idx = np.empty((len(Xn), k), np.int64)
        for s in range(0, len(Xn), SEARCH_BLOCK):
            sims[s : s + SEARCH_BLOCK], idx[s : s + SEARCH_BLOCK] = self.index_.search(Xn[s : s + SEARCH_BLOCK], k)
        return sims, idx

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
            "recall_": float(getattr(self, "recall_", 1.0)),
            "index_spec_": getattr(self, "index_spec_", None),
        }
        arrays = {"Y_": self.Y_} if self.X_ is None else {"X_": self.X_, "Y_": self.Y_}
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
        self.recall_, self.index_spec_ = meta.get("recall_", 1.0), meta.get("index_spec_")
        self.X_ = arrays["X_"].astype(np.float32) if "X_" in arrays else None  # None: built from a streamed store
        self.Y_ = arrays["Y_"].astype(np.uint8)
        self.index_ = _faiss().deserialize_index(arrays["index_"]) if "index_" in arrays else None
        return self


def exact_search_batches(queries: np.ndarray, batches, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product search over base vectors that arrive in batches (the oracle at scale)."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    offset = 0
    for block in batches:
        s, i = exact_search(queries, block, min(k, len(block)))
        S, I = np.concatenate([best_s, s], axis=1), np.concatenate([best_i, i + offset], axis=1)
        order = np.lexsort((I, -S), axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(S, order, axis=1), np.take_along_axis(I, order, axis=1)
        offset += len(block)
    return best_s, best_i


def knn_from_store(store, k: int = 10, part: str | None = "train", batch_size: int = 65_536, **params) -> KNNHead:
    """A fitted ``knn`` head on a store's items, streamed in batches (the store is never loaded whole).

    Below :data:`AUTO_EXACT_BELOW` rows the store is small enough to load, and the head is fitted
    as usual. Above it, the index is trained on a sample, the normalised batches are added one by
    one, and only the labels stay in memory; the recall against an exact streamed search is in
    ``recall_``.

    Args:
        store: a :class:`~genrekit.store.FeatureStore` (or its path).
        k: neighbours to vote.
        part: use only this part of the store's split (``None``: every item, or a store without a split).
        batch_size: rows per batch read from the store.
        **params: other :class:`KNNHead` parameters (``index``, ``search_params``, ``weights`` ...).

    Example:
        >>> head = knn_from_store(FeatureStore("catalogue.h5"), k=25)  # doctest: +SKIP
        >>> head.recall_
        0.97
    """
    from genrekit.store import FeatureStore

    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    split = store.split if part is not None else None
    if part is not None and split is None:
        part = None  # a store without a split: every item
    keep = np.ones(len(store), bool) if part is None else np.asarray(split, dtype=object) == part
    head = KNNHead(ks=(k,), **params)
    n = int(keep.sum())
    spec, sp = head._spec(n)
    if spec is None:
        fs = store.load()
        return head.fit(fs.X[keep], fs.Y[keep])

    def batches():
        start = 0
        for _ids, X, _Y in store.iter_batches(batch_size):
            rows = keep[start : start + len(X)]
            start += len(X)
            if rows.any():
                yield l2_normalise(X[rows])

    faiss = _faiss()
    nlist = getattr(faiss.extract_index_ivf(faiss.index_factory(store.dim, spec, faiss.METRIC_INNER_PRODUCT)), "nlist", 0) if "IVF" in spec else 0
    # a sample for training: whole batches in row order until it is big enough (h5py reads runs fast)
    want, sample = max(nlist * TRAIN_PER_LIST, RECALL_QUERIES), []
    for block in batches():
        sample.append(block[np.random.default_rng(len(sample)).permutation(len(block))[: max(want // 4, 1)]])
        if sum(map(len, sample)) >= want:
            break
    Xs = np.concatenate(sample)
    head.X_ = None
    head.Y_ = np.concatenate([Y[keep[s : s + len(Y)]] for s, (_i, _x, Y) in zip(range(0, len(store), batch_size), store.iter_batches(batch_size))])
    head.n_features_in_, head.n_genres_, head.k_, head.search_ = store.dim, len(store.genres), min(k, n), {}
    head.index_ = head._build_index(Xs, spec, sp, batches=batches())
    head.recall_ = head._recall(Xs, exact=lambda Q, kk: exact_search_batches(Q, batches(), kk))
    return head
