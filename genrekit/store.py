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
``STORE.h5.parts/`` (each written under a fresh ``O_EXCL`` temporary name and renamed into place),
and :meth:`StoreWriter.finalize` streams them into a fresh temporary file beside the store and
renames that over ``STORE.h5``. A ``kill -9`` or a full disk at any moment therefore leaves either
the old complete store or none, plus parts that the next run of the same command reuses; a
half-written HDF5 file never has the final name. :func:`store_lock` (``STORE.h5.lock``) keeps two
processes from writing one store at once.

Opening a store checks its layout (datasets, types, shapes, attributes) and refuses HDF5 external
links, external storage and virtual datasets, so a hand-edited or foreign file is one clear error
instead of a Python exception deep inside a command, and never reads another file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks (see store_lock)
    fcntl = None

from genrekit import __version__
from genrekit.atomic import atomic_path, atomic_write
from genrekit.data.manifest import PARTS
from genrekit.errors import ConfigError, StoreError, StoreMismatchError

log = logging.getLogger(__name__)
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

    def validate(self) -> None:
        """Refuse what the store cannot hold: duplicate, empty or unencodable genre names, odd types."""
        check_text("genre name", self.genres)
        empty = [g for g in self.genres if not g.strip()]
        dup = sorted({g for g in self.genres if self.genres.count(g) > 1})
        if empty or dup:
            raise StoreError(f"genre names must be unique and not empty; got {'duplicates ' + ', '.join(map(repr, dup)) if dup else 'an empty name'}")
        if self.dtype not in ("float16", "float32"):
            raise StoreError(f"store dtype {self.dtype!r} is not float16 or float32")
        if not isinstance(self.dim, int) or self.dim < 1:
            raise StoreError(f"embedding dimension {self.dim!r} is not a positive integer")

    def manifest_source(self):
        """How to re-read the manifest this store was extracted from (:class:`~genrekit.data.manifest.ManifestSource`),
        or ``None`` when the store records none (features written by a library user)."""
        from genrekit.data.manifest import ManifestSource

        return ManifestSource.from_config(self.config or {})

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


def check_text(what: str, values: Sequence[str], ids: Sequence[str] | None = None) -> None:
    """Refuse strings HDF5 and the part files cannot hold as given (NUL characters, lone surrogates).

    numpy's fixed-width strings drop trailing NULs and HDF5 ends strings at the first one, so such
    a value would come back changed; refusing keeps every id and genre read back equal to the one
    written.
    """
    for k, v in enumerate(values):
        bad = "a NUL character" if "\x00" in v else None
        if bad is None:
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                bad = "characters that are not valid UTF-8 (a lone surrogate)"
        if bad:
            where = f" (id {ids[k]!r})" if ids is not None else ""
            raise StoreError(f"{what} {v[:80]!r}{where} contains {bad}, which a feature store cannot hold; clean it in the manifest")


def _aligned(stored: StoreHeader, wanted: StoreHeader) -> StoreHeader:
    """``wanted`` with the stored column order when both have the same genres in another order."""
    if stored.genres != wanted.genres and sorted(stored.genres) == sorted(wanted.genres):
        return replace(wanted, genres=stored.genres)
    return wanted


