"""The experiment the research repeated by hand, as one table: backbones x heads on the shared data.

Image features of the 6,000 shared posters (``movie_posters``): ``colorstats``, MobileNetV2 with
random weights, MobileNetV2 with the real weights. Text features of the 1,363 plots
(``imdb_plots``): MiniLM, and a TF-IDF baseline (scikit-learn ``TfidfVectorizer`` fitted on the
training plots only, fed to the same heads as a FeatureSet). Every head of ``genrekit heads
--all`` on each, one split per dataset shared by all its feature sets (stratified 70/15/15, seed
0), thresholds tuned per genre on validation; test F1 micro/macro at those thresholds, mAP, macro
ROC AUC, Hamming loss and fit seconds. The table goes to stdout and, between the markers of its
section, into ``benchmarks/README.md`` (``--no-readme`` to skip). Stores are built once into
``benchmarks/.cache/`` (~3 min here for the three of them) unless given.

    python benchmarks/bench_accuracy.py --store /work/stores/posters_mnv2.h5     # ~9 min here
    python benchmarks/bench_accuracy.py --quick                                   # logreg, knn, mlp only
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import tempfile
import time

import numpy as np
from _common import (
    BENCH,
    HEAD_COLUMNS,
    HEAD_KEYS,
    MOBILENET,
    PLOTS,
    POSTERS,
    build_store,
    fmt,
    head_rows,
    machine_lines,
    md_table,
    poster_store,
    quiet_baseline,
)

from genrekit.data.manifest import read_manifest
from genrekit.data.split import stratified_split
from genrekit.runs.leaderboard import HeadsConfig, run_heads
from genrekit.store import FeatureSet, FeatureStore, StoreHeader

README = BENCH / "README.md"
BEGIN, END = "<!-- bench_accuracy:begin -->", "<!-- bench_accuracy:end -->"


def with_split(fs: FeatureSet, split_by_id: dict[str, str]) -> FeatureSet:
    return dataclasses.replace(fs, split=np.array([split_by_id[i] for i in fs.ids], dtype=object))


def shared_split(fs: FeatureSet, seed: int) -> dict[str, str]:
    return dict(zip(fs.ids, stratified_split(fs.Y, seed=seed)))


def tfidf_features(text: FeatureSet) -> FeatureSet:
    """TF-IDF of the plots of ``text``'s items, the vectoriser fitted on its training rows only."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    plot = {s.id: s.plot or "" for s in read_manifest(PLOTS).samples}
    docs = [plot[i] for i in text.ids]
    train = text.split == "train"
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2, stop_words="english", ngram_range=(1, 2))
    vec.fit([d for d, t in zip(docs, train) if t])
    return dataclasses.replace(text, X=vec.transform(docs).toarray().astype(np.float32))


def feature_sets(args) -> list[tuple[str, str, FeatureSet, StoreHeader | None]]:
    """``(dataset, features name, FeatureSet with the shared split, store header)`` in table order."""
    real = FeatureStore(poster_store(args.store))
    split = shared_split(real.load(), args.seed)
    image = [
        ("colorstats", FeatureStore(build_store("posters_colorstats", "colorstats", POSTERS))),
        ("MobileNetV2 random init", FeatureStore(build_store("posters_mobilenet_v2_random", "mobilenet_v2", POSTERS, weights="none"))),
        ("MobileNetV2 real weights", real),
    ]
    out = [("movie_posters", name, with_split(st.load(), split), st.header) for name, st in image]
    minilm = FeatureStore(build_store("plots_minilm", "minilm", PLOTS, modality="text"))
    text = minilm.load()
    text = with_split(text, shared_split(text, args.seed))
    out += [("imdb_plots", "MiniLM (all-MiniLM-L6-v2)", text, minilm.header),
            ("imdb_plots", "TF-IDF (word 1-2 grams, train-fitted)", tfidf_features(text), None)]  # fmt: skip
    return out


