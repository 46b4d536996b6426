"""`genrekit serve`'s API through FastAPI's TestClient: every endpoint, every bad input, concurrency."""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import make_collection
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient  # noqa: E402

from genrekit.extraction import ExtractConfig, extract  # noqa: E402
from genrekit.inference.loaded import load_run  # noqa: E402
from genrekit_cli.apps.serve import CONFIG_ENV, ServeConfig, app_from_env, create_app, is_loopback  # noqa: E402
from genrekit_cli.main import app as cli  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A poster run (colorstats) and a plot run (tiny text encoder) on 120 generated films."""
    root = tmp_path_factory.mktemp("serve")
    manifest = make_collection(root / "col", n=120)
    out = {"root": root, "images": sorted((root / "col" / "img").glob("*.jpg"))}
    for name, backbone, modality in (("posters", "colorstats", "image"), ("plots", "test-tiny-text", "text")):
        store = root / f"{name}.h5"
        extract(ExtractConfig(backbone=backbone, weights="none", data=str(manifest), out=str(store), device="cpu", modality=modality))
        knn = ["--head", "knn"] if modality == "image" else []  # the poster run's knn head is its similarity index
        res = runner.invoke(cli, ["heads", "--store", str(store), "--head", "logreg", *knn, "--out", str(root / name),
                                  "--min-positives", "3", "--jobs", "1"])  # fmt: skip
        assert res.exit_code == 0, res.output
        out[name] = root / name
    return out


LIMITS = dict(max_upload_mb=0.05, max_pixels=1_000_000, max_batch=4)


@pytest.fixture(scope="module")
def client(runs):
    cfg = ServeConfig(run=str(runs["posters"]), **LIMITS)
    with TestClient(create_app(load_run(cfg.run), cfg)) as c:
        yield c


def _file(path, name=None, ctype="image/jpeg"):
    return (name or os.path.basename(path), open(path, "rb").read(), ctype)


def _good(client, runs):
    r = client.post("/api/predict", files={"image": _file(runs["images"][0])})
    assert r.status_code == 200, r.text
    return r.json()


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels in a few dozen bytes (the shape of a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _jpeg(size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 20, 160)).save(buf, "JPEG", quality=50)
    return buf.getvalue()


# -- endpoints ------------------------------------------------------------------------------------------------
def test_healthz_info_docs_and_page(client):
    assert client.get("/healthz").json()["status"] == "ok"
    info = client.get("/api/info").json()
    assert info["inputs"] == ["image"] and info["run"]["encoder"] == "colorstats" and info["run"]["kind"] == "head"
    assert len(info["thresholds"]["values"]) == len(info["genres"]) and info["limits"]["max_batch"] == 4
    assert set(info["features"]) == {"saliency", "similar_posters"}
    assert "/api/predict/batch" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert 'type="file"' in html and 'id="genres"' in html and "Saliency maps" in html and "similar training posters" in html
    assert "src=\"http" not in html and "href=\"http" not in html and "@import" not in html  # nothing from the network


def test_predict_equals_the_cli_predict_json(client, runs):
    for path in runs["images"][:3]:
        got = client.post("/api/predict", files={"image": _file(path)}).json()
        res = runner.invoke(cli, ["predict", "--run", str(runs["posters"]), str(path), "--json"])
        assert res.exit_code == 0, res.output
        want = json.loads(res.output)["predictions"][0]
        assert got["probabilities"] == want["probabilities"] and got["predicted"] == want["predicted"]
        assert got["item"] == path.name
        assert [g["genre"] for g in got["genres"]] == list(want["probabilities"])  # sorted by probability
        assert [g["genre"] for g in got["genres"] if g["predicted"]] == got["predicted"]
        assert got["threshold_rule"]["rule"] and got["run"]["encoder"] == "colorstats" and "weights_sha256" in got["run"]
        assert got["timing_ms"]["total"] >= got["timing_ms"]["predict"] > 0


def test_explain_draws_the_top_genres_maps_over_the_poster(client, runs):
    import base64

    sal = client.get("/api/info").json()["features"]["saliency"]
    assert sal == {"available": True, "method": "occlusion", "endpoint": "/api/explain"}  # colorstats has no spatial map
    path = runs["images"][0]
    pred = client.post("/api/predict", files={"image": _file(path)}).json()
    r = client.post("/api/explain?top_k=2", files={"image": _file(path)})
    assert r.status_code == 200, r.text
    j = r.json()
    assert [g["genre"] for g in j["genres"]] == [g["genre"] for g in pred["genres"][:2]]
    for g, want in zip(j["genres"], pred["genres"]):
        assert abs(g["probability"] - want["probability"]) < 1e-5 and g["predicted"] == want["predicted"]
        png = base64.b64decode(g["overlay"].removeprefix("data:image/png;base64,"))
        assert Image.open(io.BytesIO(png)).size == Image.open(path).size  # small posters keep their size
    assert j["method"] == "occlusion" and "randomised" in j["sanity_check"] and "poster" not in j
    assert j["run"]["encoder"] == "colorstats" and j["timing_ms"]["explain"] > 0
    for query, files, status, msg in (("?top_k=0", {"image": _file(path)}, 422, "top_k"),
                                      ("", {"image": ("x.jpg", b"not a jpeg", "image/jpeg")}, 422, "not an image"),
                                      ("", None, 415, "content type")):  # fmt: skip
        r = client.post("/api/explain" + query, files=files)
        assert r.status_code == status and msg in r.json()["error"], r.text
    assert client.post("/api/explain", files={"image": _file(path)}).status_code == 200  # still serving


def test_similar_posters_come_from_the_runs_knn_index_with_their_files(client, runs):
    import csv

    sim = client.get("/api/info").json()["features"]["similar_posters"]
    assert sim["available"] and sim["posters_on_disk"] == sim["training_items"] > 0
    assert str(runs["root"]) not in client.get("/api/info").text  # the page shows no server paths
    split = {r["id"]: r["split"] for r in csv.DictReader(open(runs["posters"] / "split.csv"))}
    rows = {r["id"]: r for r in csv.DictReader(open(runs["root"] / "col" / "labels.csv"))}
    train_id = next(i for i in rows if split.get(i) == "train")
    path = runs["root"] / "col" / rows[train_id]["image"]
    r = client.post("/api/similar?k=4", files={"image": _file(path)})
    assert r.status_code == 200, r.text
    near = r.json()["neighbours"]
    assert len(near) == 4 and [n["similarity"] for n in near] == sorted((n["similarity"] for n in near), reverse=True)
    assert near[0]["id"] == train_id and near[0]["similarity"] > 0.999  # a training poster is its own nearest neighbour
    assert near[0]["title"] == rows[train_id]["title"] and set(near[0]["genres"]) <= set(rows[train_id]["genres"].split("|"))
    got = client.get(near[0]["poster"])
    assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
    sent, own = Image.open(io.BytesIO(got.content)), Image.open(path).convert("RGB")  # decoded and re-encoded, never the file itself
    assert sent.size == own.size and np.abs(np.asarray(sent, float).mean((0, 1)) - np.asarray(own, float).mean((0, 1))).max() < 3
    for bad in ("nope", "..%2F..%2Fetc%2Fpasswd", f"{train_id}%00", "a/b"):
        r = client.get(f"/api/poster/{bad}")
        assert r.status_code == 404 and r.json()["status"] == 404, bad  # a path never reaches the disk
    assert "knn index" in client.get("/api/poster/nope").json()["error"]
    test_id = next(i for i in rows if split.get(i) == "test")
    assert client.get(f"/api/poster/{test_id}").status_code == 404  # only the index's own training posters
    for query, status in (("?k=0", 422), ("?k=99", 422)):
        assert client.post("/api/similar" + query, files={"image": _file(path)}).status_code == status


def test_batch_predicts_each_file_and_names_the_unreadable_one(client, runs):
    files = [("image", _file(p)) for p in runs["images"][:3]] + [("image", ("broken.jpg", b"not a jpeg", "image/jpeg"))]
    r = client.post("/api/predict/batch", files=files)
    assert r.status_code == 200, r.text
    j = r.json()
    assert [p["item"] for p in j["predictions"]] == [p.name for p in runs["images"][:3]]
    assert j["failures"] == [{"item": "broken.jpg", "reason": "not an image (unrecognised format)"}]
    single = client.post("/api/predict", files={"image": _file(runs["images"][1])}).json()
    assert j["predictions"][1]["probabilities"] == single["probabilities"]
    too_many = [("image", _file(p)) for p in runs["images"][:5]]
    r = client.post("/api/predict/batch", files=too_many)
    assert r.status_code == 413 and "--max-batch" in r.json()["error"]
    r = client.post("/api/predict/batch", files=[("image", ("a.jpg", b"x", "image/jpeg"))])
    assert r.status_code == 422 and "not an image" in r.json()["error"]


def test_text_run_reads_its_field_and_equals_the_cli(runs):
    cfg = ServeConfig(run=str(runs["plots"]))
    with TestClient(create_app(load_run(cfg.run), cfg)) as c:
        info = c.get("/api/info").json()
        assert info["inputs"] == ["plot"] and info["features"]["saliency"]["reason"] == "this run reads plot, not posters"
        r = c.post("/api/explain", data={"plot": "x"})
        assert r.status_code == 422 and "no saliency maps for this run" in r.json()["error"]
        assert info["features"]["similar_posters"] == {"available": False, "reason": "this run reads plot, not posters"}
        plot = "A comedy and horror story number 7."
        got = c.post("/api/predict", data={"plot": plot})
        assert got.status_code == 200, got.text
        res = runner.invoke(cli, ["predict", "--run", str(runs["plots"]), "--text", plot, "--json"])
        assert got.json()["probabilities"] == json.loads(res.output)["predictions"][0]["probabilities"]
        r = c.post("/api/predict", files={"image": _file(runs["images"][0])})
        assert r.status_code == 422 and "unknown field 'image'" in r.json()["error"]
        r = c.post("/api/predict", files={"plot": ("plot.txt", b"a horror story", "text/plain")})
        assert r.status_code == 422 and "not file uploads" in r.json()["error"]
        assert c.post("/api/predict", data={"plot": plot}).json()["probabilities"] == got.json()["probabilities"]
        b = c.post("/api/predict/batch", data={"plot": ["one horror story", "a comedy"]}).json()
        assert [p["item"] for p in b["predictions"]] == ["one horror story", "a comedy"]


# -- bad input: a clear 4xx JSON error each time, and the next good request still succeeds ----------------
def _chunked(body: bytes):
    yield from (body[i : i + 8192] for i in range(0, len(body), 8192))


BAD = {
    "not an image": (lambda: {"files": {"image": ("x.jpg", b"GIF89a? no, plain text", "image/jpeg")}}, 422, "not an image"),
    "empty file": (lambda: {"files": {"image": ("x.jpg", b"", "image/jpeg")}}, 422, "empty file"),
    "truncated": (lambda: {"files": {"image": ("x.jpg", _jpeg((300, 450))[:600], "image/jpeg")}}, 422, "truncated"),
    "decompression bomb": (lambda: {"files": {"image": ("bomb.png", _png_header_only(40_000, 40_000), "image/png")}}, 413, "decompression bomb"),
    "too many pixels": (lambda: {"files": {"image": ("big.jpg", _jpeg((1500, 1000)), "image/jpeg")}}, 413, "too many pixels"),
    "over size": (lambda: {"files": {"image": ("huge.jpg", b"\xff" * 200_000, "image/jpeg")}}, 413, "--max-upload-mb"),
    "wrong request type": (lambda: {"json": {"image": "poster.jpg"}}, 415, "multipart/form-data"),
    "wrong part type": (lambda: {"files": {"image": ("x.txt", b"hello", "text/plain")}}, 415, "not an image type"),
    "missing field": (lambda: {"files": {}, "data": {}, "headers": {"content-type": "multipart/form-data; boundary=x"}, "content": b"--x--\r\n"}, 422, "missing field"),
    "unknown field": (lambda: {"files": {"poster": ("x.jpg", b"x", "image/jpeg")}}, 422, "unknown field 'poster'"),
    "text for a file": (lambda: {"data": {"image": "poster.jpg"}}, 422, "must be a file upload"),
    "two files": (lambda: {"files": [("image", ("a.jpg", b"a", "image/jpeg")), ("image", ("b.jpg", b"b", "image/jpeg"))]}, 422, "/api/predict/batch"),
    "broken multipart": (lambda: {"headers": {"content-type": "multipart/form-data"}, "content": b"garbage"}, 400, "cannot read the form"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_a_json_4xx_and_the_server_keeps_serving(client, runs, case):
    make, status, words = BAD[case]
    kwargs = make()
    if "content" in kwargs:
        kwargs.pop("files", None), kwargs.pop("data", None)
    r = client.post("/api/predict", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status and words in body["error"] and "\n" not in body["error"]
    _good(client, runs)


def test_a_chunked_body_over_the_limit_is_cut_off_while_streaming(client, runs):
    boundary = "bnd"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + b"\0" * 300_000 + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    r = client.post("/api/predict", content=_chunked(body), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "request body of more than" in r.json()["error"]
    _good(client, runs)


def test_concurrent_requests_all_get_their_own_answer(client, runs):
    paths = runs["images"][:8]
    want = {p.name: client.post("/api/predict", files={"image": _file(p)}).json()["probabilities"] for p in paths}

    def one(p):
        return client.post("/api/predict", files={"image": _file(p)}).json()

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, paths * 3))
    assert all(g["probabilities"] == want[g["item"]] for g in got) and len(got) == 24


def test_nothing_from_a_request_stays_on_disk(runs, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    cfg = ServeConfig(run=str(runs["posters"]), **LIMITS)
    with TestClient(create_app(load_run(cfg.run), cfg)) as c:
        assert list(scratch.iterdir()) == []  # the warm-up cleaned up too
        _good(c, runs)
        c.post("/api/predict", files={"image": ("x.jpg", b"junk", "image/jpeg")})
        c.post("/api/predict/batch", files=[("image", _file(p)) for p in runs["images"][:3]])
        assert list(scratch.iterdir()) == []


def test_workers_build_the_app_from_the_environment(runs, monkeypatch):
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    with pytest.raises(ValueError, match=CONFIG_ENV):
        app_from_env()
    monkeypatch.setenv(CONFIG_ENV, json.dumps({"run": str(runs["posters"]), "port": 8123}))
    with TestClient(app_from_env()) as c:
        assert c.get("/healthz").json()["run"] == "logreg"


def test_loopback_by_default_and_a_warning_elsewhere(runs, monkeypatch):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")
    import genrekit_cli.apps.serve as serve_mod

    seen = []
    monkeypatch.setattr(serve_mod, "serve", lambda cfg: seen.append(cfg))
    res = runner.invoke(cli, ["serve", "--run", str(runs["posters"]), "--host", "0.0.0.0", "--port", "8123"])
    assert res.exit_code == 0 and "warning" in res.output and "0.0.0.0" in res.output and seen[0].host == "0.0.0.0"
    res = runner.invoke(cli, ["serve", "--run", str(runs["posters"])])
    assert res.exit_code == 0 and "warning" not in res.output and seen[1].host == "127.0.0.1" and seen[1].port == 8000
    res = runner.invoke(cli, ["serve", "--run", str(runs["posters"]), "--port", "0"])
    assert res.exit_code == 1 and "--port 0" in res.output


def test_a_missing_run_is_one_line_at_start_up(tmp_path):
    res = runner.invoke(cli, ["serve", "--run", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "does not exist" in res.output


def test_serve_takes_the_precision_and_info_reports_it(runs, monkeypatch):
    import genrekit_cli.apps.serve as serve_mod

    seen = []
    monkeypatch.setattr(serve_mod, "serve", lambda cfg: seen.append(cfg))
    res = runner.invoke(cli, ["serve", "--run", str(runs["posters"]), "--precision", "fp32", "--max-pending", "3"])
    assert res.exit_code == 0 and seen[0].precision == "fp32" and seen[0].max_pending == 3
    res = runner.invoke(cli, ["serve", "--run", str(runs["posters"]), "--precision", "fp8"])
    assert res.exit_code == 2 and "fp8" in res.output
    cfg = ServeConfig(run=str(runs["posters"]), precision="fp32")
    with TestClient(create_app(load_run(cfg.run, precision="fp32"), cfg)) as c:
        assert c.get("/api/info").json()["precision"] == "fp32"


def test_a_run_that_gives_nan_is_an_error_never_a_probability(runs):
    import numpy as np

    cfg = ServeConfig(run=str(runs["posters"]))
    run = load_run(cfg.run)
    with TestClient(create_app(run, cfg)) as c:
        run.predict_proba = lambda items: (np.full((len(items), len(run.genres)), np.nan, np.float32), list(range(len(items))), [])
        r = c.post("/api/predict", files={"image": _file(runs["images"][0])})
        assert r.status_code == 500 and "non-finite" in r.json()["error"] and "null" not in r.text
        assert c.get("/healthz").status_code == 200  # one line, and the server goes on


# -- explanations never hold predictions up; limits on a real uvicorn --------------------------------------
class SlowSaliency:
    """Stands in for a run's saliency: ``steps`` steps of ``pause`` s, recording how it ended."""

    def __init__(self, steps=200, pause=0.02):
        import threading

        self.steps, self.pause, self.ended, self.started = steps, pause, [], threading.Event()

    def maps(self, poster, top_k, progress):
        import time

        from genrekit_cli.apps.serve import Cancelled

        self.started.set()
        try:
            for i in range(self.steps):
                progress(i, self.steps, "slow")
                time.sleep(self.pause)
        except Cancelled:
            self.ended.append("cancelled")
            raise
        self.ended.append("finished")
        return "maps"

    def render(self, maps, poster):
        return {"genres": [], "method": "slow"}

    def install(self, server) -> SlowSaliency:
        server.saliency.maps, server.saliency.render = self.maps, self.render
        return self


