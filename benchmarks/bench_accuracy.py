"""The experiment the research repeated by hand, as one table: backbones x heads on the shared data.

Image features of the 6,000 shared posters (``movie_posters``): ``colorstats``, MobileNetV2 with
random weights, MobileNetV2 with the real weights (last layer, and six stages pooled to mean + std:
``extract --layers all``). Text features of the 1,363 plots
(``imdb_plots``): MiniLM, and a TF-IDF baseline (scikit-learn ``TfidfVectorizer`` fitted on the
training plots only, fed to the same heads as a FeatureSet). Every head of ``genrekit heads
--all`` on each, one split per dataset shared by all its feature sets (stratified 70/15/15, seed
0), thresholds tuned per genre on validation; test F1 micro/macro at those thresholds, mAP, macro
ROC AUC, Hamming loss and fit seconds. The table goes to stdout and, between the markers of its
section, into ``benchmarks/README.md`` (``--no-readme`` to skip). Stores are built once into
``benchmarks/.cache/`` (~3 min here for the three of them) unless given.

    python benchmarks/bench_accuracy.py --store /work/stores/posters_mnv2.h5     # ~9 min here
    python benchmarks/bench_accuracy.py --quick                                   # logreg, knn, mlp only

``--fused POSTERS.h5 TITLES.h5 --plots PLOTS.h5`` measures instead (its own README block): titles
(MiniLM) alone, posters alone, posters + titles (early, late and the ensemble of each), and the
plots with the ensemble head, each on one split shared by its stores (``run_fused``'s same-items
comparison: the same test items and genres for every column). ``--seeds 1 2 3 4`` adds split seeds
on which the plots' ensemble is compared with the single heads (one 204-plot test split is noisy).

    python benchmarks/bench_accuracy.py --fused P.h5 T.h5 --plots plots.h5 --heads logreg knn mlp ensemble

Two image stores work the same way (``--fused six_stage.h5 dinov2.h5 --no-readme``: each encoder
alone and concatenated, on the same items and split; the rows are named after the stores).
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
FUSED_BEGIN, FUSED_END = "<!-- bench_accuracy_fused:begin -->", "<!-- bench_accuracy_fused:end -->"


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
        ("MobileNetV2 real weights, 6 stages (mean, std)",
         FeatureStore(build_store("posters_mobilenet_v2_layers", "mobilenet_v2", POSTERS, weights=str(MOBILENET), layers="all"))),
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


def write_readme(text: str, begin: str = BEGIN, end: str = END) -> bool:
    if not README.is_file():
        return False
    doc = README.read_text(encoding="utf-8")
    if begin not in doc or end not in doc:
        return False
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    README.write_text(pattern.sub(lambda _: f"{begin}\n{text}\n{end}", doc), encoding="utf-8")
    return True


def fused_main(args, heads: tuple[str, ...]) -> None:
    """Posters + titles (early, late, ensemble) and plots + ensemble: the rows of issue 10."""
    from genrekit.features import join_stores
    from genrekit.runs.fused import FusionConfig, run_fused

    t_start = time.perf_counter()
    config = HeadsConfig(heads=heads, seed=args.seed, jobs=args.jobs)
    rows, lines, what = [], [], []
    if args.fused:
        with tempfile.TemporaryDirectory() as tmp:
            joined = join_stores(args.fused, "inner")
            res = run_fused(joined, args.fused_out or tmp, config, FusionConfig(fusion="both", join="inner"))
        what.append(f"stores {', '.join(map(str, args.fused))} (inner join: {res['coverage']['items']:,} items)")
        fused_rows(res, rows, lines)
    if args.plots:
        what.append(f"plots {args.plots}")
        plot_rows(args, config, rows, lines)
    doc = "\n".join([
        *machine_lines(),
        f"- {'; '.join(what)}; heads {', '.join(heads) or 'all'}; "
        f"stratified 70/15/15 split (seed {args.seed}); per-genre thresholds tuned on validation; wall {time.perf_counter() - t_start:.0f} s",
        "",
        md_table(["data", "features", "head", "F1 micro", "F1 macro", "mAP", "ROC AUC macro"], rows),
        "",
        *lines,
    ])  # fmt: skip
    print(doc)
    if not args.no_readme:
        print(f"\n{'wrote' if write_readme(doc, FUSED_BEGIN, FUSED_END) else 'could not write (no markers in)'} {README}")


def fused_rows(res: dict, rows: list, lines: list) -> None:
    same = res["same_items"]
    names = {n: ("posters" if n.startswith("image") else "titles") + f" ({n})" for n in res["single"]}
    both = " + ".join(dict.fromkeys(v.split(" (")[0] for v in names.values()))  # "posters + titles", or "posters" for two image stores
    if both == "posters":
        both = " + ".join(n.removeprefix("image-") for n in res["single"])
    parts = [*res["single"], "early", "late"]
    label = {**names, "early": f"{both}, early", "late": f"{both}, late"}
    for entry, by_part in same["heads"].items():
        for part in parts:
            if part in by_part:
                m = by_part[part]
                rows.append(["movie_posters", label[part], entry, *(fmt(m.get(k)) for k in ("f1_micro", "f1_macro", "map_macro", "roc_auc_macro"))])
    best = same["best"]
    poster = next(n for n in res["single"] if n.startswith("image"))
    fused_part = max(("early", "late"), key=lambda p: res[p]["heads"][res[p]["best"]]["val_map_macro"] if res.get(p) else -1)
    b, f = best[poster], best[fused_part]
    lines.append(f"- {both}: best on validation, scored on the same {same['items']:,} test items ({len(same['genres'])} genres): {poster} alone "
                 f"{b['head']} mAP {b['map_macro']:.3f} / macro ROC AUC {b['roc_auc_macro']:.3f}; fused ({fused_part}) {f['head']} "
                 f"mAP {f['map_macro']:.3f} / AUC {f['roc_auc_macro']:.3f}: +{f['map_macro'] - b['map_macro']:.3f} mAP, "
                 f"+{f['roc_auc_macro'] - b['roc_auc_macro']:.3f} AUC")  # fmt: skip


def plot_rows(args, config: HeadsConfig, rows: list, lines: list) -> None:
    """The plots + ensemble rows (split seed ``args.seed``), then the ensemble against the single
    heads on every split seed of ``--seeds``: one 204-plot test split is a noisy judge."""
    st = FeatureStore(args.plots)
    base = st.load()
    per_seed = []
    for seed in dict.fromkeys([args.seed, *args.seeds]):
        fs = with_split(base, shared_split(base, seed))
        with tempfile.TemporaryDirectory() as out:
            pres = run_heads(fs, out, dataclasses.replace(config, seed=seed), header=st.header)
        if seed == args.seed:
            for head, m, _, _ in head_rows(pres):
                if not head.startswith("baseline"):
                    rows.append(["imdb_plots", "plots (MiniLM)", head, *(fmt(m.get(k)) for k in ("f1_micro", "f1_macro", "map_macro", "roc_auc_macro"))])
        if "ensemble" not in pres["heads"]:
            continue
        test = {h: e["test"]["tuned"]["map_macro"] for h, e in pres["heads"].items()}
        val = {h: e["val"]["map_macro"] for h, e in pres["heads"].items() if h != "ensemble"}
        top, chosen = max((h for h in test if h != "ensemble"), key=test.get), max(val, key=val.get)
        per_seed.append((seed, test["ensemble"], top, test[top], chosen, test[chosen], pres["heads"]["ensemble"]["fitted"]["members"]))
    if not per_seed:
        return
    lines.append(f"- imdb_plots, ensemble against the single heads on {len(per_seed)} split seeds (test mAP; "
                 "'best single on test' is an oracle: the head that scored best on test):")
    lines.append("")
    lines.append(md_table(["split seed", "ensemble", "best single on test", "best single on validation", "ensemble members"],
                          [(s, f"{e:.3f}", f"{t} {tm:.3f}", f"{c} {cm:.3f}", ", ".join(f"{k} x{v}" for k, v in mem.items()))
                           for s, e, t, tm, c, cm, mem in per_seed]))  # fmt: skip
    mean = lambda k: float(np.mean([r[k] for r in per_seed]))  # noqa: E731
    wins = sum(r[1] >= r[3] - 1e-12 for r in per_seed)
    lines.append("")
    lines.append(f"- mean test mAP over the seeds: ensemble {mean(1):.3f}, best single head on test {mean(3):.3f}, "
                 f"single head chosen on validation {mean(5):.3f}; the ensemble is at least the oracle's best single head on {wins} of {len(per_seed)} seeds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", help="the real MobileNetV2 poster store (default: built in benchmarks/.cache)")
    ap.add_argument("--heads", nargs="+", default=None, help="heads to run (default: every head that applies)")
    ap.add_argument("--jobs", type=int, default=0, help="heads trained at once (0: one per core)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-readme", action="store_true", help="print only; leave benchmarks/README.md alone")
    ap.add_argument("--quick", action="store_true", help="logreg, knn and mlp only")
    ap.add_argument("--fused", nargs=2, metavar=("POSTERS", "TITLES"), help="measure posters + titles fusion on these stores instead")
    ap.add_argument("--plots", help="a plot store for the plots + ensemble rows (with or without --fused)")
    ap.add_argument("--seeds", nargs="*", type=int, default=[], help="with --plots: more split seeds for the ensemble comparison")
    ap.add_argument("--fused-out", help="keep the fused run in this directory (default: a temporary one)")
    args = ap.parse_args()
    quiet_baseline()
    heads = tuple(args.heads or (("logreg", "knn", "mlp") if args.quick else ()))
    if args.fused or args.plots:
        fused_main(args, heads)
        return
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
