"""Every file genrekit writes goes through here: atomically, never through a planted link.

:func:`atomic_open` creates a fresh temporary file next to the target with ``O_CREAT | O_EXCL``
(:func:`tempfile.mkstemp`), so a symlink planted at any predictable temporary name cannot
redirect the write; on success the temporary file is renamed over the target, which replaces a
link at the target itself rather than writing into what it points to; on any error it is removed
and the target is left as it was. :func:`refuse_overwrite` stops an output from replacing one of
the command's own inputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from genrekit.errors import ConfigError


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None) -> Iterator[IO]:
    """Open a private temporary file that becomes ``path`` when the block ends without error.

    Args:
        path: the file to (re)place; its folder is created if needed.
        mode: ``"w"`` (text) or ``"wb"`` (bytes).
        encoding, newline: as for :func:`open` in text mode.

    Example:
        >>> with atomic_open("scores.csv", newline="") as fh:  # doctest: +SKIP
        ...     fh.write("id,Drama\\n")
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files; mode {mode!r} is not 'w' or 'wb'")
    with _temporary_beside(Path(path)) as (fd, _tmp):
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": encoding, "newline": newline})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


@contextlib.contextmanager
def _temporary_beside(path: Path) -> Iterator[tuple[int, str]]:
    """A fresh file next to ``path`` (O_CREAT | O_EXCL), renamed over ``path`` on success, removed on error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        yield fd, tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Mapping, default=None) -> Path:
    """Write JSON atomically (``default`` converts what json cannot, e.g. numpy scalars)."""
    return atomic_write(path, json.dumps(obj, indent=2, default=default))


def refuse_overwrite(out: str | Path, inputs: Mapping[str, str | Path | None], flag: str) -> None:
    """Raise :class:`ConfigError` when ``out`` is one of ``inputs`` (same file, or inside an input folder).

    Args:
        out: the output path a command is about to write.
        inputs: what the command reads, by how the user named it (``{"the store": path}``).
        flag: the option that named ``out`` (for the message).
    """
    o = Path(out).resolve()
    for what, p in inputs.items():
        if p is None:
            continue
        src = Path(p).resolve()
        if o == src or (src.is_dir() and src in o.parents and o.name in _RUN_FILES) or _same_file(o, src):
            raise ConfigError(f"{flag} {out} would overwrite {what} ({p}); choose another file")


# Files a run directory holds; an output may not replace them.
_RUN_FILES = {"run.json", "results.json", "results.csv", "fusion.json", "split.csv", "model.skops",
              "model.safetensors", "model.npz", "scaler.npz", "config.json", "backbone.safetensors",
              "ensemble.json", "blocks.npz"}


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A fresh temporary file name next to ``path``, for writers that need a name (h5py).

    The file is created with ``O_CREAT | O_EXCL`` (:func:`tempfile.mkstemp`), so nothing planted
    at a predictable name is written through; it replaces ``path`` when the block ends without
    error and is removed on any error.

    Example:
        >>> with atomic_path("store.h5") as tmp:  # doctest: +SKIP
        ...     with h5py.File(tmp, "w") as f:
        ...         f["x"] = 1
    """
    with _temporary_beside(Path(path)) as (fd, tmp):
        os.close(fd)  # the caller's library (h5py) opens it by name
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