def test_the_model_lock_lets_predictions_pass_an_explanation_between_its_steps():
    import threading

    from genrekit_cli.apps.serve import ModelLock

    lock, order = ModelLock(), []
    in_step, go_on = threading.Event(), threading.Event()

    def explanation():
        with lock.background():
            order.append("explain step 1")
            in_step.set()
            go_on.wait(10)
            lock.yield_to_urgent()  # between steps
            order.append("explain step 2")

    def prediction():
        with lock.urgent():
            order.append("predict")

    t = threading.Thread(target=explanation)
    t.start()
    in_step.wait(10)
    p = threading.Thread(target=prediction)
    p.start()
    while not lock._urgent:  # the prediction waits for the step in progress
        pass
    go_on.set()
    t.join(10), p.join(10)
    assert order == ["explain step 1", "predict", "explain step 2"]


def test_a_steady_stream_of_predictions_cannot_starve_an_explanation_for_ever():
    import threading
    import time

    from genrekit_cli.apps.serve import ModelLock

    lock, stop, got = ModelLock(share_s=0.2), threading.Event(), []

    def predictions():  # two clients: one always waits while the other holds the model
        while not stop.is_set():
            with lock.urgent():
                time.sleep(0.01)

    hammer = [threading.Thread(target=predictions) for _ in range(2)]
    for t in hammer:
        t.start()
    time.sleep(0.1)

    def explanation():
        with lock.background():
            got.append("a step")

    waiter = threading.Thread(target=explanation)
    waiter.start()
    waiter.join(20)
    stop.set()
    for t in hammer:
        t.join(10)
    assert got, "the explanation never got the model while predictions kept coming"


