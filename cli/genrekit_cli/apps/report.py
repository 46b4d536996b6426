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
import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genrekit import __version__
from genrekit.errors import ConfigError, GenrekitError, StoreError, UnknownNameError
from genrekit.rundir import PREDICTIONS_FILE, Results, load_part_predictions, read_json, results_kind

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
# Every figure is drawn for the page it lands on: WIDTH inches at DPI dots per inch is the page's
# content width (1200 px), shown at 100 % (never scaled down), so a font of N points is N * DPI / 72
# pixels on screen: the smallest text (tick labels) is 9 pt = 12.5 px. Legends sit outside the
# axes, and constrained layout keeps every label inside the figure.
DPI = 100
WIDTH = 12.0
STYLE = {
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "figure.constrained_layout.use": True,
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "figure.titlesize": 13,
    # Genre, head and cell names are the user's text: "$\\foo$" is a name, not mathtext to parse.
    "text.parse_math": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
GRID_TICKS = 9  # points: tick labels of the small panels of a per-genre grid
MIN_TEXT_PX = 9.0  # the smallest text on screen, in CSS pixels at 100 % zoom


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(draw: Callable[..., object]) -> Callable[..., str]:
    """Run ``draw`` (which builds a matplotlib figure and returns it) under :data:`STYLE`; returns the PNG as base64."""
    import functools

    @functools.wraps(draw)
    def wrapped(*args, **kwargs) -> str:
        import matplotlib

        _plt()
        with matplotlib.rc_context(STYLE):
            return _png(draw(*args, **kwargs))

    return wrapped


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # no tight bbox: the figure keeps its page width
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _legend_right(ax, **kw) -> None:
    """The legend beside the axes, outside the data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False, **kw)


# A per-genre grid draws one panel per genre: a run with thousands of genres would be a figure tens of
# thousands of pixels tall, so grids show the run's first MAX_GRID_PANELS genres and say so.
MAX_GRID_PANELS = 40


def _shown(genres: Sequence[str]) -> tuple[list[str], str]:
    """The genres a grid draws, and a note for its title when some are left out."""
    n = len(genres)
    return list(genres[:MAX_GRID_PANELS]), (f" - the first {MAX_GRID_PANELS} of {n} genres" if n > MAX_GRID_PANELS else "")


def _grid(n: int, cols: int = 5, height: float = 2.5):
    n = min(n, MAX_GRID_PANELS)
    rows = max(1, -(-n // cols))
    fig, axes = _plt().subplots(rows, cols, figsize=(WIDTH, height * rows + 0.6), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes.ravel()


@figure
def fig_leaderboard(entries: dict[str, dict], baseline: dict | None, title: str = "Leaderboard: test scores per head"):
    plt = _plt()
    names = list(entries)
    keys = [("map_macro", "mAP"), ("f1_macro", "F1 macro"), ("f1_micro", "F1 micro"), ("roc_auc_macro", "ROC AUC")]
    fig, ax = plt.subplots(figsize=(WIDTH, 4.6))
    x = np.arange(len(names))
    w = 0.8 / len(keys)
    for k, (key, label) in enumerate(keys):
        vals = [entries[n].get(key) or 0 for n in names]
        bars = ax.bar(x + k * w - 0.4 + w / 2, vals, w, label=label)
        if len(names) <= 10:
            ax.bar_label(bars, fmt="%.2f", fontsize=9, padding=1)
    if baseline:
        ax.axhline(baseline.get("map_macro") or 0, color="k", ls="--", lw=1, label="baseline mAP (sklearn defaults, 0.5)")
    ax.set_xticks(x, names, rotation=20 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    ax.set_xlim(-0.6, max(len(names), 4) - 0.4)  # a run of one or two entries keeps bars of a readable width
    ax.set_ylabel("test score (tuned thresholds)")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    _legend_right(ax)
    return fig


@figure
def fig_rules(rules: dict[str, dict], head: str):
    plt = _plt()
    names = list(rules)
    fig, ax = plt.subplots(figsize=(WIDTH, 3.8))
    x = np.arange(len(names))
    for k, (key, label) in enumerate((("f1_micro", "F1 micro"), ("f1_macro", "F1 macro"), ("f1_samples", "F1 samples"))):
        bars = ax.bar(x + (k - 1) * 0.27, [rules[n].get(key) or 0 for n in names], 0.27, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=9, padding=1)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test F1")
    ax.set_xlabel("threshold rule (each tuned on validation)")
    ax.set_title(f"Threshold rules for {head}")
    _legend_right(ax)
    return fig


@figure
def fig_per_genre(per_genre: dict[str, dict] | list[dict], genres: list[str], head: str, fallback: Sequence[str] = ()):
    plt = _plt()
    if isinstance(per_genre, list):  # the runner's per-genre report: a list of {"genre": ..., ...}
        per_genre = {r["genre"]: r for r in per_genre}
    gs = [g for g in genres if g in per_genre]
    fig, ax = plt.subplots(figsize=(WIDTH, 5.2))
    x = np.arange(len(gs))
    for k, key in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (k - 1) * 0.27, [per_genre[g].get(key) or 0 for g in gs], 0.27, label={"f1": "F1"}.get(key, key))
    labels = [f"{g}{' †' if g in fallback else ''} (n={int(per_genre[g].get('support') or 0)})" for g in gs]
    ax.set_xticks(x, labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_ylim(0, 1)
    ax.set_ylabel("test score (tuned thresholds)")
    ax.set_title(f"{head}: precision, recall and F1 per genre (n = test support"
                 + ("; † = threshold is the global fallback" if any(g in fallback for g in gs) else "") + ")")  # fmt: skip
    _legend_right(ax)
    return fig


@figure
def fig_curves(Y: np.ndarray, P: np.ndarray, genres: list[str], kind: str, head: str):
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    genres, more = _shown(genres)
    fig, axes = _grid(len(genres))
    for j, g in enumerate(genres):
        ax, y, p = axes[j], Y[:, j], P[:, j]
        ax.tick_params(labelsize=GRID_TICKS)
        if y.min() == y.max():
            ax.set_title(f"{g}: one class in test", fontsize=10)
            continue
        if kind == "pr":
            prec, rec, _ = precision_recall_curve(y, p)
            ax.plot(rec, prec)
            ax.axhline(y.mean(), color="grey", ls=":", lw=1)
            ax.set_title(f"{g}  AP {average_precision_score(y, p):.2f}", fontsize=10)
            ax.set_xlabel("recall", fontsize=10)
            ax.set_ylabel("precision", fontsize=10)
        else:
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr)
            ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
            ax.set_title(f"{g}  AUC {roc_auc_score(y, p):.2f}", fontsize=10)
            ax.set_xlabel("false positive rate", fontsize=10)
            ax.set_ylabel("true positive rate", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xticks([0, 0.5, 1])
        ax.set_yticks([0, 0.5, 1])
    fig.suptitle(f"{head}: {'precision-recall' if kind == 'pr' else 'ROC'} curves per genre (test; dotted: chance){more}")
    return fig


_TS = np.linspace(0.01, 0.99, 99)


def _f1(y: np.ndarray, p: np.ndarray, t: float) -> float:
    d = p >= t
    tp = float((d & (y == 1)).sum())
    den = float(d.sum() + (y == 1).sum())
    return 2 * tp / den if den else 0.0


@figure
def fig_threshold_global(Yv, Pv, Yt, Pt, thresholds: dict, head: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH, 4.2))
    for Y, P, label in ((Yv, Pv, "validation"), (Yt, Pt, "test")):
        ax.plot(_TS, [_f1(Y.ravel(), P.ravel(), t) for t in _TS], label=f"{label} micro F1")
    g = thresholds.get("global")
    if g is not None:
        ax.axvline(g, color="k", ls="--", lw=1, label=f"best global threshold\non validation: {g:.2f}")
    ax.axvline(0.5, color="grey", ls=":", lw=1, label="0.5")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("decision threshold (the same for every genre)")
    ax.set_ylabel("micro F1")
    ax.set_title(f"{head}: F1 against one global threshold")
    _legend_right(ax)
    return fig


@figure
def fig_threshold_per_genre(Yv, Pv, Yt, Pt, genres: list[str], per_genre: Sequence[float] | None, head: str, fallback: Sequence[str] = ()):
    genres, more = _shown(genres)
    fig, axes = _grid(len(genres))
    for j, g in enumerate(genres):
        ax = axes[j]
        ax.plot(_TS, [_f1(Yv[:, j], Pv[:, j], t) for t in _TS], label="validation")
        ax.plot(_TS, [_f1(Yt[:, j], Pt[:, j], t) for t in _TS], label="test")
        title = g
        if per_genre is not None:
            fell = g in fallback
            ax.axvline(per_genre[j], color="C3" if fell else "k", ls="--", lw=1)
            title = f"{g}  t {per_genre[j]:.2f}" + ("\n(global fallback)" if fell else "")
        ax.set_title(title, fontsize=10, color="C3" if g in fallback else "k")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xticks([0, 0.5, 1])
        ax.set_yticks([0, 0.5, 1])
        ax.tick_params(labelsize=GRID_TICKS)
        ax.set_xlabel("threshold", fontsize=10)
        ax.set_ylabel("F1", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, frameon=False)  # below the panels, clear of the title
    note = "; red: the global threshold, a fallback" if fallback else ""
    fig.suptitle(f"{head}: F1 against each genre's threshold (dashed: the threshold used{note}){more}")
    return fig


@figure
def fig_reliability(Y: np.ndarray, P: np.ndarray, head: str):
    from sklearn.calibration import calibration_curve

    plt = _plt()
    fig, (ax, ah) = plt.subplots(1, 2, figsize=(WIDTH, 4.4))
    frac, mean = calibration_curve(Y.ravel(), P.ravel(), n_bins=10, strategy="uniform")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", label="perfectly calibrated")
    ax.plot(mean, frac, marker="o", label="all genres pooled")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("fraction of positives")
    ax.set_title(f"{head}: reliability (test)")
    _legend_right(ax)
    ah.hist(P.ravel(), bins=20, range=(0, 1))
    ah.set_yscale("log")
    ah.set_xlabel("predicted probability")
    ah.set_ylabel("count (genre x item)")
    ah.set_title("How often each probability is given")
    return fig


@figure
def fig_confusion(Y: np.ndarray, D: np.ndarray, genres: list[str], head: str):
    from sklearn.metrics import multilabel_confusion_matrix

    plt = _plt()
    genres, more = _shown(genres)
    C = multilabel_confusion_matrix(Y, D, labels=list(range(len(genres))))
    fig, axes = _grid(len(genres), cols=6, height=2.0)
    im = None
    for j, g in enumerate(genres):
        ax = axes[j]
        share = C[j] / max(C[j].sum(), 1)
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (a, b), v in np.ndenumerate(C[j]):
            ax.text(b, a, str(v), ha="center", va="center", fontsize=10, color="w" if share[a, b] > 0.6 else "k")
        ax.set_xticks([0, 1], ["pred -", "pred +"], fontsize=GRID_TICKS)
        ax.set_yticks([0, 1], ["true -", "true +"], fontsize=GRID_TICKS)
        ax.set_title(g, fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=list(axes[: len(genres)]), shrink=0.6, label="share of test items", location="right")
    fig.suptitle(f"{head}: 2x2 confusion counts per genre (test, tuned thresholds){more}")
    return fig


@figure
def fig_counts(counts: dict[str, dict[str, int]], genres: list[str], after: dict[str, int] | None):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH, 5.0))
    x = np.arange(len(genres))
    series = [(p, [counts[p].get(g, 0) for g in genres]) for p in PARTS if p in counts]
    if after is not None:
        series.append(("train after\n--balance oversample", [after.get(g, 0) for g in genres]))
    w = 0.8 / max(len(series), 1)
    for k, (label, vals) in enumerate(series):
        ax.bar(x + k * w - 0.4 + w / 2, vals, w, label=label)
    ax.set_yscale("log")
    ax.set_xticks(x, genres, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_ylabel("items with the genre (log)")
    ax.set_title("Genre counts per split, before and after oversampling")
    _legend_right(ax)
    return fig


@figure
def fig_cooccurrence(Y: np.ndarray, genres: list[str]):
    plt = _plt()
    C = Y.T.astype(np.int64) @ Y.astype(np.int64)
    n = len(genres)
    side = min(WIDTH * 0.75, max(5.0, 0.3 * n + 3))
    fig, ax = plt.subplots(figsize=(WIDTH, side))
    diag = np.maximum(np.diag(C), 1)
    im = ax.imshow(C / diag[:, None], cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(n), genres, rotation=90, fontsize=10)
    ax.set_yticks(range(n), genres, fontsize=10)
    ax.set_xlabel("column genre")
    ax.set_ylabel("row genre")
    fig.colorbar(im, ax=ax, label="P(column genre | row genre)")
    ax.set_title("Label co-occurrence (all items)")
    return fig


@figure
def fig_labels_per_item(Ys: dict[str, np.ndarray]):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH, 3.8))
    top = max((int(Y.sum(axis=1).max()) for Y in Ys.values() if len(Y)), default=0)
    bins = np.arange(0, top + 2)
    w = 0.8 / max(len(Ys), 1)
    for k, (p, Y) in enumerate(Ys.items()):
        h = np.bincount(Y.sum(axis=1).astype(int), minlength=len(bins) - 1)[: len(bins) - 1]
        ax.bar(bins[:-1] + k * w - 0.4 + w / 2, h / max(len(Y), 1), w, label=f"{p} ({len(Y):,} items)")
    ax.set_xticks(bins[:-1])
    ax.set_xlabel("genres per item (kept genres)")
    ax.set_ylabel("share of items")
    ax.set_title("Labels per item")
    _legend_right(ax)
    return fig


@figure
def fig_finetune(cells: dict[str, dict]):
    plt = _plt()
    fig, (al, am) = plt.subplots(1, 2, figsize=(WIDTH, 4.6))
    for k, (cell, c) in enumerate(cells.items()):
        h = c.get("history") or []
        ep = [r["epoch"] for r in h]
        colour = f"C{k % 10}"
        al.plot(ep, [r.get("train_loss") for r in h], color=colour, label=cell)
        al.plot(ep, [r.get("val_loss") for r in h], color=colour, ls="--")
        am.plot(ep, [r.get("val_map") for r in h], color=colour, marker=".", label=cell)
    al.set_xlabel("epoch")
    al.set_ylabel("loss (solid: train, dashed: validation)")
    al.set_title("Loss per epoch, every grid cell")
    am.set_xlabel("epoch")
    am.set_ylabel("validation mAP")
    am.set_title("Validation mAP per epoch")
    _legend_right(am, title="grid cell")
    return fig


@figure
def fig_wise(wise: dict):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH, 3.8))
    ax.plot(wise["alphas"], wise["val_map"], marker="o", label="validation mAP")
    if wise.get("chosen") is not None:
        ax.axvline(wise["chosen"], color="k", ls="--", lw=1, label=f"chosen alpha {wise['chosen']}")
    ax.set_xlabel("alpha (0: frozen weights, 1: fine-tuned)")
    ax.set_ylabel("validation mAP")
    ax.set_title("WiSE-FT weight interpolation")
    _legend_right(ax)
    return fig


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
    return load_part_predictions(head_dir)


@dataclass(frozen=True)
class Poster:
    """A test item the gallery can show: its poster file and how a person names it."""

    path: str
    title: str  # "Title (Year)", or the id where the manifest has no title


def posters_of(header: dict | None) -> dict[str, Poster]:
    """id -> :class:`Poster` from the manifest the store was extracted from, for files still present."""
    if not header or header.get("modality") != "image":
        return {}
    from genrekit.store import StoreHeader

    try:
        m = StoreHeader.from_json(header).manifest_source().read()
    except Exception as e:  # a moved or edited manifest: no gallery, the rest of the report stands
        log.warning("gallery: %s", e)
        return {}
    out = {}
    for s in m.samples:
        if s.image and Path(s.image).is_file():
            name = s.title or s.id
            out[s.id] = Poster(s.image, f"{name} ({s.year})" if s.title and s.year else name)
    return out


def _thumb(path: str) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB * 2, THUMB * 2))  # twice the shown size: sharp on high-density screens
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
    except OSError:
        return None
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _labels(row: np.ndarray, genres: list[str]) -> str:
    return ", ".join(g for g, v in zip(genres, row) if v) or "(none)"


def gallery(pred: dict, thresholds, genres: list[str], posters: dict[str, Poster], n: int = GALLERY_N) -> list[dict]:
    """The test posters whose top genre is most confidently wrong, and most confidently right.

    Each card names the film by its title and year (the id below it), its true genres, and the
    predicted set in probability order with each probability.
    """
    ids, P, Y = pred["ids_test"], pred["P_test"], pred["Y_test"]
    D = thresholds.apply(P)
    top = P.argmax(axis=1)
    conf = P[np.arange(len(P)), top]
    right = Y[np.arange(len(P)), top] == 1
    have = np.array([str(i) in posters for i in ids], bool)
    out = []
    for title, mask in (("Most confident wrong (top genre not among the true ones)", ~right & have),
                        ("Most confident right (top genre among the true ones)", right & have)):  # fmt: skip
        rows = np.flatnonzero(mask)
        rows = rows[np.argsort(-conf[rows], kind="stable")][:n]
        items = []
        for r in rows:
            poster = posters[str(ids[r])]
            img = _thumb(poster.path)
            if img is None:
                continue
            ranked = np.argsort(-P[r], kind="stable")
            chosen = [j for j in ranked if D[r, j]]
            items.append({
                "img": img, "id": str(ids[r]), "title": poster.title, "true": _labels(Y[r], genres),
                "predicted": ", ".join(f"{genres[j]} {P[r, j]:.2f}" for j in chosen) or "(none)",
                "top": ", ".join(f"{genres[j]} {P[r, j]:.2f}" for j in ranked[:3]),
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


def per_genre_table(per_genre: list[dict] | dict, genres: list[str], fallback: Sequence[str]) -> dict:
    """Precision, recall, F1, support, AUC, AP and the threshold of each genre; a fallback threshold says so."""
    rows_by = {r["genre"]: r for r in per_genre} if isinstance(per_genre, list) else dict(per_genre)
    cols = ["genre", "precision", "recall", "F1", "test support", "ROC AUC", "AP", "threshold"]
    rows = []
    for g in genres:
        r = rows_by.get(g)
        if r is None:
            continue
        thr = r.get("threshold")
        fell = g in fallback or r.get("fallback")
        thr_s = "-" if thr is None else f"{thr:.2f}" + (" (global fallback)" if fell else "")
        rows.append([g, *(_fmt(r.get(k)) for k in ("precision", "recall", "f1")), _fmt(r.get("support")), _fmt(r.get("auc")), _fmt(r.get("ap")), thr_s])
    note = ""
    if fallback:
        note = (f"{len(fallback)} genre(s) have too few validation positives for a threshold of their own and use the "
                f"global threshold instead (global fallback): {', '.join(fallback)}.")  # fmt: skip
    return {"title": "Per genre (test, thresholds tuned on validation)", "columns": cols, "rows": rows, "note": note}


def head_section(results: dict, entry: str, head_dir: Path, genres: list[str], posters: dict[str, Poster]) -> list[Section]:
    """Per-genre bars, curves, thresholds, calibration and confusion of one head; and its gallery."""
    from genrekit.evaluation.thresholds import Thresholds

    v = results["heads"][entry]
    sec = Section(f"head-{entry}", f"Head {entry}" + (" (best on validation)" if entry == results.get("best") else ""))
    sec.notes.append(v.get("description", ""))
    th = Thresholds.from_json(v["thresholds"]) if v.get("thresholds") else None
    fallback = list(th.fallback) if th is not None else []
    if v.get("per_genre"):
        sec.figures.append(Figure("Per-genre precision, recall and F1", fig_per_genre(v["per_genre"], genres, entry, fallback), key=f"per-genre-{entry}"))
        sec.tables.append(per_genre_table(v["per_genre"], genres, fallback))
    pred = _predictions(head_dir)
    if pred is None or th is None:
        sec.notes.append(f"{head_dir}/{PREDICTIONS_FILE} is missing (a run from before genrekit saved per-item probabilities): "
                         "no curves, calibration, confusion or gallery for this head; re-run `genrekit heads` to get them.")  # fmt: skip
        return [sec]
    Yv, Pv, Yt, Pt = pred["Y_val"], pred["P_val"], pred["Y_test"], pred["P_test"]
    tj = v["thresholds"]
    glob = {"global": float(tj["values"][0])} if tj.get("rule") == "global" else {"global": _global_of(Yv, Pv)}
    per = [float(t) for t in th.values] if len(np.atleast_1d(th.values)) == len(genres) and th.rule != "top-k" else None
    sec.figures += [
        Figure("Precision-recall curves", fig_curves(Yt, Pt, genres, "pr", entry), key=f"pr-{entry}"),
        Figure("ROC curves", fig_curves(Yt, Pt, genres, "roc", entry), key=f"roc-{entry}"),
        Figure("F1 against a global threshold", fig_threshold_global(Yv, Pv, Yt, Pt, glob, entry), key=f"threshold-global-{entry}",
               caption=f"The dashed line is the best global threshold on validation; this head's rule is {tj.get('rule')}."),
        Figure("F1 against each genre's threshold", fig_threshold_per_genre(Yv, Pv, Yt, Pt, genres, per, entry, fallback), key=f"threshold-genre-{entry}",
               caption="Red titles: genres with too few validation positives, which use the global threshold (a fallback, not tuned for the genre)." if fallback else ""),
        Figure("Reliability diagram", fig_reliability(Yt, Pt, entry), key=f"reliability-{entry}"),
        Figure("Confusion counts", fig_confusion(Yt, th.apply(Pt), genres, entry), key=f"confusion-{entry}"),
    ]  # fmt: skip
    return [sec, *_gallery_sections(entry, pred, th, genres, posters)]


def _gallery_sections(entry: str, pred: dict, th, genres: list[str], posters: dict[str, Poster]) -> list[Section]:
    g = Section(f"gallery-{entry}", f"Gallery: {entry} on test posters")
    if not posters:
        g.notes.append("no gallery: the posters of the store's manifest are not on this machine (or the run read no posters)")
        return [g]
    g.notes.append("Predicted: the genres at or above their thresholds, most probable first, with their probabilities.")
    g.gallery = gallery(pred, th, genres, posters)
    return [g]


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
def _heads_sections(run: Path, results: dict, heads: Sequence[str], progress: Callable[[str], None],
                    posters: dict[str, Poster] | None = None) -> list[Section]:  # fmt: skip
    genres = list(results["genres"])
    best = results.get("best")
    chosen = [h for h in [best, *heads] if h]
    chosen = list(dict.fromkeys(chosen))
    for h in chosen:
        if h not in results["heads"]:
            raise UnknownNameError("head", h, list(results["heads"]))
    progress("leaderboard")
    sections = [leaderboard_section(results), rules_section(results, chosen)]
    if posters is None:
        posters = posters_of((results.get("features") or {}).get("store_header"))
    for h in chosen:
        progress(f"head {h}")
        sections += head_section(results, h, run / results["heads"][h].get("dir", h), genres, posters)
    progress("data")
    pred = _predictions(run / results["heads"][best].get("dir", best)) if best else None
    sections.insert(2, data_section(results, pred, genres))
    return sections


def _fused_stores(results: dict) -> dict[str, dict]:
    return {n: h for n, h in ((results.get("fusion") or {}).get("stores") or {}).items() if isinstance(h, dict)}


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
        sec.figures.append(Figure("Fused leaderboard", fig_leaderboard(ent, None, "Every part on the same test items"), key="leaderboard"))
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
    # The parts share the items' ids, so the posters come from the run's image store (the early part has no store of its own).
    image = next((h for h in _fused_stores(results).values() if h.get("modality") == "image"), None)
    inner = _heads_sections(run / part, sub, [h for h in heads if h in sub["heads"]], progress, posters_of(image))
    for s in inner:
        s.title = f"[{part}] {s.title}"
    return [sec, *inner]


def _finetune_sections(run: Path, results: dict, heads: Sequence[str], progress: Callable[[str], None]) -> list[Section]:
    from genrekit.evaluation.thresholds import Thresholds

    cells = results.get("cells") or {}
    sec = Section("leaderboard", "Fine-tune grid")
    cols = ["cell", "config", "epochs", "best val mAP", "test mAP", "test F1 micro", "test F1 macro", "test F1 micro @0.5", "seconds"]
    rows = []
    for c, v in cells.items():
        t, z = (v.get("test") or {}).get("tuned", {}), (v.get("test") or {}).get("at_0.5", {})
        vm = max((r.get("val_map") or 0 for r in v.get("history") or []), default=None)
        config = ", ".join(f"{k} {val}" for k, val in (v.get("config") or {}).items())
        rows.append([c + ("*" if c == results.get("best") else ""), config, _fmt(v.get("last_epoch")), _fmt(vm),
                     _fmt(t.get("map_macro")), _fmt(t.get("f1_micro")), _fmt(t.get("f1_macro")), _fmt(z.get("f1_micro")), _fmt(v.get("seconds"), 1)])  # fmt: skip
    sec.tables.append({"title": "Every grid cell (test at thresholds tuned on validation)", "columns": cols, "rows": rows, "note": "* best cell"})
    if cells:
        ent = {c: (v.get("test") or {}).get("tuned", {}) for c, v in cells.items()}
        sec.figures.append(Figure("Fine-tune leaderboard", fig_leaderboard(ent, None, "Test scores per grid cell"), key="leaderboard"))
    tr = Section("training", "Training curves")
    if cells:
        tr.figures.append(Figure("Loss and validation mAP per epoch", fig_finetune(cells), key="training-curves"))
    wise = results.get("wise_ft")
    if wise and wise.get("alphas"):
        tr.figures.append(Figure("WiSE-FT", fig_wise(wise), key="wise-ft"))
    out = [sec, tr]
    best = results.get("best") or "finetune"
    bv = cells.get(best, {})
    final = results.get("final") or {}
    genres = list(results.get("genres") or [])
    # The final network (the best cell, WiSE-FT interpolated) is what predict uses: its thresholds and per-genre scores first.
    tj = final.get("thresholds") or bv.get("thresholds")
    th = Thresholds.from_json(tj) if tj else None
    fallback = list(th.fallback) if th is not None else []
    hs = Section(f"head-{best}", f"Cell {best} (best on validation" + (f", WiSE-FT alpha {final['alpha']})" if final.get("alpha") is not None else ")"))
    per = final.get("per_genre") or (bv.get("test") or {}).get("per_genre") or bv.get("per_genre")
    if per and genres:
        hs.figures.append(Figure("Per-genre precision, recall and F1", fig_per_genre(per, genres, best, fallback), key=f"per-genre-{best}"))
        hs.tables.append(per_genre_table(per, genres, fallback))
    pred = _predictions(run)
    if pred is not None and genres:
        Yv, Pv, Yt, Pt = pred["Y_val"], pred["P_val"], pred["Y_test"], pred["P_test"]
        hs.figures += [Figure("Precision-recall curves", fig_curves(Yt, Pt, genres, "pr", best), key=f"pr-{best}"),
                       Figure("ROC curves", fig_curves(Yt, Pt, genres, "roc", best), key=f"roc-{best}"),
                       Figure("F1 against a global threshold", fig_threshold_global(Yv, Pv, Yt, Pt, {"global": _global_of(Yv, Pv)}, best), key=f"threshold-global-{best}"),
                       Figure("Reliability diagram", fig_reliability(Yt, Pt, best), key=f"reliability-{best}")]  # fmt: skip
        if th is not None:
            per_t = [float(t) for t in th.values] if len(th.values) == len(genres) and th.rule != "top-k" else None
            hs.figures.insert(-1, Figure("F1 against each genre's threshold", fig_threshold_per_genre(Yv, Pv, Yt, Pt, genres, per_t, best, fallback), key=f"threshold-genre-{best}"))
            hs.figures.append(Figure("Confusion counts", fig_confusion(Yt, th.apply(Pt), genres, best), key=f"confusion-{best}"))
        out.append(hs)
        out.insert(1, data_section(results, pred, genres))
        if th is not None:
            out += _gallery_sections(best, pred, th, genres, posters_of((results.get("features") or {}).get("store_header")))
    else:
        if hs.figures:
            out.append(hs)
        tr.notes.append("this fine-tune run saved no per-item probabilities (predictions.npz, written by genrekit finetune "
                        "since 0.1): per-genre curves, the data section and the gallery are left out")  # fmt: skip
    return out


def _encoder_line(header: dict | None) -> str:
    enc = (header or {}).get("encoder") or {}
    if not enc:
        return "-"
    layers = enc.get("layers")
    return f"{enc.get('name')} ({enc.get('weights')}" + (f"; layers {layers}" if layers else "") + ")"


def report_facts(run: Path, results: dict, kind: str) -> list[tuple[str, str]]:
    """The facts table at the top of the page: what the run is, its encoder(s) and genres."""
    facts = [("run", str(run.resolve())), ("kind", kind), ("created", str(results.get("created") or "-"))]
    if kind == "fused":
        stores = _fused_stores(results)
        enc = "; ".join(f"{n}: {_encoder_line(h)}" for n, h in stores.items()) or "-"
        genres = (results.get("same_items") or {}).get("genres") or (results.get("early") or {}).get("genres") or []
        fusion = results.get("fusion") or {}
        best = results.get("best") or {}
        facts += [("encoders", enc), ("fusion", f"{fusion.get('kind')} (join {fusion.get('join')})"),
                  ("best", f"{best.get('part')}/{best.get('entry')}" if best else "-")]  # fmt: skip
    else:
        header = (results.get("features") or {}).get("store_header")
        enc = _encoder_line(header)
        if kind == "finetune":
            final = results.get("final") or {}
            enc = f"{enc}, fine-tuned (cell {final.get('cell', results.get('best'))}, WiSE-FT alpha {final.get('alpha')})"
        genres = results.get("genres") or []
        facts += [("encoder", enc), ("best", str(results.get("best") or "-"))]
    facts.append(("genres (order used everywhere)", f"{len(genres)}: {', '.join(genres)}" if genres else "-"))
    return facts


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
    Results.read(run)  # the typed fields checked first: one line naming the file and field
    if kind == "heads" and not (isinstance(results.get("genres"), list) and results["genres"]):
        raise StoreError(f"{rj}: the field 'genres' is missing or empty; the run directory was edited or damaged: re-run `genrekit heads`")
    progress = progress or (lambda _s: None)
    make = {"heads": _heads_sections, "fused": _fused_sections, "finetune": _finetune_sections}[kind]
    t0 = time.perf_counter()
    try:
        sections = make(run, results, list(heads), progress)
    except GenrekitError:
        raise
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        # The report reads many fields of the run's files; one edited by hand is named, never a raw KeyError.
        what = f"the field {e} is missing" if isinstance(e, KeyError) else f"a field is malformed ({type(e).__name__}: {str(e)[:120]})"
        raise StoreError(f"{rj} (or a file of its heads): {what}; the run directory was edited or damaged: re-run the command that made it") from e
    env = jinja2.Environment(loader=jinja2.PackageLoader("genrekit_cli.apps", "templates"), autoescape=jinja2.select_autoescape(["html", "j2"]))
    page = env.get_template("report.html.j2").render(
        title=f"genrekit report: {run.resolve().name or run}", facts=report_facts(run, results, kind), sections=sections,
        version=__version__, made=time.strftime("%Y-%m-%d %H:%M:%S%z"), figure_width=int(WIDTH * DPI),
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


__all__ = ["build_report", "gallery", "posters_of", "report_facts", "run_kind", "write_report"]
