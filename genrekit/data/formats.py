"""Readers for the public formats people arrive with, and the detection of which one a path is.

One entry per format in :data:`READERS`; adding a format is one function and one entry.

- ``csv``: the generic genrekit CSV (:func:`genrekit.data.manifest.read_csv_manifest`).
- ``kaggle``: "Movie Genre from its Poster" ``MovieGenre.csv`` (imdbId, Title "Name (Year)",
  Genre ``|``-separated, Poster URL), often Latin-1.
- ``mmimdb``: MM-IMDb, a ``dataset/`` folder of ``<id>.json`` + ``<id>.jpeg`` and ``split.json``.
- ``anime``: AniList / MyAnimeList-style CSVs (genres as a list string or comma-separated,
  a synopsis or description column).
- ``folder``: ``root/<Genre>/<file>.jpg``; one file name in several folders = several genres.
"""

from __future__ import annotations

import ast
import csv
import json
import re
from collections.abc import Callable
from pathlib import Path

from genrekit.data.manifest import (
    CsvColumns,
    Manifest,
    Sample,
    build_manifest,
    detect_separator,
    parse_year,
    read_csv_manifest,
    read_csv_rows,
    read_regular_bytes,
    resolve_image,
    show_columns,
    split_genres,
    split_title_year,
)
from genrekit.errors import ConfigError, ManifestError, UnknownNameError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
KAGGLE_COLUMNS = ("imdbId", "Title", "Genre", "Poster")
_YEAR = re.compile(r"\b(1[89]\d\d|20\d\d)\b")

# Column names seen in AniList / MAL exports, in order of preference.
_ANIME_ID = ("anime_id", "MAL_ID", "mal_id", "id", "ID", "uid")
_ANIME_TITLE = ("title", "Name", "name", "English name", "title_english", "title_romaji", "Title")
_ANIME_GENRES = ("genres", "Genres", "genre", "Genre")
_ANIME_PLOT = ("synopsis", "Synopsis", "sypnopsis", "description", "Description", "plot")
_ANIME_IMAGE = ("image", "image_url", "img_url", "cover_image", "coverImage", "main_picture", "poster")
_ANIME_YEAR = ("year", "seasonYear", "start_year", "Premiered", "Aired", "aired", "start_date", "startDate")


def _first_col(cols: list[str], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in cols), None)


def _list_cell(value: str, sep: str | None) -> tuple[str, ...]:
    """Genres from ``"['Action', 'Comedy']"`` / ``'["Action"]'`` / ``Action, Comedy``."""
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        try:
            items = ast.literal_eval(value)  # literal_eval parses JSON lists too, and nothing else runs
        except (ValueError, SyntaxError):
            items = None
        if isinstance(items, (list, tuple)):
            out: list[str] = []
            for it in items:
                name = (it.get("name", "") if isinstance(it, dict) else str(it)).strip()
                if name and name not in out:
                    out.append(name)
            return tuple(out)
        value = value[1:-1]
    return split_genres(value.replace("'", "").replace('"', ""), sep)


def read_kaggle(path: Path, **_: object) -> Manifest:
    """Read Kaggle's ``MovieGenre.csv``: posters are URLs, titles carry the year."""
    cols, rows, latin1 = read_csv_rows(path)
    missing = [c for c in ("imdbId", "Title", "Genre") if c not in cols]
    if missing:
        raise ManifestError(f"{path.name} lacks column(s) {', '.join(missing)}; found: {show_columns(cols)}")
    records = []
    for n, row in rows:
        title, year = split_title_year(row["Title"].strip())
        records.append(
            (
                n,
                Sample(
                    id=row["imdbId"].strip(),
                    genres=split_genres(row["Genre"], "|"),
                    image=row.get("Poster", "").strip() or None,
                    title=title or None,
                    year=year,
                ),
            )
        )
    return build_manifest(path, records, "kaggle", latin1_rows=latin1)


