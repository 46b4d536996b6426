"""Fetch posters that a manifest has only as URLs: bounded, retried, resumable, validated.

Standard library only. Each image lands in ``OUT/images/<name>.<ext>`` (the id itself when it is a
short plain file name, else a hash-suffixed name; the id stays in the manifest) after it decodes
with the checks of :func:`genrekit.data.images.load_image`; it is written with
:func:`genrekit.atomic.atomic_write`, so a link planted in ``images/`` cannot redirect it. Files
already there and valid are not fetched again, so an interrupted download resumes. 5xx answers,
429, timeouts, dropped connections and truncated bodies are retried with exponential backoff (or
after the server's ``Retry-After``, within a cap); 4xx answers and non-image content are not (they
would fail again). Every URL has a total deadline, retries and redirects included. The result is
a manifest of local paths (``OUT/labels.csv``, or ``OUT/labels.downloaded.csv`` when
``OUT/labels.csv`` is the input manifest itself) and ``OUT/failures.csv``.
"""

from __future__ import annotations

import csv
import email.utils
import hashlib
import http.client
import logging
import re
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from genrekit import __version__
from genrekit.atomic import atomic_open, atomic_write, refuse_overwrite
from genrekit.data.images import decode_image_bytes, load_image
from genrekit.data.manifest import Manifest, Sample, write_manifest
from genrekit.errors import ConfigError, UnreadableImageError
from genrekit.progress import ProgressFn, null_progress

log = logging.getLogger(__name__)

_EXT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_REDIRECTS = (301, 302, 303, 307, 308)
MANIFEST_NAME = "labels.csv"
# Used instead when OUT/labels.csv is the manifest being downloaded (the shared data's layout):
# failed rows would otherwise lose their genres, titles and plots.
OTHER_MANIFEST_NAME = "labels.downloaded.csv"
# File names longer than this get a hash (file systems stop at 255 bytes, extension included).
MAX_NAME = 100


