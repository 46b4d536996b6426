"""Nearest-neighbour search: genrekit's kNN head (FAISS) against scikit-learn's brute force.

On N synthetic unit vectors (Gaussian clusters, like image embeddings) and Q queries from the same
distribution, in one run:
  1. scikit-learn ``NearestNeighbors(algorithm="brute")`` (exact; the reference and the oracle);
  2. genrekit ``KNNHead(index="Flat")``: exact FAISS inner-product search, and the head's exact
     numpy search (``exact_search``, used below ``exact_below`` training rows);
  3. genrekit ``KNNHead`` with approximate FAISS indexes (HNSW, IVF) at a few search settings.
The query batches of all variants are timed in alternating rounds; it prints the median queries/s,
the ratio to scikit-learn (goal >= 5x) and recall@k of every index against the exact neighbours.

    python benchmarks/bench_knn.py                 # 100,000 x 512, 1,000 queries, k = 10 (~3 min here)
    python benchmarks/bench_knn.py --quick         # 20,000 x 512, 200 queries (~20 s)
    python benchmarks/bench_knn.py --clusters 0    # isotropic Gaussian: the hardest case for ANN
    python benchmarks/bench_knn.py --sizes 10000 25000 50000 100000   # where index="auto" switches

``--sizes`` times what the head does in a leaderboard run (fit on n training rows, then search
0.3 n validation and test queries) with the exact numpy search and with the IVF index that
``index="auto"`` builds above ``AUTO_EXACT_BELOW``, to place that threshold.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import interleaved, md_table, median, print_header, spread
from sklearn.neighbors import NearestNeighbors

from genrekit.heads.knn import KNNHead, exact_search

GOAL = 5.0
# (label, FAISS index spec, search parameters): the approximate indexes worth knowing about.
APPROX = (
    ("HNSW32", "HNSW32", "efSearch=16"),
    ("HNSW32", "HNSW32", "efSearch=64"),
    ("IVF1024,Flat", "IVF1024,Flat", "nprobe=4"),
    ("IVF1024,Flat", "IVF1024,Flat", "nprobe=16"),
)


def synthetic(n: int, q: int, dim: int, clusters: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around ``clusters`` random centres (0: isotropic), base and queries alike."""
    rng = np.random.default_rng(seed)
    if clusters:
        centres = rng.standard_normal((clusters, dim), dtype=np.float32)
        data = centres[rng.integers(0, clusters, n + q)] + noise * rng.standard_normal((n + q, dim), dtype=np.float32)
    else:
        data = rng.standard_normal((n + q, dim), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    return data[:n], data[n:]


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact k neighbours that were found, averaged over queries."""
    k = exact.shape[1]
    return float(np.mean([len(np.intersect1d(f, e, assume_unique=True)) / k for f, e in zip(found, exact)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="base vectors")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--clusters", type=int, default=1_000, help="Gaussian clusters in the data (0: isotropic)")
    ap.add_argument("--noise", type=float, default=2.0, help="within-cluster spread relative to the centres' spread")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="20,000 base vectors, 200 queries, 3 rounds, IVF256")
    ap.add_argument("--sizes", type=int, nargs="+", help="compare exact vs auto IVF fit+search at these training sizes")
    args = ap.parse_args()
    if args.sizes:
        return crossover(args)
    approx = APPROX
    if args.quick:
        args.n, args.queries, args.rounds = min(args.n, 20_000), min(args.queries, 200), min(args.rounds, 3)
        approx = tuple((lab.replace("1024", "256"), spec.replace("1024", "256"), p) for lab, spec, p in APPROX)

    print_header("bench_knn", f"{args.n:,} x {args.dim} base vectors, {args.queries:,} queries, k = {args.k}, "
                 f"{args.clusters or 'no'} clusters (noise {args.noise}), {args.rounds} rounds")  # fmt: skip
    X, Q = synthetic(args.n, args.queries, args.dim, args.clusters, args.noise, args.seed)
    Y = (np.arange(args.n) % 2)[:, None].astype(np.uint8)  # the head wants labels; search ignores them

    build: dict[str, float] = {}
    searchers = {}
    t0 = time.perf_counter()
    nn = NearestNeighbors(n_neighbors=args.k, algorithm="brute", n_jobs=-1).fit(X)
    build["sklearn brute"] = time.perf_counter() - t0
    searchers["sklearn brute"] = lambda: nn.kneighbors(Q, return_distance=True)
    build["numpy"] = 0.0
    searchers["genrekit exact_search (numpy)"] = lambda: exact_search(Q, X, args.k)
    heads: dict[str, KNNHead] = {}
    for label, spec, params in (("Flat", "Flat", ""), *approx):
        if label not in heads:
            t0 = time.perf_counter()
            heads[label] = KNNHead(ks=(args.k,), index=spec, exact_below=0).fit(X, Y)
            build[label] = time.perf_counter() - t0
            print(f"built {label} in {build[label]:.1f} s", flush=True)
        name = f"genrekit {label}" + (f" ({params})" if params else "")
        searchers[name] = _searcher(heads[label], params, Q, args.k)

    exact = nn.kneighbors(Q, return_distance=False)
    recalls = {name: recall(fn()[1], exact) for name, fn in searchers.items()}
    times = interleaved(searchers, args.rounds)
    qps = {name: args.queries / median(t) for name, t in times.items()}
    base = qps["sklearn brute"]

    rows = []
    for name in searchers:
        label = {"sklearn brute": "sklearn brute", "genrekit exact_search (numpy)": "numpy"}.get(name) or name.removeprefix("genrekit ").split(" (")[0]
        rows.append([
            name, f"{qps[name]:,.0f}", spread([args.queries / t for t in times[name]], ",.0f"), f"{qps[name] / base:.1f}x",
            f"{recalls[name]:.3f}", f"{build[label]:.1f}",
        ])  # fmt: skip
    print(md_table(["method", "queries/s (median)", "queries/s (min-max)", "ratio to sklearn (goal >= 5x)",
                    f"recall@{args.k}", "build s"], rows))  # fmt: skip
    flat = qps["genrekit Flat"] / base
    good = [n for n in searchers if n != "sklearn brute" and recalls[n] >= 0.95 and qps[n] / base >= GOAL]
    print(f"\nexact FAISS Flat / sklearn brute: {flat:.1f}x ({'meets' if flat >= GOAL else 'misses'} the 5x goal)")
    if good:
        best = max(good, key=lambda n: qps[n])
        print(f"fastest index with recall@{args.k} >= 0.95: {best}, {qps[best] / base:.1f}x sklearn brute, "
              f"recall {recalls[best]:.3f}")  # fmt: skip
    else:
        print(f"no index reaches both recall@{args.k} >= 0.95 and the 5x goal")


def crossover(args) -> None:
    """Fit + search time of the exact path and of the auto IVF index, by training-set size."""
    from genrekit.heads.knn import auto_index

    print_header("bench_knn --sizes", f"dim {args.dim}, k = {args.k}, queries = 0.3 n, {args.clusters or 'no'} clusters")
    rows = []
    for n in args.sizes:
        X, Q = synthetic(n, int(0.3 * n), args.dim, args.clusters, args.noise, args.seed)
        Y = (np.arange(n) % 2)[:, None].astype(np.uint8)
        spec, params = auto_index(n) if auto_index(n)[0] else (f"IVF{int(2 ** round(np.log2(4 * np.sqrt(n))))},Flat", "nprobe=16")
        t0 = time.perf_counter()
        exact = KNNHead(ks=(args.k,), index="Flat", exact_below=10**12).fit(X, Y)
        _, true = exact.kneighbors(Q, args.k)
        t_exact = time.perf_counter() - t0
        t0 = time.perf_counter()
        ivf = KNNHead(ks=(args.k,), index=spec, search_params=params, exact_below=0).fit(X, Y)
        _, found = ivf.kneighbors(Q, args.k)
        t_ivf = time.perf_counter() - t0
        rows.append([f"{n:,}", f"{len(Q):,}", f"{t_exact:.1f}", f"{spec} ({params})", f"{t_ivf:.1f}", f"{t_exact / t_ivf:.2f}",
                     f"{recall(found, true):.3f}"])  # fmt: skip
        print(rows[-1], flush=True)
    print(md_table(["train n", "queries", "exact fit+search s", "IVF index", "IVF fit+search s", "exact / IVF time", "IVF recall@k"], rows))


def _searcher(head: KNNHead, params: str, Q: np.ndarray, k: int):
    import faiss

    def search():
        # Each variant sets its own search parameter right before searching, since HNSW/IVF
        # variants share one built index.
        if params:
            faiss.ParameterSpace().set_index_parameters(head.index_, params)
        return head.kneighbors(Q, k)

    return search


if __name__ == "__main__":
    main()
