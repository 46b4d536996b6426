"""Pure feature maths: normalisation, joining stores by item id, early and late fusion.

Nothing here fits a model or touches the disk beyond reading stores; the runs that fit heads on
these features are in :mod:`genrekit.runs`. See :mod:`genrekit.runs.fused` for why the blocks are
scaled as they are.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genrekit.data.manifest import PARTS
from genrekit.errors import ConfigError, LabelError, UnknownNameError
from genrekit.store import FeatureSet, FeatureStore, StoreHeader

log = logging.getLogger(__name__)

JOINS = ("outer", "inner")


def l2_normalise(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32: the ``l2`` normalisation."""
    X = np.asarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


@dataclass
class JoinedFeatures:
    """Items of several stores, joined by id, one feature block per store.

    Attributes:
        ids: (N,) item ids.
        Y: (N, G) labels, the union of the stores' labels by genre name.
        genres: column names of ``Y``.
        titles, years: from the first store that has the item.
        split: (N,) train/val/test/"" from the stores (they must agree), or ``None``.
        blocks: store name -> (N, d) float32 features (zeros where the store lacks the item).
        present: store name -> (N,) bool, the items the store has.
        headers: store name -> its store header (``None`` for features made in memory).
    """

    ids: np.ndarray
    Y: np.ndarray
    genres: list[str]
    titles: np.ndarray
    years: np.ndarray
    split: np.ndarray | None
    blocks: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    headers: dict[str, StoreHeader | None]

    @property
    def names(self) -> list[str]:
        return list(self.blocks)

    def coverage(self) -> dict:
        """How many items have each store, all of them, or only one; per split part when known."""
        have = np.column_stack([self.present[n] for n in self.names])
        report = {
            "items": int(len(self.ids)),
            "per_store": {n: int(self.present[n].sum()) for n in self.names},
            "every_store": int(have.all(axis=1).sum()),
            "only": {n: int((self.present[n] & (have.sum(axis=1) == 1)).sum()) for n in self.names},
        }
        if self.split is not None:
            report["by_part"] = {
                p: {**{n: int((self.present[n] & (self.split == p)).sum()) for n in self.names},
                    "every_store": int((have.all(axis=1) & (self.split == p)).sum())}
                for p in PARTS
            }  # fmt: skip
        return report

    def store_features(self, name: str) -> FeatureSet:
        """The items of one store, as a FeatureSet with the joined labels and split."""
        rows = self.present[name]
        return FeatureSet(
            ids=self.ids[rows], X=self.blocks[name][rows], Y=self.Y[rows], genres=list(self.genres),
            titles=self.titles[rows], years=self.years[rows], split=None if self.split is None else self.split[rows],
        )  # fmt: skip


def store_name(header: StoreHeader | None, fallback: str) -> str:
    """``image-mobilenet_v2``, ``text-minilm``: a store's name in reports and run directories."""
    if header is None:
        return fallback
    return f"{header.modality}-{header.encoder.get('name', fallback)}".replace("/", "_")


