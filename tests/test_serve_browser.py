"""End to end in a real headless browser: `genrekit serve` on a demo run, a poster uploaded through the page.

Uses Debian's chromium through Playwright's Python API (the system binary, never a browser
download); skips with the reason when either is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from genrekit_cli.main import app as cli

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("GENREKIT_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip
runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str) -> None:
    res = runner.invoke(cli, list(args))
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not Path(CHROMIUM).is_file() and not shutil.which("chromium"):
        pytest.skip(f"no chromium at {CHROMIUM} or on PATH (Debian: apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright; no browser download needed)")
    httpx = pytest.importorskip("httpx")
    root = tmp_path_factory.mktemp("browser")
    _cli("data", "demo", "--out", str(root / "data"), "--n", "120")
    _cli("extract", "--backbone", "colorstats", "--data", str(root / "data" / "labels.csv"), "--out", str(root / "posters.h5"))
    _cli("heads", "--store", str(root / "posters.h5"), "--head", "logreg", "--head", "knn", "--out", str(root / "runs"), "--min-positives", "3", "--jobs", "1")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*sys.path, os.environ.get("PYTHONPATH", "")])}
    log = open(root / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from genrekit_cli.main import main; main()", "serve", "--run", str(root / "runs"), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # a cold start imports torch: slow on a busy machine
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"genrekit serve did not come up:\n{(root / 'serve.log').read_text()}")
            time.sleep(0.3)
        yield {"url": url, "root": root, "posters": sorted((root / "data" / "images").glob("*.jpg"))}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_upload_a_poster_in_chromium_shows_the_apis_top_genre(served, tmp_path):
    import httpx
    from playwright.sync_api import sync_playwright

    poster = served["posters"][0]
    api = httpx.post(f"{served['url']}/api/predict", files={"image": (poster.name, poster.read_bytes(), "image/jpeg")}, timeout=60).json()
    shot = Path(os.environ.get("GENREKIT_SCREENSHOT") or tmp_path / "serve.png")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium"), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(served["url"] + "/", timeout=60_000)
            page.wait_for_function("document.getElementById('run').textContent.includes('encoder')", timeout=60_000)
            page.set_input_files("#poster", str(poster))
            page.wait_for_selector("#top-genre", timeout=60_000)
            top = page.inner_text("#top-genre")
            rows = page.locator("#genres .row").count()
            predicted = page.locator("#genres .row.pred").count()
            page.wait_for_function("document.querySelectorAll('#maps figure img').length === 3 && "
                                   "[...document.querySelectorAll('#maps img')].every(i => i.complete && i.naturalWidth > 0)", timeout=120_000)
            maps = [h.get_attribute("data-genre") for h in page.locator("#maps figure").element_handles()]
            page.wait_for_function("document.querySelectorAll('#near figure img').length === 6 && "
                                   "[...document.querySelectorAll('#near img')].every(i => i.complete && i.naturalWidth > 0)", timeout=60_000)
            near = [h.get_attribute("data-id") for h in page.locator("#near figure").element_handles()]
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert top == api["genres"][0]["genre"]
    assert rows == len(api["genres"]) and predicted == len(api["predicted"])
    assert maps == [g["genre"] for g in api["genres"][:3]]  # the saliency maps of the top genres, in order
    similar = httpx.post(f"{served['url']}/api/similar?k=6", files={"image": (poster.name, poster.read_bytes(), "image/jpeg")}, timeout=60).json()
    assert near == [n["id"] for n in similar["neighbours"]]  # the nearest training posters, drawn from /api/poster
    assert all(u.startswith(served["url"]) or u.startswith(("blob:", "data:")) for u in requests), requests  # offline: nothing else fetched
    assert shot.stat().st_size > 10_000


def test_genres_show_while_another_explanation_runs(served, tmp_path):
    """A person drops a poster while someone else's saliency maps are being made: the page shows
    the genres without waiting for them (the explanation runs on, between its steps)."""
    import threading

    import httpx
    from liveserver import live_server
    from playwright.sync_api import sync_playwright
    from test_serve import SlowSaliency

    from genrekit.inference.loaded import load_run
    from genrekit_cli.apps.serve import ServeConfig, create_app

    cfg = ServeConfig(run=str(served["root"] / "runs"), max_explains=3)
    app = create_app(load_run(cfg.run), cfg)
    slow = SlowSaliency(steps=1500, pause=0.02).install(app.state.server)  # about 30 s of steps, each giving the model up to waiting predictions
    poster = served["posters"][1]
    with live_server(app) as port:
        url = f"http://127.0.0.1:{port}"

        def someone_else():
            with httpx.stream("POST", f"{url}/api/explain?stream=true", files={"image": (poster.name, poster.read_bytes(), "image/jpeg")}, timeout=120) as r:
                for _ in r.iter_lines():
                    pass

        other = threading.Thread(target=someone_else, daemon=True)
        other.start()
        assert slow.started.wait(30)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium"), args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 760})
                page.goto(url + "/", timeout=60_000)
                page.wait_for_function("document.getElementById('run').textContent.includes('encoder')", timeout=60_000)
                t = time.monotonic()
                page.set_input_files("#poster", str(served["posters"][2]))
                page.wait_for_selector("#top-genre", timeout=60_000)
                seconds = time.monotonic() - t
                running = slow.ended == []
                page.wait_for_function("document.getElementById('saliency-note').textContent.includes('Computing the maps:')", timeout=30_000)
                note = page.inner_text("#saliency-note")
            finally:
                browser.close()
        print(f"genres on the page {seconds:.2f} s after the drop, with an explanation running")
        assert running, "the genres waited for the explanation to finish"
        assert "predictions are not held up" in note and "%" in note  # the page's own maps show their progress
