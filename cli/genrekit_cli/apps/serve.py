"""Serve a run over HTTP: an upload page and a JSON API (the application behind ``genrekit serve``).

The run is loaded once (:func:`genrekit.inference.loaded.load_run`, so every run kind works) and
warmed up with one prediction before the first request. Each request goes through the same
:func:`~genrekit.inference.loaded.predict_items` as ``genrekit predict``, so the JSON answer for a
poster equals ``genrekit predict --json`` for it.

Endpoints: ``GET /`` (the page, self-contained: no CDN, no build step), ``POST /api/predict``,
``POST /api/predict/batch``, ``POST /api/explain`` (the top genres' saliency maps, from
:mod:`genrekit.inference.explain`), ``POST /api/similar`` and ``GET /api/poster/{id}`` (the
nearest training posters, through the run's knn head: :mod:`genrekit.inference.similar`),
``GET /api/info``, ``GET /healthz``, OpenAPI at ``/docs``.

Hostile input gets a one-line JSON error ``{"error": ..., "status": ...}`` with a 4xx code: a body
over the size limit (413, checked on the Content-Length header and again while the body streams
in), an image with too many pixels (413), a file that is not an image, empty, truncated or a
decompression bomb (422), a request that is not a form or a file part that says it is not an image
(415), a missing or unknown field (422). Uploaded bytes are written only inside a per-request
temporary directory that is removed when the request ends (the decoder reads files by path).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from genrekit import __version__
from genrekit.errors import ConfigError, GenrekitError, UnreadableImageError
from genrekit.inference.loaded import Item, LoadedRun, load_run, predict_items
from genrekit.inference.predict import Prediction

log = logging.getLogger(__name__)

MB = 1024 * 1024
IMAGE_FIELD = "image"
MAX_EXPLAIN = 6  # genres one /api/explain request may ask maps of
MAX_SIMILAR = 24  # neighbours one /api/similar request may ask for
# The upload page: one self-contained file (no CDN, no build step), edited as HTML, not as a string.
PAGE = (Path(__file__).parent / "templates" / "page.html").read_text(encoding="utf-8")
CONFIG_ENV = "GENREKIT_SERVE_CONFIG"  # how `--workers N` hands the config to each worker process


@dataclass(frozen=True)
class ServeConfig:
    """What ``genrekit serve`` was asked for; one field per CLI flag.

    Attributes:
        run: the run directory (``RUNS/`` for its best head, ``RUNS/<head>``, a fused run ...).
        host: address to bind; loopback by default, anything else is logged as a warning.
        port: TCP port.
        workers: uvicorn worker processes; each loads the run once.
        max_upload_mb: largest poster file, and largest request body of ``/api/predict``
            (a batch may carry ``max_batch`` such files).
        max_pixels: largest image (width x height) decoded; bigger ones get 413 before decoding.
        max_batch: most items in one ``/api/predict/batch`` request.
        device: where the encoder runs.
    """

    run: str
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_upload_mb: float = 10.0
    max_pixels: int = 40_000_000
    max_batch: int = 32
    device: str = "cpu"

    def check(self) -> ServeConfig:
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port {self.port}; expected 1-65535")
        if self.workers < 1:
            raise ConfigError(f"--workers {self.workers}; expected 1 or more")
        if not self.max_upload_mb > 0:
            raise ConfigError(f"--max-upload-mb {self.max_upload_mb}; expected a positive size in MB")
        if self.max_pixels < 1 or self.max_batch < 1:
            raise ConfigError(f"--max-pixels {self.max_pixels} and --max-batch {self.max_batch} must be positive")
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ApiError(HTTPException):
    """A client error rendered as ``{"error": detail, "status": code}``."""


# -- the request body limit -------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: refuse bodies over a size with 413, before and while they stream in.

    Starlette has no request-size limit of its own (its ``max_part_size`` covers only non-file
    fields), so this counts the bytes as they arrive, and a client that lies in Content-Length or
    sends chunks cannot make the server buffer more than the limit.
    """

    def __init__(self, app, limit_for):
        self.app, self.limit_for = app, limit_for  # path -> (bytes allowed, how the limit is named)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit, named = self.limit_for(scope["path"])
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            return await _error_response(413, f"request body of {int(length) / MB:.1f} MB is over {named}")(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise ApiError(413, f"request body of more than {seen / MB:.1f} MB is over {named}")
            return message

        await self.app(scope, counted, send)


def _too_big(n: int, limit: int) -> str:
    return f"file of {n / MB:.1f} MB is over the limit of {limit / MB:g} MB (--max-upload-mb)"


def _error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


# -- reading a request into items ---------------------------------------------------------------------
def _suffix(filename: str) -> str:
    """A safe file suffix from a client's filename (the name itself is never used as a path)."""
    s = Path(filename or "").suffix.lower()
    return s if re.fullmatch(r"\.[a-z0-9]{1,6}", s) else ".img"


def _content_type_ok(ct: str | None) -> bool:
    ct = (ct or "").split(";")[0].strip().lower()
    return ct in ("", "application/octet-stream") or ct.startswith("image/")


def _pixel_check(path: str, max_pixels: int) -> str | None:
    """A reason when the image's header declares more than ``max_pixels``; decoding is left to predict."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                w, h = img.size
        except Image.DecompressionBombError as e:
            return f"too many pixels: decompression bomb ({e})"
        except Exception:
            return None  # not an image, empty, truncated: predict names the reason, as for the CLI
    if w * h > max_pixels:
        return f"too many pixels: {w}x{h} = {w * h:,} is over the limit of {max_pixels:,} (--max-pixels)"
    return None


@dataclass
class _Parsed:
    items: list[Item]
    refused: list[tuple[str, int, str]]  # (name, status, reason) of items refused before predicting


async def _read_form(request: Request, inputs: Sequence[str], cfg: ServeConfig, tmp: str, batch: bool) -> _Parsed:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise ApiError(415, f"content type {ctype or 'none'!r}; send multipart/form-data with fields: {', '.join(inputs)}")
    text_fields = [f for f in inputs if f != IMAGE_FIELD]
    try:
        # Starlette stops parsing past these counts; one more than allowed lets the checks below name the limit.
        form = await request.form(max_files=cfg.max_batch + 1 if batch else 2, max_fields=4 * cfg.max_batch + 8)
    except ApiError:
        raise
    except Exception as e:  # malformed multipart, too many parts: Starlette raises its own types
        msg = str(getattr(e, "detail", None) or e)
        if msg.startswith("Too many"):
            raise ApiError(413, f"too many parts ({msg}): at most {cfg.max_batch} items per request (--max-batch)") from None
        raise ApiError(400, f"cannot read the form: {msg}") from None
    try:
        unknown = sorted(set(form.keys()) - set(inputs))
        if unknown:
            raise ApiError(422, f"unknown field {unknown[0]!r}; this run reads: {', '.join(inputs)}")
        images = [v for v in form.getlist(IMAGE_FIELD) if not (isinstance(v, UploadFile) and not v.filename and not v.size)]
        if any(not isinstance(v, UploadFile) for v in images):
            raise ApiError(422, f"field {IMAGE_FIELD!r} must be a file upload (a poster), not text")
        if any(isinstance(v, UploadFile) for f in text_fields for v in form.getlist(f)):
            raise ApiError(422, f"text fields ({', '.join(text_fields)}) must be form text, not file uploads")
        texts = {f: [str(v) for v in form.getlist(f)] for f in text_fields}
        counts = {f: len(v) for f, v in [(IMAGE_FIELD, images), *texts.items()] if v}
        if not counts:
            raise ApiError(422, f"missing field: send {' and/or '.join(repr(f) for f in inputs)} (this run reads {', '.join(inputs)})")
        n = max(counts.values())
        if len(set(counts.values())) > 1:
            raise ApiError(422, f"fields have different counts ({counts}); send one value of each field per item")
        if not batch and n > 1:
            raise ApiError(422, f"{n} values for one field; /api/predict takes one item, use /api/predict/batch")
        if n > cfg.max_batch:
            raise ApiError(413, f"{n} items in one batch; the limit is {cfg.max_batch} (--max-batch)")
        items, refused = [], []
        for k in range(n):
            item_texts = {f: v[k] for f, v in texts.items() if v}
            up = images[k] if images else None
            name = (up.filename or f"upload-{k}") if up is not None else next(iter(item_texts.values()), f"item-{k}")
            name = name[:200]
            path = None
            if up is not None:
                if not _content_type_ok(up.content_type):
                    refused.append((name, 415, f"content type {up.content_type!r} is not an image type"))
                    continue
                if (up.size or 0) > cfg.max_upload_bytes:
                    refused.append((name, 413, _too_big(up.size or 0, cfg.max_upload_bytes)))
                    continue
                path = os.path.join(tmp, f"{k}{_suffix(up.filename or '')}")
                with open(path, "wb") as f:  # inside the request's temporary directory only
                    while chunk := await up.read(MB):
                        f.write(chunk)
                reason = _pixel_check(path, cfg.max_pixels)
                if reason:
                    refused.append((name, 413, reason))
                    continue
            items.append(Item(name, image=path, texts=item_texts))
        return _Parsed(items, refused)
    finally:
        await form.close()


# -- the JSON answer ------------------------------------------------------------------------------------
def prediction_json(p: Prediction) -> dict:
    """``genrekit predict --json``'s record for one item, plus the ranked list the page draws."""
    out = p.to_json()
    chosen = set(p.predicted)
    out["genres"] = [{"genre": g, "probability": round(v, 6), "predicted": g in chosen} for g, v in p.ranked]
    return out


class Saliency:
    """The run's explainer for ``POST /api/explain``, built once at start-up, or why there is none."""

    def __init__(self, run: LoadedRun):
        self.explainer, self.reason = None, None
        if IMAGE_FIELD not in run.inputs:
            self.reason = f"this run reads {', '.join(run.inputs)}, not posters"
            return
        try:
            from genrekit.inference.explain import build_explainer

            self.explainer = build_explainer(run)
        except ImportError as e:
            self.reason = f"saliency maps need the report extra (pip install 'genrekit[report]'; {e.name} is missing)"
        except GenrekitError as e:
            self.reason = str(e)
        except Exception as e:  # an optional part of the page never stops the server
            self.reason = f"the run's explainer could not be built ({type(e).__name__}: {e})"
            log.warning("saliency maps off: %s", self.reason)

    def features(self) -> dict:
        """What the page can show of saliency, and why not when it cannot."""
        if self.explainer is None:
            return {"available": False, "reason": self.reason}
        d = self.explainer
        return {"available": True, "method": "gradcam" if d.differentiable and d.spatial else "occlusion", "endpoint": "/api/explain"}

    def explain(self, path: str, top_k: int) -> dict:
        """The top genres' maps over the poster (PNG data URLs) with the explain checks."""
        import base64

        from genrekit.inference.explain import ExplainConfig, explain_poster, overlay_png

        e = explain_poster(self.explainer, path, ExplainConfig(top_k=top_k))
        image = self.explainer.load_pil(path)
        out = e.summary()
        del out["poster"]  # a temporary file's name
        for rec in out["genres"]:
            png = overlay_png(e, image, rec["genre"])
            rec["overlay"] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        return out


class Server:
    """One loaded run and the limits it is served with; predictions are serialised by a lock.

    The lock keeps one prediction at a time: the encoder already uses every core for one batch,
    and run kinds need not be thread-safe.
    """

    def __init__(self, run: LoadedRun, cfg: ServeConfig):
        self.run, self.cfg = run, cfg
        self.lock = threading.Lock()
        self.identity = run.identity()
        self.started = time.time()
        self.saliency = Saliency(run)
        self.similar, self.similar_reason = None, None
        if IMAGE_FIELD in run.inputs:
            try:
                from genrekit.inference.similar import SimilarIndex

                self.similar = SimilarIndex.for_run(Path(run.path), device=cfg.device, run=run)
            except GenrekitError as e:
                self.similar_reason = str(e)
            except Exception as e:  # an optional part of the page never stops the server
                self.similar_reason = f"the knn index could not be read ({type(e).__name__}: {e})"
                log.warning("similar posters off: %s", self.similar_reason)
        else:
            self.similar_reason = f"this run reads {', '.join(run.inputs)}, not posters"

    def info(self) -> dict:
        return {
            "genrekit_version": __version__,
            "run": {"kind": self.run.kind, "name": self.run.name, **self.identity},
            "genres": list(self.run.genres),
            "inputs": list(self.run.inputs),
            "thresholds": self.run.thresholds.to_json(),
            "limits": {"max_upload_mb": self.cfg.max_upload_mb, "max_pixels": self.cfg.max_pixels, "max_batch": self.cfg.max_batch},
            "features": {"saliency": self.saliency.features(), "similar_posters": self._similar_features()},
        }

    def predict(self, items: Sequence[Item]) -> tuple[list[Prediction], list[tuple[str, str]], float]:
        with self.lock:
            t = time.perf_counter()
            preds, failures = predict_items(self.run, items)
            return preds, failures, (time.perf_counter() - t) * 1000

    def _similar_features(self) -> dict:
        if self.similar is None:
            return {"available": False, "reason": self.similar_reason}
        return {"available": True, "endpoint": "/api/similar", "index": str(self.similar.directory),
                "training_items": len(self.similar.items), "posters_on_disk": len(self.similar.posters)}

    def neighbours(self, path: str, k: int) -> list[dict]:
        with self.lock:
            return self.similar.search(path, k)

    def explain(self, path: str, top_k: int) -> tuple[dict, float]:
        with self.lock:
            t = time.perf_counter()
            return self.saliency.explain(path, top_k), (time.perf_counter() - t) * 1000

    def warm_up(self) -> float:
        """One prediction on a generated item, so the encoder is built before the first request."""
        t = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="genrekit-serve-") as tmp:
            image = None
            if IMAGE_FIELD in self.run.inputs:
                image = os.path.join(tmp, "warm-up.png")
                Image.new("RGB", (64, 96), (128, 64, 32)).save(image)
            texts = {f: "A warm-up text." for f in self.run.inputs if f != IMAGE_FIELD}
            _, failures, _ = self.predict([Item("warm-up", image=image, texts=texts)])
        if failures:
            raise ConfigError(f"the run cannot predict a generated item: {failures[0][1]}")
        return time.perf_counter() - t


