"""Cleaning that reports instead of hiding: every removed row is listed with its reason.

Checks, in order (an item is removed for the first reason that applies): repeated id, no genres,
no image / missing or unreadable image, same title and year as an earlier item, byte-identical
image to an earlier item. Rows whose text was not valid UTF-8 are kept (decoded as Latin-1) and
counted, since the fallback may have guessed wrong.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from genrekit.atomic import atomic_open
from genrekit.data.inspection import ImageCheck, duplicate_images, duplicate_title_year, scan_images
from genrekit.data.manifest import Manifest, Sample
from genrekit.progress import ProgressFn

log = logging.getLogger(__name__)

DUPLICATE_ID = "duplicate id"
NO_GENRES = "no genres"
NO_IMAGE = "no image"
BAD_IMAGE = "unreadable image"
SAME_TITLE_YEAR = "same title and year"
SAME_IMAGE = "identical image"


@dataclass(frozen=True)
class CleanConfig:
    """What :func:`clean_manifest` removes (each field is a ``genrekit data clean`` flag).

    Attributes:
        require_image: remove items without a readable local image. ``None``: only when the
            manifest has images at all (a text-only collection keeps its rows).
        check_images: open every image (header check); off, only missing paths count.
        deep: fully decode every image, which finds truncated files (slower).
        drop_same_title_year: remove later items with the same normalised title and year.
        drop_identical_images: remove later items whose image bytes equal an earlier item's.
    """

    require_image: bool | None = None
    check_images: bool = True
    deep: bool = False
    drop_same_title_year: bool = True
    drop_identical_images: bool = True


@dataclass(frozen=True)
class Removal:
    """One removed row: its id, the reason (one of the module constants) and a detail."""

    id: str
    reason: str
    detail: str = ""
    title: str = ""


@dataclass
class CleanReport:
    """What :func:`clean_manifest` removed and noticed."""

    rows_in: int
    rows_out: int
    removed: list[Removal] = field(default_factory=list)
    latin1_rows: list[int] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Removals per reason, most frequent first."""
        return dict(Counter(r.reason for r in self.removed).most_common())

    def to_json(self) -> dict:
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "removed_by_reason": self.counts,
            "latin1_rows": len(self.latin1_rows),
            "removed": [r.__dict__ for r in self.removed],
        }

    def write_csv(self, path: str | Path) -> Path:
        """Write the removed rows as ``id,reason,detail,title``."""
        path = Path(path)
        with atomic_open(path, newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "reason", "detail", "title"])
            w.writerows([r.id, r.reason, r.detail, r.title] for r in self.removed)
        return path


def clean_manifest(
    manifest: Manifest, config: CleanConfig | None = None, progress: ProgressFn | None = None
) -> tuple[Manifest, CleanReport]:
    """Remove unusable and duplicate rows, and say which and why.

    Args:
        manifest: what to clean; not modified.
        config: what to check; the default checks everything with a fast header check.
        progress: called as ``progress("images", done, total)`` while images are checked.

    Returns:
        The cleaned manifest and a :class:`CleanReport` (``write_csv`` saves the removed rows).

    Example:
        >>> clean, report = clean_manifest(read_manifest("labels.csv"))  # doctest: +SKIP
        >>> report.counts
        {'unreadable image': 3, 'same title and year': 1}
    """
    config = config or CleanConfig()
    removed = [
        Removal(s.id, DUPLICATE_ID, f"row {row} repeats an earlier id", s.title or "") for row, s in manifest.duplicates
    ]
    gone: set[str] = set()

    def drop(s: Sample, reason: str, detail: str = "") -> None:
        gone.add(s.id)
        removed.append(Removal(s.id, reason, detail, s.title or ""))

    for s in manifest.samples:
        if not s.genres:
            drop(s, NO_GENRES)
    need_image = config.require_image
    if need_image is None:
        need_image = any(s.image for s in manifest.samples)
    checks: dict[str, ImageCheck] = {}
    if need_image:
        todo = [s for s in manifest.samples if s.id not in gone]
        if config.check_images:
            checks = scan_images(todo, deep=config.deep, progress=progress)
        for s in todo:
            if not s.image:
                drop(s, NO_IMAGE)
            elif s.image.startswith(("http://", "https://")):
                drop(s, NO_IMAGE, "a URL, not downloaded (run `genrekit data download` first)")
            else:
                reason = checks[s.id].reason if s.id in checks else (None if Path(s.image).is_file() else "missing file")
                if reason:
                    drop(s, BAD_IMAGE, reason)
    if config.drop_same_title_year:
        for kept, dup in duplicate_title_year([s for s in manifest.samples if s.id not in gone]):
            drop(dup, SAME_TITLE_YEAR, f"same as {kept.id}")
    if config.drop_identical_images and checks:
        for kept, dup in duplicate_images([s for s in manifest.samples if s.id not in gone], checks):
            drop(dup, SAME_IMAGE, f"same bytes as {kept.id}")
    samples = [s for s in manifest.samples if s.id not in gone]
    out = manifest.with_samples(samples)
    out.duplicates = []
    report = CleanReport(len(manifest) + len(manifest.duplicates), len(samples), removed, list(manifest.latin1_rows))
    if removed:
        log.info("cleaning removed %d of %d rows: %s", len(removed), report.rows_in, report.counts)
    return out, report