def summary(table: dict[tuple[str, str], dict]) -> list[str]:
    """The claims the table must back, checked head by head on macro ROC AUC."""
    def auc(features: str) -> dict[str, float]:
        return {h: m["roc_auc_macro"] for (f, h), m in table.items() if f == features and m["roc_auc_macro"] is not None}

    lines = []
    for best, others in (("MobileNetV2 real weights", ("MobileNetV2 random init", "colorstats")),
                         ("MiniLM (all-MiniLM-L6-v2)", ("TF-IDF (word 1-2 grams, train-fitted)",))):  # fmt: skip
        a = auc(best)
        for other in others:
            b = auc(other)
            common = [h for h in a if h in b and not h.startswith("baseline")]
            if not common:
                continue
            ahead = [h for h in common if a[h] > b[h]]
            top_a, top_b = max(a[h] for h in common), max(b[h] for h in common)
            lines.append(f"- {best} ahead of {other} on macro ROC AUC for {len(ahead)} of {len(common)} heads "
                         f"(best head {top_a:.3f} vs {top_b:.3f}, ratio {top_a / top_b:.3f})")  # fmt: skip
    return lines


def write_readme(text: str) -> bool:
    if not README.is_file():
        return False
    doc = README.read_text(encoding="utf-8")
    if BEGIN not in doc or END not in doc:
        return False
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    README.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", doc), encoding="utf-8")
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", help="the real MobileNetV2 poster store (default: built in benchmarks/.cache)")
    ap.add_argument("--heads", nargs="+", default=None, help="heads to run (default: every head that applies)")
    ap.add_argument("--jobs", type=int, default=0, help="heads trained at once (0: one per core)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-readme", action="store_true", help="print only; leave benchmarks/README.md alone")
    ap.add_argument("--quick", action="store_true", help="logreg, knn and mlp only")
    args = ap.parse_args()
    quiet_baseline()
    heads = tuple(args.heads or (("logreg", "knn", "mlp") if args.quick else ()))
    if not MOBILENET.is_file():
        print(f"note: {MOBILENET} is missing; 'MobileNetV2 real weights' needs --store")

    t_start = time.perf_counter()
    sets = feature_sets(args)
    table: dict[tuple[str, str], dict] = {}
    rows = []
    notes = []
    for dataset, name, fs, header in sets:
        with tempfile.TemporaryDirectory() as out:
            res = run_heads(fs, out, HeadsConfig(heads=heads, seed=args.seed, jobs=args.jobs), header=header)
        print(f"{dataset} / {name}: {len(fs.X):,} x {fs.X.shape[1]}, {len(res['genres'])} genres, {res['wall_seconds']:.0f} s", flush=True)
        if res["skipped_heads"]:
            notes.append(f"{name}: skipped {', '.join(f'{h} ({why})' for h, why in res['skipped_heads'].items())}")
        for head, m, fit_s, _ in head_rows(res):
            table[(name, head)] = m
            rows.append([dataset, name, head, *(fmt(m[k]) for k in HEAD_KEYS), f"{fit_s:.1f}"])
    checks = summary(table)
    jobs = f"--jobs {args.jobs}" if args.jobs else "one head per core at once"
    doc = "\n".join([
        *machine_lines(),
        (f"- splits: stratified 70/15/15 (seed {args.seed}) per dataset, shared by its feature sets; thresholds "
         f"tuned per genre on validation; metrics on test; fit seconds with {jobs}; wall {time.perf_counter() - t_start:.0f} s"),
        "",
        md_table(["data", "features", "head", *HEAD_COLUMNS, "fit s"], rows),
        "",
        *checks,
        *(f"- {n}" for n in notes),
    ])  # fmt: skip
    print()
    print(doc)
    if not args.no_readme:
        print(f"\n{'wrote' if write_readme(doc) else 'could not write (no markers in)'} {README}")


if __name__ == "__main__":
    main()
