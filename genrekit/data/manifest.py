"""Labelled manifests: the list of samples (id, image, genres, plot, title, year) a run works on.

A manifest is a CSV with at least ``id`` and ``genres`` and one of ``image`` or ``plot``. Image
paths are relative to the CSV's folder (or absolute, or URLs). Genres are separated by ``|``,
``,`` or whitespace (whichever the file uses). Other public formats (Kaggle MovieGenre.csv,
MM-IMDb, AniList/MAL CSVs, a folder per genre) are read by :mod:`genrekit.data.formats`;
:func:`read_manifest` detects which one a path is.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from genrekit.atomic import atomic_open
from genrekit.data.images import open_regular
from genrekit.errors import ManifestError, UnreadableImageError

# The parts of a split, in this order wherever they are listed.
PARTS = ("train", "val", "test")
# Years outside this range are typos or junk (the store keeps years as int32); refused when read.
YEARS = (1800, 2200)
# A manifest larger than this is refused unread (MovieGenre.csv, 40k rows, is 12 MB).
MAX_MANIFEST_BYTES = 2 * 2**30

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One item of a collection. ``image`` is an absolute path or a URL; ``None`` if absent.

    ``split`` is ``train``/``val``/``test`` when the source provides one (a ``split`` column,
    MM-IMDb's ``split.json``), else ``None``.
    """

    id: str
    genres: tuple[str, ...]
    image: str | None = None
    plot: str | None = None
    title: str | None = None
    year: int | None = None
    split: str | None = None
    # Other text columns of a generic CSV (``--field COLUMN`` embeds one of them).
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)


# Kaggle's MovieGenre.csv titles end in the year: "Toy Story (1995)", "Sherlock (2010-2017)".
TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})(?:[–-]\d{0,4})?\)\s*$", re.S)
# Text fields every sample has a slot for; any other name is a column of a generic CSV.
TEXT_FIELDS = ("plot", "title")


def split_title_year(title: str) -> tuple[str, int | None]:
    """``"Toy Story (1995)"`` -> ``("Toy Story", 1995)``; a title without the suffix is kept whole."""
    m = TITLE_YEAR.match(title)
    if m and YEARS[0] <= int(m.group(2)) <= YEARS[1]:  # "Blade Runner 2049 (0001)" keeps its title whole
        return m.group(1).strip(), int(m.group(2))
    return title, None


def sample_text(sample: Sample, text_field: str) -> str | None:
    """The text of ``sample`` in ``text_field`` (``plot``, ``title`` or another CSV column), or None.

    Titles lose a trailing "(Year)": the year is a strong genre cue of its own (a 1930s film is
    rarely Sci-Fi), and a title store must measure what the title says, not when it was made.
    """
    if text_field == "plot":
        text = sample.plot
    elif text_field == "title":
        text = split_title_year(sample.title)[0] if sample.title else None
    else:
        text = sample.extra.get(text_field)
    return text.strip() or None if text else None


@dataclass
class Manifest:
    """Samples plus where they came from. Sample ids are unique.

    Rows the reader could not keep as samples are not thrown away silently: ``duplicates`` holds
    ``(row, sample)`` for every repeated id (the first occurrence is kept), and ``latin1_rows``
    the row numbers whose text was not valid UTF-8 and was decoded as Latin-1.
    """

    samples: list[Sample]
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    format: str = "csv"
    duplicates: list[tuple[int, Sample]] = field(default_factory=list)
    latin1_rows: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    def genre_counts(self) -> Counter[str]:
        return Counter(g for s in self.samples for g in s.genres)

    def vocabulary(self) -> list[str]:
        """All genres, most frequent first (ties by name), the column order of stored labels."""
        return [g for g, _ in sorted(self.genre_counts().items(), key=lambda kv: (-kv[1], kv[0]))]

    def multi_hot(self, genres: Sequence[str] | None = None) -> np.ndarray:
        """``(N, G)`` uint8 labels over ``genres`` (default: :meth:`vocabulary`), by name."""
        genres = list(self.vocabulary() if genres is None else genres)
        col = {g: j for j, g in enumerate(genres)}
        Y = np.zeros((len(self.samples), len(genres)), dtype=np.uint8)
        for i, s in enumerate(self.samples):
            for g in s.genres:
                if g in col:
                    Y[i, col[g]] = 1
        return Y

    def subset(self, ids: Sequence[str]) -> Manifest:
        keep = set(ids)
        return self.with_samples([s for s in self.samples if s.id in keep])

    def with_samples(self, samples: list[Sample]) -> Manifest:
        """A copy with other samples and the same provenance."""
        return replace(self, samples=samples, warnings=list(self.warnings))


