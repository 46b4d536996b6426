"""Every kind of run behind one interface: load it once, then predict items again and again.

``genrekit predict``, ``evaluate``, ``serve``, ``explain`` and ``report`` all start from
:func:`load_run`, which recognises what a directory holds and returns a :class:`LoadedRun`:

- ``head``: one saved head on one store (``RUNS/<head>``, or ``RUNS/`` for its best head);
- ``fused`` (a head over several stores) and ``finetune`` (a fine-tuned network) register their
  loaders in :data:`LOADERS`; which kind a directory is comes from :func:`genrekit.rundir.open_run`.

A loaded run keeps its encoders in memory, so a server loads it once at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from genrekit.errors import ConfigError
from genrekit.evaluation.thresholds import Thresholds
from genrekit.heads.saved import SavedHead
from genrekit.inference.predict import Prediction, _as_saved, rank
from genrekit.rundir import open_run, refuse_nonfinite


@dataclass(frozen=True)
class Item:
    """One thing to predict: a poster, texts by field (``plot``, ``title``), or both.

    Attributes:
        name: how the item is named in the output (the poster path, an upload's file name, or the text).
        image: the poster: a file path, or the file's bytes (an upload held in memory); ``None`` for none.
        texts: text field -> text (``{"title": "Alien", "plot": "..."}``).
    """

    name: str
    image: str | bytes | None = None
    texts: Mapping[str, str] = field(default_factory=dict)


class LoadedRun(Protocol):
    """What every run kind offers once loaded.

    Attributes:
        kind: ``head``, ``fused``, ``finetune`` ...
        name: the head's (or run's) name.
        path: the directory it was loaded from.
        genres: the output columns.
        thresholds: the decision rule tuned on validation.
        inputs: what an item may carry: ``"image"`` and/or text fields (``"plot"``, ``"title"``).
        precision: the numeric precision the run predicts in (``fp32``, ``bf16`` ...; see
            :func:`~genrekit.backbones.base.serving_precision`), once its encoders are built.
    """

    kind: str
    name: str
    path: Path
    genres: list[str]
    thresholds: Thresholds
    inputs: tuple[str, ...]
    precision: str

    def identity(self) -> dict:
        """What made the run: encoder(s), weights sha256, preprocessing, head; JSON-ready."""

    def predict_proba(self, items: Sequence[Item]) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
        """(probabilities of the usable items, their indices into ``items``, (index, reason) of the
        others: one entry per item, keyed by its index, never by a path or a name)."""


def name_failures(items: Sequence[Item], failures: Sequence[tuple[int, str]]) -> list[tuple[str, str]]:
    """``(index, reason)`` failures of :meth:`LoadedRun.predict_proba` as ``(item name, reason)``."""
    return [(items[k].name, reason) for k, reason in failures]


def predict_items(run: LoadedRun, items: Sequence[Item]) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Ranked genres of each usable item, and ``(item name, reason)`` for the others.

    Probabilities that are not finite (NaN, inf: broken weights) are refused in one line
    (:func:`genrekit.rundir.refuse_nonfinite`), never ranked."""
    return predict_groups(run, [items])[0]


def predict_groups(run: LoadedRun, groups: Sequence[Sequence[Item]]) -> list[tuple[list[Prediction], list[tuple[str, str]]]]:
    """:func:`predict_items` of several lists of items in one pass through the run (one encoder
    batch): each list gets what it would get alone, up to the float rounding of a larger batch.
    ``genrekit serve`` answers the requests that wait for the model together this way."""
    items = [it for g in groups for it in g]
    P, ok, failures = run.predict_proba(items)
    refuse_nonfinite(P, run.path)  # every run kind: never rank nor print a NaN
    decided = run.thresholds.apply(P) if ok else np.zeros(P.shape, bool)
    row = {k: r for r, k in enumerate(ok)}
    out, start = [], 0
    for g in groups:
        ks = [k for k in range(start, start + len(g)) if k in row]
        rows = [row[k] for k in ks]
        preds = rank([items[k].name for k in ks], P[rows], decided[rows], run.genres, run.thresholds) if rows else []
        out.append((preds, [(items[k].name, reason) for k, reason in failures if start <= k < start + len(g)]))
        start += len(g)
    return out


