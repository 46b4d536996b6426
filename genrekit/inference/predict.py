"""Using heads on new items: predict posters or plots, score a saved head on another store, zero-shot.

These are the library halves of ``genrekit predict``, ``genrekit evaluate`` and ``genrekit
zeroshot``. Encoders are imported inside the functions that need them. Heads trained on fused
stores (:mod:`genrekit.runs.fused`) are refused here: their inputs come from several encoders at once.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genrekit.atomic import atomic_open
from genrekit.errors import ConfigError
from genrekit.evaluation.scorecard import score_collection
from genrekit.heads.saved import SavedHead, load_head
from genrekit.rundir import LATE_FUSION_FILE
from genrekit.heads.zeroshot import DEFAULT_GENRES, cosine_scores, genre_prompt_embeddings, softmax_probabilities
from genrekit.store import FeatureSet, StoreHeader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """Genres of one item, most probable first, each with the threshold that decided it.

    Attributes:
        item: the poster path or the text.
        ranked: (genre, probability) pairs, sorted by probability, highest first.
        predicted: the genres the decision rule selects, in ranked order.
        thresholds: each ranked genre's threshold (same order as ``ranked``); ``None`` where the
            rule has none (``top-k``) or the caller gave no rule.
        rule: the decision rule (``per-genre``, ``global``, ``top-k (k=2)`` ...), ``""`` if unknown.
        fallback: genres whose threshold is the global one (too few validation positives to tune their own).
    """

    item: str
    ranked: tuple[tuple[str, float], ...]
    predicted: tuple[str, ...]
    thresholds: tuple[float | None, ...] = ()
    rule: str = ""
    fallback: tuple[str, ...] = ()

    def threshold_of(self, genre: str) -> float | None:
        for (g, _), t in zip(self.ranked, self.thresholds):
            if g == genre:
                return t
        return None

    def to_json(self) -> dict:
        chosen, fell = set(self.predicted), set(self.fallback)
        ths = self.thresholds or (None,) * len(self.ranked)
        return {
            "item": self.item,
            "predicted": list(self.predicted),
            "probabilities": {g: round(p, 6) for g, p in self.ranked},
            # Most probable first, each with its threshold: what decided the predicted set.
            "genres": [
                {"genre": g, "probability": round(p, 6), "threshold": None if t is None else round(t, 6),
                 "predicted": g in chosen, "threshold_is_global_fallback": g in fell}
                for (g, p), t in zip(self.ranked, ths)
            ],  # fmt: skip
            "rule": self.rule,
        }

    def line(self, limit: int | None = None) -> str:
        """``Action* 0.87, Drama* 0.52, Comedy 0.10``: the predicted genres carry a star."""
        shown = self.ranked if limit is None else self.ranked[:limit]
        return ", ".join(f"{g}{'*' if g in self.predicted else ''} {p:.2f}" for g, p in shown)


def rule_name(thresholds) -> str:
    """``per-genre``, ``global``, ``top-k (k=2)`` ...: how a :class:`Thresholds` decides."""
    return f"top-k (k={thresholds.k})" if thresholds.rule == "top-k" else thresholds.rule


def rank(items: Sequence[str], P: np.ndarray, Y: np.ndarray, genres: Sequence[str], thresholds=None) -> list[Prediction]:
    """One :class:`Prediction` per row of probabilities ``P`` and decisions ``Y``.

    ``thresholds`` (a :class:`~genrekit.evaluation.thresholds.Thresholds`, the rule that made ``Y``)
    puts each genre's threshold beside its probability.
    """
    per_genre = thresholds is not None and thresholds.rule != "top-k" and len(thresholds.values) == len(genres)
    rule = rule_name(thresholds) if thresholds is not None else ""
    fallback = tuple(thresholds.fallback) if thresholds is not None else ()
    out = []
    for item, p, y in zip(items, P, Y):
        order = np.argsort(-p, kind="stable")
        out.append(
            Prediction(
                item=item,
                ranked=tuple((genres[j], float(p[j])) for j in order),
                predicted=tuple(genres[j] for j in order if y[j]),
                thresholds=tuple(float(thresholds.values[j]) if per_genre else None for j in order),
                rule=rule,
                fallback=fallback,
            )
        )
    return out


def _as_saved(run: str | Path | SavedHead) -> SavedHead:
    """The saved head of a single-store run; fused runs are refused in one line."""
    if not isinstance(run, SavedHead) and (Path(run) / LATE_FUSION_FILE).is_file():
        raise ConfigError(
            f"{run} is a late-fusion run (several stores); predict and evaluate take a head trained on one store: "
            "use one of the per-store heads it combines, RUNS/<store>/<head>"
        )
    saved = run if isinstance(run, SavedHead) else load_head(run)
    fused = saved.info.get("fusion")
    if fused:
        raise ConfigError(
            f"the {saved.name} head in {run} was trained on {fused['kind']}-fused features of {' + '.join(fused['stores'])}; "
            "predict and evaluate take a head trained on one store: use RUNS/<store>/<head>"
        )
    return saved


def predict_texts(run: str | Path | SavedHead, texts: Sequence[str], device: str = "cpu") -> list[Prediction]:
    """Genres of plots (or any texts), for heads trained on one text store.

    A thin form of :func:`genrekit.inference.loaded.predict_items` for a single text head (the
    embedding happens there, as for every run kind).
    """
    from genrekit.inference.loaded import HeadRun, Item, predict_items

    saved = _as_saved(run)
    if saved.header is not None and saved.header.modality != "text":
        raise ConfigError(f"the {saved.name} head was trained on {saved.header.modality} features; pass poster files")
    loaded = HeadRun(saved, Path(".") if isinstance(run, SavedHead) else Path(run), device)
    field = loaded.inputs[0]
    preds, _ = predict_items(loaded, [Item(text_name(t), texts={field: t}) for t in texts])
    return preds


@dataclass
class RunEvaluation:
    """A saved head scored on a store: results (metric keys and per-genre report) and raw probabilities.

    Attributes:
        results: metric keys, per-genre report, thresholds, genres on one side only.
        ids: the scored items.
        genres: the run's genres (the columns of ``P``).
        P: per-item probabilities.
        true: each item's own labels in the collection (all of its genres, shared with the run or not).
        predicted: each item's predicted set (the run's rule), most probable first.
    """

    results: dict
    ids: np.ndarray
    genres: list[str]
    P: np.ndarray
    true: list[tuple[str, ...]] | None = None
    predicted: list[tuple[str, ...]] | None = None


def label_sets(Y: np.ndarray, genres: Sequence[str]) -> list[tuple[str, ...]]:
    """Each row of multi-hot ``Y`` as the names of its genres (column order)."""
    return [tuple(g for g, v in zip(genres, row) if v) for row in np.asarray(Y)]


def predicted_sets(P: np.ndarray, thresholds, genres: Sequence[str]) -> list[tuple[str, ...]]:
    """Each row's predicted genres under ``thresholds``, most probable first."""
    D = thresholds.apply(P)
    return [tuple(genres[j] for j in np.argsort(-p, kind="stable") if d[j]) for p, d in zip(np.asarray(P), D)]