@dataclass(frozen=True)
class DownloadConfig:
    """How to fetch (each field is a ``genrekit data download`` flag).

    Attributes:
        workers: concurrent requests; poster hosts throttle or ban aggressive clients.
        timeout: seconds for the connection and for each read.
        deadline: total seconds per URL, retries and redirects included: a server that trickles
            a byte at a time within ``timeout`` is cut off here.
        retries: extra attempts after a retryable failure (5xx, 429, timeout, truncated body).
        backoff: seconds before the first retry, doubled for each further one.
        max_retry_after: the longest ``Retry-After`` honoured; a server asking for more is a failure.
        max_redirects: redirects followed per URL (to http(s) URLs only).
        max_bytes: refuse larger bodies (a poster is well under this).
        user_agent: sent with every request; some hosts refuse Python's default.
    """

    workers: int = 8
    timeout: float = 20.0
    deadline: float = 120.0
    retries: int = 3
    backoff: float = 1.0
    max_retry_after: float = 60.0
    max_redirects: int = 5
    max_bytes: int = 20 * 2**20
    user_agent: str = f"genrekit/{__version__} (poster download)"

    def __post_init__(self) -> None:
        if (self.workers < 1 or self.retries < 0 or self.timeout <= 0 or self.backoff < 0 or self.deadline <= 0
                or self.max_retry_after < 0 or self.max_redirects < 0):
            raise ConfigError(
                f"download options workers={self.workers}, retries={self.retries}, timeout={self.timeout}, "
                f"deadline={self.deadline}, backoff={self.backoff}, max_retry_after={self.max_retry_after}, "
                f"max_redirects={self.max_redirects}: need workers >= 1, retries >= 0, timeout > 0, deadline > 0, "
                "backoff >= 0, max_retry_after >= 0, max_redirects >= 0"
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
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _Permanent(Exception):
    pass


def safe_name(sample_id: str) -> str:
    """A file name for an id: the id itself when it is a short plain name not starting with a dot,
    else its plain characters (cut short) plus a hash of the whole id, so two ids cannot collide."""
    name = _SAFE.sub("_", sample_id)
    if name != sample_id or name.startswith(".") or not name or len(name) > MAX_NAME:
        stem = name.lstrip(".")[:64] or "id"
        name = f"{stem}-{hashlib.sha256(sample_id.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"
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


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date); ``None`` if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _cut(sock: socket.socket) -> None:
    """The deadline watchdog: shutting the socket down wakes a read blocked in another thread."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _DeadlinePassed(Exception):
    pass


def _get(url: str, config: DownloadConfig, deadline: float) -> tuple[int, str | None, bytes]:
    """One GET: ``(status, Location, b"")`` for a redirect, ``(200, None, body)`` for an image.

    Hand-written over http.client rather than urllib because urllib has no total deadline (its
    timeout is per socket read) and follows redirects itself, to ftp: URLs included.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise _Permanent(f"not an http(s) URL ({url[:100]})")
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _DeadlinePassed
    try:
        port = parts.port
    except ValueError:
        raise _Permanent(f"bad port in URL ({url[:100]})") from None
    timeout = min(config.timeout, remaining)
    if scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
    watchdog: threading.Timer | None = None
    try:
        conn.connect()
        # The socket itself, not conn.sock: http.client hands it to the response and clears conn.sock.
        watchdog = threading.Timer(remaining, _cut, (conn.sock,))
        watchdog.daemon = True
        watchdog.start()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers={"User-Agent": config.user_agent, "Accept": "image/*"})
        resp = conn.getresponse()
        if resp.status in _REDIRECTS:
            return resp.status, resp.getheader("Location"), b""
        if resp.status >= 400:
            if resp.status >= 500 or resp.status == 429:
                raise _Retryable(f"HTTP {resp.status}", _retry_after(resp.getheader("Retry-After")))
            raise _Permanent(f"HTTP {resp.status}")
        if resp.status != 200:
            raise _Permanent(f"HTTP {resp.status} (expected 200)")
        ctype = resp.getheader("Content-Type", "") or ""
        if ctype and not ctype.startswith(("image/", "application/octet-stream", "binary/")):
            raise _Permanent(f"not an image (Content-Type {ctype.split(';')[0]})")
        expected = resp.getheader("Content-Length")
        chunks: list[bytes] = []
        got = 0
        while chunk := resp.read(min(1 << 16, config.max_bytes + 1 - got) or 1):
            chunks.append(chunk)
            got += len(chunk)
            if got > config.max_bytes:
                raise _Permanent(f"larger than {config.max_bytes} bytes")
            if time.monotonic() >= deadline:
                raise _DeadlinePassed
    except (_Retryable, _Permanent, _DeadlinePassed):
        raise
    except ssl.SSLError as e:
        raise _Permanent(f"TLS error ({e.reason or e})") from None
    except socket.gaierror as e:
        raise _Permanent(f"cannot connect ({e.strerror or e})") from None
    except (TimeoutError, socket.timeout):
        if time.monotonic() >= deadline:
            raise _DeadlinePassed from None
        raise _Retryable(f"timed out after {config.timeout:g} s") from None
    except http.client.IncompleteRead as e:
        raise _Retryable(f"truncated body ({len(e.partial)} bytes received)") from None
    except (OSError, http.client.HTTPException) as e:
        if time.monotonic() >= deadline:
            raise _DeadlinePassed from None
        raise _Retryable(f"connection failed ({type(e).__name__})") from None
    finally:
        if watchdog is not None:
            watchdog.cancel()
        conn.close()
    if time.monotonic() >= deadline:
        raise _DeadlinePassed
    body = b"".join(chunks)
    if expected is not None and expected.isdigit() and len(body) < int(expected):
        raise _Retryable(f"truncated body ({len(body)} of {expected} bytes)")
    return 200, None, body


