"""Scoring any loaded run on another collection: ``genrekit evaluate``.

- :func:`evaluate_stores`: on that collection's feature stores (one store for a single head;
  one per store of a fused run, joined by id and matched to the run's stores by encoder);
- :func:`evaluate_manifest`: on its manifest, every modality embedded through the run itself
  (:meth:`LoadedRun.predict_proba`), so every run kind works, a fine-tuned network included.

Either way genres are aligned by name and the run's thresholds (tuned on its own validation
split) are applied; nothing is tuned on the collection being scored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from genrekit.data.manifest import sample_text
from genrekit.errors import ConfigError
from genrekit.evaluation.scorecard import score_collection
from genrekit.features import join_stores
from genrekit.inference.loaded import Item, LoadedRun, name_failures
from genrekit.inference.predict import RunEvaluation, evaluate_run, label_sets, predicted_sets
from genrekit.progress import ProgressFn, null_progress
from genrekit.store import FeatureStore

log = logging.getLogger(__name__)

def score(run: LoadedRun, ids: Sequence[str], Y: np.ndarray, genres: Sequence[str], P: np.ndarray, split: str | None, extra: dict | None = None) -> RunEvaluation:
    """Metrics of the run's probabilities ``P`` (columns ``run.genres``) against labels ``Y`` (columns ``genres``)."""
    results = {"run": run.identity(), "head": run.name, "items": int(len(P)), "split": split or "all",
               **score_collection(run.thresholds, P, run.genres, Y, genres), **(extra or {})}  # fmt: skip
    return RunEvaluation(results, np.asarray(ids, dtype=object), list(run.genres), P, label_sets(Y, genres),
                         predicted_sets(P, run.thresholds, run.genres))  # fmt: skip


def _rows(split_values, split: str | None, n: int, source: str) -> np.ndarray:
    if split is None:
        return np.ones(n, bool)
    if split_values is None:
        raise ConfigError(f"{source} has no split; drop --split to score every item")
    rows = np.asarray(split_values, dtype=object) == split
    if not rows.any():
        raise ConfigError(f"{source} has no item in split {split!r}")
    return rows


def evaluate_stores(run: LoadedRun, stores: Sequence[str | Path], split: str | None = None, join: str = "outer") -> RunEvaluation:
    """Score ``run`` on another collection's stores.

    Args:
        run: from :func:`~genrekit.inference.loaded.load_run`.
        stores: one store for a single head; for a fused run, one per store of the run (any order:
            each is matched to the run's store made by the same encoder, weights, preprocessing and
            text field; a mismatch is refused naming the field).
        split: score only this part of the stores' split.
        join: ``outer`` scores every item of any store (missing modalities fall back as in
            training), ``inner`` only the items of every store.

    Example:
        >>> ev = evaluate_stores(load_run("runs/"), ["P2.h5", "T2.h5"])  # doctest: +SKIP
        >>> ev.results["metrics"]["map_macro"]
    """
    stores = [Path(s) for s in stores]
    if run.kind == "head":
        if len(stores) != 1:
            raise ConfigError(f"the {run.name} head reads one store; got {len(stores)} --store")
        fs = FeatureStore(stores[0])
        return evaluate_run(run.saved, fs.load(), fs.header, split=split, source=str(stores[0]))
    if not hasattr(run, "predict_blocks"):
        raise ConfigError(f"a {run.kind} run reads posters and texts, not stores; score it with --data MANIFEST")
    if len(stores) != len(run.headers):
        raise ConfigError(f"the {run.name} fused run reads {len(run.headers)} stores ({', '.join(run.headers)}); got {len(stores)} --store")
    if len(stores) == 1:
        one = FeatureStore(stores[0])
        mapping = run.match_stores({"given": one.header})
        fs = one.load()
        rows = _rows(fs.split, split, len(fs.ids), str(stores[0]))
        (name,) = mapping
        P = run.predict_blocks({name: fs.X[rows]}, {name: np.ones(int(rows.sum()), bool)})
        return score(run, fs.ids[rows], fs.Y[rows], fs.genres, P, split)
    joined = join_stores(stores, join)
    mapping = run.match_stores(joined.headers)
    rows = _rows(joined.split, split, len(joined.ids), "the stores")
    blocks = {mine: joined.blocks[theirs][rows] for mine, theirs in mapping.items()}
    present = {mine: joined.present[theirs][rows] for mine, theirs in mapping.items()}
    P = run.predict_blocks(blocks, present)
    coverage = {mine: int(present[mine].sum()) for mine in mapping}
    return score(run, joined.ids[rows], joined.Y[rows], joined.genres, P, split, {"stores": {m: str(t) for m, t in mapping.items()}, "items_with_store": coverage})


def manifest_items(run: LoadedRun, samples) -> list[Item]:
    """One :class:`Item` per sample with what the run reads: poster path and/or text fields."""
    fields = [f for f in run.inputs if f != "image"]
    items = []
    for s in samples:
        texts = {f: t for f in fields if (t := sample_text(s, f))}
        items.append(Item(s.id, image=s.image if "image" in run.inputs else None, texts=texts))
    return items


def evaluate_manifest(
    run: LoadedRun,
    manifest: str | Path,
    split: str | None = None,
    format: str = "auto",
    batch_size: int = 64,
    progress: ProgressFn | None = None,
) -> RunEvaluation:
    """Score ``run`` on a labelled manifest, embedding every modality it reads through the run.

    Items the run cannot predict (no input, unreadable poster) are listed in ``failures`` and
    left out of the scores; ``fallbacks`` counts items predicted without some modality.

    Example:
        >>> ev = evaluate_manifest(load_run("runs/"), "holdout.csv")  # doctest: +SKIP
    """
    from genrekit.data.manifest import read_manifest
    from genrekit.data.vocab import VocabConfig, apply_vocabulary

    progress = progress or null_progress
    m = read_manifest(manifest, format)
    for w in m.warnings:
        log.warning(w)
    m, _ = apply_vocabulary(m, VocabConfig())
    samples = m.samples
    if split is not None:
        samples = [s for s in samples if s.split == split]
        if not samples:
            raise ConfigError(f"{manifest} has no sample in split {split!r} (its split column)")
    genres = m.vocabulary()
    items = manifest_items(run, samples)
    P_parts, ok_all, failures = [], [], []
    progress("predict", 0, len(items))
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        P, ok, bad = run.predict_proba(chunk)
        P_parts.append(P)
        ok_all += [start + k for k in ok]
        failures += name_failures(chunk, bad)
        progress("predict", min(start + batch_size, len(items)), len(items))
    if not ok_all:
        raise ConfigError(f"no item of {manifest} could be predicted ({failures[0][1] if failures else 'empty manifest'})")
    P = np.concatenate(P_parts)
    where = {g: j for j, g in enumerate(genres)}
    Y = np.zeros((len(ok_all), len(genres)), np.uint8)
    for r, k in enumerate(ok_all):
        Y[r, [where[g] for g in samples[k].genres if g in where]] = 1
    fallbacks = run.fallbacks([items[k] for k in ok_all]) if hasattr(run, "fallbacks") else []
    extra = {"manifest": str(manifest), "failures": [{"item": i, "reason": r} for i, r in failures], "fallbacks": len(fallbacks)}
    return score(run, [samples[k].id for k in ok_all], Y, genres, P, split, extra)