def test_explain_streams_progress_and_a_second_one_is_refused_while_busy(runs):
    cfg = ServeConfig(run=str(runs["posters"]), max_explains=1)
    with TestClient(create_app(load_run(cfg.run), cfg)) as c:
        lines = [json.loads(x) for x in c.post("/api/explain?top_k=2&stream=true", files={"image": _file(runs["images"][0])}).text.splitlines()]
        assert "result" in lines[-1] and lines[-1]["result"]["method"] == "occlusion" and len(lines[-1]["result"]["genres"]) == 2
        slow = SlowSaliency(steps=100).install(c.app.state.server)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(c.post, "/api/explain?stream=true", files={"image": _file(runs["images"][0])})
            slow.started.wait(30)
            busy = c.post("/api/explain", files={"image": _file(runs["images"][1])})
            assert busy.status_code == 503 and busy.headers["retry-after"] == "5" and "--max-explains" in busy.json()["error"]
            pred = c.post("/api/predict", files={"image": _file(runs["images"][1])})
            assert pred.status_code == 200 and slow.ended == []  # answered while the explanation still runs
            events = [json.loads(x) for x in first.result().text.splitlines()]
        assert slow.ended == ["finished"] and events[-1]["result"]["method"] == "slow"
        assert any(0 < e.get("progress", 0) < 1 and e["stage"] == "slow" for e in events[:-1])