def read_anime(path: Path, genre_sep: str | None = None, **_: object) -> Manifest:
    """Read an AniList / MyAnimeList-style CSV (column names are recognised, not configured)."""
    cols, rows, latin1 = read_csv_rows(path)
    cid, cg = _first_col(cols, _ANIME_ID), _first_col(cols, _ANIME_GENRES)
    cp, ci = _first_col(cols, _ANIME_PLOT), _first_col(cols, _ANIME_IMAGE)
    ct, cy = _first_col(cols, _ANIME_TITLE), _first_col(cols, _ANIME_YEAR)
    missing = [what for what, c in (("an id (e.g. anime_id)", cid), ("genres", cg)) if c is None]
    if cp is None and ci is None:
        missing.append("a synopsis/description or an image column")
    if missing or cid is None or cg is None:
        raise ManifestError(f"anime CSV {path.name} lacks {', '.join(missing)}; found: {show_columns(cols)}")
    sep = genre_sep if genre_sep is not None else ("|" if detect_separator([r[cg] for _, r in rows]) == "|" else ",")
    root, dirs = path.parent.resolve(), {}
    records = []
    for n, row in rows:
        year = None
        if cy:
            m = _YEAR.search(row[cy])
            year = parse_year(m.group(1), n, cy) if m else None
        image = row[ci].strip() if ci else ""
        if image.startswith("{"):  # AniList coverImage objects: {"large": url, ...}
            try:
                obj = json.loads(image)
                image = str(obj.get("large") or obj.get("medium") or next(iter(obj.values()), ""))
            except (ValueError, AttributeError):
                image = ""
        records.append(
            (
                n,
                Sample(
                    id=row[cid].strip(),
                    genres=_list_cell(row[cg], sep),
                    image=resolve_image(image, root, dirs),
                    plot=(row[cp].strip() or None) if cp else None,
                    title=(row[ct].strip() or None) if ct else None,
                    year=year,
                ),
            )
        )
    return build_manifest(path, records, "anime", latin1_rows=latin1)


def _mmimdb_root(path: Path) -> tuple[Path, Path | None]:
    """``(folder of <id>.json, split.json or None)`` for a path to the root or ``dataset/``."""
    if path.is_file() and path.name == "split.json":
        path = path.parent
    data = path / "dataset" if (path / "dataset").is_dir() else path
    for cand in (path / "split.json", data / "split.json", path.parent / "split.json"):
        if cand.is_file():
            return data, cand
    return data, None


