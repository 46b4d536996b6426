"""Poster download against a loopback HTTP server that misbehaves in every usual way."""

from __future__ import annotations

import csv
import io
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
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
    times: dict = {}
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
            self.times.setdefault(self.path, []).append(time.monotonic())
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
        elif kind == "trickle":  # every read succeeds within the timeout; the whole takes 2 s
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            step = max(1, len(body) // 40)
            try:
                for k in range(0, len(body), step):
                    self.wfile.write(body[k : k + step])
                    self.wfile.flush()
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif kind == "retryafter":  # asks for 1 s, then serves
            if n == 1:
                self.send_response(503)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._send(200, body)
        elif kind == "retrylong":
            self.send_response(429)
            self.send_header("Retry-After", "3600")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind in ("ftp", "file", "loop", "chain"):
            target = {
                "ftp": "ftp://127.0.0.1:9/poster.jpg",
                "file": "file:///etc/passwd",
                "loop": self.path,
                "chain": f"{self.path}/{n}",  # a new URL every time, never an image
            }[kind]
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture()
def server():
    _Handler.hits = Counter()
    _Handler.times = {}
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


def test_deadline_retry_after_and_redirect_checks(tmp_path, server):
    base, hits = server
    kinds = ["retryafter", "retrylong", "ftp", "file", "loop", "chain", "ok"]
    body = "id,genres,image\n" + "".join(f"{k},Drama,{base}/{k}/x\n" for k in kinds)
    m = read_manifest(write_csv(tmp_path, body, "urls.csv"))
    cfg = DownloadConfig(workers=8, timeout=0.3, deadline=5, retries=2, backoff=0.01, max_retry_after=1.5)
    local, report = download_posters(m, tmp_path / "out", cfg)
    reasons = {i: r for i, _, r in report.failures}
    assert set(local.ids) == {"ok", "retryafter"}
    # Retry-After honoured: the second attempt came after the second the server asked for.
    t = _Handler.times["/retryafter/x"]
    assert len(t) == 2 and t[1] - t[0] >= 0.95
    assert reasons["retrylong"] == "HTTP 429, Retry-After 3600 s is over the 1.5 s cap" and hits["/retrylong/x"] == 1
    assert reasons["ftp"] == "redirect to a non-HTTP(S) URL refused (ftp://127.0.0.1:9/poster.jpg)"
    assert reasons["file"] == "redirect to a non-HTTP(S) URL refused (file:///etc/passwd)"
    assert reasons["loop"].startswith("redirect loop (") and hits["/loop/x"] == 1
    assert reasons["chain"] == "too many redirects (more than 5)"


def test_a_trickling_server_is_cut_at_the_deadline(tmp_path, server):
    base, _ = server
    m = read_manifest(write_csv(tmp_path, f"id,genres,image\nt,Drama,{base}/trickle/t\n", "one.csv"))
    cfg = DownloadConfig(workers=1, timeout=0.3, deadline=0.7, retries=0, backoff=0.01)
    t0 = time.monotonic()
    _, report = download_posters(m, tmp_path / "out", cfg)
    assert time.monotonic() - t0 < 1.5  # the body takes 2 s to arrive
    assert [r for _, _, r in report.failures] == ["deadline of 0.7 s passed (after 1 attempts)"]


def test_ids_too_long_or_starting_with_a_dot(tmp_path, server):
    base, _ = server
    ids = ["a" * 300, ".hidden", "..", "...x", "é" * 200, "tt0114709"]
    body = "id,genres,image\n" + "".join(f"{i},Drama,{base}/ok/{k}\n" for k, i in enumerate(ids))
    m = read_manifest(write_csv(tmp_path, body, "urls.csv"))
    local, report = download_posters(m, tmp_path / "out", CONFIG)
    assert report.failures == [] and local.ids == ids
    names = [Path(s.image).name for s in local.samples]
    assert len(set(names)) == len(ids)
    assert all(not n.startswith(".") and len(n.encode()) <= 120 for n in names)
    assert names[-1] == "tt0114709.jpg"
    assert read_manifest(report.manifest_path).ids == ids
    _, again = download_posters(m, tmp_path / "out", CONFIG)  # resumes: the hashed names are stable
    assert again.skipped_existing == len(ids) and again.downloaded == 0


def test_download_never_overwrites_its_input_manifest(tmp_path, server):
    base, _ = server
    data = tmp_path / "data"
    labels = write_csv(
        data,
        "id,genres,image,title,plot\n"
        f"a,Drama,{base}/ok/a,Alpha,A plot.\n"
        f"b,Comedy|Romance,{base}/404/b,Beta,The plot that must survive.\n",
        "labels.csv",
    )
    before = labels.read_bytes()
    local, report = download_posters(read_manifest(labels), data, CONFIG)
    assert labels.read_bytes() == before
    assert report.manifest_path == data / "labels.downloaded.csv"
    assert read_manifest(report.manifest_path).ids == ["a"] == local.ids

    from typer.testing import CliRunner

    from genrekit_cli.main import app

    res = CliRunner().invoke(app, ["data", "download", str(labels), "--out", str(data), "--timeout", "0.3",
                                   "--retries", "0", "--backoff", "0", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{"):])
    assert out["manifest"] == str(data / "labels.downloaded.csv") and labels.read_bytes() == before


def test_a_planted_link_cannot_redirect_a_download(tmp_path, server):
    base, _ = server
    m = read_manifest(write_csv(tmp_path, f"id,genres,image\na,Drama,{base}/ok/a\n", "one.csv"))
    images = tmp_path / "out" / "images"
    images.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, images / ".a.part")  # the part file name of the old downloader
    os.symlink(victim, images / "a.jpg")  # and the final name
    _, report = download_posters(m, tmp_path / "out", CONFIG)
    assert report.downloaded == 1 and victim.read_text() == "precious"
    assert not (images / "a.jpg").is_symlink()