@pytest.fixture
def live(runs):
    """A real uvicorn (with genrekit's protocol) serving the poster run: ``with live(**limits) as (port, server)``."""
    import contextlib

    from liveserver import live_server

    @contextlib.contextmanager
    def start(**limits):
        cfg = ServeConfig(run=str(runs["posters"]), **limits)
        app = create_app(load_run(cfg.run), cfg)
        with live_server(app, cfg.request_timeout) as port:
            yield port, app.state.server

    return start


def _connect(port):
    import socket

    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    return s


def test_a_half_sent_request_is_closed_and_uploads_beyond_max_pending_get_503(live, runs):
    import time

    with live(request_timeout=1.0, max_pending=1) as (port, _):
        slow = _connect(port)
        slow.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 5000\r\n\r\n--b")
        time.sleep(0.3)  # its body never completes: it holds the one upload slot ...
        other = _connect(port)
        other.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := other.recv(4096):  # Connection: close, so the answer ends with the connection
            answer += chunk
        answer = answer.decode()
        assert answer.startswith("HTTP/1.1 503") and "retry-after: 1" in answer.lower() and "--max-pending" in answer
        t = time.monotonic()
        while slow.recv(4096):  # ... until the request deadline closes its connection
            pass
        assert time.monotonic() - t < 15
        idle = _connect(port)  # a connection that sends nothing at all is closed too
        assert idle.recv(4096) == b""
        import httpx

        assert httpx.post(f"http://127.0.0.1:{port}/api/predict", files={"image": _file(runs["images"][0])}, timeout=30).status_code == 200