def split_genres(value: str, sep: str | None = None) -> tuple[str, ...]:
    """Split a genre cell on ``sep``, or on ``|`` / ``,`` / whitespace, whichever the cell uses."""
    value = value.strip()
    if not value:
        return ()
    if sep is None:
        sep = "|" if "|" in value else "," if "," in value else None
    parts = value.split(sep) if sep else value.split()
    out: list[str] = []
    for p in parts:
        p = p.strip()
        if p and p not in out:
            out.append(p)
    return tuple(out)


def resolve_image(value: str, root: Path, dirs: dict[str, str] | None = None) -> str | None:
    """An image cell as a URL or an absolute local path (``..`` and symlinks resolved).

    Paths outside ``root`` are allowed (people keep images elsewhere); whether the file exists is
    checked later, by inspection and cleaning. Only what cannot be a path is refused. ``dirs``
    caches resolved folders over one manifest's rows (:func:`real_path`).
    """
    value = value.strip()
    if not value:
        return None
    if value.startswith(("http://", "https://")):
        return value
    if "\x00" in value:
        return value  # refused with its row number when the manifest is assembled
    if value[:7].lower() == "file://":  # a local file as a URI (file:///posters/a.jpg): its path, decoded
        from urllib.parse import unquote, urlsplit

        u = urlsplit(value)
        if u.netloc not in ("", "localhost"):
            return value  # another machine's file: kept as given, so it fails as a missing file naming it
        value = unquote(u.path)
    p = Path(value).expanduser()
    return real_path(os.fspath(p if p.is_absolute() else root / p), {} if dirs is None else dirs)


def real_path(path: str, dirs: dict[str, str]) -> str:
    """``os.path.realpath(path)``, resolving each folder once (``dirs`` maps folder -> resolved).

    Resolving every component of every row cost 0.7 s of a 6,000-poster extraction's start-up;
    with the folder cached, a row costs one ``lstat`` (is the file itself a link?).
    A symlink loop is left as it is: the row's image fails later, with the reason.
    """
    head, name = os.path.split(path)
    if not head or name in ("", ".", ".."):
        return os.path.realpath(path)
    real = dirs.get(head)
    if real is None:
        real = dirs[head] = os.path.realpath(head)
    full = os.path.join(real, name)
    return os.path.realpath(full) if os.path.islink(full) else full


def parse_year(value: str, row: int, column: str = "year") -> int | None:
    """A year cell (``1999``, ``1999.0``) as an int, ``None`` when empty."""
    value = value.strip()
    if not value:
        return None
    try:
        year = int(float(value))
    except (ValueError, OverflowError):
        raise ManifestError(
            f"row {row}, column {column!r}: {value!r} is not a year (expected e.g. 1999 or empty)"
        ) from None
    if not YEARS[0] <= year <= YEARS[1]:
        raise ManifestError(
            f"row {row}, column {column!r}: {value!r} is not a plausible year "
            f"(expected {YEARS[0]}-{YEARS[1]} or empty; fix or empty the cell)"
        )
    return year


