"""Plots: MiniLM vs TF-IDF, poster + plot fusion, and text zero-shot, on one split each.

1. ``imdb_plots`` (1,363 plots): MiniLM features with genrekit's best head (every head of
   ``genrekit heads --all``, the best on validation mAP) against TF-IDF + one-vs-rest
   LogisticRegression (vectoriser fitted on the training plots, C chosen on validation mAP, and
   C=1 untuned), same stratified 70/15/15 split, same genres, test macro ROC AUC and mAP.
2. The films of ``movie_posters`` that have a plot (683): MobileNetV2 posters + MiniLM plots
   joined by id (``--join inner``), each store alone, early and late fusion
   (``genrekit.runs.fused.run_fused``), mAP on the same test items. ``--outer`` adds the outer join
   (all 6,000 posters, 683 with a plot) scored on the test items that have a plot.
3. Text zero-shot with MiniLM on ``imdb_plots``: macro ROC AUC of the cosine similarity between
   each plot and each genre's description (no label used), on the test split of 1 and on all
   plots, against chance (0.5) and against prompt templates; and the calibrated ``zeroshot``
   head of run 1.

    python benchmarks/bench_plots.py --posters /work/stores/posters_mnv2.h5 --poster-plots /work/stores/plots_minilm.h5
    python benchmarks/bench_plots.py --quick          # logreg, knn, mlp only
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from _common import PLOTS, POSTERS, build_store, fmt, md_table, poster_store, print_header, quiet_baseline
from bench_accuracy import shared_split, with_split

from genrekit.data.manifest import PARTS, read_manifest
from genrekit.evaluation.metrics import macro_average_precision, multilabel_metrics
from genrekit.features import join_stores
from genrekit.runs.fused import FusionConfig, run_fused
from genrekit.runs.leaderboard import HeadsConfig, run_heads
from genrekit.heads.zeroshot import TEXT_TEMPLATES, build_prompt_embeddings, cosine_scores, genre_prompt_embeddings
from genrekit.store import FeatureSet, FeatureStore

C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def ranking(Y: np.ndarray, P: np.ndarray) -> tuple[float, float]:
    """(macro ROC AUC, mAP) with genrekit's definitions (genres without both classes left out)."""
    m = multilabel_metrics(Y, P, (P >= 0.5).astype(np.uint8))
    return m["roc_auc_macro"], m["map_macro"]


