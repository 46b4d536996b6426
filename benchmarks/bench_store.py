"""Feature store speed: reading a store against ``numpy.load``, and what writing costs extraction.

In one run:
  1. read: ``FeatureStore.load()`` (the whole FeatureSet) and ``FeatureStore.iter_batches()``
     (streamed, every batch consumed) against ``numpy.load`` of the same embeddings saved as one
     ``.npy`` file, and h5py reading the embeddings alone (what the ids, titles and labels add);
     on the real poster store and on a larger synthetic store; timed in alternating rounds, warm
     page cache (a cold read is disk-bound for all). GB/s counts the float32 embeddings delivered.
  2. write: extraction of real posters into a fresh store, repeated; the share of its wall time
     spent writing (part files plus the final merge), from ``ExtractReport.seconds``.

    python benchmarks/bench_store.py --store /work/stores/posters_mnv2.h5   # ~2 min here
    python benchmarks/bench_store.py --quick                                # ~1 min (builds the store once)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import h5py
import numpy as np
from _common import (
    CACHE,
    MOBILENET,
    POSTERS,
    interleaved,
    md_table,
    median,
    poster_store,
    print_header,
    spread,
)

from genrekit.extraction import ExtractConfig, extract
from genrekit.store import FeatureStore, StoreHeader, StoreWriter


def synthetic_store(rows: int, dim: int, dtype: str) -> Path:
    """A store of random embeddings written the way extraction writes (cached between runs)."""
    path = CACHE / f"synthetic_{rows}x{dim}_{dtype}.h5"
    if path.is_file():
        return path
    genres = tuple(f"g{j}" for j in range(20))
    header = StoreHeader(encoder={"family": "synthetic", "name": "random", "weights": "none"}, preprocessing={},
                         normalisation="none", modality="image", dim=dim, dtype=dtype, genres=genres, config={})  # fmt: skip
    writer = StoreWriter(path, header)
    rng = np.random.default_rng(0)
    step = 4096
    for start in range(0, rows, step):
        n = min(step, rows - start)
        ids = [f"s{i:08d}" for i in range(start, start + n)]
        writer.write_part(ids, rng.standard_normal((n, dim), dtype=np.float32), rng.random((n, len(genres))) < 0.1,
                          ["title"] * n, [2000] * n)  # fmt: skip
    writer.finalize()
    return path


def read_rows(store_path: Path, rounds: int, batch: int) -> tuple[list, float]:
    store = FeatureStore(store_path)
    CACHE.mkdir(parents=True, exist_ok=True)
    npy = CACHE / f"{store_path.stem}.embeddings.npy"
    if not npy.is_file() or npy.stat().st_mtime < store_path.stat().st_mtime:
        np.save(npy, store.load().X)
    nbytes = len(store) * store.dim * 4  # float32, what every variant hands back

    def stream() -> None:
        for _ in store.iter_batches(batch):
            pass

    def embeddings_only() -> np.ndarray:
        # What load() costs for the embeddings alone (the rest is ids, titles, labels, years).
        with h5py.File(store_path, "r") as f:
            X = np.empty((len(store), store.dim), np.float32)
            f["embeddings"].read_direct(X)
        return X

    variants = {
        "numpy.load (.npy)": lambda: np.load(npy),
        "FeatureStore.load()": store.load,
        f"FeatureStore.iter_batches({batch})": stream,
        "h5py read_direct, embeddings only": embeddings_only,
    }
    times = interleaved(variants, rounds)
    base = nbytes / median(times["numpy.load (.npy)"]) / 1e9
    rows = []
    for name, ts in times.items():
        gbs = nbytes / median(ts) / 1e9
        rows.append([f"{store_path.name} ({len(store):,} x {store.dim} {store.header.dtype})", name, f"{gbs:.2f}",
                     spread([nbytes / t / 1e9 for t in ts], ".2f"), f"{gbs / base:.2f}"])  # fmt: skip
    return rows, nbytes


def write_share(n: int, repeats: int) -> list[dict]:
    weights = str(MOBILENET) if MOBILENET.is_file() else "none"
    reports = []
    for r in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            rep = extract(ExtractConfig(backbone="mobilenet_v2", weights=weights, data=str(POSTERS), out=f"{tmp}/s.h5", limit=n))
        reports.append(rep.seconds)
        s = rep.seconds
        print(f"  extraction {r + 1}/{repeats}: total {s['total']:.1f} s, write {s['write']:.2f} s "
              f"({s['write'] / s['total']:.1%})", flush=True)  # fmt: skip
    return reports


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", help="real feature store to read (default: build the MobileNetV2 poster store in benchmarks/.cache)")
    ap.add_argument("--synthetic-rows", type=int, default=100_000, help="rows of the synthetic store (0: skip it)")
    ap.add_argument("--synthetic-dim", type=int, default=1280)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="synthetic store dtype")
    ap.add_argument("--batch", type=int, default=4096, help="iter_batches batch size")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--extract-n", type=int, default=1024, help="posters per extraction for the write share")
    ap.add_argument("--extract-repeats", type=int, default=3, help="0: skip the write share")
    ap.add_argument("--quick", action="store_true", help="20,000 synthetic rows, 3 rounds, 2 x 256 posters")
    args = ap.parse_args()
    if args.quick:
        args.synthetic_rows = min(args.synthetic_rows, 20_000)
        args.rounds, args.extract_n, args.extract_repeats = min(args.rounds, 3), min(args.extract_n, 256), min(args.extract_repeats, 2)
    store = poster_store(args.store)
    print_header("bench_store", f"warm page cache, {args.rounds} alternating rounds")

    rows, _ = read_rows(store, args.rounds, args.batch)
    if args.synthetic_rows:
        more, _ = read_rows(synthetic_store(args.synthetic_rows, args.synthetic_dim, args.dtype), args.rounds, args.batch)
        rows += more
    print(md_table(["store", "read", "GB/s (median)", "GB/s (min-max)", "ratio to numpy.load"], rows))

    if not args.extract_repeats:
        return
    print(f"\nextraction write share: mobilenet_v2, {args.extract_n} posters, {args.extract_repeats} runs", flush=True)
    secs = write_share(args.extract_n, args.extract_repeats)
    share = [s["write"] / s["total"] for s in secs]
    print()
    print(md_table(
        ["posters", "total s (median)", "read wait s", "encode s", "write s", "write share (median)", "write share (min-max)"],
        [[args.extract_n, f"{median([s['total'] for s in secs]):.1f}", f"{median([s['read'] for s in secs]):.2f}",
          f"{median([s['encode'] for s in secs]):.1f}", f"{median([s['write'] for s in secs]):.2f}",
          f"{median(share):.1%}", spread(share, ".1%")]],
    ))  # fmt: skip


if __name__ == "__main__":
    main()