def join_features(sets: Mapping[str, tuple[FeatureSet, StoreHeader | None]], join: str = "outer") -> JoinedFeatures:
    """Join FeatureSets by item id.

    Args:
        sets: store name -> (its features, its header); at least two.
        join: ``outer`` keeps every item of any store, ``inner`` only the items of every store.

    Returns:
        :class:`JoinedFeatures`; items in the order of the first store, then new ones in order.

    Raises:
        ConfigError: fewer than two stores, an unknown join, or splits that disagree on an item.
        LabelError: a store without genres.
    """
    if join not in JOINS:
        raise UnknownNameError("join", join, JOINS)
    if len(sets) < 2:
        raise ConfigError(f"fusion needs at least two stores; got {len(sets)}")
    for name, (fs, _) in sets.items():
        if not fs.genres:
            raise LabelError(f"store {name} has no genres; every fused store needs the labels of its items")
    all_ids = list(dict.fromkeys(i for fs, _ in sets.values() for i in fs.ids))
    if join == "inner":
        common = set.intersection(*(set(fs.ids) for fs, _ in sets.values()))
        all_ids = [i for i in all_ids if i in common]
        if not all_ids:
            raise ConfigError(f"the stores {', '.join(sets)} share no item id; an inner join is empty")
    where = {i: k for k, i in enumerate(all_ids)}
    genres = list(dict.fromkeys(g for fs, _ in sets.values() for g in fs.genres))
    n = len(all_ids)
    Y = np.zeros((n, len(genres)), np.uint8)
    titles = np.full(n, "", dtype=object)
    years = np.full(n, -1, np.int32)
    split = np.full(n, "", dtype=object)
    split_known = np.zeros(n, bool)
    blocks, present, headers, disagree = {}, {}, {}, 0
    for name, (fs, header) in sets.items():
        keep = np.array([i in where for i in fs.ids], bool)
        rows = np.array([where[i] for i in fs.ids[keep]], dtype=np.int64)
        cols = [genres.index(g) for g in fs.genres]
        labels = np.zeros((len(rows), len(genres)), np.uint8)
        labels[:, cols] = fs.Y[keep]
        seen = np.zeros(n, bool)
        for other in present.values():
            seen |= other
        both = rows[seen[rows]]
        disagree += int((Y[np.ix_(both, cols)] != fs.Y[keep][seen[rows]]).any(axis=1).sum())
        Y[rows] |= labels
        fresh = rows[~seen[rows]]
        titles[fresh] = fs.titles[keep][~seen[rows]] if len(fs.titles) else ""
        years[fresh] = fs.years[keep][~seen[rows]] if len(fs.years) else -1
        if fs.split is not None:
            theirs = np.asarray(fs.split, dtype=object)[keep]
            clash = split_known[rows] & (theirs != "") & (split[rows] != theirs)
            if clash.any():
                k = int(np.flatnonzero(clash)[0])
                raise ConfigError(
                    f"item {all_ids[rows[k]]} is in {split[rows[k]]!r} in one store and in {theirs[k]!r} in store {name}; "
                    "fused stores must share one split (re-split them with `genrekit data split`, or drop the splits)"
                )
            split[rows[theirs != ""]] = theirs[theirs != ""]
            split_known[rows[theirs != ""]] = True
        block = np.zeros((n, fs.X.shape[1]), np.float32)
        block[rows] = fs.X[keep]
        mask = np.zeros(n, bool)
        mask[rows] = True
        blocks[name], present[name], headers[name] = block, mask, header
    if disagree:
        log.warning("%d item(s) have other genres in one store than in another; their labels are the union", disagree)
    return JoinedFeatures(
        ids=np.array(all_ids, dtype=object), Y=Y, genres=genres, titles=titles, years=years,
        split=split if split_known.any() else None, blocks=blocks, present=present, headers=headers,
    )  # fmt: skip


def join_stores(paths: Sequence[str | Path], join: str = "outer") -> JoinedFeatures:
    """Load and join feature stores by item id (see :func:`join_features`).

    Example:
        >>> joined = join_stores(["posters.h5", "plots.h5"])  # doctest: +SKIP
        >>> joined.coverage()
        {'items': 6000, 'per_store': {'image-mobilenet_v2': 6000, 'text-minilm': 683}, ...}
    """
    sets: dict[str, tuple[FeatureSet, StoreHeader | None]] = {}
    for path in paths:
        store = FeatureStore(path)
        name = base = store_name(store.header, Path(path).stem)
        k = 2
        while name in sets:  # two stores of one encoder (e.g. posters at two resize modes)
            name, k = f"{base}-{k}", k + 1
        sets[name] = (store.load(), store.header)
    return join_features(sets, join)


