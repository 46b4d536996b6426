"""Every file genrekit writes goes through here: atomically, never through a planted link.

:func:`atomic_open` creates a fresh temporary file next to the target with ``O_CREAT | O_EXCL``
(:func:`tempfile.mkstemp`), so a symlink planted at any predictable temporary name cannot
redirect the write; on success the temporary file is renamed over the target, which replaces a
link at the target itself rather than writing into what it points to; on any error it is removed
and the target is left as it was. :func:`refuse_overwrite` stops an output from replacing one of
the command's own inputs; :func:`check_output` (every file output of the CLI: ``--out``, ``--json``, ``--predictions``, ``--removed``)
also stops it from replacing a file genrekit did not write for that purpose, unless forced.
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
              "ensemble.json", "blocks.npz", "predictions.npz", "finetune.json", "head.safetensors"}


class OutputKind:
    """What a command writes to a file, and how to recognise a file genrekit wrote for it.

    A CSV by its exact header line and HTML by genrekit's generator mark, both in the file's first
    :data:`SNIFF_BYTES`; JSON by its top-level keys (files up to :data:`SNIFF_JSON_BYTES`).
    """

    def __init__(self, what: str, *, csv_headers: tuple[str, ...] = (), csv_prefixes: tuple[str, ...] = (),
                 json_keys: tuple[str, ...] = (), marker: str | None = None):  # fmt: skip
        self.what, self.csv_headers, self.csv_prefixes = what, csv_headers, csv_prefixes
        self.json_keys, self.marker = json_keys, marker

    def owns(self, path: Path) -> bool:
        """Whether the file ``path`` is one genrekit wrote as this kind."""
        if not path.is_file():
            return False
        if self.json_keys:
            if path.stat().st_size > SNIFF_JSON_BYTES:
                return False
            try:
                obj = json.loads(path.read_bytes())
            except (ValueError, RecursionError):
                return False
            return isinstance(obj, dict) and all(k in obj for k in self.json_keys)
        with open(path, "rb") as fh:
            text = fh.read(SNIFF_BYTES).decode("utf-8", errors="replace")
        first = text.split("\n", 1)[0].rstrip("\r")
        if self.csv_headers or self.csv_prefixes:
            return first in self.csv_headers or any(first.startswith(p) for p in self.csv_prefixes)
        return self.marker is not None and self.marker in text


SNIFF_BYTES = 4096
SNIFF_JSON_BYTES = 64 << 20
# The report's <head> carries this, so a later report may replace an earlier one.
REPORT_MARK = '<meta name="generator" content="genrekit report">'

# Every file output of the CLI, as its writer's first line (CSV), keys (JSON) or mark (HTML) shows it.
MANIFEST_CSV = OutputKind("manifest CSV", csv_headers=("id,title,year,genres,plot,image", "id,title,year,genres,plot,image,split"))
REMOVED_CSV = OutputKind("removed-rows CSV", csv_headers=("id,reason,detail,title",))
SPLIT_CSV = OutputKind("split CSV", csv_headers=("id,split",))
PREDICTIONS_CSV = OutputKind("predictions CSV", csv_prefixes=("id,true_genres,", "id,predicted_genres,"))
EVALUATE_JSON = OutputKind("evaluate JSON", json_keys=("head", "items", "split", "metrics", "per_genre"))
REPORT_HTML = OutputKind("report", marker=REPORT_MARK)


def check_output(out: str | Path, inputs: Mapping[str, str | Path | None], flag: str, kind: OutputKind, force: bool = False) -> Path:
    """The one check before a command writes the file ``out`` (``--out``, ``--json``, ``--predictions`` ...).

    Refused with a :class:`ConfigError` naming ``flag``: an input of the command (always, see
    :func:`refuse_overwrite`), a directory, and an existing file that genrekit did not write as
    ``kind`` (a README, another run's predictions.npz, a manifest) unless ``force``.
    """
    refuse_overwrite(out, inputs, flag)
    o = Path(out)
    if o.is_dir():
        raise ConfigError(f"{flag} {out} is a directory; give the {kind.what} file to write")
    if not os.path.lexists(o):
        return o
    if force:
        return o
    if not kind.owns(o):
        raise ConfigError(
            f"{flag} {out} exists and is not a file genrekit wrote as its {kind.what}; it is left as it is: "
            "choose another file, or pass --force to replace it"
        )
    return o


def check_output_dir(out: str | Path, inputs: Mapping[str, str | Path | None], flag: str, what: str, marks: tuple[str, ...],
                     force: bool = False) -> Path:  # fmt: skip
    """The one check before a command writes into the folder ``out`` (a run, explain's overlays).

    A folder that is missing, empty, or holds one of ``marks`` (a file genrekit writes there: the
    run's ``results.json``, ``explain.json`` ...) is genrekit's; another folder's files may share
    the names genrekit writes, so it is refused unless ``force``, as are a file and an input.
    """
    refuse_overwrite(out, inputs, flag)
    o = Path(out)
    if os.path.lexists(o) and not o.is_dir():
        raise ConfigError(f"{flag} {out} is a file, not a folder; give a folder for the {what}")
    if force or not o.exists() or any((o / m).exists() for m in marks):
        return o
    if next(o.iterdir(), None) is not None:
        raise ConfigError(
            f"{flag} {out} is a folder genrekit did not make for the {what} (it holds other files, which genrekit's "
            "could replace); choose a new or empty folder, or pass --force to write into it"
        )
    return o


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
