"""Poster download against a loopback HTTP server that misbehaves in every usual way."""

from __future__ import annotations

import csv
import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from data_fixtures import jpeg_bytes, write_csv
from genrekit.data.download import DownloadConfig, download_posters, safe_name
from genrekit.data.manifest import read_manifest
from genrekit.errors import ConfigError

PNG = io.BytesIO()
Image.new("RGB", (12, 18), (0, 90, 200)).save(PNG, format="PNG")

# kind -> how many URLs of that kind the manifest gets (113 in all)
KINDS = {
    "ok": 60, "png": 5, "slow": 5, "hang": 2, "404": 8, "500": 5, "flaky": 8,
    "trunc": 4, "trunconce": 4, "redirect": 6, "html": 4, "garbage": 2,
}
# kinds that must end up on disk
GOOD = {"ok", "png", "slow", "flaky", "trunconce", "redirect"}


class _Handler(BaseHTTPRequestHandler):
    hits: Counter = Counter()
    lock = threading.Lock()

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, code, body=b"", ctype="image/jpeg", length=None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout): expected
            pass

    def do_GET(self):
        with self.lock:
            self.hits[self.path] += 1
            n = self.hits[self.path]
        kind = self.path.split("/")[1]
        body = jpeg_bytes((hash(self.path) % 256, 100, 50), (30, 45))
        if kind in ("ok", "slow"):
            if kind == "slow":
                time.sleep(0.1)
            self._send(200, body)
        elif kind == "png":
            self._send(200, PNG.getvalue(), "image/png")
        elif kind == "hang":
            time.sleep(0.6)
            self._send(200, body)
        elif kind == "404":
            self._send(404, b"no such poster", "text/plain")
        elif kind == "500" or (kind == "flaky" and n == 1):
            self._send(500 if kind == "500" else 503, b"oops", "text/plain")
        elif kind == "flaky":
            self._send(200, body)
        elif kind == "trunc" or (kind == "trunconce" and n == 1):
            self.close_connection = True
            self._send(200, body[: len(body) // 2], length=len(body))
        elif kind == "trunconce":
            self._send(200, body)
        elif kind == "redirect":
            self.send_response(302)
            self.send_header("Location", "/ok/from" + self.path.replace("/", "_"))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "html":
            self._send(200, b"<html>poster moved</html>", "text/html; charset=utf-8")
        elif kind == "garbage":
            self._send(200, b"\x00\x01 definitely not an image" * 10, "application/octet-stream")


@pytest.fixture()
def server():
    _Handler.hits = Counter()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _Handler.hits
    srv.shutdown()
    srv.server_close()


def _manifest(tmp_path, base):
    lines = ["id,genres,image"]
    for kind, count in KINDS.items():
        lines += [f"{kind}/{k},Drama,{base}/{kind}/{k}" for k in range(count)]
    lines.append(f"local,Drama,{tmp_path / 'local.jpg'}")
    (tmp_path / "local.jpg").write_bytes(jpeg_bytes())
    lines.append("nourl,Drama,")
    return read_manifest(write_csv(tmp_path, "\n".join(lines) + "\n", "urls.csv"))


CONFIG = DownloadConfig(workers=8, timeout=0.3, retries=2, backoff=0.01)


def test_download_failures_retries_resume(tmp_path, server):
    base, hits = server
    m = _manifest(tmp_path, base)
    assert sum(1 for s in m.samples if s.image and s.image.startswith("http")) == 113
    out = tmp_path / "out"
    local, report = download_posters(m, out, CONFIG)

    kind_of = {s.id: s.id.split("/")[0] for s in m.samples}
    good = {s.id for s in m.samples if kind_of[s.id] in GOOD}
    assert report.downloaded == len(good) == 88 and report.local == 1
    assert set(local.ids) == good | {"local"}
    for s in local.samples:
        with Image.open(s.image) as img:
            img.verify()
    assert local.samples[0].image.endswith(f"{safe_name('ok/0')}.jpg")
    assert any(s.image.endswith(".png") for s in local.samples)

    reasons = {i: r for i, _, r in report.failures}
    assert reasons["404/0"] == "HTTP 404" and reasons["nourl"] == "no image URL"
    assert reasons["500/0"] == "HTTP 500 (after 3 attempts)"
    assert reasons["trunc/0"].startswith("truncated body") and "after 3 attempts" in reasons["trunc/0"]
    assert reasons["hang/0"].startswith("timed out")
    assert reasons["html/0"] == "not an image (Content-Type text/html)"
    assert reasons["garbage/0"].startswith("not an image")
    # Retries only where they can help: 404s once, 500s 1 + retries times, flaky ones twice.
    assert hits["/404/0"] == 1 and hits["/500/0"] == 3 and hits["/flaky/0"] == 2 and hits["/html/0"] == 1

    rows = list(csv.DictReader(open(report.failures_path, encoding="utf-8")))
    assert len(rows) == len(report.failures) == 113 - 88 + 1
    assert read_manifest(report.manifest_path).ids == local.ids

    before = hits.copy()
    local2, report2 = download_posters(m, out, CONFIG)
    assert report2.downloaded == 0 and report2.skipped_existing == 88
    assert local2.ids == local.ids
    refetched = [p for p in hits if hits[p] != before[p] and p.split("/")[1] in GOOD | {"ok"}]
    assert refetched == []


def test_a_broken_leftover_file_is_fetched_again(tmp_path, server):
    base, hits = server
    m = read_manifest(write_csv(tmp_path, f"id,genres,image\na,Drama,{base}/ok/a\n", "one.csv"))
    (tmp_path / "out" / "images").mkdir(parents=True)
    (tmp_path / "out" / "images" / "a.jpg").write_bytes(b"half a jpeg")
    _, report = download_posters(m, tmp_path / "out", CONFIG)
    assert report.downloaded == 1 and hits["/ok/a"] == 1


def test_safe_names_do_not_collide():
    assert safe_name("tt0114709") == "tt0114709"
    assert safe_name("a/b") != safe_name("a_b") and "/" not in safe_name("a/b")
    assert safe_name("..") not in ("..", "")


def test_bad_config():
    with pytest.raises(ConfigError, match="workers >= 1"):
        DownloadConfig(workers=0)