def evaluate_run(
    run: str | Path | SavedHead,
    features: FeatureSet,
    header: StoreHeader | None,
    split: str | None = None,
    source: str = "the store",
) -> RunEvaluation:
    """Score a saved head on another collection's features, genres aligned by name.

    Args:
        run: a run directory or a loaded head.
        features: the items to score (with labels).
        header: their store header; features from another encoder or preprocessing are refused.
        split: score only this part of the store's split (``None``: every item).
        source: how to name the features in messages.

    Returns:
        :class:`RunEvaluation`; ``results`` has the metric keys at the saved rule and at 0.5,
        the per-genre report, and the genres on only one side.
    """
    saved = _as_saved(run)
    saved.check_features(header, source)
    fs = features
    rows = np.ones(len(fs.X), bool)
    if split is not None:
        if fs.split is None:
            raise ConfigError(f"{source} has no split; drop --split to score every item")
        rows = np.asarray(fs.split, dtype=object) == split
        if not rows.any():
            raise ConfigError(f"{source} has no item in split {split!r}")
    X, Yall, ids = fs.X[rows], fs.Y[rows], np.asarray(fs.ids)[rows]
    P = saved.predict_proba(X)
    results = {"head": saved.name, "items": int(len(X)), "split": split or "all",
               **score_collection(saved.thresholds, P, saved.genres, Yall, fs.genres)}
    return RunEvaluation(results, ids, list(saved.genres), P, label_sets(Yall, fs.genres), predicted_sets(P, saved.thresholds, saved.genres))