def read_text(path: Path, what: str = "manifest") -> tuple[str, list[int]]:
    """A text file decoded line by line: UTF-8, falling back to Latin-1 per line.

    Decoding per line keeps valid UTF-8 rows intact when only a few rows are Latin-1 (as in the
    Kaggle MovieGenre.csv). Returns the text and the 1-based line numbers that needed the fallback.
    """
    raw = read_regular_bytes(path, what)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    for bom, codec in ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if raw.startswith(bom):  # Excel's "Unicode text" and PowerShell write UTF-16 with a byte-order mark
            try:
                return raw.decode(codec), []
            except UnicodeDecodeError as e:
                raise ManifestError(f"{what} {str(path)!r} starts with a {codec.upper()} byte-order mark but is not valid {codec.upper()} "
                                    f"({e.reason} at byte {e.start}); save it as UTF-8") from None
    head = raw[:4096]
    if head and head.count(0) >= len(head) // 5:  # every other byte NUL: UTF-16 (or UTF-32) text without a byte-order mark
        raise ManifestError(f"{what} {str(path)!r} is mostly NUL bytes: it looks like UTF-16 or UTF-32 text without a byte-order mark, "
                            "or a binary file; save it as UTF-8 CSV")
    try:
        return raw.decode("utf-8"), []
    except UnicodeDecodeError:
        pass
    lines, bad = [], []
    for n, line in enumerate(raw.split(b"\n"), start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(line.decode("latin-1"))
            bad.append(n)
    return "\n".join(lines), bad


def read_regular_bytes(path: Path, what: str = "manifest", max_bytes: int = MAX_MANIFEST_BYTES, head: int | None = None) -> bytes:
    """The bytes of ``path`` (its first ``head`` bytes if given) if it is a regular file of at most
    ``max_bytes``, else a one-line refusal.

    A FIFO, a device (``/dev/zero``) or a socket is refused before reading, never a hang or an
    out-of-memory.
    """
    try:
        with open_regular(str(path), "file", max_bytes) as fh:
            return fh.read(max_bytes if head is None else min(head, max_bytes))
    except UnreadableImageError as e:
        reason = "missing" if str(e) == "missing file" else str(e)
        if Path(path).is_dir():
            reason = "a folder"
        raise ManifestError(f"{what} {str(path)!r} is {reason} (expected a CSV file)") from None


def latin1_warning(name: str, lines: list[int]) -> str:
    shown = ", ".join(map(str, lines[:10])) + (" ..." if len(lines) > 10 else "")
    return f"{name}: {len(lines)} line(s) are not valid UTF-8 (lines {shown}); read them as Latin-1"


def read_csv_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]], list[int]]:
    """Header and ``(row number, row)`` pairs of a CSV, refusing empty files and ragged rows."""
    text, latin1 = read_text(path)
    if not text.strip():
        raise ManifestError(f"manifest {str(path)!r} is empty (expected a header row, e.g. id,genres,image)")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    cols = [c.strip() for c in (reader.fieldnames or [])]
    twice = sorted({c for c in cols if c and cols.count(c) > 1})
    if twice:  # csv.DictReader would keep the last column of a name and drop the others without a word
        raise ManifestError(f"manifest {path.name}: the header names the column(s) {', '.join(map(repr, twice))} more than once; "
                            "rename or remove the extra column(s)")
    reader.fieldnames = cols
    rows = []
    end = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:  # a cell over csv.field_size_limit() characters, or broken quoting
            raise ManifestError(f"{path.name} line {end + 1}: {e}; fix the row or remove it") from None
        # The line a row starts on (a quoted cell may span lines): where an editor shows it.
        n, end = end + 1, reader.line_num
        if None in row:
            raise ManifestError(f"{path.name} line {n}: {len(cols) + len(row[None])} fields, the header has {len(cols)}")
        rows.append((n, {k: (v or "") for k, v in row.items()}))
    return cols, rows, latin1


def show_columns(cols: Sequence[str]) -> str:
    """Column names for a one-line message (a name with a line break or control character is quoted)."""
    return ", ".join(c if c.isprintable() else repr(c) for c in cols) or "none"


def detect_separator(cells: Sequence[str]) -> str | None:
    """One genre separator for a whole column: ``|`` if any cell has one, else ``,``, else spaces.

    Deciding per file, not per cell, keeps ``Science Fiction`` whole in a ``|``-separated file.
    """
    if any("|" in c for c in cells):
        return "|"
    if any("," in c for c in cells):
        return ","
    return None


@dataclass(frozen=True)
class CsvColumns:
    """Column names of a generic CSV manifest (each maps to a ``--*-col`` option)."""

    id: str = "id"
    genres: str = "genres"
    image: str = "image"
    plot: str = "plot"
    title: str = "title"
    year: str = "year"
    split: str = "split"