def _fetch(url: str, config: DownloadConfig, deadline: float) -> bytes:
    """GET ``url``, following redirects to http(s) URLs only and naming a loop as such."""
    chain = [url]
    for _ in range(config.max_redirects + 1):
        status, location, body = _get(url, config, deadline)
        if status not in _REDIRECTS:
            return body
        if not location:
            raise _Permanent(f"HTTP {status} without a Location header")
        nxt = urljoin(url, location.strip())
        if urlsplit(nxt).scheme.lower() not in ("http", "https"):
            raise _Permanent(f"redirect to a non-HTTP(S) URL refused ({nxt[:100]})")
        if nxt in chain:
            loop = chain[chain.index(nxt):] + [nxt]
            raise _Permanent(f"redirect loop ({' -> '.join(u[:80] for u in loop[-4:])})")
        chain.append(nxt)
        url = nxt
    raise _Permanent(f"too many redirects (more than {config.max_redirects})")


def _save(body: bytes, images: Path, stem: str) -> Path:
    try:
        _, fmt = decode_image_bytes(body)
    except UnreadableImageError as e:
        raise _Permanent(str(e)) from None
    # The file's own format names the extension; written atomically, never through a link.
    return atomic_write(images / f"{stem}{_EXT.get(fmt or '', '.img')}", body)


def _download_one(url: str, images: Path, stem: str, config: DownloadConfig) -> Path:
    deadline = time.monotonic() + config.deadline
    attempt = 0
    while True:
        try:
            return _save(_fetch(url, config, deadline), images, stem)
        except _DeadlinePassed:
            raise _Permanent(f"deadline of {config.deadline:g} s passed (after {attempt + 1} attempts)") from None
        except _Retryable as e:
            if attempt >= config.retries:
                raise _Permanent(f"{e} (after {attempt + 1} attempts)") from None
            wait = config.backoff * 2**attempt
            if e.retry_after is not None:
                if e.retry_after > config.max_retry_after:
                    raise _Permanent(
                        f"{e}, Retry-After {e.retry_after:g} s is over the {config.max_retry_after:g} s cap"
                    ) from None
                wait = max(wait, e.retry_after)
            if time.monotonic() + wait >= deadline:
                raise _Permanent(
                    f"{e}; the next attempt (in {wait:g} s) would pass the {config.deadline:g} s deadline"
                ) from None
            time.sleep(wait)
            attempt += 1


def manifest_path_for(out_dir: str | Path, source: str | Path | None) -> Path:
    """Where :func:`download_posters` writes its manifest: ``labels.csv``, unless that is ``source``
    (the manifest being downloaded), then ``labels.downloaded.csv``."""
    out = Path(out_dir)
    path = out / MANIFEST_NAME
    if source and _same_path(path, Path(source)):
        path = out / OTHER_MANIFEST_NAME
        refuse_overwrite(path, {"the input manifest": source}, "--out")
    return path


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def download_posters(
    manifest: Manifest,
    out_dir: str | Path,
    config: DownloadConfig | None = None,
    progress: ProgressFn | None = None,
) -> tuple[Manifest, DownloadReport]:
    """Download every URL image of ``manifest`` into ``out_dir`` and write a local manifest.

    Args:
        manifest: items whose ``image`` may be an http(s) URL (others are kept as they are).
        out_dir: gets ``images/``, ``labels.csv`` (local paths, successful items only; named
            ``labels.downloaded.csv`` when ``labels.csv`` is ``manifest`` itself) and
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
    report = DownloadReport(manifest_path_for(out, manifest.source), out / "failures.csv")
    refuse_overwrite(report.failures_path, {"the input manifest": manifest.source or None}, "--out")
    if report.manifest_path.name != MANIFEST_NAME:
        log.warning("%s is the input manifest; writing the local manifest to %s instead",
                    out / MANIFEST_NAME, report.manifest_path)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
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
    with atomic_open(report.failures_path, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "url", "reason"])
        w.writerows(report.failures)
    if report.failures:
        log.warning("%d of %d posters could not be downloaded; see %s", len(report.failures), len(manifest), report.failures_path)
    return local, report
