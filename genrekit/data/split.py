"""Reproducible train / val / test splits for multi-label data, and the ``id,split`` file format.

Three ways to split, all returning one ``"train"``/``"val"``/``"test"`` string per row:

- :func:`stratified_split`: multi-label iterative stratification (Sechidis et al., 2011), so every
  genre keeps roughly its share in every part, rare genres included.
- :func:`year_split`: train on older items, test on newer ones (posters drift with time).
- a split the user provides: :func:`read_split_file`, or a ``split`` column in the manifest.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genrekit.atomic import atomic_open
from genrekit.data.manifest import PARTS, Manifest, read_regular_bytes
from genrekit.errors import ConfigError, ManifestError, UnknownNameError

log = logging.getLogger(__name__)



def _check_ratios(ratios: Sequence[float]) -> np.ndarray:
    r = np.asarray(ratios, dtype=np.float64)
    if r.shape != (3,) or np.any(r < 0) or not np.isclose(r.sum(), 1.0, atol=1e-6):
        raise ConfigError(
            f"split ratios {tuple(ratios)} must be three non-negative numbers summing to 1 "
            "(train, val, test), e.g. 0.7,0.15,0.15"
        )
    return r


def _multi_hot(Y: np.ndarray) -> np.ndarray:
    Y = np.asarray(Y)
    if Y.ndim != 2:
        raise ConfigError(f"Y has shape {Y.shape}; expected a 2-D multi-hot matrix (items, genres)")
    return Y.astype(bool)


def _stratify(Y: np.ndarray, ratios: np.ndarray, seed: int) -> np.ndarray:
    """Fold index (position in ``ratios``) per row."""
    n = Y.shape[0]
    rng = np.random.RandomState(seed)
    # The algorithm walks rows in order; a seeded permutation makes the seed matter beyond ties.
    perm = rng.permutation(n)
    folds = np.empty(n, dtype=np.int64)
    from iterstrat.ml_stratifiers import IterativeStratification  # imports scikit-learn: only when splitting

    folds[perm] = IterativeStratification(labels=Y[perm], r=ratios, random_state=rng)
    return folds


def stratified_split(Y: np.ndarray, ratios: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0) -> np.ndarray:
    """Split rows of a multi-hot matrix by multi-label iterative stratification.

    Args:
        Y: ``(N, G)`` multi-hot labels (any dtype; non-zero means positive).
        ratios: shares of train, val and test; must sum to 1. A zero share leaves that part empty.
        seed: the same seed and ``Y`` always give the same split.

    Returns:
        ``(N,)`` object array of ``"train"``, ``"val"`` or ``"test"``.

    Example:
        >>> split = stratified_split(Y, (0.7, 0.15, 0.15), seed=0)  # doctest: +SKIP
        >>> (split == "test").mean()
        0.15
    """
    r = _check_ratios(ratios)
    Yb = _multi_hot(Y)
    out = np.empty(Yb.shape[0], dtype=object)
    if Yb.shape[0] == 0:
        return out
    out[:] = np.asarray(PARTS, dtype=object)[_stratify(Yb, r, seed)]
    return out


def _year_values(years: np.ndarray) -> np.ndarray:
    """Years as float with NaN for unknown (None, NaN, empty, or the store's -1)."""
    out = np.full(len(years), np.nan)
    for i, y in enumerate(np.asarray(years, dtype=object).ravel()):
        if y is None or (isinstance(y, str) and not y.strip()):
            continue
        try:
            v = float(y)
        except (TypeError, ValueError):
            raise ConfigError(f"year {y!r} at row {i} is not a number (expected e.g. 1999, or -1/None if unknown)") from None
        if v >= 0:
            out[i] = v
    return out


def year_split(
    years: np.ndarray,
    test_from: int,
    val_fraction: float = 0.15,
    seed: int = 0,
    Y: np.ndarray | None = None,
) -> np.ndarray:
    """Train on older items, test on newer ones: ``year >= test_from`` is test.

    Validation is carved from the older part (``val_fraction`` of it), stratified by genre when
    ``Y`` is given, at random otherwise. Rows without a year (``None``, NaN or -1) go to train.

    Args:
        years: ``(N,)`` release years.
        test_from: the first year of the test part.
        val_fraction: share of the older part that becomes validation, in ``[0, 1)``.
        seed: seeds the choice of validation rows.
        Y: optional ``(N, G)`` multi-hot labels to stratify validation by.

    Returns:
        ``(N,)`` object array of ``"train"``, ``"val"`` or ``"test"``.

    Example:
        >>> year_split(np.array([1990, 2001, 2015, -1]), test_from=2010, val_fraction=0.0)
        array(['train', 'train', 'test', 'train'], dtype=object)
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction} must be in [0, 1), e.g. 0.15")
    y = _year_values(years)
    if Y is not None and len(Y) != len(y):
        raise ConfigError(f"Y has {len(Y)} rows but years has {len(y)}; give one row per item")
    out = np.full(len(y), "train", dtype=object)
    known = ~np.isnan(y)
    test = known & (y >= test_from)
    out[test] = "test"
    if (~known).any():
        log.warning("%d item(s) have no year and go to train", int((~known).sum()))
    if not test.any():
        log.warning("no item is from %d or later: the test part is empty", test_from)
    older = np.flatnonzero(known & ~test)
    if val_fraction > 0 and len(older):
        if Y is not None:
            folds = _stratify(_multi_hot(Y)[older], np.array([1 - val_fraction, val_fraction, 0.0]), seed)
            out[older[folds == 1]] = "val"
        else:
            rng = np.random.RandomState(seed)
            k = int(round(val_fraction * len(older)))
            out[rng.choice(older, size=k, replace=False)] = "val"
    return out


def split_warnings(Y: np.ndarray, split: np.ndarray, genres: Sequence[str]) -> list[str]:
    """One message per genre that has no positive item in some non-empty part of the split.

    Such a genre cannot be trained, tuned or scored in that part, so its metrics are undefined.
    """
    Yb = _multi_hot(Y)
    split = np.asarray(split, dtype=object)
    if Yb.shape[1] != len(genres) or Yb.shape[0] != len(split):
        raise ConfigError(
            f"Y is {Yb.shape}, split has {len(split)} rows and there are {len(genres)} genres; they must agree"
        )
    parts = [p for p in PARTS if (split == p).any()]
    counts = {p: Yb[split == p].sum(axis=0) for p in parts}
    out = []
    for j, g in enumerate(genres):
        absent = [p for p in parts if counts[p][j] == 0]
        if absent:
            total = int(Yb[:, j].sum())
            out.append(f"genre {g!r} ({total} item(s) in all) has none in {', '.join(absent)}")
    return out


def read_split_file(path: str | Path) -> dict[str, str]:
    """Read an ``id,split`` CSV (values ``train``, ``val`` or ``test``) into ``{id: split}``.

    Raises:
        ManifestError: the file is missing, empty, lacks the columns, or a row is malformed
            (the message names the row and column).
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"split file {str(path)!r} does not exist (make one with `genrekit data split`)")
    text = read_regular_bytes(path, "split file").decode("utf-8-sig", errors="replace")
    if not text.strip():
        raise ManifestError(f"split file {path.name} is empty (expected a header row id,split)")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [c.strip().lower() for c in next(reader)]
    if "id" not in header or "split" not in header:
        raise ManifestError(f"split file {path.name} lacks column(s) id, split; found: {', '.join(header) or 'none'}")
    ci, cs = header.index("id"), header.index("split")
    out: dict[str, str] = {}
    for n, row in enumerate(reader, start=2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ManifestError(f"{path.name} row {n}: {len(row)} fields, the header has {len(header)}")
        sid, part = row[ci].strip(), row[cs].strip().lower()
        if not sid:
            raise ManifestError(f"{path.name} row {n}, column 'id': empty (every row needs an id)")
        if part not in PARTS:
            raise ManifestError(f"{path.name} row {n}, column 'split': {row[cs]!r} is not one of train, val, test")
        if sid in out:
            raise ManifestError(f"{path.name} row {n}, column 'id': {sid!r} appears twice")
        out[sid] = part
    return out


def write_split_file(path: str | Path, ids: Sequence[str], split: Sequence[str] | Mapping[str, str]) -> Path:
    """Write ``id,split`` rows atomically (a temporary file renamed into place).

    Args:
        path: destination CSV.
        ids: item ids, in the order to write.
        split: one part per id (same order), or a mapping ``{id: part}``.
    """
    path = Path(path)
    parts = [split[i] for i in ids] if isinstance(split, Mapping) else list(split)
    if len(parts) != len(ids):
        raise ConfigError(f"{len(ids)} ids but {len(parts)} split values; give one per id")
    bad = sorted({str(p) for p in parts} - set(PARTS))
    if bad:
        raise ConfigError(f"split values must be train, val or test; got {bad}")
    with atomic_open(path, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "split"])
        w.writerows(zip(ids, parts))
    return path