@dataclass(frozen=True)
class ManifestSource:
    """How a manifest was read: enough to read it again, the same way, from any working directory.

    ``genrekit extract`` records it in the store (``config.data``, ``format``, ``columns``,
    ``genre_sep``), so fine-tune, the similar-posters index and the report re-read a manifest made
    with ``--columns`` / ``--genre-sep`` exactly as extraction did.

    Attributes:
        path: the manifest, absolute (stores made before paths were recorded absolute may hold a
            relative one, read against the working directory).
        format: the manifest format (``auto`` detects it).
        columns: column names of a generic CSV, or ``None`` for the defaults.
        genre_sep: genre separator of a generic CSV, or ``None`` to detect it.
    """

    path: str
    format: str = "auto"
    columns: CsvColumns | None = None
    genre_sep: str | None = None

    @classmethod
    def from_config(cls, config: Mapping) -> ManifestSource | None:
        """The source recorded in a store's extract config, or ``None`` when it records no manifest."""
        data = config.get("data")
        if not data:
            return None
        cols = config.get("columns")
        columns = CsvColumns(**{k: str(v) for k, v in cols.items() if k in CsvColumns.__dataclass_fields__}) if isinstance(cols, Mapping) else None
        return cls(str(data), str(config.get("format") or "auto"), columns, config.get("genre_sep"))

    def read(self) -> Manifest:
        """The manifest, read as it was for the store; a missing file is named as the store's record."""
        if not Path(self.path).exists():
            if not Path(self.path).is_absolute():  # older stores recorded the path as typed, relative to where extract ran
                raise ManifestError(
                    f"the store records the manifest it was made from as the relative path {self.path!r}, which is not there from "
                    f"the current directory ({os.getcwd()}); run from the directory `genrekit extract` ran in, or re-extract the store"
                )
            raise ManifestError(f"the manifest the store was made from ({self.path}) is not there any more; put it back, "
                                f"or re-extract the store from the manifest where it is now")  # fmt: skip
        return read_manifest(self.path, self.format, columns=self.columns, genre_sep=self.genre_sep)


def build_manifest(
    path: Path,
    records: Sequence[tuple[int, Sample]],
    fmt: str,
    warnings: list[str] | None = None,
    latin1_rows: Sequence[int] = (),
) -> Manifest:
    """Assemble a Manifest from ``(row, sample)`` records: check ids, keep first duplicates."""
    warnings = list(warnings or [])
    if latin1_rows:
        warnings.append(latin1_warning(path.name, list(latin1_rows)))
    if records and not any(s.genres for _, s in records):
        raise ManifestError(
            f"{path.name}: the genre column is empty in all {len(records)} rows "
            "(expected genres such as Drama|Comedy; check --columns genres=NAME and --genre-sep)"
        )
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    dups: list[tuple[int, Sample]] = []
    for row, s in records:
        _refuse_nul(path, row, s)
        if not s.id:
            raise ManifestError(f"{path.name} row {row}, column 'id': empty (every row needs a unique id)")
        if s.id in seen:
            dups.append((row, s))
            continue
        seen[s.id] = row
        samples.append(s)
    if dups:
        warnings.append(
            f"{path.name}: {len(dups)} row(s) repeat an earlier id (first: {dups[0][1].id!r} at row {dups[0][0]}); "
            "kept the first of each (see `genrekit data clean`)"
        )
    for w in warnings:  # the caller shows them once (the CLI prints them, extraction logs them), so only at debug here
        log.debug(w)
    return Manifest(samples, str(path), warnings, fmt, dups, list(latin1_rows))


def _refuse_nul(path: Path, row: int, s: Sample) -> None:
    """Refuse a NUL byte in any text field: HDF5 strings cannot hold one, and it is never meant."""
    for column, value in (("id", s.id), ("title", s.title), ("plot", s.plot), ("image", s.image), *(("genres", g) for g in s.genres)):
        if value and "\x00" in value:
            raise ManifestError(
                f"{path.name} row {row}, column {column!r}: contains a NUL byte ({value[:40]!r}); "
                "remove it from the file"
            )


