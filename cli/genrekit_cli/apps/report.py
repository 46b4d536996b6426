"""One self-contained HTML report of a run: ``genrekit report``.

Reads a run directory (a ``genrekit heads`` run, a fused run, or a fine-tune run) and draws
every figure with matplotlib's Agg backend into PNGs embedded as base64, so the file opens from
disk with no network. The page comes from a jinja2 template shipped with the package
(``templates/report.html.j2``). Genres appear in the run's own order (the store's, most frequent
first) in every table and figure.

Sections: the leaderboard and the threshold-rule table; for the best head (and any named one):
per-genre precision / recall / F1 with support, PR and ROC curves, F1 against the threshold with
the tuned thresholds marked, a reliability diagram and per-genre 2x2 confusion counts; the data
(genre counts per split before and after oversampling, label co-occurrence, labels per item);
training curves of fine-tune runs; a gallery of the most confident wrong and right test posters.
Per-item curves need the head's ``predictions.npz`` (written by ``genrekit heads``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genrekit import __version__
from genrekit.errors import ConfigError, StoreError, UnknownNameError
from genrekit.rundir import PREDICTIONS_FILE, read_json, results_kind

log = logging.getLogger(__name__)


PARTS = ("train", "val", "test")
THUMB = 150  # gallery thumbnail height in pixels
GALLERY_N = 8


@dataclass
class Figure:
    title: str
    png: str  # base64
    caption: str = ""
    key: str = ""  # a stable id (tests look for every section's figures)


@dataclass
class Section:
    id: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    tables: list[dict] = field(default_factory=list)  # {"title", "columns", "rows", "note"}
    notes: list[str] = field(default_factory=list)
    gallery: list[dict] = field(default_factory=list)  # {"title", "items": [{img, id, true, predicted}]}


# -- figures ---------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _grid(n: int, cols: int = 6):
    rows = max(1, -(-n // cols))
    fig, axes = _plt().subplots(rows, cols, figsize=(2.4 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes.ravel()


def fig_leaderboard(entries: dict[str, dict], baseline: dict | None) -> str:
    plt = _plt()
    names = list(entries)
    keys = [("map_macro", "mAP"), ("f1_macro", "F1 macro"), ("f1_micro", "F1 micro"), ("roc_auc_macro", "ROC AUC")]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names) + 2), 3.4))
    x = np.arange(len(names))
    w = 0.8 / len(keys)
    for k, (key, label) in enumerate(keys):
        ax.bar(x + k * w - 0.4 + w / 2, [entries[n].get(key) or 0 for n in names], w, label=label)
    if baseline:
        ax.axhline(baseline.get("map_macro") or 0, color="k", ls="--", lw=1, label="baseline mAP")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("test score (tuned thresholds)")
    ax.set_ylim(0, 1)
    ax.set_title("Leaderboard: test scores per head")
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.28))
    return _png(fig)


def fig_rules(rules: dict[str, dict], head: str) -> str:
    plt = _plt()
    names = list(rules)
    fig, ax = plt.subplots(figsize=(6.5, 3))
    x = np.arange(len(names))
    for k, (key, label) in enumerate((("f1_micro", "F1 micro"), ("f1_macro", "F1 macro"), ("f1_samples", "F1 samples"))):
        ax.bar(x + (k - 1) * 0.27, [rules[n][key] for n in names], 0.27, label=label)
    ax.set_xticks(x, names)
    ax.set_ylabel("test F1")
    ax.set_xlabel("threshold rule (each tuned on validation)")
    ax.set_title(f"Threshold rules for {head}")
    ax.legend(fontsize=8)
    return _png(fig)


def fig_per_genre(per_genre: dict[str, dict] | list[dict], genres: list[str], head: str) -> str:
    plt = _plt()
    if isinstance(per_genre, list):  # the runner's per-genre report: a list of {"genre": ..., ...}
        per_genre = {r["genre"]: r for r in per_genre}
    gs = [g for g in genres if g in per_genre]
    fig, ax = plt.subplots(figsize=(max(7, 0.45 * len(gs) + 2), 3.6))
    x = np.arange(len(gs))
    for k, key in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (k - 1) * 0.27, [per_genre[g].get(key) or 0 for g in gs], 0.27, label=key)
    ax.set_xticks(x, [f"{g}\n(n={int(per_genre[g].get('support', 0))})" for g in gs], rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test score (tuned thresholds)")
    ax.set_title(f"{head}: precision, recall and F1 per genre (n = test support)")
    ax.legend(fontsize=8)
    return _png(fig)


def fig_curves(Y: np.ndarray, P: np.ndarray, genres: list[str], kind: str, head: str) -> str:
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    fig, axes = _grid(len(genres))
    for j, g in enumerate(genres):
        ax, y, p = axes[j], Y[:, j], P[:, j]
        if y.min() == y.max():
            ax.set_title(f"{g} (one class in test)", fontsize=8)
            continue
        if kind == "pr":
            prec, rec, _ = precision_recall_curve(y, p)
            ax.plot(rec, prec)
            ax.axhline(y.mean(), color="grey", ls=":", lw=1)
            ax.set_title(f"{g} AP={average_precision_score(y, p):.2f}", fontsize=8)
            ax.set_xlabel("recall", fontsize=7)
            ax.set_ylabel("precision", fontsize=7)
        else:
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr)
            ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
            ax.set_title(f"{g} AUC={roc_auc_score(y, p):.2f}", fontsize=8)
            ax.set_xlabel("false positive rate", fontsize=7)
            ax.set_ylabel("true positive rate", fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"{head}: {'precision-recall' if kind == 'pr' else 'ROC'} curves per genre (test; dotted: chance)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


_TS = np.linspace(0.01, 0.99, 99)


def _f1(y: np.ndarray, p: np.ndarray, t: float) -> float:
    d = p >= t
    tp = float((d & (y == 1)).sum())
    den = float(d.sum() + (y == 1).sum())
    return 2 * tp / den if den else 0.0


def fig_threshold_global(Yv, Pv, Yt, Pt, thresholds: dict, head: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for Y, P, label in ((Yv, Pv, "validation"), (Yt, Pt, "test")):
        ax.plot(_TS, [_f1(Y.ravel(), P.ravel(), t) for t in _TS], label=f"{label} micro F1")
    g = thresholds.get("global")
    if g is not None:
        ax.axvline(g, color="k", ls="--", lw=1, label=f"tuned global threshold {g:.2f}")
    ax.axvline(0.5, color="grey", ls=":", lw=1, label="0.5")
    for t in (0.25, 0.75):
        ax.axvline(t, color="grey", ls=":", lw=0.6)
    ax.set_xlabel("decision threshold (same for every genre)")
    ax.set_ylabel("micro F1")
    ax.set_title(f"{head}: F1 against one global threshold")
    ax.legend(fontsize=7)
    return _png(fig)


def fig_threshold_per_genre(Yv, Pv, Yt, Pt, genres: list[str], per_genre: Sequence[float] | None, head: str) -> str:
    fig, axes = _grid(len(genres))
    for j, g in enumerate(genres):
        ax = axes[j]
        ax.plot(_TS, [_f1(Yv[:, j], Pv[:, j], t) for t in _TS], label="val")
        ax.plot(_TS, [_f1(Yt[:, j], Pt[:, j], t) for t in _TS], label="test")
        if per_genre is not None:
            ax.axvline(per_genre[j], color="k", ls="--", lw=1)
        ax.set_title(f"{g}" + (f" t={per_genre[j]:.2f}" if per_genre is not None else ""), fontsize=8)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("threshold", fontsize=7)
        ax.set_ylabel("F1", fontsize=7)
    axes[0].legend(fontsize=6)
    fig.suptitle(f"{head}: F1 against each genre's threshold (dashed: the tuned threshold)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def fig_reliability(Y: np.ndarray, P: np.ndarray, head: str) -> str:
    from sklearn.calibration import calibration_curve

    plt = _plt()
    fig, (ax, ah) = plt.subplots(1, 2, figsize=(8, 3.2))
    frac, mean = calibration_curve(Y.ravel(), P.ravel(), n_bins=10, strategy="uniform")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", label="perfectly calibrated")
    ax.plot(mean, frac, marker="o", label="all genres pooled")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("fraction of positives")
    ax.set_title(f"{head}: reliability (test)")
    ax.legend(fontsize=7)
    ah.hist(P.ravel(), bins=20, range=(0, 1))
    ah.set_yscale("log")
    ah.set_xlabel("predicted probability")
    ah.set_ylabel("count (genre x item)")
    ah.set_title("how often each probability is given")
    fig.tight_layout()
    return _png(fig)


def fig_confusion(Y: np.ndarray, D: np.ndarray, genres: list[str], head: str) -> str:
    from sklearn.metrics import multilabel_confusion_matrix

    C = multilabel_confusion_matrix(Y, D)
    fig, axes = _grid(len(genres), cols=8)
    for j, g in enumerate(genres):
        ax = axes[j]
        ax.imshow(C[j] / max(C[j].sum(), 1), cmap="Blues", vmin=0, vmax=1)
        for (a, b), v in np.ndenumerate(C[j]):
            ax.text(b, a, str(v), ha="center", va="center", fontsize=8, color="k")
        ax.set_xticks([0, 1], ["pred -", "pred +"], fontsize=6)
        ax.set_yticks([0, 1], ["true -", "true +"], fontsize=6)
        ax.set_title(g, fontsize=8)
    fig.suptitle(f"{head}: 2x2 confusion counts per genre (test, tuned thresholds)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def fig_counts(counts: dict[str, dict[str, int]], genres: list[str], after: dict[str, int] | None) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(7, 0.45 * len(genres) + 2), 3.6))
    x = np.arange(len(genres))
    series = [(p, [counts[p].get(g, 0) for g in genres]) for p in PARTS if p in counts]
    if after is not None:
        series.append(("train after --balance oversample", [after.get(g, 0) for g in genres]))
    w = 0.8 / len(series)
    for k, (label, vals) in enumerate(series):
        ax.bar(x + k * w - 0.4 + w / 2, vals, w, label=label)
    ax.set_yscale("log")
    ax.set_xticks(x, genres, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("items with the genre (log)")
    ax.set_title("Genre counts per split, before and after oversampling")
    ax.legend(fontsize=7)
    return _png(fig)


def fig_cooccurrence(Y: np.ndarray, genres: list[str]) -> str:
    plt = _plt()
    C = Y.T.astype(np.int64) @ Y.astype(np.int64)
    n = len(genres)
    fig, ax = plt.subplots(figsize=(0.32 * n + 3, 0.32 * n + 2))
    diag = np.maximum(np.diag(C), 1)
    im = ax.imshow(C / diag[:, None], cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(n), genres, rotation=90, fontsize=7)
    ax.set_yticks(range(n), genres, fontsize=7)
    fig.colorbar(im, ax=ax, label="P(column genre | row genre)")
    ax.set_title("Label co-occurrence (all items)")
    return _png(fig)


def fig_labels_per_item(Ys: dict[str, np.ndarray]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    top = max(int(Y.sum(axis=1).max()) for Y in Ys.values() if len(Y))
    bins = np.arange(0, top + 2)
    w = 0.8 / len(Ys)
    for k, (p, Y) in enumerate(Ys.items()):
        h = np.bincount(Y.sum(axis=1).astype(int), minlength=len(bins) - 1)[: len(bins) - 1]
        ax.bar(bins[:-1] + k * w - 0.4 + w / 2, h / max(len(Y), 1), w, label=f"{p} ({len(Y)})")
    ax.set_xticks(bins[:-1])
    ax.set_xlabel("genres per item (kept genres)")
    ax.set_ylabel("share of items")
    ax.set_title("Labels per item")
    ax.legend(fontsize=8)
    return _png(fig)


def fig_finetune(cells: dict[str, dict]) -> str:
    plt = _plt()
    fig, (al, am) = plt.subplots(1, 2, figsize=(11, 3.6))
    for k, (cell, c) in enumerate(cells.items()):
        h = c.get("history") or []
        ep = [r["epoch"] for r in h]
        colour = f"C{k % 10}"
        al.plot(ep, [r.get("train_loss") for r in h], color=colour, label=f"{cell} train")
        al.plot(ep, [r.get("val_loss") for r in h], color=colour, ls="--", label=f"{cell} val")
        am.plot(ep, [r.get("val_map") for r in h], color=colour, marker=".", label=cell)
    al.set_xlabel("epoch")
    al.set_ylabel("loss (solid train, dashed val)")
    al.set_title("Loss per epoch, every grid cell")
    am.set_xlabel("epoch")
    am.set_ylabel("validation mAP")
    am.set_title("Validation mAP per epoch")
    am.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def fig_wise(wise: dict) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(wise["alphas"], wise["val_map"], marker="o")
    if wise.get("chosen") is not None:
        ax.axvline(wise["chosen"], color="k", ls="--", lw=1, label=f"chosen alpha {wise['chosen']}")
        ax.legend(fontsize=8)
    ax.set_xlabel("alpha (0: zero-shot / frozen weights, 1: fine-tuned)")
    ax.set_ylabel("validation mAP")
    ax.set_title("WiSE-FT weight interpolation")
    return _png(fig)


# -- reading the run ---------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    return read_json(path)


def run_kind(results: dict) -> str:
    """``finetune``, ``fused`` or ``heads`` from a run's results.json."""
    return results_kind(results)


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _predictions(head_dir: Path) -> dict[str, np.ndarray] | None:
    f = head_dir / PREDICTIONS_FILE
    if not f.is_file():
        return None
    with np.load(f, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _image_paths(header: dict | None, base: Path) -> dict[str, str]:
    """id -> poster path from the manifest the store was extracted from, for files still present."""
    if not header or header.get("modality") != "image":
        return {}
    from genrekit.store import StoreHeader

    try:
        m = StoreHeader.from_json(header).manifest_source().read()
    except Exception as e:  # a moved or edited manifest: no gallery, the rest of the report stands
        log.warning("gallery: %s", e)
        return {}
    return {s.id: s.image for s in m.samples if s.image and Path(s.image).is_file()}


def _thumb(path: str) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
    except OSError:
        return None
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _labels(row: np.ndarray, genres: list[str]) -> str:
    return ", ".join(g for g, v in zip(genres, row) if v) or "(none)"


def gallery(pred: dict, thresholds, genres: list[str], paths: dict[str, str], n: int = GALLERY_N) -> list[dict]:
    """The test posters whose top genre is most confidently wrong, and most confidently right."""
    ids, P, Y = pred["ids_test"], pred["P_test"], pred["Y_test"]
    D = thresholds.apply(P)
    top = P.argmax(axis=1)
    conf = P[np.arange(len(P)), top]
    right = Y[np.arange(len(P)), top] == 1
    have = np.array([str(i) in paths for i in ids], bool)
    out = []
    for title, mask in (("Most confident wrong (top genre not among the true ones)", ~right & have),
                        ("Most confident right (top genre among the true ones)", right & have)):  # fmt: skip
        rows = np.flatnonzero(mask)
        rows = rows[np.argsort(-conf[rows], kind="stable")][:n]
        items = []
        for r in rows:
            img = _thumb(paths[str(ids[r])])
            if img is None:
                continue
            ranked = np.argsort(-P[r], kind="stable")[:3]
            items.append({
                "img": img, "id": str(ids[r]), "true": _labels(Y[r], genres),
                "predicted": _labels(D[r], genres),
                "top": ", ".join(f"{genres[j]} {P[r, j]:.2f}" for j in ranked),
            })  # fmt: skip
        out.append({"title": title, "items": items})
    return out


# -- sections ------------------------------------------------------------------------------------
def leaderboard_section(results: dict, title: str = "Leaderboard") -> Section:
    sec = Section("leaderboard", title)
    entries = {e: v["test"]["tuned"] for e, v in results["heads"].items()}
    cols = ["head", "F1 micro", "F1 macro", "mAP", "ROC AUC", "Hamming", "F1 micro @0.5", "val mAP", "fit s"]
    rows = []
    for e, v in results["heads"].items():
        t, z = v["test"]["tuned"], v["test"]["at_0.5"]
        mark = "*" if e == results.get("best") else ""
        rows.append([e + mark, *(_fmt(t.get(k)) for k in ("f1_micro", "f1_macro", "map_macro", "roc_auc_macro", "hamming_loss")),
                     _fmt(z.get("f1_micro")), _fmt(v["val"].get("map_macro")), _fmt(v.get("fit_seconds"), 1)])  # fmt: skip
    base = results.get("baseline")
    if base:
        z = base["test"]["at_0.5"]
        rows.append(["baseline (sklearn defaults, at 0.5)", *(_fmt(z.get(k)) for k in ("f1_micro", "f1_macro", "map_macro", "roc_auc_macro", "hamming_loss")),
                     _fmt(z.get("f1_micro")), _fmt(base["val"].get("map_macro")), _fmt(base.get("fit_seconds"), 1)])  # fmt: skip
    split = results.get("split", {}).get("counts", {})
    sec.tables.append({"title": "Test scores at the thresholds tuned on validation", "columns": cols, "rows": rows,
                       "note": f"* best on validation mAP. Split {split.get('train')}/{split.get('val')}/{split.get('test')} "
                               f"({results.get('split', {}).get('source')}); threshold rule {results.get('config', {}).get('threshold')}."})  # fmt: skip
    sec.figures.append(Figure("Leaderboard", fig_leaderboard(entries, base["test"]["at_0.5"] if base else None), key="leaderboard"))
    return sec


def rules_section(results: dict, heads: Sequence[str]) -> Section:
    sec = Section("rules", "Threshold rules")
    cols = ["head", "rule", "F1 micro", "F1 macro", "F1 samples", "Hamming"]
    rows = []
    for h in heads:
        for rule, m in results["heads"][h].get("rules", {}).items():
            rows.append([h, rule, *(_fmt(m.get(k)) for k in ("f1_micro", "f1_macro", "f1_samples", "hamming_loss"))])
        if results["heads"][h].get("rules"):
            sec.figures.append(Figure(f"Threshold rules: {h}", fig_rules(results["heads"][h]["rules"], h), key=f"rules-{h}"))
    sec.tables.append({"title": "Test F1 of each threshold rule, each tuned on validation", "columns": cols, "rows": rows, "note": ""})
    return sec


def head_section(results: dict, entry: str, head_dir: Path, genres: list[str], paths: dict[str, str]) -> list[Section]:
    """Per-genre bars, curves, thresholds, calibration and confusion of one head; and its gallery."""
    from genrekit.evaluation.thresholds import Thresholds

    v = results["heads"][entry]
    sec = Section(f"head-{entry}", f"Head {entry}" + (" (best on validation)" if entry == results.get("best") else ""))
    sec.notes.append(v.get("description", ""))
    if v.get("per_genre"):
        sec.figures.append(Figure("Per-genre precision, recall and F1", fig_per_genre(v["per_genre"], genres, entry), key=f"per-genre-{entry}"))
    pred = _predictions(head_dir)
    gal: list[Section] = []
    if pred is None:
        sec.notes.append(f"{head_dir}/{PREDICTIONS_FILE} is missing (a run from before genrekit saved per-item probabilities): "
                         "no curves, calibration, confusion or gallery for this head; re-run `genrekit heads` to get them.")  # fmt: skip
        return [sec]
    th = Thresholds.from_json(v["thresholds"])
    Yv, Pv, Yt, Pt = pred["Y_val"], pred["P_val"], pred["Y_test"], pred["P_test"]
    sec.figures += [
        Figure("Precision-recall curves", fig_curves(Yt, Pt, genres, "pr", entry), key=f"pr-{entry}"),
        Figure("ROC curves", fig_curves(Yt, Pt, genres, "roc", entry), key=f"roc-{entry}"),
    ]
    tj = v["thresholds"]
    glob = {"global": float(tj["values"][0])} if tj.get("rule") == "global" else {"global": _global_of(Yv, Pv)}
    per = [float(t) for t in th.values] if len(np.atleast_1d(th.values)) == len(genres) else None
    sec.figures += [
        Figure("F1 against a global threshold", fig_threshold_global(Yv, Pv, Yt, Pt, glob, entry), key=f"threshold-global-{entry}",
               caption=f"The dashed line is the best global threshold on validation; this head's rule is {tj.get('rule')}."),
        Figure("F1 against each genre's threshold", fig_threshold_per_genre(Yv, Pv, Yt, Pt, genres, per, entry), key=f"threshold-genre-{entry}"),
        Figure("Reliability diagram", fig_reliability(Yt, Pt, entry), key=f"reliability-{entry}"),
        Figure("Confusion counts", fig_confusion(Yt, th.apply(Pt), genres, entry), key=f"confusion-{entry}"),
    ]  # fmt: skip
    if paths:
        g = Section(f"gallery-{entry}", f"Gallery: {entry} on test posters")
        g.gallery = gallery(pred, th, genres, paths)
        gal.append(g)
    return [sec, *gal]


def _global_of(Yv: np.ndarray, Pv: np.ndarray) -> float:
    return float(_TS[int(np.argmax([_f1(Yv.ravel(), Pv.ravel(), t) for t in _TS]))])


def data_section(results: dict, pred: dict | None, genres: list[str]) -> Section:
    from genrekit.heads.balance import oversample_indices

    sec = Section("data", "The data")
    counts = results.get("genre_counts") or {}
    after = None
    if pred is not None and "Y_train" in pred:
        Ytr = pred["Y_train"]
        cfg = results.get("config", {})
        idx = oversample_indices(Ytr, seed=int(cfg.get("seed", 0)))
        after = dict(zip(genres, Ytr[idx].sum(axis=0).tolist()))
        counts = counts or {p: dict(zip(genres, pred[f"Y_{p}"].sum(axis=0).tolist())) for p in PARTS}
    if counts:
        used = ", ".join(cfg_b for cfg_b in results.get("config", {}).get("balance", ["none"]))
        sec.figures.append(Figure("Genre counts", fig_counts(counts, genres, after), key="counts",
                                  caption=f"This run trained with --balance {used}; the last bars show what oversampling makes of train."))  # fmt: skip
    if pred is not None and all(f"Y_{p}" in pred for p in PARTS):
        Ys = {p: pred[f"Y_{p}"] for p in PARTS}
        sec.figures.append(Figure("Label co-occurrence", fig_cooccurrence(np.concatenate(list(Ys.values())), genres), key="cooccurrence"))
        sec.figures.append(Figure("Labels per item", fig_labels_per_item(Ys), key="labels-per-item"))
    else:
        sec.notes.append("no per-item labels saved with this run (predictions.npz): co-occurrence and labels per item are left out")
    dropped = results.get("dropped_genres") or {}
    if dropped:
        sec.notes.append("dropped genres: " + "; ".join(f"{g} ({w})" for g, w in dropped.items()))
    return sec


# -- one report per run kind ---------------------------------------------------------------------
def _heads_sections(run: Path, results: dict, heads: Sequence[str], progress: Callable[[str], None]) -> list[Section]:
    genres = list(results["genres"])
    best = results.get("best")
    chosen = [h for h in [best, *heads] if h]
    chosen = list(dict.fromkeys(chosen))
    for h in chosen:
        if h not in results["heads"]:
            raise UnknownNameError("head", h, list(results["heads"]))
    header = (results.get("features") or {}).get("store_header")
    progress("leaderboard")
    sections = [leaderboard_section(results), rules_section(results, chosen)]
    paths = _image_paths(header, run)
    for h in chosen:
        progress(f"head {h}")
        sections += head_section(results, h, run / results["heads"][h].get("dir", h), genres, paths)
    progress("data")
    pred = _predictions(run / results["heads"][best].get("dir", best)) if best else None
    sections.insert(2, data_section(results, pred, genres))
    return sections


def _fused_sections(run: Path, results: dict, heads: Sequence[str], progress: Callable[[str], None]) -> list[Section]:
    sec = Section("fusion", "Fusion: every part on the same test items")
    same = results["same_items"]
    parts = sorted({p for v in same["heads"].values() for p in v})
    cols = ["head", *(f"{p} mAP" for p in parts), *(f"{p} F1 macro" for p in parts)]
    rows = [[e, *(_fmt(v.get(p, {}).get("map_macro")) for p in parts), *(_fmt(v.get(p, {}).get("f1_macro")) for p in parts)]
            for e, v in same["heads"].items()]  # fmt: skip
    sec.tables.append({"title": f"{same['items']} test items that have every store, {len(same['genres'])} genres",
                       "columns": cols, "rows": rows, "note": f"fusion {results['fusion'].get('kind')}, join {results['fusion'].get('join')}"})  # fmt: skip
    if same["heads"]:
        ent = {f"{e} / {p}": m for e, v in same["heads"].items() for p, m in v.items()}
        sec.figures.append(Figure("Fused leaderboard", fig_leaderboard(ent, None), key="leaderboard"))
    late = results.get("late") or {}
    if late.get("heads"):
        sec.tables.append({"title": "Late-fusion weights (tuned on validation mAP)", "columns": ["head", "weights", "val mAP"],
                           "rows": [[e, ", ".join(f"{n} {w:g}" for n, w in v["weights"].items()), _fmt(v["val_map_macro"])] for e, v in late["heads"].items()],
                           "note": ""})  # fmt: skip
    # The detailed sections use the part with the best same-items mAP among those with saved heads.
    cands = {p: b for p, b in same.get("best", {}).items() if (run / p / "results.json").is_file()}
    if not cands:
        sec.notes.append("no part of this fused run has a heads results.json to detail")
        return [sec]
    part = max(cands, key=lambda p: cands[p].get("map_macro") or -1)
    sec.notes.append(f"Detailed below: part {part!r} (best same-items mAP among the parts with saved heads; late fusion saves no per-item probabilities).")
    sub = _read_json(run / part / "results.json")
    inner = _heads_sections(run / part, sub, [h for h in heads if h in sub["heads"]], progress)
    for s in inner:
        s.title = f"[{part}] {s.title}"
    return [sec, *inner]


def _finetune_sections(run: Path, results: dict, heads: Sequence[str], progress: Callable[[str], None]) -> list[Section]:
    cells = results.get("cells") or {}
    sec = Section("leaderboard", "Fine-tune grid")
    cols = ["cell", "config", "epochs", "best val mAP", "test mAP", "test F1 micro", "test F1 macro", "test F1 micro @0.5", "seconds"]
    rows = []
    for c, v in cells.items():
        t, z = (v.get("test") or {}).get("tuned", {}), (v.get("test") or {}).get("at_0.5", {})
        vm = max((r.get("val_map") or 0 for r in v.get("history") or []), default=None)
        rows.append([c + ("*" if c == results.get("best") else ""), json.dumps(v.get("config", {}))[:80], _fmt(v.get("last_epoch")), _fmt(vm),
                     _fmt(t.get("map_macro")), _fmt(t.get("f1_micro")), _fmt(t.get("f1_macro")), _fmt(z.get("f1_micro")), _fmt(v.get("seconds"), 1)])  # fmt: skip
    sec.tables.append({"title": "Every grid cell (test at thresholds tuned on validation)", "columns": cols, "rows": rows, "note": "* best cell"})
    if cells:
        ent = {c: (v.get("test") or {}).get("tuned", {}) for c, v in cells.items()}
        sec.figures.append(Figure("Fine-tune leaderboard", fig_leaderboard(ent, None), key="leaderboard"))
    tr = Section("training", "Training curves")
    if cells:
        tr.figures.append(Figure("Loss and validation mAP per epoch", fig_finetune(cells), key="training-curves"))
    wise = results.get("wise_ft")
    if wise and wise.get("alphas"):
        tr.figures.append(Figure("WiSE-FT", fig_wise(wise), key="wise-ft"))
    out = [sec, tr]
    best = results.get("best")
    bv = cells.get(best, {}) if best else {}
    genres = list(results.get("genres") or [])
    per = ((bv.get("test") or {}).get("per_genre")) or bv.get("per_genre")
    if per and genres:
        hs = Section(f"head-{best}", f"Cell {best} (best on validation)")
        hs.figures.append(Figure("Per-genre precision, recall and F1", fig_per_genre(per, genres, best), key=f"per-genre-{best}"))
        out.append(hs)
    pred = _predictions(run)
    if pred is not None and genres:
        from genrekit.evaluation.thresholds import Thresholds

        hs = out[-1] if out[-1].id == f"head-{best}" else Section(f"head-{best}", f"Cell {best}")
        Yv, Pv, Yt, Pt = pred["Y_val"], pred["P_val"], pred["Y_test"], pred["P_test"]
        th = Thresholds.from_json(bv["thresholds"]) if bv.get("thresholds") else None
        hs.figures += [Figure("Precision-recall curves", fig_curves(Yt, Pt, genres, "pr", best), key=f"pr-{best}"),
                       Figure("ROC curves", fig_curves(Yt, Pt, genres, "roc", best), key=f"roc-{best}"),
                       Figure("F1 against a global threshold", fig_threshold_global(Yv, Pv, Yt, Pt, {"global": _global_of(Yv, Pv)}, best), key=f"threshold-global-{best}"),
                       Figure("Reliability diagram", fig_reliability(Yt, Pt, best), key=f"reliability-{best}")]  # fmt: skip
        if th is not None:
            hs.figures.append(Figure("Confusion counts", fig_confusion(Yt, th.apply(Pt), genres, best), key=f"confusion-{best}"))
        if hs not in out:
            out.append(hs)
        out.append(data_section(results, pred, genres))
    else:
        tr.notes.append("this fine-tune run saved no per-item probabilities (predictions.npz): per-genre curves and the data section are left out")
    return out


def build_report(run: str | Path, heads: Sequence[str] = (), progress: Callable[[str], None] | None = None) -> str:
    """The report of a run directory as one HTML string.

    Args:
        run: a ``genrekit heads`` run (``RUNS/``), a fused run, or a fine-tune run directory.
        heads: heads to detail besides the best one (``--head``).
        progress: called with the name of each section as it is drawn.

    Example:
        >>> html_text = build_report("runs/", heads=["knn"])  # doctest: +SKIP
    """
    import jinja2

    run = Path(run)
    rj = run / "results.json"
    if not rj.is_file():
        raise StoreError(f"{run} has no results.json: pass a run directory made by `genrekit heads` (RUNS/, not RUNS/<head>)")
    results = _read_json(rj)
    kind = run_kind(results)
    progress = progress or (lambda _s: None)
    make = {"heads": _heads_sections, "fused": _fused_sections, "finetune": _finetune_sections}[kind]
    t0 = time.perf_counter()
    sections = make(run, results, list(heads), progress)
    env = jinja2.Environment(loader=jinja2.PackageLoader("genrekit_cli.apps", "templates"), autoescape=jinja2.select_autoescape(["html", "j2"]))
    header = (results.get("features") or {}).get("store_header") or {}
    enc = header.get("encoder") or {}
    facts = {
        "run": str(run.resolve()),
        "kind": kind,
        "created": results.get("created"),
        "encoder": f"{enc.get('name')} ({enc.get('weights')})" if enc else "-",
        "genres": ", ".join(results.get("genres") or []) if results.get("genres") else "-",
    }
    page = env.get_template("report.html.j2").render(
        title=f"genrekit report: {html.escape(run.name or str(run))}", facts=facts, sections=sections,
        version=__version__, made=time.strftime("%Y-%m-%d %H:%M:%S%z"),
    )  # fmt: skip
    log.info("report of %s (%s): %d sections in %.1f s", run, kind, len(sections), time.perf_counter() - t0)
    return page


def write_report(run: str | Path, out: str | Path | None = None, heads: Sequence[str] = (), progress=None) -> Path:
    """Write :func:`build_report` to ``out`` (default ``RUN/report.html``) atomically; returns the path."""
    from genrekit.atomic import atomic_write

    out = Path(out) if out is not None else Path(run) / "report.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {out} should end in .html")
    return atomic_write(out, build_report(run, heads, progress))


__all__ = ["build_report", "gallery", "run_kind", "write_report"]