# -- the single-head run -------------------------------------------------------------------------
def header_field(header) -> str:
    """The manifest column a text store embeds (``plot`` for stores made before fields were recorded)."""
    return (header.preprocessing or {}).get("field") or "plot" if header is not None else "plot"


def text_field(saved: SavedHead) -> str:
    """The manifest column a text head was trained on."""
    return header_field(saved.header)


class HeadRun:
    """A saved head on one store, with the store's encoder rebuilt on first use."""

    kind = "head"

    def __init__(self, saved: SavedHead, path: Path, device: str = "cpu", precision: str = "auto"):
        if saved.info.get("fusion"):
            raise ConfigError(f"{path}: this head was trained on fused features; load the fused run directory instead")
        if saved.header is None:
            raise ConfigError(f"{path}: this head was trained on features without a store header; predict from features instead")
        self.saved, self.path, self.device, self.requested_precision = saved, path, device, precision
        self.name, self.genres, self.thresholds = saved.name, list(saved.genres), saved.thresholds
        self.modality = saved.header.modality
        self.inputs = ("image",) if self.modality == "image" else (text_field(saved),)
        self._encoder = None

    @property
    def encoder(self):
        if self._encoder is None:
            from genrekit.extraction import encoder_from_header

            self._encoder = encoder_from_header(self.saved.header, device=self.device, precision=self.requested_precision)
        return self._encoder

    @property
    def precision(self) -> str:
        return self.encoder.precision

    def identity(self) -> dict:
        enc = self.saved.header.encoder
        return {
            "kind": self.kind,
            "head": self.name,
            "encoder": enc.get("name"),
            "weights": enc.get("weights"),
            "weights_sha256": enc.get("weights_sha256"),
            "modality": self.modality,
            "preprocessing": self.saved.header.preprocessing,
        }

    def predict_proba(self, items: Sequence[Item]) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
        from genrekit.extraction import embed_images, embed_texts

        what = self.inputs[0]
        has = [k for k, it in enumerate(items) if has_input(it, what)]
        named = "poster" if what == "image" else what
        failures = [(k, f"no {named} given (this run reads {named}s)") for k in sorted(set(range(len(items))) - set(has))]
        if self.modality == "image":
            X, ok, bad = embed_images(self.encoder, self.saved.header, [items[k].image for k in has])
            failures += [(has[i], reason) for i, reason in bad]
            idx = [has[i] for i in ok]
        else:
            idx = has
            X = embed_texts(self.encoder, self.saved.header, [items[k].texts[what] for k in idx]) if idx else None
        if not idx:
            return np.zeros((0, len(self.genres)), np.float32), [], sorted(failures)
        return self.saved.predict_proba(X), idx, sorted(failures)


def has_input(item: Item, what: str) -> bool:
    """Whether ``item`` carries ``what``: ``image`` (a path or bytes) or a non-blank text field."""
    if what == "image":
        return item.image is not None and len(item.image) > 0
    return bool((item.texts.get(what) or "").strip())


# -- loading by kind ------------------------------------------------------------------------------
# What a directory is, and which of its heads predict uses, is decided in one place:
# genrekit.rundir.open_run. A loader per kind turns it into a LoadedRun; fused and fine-tuned runs
# register theirs when genrekit.inference is imported.
LOADERS: dict[str, Callable[..., LoadedRun]] = {
    "head": lambda run, device, precision="auto": HeadRun(_as_saved(run.path), run.path, device, precision)
}


def register_loader(kind: str, load: Callable[..., LoadedRun]) -> None:
    """Add the loader of a run kind: ``load(run: RunDir, device, precision)`` (``fused``:
    ``load(root, part, entry, device, precision)``)."""
    LOADERS[kind] = load


def load_run(path: str | Path, device: str = "cpu", precision: str = "auto") -> LoadedRun:
    """Load any run directory for prediction: a whole run means its best head.

    ``precision`` (``--precision``: ``auto``, ``fp32``, ``bf16``) is what its encoders run in;
    ``auto`` is the precision its features were made with, fp32 where bf16 is not native.

    Example:
        >>> run = load_run("runs/")  # doctest: +SKIP
        >>> preds, failed = predict_items(run, [Item("poster.jpg", image="poster.jpg")])
    """
    run = open_run(path).best()
    fused = run.fused_part
    if fused is not None:
        return LOADERS["fused"](*fused, device, precision)
    return LOADERS[run.kind](run, device, precision)