def read_csv_manifest(
    path: str | Path, columns: CsvColumns | None = None, genre_sep: str | None = None
) -> Manifest:
    """Read a generic CSV manifest.

    Args:
        path: the CSV file.
        columns: column names, when they are not ``id,genres,image,plot,title,year,split``.
        genre_sep: separator of the genre cells; ``None`` detects ``|``, ``,`` or spaces.

    Example:
        >>> m = read_csv_manifest("data/labels.csv")  # doctest: +SKIP
        >>> m.samples[0].genres
        ('Drama', 'Horror')
    """
    path = Path(path)
    c = columns or CsvColumns()
    cols, rows, latin1 = read_csv_rows(path)
    missing = [x for x in (c.id, c.genres) if x not in cols]
    if missing or not ({c.image, c.plot} & set(cols)):
        need = missing or [f"{c.image} or {c.plot}"]
        raise ManifestError(
            f"manifest {path.name} lacks column(s) {', '.join(need)}; found: {show_columns(cols)} "
            "(name the columns with --columns id=NAME,genres=NAME,image=NAME,plot=NAME)"
        )
    sep = genre_sep if genre_sep is not None else detect_separator([r[c.genres] for _, r in rows])
    warnings = []
    if genre_sep is None and sep == "|":
        other = [n for n, r in rows if "," in r[c.genres] and "|" not in r[c.genres]]
        if other:
            warnings.append(
                f"{path.name}: the genre column mixes separators: rows use '|' but {len(other)} use ',' only (first: row {other[0]}); "
                "split on '|', so those rows have one genre with a comma in it: fix them, or pass --genre-sep"
            )
    root, dirs = path.parent.resolve(), {}
    known = {c.id, c.genres, c.image, c.plot, c.title, c.year, c.split}
    records = []
    for n, row in rows:
        split = row.get(c.split, "").strip().lower() or None
        if split == "dev":
            split = "val"
        if split not in (None, "train", "val", "test"):
            raise ManifestError(f"{path.name} row {n}, column {c.split!r}: {split!r} is not one of train, val, test")
        records.append(
            (
                n,
                Sample(
                    id=row[c.id].strip(),
                    genres=split_genres(row[c.genres], sep),
                    image=resolve_image(row.get(c.image, ""), root, dirs),
                    plot=row.get(c.plot, "").strip() or None,
                    title=row.get(c.title, "").strip() or None,
                    year=parse_year(row.get(c.year, ""), n, c.year),
                    split=split,
                    extra={k: v for k, v in row.items() if k not in known and k and v},
                ),
            )
        )
    return build_manifest(path, records, "csv", warnings, latin1_rows=latin1)


def read_manifest(
    path: str | Path,
    format: str = "auto",
    *,
    columns: CsvColumns | None = None,
    genre_sep: str | None = None,
) -> Manifest:
    """Read a manifest in any supported format.

    Args:
        path: a CSV file, an MM-IMDb folder, or a folder with one sub-folder per genre.
        format: ``auto`` (detect), ``csv``, ``kaggle``, ``mmimdb``, ``anime`` or ``folder``.
        columns: column names of a generic CSV (``csv`` format only).
        genre_sep: genre separator of a generic CSV; ``None`` detects it.

    Example:
        >>> m = read_manifest("MovieGenre.csv")  # doctest: +SKIP
        >>> m.format, m.samples[0].title, m.samples[0].year
        ('kaggle', 'Toy Story', 1995)
    """
    from genrekit.data.formats import read_any

    return read_any(Path(path), format, columns=columns, genre_sep=genre_sep)


def _genre_cell(s: Sample) -> str:
    """Genres joined by ``|``. A lone genre that a reader would split on commas or spaces (when no
    row of the file has a ``|``) gets a trailing ``|``, so ``Science Fiction`` reads back whole."""
    for g in s.genres:
        if "|" in g:
            raise ManifestError(f"id {s.id!r}: genre {g!r} contains '|', the genre separator of the CSV; rename it")
    cell = "|".join(s.genres)
    if len(s.genres) == 1 and ("," in cell or len(cell.split()) != 1):
        cell += "|"
    return cell


def write_manifest(manifest: Manifest, path: str | Path, relative_to: str | Path | None = None) -> Path:
    """Write ``manifest`` as a genrekit CSV (``id,title,year,genres,plot,image[,split]``).

    Image paths under ``relative_to`` (default: the CSV's folder) are written relative to it,
    so the folder can be moved as a whole; others stay absolute, URLs stay URLs.
    """
    path = Path(path)
    root = Path(relative_to or path.parent).resolve()
    with_split = any(s.split for s in manifest.samples)
    with atomic_open(path, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "title", "year", "genres", "plot", "image"] + (["split"] if with_split else []))
        for s in manifest.samples:
            image = s.image or ""
            if image and not image.startswith(("http://", "https://")):
                p = Path(image)
                if p.is_relative_to(root):
                    image = p.relative_to(root).as_posix()
            row = [s.id, s.title or "", "" if s.year is None else s.year, _genre_cell(s), s.plot or "", image]
            w.writerow(row + ([s.split or ""] if with_split else []))
    return path
