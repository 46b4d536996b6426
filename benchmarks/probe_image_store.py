"""A side-by-side probe of an image store against MobileNetV2 on the same posters, split and probe.

The store is a finished `.h5` or the `.parts` folder of one still being extracted (the posters
encoded so far); MobileNetV2's features come from bench_accuracy.py's cached stores (last layer and
six stages) of the same 6,000 shared posters. Probe: standardised one-vs-rest logistic regression
(C=0.01), genres with >= 20 positives, one multilabel-stratified 70/30 split (seed 0).

    python benchmarks/probe_image_store.py /tmp/dino.h5.parts [--cache benchmarks/.cache]
"""
import glob, sys
from pathlib import Path
import numpy as np
from genrekit.store import FeatureStore
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.metrics import roc_auc_score, average_precision_score
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

src = sys.argv[1]
cache = Path(sys.argv[sys.argv.index("--cache") + 1]) if "--cache" in sys.argv else Path(__file__).resolve().parent / ".cache"
if src.endswith(".h5"):
    s = FeatureStore(src).load(); ids, X, Y = np.asarray(s.ids).astype(str), s.X, s.Y
else:
    parts = sorted(glob.glob(src + "/part-*.npz"))
    ids = np.concatenate([np.load(p)["ids"] for p in parts]).astype(str)
    X = np.concatenate([np.load(p)["embeddings"] for p in parts]); Y = np.concatenate([np.load(p)["labels"] for p in parts])
name = Path(src).name.split(".")[0]
feats = {f"{name} ({X.shape[1]}-d)": X}
for label, path in [("MobileNetV2 last (1280)", cache / "posters_mobilenet_v2.h5"),
                   ("MobileNetV2 six-stage (3312)", cache / "posters_mobilenet_v2_layers.h5")]:
    st = FeatureStore(path).load(); pos = {i: k for k, i in enumerate(np.asarray(st.ids).astype(str))}
    feats[label] = st.X[[pos[i] for i in ids]]
feats[f"{name} + six-stage"] = np.concatenate([X, feats["MobileNetV2 six-stage (3312)"]], 1)
keep = Y.sum(0) >= 20
Y = Y[:, keep].astype(int)
sss = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=0.3, random_state=0)
tr, te = next(sss.split(np.zeros(len(Y)), Y))
ok = (Y[te].sum(0) > 0) & (Y[tr].sum(0) > 0)
print(f"{len(ids)} posters, {ok.sum()} genres, train {len(tr)} / test {len(te)}")
for name, F in feats.items():
    sc = StandardScaler().fit(F[tr]); P = np.zeros((len(te), Y.shape[1]))
    for j in np.flatnonzero(ok):
        P[:, j] = LogisticRegression(C=0.01, max_iter=500).fit(sc.transform(F[tr]), Y[tr, j]).predict_proba(sc.transform(F[te]))[:, 1]
    auc = np.mean([roc_auc_score(Y[te, j], P[:, j]) for j in np.flatnonzero(ok)])
    ap = np.mean([average_precision_score(Y[te, j], P[:, j]) for j in np.flatnonzero(ok)])
    print(f"| {name} | {auc:.3f} | {ap:.3f} |", flush=True)
