"""Fetch posters that a manifest has only as URLs: bounded, retried, resumable, validated.

Standard library only. Each image lands in ``OUT/images/<id>.<ext>`` after it decodes with
:func:`genrekit.data.images.load_image`; files already there and valid are not fetched again, so
an interrupted download resumes. 5xx answers, timeouts, dropped connections and truncated bodies
are retried with exponential backoff; 4xx answers and non-image content are not (they would fail
again). The result is a manifest of local paths (``OUT/labels.csv``) and ``OUT/failures.csv``.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from genrekit import __version__
from genrekit.data.images import load_image
from genrekit.data.manifest import Manifest, Sample, write_manifest
from genrekit.errors import ConfigError, UnreadableImageError
from genrekit.progress import ProgressFn, null_progress

log = logging.getLogger(__name__)

_EXT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class DownloadConfig:
    """How to fetch (each field is a ``genrekit data download`` flag).

    Attributes:
        workers: concurrent requests; poster hosts throttle or ban aggressive clients.
        timeout: seconds per request (connect and each read).
        retries: extra attempts after a retryable failure (5xx, timeout, truncated body).
        backoff: seconds before the first retry, doubled for each further one.
        max_bytes: refuse larger bodies (a poster is well under this).
        user_agent: sent with every request; some hosts refuse Python's default.
    """

    workers: int = 8
    timeout: float = 20.0
    retries: int = 3
    backoff: float = 1.0
    max_bytes: int = 20 * 2**20
    user_agent: str = f"genrekit/{__version__} (poster download)"

    def __post_init__(self) -> None:
        if self.workers < 1 or self.retries < 0 or self.timeout <= 0 or self.backoff < 0:
            raise ConfigError(
                f"download options workers={self.workers}, retries={self.retries}, timeout={self.timeout}, "
                f"backoff={self.backoff}: need workers >= 1, retries >= 0, timeout > 0, backoff >= 0"
            )


@dataclass
class DownloadReport:
    """Counts per outcome, the failures with reasons, and where the local manifest is."""

    manifest_path: Path
    failures_path: Path
    downloaded: int = 0
    skipped_existing: int = 0
    local: int = 0  # items whose image was already a local path
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # id, url, reason

    def to_json(self) -> dict:
        return {
            "manifest": str(self.manifest_path),
            "failures_file": str(self.failures_path),
            "downloaded": self.downloaded,
            "skipped_existing": self.skipped_existing,
            "local": self.local,
            "failed": len(self.failures),
            "failures": [{"id": i, "url": u, "reason": r} for i, u, r in self.failures],
        }


class _Retryable(Exception):
    pass


class _Permanent(Exception):
    pass


def safe_name(sample_id: str) -> str:
    """A file name for an id; ids that needed changing get a hash suffix so two cannot collide."""
    name = _SAFE.sub("_", sample_id)
    if name != sample_id or name in ("", ".", ".."):
        name = f"{name}-{hashlib.sha1(sample_id.encode()).hexdigest()[:8]}"
    return name


def _existing(images: Path, stem: str) -> Path | None:
    for ext in (*dict.fromkeys(_EXT.values()), ".img"):
        p = images / f"{stem}{ext}"
        if p.is_file():
            try:
                load_image(str(p))
                return p
            except UnreadableImageError:
                return None  # a broken leftover: fetch again and overwrite
    return None


def _fetch(url: str, config: DownloadConfig) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": config.user_agent, "Accept": "image/*"})
    try:
        with urllib.request.urlopen(req, timeout=config.timeout) as resp:
            ctype = resp.headers.get("Content-Type", "")
            if ctype and not ctype.startswith(("image/", "application/octet-stream", "binary/")):
                raise _Permanent(f"not an image (Content-Type {ctype.split(';')[0]})")
            expected = resp.headers.get("Content-Length")
            body = resp.read(config.max_bytes + 1)
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code == 429:
            raise _Retryable(f"HTTP {e.code}") from None
        raise _Permanent(f"HTTP {e.code}") from None
    except http.client.IncompleteRead as e:
        raise _Retryable(f"truncated body ({len(e.partial)} bytes received)") from None
    except (TimeoutError, socket.timeout):
        raise _Retryable(f"timed out after {config.timeout:g} s") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (TimeoutError, socket.timeout)):
            raise _Retryable(f"timed out after {config.timeout:g} s") from None
        if isinstance(e.reason, ConnectionError):
            raise _Retryable(f"connection failed ({e.reason})") from None
        raise _Permanent(f"cannot connect ({e.reason})") from None
    except (ConnectionError, http.client.HTTPException) as e:
        raise _Retryable(f"connection failed ({type(e).__name__})") from None
    if len(body) > config.max_bytes:
        raise _Permanent(f"larger than {config.max_bytes} bytes")
    if expected is not None and expected.isdigit() and len(body) < int(expected):
        raise _Retryable(f"truncated body ({len(body)} of {expected} bytes)")
    return body


def _save(body: bytes, images: Path, stem: str) -> Path:
    tmp = images / f".{stem}.part"
    tmp.write_bytes(body)
    try:
        load_image(str(tmp))
        with Image.open(tmp) as img:  # the file's own format names the extension
            ext = _EXT.get(img.format or "", ".img")
    except UnreadableImageError as e:
        tmp.unlink(missing_ok=True)
        raise _Permanent(str(e)) from None
    final = images / f"{stem}{ext}"
    os.replace(tmp, final)
    return final


def _download_one(url: str, images: Path, stem: str, config: DownloadConfig) -> Path:
    attempt = 0
    while True:
        try:
            return _save(_fetch(url, config), images, stem)
        except _Retryable as e:
            if attempt >= config.retries:
                raise _Permanent(f"{e} (after {attempt + 1} attempts)") from None
            time.sleep(config.backoff * 2**attempt)
            attempt += 1


def download_posters(
    manifest: Manifest,
    out_dir: str | Path,
    config: DownloadConfig | None = None,
    progress: ProgressFn | None = None,
) -> tuple[Manifest, DownloadReport]:
    """Download every URL image of ``manifest`` into ``out_dir`` and write a local manifest.

    Args:
        manifest: items whose ``image`` may be an http(s) URL (others are kept as they are).
        out_dir: gets ``images/``, ``labels.csv`` (local paths, successful items only) and
            ``failures.csv`` (``id,url,reason``).
        config: concurrency, timeouts, retries.
        progress: called as ``progress("download", done, total)``.

    Returns:
        The manifest of local paths and a :class:`DownloadReport`.

    Example:
        >>> local, report = download_posters(read_manifest("MovieGenre.csv"), "posters/")  # doctest: +SKIP
        >>> report.downloaded, len(report.failures)
        (39850, 258)
    """
    config = config or DownloadConfig()
    progress = progress or null_progress
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    report = DownloadReport(out / "labels.csv", out / "failures.csv")
    paths: dict[str, str] = {}
    todo: list[Sample] = []
    for s in manifest.samples:
        if not s.image:
            report.failures.append((s.id, "", "no image URL"))
        elif not s.image.startswith(("http://", "https://")):
            paths[s.id] = s.image
            report.local += 1
        elif (p := _existing(images, safe_name(s.id))) is not None:
            paths[s.id] = str(p.resolve())
            report.skipped_existing += 1
        else:
            todo.append(s)
    total = len(todo)
    log.info("%d to download, %d already on disk, %d local", total, report.skipped_existing, report.local)
    progress("download", 0, total)
    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        futures = {pool.submit(_download_one, s.image, images, safe_name(s.id), config): s for s in todo}
        for done, fut in enumerate(as_completed(futures), 1):
            s = futures[fut]
            try:
                paths[s.id] = str(fut.result().resolve())
                report.downloaded += 1
            except _Permanent as e:
                report.failures.append((s.id, s.image or "", str(e)))
            progress("download", done, total)
    order = {s.id: k for k, s in enumerate(manifest.samples)}
    report.failures.sort(key=lambda f: order[f[0]])
    local = manifest.with_samples([replace(s, image=paths[s.id]) for s in manifest.samples if s.id in paths])
    local.source = str(report.manifest_path)
    write_manifest(local, report.manifest_path)
    with open(report.failures_path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "url", "reason"])
        w.writerows(report.failures)
    if report.failures:
        log.warning("%d of %d posters could not be downloaded; see %s", len(report.failures), len(manifest), report.failures_path)
    return local, report