def test_a_client_that_leaves_stops_its_explanation(live, runs):
    import time

    with live() as (port, server):
        slow = SlowSaliency(steps=2000).install(server)
        body, ctype = _multipart(runs["images"][0])
        s = _connect(port)
        s.sendall(f"POST /api/explain?stream=true HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        assert b'"progress"' in s.recv(65536) or b'"progress"' in s.recv(65536)
        s.close()
        deadline = time.monotonic() + 20
        while not slow.ended and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slow.ended == ["cancelled"]
        assert server.explain_slots.acquire(blocking=False)  # its slot is free again
        server.explain_slots.release()


def _multipart(path):
    data = path.read_bytes()
    head = f'--bnd\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\nContent-Type: image/jpeg\r\n\r\n'
    return head.encode() + data + b"\r\n--bnd--\r\n", "multipart/form-data; boundary=bnd"


def test_poster_serves_only_images_from_the_manifests_absolute_paths(tmp_path):
    import csv

    manifest = make_collection(tmp_path / "col", n=60)
    store = tmp_path / "p.h5"
    extract(ExtractConfig(backbone="colorstats", weights="none", data=str(manifest), out=str(store), device="cpu"))
    res = runner.invoke(cli, ["heads", "--store", str(store), "--head", "knn", "--out", str(tmp_path / "runs"), "--min-positives", "3", "--jobs", "1"])
    assert res.exit_code == 0, res.output
    split = {r["id"]: r["split"] for r in csv.DictReader(open(tmp_path / "runs" / "split.csv"))}
    rows = list(csv.DictReader(open(manifest)))
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the password file\n")
    train = [r["id"] for r in rows if split.get(r["id"]) == "train"]
    for r in rows:  # after training, the manifest names a text file and a relative path for two training ids
        if r["id"] == train[0]:
            r["image"] = str(secret)
        if r["id"] == train[1]:
            r["image"] = "../secret.txt"
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = ServeConfig(run=str(tmp_path / "runs" / "knn"))
    cwd = os.getcwd()
    os.chdir(tmp_path)  # a file where the server starts decides nothing
    try:
        with TestClient(create_app(load_run(cfg.run), cfg)) as c:
            for i in train[:2]:
                r = c.get(f"/api/poster/{i}")
                assert r.status_code == 404 and "password" not in r.text, r.text
            assert c.get(f"/api/poster/{train[2]}").status_code == 200
    finally:
        os.chdir(cwd)


def test_predictions_that_wait_for_the_model_run_together_and_each_gets_its_own_answer(runs, monkeypatch):
    import time

    import genrekit_cli.apps.serve as serve_mod

    cfg = ServeConfig(run=str(runs["posters"]), max_batch=6)
    with TestClient(create_app(load_run(cfg.run), cfg)) as c:
        server = c.app.state.server
        paths = runs["images"][:8]
        want = {p.name: c.post("/api/predict", files={"image": _file(p)}).json()["probabilities"] for p in paths}
        calls = []
        real = serve_mod.predict_groups
        monkeypatch.setattr(serve_mod, "predict_groups", lambda run, groups: calls.append([len(g) for g in groups]) or real(run, groups))
        with ThreadPoolExecutor(8) as pool:
            with server.lock.urgent():  # the model is busy: all eight requests wait
                futures = [pool.submit(c.post, "/api/predict", files={"image": _file(p)}) for p in paths]
                deadline = time.monotonic() + 60
                while len(server._waiting) < 8 and time.monotonic() < deadline:
                    time.sleep(0.01)
            got = [f.result().json() for f in futures]
        assert [g["probabilities"] for g in got] == [want[p.name] for p in paths] and [g["item"] for g in got] == [p.name for p in paths]
        assert sorted(len(x) for x in calls) == [2, 6] and all(n == 1 for x in calls for n in x)  # two passes, at most --max-batch items