def _request_schema(inputs: Sequence[str], batch: bool) -> dict:
    props = {}
    for f in inputs:
        one = {"type": "string", "format": "binary"} if f == IMAGE_FIELD else {"type": "string"}
        desc = "a poster file" if f == IMAGE_FIELD else f"the item's {f}"
        props[f] = {"type": "array", "items": one, "description": desc + "s (one per item)"} if batch else {**one, "description": desc}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {"type": "object", "properties": props}}}}}


def create_app(run: LoadedRun, cfg: ServeConfig) -> FastAPI:
    """The FastAPI app serving ``run``; the run is warmed up here, once.

    Example:
        >>> cfg = ServeConfig(run="runs/")  # doctest: +SKIP
        >>> app = create_app(load_run(cfg.run), cfg)
        >>> uvicorn.run(app, host=cfg.host, port=cfg.port)
    """
    server = Server(run, cfg)
    log.info("warm-up prediction in %.2f s", server.warm_up())
    app = FastAPI(
        title="genrekit",
        version=__version__,
        description=f"Genres of posters{' and texts' if len(run.inputs) > 1 or IMAGE_FIELD not in run.inputs else ''} "
        f"with the {run.kind} run {run.name!r} (inputs: {', '.join(run.inputs)}).",
    )
    app.state.server = server

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        return _error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        return _error_response(422, f"{'.'.join(str(x) for x in first.get('loc', ()))}: {first.get('msg', 'invalid request')}")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)  # read once at import

    @app.get("/healthz", summary="Liveness: the run is loaded")
    async def healthz() -> dict:
        return {"status": "ok", "run": run.name, "uptime_s": round(time.time() - server.started, 1)}

    @app.get("/api/info", summary="The run: identity, genres, thresholds, inputs, limits")
    async def info() -> dict:
        return server.info()

    async def _predict(request: Request, batch: bool):
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="genrekit-serve-") as tmp:
            parsed = await _read_form(request, run.inputs, cfg, tmp, batch)
            if not batch and parsed.refused:
                _, status, reason = parsed.refused[0]
                raise ApiError(status, reason)
            preds, failures, model_ms = await run_in_threadpool(server.predict, parsed.items) if parsed.items else ([], [], 0.0)
        failures = [(n, r) for n, _, r in parsed.refused] + failures  # every run kind names a failure by its item
        if not preds:
            raise ApiError(422, failures[0][1] if len(failures) == 1 else "; ".join(f"{n}: {r}" for n, r in failures[:5]))
        common = {
            "threshold_rule": run.thresholds.to_json(),
            "run": {"kind": run.kind, "name": run.name, **server.identity},
            "timing_ms": {"predict": round(model_ms, 2), "total": round((time.perf_counter() - t0) * 1000, 2)},
        }
        if not batch:
            return {**prediction_json(preds[0]), **common}
        return {"predictions": [prediction_json(p) for p in preds], "failures": [{"item": n, "reason": r} for n, r in failures], **common}

    @app.post("/api/predict", summary="Genres of one poster (and/or its texts)", openapi_extra=_request_schema(run.inputs, False))
    async def predict(request: Request) -> dict:
        """Multipart form: ``image`` (a poster file) and/or the run's text fields. Returns the genres
        sorted by probability, the predicted set, the threshold rule, the run's identity and timing."""
        return await _predict(request, batch=False)

    @app.post("/api/predict/batch", summary="Genres of several posters", openapi_extra=_request_schema(run.inputs, True))
    async def predict_batch(request: Request) -> dict:
        """Multipart form with the fields repeated, one value each per item; unreadable items are
        listed under ``failures`` (422 when none is readable)."""
        return await _predict(request, batch=True)

    async def _on_one_poster(request: Request, fn, *args):
        """``fn(path, *args)`` in a worker thread on the one poster of the form (in a request-scoped
        temporary directory); a refused or unreadable poster is the JSON 4xx of /api/predict."""
        with tempfile.TemporaryDirectory(prefix="genrekit-serve-") as tmp:
            parsed = await _read_form(request, (IMAGE_FIELD,), cfg, tmp, batch=False)
            if parsed.refused:
                _, status, reason = parsed.refused[0]
                raise ApiError(status, reason)
            try:
                return await run_in_threadpool(fn, parsed.items[0].image, *args)
            except UnreadableImageError as e:
                raise ApiError(422, str(e)) from None

    @app.post("/api/explain", summary="Saliency maps of a poster's top genres", openapi_extra=_request_schema([IMAGE_FIELD], False))
    async def explain(request: Request, top_k: int = 3) -> dict:
        """Multipart form: ``image``. Returns, for the ``top_k`` most probable genres, the map of
        where the evidence lies, blended over the poster (a PNG data URL), with the method and the
        two checks of ``genrekit explain`` (model randomisation, genre distinctness)."""
        if server.saliency.explainer is None:
            raise ApiError(422, f"no saliency maps for this run: {server.saliency.reason}")
        if not 1 <= top_k <= min(len(run.genres), MAX_EXPLAIN):
            raise ApiError(422, f"top_k must be between 1 and {min(len(run.genres), MAX_EXPLAIN)}, got {top_k}")
        t0 = time.perf_counter()
        out, ms = await _on_one_poster(request, server.explain, top_k)
        return {**out, "run": {"kind": run.kind, "name": run.name, **server.identity},
                "timing_ms": {"explain": round(ms, 2), "total": round((time.perf_counter() - t0) * 1000, 2)}}

    @app.post("/api/similar", summary="The most similar training posters", openapi_extra=_request_schema([IMAGE_FIELD], False))
    async def similar(request: Request, k: int = 6) -> dict:
        """Multipart form: ``image``. Returns the ``k`` nearest training items of the run's knn head
        (cosine similarity of the embeddings), with their titles, genres and poster URLs."""
        if server.similar is None:
            raise ApiError(422, f"no similar posters for this run: {server.similar_reason}")
        if not 1 <= k <= MAX_SIMILAR:
            raise ApiError(422, f"k must be between 1 and {MAX_SIMILAR}, got {k}")
        found = await _on_one_poster(request, server.neighbours, k)
        for n in found:
            n["poster"] = f"/api/poster/{quote(n['id'], safe='')}" if n.pop("has_poster") else None
        return {"neighbours": found, "index": server.similar.saved.name}

    @app.get("/api/poster/{item_id}", summary="A training poster of the knn index", response_class=FileResponse)
    async def poster(item_id: str):
        """Only the posters of the items the run's knn head was trained on are served."""
        path = server.similar.posters.get(item_id) if server.similar is not None else None
        if path is None:
            raise ApiError(404, f"no training poster with id {item_id!r} in this run's knn index")
        return FileResponse(path)

    # A form adds part headers and text fields to the file's bytes: allow a little room for them.
    one = (cfg.max_upload_bytes + MB // 16, f"the limit of {cfg.max_upload_mb:g} MB (--max-upload-mb)")
    many = (cfg.max_upload_bytes * cfg.max_batch + MB, f"the batch limit of {cfg.max_batch} x {cfg.max_upload_mb:g} MB (--max-batch x --max-upload-mb)")
    app.add_middleware(BodyLimit, limit_for=lambda path: many if path.endswith("/batch") else one)
    return app


def app_from_env() -> FastAPI:
    """The app for one uvicorn worker process: the config comes from ``GENREKIT_SERVE_CONFIG``."""
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise ConfigError(f"{CONFIG_ENV} is not set; start workers with `genrekit serve`")
    cfg = ServeConfig(**json.loads(raw)).check()
    return create_app(load_run(cfg.run, device=cfg.device), cfg)


def serve(cfg: ServeConfig, log_level: str = "info") -> None:
    """Load the run and serve it with uvicorn until interrupted (``genrekit serve``)."""
    import uvicorn

    cfg.check()
    if not is_loopback(cfg.host):
        log.warning("binding to %s: the API is reachable from other machines and has no authentication", cfg.host)
    if cfg.workers == 1:
        app = create_app(load_run(cfg.run, device=cfg.device), cfg)
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=log_level)
        return
    load_run(cfg.run, device=cfg.device)  # fail here, in one line, rather than in every worker
    os.environ[CONFIG_ENV] = json.dumps(asdict(cfg))
    uvicorn.run("genrekit_cli.apps.serve:app_from_env", factory=True, host=cfg.host, port=cfg.port, workers=cfg.workers, log_level=log_level)
