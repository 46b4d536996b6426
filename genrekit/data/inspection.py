"""What is in a manifest: counts, shares, co-occurrence, years, duplicates and image health.

:func:`scan_images` is shared with cleaning: a fast header check per image (PIL ``verify``), or a
full decode with ``deep=True``, plus a content hash to find byte-identical posters.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from PIL import Image

from genrekit.data.images import load_image, open_regular
from genrekit.data.manifest import Manifest, Sample
from genrekit.errors import UnreadableImageError
from genrekit.progress import ProgressFn, null_progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageCheck:
    """One image's health: ``reason`` is ``None`` when readable; ``sha1`` of the bytes if read."""

    reason: str | None
    sha1: str | None = None


def check_image(path: str | None, deep: bool = False) -> ImageCheck:
    """Check one image: exists, non-empty, a recognised header (``deep``: decodes fully)."""
    if not path:
        return ImageCheck("no image")
    if path.startswith(("http://", "https://")):
        return ImageCheck("not downloaded (a URL; run `genrekit data download`)")
    try:
        fh = open_regular(path)
    except UnreadableImageError as e:
        return ImageCheck(str(e))
    with fh:
        h = hashlib.sha1()
        size = 0
        # Hash in chunks: memory stays bounded whatever the file (open_regular bounds the size).
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
        sha1 = h.hexdigest()
        if not size:
            return ImageCheck("empty file (0 bytes)", sha1)
        if deep:
            try:
                load_image(path)
            except UnreadableImageError as e:
                return ImageCheck(str(e), sha1)
            return ImageCheck(None, sha1)
        fh.seek(0)
        try:
            with Image.open(fh) as img:
                img.verify()
        except Image.UnidentifiedImageError:
            return ImageCheck("not an image (unrecognised format)", sha1)
        except Exception as e:  # verify() raises whatever the plugin raises on a broken header
            return ImageCheck(f"cannot decode ({e})", sha1)
    return ImageCheck(None, sha1)


def scan_images(
    samples: Sequence[Sample], deep: bool = False, workers: int | None = None, progress: ProgressFn | None = None
) -> dict[str, ImageCheck]:
    """:func:`check_image` for every sample, in threads (decoding releases the GIL)."""
    progress = progress or null_progress
    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    out: dict[str, ImageCheck] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for k, (s, res) in enumerate(zip(samples, pool.map(lambda s: check_image(s.image, deep), samples)), 1):
            out[s.id] = res
            progress("images", k, len(samples))
    return out


def _norm_title(title: str) -> str:
    return " ".join(title.casefold().split())


def duplicate_title_year(samples: Sequence[Sample]) -> list[tuple[Sample, Sample]]:
    """``(kept, duplicate)`` pairs of items with the same normalised title and the same year."""
    first: dict[tuple[str, int | None], Sample] = {}
    out = []
    for s in samples:
        if not s.title:
            continue
        key = (_norm_title(s.title), s.year)
        if key in first:
            out.append((first[key], s))
        else:
            first[key] = s
    return out


def duplicate_images(samples: Sequence[Sample], checks: dict[str, ImageCheck]) -> list[tuple[Sample, Sample]]:
    """``(kept, duplicate)`` pairs whose image files are byte-identical."""
    first: dict[str, Sample] = {}
    out = []
    for s in samples:
        h = checks.get(s.id, ImageCheck(None)).sha1
        if h is None or checks[s.id].reason == "empty file (0 bytes)":
            continue
        if h in first:
            out.append((first[h], s))
        else:
            first[h] = s
    return out


@dataclass
class InspectReport:
    """Everything :func:`inspect_manifest` found; ``to_json()`` for machine output."""

    source: str
    format: str
    rows: int
    genre_counts: dict[str, int]
    genre_shares: dict[str, float]
    labels_per_item: dict[int, int]
    top_pairs: list[tuple[str, str, int]]
    year_range: tuple[int, int] | None
    without_year: int
    with_plot: int
    with_image: int
    image_urls: int
    duplicate_ids: list[str]
    duplicate_title_year: list[tuple[str, str]]
    duplicate_images: list[tuple[str, str]]
    image_problems: dict[str, str]  # id -> reason (missing, unreadable ...)
    image_problem_counts: dict[str, int]
    images_checked: bool
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        d["labels_per_item"] = {str(k): v for k, v in self.labels_per_item.items()}
        d["top_pairs"] = [{"a": a, "b": b, "count": c} for a, b, c in self.top_pairs]
        return d


def _problem_kind(reason: str) -> str:
    """Group reasons for the counts table: text in parentheses varies per file."""
    return reason.split(" (")[0]


def inspect_manifest(
    manifest: Manifest,
    check_images: bool = True,
    deep: bool = False,
    top_pairs: int = 10,
    progress: ProgressFn | None = None,
) -> InspectReport:
    """Describe a manifest: the numbers to look at before extracting anything.

    Args:
        manifest: what to describe.
        check_images: open every local image (header only, fast); URLs count as not downloaded.
        deep: fully decode every image (finds truncated files; slower).
        top_pairs: how many of the most frequent co-occurring genre pairs to list.
        progress: called as ``progress("images", done, total)``.

    Example:
        >>> r = inspect_manifest(read_manifest("labels.csv"))  # doctest: +SKIP
        >>> r.genre_counts["Drama"]
        3433
    """
    samples = manifest.samples
    n = len(samples)
    counts = dict(sorted(manifest.genre_counts().items(), key=lambda kv: (-kv[1], kv[0])))
    pairs: Counter[tuple[str, str]] = Counter()
    for s in samples:
        pairs.update(itertools.combinations(sorted(s.genres), 2))
    years = [s.year for s in samples if s.year is not None]
    local = [s for s in samples if s.image and not s.image.startswith(("http://", "https://"))]
    checks = scan_images(local, deep=deep, progress=progress) if check_images else {}
    problems = {i: c.reason for i, c in checks.items() if c.reason}
    if check_images:
        problems.update({s.id: "no image" for s in samples if not s.image})
    return InspectReport(
        source=manifest.source,
        format=manifest.format,
        rows=n,
        genre_counts=counts,
        genre_shares={g: c / n for g, c in counts.items()} if n else {},
        labels_per_item=dict(sorted(Counter(len(s.genres) for s in samples).items())),
        top_pairs=[(a, b, c) for (a, b), c in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:top_pairs]],
        year_range=(min(years), max(years)) if years else None,
        without_year=n - len(years),
        with_plot=sum(1 for s in samples if s.plot),
        with_image=sum(1 for s in samples if s.image),
        image_urls=sum(1 for s in samples if s.image and s.image.startswith(("http://", "https://"))),
        duplicate_ids=[s.id for _, s in manifest.duplicates],
        duplicate_title_year=[(a.id, b.id) for a, b in duplicate_title_year(samples)],
        duplicate_images=[(a.id, b.id) for a, b in duplicate_images(local, checks)],
        image_problems=problems,
        image_problem_counts=dict(Counter(_problem_kind(r) for r in problems.values()).most_common()),
        images_checked=check_images,
        warnings=list(manifest.warnings),
    )