def split_summary(Y: np.ndarray, split: np.ndarray, genres: Sequence[str]) -> dict:
    """Rows per part and each genre's share (of the part's items) in every part and overall."""
    Yb = _multi_hot(Y)
    split = np.asarray(split, dtype=object)
    rows = {p: int((split == p).sum()) for p in PARTS}
    share: dict[str, dict[str, float]] = {}
    for j, g in enumerate(genres):
        share[g] = {"all": float(Yb[:, j].mean()) if len(Yb) else 0.0}
        for p in PARTS:
            m = split == p
            share[g][p] = float(Yb[m, j].mean()) if m.any() else 0.0
    return {"rows": rows, "share": share}


@dataclass(frozen=True)
class SplitConfig:
    """How ``genrekit data split`` assigns parts (each field is a flag).

    Attributes:
        by: ``stratified`` (iterative stratification), ``year`` (newer items are test), or
            ``column`` (the manifest's own ``split`` column / MM-IMDb's split.json).
        ratios: train, val, test shares for ``stratified``.
        seed: the same seed gives the same split.
        test_from: first test year for ``year``.
        val_fraction: share of the older items that become validation for ``year``.
    """

    by: str = "stratified"
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    test_from: int | None = None
    val_fraction: float = 0.15

    def __post_init__(self) -> None:
        if self.by not in SPLIT_METHODS:
            raise UnknownNameError("split method", self.by, SPLIT_METHODS)
        if self.by == "year" and self.test_from is None:
            raise ConfigError("--by year needs --test-from YEAR (the first year of the test part), e.g. 2010")
        _check_ratios(self.ratios)


