"""Which poster resize mode should be the default? A linear probe on each, on the same split.

Posters are 2:3 portraits; a centre crop cuts off titles and credits. This extracts the real
MobileNetV2 features of the shared posters once per resize mode (cached) and scores the reference
linear probe of ../shared/data/movie_posters/SOURCE.md on each: StandardScaler + one-vs-rest
LogisticRegression(C=0.05), trained on ids with id % 5 != 0, tested on id % 5 == 0, on the genres
with at least 50 films.

Each mode is extracted by both input paths (``--decoder torchvision``, the default: libjpeg-turbo
and an antialiased uint8 resize; ``--decoder pil``, the older PIL path), and the cosine between the
two paths' embeddings of the same poster is reported.

    python benchmarks/bench_resize.py              # all 6,000 posters (about 1 minute per store here in bf16)
    python benchmarks/bench_resize.py --n 2000 --decoders torchvision
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from genrekit.extraction import ExtractConfig, extract
from genrekit.store import FeatureStore

# The checkout sits next to shared/ (GENREKIT_SHARED overrides it, e.g. from a git worktree).
SHARED = Path(os.environ.get("GENREKIT_SHARED") or Path(__file__).resolve().parents[2] / "shared")
POSTERS = SHARED / "data" / "movie_posters" / "labels.csv"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-coralquant-dequant-tv.pth"
CACHE = Path(__file__).resolve().parent / ".cache"


def probe(store: Path) -> tuple[float, float, int]:
    fs = FeatureStore(store).load()
    test = np.array([int(i) % 5 == 0 for i in fs.ids])
    keep = fs.Y.sum(0) >= 50
    Y = fs.Y[:, keep]
    clf = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=0.05, max_iter=2000)))
    clf.fit(fs.X[~test], Y[~test])
    P = clf.predict_proba(fs.X[test])
    return roc_auc_score(Y[test], P, average="macro"), average_precision_score(Y[test], P, average="macro"), int(keep.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="only the first N posters")
    ap.add_argument("--modes", nargs="+", default=["squash", "center-crop", "letterbox"])
    ap.add_argument("--decoders", nargs="+", default=["torchvision", "pil"])
    ap.add_argument("--precision", default="auto", help="auto (bf16 where the CPU has it), fp32, bf16")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 keeps a busy shared machine usable)")
    args = ap.parse_args()
    CACHE.mkdir(exist_ok=True)
    rows, stores = [], {}
    for mode in args.modes:
        for decoder in args.decoders:
            store = CACHE / f"resize-{mode}-{decoder}-{args.precision}-{args.n or 'all'}.h5"
            t0 = time.perf_counter()
            rep = extract(ExtractConfig(backbone="mobilenet_v2", weights=str(WEIGHTS), data=str(POSTERS), out=str(store),
                                        resize=mode, decoder=decoder, precision=args.precision, limit=args.n,
                                        threads=args.threads))
            secs = time.perf_counter() - t0
            auc, ap_, g = probe(store)
            stores[mode, decoder] = store
            rows.append((mode, decoder, auc, ap_, g, rep.encoded, secs))
            print(f"{mode} / {decoder}: macro ROC AUC {auc:.4f}, mAP {ap_:.4f} ({g} genres; "
                  f"{rep.encoded} encoded in {secs:.0f} s)", flush=True)
    print(f"\n| resize mode | decoder | macro ROC AUC | mAP | genres |  (MobileNetV2 real weights, "
          f"{len(FeatureStore(store))} posters, precision {args.precision})")
    print("|---|---|---|---|---|")
    for mode, decoder, auc, ap_, g, _, _ in rows:
        print(f"| {mode} | {decoder} | {auc:.4f} | {ap_:.4f} | {g} |")
    if len(args.decoders) == 2:
        print("\ncosine between the two paths' embeddings of the same poster:")
        for mode in args.modes:
            a, b = (FeatureStore(stores[mode, d]).load() for d in args.decoders)
            order = {i: k for k, i in enumerate(b.ids)}
            Xb = b.X[[order[i] for i in a.ids]]
            cos = (a.X * Xb).sum(1) / (np.linalg.norm(a.X, axis=1) * np.linalg.norm(Xb, axis=1))
            print(f"  {mode}: mean {cos.mean():.4f}, median {np.median(cos):.4f}, min {cos.min():.4f} ({len(cos)} posters)")


if __name__ == "__main__":
    main()
