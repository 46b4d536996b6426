"""The ``fused`` run kind: a run over several stores (``genrekit heads --store A --store B``), usable.

A fused run directory (written by :func:`genrekit.runs.fused.run_fused`) is loaded as one
:class:`FusedRun`, for its best fused head (``results.json``'s ``best``), or for one head when the
path is ``RUNS/early/<head>`` or ``RUNS/late/<head>``. Each modality of an item is embedded with its
own store's encoder (rebuilt from the store header the run recorded), then:

- early fusion scales each block with the training mean and scale saved in ``early/blocks.npz`` and
  concatenates them; a missing modality is a zero block, as for training items without it;
- late fusion runs each store's own head on its modality and combines the probabilities with the
  weights tuned on validation; a missing modality leaves the other stores' probabilities.

Either way an item with at least one modality is predicted, and :meth:`FusedRun.fallbacks` names
what each item lacked. Importing this module registers the kind in
:data:`genrekit.inference.loaded.LOADERS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from genrekit.errors import ConfigError, GenrekitError, StoreError, StoreMismatchError
from genrekit.evaluation.thresholds import Thresholds
from genrekit.features import BlockScaling, combine
from genrekit.heads.saved import _FEATURE_FIELDS, SavedHead, load_head
from genrekit.inference.loaded import Item, has_input, header_field, register_loader
from genrekit.rundir import LATE_FUSION_FILE, read_json
from genrekit.store import StoreHeader


def store_input(header: StoreHeader) -> str:
    """What an item must carry for this store: ``image`` or the text field."""
    return "image" if header.modality == "image" else header_field(header)


class FusedRun:
    """One fused head (early or late) with the encoders of all its stores."""

    kind = "fused"

    def __init__(self, path: Path, part: str, entry: str, device: str = "cpu", precision: str = "auto"):
        self.path, self.part, self.entry, self.device, self.requested_precision = path, part, entry, device, precision
        self.name = f"{part}/{entry}"
        self._encoders: dict[str, object] = {}
        try:
            self._load_part(path, part, entry)
        except (GenrekitError, OSError):
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            # fusion.json and the early head's fusion record are user-editable: named, never a raw KeyError
            where = path / part / entry / (LATE_FUSION_FILE if part == "late" else "run.json")
            what = f"the field {e} is missing" if isinstance(e, KeyError) else f"a field is malformed ({type(e).__name__}: {str(e)[:120]})"
            raise StoreError(f"{where}: {what}; the run directory was edited or damaged: re-run `genrekit heads`") from None
        if any(h is None for h in self.headers.values()):
            raise ConfigError(f"{path}: a store of this run had no header (features made in memory); it cannot embed new items")
        self.inputs = tuple(dict.fromkeys(store_input(self.headers[n]) for n in self.store_order))

    @staticmethod
    def _inside(root: Path, target: Path, where: Path) -> Path:
        """``target`` resolved, refused when it leaves the run ``root`` (an edited record pointing elsewhere)."""
        t = target.resolve()
        if not t.is_relative_to(root.resolve()):
            raise StoreError(f"{where}: points outside the run ({target}); the run directory was edited: re-run `genrekit heads`")
        return t

    def _load_part(self, path: Path, part: str, entry: str) -> None:
        if part == "early":
            head_dir = path / "early" / entry
            self.saved: SavedHead = load_head(head_dir)
            fusion = self.saved.info.get("fusion") or {}
            if not fusion.get("scaling"):
                raise StoreError(f"{head_dir}: this early-fused run predates saved block scaling; re-run `genrekit heads` to use it")
            self.store_order = list(fusion["store_order"])
            self.headers = {n: StoreHeader.from_json(fusion["stores"][n]) for n in self.store_order}
            with np.load(self._inside(path, head_dir / str(fusion["scaling"]), head_dir / "run.json"), allow_pickle=False) as z:
                self.scaling = BlockScaling.from_arrays(self.store_order, {k: z[k] for k in z.files})
            self.genres, self.thresholds = list(self.saved.genres), self.saved.thresholds
            self.weights = None
        elif part == "late":
            d = path / "late" / entry
            rec = read_json(d / LATE_FUSION_FILE)
            self.store_order = list(rec["heads"])
            self.headers = {n: StoreHeader.from_json(rec["stores"][n]) for n in self.store_order}
            self.members = {n: load_head(self._inside(path, d / str(rec["heads"][n]), d / LATE_FUSION_FILE)) for n in self.store_order}
            self.genres, self.thresholds = list(rec["genres"]), Thresholds.from_json(rec["thresholds"])
            self.weights = {n: np.asarray(w, np.float64) for n, w in rec["weights"].items()}
            if set(self.weights) != set(self.store_order) or not all(np.isfinite(w).all() for w in self.weights.values()):
                raise StoreError(f"{d / LATE_FUSION_FILE}: the field 'weights' must give finite weights for the stores {', '.join(self.store_order)}; "
                                 "the run directory was edited or damaged: re-run `genrekit heads`")
        else:
            raise ConfigError(f"fused part {part!r} is not early or late")

    # -- what made it ------------------------------------------------------------------------
    def identity(self) -> dict:
        return {
            "kind": self.kind,
            "fusion": self.part,
            "head": self.entry,
            "stores": {
                n: {"input": store_input(h), "encoder": h.encoder.get("name"), "weights": h.encoder.get("weights"),
                    "weights_sha256": h.encoder.get("weights_sha256"), "modality": h.modality, "preprocessing": h.preprocessing}
                for n, h in self.headers.items()
            },
        }  # fmt: skip

    def match_stores(self, headers: Mapping[str, StoreHeader | None]) -> dict[str, str]:
        """Map each of the run's stores to one of ``headers`` (name -> header) by what made it.

        Raises :class:`StoreMismatchError` naming the field when a store of the run has no match.
        """
        out, used = {}, set()
        for n, mine in self.headers.items():
            near = None
            for m, theirs in headers.items():
                if m in used or theirs is None:
                    continue
                diff = [d for d in mine.diff(theirs) if d[0].split(".")[0] in _FEATURE_FIELDS]
                if not diff:
                    out[n] = m
                    used.add(m)
                    break
                if near is None or len(diff) < near[2]:  # name the field of the nearest store
                    near = (m, diff[0], len(diff))
            else:
                if near is None:
                    raise StoreMismatchError(f"the run's store {n} ({store_input(mine)}) has no counterpart among the stores given")
                m, (f, a, b), _ = near
                if f == "encoder.precision":
                    raise StoreMismatchError(f"the run's store {n} was made with --precision {a}, but store {m} with --precision {b}; "
                                             f"extract it with --precision {a}")  # fmt: skip
                raise StoreMismatchError(
                    f"the run's store {n} was made with {f}={a!r}, but store {m} has {f}={b!r}; extract it as the run's store was"
                )
        return out

    # -- predicting -----------------------------------------------------------------------------
    def encoder(self, name: str):
        if name not in self._encoders:
            from genrekit.extraction import encoder_from_header

            self._encoders[name] = encoder_from_header(self.headers[name], device=self.device, precision=self.requested_precision)
        return self._encoders[name]

    @property
    def precision(self) -> str:
        """The precision in use: one for all stores, else ``store=precision`` per store."""
        each = {n: self.encoder(n).precision for n in self.store_order}
        return next(iter(each.values())) if len(set(each.values())) == 1 else ", ".join(f"{n}={p}" for n, p in each.items())

    def predict_blocks(self, blocks: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray]) -> np.ndarray:
        """(n, len(genres)) probabilities from each store's features (zeros and ``present`` False where missing)."""
        if self.part == "early":
            return self.saved.predict_proba(self.scaling.apply(blocks, present))
        n = len(next(iter(present.values())))
        probas = {}
        for name in self.store_order:
            P = np.full((n, len(self.genres)), np.nan, np.float32)
            have = np.asarray(present[name], bool)
            member = self.members[name]
            mine, theirs = member.align(self.genres)
            if have.any():
                P[np.ix_(np.flatnonzero(have), theirs)] = member.predict_proba(np.asarray(blocks[name])[have])[:, mine]
            probas[name] = P
        return combine(probas, self.weights)

    def fallbacks(self, items: Sequence[Item]) -> list[tuple[str, str]]:
        """``(name, note)`` for each usable item missing some of the run's inputs: what stood in for it."""
        notes = []
        how = "a zero block (the training mean), as for training items without it" if self.part == "early" else "the other stores' probabilities"
        for it in items:
            missing = [i for i in self.inputs if not has_input(it, i)]
            if missing and len(missing) < len(self.inputs):
                notes.append((it.name, f"no {' or '.join(missing)} given: {how}"))
        return notes

    def predict_proba(self, items: Sequence[Item]) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
        from genrekit.extraction import embed_images, embed_texts

        n = len(items)
        blocks, present = {}, {}
        unreadable: dict[int, str] = {}  # item index -> why its poster could not be read
        for name in self.store_order:
            h = self.headers[name]
            what = store_input(h)
            idx = [k for k, it in enumerate(items) if has_input(it, what)]
            block = np.zeros((n, h.dim), np.float32)
            have = np.zeros(n, bool)
            if idx and what == "image":
                X, ok, bad = embed_images(self.encoder(name), h, [items[k].image for k in idx])
                unreadable.update((idx[i], reason) for i, reason in bad)
                block[[idx[i] for i in ok]] = X
                have[[idx[i] for i in ok]] = True
            elif idx:
                block[idx] = embed_texts(self.encoder(name), h, [items[k].texts[what].strip() for k in idx])
                have[idx] = True
            blocks[name], present[name] = block, have
        usable = np.any([present[m] for m in self.store_order], axis=0)
        ok_items = [int(k) for k in np.flatnonzero(usable)]
        # One entry per failed item: an unreadable poster says why (and, when the item's other
        # inputs were predicted from, that they were); an item with nothing usable says what it lacked.
        failures = []
        for k in range(n):
            if k in unreadable:
                failures.append((k, f"{unreadable[k]} (predicted from its other inputs)" if usable[k] else unreadable[k]))
            elif not usable[k]:
                failures.append((k, f"none of {', '.join(self.inputs)} given (this run reads them)"))
        if not ok_items:
            return np.zeros((0, len(self.genres)), np.float32), [], failures
        P = self.predict_blocks({m: b[ok_items] for m, b in blocks.items()}, {m: p[ok_items] for m, p in present.items()})
        return P, ok_items, failures


register_loader("fused", lambda root, part, entry, device, precision="auto": FusedRun(root, part, entry, device, precision))