def write_predictions(
    path: str | Path,
    ids: Sequence[str],
    genres: Sequence[str],
    P: np.ndarray,
    true: Sequence[Sequence[str]] | None = None,
    predicted: Sequence[Sequence[str]] | None = None,
) -> Path:
    """CSV of per-item predictions (atomic write).

    Columns: ``id``; ``true_genres`` (the item's labels) and ``predicted_genres`` (the predicted
    set, most probable first), each ``|``-separated, where given; then one probability column per
    genre, named by the genre.
    """
    path = Path(path)
    with atomic_open(path, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", *(["true_genres"] if true is not None else []), *(["predicted_genres"] if predicted is not None else []), *genres])
        for k, (i, p) in enumerate(zip(ids, P)):
            sets = [*(["|".join(true[k])] if true is not None else []), *(["|".join(predicted[k])] if predicted is not None else [])]
            w.writerow([i, *sets, *(f"{v:.6f}" for v in p)])
    return path


def zeroshot_files(
    paths: Sequence[str | Path],
    backbone: str = "ViT-B-32",
    weights: str | None = None,
    genres: Sequence[str] | None = None,
    device: str = "cpu",
    top_k: int = 0,
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Genres of posters from prompts alone: no labels, no training.

    Probabilities are CLIP's softmax over the genres (logit scale 100), uncalibrated; the predicted
    set is the ``top_k`` genres, or (``top_k=0``) every genre above the uniform share 1/G.

    Args:
        paths: image files.
        backbone: a backbone with image and text towers (``genrekit backbones``).
        weights: its weights (tag, path or ``none``); ``None`` for the default tag.
        genres: genre labels to score (default: :data:`DEFAULT_GENRES`).
        device: where the encoder runs.
        top_k: how many genres to mark per poster (0: those above 1/G).
    """
    from genrekit.backbones import create_encoder
    from genrekit.extraction import embed_images, store_header

    genres = _zeroshot_genres(genres)
    encoder = create_encoder(backbone, weights, device)
    if not (encoder.has_image and encoder.has_text):
        raise ConfigError(f"{backbone} needs an image and a text tower for zero-shot; try ViT-B-32 or test-tiny-clip")
    header = store_header(encoder, "image", genres)
    names = [str(p) for p in paths]
    X, ok, failures = embed_images(encoder, header, names)
    failures = [(names[i], reason) for i, reason in failures]
    if not ok:
        return [], failures
    return _rank_zeroshot([names[i] for i in ok], X, encoder, genres, "image", top_k), failures


def zeroshot_texts(
    texts: Sequence[str],
    backbone: str = "minilm",
    weights: str | None = None,
    genres: Sequence[str] | None = None,
    device: str = "cpu",
    top_k: int = 0,
) -> list[Prediction]:
    """Genres of plots from their similarity to genre descriptions alone: no labels, no training.

    Each genre is the embedding of a one-sentence description of its typical story
    (:data:`~genrekit.heads.zeroshot.GENRE_DESCRIPTIONS`; genres without one use prompt templates).
    Probabilities are multi-label (each genre on its own, not a share of one): the standardised
    similarity through a logistic map fitted once on labelled plots
    (:data:`~genrekit.heads.zeroshot.TEXT_CALIBRATION`); the predicted set is every genre at or
    above :data:`~genrekit.heads.zeroshot.TEXT_THRESHOLD` and at least the most probable one
    (or the ``top_k`` genres).

    Args:
        texts: plots (long ones are windowed and pooled by the encoder, never truncated).
        backbone: any backbone with a text tower: ``minilm``, ``bert``, an open_clip model.
        weights: its weights (tag, path or ``none``); ``None`` for the default tag.
        genres: genre labels to score (default: :data:`DEFAULT_GENRES`).
        device: where the encoder runs.
        top_k: how many genres to mark per plot (0: those at or above the threshold).

    Example:
        >>> zeroshot_texts(["A sheriff hunts an outlaw across the desert."])[0].predicted  # doctest: +SKIP
        ('Western',)
    """
    from genrekit.backbones import create_encoder
    from genrekit.extraction import embed_texts, store_header

    texts = list(texts)
    if not texts or not all(t.strip() for t in texts):
        raise ConfigError("--plot needs non-empty text (an empty plot says nothing about genres)")
    genres = _zeroshot_genres(genres)
    encoder = create_encoder(backbone, weights, device)
    if not encoder.has_text:
        raise ConfigError(f"{backbone} has no text tower; try minilm, bert or an open_clip model")
    X = embed_texts(encoder, store_header(encoder, "text", genres, normalize="l2"), texts)
    return _rank_zeroshot([text_name(t) for t in texts], X, encoder, genres, "text", top_k)


def text_name(text: str, limit: int = 80) -> str:
    """How a text item is named in the output: its first words on one line, never the whole text
    (a 100 KB plot echoed back helps nobody); the full length is said when it is cut."""
    one = " ".join(text.split())
    return one if len(one) <= limit else f"{one[: limit - 1]}… ({len(text):,} characters)"


def _zeroshot_genres(genres: Sequence[str] | None) -> list[str]:
    genres = list(genres or DEFAULT_GENRES)
    if len(set(genres)) != len(genres) or not all(g.strip() for g in genres):
        raise ConfigError(f"--genres must be distinct, non-empty names; got {genres}")
    return genres


# Softmax temperature of posters: CLIP's logit scale (100). Plots get a calibrated multi-label map
# instead (:data:`~genrekit.heads.zeroshot.TEXT_CALIBRATION`).
ZEROSHOT_TEMPERATURE = {"image": 0.01, "text": 0.03}


def _rank_zeroshot(items: list[str], X: np.ndarray, encoder, genres: list[str], modality: str, top_k: int) -> list[Prediction]:
    from genrekit.evaluation.thresholds import Thresholds
    from genrekit.heads.zeroshot import TEXT_CALIBRATION, TEXT_THRESHOLD, standardised_logistic

    prompts = genre_prompt_embeddings(encoder.encode_texts, genres, modality)
    S = cosine_scores(X, prompts)
    G = len(genres)
    if modality == "text":
        ref = S if list(genres) == list(DEFAULT_GENRES) else cosine_scores(X, genre_prompt_embeddings(encoder.encode_texts, DEFAULT_GENRES, "text"))
        P = standardised_logistic(S, ref, *TEXT_CALIBRATION)
        rule = Thresholds("at-least-one", (TEXT_THRESHOLD,) * G)
    else:
        P = softmax_probabilities(S, ZEROSHOT_TEMPERATURE[modality])
        rule = Thresholds("global", (1.0 / G,) * G)  # above the uniform share
    if top_k:
        rule = Thresholds("top-k", (0.5,) * G, k=top_k)
    return rank(items, P, rule.apply(P), genres, rule)
