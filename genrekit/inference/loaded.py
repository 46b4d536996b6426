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
from genrekit.rundir import open_run


@dataclass(frozen=True)
class Item:
    """One thing to predict: a poster, texts by field (``plot``, ``title``), or both.

    Attributes:
        name: how the item is named in the output (the poster path, or the text).
        image: path of the poster file, or ``None``.
        texts: text field -> text (``{"title": "Alien", "plot": "..."}``).
    """

    name: str
    image: str | None = None
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
    """

    kind: str
    name: str
    path: Path
    genres: list[str]
    thresholds: Thresholds
    inputs: tuple[str, ...]

    def identity(self) -> dict:
        """What made the run: encoder(s), weights sha256, preprocessing, head; JSON-ready."""

    def predict_proba(self, items: Sequence[Item]) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
        """(probabilities of the usable items, their indices into ``items``, (name, reason) of the others)."""


def predict_items(run: LoadedRun, items: Sequence[Item]) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Ranked genres of each usable item, and ``(name, reason)`` for the others."""
    P, ok, failures = run.predict_proba(items)
    if not ok:
        return [], failures
    return rank([items[i].name for i in ok], P, run.thresholds.apply(P), run.genres), failures


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

    def __init__(self, saved: SavedHead, path: Path, device: str = "cpu"):
        if saved.info.get("fusion"):
            raise ConfigError(f"{path}: this head was trained on fused features; load the fused run directory instead")
        if saved.header is None:
            raise ConfigError(f"{path}: this head was trained on features without a store header; predict from features instead")
        self.saved, self.path, self.device = saved, path, device
        self.name, self.genres, self.thresholds = saved.name, list(saved.genres), saved.thresholds
        self.modality = saved.header.modality
        self.inputs = ("image",) if self.modality == "image" else (text_field(saved),)
        self._encoder = None

    @property
    def encoder(self):
        if self._encoder is None:
            from genrekit.extraction import encoder_from_header

            self._encoder = encoder_from_header(self.saved.header, device=self.device)
        return self._encoder

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

    def predict_proba(self, items: Sequence[Item]) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
        from genrekit.extraction import embed_files, embed_texts

        failures: list[tuple[str, str]] = []
        if self.modality == "image":
            idx = [k for k, it in enumerate(items) if it.image]
            failures += [(it.name, "no poster given (this run reads posters)") for it in items if not it.image]
            X, ok_paths, bad = embed_files(self.encoder, self.saved.header, [items[k].image for k in idx])
            failures += bad
            okset = set(ok_paths)
            idx = [k for k in idx if items[k].image in okset]
        else:
            f = self.inputs[0]
            idx = [k for k, it in enumerate(items) if (it.texts.get(f) or "").strip()]
            failures += [(it.name, f"no {f} given (this run reads {f}s)") for k, it in enumerate(items) if k not in set(idx)]
            X = embed_texts(self.encoder, self.saved.header, [items[k].texts[f] for k in idx]) if idx else None
        if not idx:
            return np.zeros((0, len(self.genres)), np.float32), [], failures
        return self.saved.predict_proba(X), idx, failures


# -- loading by kind ------------------------------------------------------------------------------
# What a directory is, and which of its heads predict uses, is decided in one place:
# genrekit.rundir.open_run. A loader per kind turns it into a LoadedRun; fused and fine-tuned runs
# register theirs when genrekit.inference is imported.
LOADERS: dict[str, Callable[..., LoadedRun]] = {"head": lambda run, device: HeadRun(_as_saved(run.path), run.path, device)}


def register_loader(kind: str, load: Callable[..., LoadedRun]) -> None:
    """Add the loader of a run kind: ``load(run: RunDir, device)`` (``fused``: ``load(root, part, entry, device)``)."""
    LOADERS[kind] = load


def load_run(path: str | Path, device: str = "cpu") -> LoadedRun:
    """Load any run directory for prediction: a whole run means its best head.

    Example:
        >>> run = load_run("runs/")  # doctest: +SKIP
        >>> preds, failed = predict_items(run, [Item("poster.jpg", image="poster.jpg")])
    """
    run = open_run(path).best()
    fused = run.fused_part
    if fused is not None:
        return LOADERS["fused"](*fused, device)
    return LOADERS[run.kind](run, device)
