"""Which poster resize mode should be the default? A linear probe on each, on the same split.

Posters are 2:3 portraits; a centre crop cuts off titles and credits. This extracts the real
MobileNetV2 features of the shared posters once per resize mode (cached) and scores the reference
linear probe of ../shared/data/movie_posters/SOURCE.md on each: StandardScaler + one-vs-rest
LogisticRegression(C=0.05), trained on ids with id % 5 != 0, tested on id % 5 == 0, on the genres
with at least 50 films.

    python benchmarks/bench_resize.py              # all 6,000 posters (about 4 minutes per mode here)
    python benchmarks/bench_resize.py --n 2000
"""

from __future__ import annotations

import argparse
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

SHARED = Path(__file__).resolve().parents[2] / "shared"
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
    args = ap.parse_args()
    CACHE.mkdir(exist_ok=True)
    rows = []
    for mode in args.modes:
        store = CACHE / f"resize-{mode}-{args.n or 'all'}.h5"
        t0 = time.perf_counter()
        extract(ExtractConfig(backbone="mobilenet_v2", weights=str(WEIGHTS), data=str(POSTERS), out=str(store),
                              resize=mode, limit=args.n))
        auc, ap_, g = probe(store)
        rows.append((mode, auc, ap_, g, time.perf_counter() - t0))
        print(f"{mode}: macro ROC AUC {auc:.3f}, mAP {ap_:.3f} ({g} genres)", flush=True)
    print(f"\n| resize mode | macro ROC AUC | mAP | genres |  (MobileNetV2 real weights, {len(FeatureStore(store))} posters)")
    print("|---|---|---|---|")
    for mode, auc, ap_, g, _ in rows:
        print(f"| {mode} | {auc:.3f} | {ap_:.3f} | {g} |")


if __name__ == "__main__":
    main()