# -- early fusion ----------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockScaling:
    """How early fusion scales each store's block: ``(x - mean) / scale * factor``, fitted on train.

    Saved with an early-fused run (:meth:`arrays` into an npz) so new items are fused exactly as
    the training items were.
    """

    names: tuple[str, ...]
    mean: Mapping[str, np.ndarray]
    scale: Mapping[str, np.ndarray]
    factor: Mapping[str, float]

    def apply(self, blocks: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray]) -> np.ndarray:
        """(n, sum of dims) fused features; a missing block is zeros (the training mean)."""
        parts = []
        for name in self.names:
            z = (np.asarray(blocks[name], np.float32) - self.mean[name]) / self.scale[name] * self.factor[name]
            z[~np.asarray(present[name], bool)] = 0.0
            parts.append(z.astype(np.float32))
        return np.concatenate(parts, axis=1)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for k, name in enumerate(self.names):
            out[f"mean_{k}"], out[f"scale_{k}"] = self.mean[name], self.scale[name]
            out[f"factor_{k}"] = np.asarray(self.factor[name], np.float64)
        return out

    @classmethod
    def from_arrays(cls, names: Sequence[str], z: Mapping[str, np.ndarray]) -> BlockScaling:
        names = tuple(names)
        return cls(
            names, {n: np.asarray(z[f"mean_{k}"], np.float32) for k, n in enumerate(names)},
            {n: np.asarray(z[f"scale_{k}"], np.float32) for k, n in enumerate(names)},
            {n: float(z[f"factor_{k}"]) for k, n in enumerate(names)},
        )  # fmt: skip


def fit_block_scaling(joined: JoinedFeatures, weights: Mapping[str, float] | None = None) -> BlockScaling:
    """Each block's mean and scale on its training items (all items that have the store when there
    is no split yet: no labels are used either way), and its factor sqrt(weight x stores / dim)."""
    train = np.ones(len(joined.ids), bool) if joined.split is None else joined.split == "train"
    weights = weights or {n: 1.0 / len(joined.names) for n in joined.names}
    mean, scale, factor = {}, {}, {}
    for name in joined.names:
        have, block = joined.present[name], joined.blocks[name]
        source = have & train if (have & train).any() else have
        mean[name] = block[source].mean(axis=0).astype(np.float32)
        sd = block[source].std(axis=0)
        sd[sd < 1e-8] = 1.0  # a constant feature carries nothing; keep it at zero
        scale[name] = sd.astype(np.float32)
        factor[name] = float(np.sqrt(weights[name] * len(joined.names) / block.shape[1]))
    return BlockScaling(tuple(joined.names), mean, scale, factor)


def early_fusion(joined: JoinedFeatures, weights: Mapping[str, float] | None = None, scaling: BlockScaling | None = None) -> FeatureSet:
    """One FeatureSet of the concatenated, per-store standardised blocks (see the module docstring).

    Args:
        joined: the stores.
        weights: store name -> share of the total variance (summing to 1); equal by default.
        scaling: a fitted :class:`BlockScaling` (default: fitted here, see :func:`fit_block_scaling`).
    """
    scaling = scaling or fit_block_scaling(joined, weights)
    return FeatureSet(
        ids=joined.ids, X=scaling.apply(joined.blocks, joined.present), Y=joined.Y, genres=list(joined.genres),
        titles=joined.titles, years=joined.years, split=joined.split,
    )  # fmt: skip


# -- late fusion -----------------------------------------------------------------------------
def combine(probas: Mapping[str, np.ndarray], weights: Mapping[str, float | np.ndarray]) -> np.ndarray:
    """Weighted mean of per-store probabilities; NaN marks what a store does not cover.

    Where every store with weight covers nothing, the plain mean of the stores that do is used,
    so a zero weight never leaves an item without probabilities.

    Args:
        probas: store name -> (n, G) probabilities, NaN where the store lacks the item or genre.
        weights: store name -> non-negative weight, one for all genres or one per genre (G,).
    """
    stack = np.stack([probas[n] for n in probas])
    have = ~np.isnan(stack)
    G = stack.shape[2]
    w = np.stack([np.broadcast_to(np.asarray(weights[n], np.float64), (G,)) for n in probas])[:, None, :] * have
    vals = np.nan_to_num(stack)
    num, den = (w * vals).sum(axis=0), w.sum(axis=0)
    plain = vals.sum(axis=0) / np.maximum(have.sum(axis=0), 1)
    return np.where(den > 0, num / np.maximum(den, 1e-12), plain).astype(np.float32)


def weight_grid(names: Sequence[str], step: float) -> list[dict[str, float]]:
    """Every weighting of ``names`` on the simplex grid of ``step``, the uniform one first."""
    k = int(round(1 / step))
    grid = [c for c in itertools.product(range(k + 1), repeat=len(names)) if sum(c) == k]
    grid.sort(key=lambda c: sum((x / k - 1 / len(names)) ** 2 for x in c))
    return [{n: x / k for n, x in zip(names, c)} for c in grid]