SPLIT_METHODS = ("stratified", "year", "column")


def split_manifest(manifest: Manifest, config: SplitConfig | None = None) -> tuple[dict[str, str], list[str]]:
    """Assign every item of ``manifest`` to train / val / test.

    Returns:
        ``{id: part}`` and warnings (genres missing from a part, items without a year ...).

    Example:
        >>> split, warnings = split_manifest(read_manifest("labels.csv"), SplitConfig(seed=1))  # doctest: +SKIP
        >>> write_split_file("split.csv", list(split), split)
    """
    config = config or SplitConfig()
    genres = manifest.vocabulary()
    Y = manifest.multi_hot(genres)
    notes: list[str] = []
    if config.by == "stratified":
        parts = stratified_split(Y, config.ratios, config.seed)
    elif config.by == "year":
        years = np.array([-1 if s.year is None else s.year for s in manifest.samples])
        parts = year_split(years, int(config.test_from or 0), config.val_fraction, config.seed, Y)
        if (years < 0).any():
            notes.append(f"{int((years < 0).sum())} item(s) have no year and went to train")
    else:
        missing = [s.id for s in manifest.samples if not s.split]
        if missing:
            raise ManifestError(
                f"{len(missing)} item(s) have no split value (first: {missing[0]!r}); the manifest needs a "
                "split column with train/val/test in every row, or use --by stratified"
            )
        parts = np.array([s.split for s in manifest.samples], dtype=object)
    notes += split_warnings(Y, parts, genres)
    return dict(zip(manifest.ids, parts.tolist())), notes
