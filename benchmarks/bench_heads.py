"""Every head on the real MobileNetV2 poster store: fit and predict seconds, test metrics.

One ``run_heads`` call (the library behind ``genrekit heads --all``): the store's split or the
default stratified 70/15/15 split, thresholds tuned per genre on validation, metrics on test.
Heads are trained one at a time (``--jobs 1``) so that each one's seconds are its own; with
``--repeats N`` the whole run is repeated and the seconds are medians. Alongside, as references:
  - the baseline the runner fits (one-vs-rest LogisticRegression, scikit-learn defaults);
  - the linear probe of ``movie_posters/SOURCE.md`` re-run on this store with its own recipe and
    split, next to the numbers published there (macro ROC AUC 0.68, mAP 0.24), which checks that
    the store's features are the reference features.

    python benchmarks/bench_heads.py --store /work/stores/posters_mnv2.h5    # every head (~5 min here)
    python benchmarks/bench_heads.py --quick                                 # logreg, knn, mlp
"""

from __future__ import annotations

import argparse
import tempfile

from _common import (
    HEAD_COLUMNS,
    HEAD_KEYS,
    fmt,
    head_rows,
    md_table,
    median,
    poster_store,
    print_header,
    quiet_baseline,
    reference_probe,
)

from genrekit.heads.registry import list_heads
from genrekit.runs.leaderboard import HeadsConfig, run_heads
from genrekit.store import FeatureStore

PUBLISHED = {"roc_auc_macro": 0.68, "map_macro": 0.24}  # movie_posters/SOURCE.md, real MobileNetV2 weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", help="feature store (default: build the MobileNetV2 poster store in benchmarks/.cache)")
    ap.add_argument("--layers", default="all", help="layers of the cached MobileNetV2 store: all (extract's default, 3,312-d) or last")
    ap.add_argument("--heads", nargs="+", default=None, help=f"heads to run (default: all of {', '.join(list_heads())})")
    ap.add_argument("--jobs", type=int, default=1, help="heads trained at once (1: clean per-head seconds)")
    ap.add_argument("--threshold", default="per-genre")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="whole runs; seconds are medians")
    ap.add_argument("--quick", action="store_true", help="logreg, knn and mlp only")
    args = ap.parse_args()
    quiet_baseline()
    heads = tuple(args.heads or (("logreg", "knn", "mlp") if args.quick else ()))
    path = poster_store(args.store, layers=args.layers)
    store = FeatureStore(path)
    fs = store.load()
    print_header("bench_heads", f"{path.name}: {len(fs.X):,} x {fs.X.shape[1]} {store.header.encoder.get('name')} "
                 f"features, --jobs {args.jobs}, threshold {args.threshold}, {args.repeats} run(s)")  # fmt: skip

    runs = []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            cfg = HeadsConfig(heads=heads, threshold=args.threshold, seed=args.seed, jobs=args.jobs)
            runs.append(run_heads(fs, out, cfg, header=store.header))
        print(f"run {r + 1}/{args.repeats}: {runs[-1]['wall_seconds']:.0f} s", flush=True)
    res = runs[0]
    seconds = [{name: (f, p) for name, _, f, p in head_rows(x)} for x in runs]
    fit = {name: median([s[name][0] for s in seconds]) for name in seconds[0]}
    pred = {name: median([s[name][1] for s in seconds]) for name in seconds[0]}
    base_map = res["baseline"]["test"]["at_0.5"]["map_macro"] if res.get("baseline") else None
    rows = []
    for name, m, _, _ in head_rows(res):
        ratio = f"{m['map_macro'] / base_map:.2f}" if base_map and m["map_macro"] is not None else "-"
        rows.append([name, f"{fit[name]:.1f}", fmt(pred[name], 2), *(fmt(m[k]) for k in HEAD_KEYS), ratio])
    split = res["split"]
    print(f"split ({split['source']}): " + ", ".join(f"{v} {k}" for k, v in split["counts"].items())
          + f"; {len(res['genres'])} genres scored, dropped: {', '.join(res['dropped_genres']) or 'none'}"
          + (f"; skipped heads: {', '.join(f'{k} ({v})' for k, v in res['skipped_heads'].items())}" if res["skipped_heads"] else ""))  # fmt: skip
    print()
    print(md_table(["head", "fit s", "predict s (val + test)", *HEAD_COLUMNS, "mAP / baseline mAP"], rows))

    probe = reference_probe(fs)
    print(f"\nreference probe (SOURCE.md recipe: id % 5 == 0 test split, {probe['test_items']:,} items, "
          f"{probe['genres']} genres, StandardScaler + OvR LogisticRegression(C=0.05)) on this store:")
    print(md_table(["", "ROC AUC macro", "mAP", "chance mAP (prevalence)", "fit s"], [
        ["this store", fmt(probe["roc_auc_macro"]), fmt(probe["map_macro"]), fmt(probe["chance_map"]), f"{probe['fit_seconds']:.1f}"],
        ["published (SOURCE.md)", PUBLISHED["roc_auc_macro"], PUBLISHED["map_macro"], "0.12", "-"],
        ["ratio", f"{probe['roc_auc_macro'] / PUBLISHED['roc_auc_macro']:.2f}", f"{probe['map_macro'] / PUBLISHED['map_macro']:.2f}", "", ""],
    ]))  # fmt: skip


if __name__ == "__main__":
    main()
