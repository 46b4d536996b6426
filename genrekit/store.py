"""The feature store: one HDF5 file of embeddings keyed by sample id, and everything that made it.

Layout of ``STORE.h5``::

    /ids            (N,)   str      sample ids, unique
    /embeddings     (N, D) f16|f32  chunked, resizable
    /labels         (N, G) uint8    multi-hot over /genres
    /genres         (G,)   str      genre vocabulary, the column order of /labels
    /meta/title     (N,)   str      "" when unknown
    /meta/year      (N,)   int32    -1 when unknown
    /split          (N,)   str      train / val / test / "" (optional; written by `data split`)
    /failures/ids, /failures/reasons   items that could not be encoded, and why
    attrs: format_version, complete, encoder, preprocessing, normalisation, modality, dim, dtype,
           genrekit_version, created, config   (dicts as JSON)

Writes are crash-safe by construction: extraction appends batches as small files in
``STORE.h5.parts/`` (each written under a temporary name and renamed into place), and
:meth:`StoreWriter.finalize` streams them into ``STORE.h5.tmp`` and renames that over ``STORE.h5``.
A ``kill -9`` at any moment therefore leaves either the old complete store or none, plus parts
that the next run of the same command reuses; a half-written HDF5 file never has the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from genrekit import __version__
from genrekit.data.manifest import PARTS
from genrekit.errors import StoreError, StoreMismatchError

FORMAT_VERSION = 1
_STR = h5py.string_dtype("utf-8")
# Fields of the header that must match for two extractions to share a store.
IDENTITY_FIELDS = ("encoder", "preprocessing", "normalisation", "modality", "dtype", "genres")
# Recorded for convenience (where the weights file was), but the same file may live elsewhere later.
NOT_COMPARED = {"encoder.weights_path"}


@dataclass(frozen=True)
class StoreHeader:
    """What made a store. Two runs may write into one store only if these are equal."""

    encoder: Mapping  # family, name, weights, weights_sha256, ...
    preprocessing: Mapping  # image: size, resize, mean, std, interpolation; text: window, pooling
    normalisation: str  # "none" or "l2"
    modality: str  # "image" or "text"
    dim: int
    dtype: str  # "float16" or "float32"
    genres: tuple[str, ...]
    config: Mapping  # the resolved extract config, for the record (not compared)

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["genres"] = list(self.genres)
        return json.loads(json.dumps(d))

    @classmethod
    def from_json(cls, d: Mapping) -> StoreHeader:
        return cls(**{**d, "genres": tuple(d["genres"])})

    def diff(self, other: StoreHeader) -> list[tuple[str, object, object]]:
        """Fields (dotted, e.g. ``preprocessing.resize``) whose values differ, with both values."""
        out: list[tuple[str, object, object]] = []
        mine, theirs = self.to_json(), other.to_json()
        for f in IDENTITY_FIELDS:
            a, b = mine[f], theirs[f]
            if isinstance(a, dict) and isinstance(b, dict):
                for k in sorted(set(a) | set(b)):
                    if a.get(k) != b.get(k) and f"{f}.{k}" not in NOT_COMPARED:
                        out.append((f"{f}.{k}", a.get(k), b.get(k)))
            elif a != b:
                out.append((f, a if f != "genres" else f"{len(a)} genres", b if f != "genres" else f"{len(b)} genres"))
        return out


def _mismatch(path: Path, stored: StoreHeader, wanted: StoreHeader) -> StoreMismatchError:
    field, a, b = stored.diff(wanted)[0]
    return StoreMismatchError(
        f"{path.name} was made with {field}={a!r}, but this run uses {field}={b!r}; "
        "write to another --out, or repeat the options that made it"
    )


@dataclass
class FeatureSet:
    """A whole store in memory: what heads train on."""

    ids: np.ndarray  # (N,) str
    X: np.ndarray  # (N, D) float32
    Y: np.ndarray  # (N, G) uint8
    genres: list[str]
    titles: np.ndarray
    years: np.ndarray
    split: np.ndarray | None  # (N,) str, or None when the store has no split


def _str_array(values: Sequence[str]) -> np.ndarray:
    return np.array(list(values), dtype=object)


class FeatureStore:
    """Read access to a complete store.

    Example:
        >>> store = FeatureStore("posters.h5")  # doctest: +SKIP
        >>> fs = store.load()                     # everything, as numpy
        >>> for ids, X, Y in store.iter_batches(4096):  # or streamed
        ...     ...
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            parts = _parts_dir(self.path)
            if parts.is_dir():
                raise StoreError(
                    f"{self.path} is incomplete: its extraction stopped before the end "
                    f"(partial rows are in {parts.name}/); re-run the same `genrekit extract` command to finish it"
                )
            raise StoreError(f"feature store {str(self.path)!r} does not exist (make one with `genrekit extract`)")
        try:
            with h5py.File(self.path, "r") as f:
                attrs = dict(f.attrs)
                self.genres = [g.decode() if isinstance(g, bytes) else g for g in f["genres"][()]] if "genres" in f else []
                self._n = int(f["ids"].shape[0]) if "ids" in f else 0
        except OSError as e:
            raise StoreError(f"{self.path} is not a readable HDF5 file ({e})") from None
        if "format_version" not in attrs:
            raise StoreError(f"{self.path} is not a genrekit feature store (no format_version attribute)")
        if int(attrs["format_version"]) > FORMAT_VERSION:
            raise StoreError(
                f"{self.path} has store format {attrs['format_version']}, this genrekit reads up to "
                f"{FORMAT_VERSION}; upgrade genrekit"
            )
        if not attrs.get("complete", False):
            raise StoreError(f"{self.path} is marked incomplete; re-run the extraction that made it")
        self.attrs = {k: (json.loads(v) if k in ("encoder", "preprocessing", "config") else v) for k, v in attrs.items()}
        self.header = StoreHeader(
            encoder=self.attrs["encoder"],
            preprocessing=self.attrs["preprocessing"],
            normalisation=str(self.attrs["normalisation"]),
            modality=str(self.attrs["modality"]),
            dim=int(self.attrs["dim"]),
            dtype=str(self.attrs["dtype"]),
            genres=tuple(self.genres),
            config=self.attrs["config"],
        )

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        e = self.header.encoder
        return f"FeatureStore({str(self.path)!r}, {self._n} x {self.header.dim}, {e.get('name')}/{e.get('weights')})"

    @property
    def dim(self) -> int:
        return self.header.dim

    def check_compatible(self, header: StoreHeader) -> None:
        """Raise :class:`StoreMismatchError` naming the first field where ``header`` differs."""
        if self.header.diff(header):
            raise _mismatch(self.path, self.header, header)

    def _read_str(self, f: h5py.File, name: str, sl: slice | None = None) -> np.ndarray:
        if name not in f:
            return np.array([], dtype=object)
        ds = f[name].asstr()
        return np.asarray(ds[sl] if sl is not None else ds[()], dtype=object)

    @property
    def ids(self) -> np.ndarray:
        with h5py.File(self.path, "r") as f:
            return self._read_str(f, "ids")

    @property
    def failures(self) -> list[tuple[str, str]]:
        with h5py.File(self.path, "r") as f:
            return list(zip(self._read_str(f, "failures/ids"), self._read_str(f, "failures/reasons")))

    @property
    def split(self) -> np.ndarray | None:
        with h5py.File(self.path, "r") as f:
            return self._read_str(f, "split") if "split" in f else None

    def iter_batches(self, batch_size: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(ids, embeddings float32, labels)`` in row order, ``batch_size`` rows at a time."""
        with h5py.File(self.path, "r") as f:
            emb, lab = f["embeddings"], f["labels"]
            for start in range(0, self._n, batch_size):
                sl = slice(start, min(start + batch_size, self._n))
                yield self._read_str(f, "ids", sl), emb[sl].astype(np.float32, copy=False), lab[sl]

    def load(self) -> FeatureSet:
        """The whole store as numpy arrays (embeddings as float32)."""
        with h5py.File(self.path, "r") as f:
            X = np.empty((self._n, self.dim), dtype=np.float32)
            if self._n:
                f["embeddings"].read_direct(X)  # converts float16 on the fly, no second copy
            return FeatureSet(
                ids=self._read_str(f, "ids"),
                X=X,
                Y=f["labels"][()] if self._n else np.zeros((0, len(self.genres)), np.uint8),
                genres=list(self.genres),
                titles=self._read_str(f, "meta/title"),
                years=f["meta/year"][()] if "meta/year" in f else np.full(self._n, -1, np.int32),
                split=self._read_str(f, "split") if "split" in f else None,
            )

    def write_split(self, split: Mapping[str, str]) -> None:
        """Store a ``train``/``val``/``test`` assignment for every row (ids missing from it get "")."""
        bad = set(split.values()) - {*PARTS, ""}
        if bad:
            raise StoreError(f"split values must be train, val or test; got {sorted(bad)}")
        values = [split.get(i, "") for i in self.ids]
        with h5py.File(self.path, "a") as f:
            if "split" in f:
                del f["split"]
            f.create_dataset("split", data=_str_array(values), dtype=_STR)

    def info(self) -> dict:
        """Everything about the store, JSON-serialisable."""
        fails = self.failures
        counts = {}
        if self._n:
            with h5py.File(self.path, "r") as f:
                sums = np.zeros(len(self.genres), np.int64)
                for start in range(0, self._n, 65536):
                    sums += f["labels"][start : start + 65536].sum(axis=0, dtype=np.int64)
            counts = {g: int(c) for g, c in zip(self.genres, sums)}
        split = self.split
        return {
            "path": str(self.path),
            "rows": self._n,
            "dim": self.dim,
            "size_bytes": self.path.stat().st_size,
            **{k: v for k, v in self.attrs.items() if k not in ("complete",)},
            "genre_counts": counts,
            "split_counts": (
                {s: int((split == s).sum()) for s in PARTS} if split is not None else None
            ),
            "failures": [{"id": i, "reason": r} for i, r in fails],
        }


def _parts_dir(path: Path) -> Path:
    return path.with_name(path.name + ".parts")


class StoreWriter:
    """Crash-safe, resumable writer: batches go to part files, ``finalize`` makes the store.

    Example:
        >>> w = StoreWriter("posters.h5", header)  # doctest: +SKIP
        >>> todo = [i for i in ids if i not in w.done_ids]
        >>> w.write_part(batch_ids, batch_embeddings, batch_labels, titles, years, failures=[])
        >>> w.finalize()
    """

    def __init__(self, path: str | Path, header: StoreHeader) -> None:
        self.path = Path(path)
        self.header = header
        self.parts = _parts_dir(self.path)
        self.done_ids: set[str] = set()
        self.existing_rows = 0
        if self.path.exists():
            store = FeatureStore(self.path)
            store.check_compatible(header)
            self.done_ids.update(store.ids)
            self.done_ids.update(i for i, _ in store.failures)
            self.existing_rows = len(store)
        if self.parts.is_dir():
            stored = self._read_parts_header()
            if stored is not None and stored.diff(header):
                raise _mismatch(self.parts, stored, header)
            for p in self._part_files():
                with np.load(p, allow_pickle=False) as z:
                    self.done_ids.update(z["ids"].tolist())
                    self.done_ids.update(z["failed_ids"].tolist())
        self._seq = len(self._part_files())

    # -- parts ---------------------------------------------------------------------------------
    def _read_parts_header(self) -> StoreHeader | None:
        hp = self.parts / "header.json"
        return StoreHeader.from_json(json.loads(hp.read_text())) if hp.is_file() else None

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.npz")) if self.parts.is_dir() else []

    @property
    def pending_parts(self) -> int:
        return len(self._part_files())

    def write_part(
        self,
        ids: Sequence[str],
        embeddings: np.ndarray,
        labels: np.ndarray,
        titles: Sequence[str],
        years: Sequence[int],
        failures: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Durably record one batch (and the batch's failures) in one atomic file."""
        if not self.parts.is_dir():
            self.parts.mkdir(parents=True)
        hp = self.parts / "header.json"
        if not hp.exists():
            tmp = hp.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.header.to_json()))
            os.replace(tmp, hp)
        self._seq += 1
        final = self.parts / f"part-{self._seq:08d}.npz"
        tmp = self.parts / f".tmp-{self._seq:08d}.npz"
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                ids=np.array(list(ids), dtype=str),
                embeddings=np.asarray(embeddings, dtype=self.header.dtype).reshape(len(ids), self.header.dim),
                labels=np.asarray(labels, dtype=np.uint8).reshape(len(ids), len(self.header.genres)),
                titles=np.array([t or "" for t in titles], dtype=str),
                years=np.array([-1 if y is None else y for y in years], dtype=np.int32),
                failed_ids=np.array([i for i, _ in failures], dtype=str),
                failed_reasons=np.array([r for _, r in failures], dtype=str),
            )
        os.replace(tmp, final)
        self.done_ids.update(ids)
        self.done_ids.update(i for i, _ in failures)

    # -- finalize ------------------------------------------------------------------------------
    def finalize(self) -> FeatureStore:
        """Merge the existing store (if any) and all parts into the final file, atomically."""
        parts = self._part_files()
        if not parts and self.path.exists():
            if self.parts.is_dir():
                shutil.rmtree(self.parts)
            return FeatureStore(self.path)
        tmp = self.path.with_name(self.path.name + ".tmp")
        h, d, g = self.header, self.header.dim, len(self.header.genres)
        seen: set[str] = set()
        fail_ids: list[str] = []
        fail_reasons: list[str] = []
        with h5py.File(tmp, "w") as out:
            ids = out.create_dataset("ids", (0,), maxshape=(None,), dtype=_STR, chunks=(4096,))
            emb = out.create_dataset(
                "embeddings", (0, d), maxshape=(None, d), dtype=h.dtype, chunks=(max(1, min(1024, 2**20 // max(d, 1))), d)
            )
            lab = out.create_dataset("labels", (0, g), maxshape=(None, g), dtype=np.uint8, chunks=(4096, g) if g else None)
            tit = out.create_dataset("meta/title", (0,), maxshape=(None,), dtype=_STR, chunks=(4096,))
            yr = out.create_dataset("meta/year", (0,), maxshape=(None,), dtype=np.int32, chunks=(4096,))
            out.create_dataset("genres", data=_str_array(h.genres), dtype=_STR)

            def append(bid, bemb, blab, btit, byr):
                keep = [k for k, i in enumerate(bid) if i not in seen]
                if not keep:
                    return
                if len(keep) < len(bid):
                    bid, bemb, blab = bid[keep], bemb[keep], blab[keep]
                    btit, byr = btit[keep], byr[keep]
                seen.update(bid.tolist())
                n0, n1 = ids.shape[0], ids.shape[0] + len(bid)
                for ds in (ids, emb, lab, tit, yr):
                    ds.resize(n1, axis=0)
                ids[n0:n1] = _str_array(bid)
                emb[n0:n1] = bemb
                lab[n0:n1] = blab
                tit[n0:n1] = _str_array(btit)
                yr[n0:n1] = byr

            split_old: dict[str, str] = {}
            if self.path.exists():
                old = FeatureStore(self.path)
                with h5py.File(old.path, "r") as f:
                    for start in range(0, len(old), 4096):
                        sl = slice(start, start + 4096)
                        append(
                            old._read_str(f, "ids", sl),
                            f["embeddings"][sl],
                            f["labels"][sl],
                            old._read_str(f, "meta/title", sl),
                            f["meta/year"][sl],
                        )
                    if "split" in f:
                        split_old = dict(zip(old._read_str(f, "ids"), old._read_str(f, "split")))
                for i, r in old.failures:
                    fail_ids.append(i)
                    fail_reasons.append(r)
            for p in parts:
                with np.load(p, allow_pickle=False) as z:
                    append(z["ids"].astype(object), z["embeddings"], z["labels"], z["titles"].astype(object), z["years"])
                    fail_ids.extend(z["failed_ids"].tolist())
                    fail_reasons.extend(z["failed_reasons"].tolist())
            # An id that failed once and succeeded later (e.g. a fixed file) is not a failure.
            failures = {i: r for i, r in zip(fail_ids, fail_reasons) if i not in seen}
            out.create_dataset("failures/ids", data=_str_array(list(failures)), dtype=_STR)
            out.create_dataset("failures/reasons", data=_str_array(list(failures.values())), dtype=_STR)
            if split_old:
                out.create_dataset("split", data=_str_array([split_old.get(i, "") for i in out["ids"].asstr()[()]]), dtype=_STR)
            out.attrs.update(
                format_version=FORMAT_VERSION,
                encoder=json.dumps(dict(h.encoder), sort_keys=True),
                preprocessing=json.dumps(dict(h.preprocessing), sort_keys=True),
                normalisation=h.normalisation,
                modality=h.modality,
                dim=d,
                dtype=h.dtype,
                genrekit_version=__version__,
                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                config=json.dumps(dict(h.config), sort_keys=True, default=str),
                complete=True,
            )
        os.replace(tmp, self.path)
        shutil.rmtree(self.parts, ignore_errors=True)
        return FeatureStore(self.path)


# -- merging stores made on different machines -------------------------------------------------
def merge_stores(paths: Sequence[str | Path], out: str | Path, atol: float = 1e-5) -> FeatureStore:
    """Merge stores of one encoder (made on different machines or shards) into one new store.

    Streams each store in batches (no store is loaded whole) through a :class:`StoreWriter`, so an
    interrupted merge resumes like an extraction. Genres are the union of the stores' genres,
    aligned by name; splits are carried over.

    Args:
        paths: two or more stores with the same encoder, weights, preprocessing, normalisation,
            modality and dtype.
        out: the merged store to create (it must not exist).
        atol: duplicate ids are kept once when their embeddings agree within this tolerance.

    Raises:
        StoreMismatchError: the stores differ in an identity field (named), or one id has other
            embeddings, labels or split in two stores (the id is named).

    Example:
        >>> merge_stores(["node1.h5", "node2.h5"], "all.h5")  # doctest: +SKIP
    """
    paths = [Path(p) for p in paths]
    out = Path(out)
    if len(paths) < 2:
        raise StoreError(f"merge needs at least two stores; got {len(paths)}")
    if out.exists():
        raise StoreError(f"{out} exists; merge writes a new store (choose another --out or remove it)")
    for p in paths:
        if out.resolve() == p.resolve():
            raise StoreError(f"--out {out} is one of the stores being merged; choose another file")
    stores = [FeatureStore(p) for p in paths]
    first = stores[0]
    for s in stores[1:]:
        for f, a, b in first.header.diff(s.header):
            if f != "genres":
                raise StoreMismatchError(f"{s.path} differs from {first.path} in {f}: {b!r} vs {a!r}; only stores of one encoder and preprocessing merge")
    genres = list(dict.fromkeys(g for s in stores for g in s.genres))
    header = StoreHeader(**{**first.header.to_json(), "genres": tuple(genres),
                            "config": {**dict(first.header.config), "merged_from": [str(p) for p in paths]}})  # fmt: skip
    # Ids in more than one store: keep the first store's row, compare the others' against it.
    owner: dict[str, int] = {}
    dup: set[str] = set()
    for k, s in enumerate(stores):
        for i in s.ids:
            if i in owner and owner[i] != k:
                dup.add(i)
            owner.setdefault(i, k)
    kept: dict[str, tuple[np.ndarray, frozenset]] = {}
    split: dict[str, str] = {}
    writer = StoreWriter(out, header)
    for k, s in enumerate(stores):
        cols = np.array([genres.index(g) for g in s.genres], dtype=np.int64)
        s_split = dict(zip(s.ids, s.split)) if s.split is not None else {}
        with h5py.File(s.path, "r") as f:
            for start in range(0, len(s), 4096):
                sl = slice(start, min(start + 4096, len(s)))
                ids = s._read_str(f, "ids", sl)
                X = f["embeddings"][sl].astype(np.float32)
                Y = np.zeros((len(ids), len(genres)), np.uint8)
                Y[:, cols] = f["labels"][sl]
                keep = np.ones(len(ids), bool)
                for r, i in enumerate(ids):
                    part = s_split.get(i, "")
                    if part and split.setdefault(i, part) != part:
                        raise StoreMismatchError(f"id {i!r} is in split {split[i]!r} in one store and {part!r} in {s.path}")
                    if i not in dup:
                        continue
                    labels = frozenset(np.asarray(genres)[Y[r] > 0])
                    if i not in kept:
                        kept[i] = (X[r].copy(), labels)
                        continue
                    keep[r] = False
                    x0, l0 = kept[i]
                    if not np.allclose(x0, X[r], atol=atol, rtol=0):
                        raise StoreMismatchError(
                            f"id {i!r} has different embeddings in {s.path} and an earlier store "
                            f"(max |difference| {np.abs(x0 - X[r]).max():.3g}); these are not the same item or not the same encoder"
                        )
                    if l0 != labels:
                        raise StoreMismatchError(f"id {i!r} has genres {sorted(l0)} in one store and {sorted(labels)} in {s.path}")
                ids = ids[keep]
                if len(ids):
                    titles = s._read_str(f, "meta/title", sl) if "meta/title" in f else np.full(len(keep), "", dtype=object)
                    years = f["meta/year"][sl] if "meta/year" in f else np.full(len(keep), -1, np.int32)
                    writer.write_part(ids, X[keep], Y[keep], titles[keep], years[keep])
        fails = [(i, r) for i, r in s.failures if i not in owner]
        if fails:
            writer.write_part([], np.zeros((0, header.dim), np.float32), np.zeros((0, len(genres)), np.uint8), [], [], fails)
    merged = writer.finalize()
    if split:
        merged.write_split(split)
    return merged