def read_mmimdb(path: Path, **_: object) -> Manifest:
    """Read MM-IMDb: per-film JSON (genres, plot list, title, year) + jpeg, and ``split.json``."""
    data, split_file = _mmimdb_root(path)
    files = sorted(p for p in data.glob("*.json") if p.name != "split.json" and p.is_file())
    if not files:
        raise ManifestError(f"{str(path)!r} has no <id>.json files (expected MM-IMDb's dataset/ folder)")
    split: dict[str, str] = {}
    warnings = []
    if split_file is not None:
        try:
            parts = json.loads(split_file.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ManifestError(f"{split_file} is not valid JSON ({e})") from None
        for part, ids in parts.items():
            name = {"dev": "val", "validation": "val"}.get(part, part)
            if name not in ("train", "val", "test"):
                raise ManifestError(f"{split_file.name}: key {part!r} is not one of train, dev, val, test")
            split.update({str(i): name for i in ids})
    else:
        warnings.append(f"{path}: no split.json found; the items have no predefined split")
    records = []
    for n, f in enumerate(files, start=1):
        try:
            obj = json.loads(f.read_text(encoding="utf-8", errors="replace"))
        except ValueError as e:
            raise ManifestError(f"{f.name} is not valid JSON ({e}); fix or remove the file") from None
        sid = f.stem
        plot = obj.get("plot") or obj.get("plot outline") or ""
        if isinstance(plot, list):  # several plot summaries per film: keep the first, the main one
            plot = plot[0] if plot else ""
        image = next((f.with_suffix(s) for s in (".jpeg", ".jpg", ".png") if f.with_suffix(s).is_file()), None)
        year = obj.get("year")
        records.append(
            (
                n,
                Sample(
                    id=sid,
                    genres=tuple(dict.fromkeys(str(g).strip() for g in obj.get("genres") or [] if str(g).strip())),
                    image=str(image.resolve()) if image else None,
                    plot=str(plot).strip() or None,
                    title=str(obj.get("title") or "").strip() or None,
                    year=parse_year(str(year), n, f"{f.name}:year") if year not in (None, "") else None,
                    split=split.get(sid),
                ),
            )
        )
    return build_manifest(data, records, "mmimdb", warnings)


def read_folder(path: Path, **_: object) -> Manifest:
    """Read ``root/<Genre>/<file>``: the folder names are genres, file stems are ids."""
    if not path.is_dir():
        raise ManifestError(f"{str(path)!r} is not a folder (expected root/<Genre>/<image files>)")
    genres: dict[str, list[str]] = {}
    images: dict[str, Path] = {}
    for d in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(d.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                genres.setdefault(f.stem, []).append(d.name)
                images.setdefault(f.stem, f.resolve())  # the first folder's copy (sorted by genre)
    if not genres:
        raise ManifestError(
            f"{str(path)!r} has no images in sub-folders (expected root/<Genre>/<file>.jpg; "
            f"image types: {', '.join(IMAGE_SUFFIXES)})"
        )
    records = [(n, Sample(id=i, genres=tuple(g), image=str(images[i]))) for n, (i, g) in enumerate(genres.items(), 1)]
    return build_manifest(path, records, "folder")


def _read_csv(path: Path, columns: CsvColumns | None = None, genre_sep: str | None = None, **_: object) -> Manifest:
    return read_csv_manifest(path, columns, genre_sep)


READERS: dict[str, Callable[..., Manifest]] = {
    "csv": _read_csv,
    "kaggle": read_kaggle,
    "mmimdb": read_mmimdb,
    "anime": read_anime,
    "folder": read_folder,
}
_ALIASES = {"anilist": "anime", "mal": "anime", "mm-imdb": "mmimdb", "moviegenre": "kaggle", "dir": "folder"}


def detect_format(path: Path) -> str:
    """Name the format of ``path`` from its type, extension, columns or folder structure."""
    if path.is_dir():
        data, split_file = _mmimdb_root(path)
        if split_file is not None or next(data.glob("*.json"), None) is not None:
            return "mmimdb"
        return "folder"
    if path.name == "split.json":
        return "mmimdb"
    if not path.exists():
        raise ManifestError(f"manifest {str(path)!r} does not exist (expected a CSV file or a folder)")
    if path.suffix.lower() not in (".csv", ".tsv", ".txt", ""):
        raise ManifestError(
            f"cannot tell the format of {path.name} (expected a .csv file, an MM-IMDb folder or a folder "
            "per genre); name it with --format"
        )
    head = read_regular_bytes(path, head=65536).decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = head.splitlines()
    cols = [c.strip() for c in next(csv.reader(lines[:1]), [])]
    if all(c in cols for c in KAGGLE_COLUMNS):
        return "kaggle"
    if "id" in cols and "genres" in cols and ({"image", "plot"} & set(cols)):
        return "csv"
    if _first_col(cols, _ANIME_GENRES) and (_first_col(cols, _ANIME_PLOT) or "anime_id" in cols or "MAL_ID" in cols):
        return "anime"
    return "csv"  # the generic reader's error then names the missing columns


def read_any(path: Path, format: str = "auto", **options: object) -> Manifest:
    """Read ``path`` with the reader of ``format`` (``auto`` detects it)."""
    name = _ALIASES.get(format.lower(), format.lower())
    if name == "auto":
        name = detect_format(path)
    elif name not in READERS:
        raise UnknownNameError("manifest format", format, ["auto", *READERS], hint="use --format auto to detect it")
    if name != "csv" and options.get("columns") is not None:
        raise ConfigError(f"column names (--*-col) apply to the generic csv format only, not to {name!r}")
    return READERS[name](path, **options)