def _mismatch(path: Path, stored: StoreHeader, wanted: StoreHeader) -> StoreMismatchError:
    field, a, b = stored.diff(wanted)[0]
    if field == "genres":
        only_store = [g for g in stored.genres if g not in wanted.genres]
        only_run = [g for g in wanted.genres if g not in stored.genres]
        parts = [f"only in the store: {', '.join(only_store)}" if only_store else "",
                 f"only in this run: {', '.join(only_run)}" if only_run else ""]
        return StoreMismatchError(
            f"{path.name} has other genres than this run ({'; '.join(p for p in parts if p)}); "
            f"pass --genres {','.join(stored.genres)} to extract with the store's vocabulary, or write to another --out"
        )
    if field == "encoder.precision":
        return StoreMismatchError(
            f"{path.name} was made with --precision {a}, but this run uses --precision {b}; pass --precision {a} "
            "to extend it, or write to another --out"
        )
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
            if self.path.is_dir():
                raise StoreError(f"feature store {str(self.path)!r} is a folder, not a store file; pass the .h5 file `genrekit extract --out` made")
            raise StoreError(f"feature store {str(self.path)!r} does not exist (make one with `genrekit extract`)")
        try:
            with h5py.File(self.path, "r") as f:
                self._n, self.genres, attrs = _check_layout(self.path, f)
        except OSError as e:
            raise StoreError(f"{self.path} is not a readable HDF5 file ({_first_line(e)})") from None
        self.attrs = attrs
        self.header = StoreHeader(
            encoder=attrs["encoder"],
            preprocessing=attrs["preprocessing"],
            normalisation=str(attrs["normalisation"]),
            modality=str(attrs["modality"]),
            dim=int(attrs["dim"]),
            dtype=str(attrs["dtype"]),
            genres=tuple(self.genres),
            config=attrs["config"],
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
        try:
            return np.asarray(ds[sl] if sl is not None else ds[()], dtype=object)
        except UnicodeDecodeError:
            raise StoreError(f"{self.path}: /{name} holds values that are not UTF-8 text") from None

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
                ids, X, Y = self._read_str(f, "ids", sl), emb[sl].astype(np.float32, copy=False), lab[sl]
                _check_rows(self.path, ids, X, Y)
                yield ids, X, Y

    def load(self) -> FeatureSet:
        """The whole store as numpy arrays (embeddings as float32)."""
        with h5py.File(self.path, "r") as f:
            X = np.empty((self._n, self.dim), dtype=np.float32)
            if self._n:
                f["embeddings"].read_direct(X)  # converts float16 on the fly, no second copy
            ids = self._read_str(f, "ids")
            Y = f["labels"][()].astype(np.uint8, copy=False) if self._n else np.zeros((0, len(self.genres)), np.uint8)
            _check_rows(self.path, ids, X, Y)
            if len(set(ids)) != len(ids):
                raise StoreError(f"{self.path}: /ids holds an id more than once; the store was edited, re-extract it")
            return FeatureSet(
                ids=ids,
                X=X,
                Y=Y,
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


# -- checking a store on open --------------------------------------------------------------------
# What each dataset must be: (kind, rank, rows follow /ids). Kinds: "str", "float", "int".
_LAYOUT = {
    "ids": ("str", 1, True),
    "embeddings": ("float", 2, True),
    "labels": ("int", 2, True),
    "genres": ("str", 1, False),
    "meta/title": ("str", 1, True),
    "meta/year": ("int", 1, True),
    "split": ("str", 1, True),
    "failures/ids": ("str", 1, False),
    "failures/reasons": ("str", 1, False),
}
_REQUIRED = ("ids", "embeddings", "labels", "genres")
_JSON_ATTRS = ("encoder", "preprocessing", "config")
_REQUIRED_ATTRS = ("complete", "encoder", "preprocessing", "normalisation", "modality", "dim", "dtype", "config")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _refuse_links(path: Path, f: h5py.File) -> None:
    """External links, external raw storage and virtual datasets would make h5py read other files."""
    found: list[str] = []

    def visit(name: str, link) -> None:
        if isinstance(link, h5py.ExternalLink):
            found.append(f"/{name} is an external link to {link.filename}")

    f.visititems_links(visit)
    if not found:
        def visit_obj(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset) and (obj.is_virtual or obj.external):
                found.append(f"/{name} is a {'virtual dataset' if obj.is_virtual else 'dataset stored in another file'}")

        f.visititems(visit_obj)
    if found:
        raise StoreError(f"{path} is not a plain genrekit store: {found[0]}; genrekit reads only self-contained stores")


def _kind(ds: h5py.Dataset) -> str:
    if h5py.check_string_dtype(ds.dtype) is not None:
        return "str"
    return {"f": "float", "i": "int", "u": "int", "b": "int"}.get(ds.dtype.kind, str(ds.dtype))


def _check_layout(path: Path, f: h5py.File) -> tuple[int, list[str], dict]:
    """Rows, genres and parsed attributes of an open store, or a :class:`StoreError` naming what is wrong."""
    attrs = dict(f.attrs)
    if "format_version" not in attrs:
        raise StoreError(f"{path} is not a genrekit feature store (no format_version attribute)")
    try:
        version = int(attrs["format_version"])
    except (TypeError, ValueError):
        raise StoreError(f"{path}: attribute format_version {attrs['format_version']!r} is not an integer") from None
    if version > FORMAT_VERSION:
        raise StoreError(
            f"{path} has store format {version}, this genrekit reads up to {FORMAT_VERSION}; upgrade genrekit"
        )
    if not attrs.get("complete", False):
        raise StoreError(f"{path} is marked incomplete; re-run the extraction that made it")
    missing = [a for a in _REQUIRED_ATTRS if a not in attrs]
    if missing:
        raise StoreError(f"{path} lacks the attribute(s) {', '.join(missing)}; it was not written by genrekit, re-extract it")
    for a in _JSON_ATTRS:
        try:
            attrs[a] = json.loads(attrs[a])
        except (TypeError, ValueError) as e:
            raise StoreError(f"{path}: attribute {a} is not valid JSON ({_first_line(e)}); re-extract the store") from None
        if not isinstance(attrs[a], dict):
            raise StoreError(f"{path}: attribute {a} should be a JSON object, got {type(attrs[a]).__name__}; re-extract the store")
    try:
        dim = int(attrs["dim"])
    except (TypeError, ValueError):
        raise StoreError(f"{path}: attribute dim {attrs['dim']!r} is not an integer") from None
    for a in ("normalisation", "modality", "dtype"):
        attrs[a] = attrs[a].decode() if isinstance(attrs[a], bytes) else attrs[a]
    if attrs["dtype"] not in ("float16", "float32"):
        raise StoreError(f"{path}: attribute dtype {attrs['dtype']!r} is not float16 or float32")
    _refuse_links(path, f)
    absent = [name for name in _REQUIRED if name not in f]
    if absent:
        raise StoreError(f"{path} has no /{absent[0]} dataset; it is not a complete genrekit store, re-extract it")
    n = None
    for name, (kind, rank, per_row) in _LAYOUT.items():
        if name not in f:
            continue
        ds = f[name]
        if not isinstance(ds, h5py.Dataset):
            raise StoreError(f"{path}: /{name} should be a dataset, found a group")
        if _kind(ds) != kind or ds.ndim != rank:
            raise StoreError(f"{path}: /{name} should be a {rank}-d {kind} dataset, found {ds.ndim}-d {ds.dtype} {ds.shape}")
        if name == "ids":
            n = ds.shape[0]
        elif per_row and ds.shape[0] != n:
            raise StoreError(f"{path}: /{name} has {ds.shape[0]} rows but /ids has {n}; the store was edited, re-extract it")
    if f["embeddings"].dtype.itemsize > 4:
        raise StoreError(f"{path}: /embeddings is {f['embeddings'].dtype}, a genrekit store holds float16 or float32")
    if f["embeddings"].shape[1] != dim:
        raise StoreError(f"{path}: /embeddings has {f['embeddings'].shape[1]} columns but attribute dim says {dim}")
    try:
        genres = list(f["genres"].asstr()[()])
    except UnicodeDecodeError:
        raise StoreError(f"{path}: /genres holds names that are not UTF-8 text") from None
    if f["labels"].shape[1] != len(genres):
        raise StoreError(f"{path}: /labels has {f['labels'].shape[1]} columns but /genres names {len(genres)}")
    dup = sorted({g for g in genres if genres.count(g) > 1})
    if dup:
        raise StoreError(f"{path}: /genres names {', '.join(map(repr, dup))} more than once; a genre must be one column")
    if "failures/ids" in f and f["failures/ids"].shape != f.get("failures/reasons", f["failures/ids"]).shape:
        raise StoreError(f"{path}: /failures/ids and /failures/reasons differ in length; the store was edited")
    return int(n), genres, attrs


def _check_rows(path: Path, ids: np.ndarray, X: np.ndarray, Y: np.ndarray) -> None:
    """Embeddings finite, labels 0/1: what every head assumes, checked where rows are read."""
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise StoreError(
            f"{path} has {int(bad.sum())} row(s) with non-finite embeddings (NaN or infinity), e.g. id "
            f"{ids[np.argmax(bad)]!r}; re-extract the store"
        )
    if Y.size and Y.max() > 1:
        raise StoreError(f"{path}: /labels holds values other than 0 and 1 (e.g. {int(Y.max())}); re-extract the store")


def _write_error(path: Path, e: OSError) -> StoreError:
    text = str(e)
    full = e.errno == errno.ENOSPC or "No space left" in text or f"errno = {errno.ENOSPC}," in text
    reason = "no space left on device" if full else (e.strerror if e.strerror else _first_line(e))
    return StoreError(
        f"cannot write {path}: {reason}; nothing is lost: encoded rows are kept in {_parts_dir(path).name}/, "
        "free space and re-run the same command to finish without re-encoding"
    )


@contextlib.contextmanager
def store_lock(path: str | Path) -> Iterator[None]:
    """Hold ``STORE.h5.lock`` (``flock``) while writing a store; refuse if another process holds it.

    The lock file is removed when the write succeeds (while still locked, so a process waiting
    on it sees that its file is gone and locks a fresh one); after a failure it stays beside the
    parts, naming the pid that wrote them.

    Example:
        >>> with store_lock("posters.h5"):  # doctest: +SKIP
        ...     StoreWriter("posters.h5", header).finalize()
    """
    path = Path(path)
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _attempt in range(20):
        fd = _open_lock(lock)
        locked = _flock(fd, path, lock)
        # The holder before us may have removed the file after we opened it: a lock on an unlinked
        # file excludes nobody, so lock the file now at that name instead.
        if not locked or _same_file(fd, lock):
            break
        os.close(fd)
    else:
        raise StoreError(f"cannot take the lock file {lock}: it keeps being replaced; is another process writing {path}?")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
        if locked:
            with contextlib.suppress(OSError):
                lock.unlink()
    finally:
        os.close(fd)  # releases the lock


def _open_lock(lock: Path) -> int:
    try:
        return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise StoreError(f"cannot create the lock file {lock}: {e.strerror or e}") from None


def _flock(fd: int, path: Path, lock: Path) -> bool:
    """Lock ``fd`` or refuse naming the holder's pid; ``False`` where the file system has no locks."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreError(f"{path} is being written by another process (pid {pid}); wait for it to finish, or write to another --out") from None
    except OSError as e:  # a file system without locks (some network mounts): warn, go on
        log.warning("cannot lock %s (%s); make sure no other process writes this store", lock, e.strerror)
        return False


def _same_file(fd: int, lock: Path) -> bool:
    try:
        st = os.stat(lock, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


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
        header.validate()
        self.path = Path(path)
        self.parts = _parts_dir(self.path)
        self.done_ids: set[str] = set()
        self.existing_rows = 0
        if self.path.exists():
            store = FeatureStore(self.path)
            header = _aligned(store.header, header)
            store.check_compatible(header)
            self.done_ids.update(store.ids)
            self.done_ids.update(i for i, _ in store.failures)
            self.existing_rows = len(store)
        if self.parts.is_dir():
            stored = self._read_parts_header()
            if stored is not None:
                header = _aligned(stored, header)
                if stored.diff(header):
                    raise _mismatch(self.parts, stored, header)
            for p in self._part_files():
                z = self._open_part(p)
                with z:
                    self.done_ids.update(z["ids"].tolist())
                    self.done_ids.update(z["failed_ids"].tolist())
        # The store's column order when this run's genres are the same set in another order:
        # callers build labels over ``writer.header.genres``.
        self.header = header
        self._seq = max((int(p.stem.split("-")[1]) for p in self._part_files()), default=0)

    # -- parts ---------------------------------------------------------------------------------
    def _read_parts_header(self) -> StoreHeader | None:
        hp = self.parts / "header.json"
        if not hp.is_file():
            return None
        try:
            return StoreHeader.from_json(json.loads(hp.read_text(encoding="utf-8")))
        except (ValueError, TypeError, KeyError) as e:
            raise StoreError(f"{hp} is damaged ({_first_line(e)}); delete {self.parts} and re-run the extraction") from None

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.npz")) if self.parts.is_dir() else []

    def _open_part(self, p: Path):
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise StoreError(f"part file {p} is damaged ({_first_line(e)}); delete it and re-run the extraction") from None

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
        """Durably record one batch (and the batch's failures) in one atomic file.

        Labels are columns of ``self.header.genres``. Rows whose embedding is not finite (NaN or
        infinity) are recorded as failures, never stored.
        """
        ids, titles = list(ids), [t or "" for t in titles]
        check_text("sample id", ids)
        check_text("title", titles, ids)
        check_text("failed sample id", [i for i, _ in failures])
        emb = np.asarray(embeddings, dtype=self.header.dtype).reshape(len(ids), self.header.dim)
        labels = np.asarray(labels, dtype=np.uint8).reshape(len(ids), len(self.header.genres))
        years = np.array([-1 if y is None else y for y in years], dtype=np.int32)
        finite = np.isfinite(emb).all(axis=1)
        if not finite.all():
            bad = [ids[k] for k in np.flatnonzero(~finite)]
            log.warning("%d embedding(s) are not finite (NaN or infinity), recorded as failures: %s", len(bad), ", ".join(bad[:5]))
            failures = [*failures, *((i, "non-finite embedding (NaN or infinity) from the encoder") for i in bad)]
            ids, titles = [ids[k] for k in np.flatnonzero(finite)], [titles[k] for k in np.flatnonzero(finite)]
            emb, labels, years = emb[finite], labels[finite], years[finite]
        try:
            self.parts.mkdir(parents=True, exist_ok=True)
            hp = self.parts / "header.json"
            if not hp.exists():
                atomic_write(hp, json.dumps(self.header.to_json()))
            self._seq += 1
            fd, tmp = tempfile.mkstemp(prefix=".part-", suffix=".tmp", dir=self.parts)
            try:
                with os.fdopen(fd, "wb") as fh:
                    np.savez(
                        fh, ids=np.array(ids, dtype=str), embeddings=emb, labels=labels,
                        titles=np.array(titles, dtype=str), years=years,
                        failed_ids=np.array([i for i, _ in failures], dtype=str),
                        failed_reasons=np.array([r for _, r in failures], dtype=str),
                    )  # fmt: skip
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.parts / f"part-{self._seq:08d}.npz")
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        except OSError as e:
            raise _write_error(self.path, e) from None
        self.done_ids.update(ids)
        self.done_ids.update(i for i, _ in failures)

    # -- finalize ------------------------------------------------------------------------------
    def finalize(self) -> FeatureStore:
        """Merge the existing store (if any) and all parts into the final file, atomically.

        On a write error (a full disk) the temporary file is removed and the parts are kept, so
        the same command run again finishes the store without encoding anything.
        """
        parts = self._part_files()
        if not parts and self.path.exists():
            self._drop_parts()
            return FeatureStore(self.path)
        self._remove_stale_temporaries()
        try:
            with atomic_path(self.path) as tmp:
                _in_child_process(self._write_store, tmp, parts)
        except OSError as e:
            raise _write_error(self.path, e) from None
        self._drop_parts()
        return FeatureStore(self.path)

    def _write_store(self, tmp: Path, parts: Sequence[Path]) -> None:
        with h5py.File(tmp, "w") as out:
            rows = _RowAppender(out, self.header)
            split_old, failures = self._copy_existing_store(rows)
            failures += self._copy_parts(rows, parts)
            _write_failures(out, failures, rows.seen)
            _write_split(out, split_old)
            _write_attrs(out, self.header)

    def _remove_stale_temporaries(self) -> None:
        """Temporary stores left by a killed run (the caller holds :func:`store_lock`)."""
        for p in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()

    def _copy_existing_store(self, rows: _RowAppender) -> tuple[dict[str, str], list[tuple[str, str]]]:
        """Rows of the store being extended, its split and its failures."""
        if not self.path.exists():
            return {}, []
        old = FeatureStore(self.path)
        with h5py.File(old.path, "r") as f:
            for start in range(0, len(old), 4096):
                sl = slice(start, start + 4096)
                bid = old._read_str(f, "ids", sl)
                bemb = f["embeddings"][sl]
                _check_rows(old.path, bid, bemb, f["labels"][sl])
                rows.append(bid, bemb, f["labels"][sl], old._read_str(f, "meta/title", sl), f["meta/year"][sl])
            split_old = dict(zip(old._read_str(f, "ids"), old._read_str(f, "split"))) if "split" in f else {}
        return split_old, list(old.failures)

    def _copy_parts(self, rows: _RowAppender, parts: Sequence[Path]) -> list[tuple[str, str]]:
        """Rows of every part file, in order; returns the parts' failures."""
        failures: list[tuple[str, str]] = []
        for p in parts:
            with self._open_part(p) as z:
                rows.append(z["ids"].astype(object), z["embeddings"], z["labels"], z["titles"].astype(object), z["years"])
                failures.extend(zip(z["failed_ids"].tolist(), z["failed_reasons"].tolist()))
        return failures

    def _drop_parts(self) -> None:
        shutil.rmtree(self.parts, ignore_errors=True)


def _in_child_process(fn, *args) -> None:
    """Run ``fn(*args)`` in a forked child; its exception comes back as an :class:`OSError`.

    Why a child: when the disk fills while HDF5 flushes a file, h5py raises and HDF5 keeps the
    half-closed file, then crashes the whole process when the interpreter exits (measured with
    h5py 3.16 on a full tmpfs: a segfault after the error). In a child the crash stays there; the
    parent removes the temporary file and reports one line. Without ``fork`` (not POSIX), in-process.
    """
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        fn(*args)
        return
    recv, send = mp.get_context("fork").Pipe(duplex=False)
    pid = os.fork()
    if pid == 0:  # the child: write, report, and leave without running any exit handler
        code = 0
        try:
            recv.close()
            fn(*args)
            send.send(None)
        except BaseException as e:  # every failure goes back to the parent as text
            code = 1
            with contextlib.suppress(BaseException):
                send.send((getattr(e, "errno", None), str(e) or type(e).__name__))
        finally:
            os._exit(code)
    send.close()
    try:
        result = recv.recv()
    except EOFError:  # the child died before it could say why
        result = (None, "the writer process died")
    finally:
        recv.close()
        _, status = os.waitpid(pid, 0)
    if result is not None:
        errno_, msg = result
        raise OSError(errno_, msg) if isinstance(errno_, int) else OSError(msg)
    if status != 0:
        raise OSError(f"the writer process ended with status {status}")


class _RowAppender:
    """The resizable row datasets of a store being written; the first occurrence of an id wins."""

    def __init__(self, out: h5py.File, h: StoreHeader) -> None:
        d, g = h.dim, len(h.genres)
        self.seen: set[str] = set()
        self.ids = out.create_dataset("ids", (0,), maxshape=(None,), dtype=_STR, chunks=(4096,))
        self.emb = out.create_dataset(
            "embeddings", (0, d), maxshape=(None, d), dtype=h.dtype, chunks=(max(1, min(1024, 2**20 // max(d, 1))), d)
        )
        self.lab = out.create_dataset("labels", (0, g), maxshape=(None, g), dtype=np.uint8, chunks=(4096, g) if g else None)
        self.tit = out.create_dataset("meta/title", (0,), maxshape=(None,), dtype=_STR, chunks=(4096,))
        self.yr = out.create_dataset("meta/year", (0,), maxshape=(None,), dtype=np.int32, chunks=(4096,))
        out.create_dataset("genres", data=_str_array(h.genres), dtype=_STR)

    def append(self, bid, bemb, blab, btit, byr) -> None:
        keep = [k for k, i in enumerate(bid) if i not in self.seen]
        if not keep:
            return
        if len(keep) < len(bid):
            bid, bemb, blab = bid[keep], bemb[keep], blab[keep]
            btit, byr = btit[keep], byr[keep]
        self.seen.update(bid.tolist())
        n0, n1 = self.ids.shape[0], self.ids.shape[0] + len(bid)
        for ds in (self.ids, self.emb, self.lab, self.tit, self.yr):
            ds.resize(n1, axis=0)
        self.ids[n0:n1] = _str_array(bid)
        self.emb[n0:n1] = bemb
        self.lab[n0:n1] = blab
        self.tit[n0:n1] = _str_array(btit)
        self.yr[n0:n1] = byr


def _write_failures(out: h5py.File, failures: Sequence[tuple[str, str]], stored: set[str]) -> None:
    """``/failures``; an id that failed once and succeeded later (e.g. a fixed file) is not a failure."""
    kept = {i: r for i, r in failures if i not in stored}
    out.create_dataset("failures/ids", data=_str_array(list(kept)), dtype=_STR)
    out.create_dataset("failures/reasons", data=_str_array(list(kept.values())), dtype=_STR)


def _write_split(out: h5py.File, split_old: Mapping[str, str]) -> None:
    """The extended store keeps the split it had (new rows get "")."""
    if split_old:
        out.create_dataset("split", data=_str_array([split_old.get(i, "") for i in out["ids"].asstr()[()]]), dtype=_STR)


def _write_attrs(out: h5py.File, h: StoreHeader) -> None:
    """The header, written last: a store is ``complete`` only once everything else is in."""
    out.attrs.update(
        format_version=FORMAT_VERSION,
        encoder=json.dumps(dict(h.encoder), sort_keys=True),
        preprocessing=json.dumps(dict(h.preprocessing), sort_keys=True),
        normalisation=h.normalisation,
        modality=h.modality,
        dim=h.dim,
        dtype=h.dtype,
        genrekit_version=__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        config=json.dumps(dict(h.config), sort_keys=True, default=str),
        complete=True,
    )


# -- merging stores made on different machines -------------------------------------------------
MERGE_GENRES = ("same", "intersect")


def merge_stores(paths: Sequence[str | Path], out: str | Path, atol: float = 1e-5, genres: str = "same") -> FeatureStore:
    """Merge stores of one encoder (made on different machines or shards) into one new store.

    Streams each store in batches (no store is loaded whole) through a :class:`StoreWriter`, so an
    interrupted merge resumes like an extraction. Genres are aligned by name; splits are carried over.

    A store holds 0/1 labels only, with no "unknown": a genre missing from one store's list is not
    known to be absent from its items, so stores with different genre lists are refused unless
    ``genres="intersect"`` (keep the genres every store has; the others are dropped, never turned
    into negatives). A store that lists one id twice is refused (which row is the item?).

    Args:
        paths: two or more stores with the same encoder, weights, preprocessing, normalisation,
            modality and dtype.
        out: the merged store to create (it must not exist).
        atol: duplicate ids are kept once when their embeddings agree within this tolerance.
        genres: ``same`` (the stores must list the same genres, in any order) or ``intersect``.

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
    seen_paths: dict[Path, Path] = {}
    for p in paths:
        if out.resolve() == p.resolve():
            raise StoreError(f"--out {out} is one of the stores being merged; choose another file")
        if p.resolve() in seen_paths:
            raise StoreError(f"{p} is given twice (as {seen_paths[p.resolve()]} too); merge each store once")
        seen_paths[p.resolve()] = p
    if genres not in MERGE_GENRES:
        raise ConfigError(f"--genres {genres!r} must be one of {', '.join(MERGE_GENRES)}")
    how = genres
    stores = [FeatureStore(p) for p in paths]
    first = stores[0]
    for s in stores[1:]:
        for f, a, b in first.header.diff(s.header):
            if f != "genres":
                raise StoreMismatchError(f"{s.path} differs from {first.path} in {f}: {b!r} vs {a!r}; only stores of one encoder and preprocessing merge")
    for s in stores:
        seen: set[str] = set()
        for i in s.ids:
            if i in seen:
                raise StoreError(f"{s.path} lists the id {i!r} more than once; which row is the item is unknown: re-extract that store")
            seen.add(i)
    genres = list(first.genres)
    for s in stores[1:]:
        if set(s.genres) != set(genres):
            if how == "same":
                only_a = sorted(set(genres) - set(s.genres))[:5]
                only_b = sorted(set(s.genres) - set(genres))[:5]
                raise StoreMismatchError(
                    f"{s.path} and {first.path} list different genres (only in {first.path}: {', '.join(only_a) or '-'}; only in "
                    f"{s.path}: {', '.join(only_b) or '-'}): a genre a store does not list is unknown for its items, not absent. "
                    "Extract every store with the same --genres, or pass --genres intersect to keep only the genres all stores list"
                )
            genres = [g for g in genres if g in set(s.genres)]
    if not genres:
        raise StoreMismatchError(f"the stores {', '.join(str(p) for p in paths)} share no genre; --genres intersect would leave none")
    header = StoreHeader(**{**first.header.to_json(), "genres": tuple(genres),
                            "config": {**dict(first.header.config), "merged_from": [str(p) for p in paths],
                                       "merge_genres": how}})  # fmt: skip
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
        src = np.array([j for j, g in enumerate(s.genres) if g in genres], dtype=np.int64)  # intersect drops the others
        cols = np.array([genres.index(s.genres[j]) for j in src], dtype=np.int64)
        s_split = dict(zip(s.ids, s.split)) if s.split is not None else {}
        with h5py.File(s.path, "r") as f:
            for start in range(0, len(s), 4096):
                sl = slice(start, min(start + 4096, len(s)))
                ids = s._read_str(f, "ids", sl)
                X = f["embeddings"][sl].astype(np.float32)
                Y = np.zeros((len(ids), len(genres)), np.uint8)
                Y[:, cols] = f["labels"][sl][:, src]
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