def tfidf_logreg(fs: FeatureSet, cols: list[int]) -> dict:
    """TF-IDF + one-vs-rest LogisticRegression on the plots of ``fs``'s items, C tuned on validation."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    plot = {s.id: s.plot or "" for s in read_manifest(PLOTS).samples}
    docs = np.array([plot[i] for i in fs.ids], dtype=object)
    part = {p: fs.split == p for p in PARTS}
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2, stop_words="english", ngram_range=(1, 2)).fit(docs[part["train"]])
    X = {p: vec.transform(docs[m]) for p, m in part.items()}
    Y = {p: fs.Y[m][:, cols] for p, m in part.items()}

    def fit(C: float):
        return OneVsRestClassifier(LogisticRegression(C=C, max_iter=2000)).fit(X["train"], Y["train"])

    val = {C: macro_average_precision(Y["val"], fit(C).predict_proba(X["val"])) for C in C_GRID}
    best_c = max(val, key=val.get)
    return {
        "C": best_c,
        "tuned": ranking(Y["test"], fit(best_c).predict_proba(X["test"])),
        "default": ranking(Y["test"], fit(1.0).predict_proba(X["test"])),
        "vocabulary": len(vec.vocabulary_),
    }


def minilm_vs_tfidf(store: FeatureStore, config: HeadsConfig, seed: int) -> tuple[dict, FeatureSet, list[int]]:
    fs = store.load()
    fs = with_split(fs, shared_split(fs, seed))
    with tempfile.TemporaryDirectory() as out:
        res = run_heads(fs, out, config, header=store.header)
    cols = [fs.genres.index(g) for g in res["genres"]]
    t0 = time.perf_counter()
    tfidf = tfidf_logreg(fs, cols)
    tfidf["seconds"] = time.perf_counter() - t0
    return {"heads": res, "tfidf": tfidf}, fs, cols


def print_minilm_vs_tfidf(r: dict) -> None:
    res, tf = r["heads"], r["tfidf"]
    best = res["best"]
    rows = []
    for name, e in res["heads"].items():
        m = e["test"]["tuned"]
        label = f"MiniLM + {name}" + (" (best on validation mAP)" if name == best else "")
        rows.append([label, fmt(m["roc_auc_macro"]), fmt(m["map_macro"]), fmt(e["val"]["map_macro"])])
    rows.append([f"TF-IDF + OvR LogisticRegression, C={tf['C']:g} (tuned on validation)", fmt(tf["tuned"][0]), fmt(tf["tuned"][1]), "-"])
    rows.append(["TF-IDF + OvR LogisticRegression, C=1 (untuned)", fmt(tf["default"][0]), fmt(tf["default"][1]), "-"])
    split = res["split"]["counts"]
    print(f"## 1. imdb_plots: MiniLM + genrekit heads vs TF-IDF + one-vs-rest logistic regression\n\n"
          f"{res['features']['n_items']:,} plots, split {split['train']}/{split['val']}/{split['test']} (stratified, shared), "
          f"{len(res['genres'])} genres with >= 10 training positives; TF-IDF: word 1-2 grams, {tf['vocabulary']:,} terms "
          f"(train-fitted, min_df 2), C from {', '.join(f'{c:g}' for c in C_GRID)}\n")  # fmt: skip
    print(md_table(["features + head", "test macro ROC AUC", "test mAP", "val mAP"], rows))
    b = res["heads"][best]["test"]["tuned"]
    print(f"\nbest MiniLM head ({best}) / tuned TF-IDF: macro ROC AUC {b['roc_auc_macro'] / tf['tuned'][0]:.3f}x, "
          f"mAP {b['map_macro'] / tf['tuned'][1]:.3f}x\n")  # fmt: skip


def fusion(posters, plots, join: str, config: HeadsConfig) -> dict:
    joined = join_stores([posters, plots], join)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        res = run_fused(joined, out, config, FusionConfig(fusion="both", join=join))
        res["seconds"] = time.perf_counter() - t0
    return res


def print_fusion(results: dict[str, dict]) -> None:
    print("## 2. movie_posters with a plot: poster + plot fusion vs each alone (mAP on the same test items)\n")
    for join, res in results.items():
        cov, same = res["coverage"], res["same_items"]
        parts = list(same["best"])
        print(f"### join {join}: {cov['items']:,} items ({', '.join(f'{n} {c:,}' for n, c in cov['per_store'].items())}), "
              f"split {'/'.join(str(v) for v in res['split']['counts'].values())}; scored on the {same['items']} test items "
              f"with both, {len(same['genres'])} genres; {res['seconds']:.0f} s\n")  # fmt: skip
        rows = [[h, *(fmt(row[p]["map_macro"]) if p in row else "-" for p in parts)] for h, row in same["heads"].items()]
        rows.append(["**best on validation**", *(f"**{fmt(same['best'][p]['map_macro'])}** ({same['best'][p]['head']})" for p in parts)])
        rows.append(["macro ROC AUC of the best", *(fmt(same["best"][p]["roc_auc_macro"]) for p in parts)])
        print(md_table(["head", *parts], rows))
        singles = [p for p in parts if p not in ("early", "late")]
        for fused in ("early", "late"):
            heads = [h for h, row in same["heads"].items() if fused in row and all(p in row for p in singles)]
            ahead = [h for h in heads if same["heads"][h][fused]["map_macro"] > max(same["heads"][h][p]["map_macro"] for p in singles)]
            print(f"- {fused} fusion beats both stores alone for {len(ahead)} of {len(heads)} heads ({', '.join(ahead) or 'none'})")
        late = res["late"]["heads"][res["late"]["best"]]
        print(f"\nlate fusion ({res['late']['best']}) weights tuned on validation: "
              + ", ".join(f"{n} {w:.2f}" for n, w in late["weights"].items()) + "\n")  # fmt: skip


def zero_shot(fs: FeatureSet, genres: list[str], heads_res: dict) -> None:
    from genrekit.backbones import create_encoder

    enc = create_encoder("minilm", device="cpu")
    cols = [fs.genres.index(g) for g in genres]
    test = fs.split == "test"
    rows = []
    for label, E in (
        ("genre descriptions (genrekit default for plots)", genre_prompt_embeddings(enc.encode_texts, genres, "text")),
        ("prompt templates (\"A {} movie.\" ...)", build_prompt_embeddings(enc.encode_texts, genres, TEXT_TEMPLATES)),
    ):
        S = cosine_scores(fs.X, E)
        rows.append([label, fmt(ranking(fs.Y[test][:, cols], S[test])[0]), fmt(ranking(fs.Y[:, cols], S)[0])])
    z = heads_res["heads"].get("zeroshot")
    zs = fmt(z["test"]["tuned"]["roc_auc_macro"]) if z else "-"
    rows.append(["`zeroshot` head (descriptions, per-genre logistic calibration on validation)", zs, "-"])
    rows.append(["chance", "0.500", "0.500"])
    print(f"## 3. Text zero-shot with MiniLM on imdb_plots\n\ncosine similarity of each plot to each genre's prompt embedding; "
          f"{len(genres)} genres, {int(test.sum())} test plots / {len(fs.ids):,} plots; no label used except by the head's calibration\n")  # fmt: skip
    print(md_table(["prompts", "macro ROC AUC, test split", "macro ROC AUC, all plots"], rows))
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plots", help="MiniLM store of imdb_plots (default: built in benchmarks/.cache)")
    ap.add_argument("--posters", help="MobileNetV2 store of movie_posters (default: built in benchmarks/.cache)")
    ap.add_argument("--poster-plots", help="MiniLM store of movie_posters' plots (default: built in benchmarks/.cache)")
    ap.add_argument("--heads", nargs="+", default=None, help="heads (default: every head that applies)")
    ap.add_argument("--quick", action="store_true", help="logreg, knn and mlp only")
    ap.add_argument("--outer", action="store_true", help="also fuse with the outer join (all 6,000 posters; slower)")
    ap.add_argument("--jobs", type=int, default=0, help="heads trained at once (0: one per core)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    quiet_baseline()
    heads = tuple(args.heads or (("logreg", "knn", "mlp") if args.quick else ()))
    config = HeadsConfig(heads=heads, seed=args.seed, jobs=args.jobs)
    plots = FeatureStore(args.plots or build_store("plots_minilm", "minilm", PLOTS, modality="text"))
    posters = poster_store(args.posters)
    poster_plots = args.poster_plots or build_store("poster_plots_minilm", "minilm", POSTERS, modality="text")
    print_header("bench_plots", f"heads: {', '.join(heads) or 'all'}, seed {args.seed}, thresholds per genre on validation")

    t0 = time.perf_counter()
    r1, fs, cols = minilm_vs_tfidf(plots, config, args.seed)
    print_minilm_vs_tfidf(r1)
    fused = {"inner": fusion(posters, poster_plots, "inner", config)}
    if args.outer:
        fused["outer"] = fusion(posters, poster_plots, "outer", config)
    print_fusion(fused)
    zero_shot(fs, [fs.genres[j] for j in cols], r1["heads"])
    print(f"wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
