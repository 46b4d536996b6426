"""Every kind of run behind one interface: load it once, then predict items again and again.

``genrekit predict``, ``evaluate``, ``serve``, ``explain`` and ``report`` all start from
:func:`load_run`, which recognises what a directory holds and returns a :class:`LoadedRun`:

- ``head``: one saved head on one store (``RUNS/<head>``, or ``RUNS/`` for its best head);
- further kinds (a fused run over several stores, a fine-tuned network) register a
  :class:`RunKind` in :data:`RUN_KINDS`: a ``detect`` test on the directory and a loader.

A loaded run keeps its encoders in memory, so a server loads it once at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from genrekit.errors import ConfigError, StoreError
from genrekit.evaluation.thresholds import Thresholds
from genrekit.features import LATE_FUSION_FILE
from genrekit.heads.saved import SavedHead
from genrekit.inference.predict import Prediction, _as_saved, rank


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
    """Ranked genres of each usable item, and ``(item name, reason)`` for the others."""
    P, ok, failures = run.predict_proba(items)
    named = name_failures(items, failures)
    if not ok:
        return [], named
    return rank([items[i].name for i in ok], P, run.thresholds.apply(P), run.genres), named


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
        failures = [(k, f"no {'poster' if what == 'image' else what} given (this run reads {'poster' if what == 'image' else what}s)")
                    for k in range(len(items)) if k not in set(has)]  # fmt: skip
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


# -- the registry of run kinds ---------------------------------------------------------------------
@dataclass(frozen=True)
class RunKind:
    """A kind of run directory: how to recognise it and how to load it."""

    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path, str, str], LoadedRun]  # (path, device, precision)


def _is_head(path: Path) -> bool:
    return any((path / f).is_file() for f in ("run.json", "results.json", LATE_FUSION_FILE))


def _load_head(path: Path, device: str, precision: str = "auto") -> HeadRun:
    return HeadRun(_as_saved(path), path, device, precision)  # _as_saved refuses fused runs until a fused kind is registered


# Checked in order; the single head comes last because other kinds may also hold a results.json.
RUN_KINDS: list[RunKind] = [RunKind("head", _is_head, _load_head)]


def register_run_kind(kind: RunKind) -> None:
    """Add a run kind, checked before the ones already known."""
    RUN_KINDS.insert(0, kind)


def load_run(path: str | Path, device: str = "cpu", precision: str = "auto") -> LoadedRun:
    """Load any run directory for prediction.

    ``precision`` (``--precision``: ``auto``, ``fp32``, ``bf16``) is what its encoders run in;
    ``auto`` is the precision its features were made with, fp32 where bf16 is not native.

    Example:
        >>> run = load_run("runs/")  # doctest: +SKIP
        >>> preds, failed = predict_items(run, [Item("poster.jpg", image="poster.jpg")])
    """
    p = Path(path)
    if not p.is_dir():
        raise StoreError(f"run directory {str(p)!r} does not exist (make one with `genrekit heads`)")
    for kind in RUN_KINDS:
        if kind.detect(p):
            return kind.load(p, device, precision)
    raise StoreError(f"{p} is not a run directory: expected run.json or results.json in it (make one with `genrekit heads`)")
