"""Serve a run over HTTP: an upload page and a JSON API (the application behind ``genrekit serve``).

The run is loaded once (:func:`genrekit.inference.loaded.load_run`, so every run kind works) and
warmed up with one prediction before the first request. Each request goes through the same
:func:`~genrekit.inference.loaded.predict_items` as ``genrekit predict``, so the JSON answer for a
poster equals ``genrekit predict --json`` for it.

Endpoints: ``GET /`` (the page, self-contained: no CDN, no build step), ``POST /api/predict``,
``POST /api/predict/batch``, ``POST /api/explain`` (the top genres' saliency maps, from
:mod:`genrekit.inference.explain`; ``?stream=true`` sends progress lines first), ``POST
/api/similar`` and ``GET /api/poster/{id}`` (the nearest training posters, through the run's knn
head: :mod:`genrekit.inference.similar`), ``GET /api/info``, ``GET /healthz``, OpenAPI at ``/docs``.

Predictions never queue behind saliency: one model is used by one request at a time
(:class:`ModelLock`), predictions first; an explanation gives the model up between its steps
(one Grad-CAM pass, one batch of occluded copies) whenever a prediction waits, stops when its
client leaves, and at most ``max_explains`` run or wait (503 with ``Retry-After`` beyond).

Hostile input gets a one-line JSON error ``{"error": ..., "status": ...}``: a body over the size
limit (413, checked on the Content-Length header and again while the body streams in), an image
with too many pixels (413), a file that is not an image, empty, truncated or a decompression bomb
(422), a request that is not a form or a file part that says it is not an image (415), a missing
or unknown field (422), more than ``max_pending`` requests with bodies at once (503 with
``Retry-After``). Uploads are held in memory (the multipart parser's spool files are closed with
the request) and bounded by those limits; a connection that has not sent a whole request within
``request_timeout`` seconds is closed. ``/api/poster`` sends only training posters decoded as
images, re-encoded, from the absolute paths the run's manifest resolves.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

import h11
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from genrekit import __version__
from genrekit.backbones.base import PRECISIONS
from genrekit.errors import ConfigError, GenrekitError, UnreadableImageError
from genrekit.inference.loaded import Item, LoadedRun, load_run, predict_groups
from genrekit.inference.predict import Prediction

log = logging.getLogger(__name__)

MB = 1024 * 1024
IMAGE_FIELD = "image"
MAX_EXPLAIN = 6  # genres one /api/explain request may ask maps of
MAX_SIMILAR = 24  # neighbours one /api/similar request may ask for
POSTER_SIDE = 512  # /api/poster re-encodes training posters at most this many pixels on a side
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
        max_upload_mb: largest poster file, and largest request body of ``/api/predict``.
        max_pixels: largest image (width x height) decoded; bigger ones get 413 before decoding.
        max_batch: most items in one ``/api/predict/batch`` request.
        max_batch_mb: largest request body of ``/api/predict/batch``.
        max_pending: most requests with a body (uploads) handled at once per worker; more get
            503 with ``Retry-After``. Uploads in memory stay under ``max_pending`` x the largest body.
        max_explains: most saliency requests running or waiting per worker (503 beyond).
        request_timeout: seconds a client has to send one whole request (headers and body).
        device: where the encoder runs.
        precision: the encoders' precision (``auto``, ``fp32``, ``fp16``, ``bf16``).
    """

    run: str
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_upload_mb: float = 10.0
    max_pixels: int = 40_000_000
    max_batch: int = 32
    max_batch_mb: float = 64.0
    max_pending: int = 16
    max_explains: int = 2
    request_timeout: float = 30.0
    device: str = "cpu"
    precision: str = "auto"

    def check(self) -> ServeConfig:
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port {self.port}; expected 1-65535")
        for flag, value in (("--workers", self.workers), ("--max-pixels", self.max_pixels), ("--max-batch", self.max_batch),
                            ("--max-pending", self.max_pending), ("--max-explains", self.max_explains)):  # fmt: skip
            if value < 1:
                raise ConfigError(f"{flag} {value}; expected 1 or more")
        for flag, value in (("--max-upload-mb", self.max_upload_mb), ("--max-batch-mb", self.max_batch_mb), ("--request-timeout", self.request_timeout)):
            if not value > 0:
                raise ConfigError(f"{flag} {value}; expected a positive number")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
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
    """A client error rendered as ``{"error": detail, "status": code}`` (``headers`` sent too)."""


def _error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


# -- connections and request bodies -----------------------------------------------------------------
class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request: a connection that has not sent a
    whole request (headers and body) within ``request_timeout`` seconds of opening, or of its last
    answer, is closed. uvicorn's own keep-alive timeout closes only idle connections between
    requests, so a half-sent request would otherwise hold its connection for ever."""

    request_timeout = 30.0  # set from ServeConfig in each worker before it serves

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._deadline = None
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.request_timeout, self._expire)

    def _expire(self) -> None:
        if self.conn.their_state not in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED) and not self.transport.is_closing():
            self.logger.info("closing a connection that sent no whole request in %.0f s", self.request_timeout)
            self.transport.close()


class BodyLimit:
    """ASGI middleware: refuse bodies over a size with 413, before and while they stream in, and
    more than ``max_pending`` requests with a body at once with 503 and ``Retry-After``.

    Starlette has no request-size limit of its own (its ``max_part_size`` covers only non-file
    fields), so this counts the bytes as they arrive, and a client that lies in Content-Length or
    sends chunks cannot make the server buffer more than the limit.
    """

    def __init__(self, app, limit_for, max_pending: int):
        self.app, self.limit_for, self.max_pending = app, limit_for, max_pending  # limit_for: path -> (bytes, how it is named)
        self.pending = 0  # one event loop per worker: no lock needed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit, named = self.limit_for(scope["path"])
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            return await _error_response(413, f"request body of {int(length) / MB:.1f} MB is over {named}")(scope, receive, send)
        if self.pending >= self.max_pending:
            message = f"busy: {self.pending} requests with uploads are being handled (--max-pending); retry in a second"
            return await _error_response(503, message, {"Retry-After": "1"})(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise ApiError(413, f"request body of more than {seen / MB:.1f} MB is over {named}")
            return message

        self.pending += 1
        try:
            await self.app(scope, counted, send)
        finally:
            self.pending -= 1


def _too_big(n: int, limit: int) -> str:
    return f"file of {n / MB:.1f} MB is over the limit of {limit / MB:g} MB (--max-upload-mb)"


# -- reading a request into items ---------------------------------------------------------------------
def _content_type_ok(ct: str | None) -> bool:
    ct = (ct or "").split(";")[0].strip().lower()
    return ct in ("", "application/octet-stream") or ct.startswith("image/")


def _pixel_check(data: bytes, max_pixels: int) -> str | None:
    """A reason when the image's header declares more than ``max_pixels``; decoding is left to predict."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as img:
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


async def _read_form(request: Request, inputs: Sequence[str], cfg: ServeConfig, batch: bool) -> _Parsed:
    """The form's items, each poster's bytes held in memory (the parser's spool files are closed here)."""
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
            data = None
            if up is not None:
                if not _content_type_ok(up.content_type):
                    refused.append((name, 415, f"content type {up.content_type!r} is not an image type"))
                    continue
                if (up.size or 0) > cfg.max_upload_bytes:
                    refused.append((name, 413, _too_big(up.size or 0, cfg.max_upload_bytes)))
                    continue
                data = await up.read()
                if not data:
                    refused.append((name, 422, "empty file (0 bytes)"))
                    continue
                reason = _pixel_check(data, cfg.max_pixels)
                if reason:
                    refused.append((name, 413, reason))
                    continue
            items.append(Item(name, image=data, texts=item_texts))
        return _Parsed(items, refused)
    finally:
        await form.close()


# -- one model, predictions first ---------------------------------------------------------------------------
class ModelLock:
    """One user of the model at a time, predictions first.

    A prediction (``urgent``) waits only for the step in progress; an explanation (``background``)
    waits until no prediction waits, and gives the model up between its steps whenever one does
    (``yield_to_urgent``). So that a steady stream of predictions cannot starve it for ever, an
    explanation that has waited ``share_s`` seconds gets the next step all the same (one step in
    ``share_s``: a small share of the model under full load). The encoder already uses every core
    for one batch, and run kinds need not be thread-safe, so one user at a time is also the fastest.
    """

    def __init__(self, share_s: float = 3.0):
        self._cond = threading.Condition()
        self._held = False
        self._urgent = 0  # predictions waiting
        self._background = 0  # explanations waiting
        self._last_step = time.monotonic()  # when an explanation last got the model
        self.share_s = share_s

    def _due(self) -> bool:
        return self._background > 0 and time.monotonic() - self._last_step >= self.share_s

    def _take(self, urgent: bool, give_up=None) -> bool:
        with self._cond:
            if urgent:
                self._urgent += 1
                ready = lambda: (give_up is not None and give_up()) or (not self._held and not self._due())  # noqa: E731
            else:
                if not self._background:
                    self._last_step = time.monotonic()  # its waiting starts now
                self._background += 1
                ready = lambda: not self._held and (not self._urgent or self._due())  # noqa: E731
            try:
                while not self._cond.wait_for(ready, timeout=None if urgent else 0.05):
                    pass  # an explanation looks again: it may have become due
            finally:
                if urgent:
                    self._urgent -= 1
                else:
                    self._background -= 1
            if give_up is not None and give_up():
                return False
            self._held = True
            if not urgent:
                self._last_step = time.monotonic()
            return True

    def _give(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    @contextlib.contextmanager
    def urgent(self, give_up=None):
        """Hold the model; ``give_up()`` (checked whenever the model is handed on) ends the wait
        without it, and the block gets False."""
        took = self._take(True, give_up)
        try:
            yield took
        finally:
            if took:
                self._give()

    @contextlib.contextmanager
    def background(self):
        self._take(False)
        try:
            yield
        finally:
            self._give()

    def yield_to_urgent(self) -> None:
        """Called by the background holder between steps: let every waiting prediction go first."""
        with self._cond:
            if not self._urgent:
                self._last_step = time.monotonic()
                return
        self._give()
        self._take(False)


class Cancelled(Exception):
    """An explanation whose client left."""


class ExplainJob:
    """One explanation's progress, and the flag that stops it (read by its worker between steps)."""

    def __init__(self):
        self.cancelled = threading.Event()
        self.done, self.total, self.stage = 0, 0, "waiting for the model"

    def progress(self, done: int, total: int, stage: str) -> None:
        if self.cancelled.is_set():
            raise Cancelled
        self.done, self.total, self.stage = done, total, stage

    def event(self) -> dict:
        return {"progress": round(self.done / self.total, 3) if self.total else 0.0, "done": self.done, "total": self.total, "stage": self.stage}


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

    @property
    def method(self) -> str:
        d = self.explainer
        return "gradcam" if d.differentiable and d.spatial else "occlusion"

    def features(self) -> dict:
        """What the page can show of saliency, and why not when it cannot."""
        if self.explainer is None:
            return {"available": False, "reason": self.reason}
        return {"available": True, "method": self.method, "endpoint": "/api/explain"}

    def maps(self, poster: bytes, top_k: int, progress):
        """The top genres' maps (an :class:`~genrekit.inference.explain.Explanation`): the part
        that needs the model. Occlusion uses non-overlapping patches here (7 x 7 positions): a
        quarter of ``genrekit explain``'s passes, so any run's maps take seconds on two cores."""
        from genrekit.inference.explain import ExplainConfig, _occlusion_positions, explain_poster

        window = _occlusion_positions(self.explainer.preprocess.size, 0, 0)[0]
        return explain_poster(self.explainer, poster, ExplainConfig(top_k=top_k, occlusion_stride=window), progress)

    def render(self, e, poster: bytes) -> dict:
        """The maps over the poster (PNG data URLs) with the explain checks; needs no model."""
        import base64

        from genrekit.inference.explain import overlay_png

        image = self.explainer.load_pil(poster)
        out = e.summary()
        del out["poster"]
        for rec in out["genres"]:
            png = overlay_png(e, image, rec["genre"])
            rec["overlay"] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        return out


class Server:
    """One loaded run, the limits it is served with and the lock that keeps predictions first."""

    def __init__(self, run: LoadedRun, cfg: ServeConfig):
        self.run, self.cfg = run, cfg
        self.lock = ModelLock()
        self._waiting: list[tuple[list[Item], Future]] = []  # predictions not yet run
        self._waiting_lock = threading.Lock()
        self.explain_slots = threading.BoundedSemaphore(cfg.max_explains)
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
        cfg = self.cfg
        return {
            "genrekit_version": __version__,
            "run": {"kind": self.run.kind, "name": self.run.name, **self.identity},
            "genres": list(self.run.genres),
            "inputs": list(self.run.inputs),
            "thresholds": self.run.thresholds.to_json(),
            "precision": self.run.precision,
            "limits": {"max_upload_mb": cfg.max_upload_mb, "max_pixels": cfg.max_pixels, "max_batch": cfg.max_batch,
                       "max_batch_mb": cfg.max_batch_mb, "max_pending": cfg.max_pending, "max_explains": cfg.max_explains,
                       "request_timeout_s": cfg.request_timeout},  # fmt: skip
            "features": {"saliency": self.saliency.features(), "similar_posters": self._similar_features()},
        }

    def _similar_features(self) -> dict:
        if self.similar is None:
            return {"available": False, "reason": self.similar_reason}
        return {"available": True, "endpoint": "/api/similar", "training_items": len(self.similar.items),
                "posters_on_disk": len(self.similar.posters)}  # fmt: skip

    def predict(self, items: Sequence[Item]) -> tuple[list[Prediction], list[tuple[str, str]], float]:
        """``predict_items`` for one request. Requests that wait for the model are answered
        together: whichever holds the model next runs every waiting request (up to
        ``max_batch`` items) in one pass, so 8 clients cost about one batched pass, not 8."""
        job: Future = Future()
        with self._waiting_lock:
            self._waiting.append((list(items), job))
        while not job.done():
            with self.lock.urgent(give_up=job.done) as held:  # answered by the holder before us: no need to hold it
                if not held:
                    break
                with self._waiting_lock:
                    take, n = [], 0
                    while self._waiting and (not take or n + len(self._waiting[0][0]) <= self.cfg.max_batch):
                        take.append(self._waiting.pop(0))
                        n += len(take[-1][0])
                if take:
                    self._run_together(take)
        return job.result()

    def _run_together(self, jobs: list) -> None:
        t = time.perf_counter()
        try:
            answers = predict_groups(self.run, [items for items, _ in jobs])
        except BaseException as e:  # every waiting request gets the error, as it would alone
            for _, job in jobs:
                job.set_exception(e)
            return
        ms = (time.perf_counter() - t) * 1000
        for (_, job), (preds, failures) in zip(jobs, answers):
            job.set_result((preds, failures, ms))

    def neighbours(self, poster: bytes, k: int) -> list[dict]:
        with self.lock.urgent():
            return self.similar.search(poster, k)

    def explain(self, poster: bytes, top_k: int, job: ExplainJob) -> tuple[dict, float]:
        """Runs in a worker thread holding an explain slot (released here, when the work stops)."""

        def progress(done: int, total: int, stage: str) -> None:
            job.progress(done, total, stage)
            self.lock.yield_to_urgent()

        try:
            t = time.perf_counter()
            with self.lock.background():
                job.progress(0, 0, "starting")
                e = self.saliency.maps(poster, top_k, progress)
            job.progress(job.total, job.total, "drawing the maps")
            return self.saliency.render(e, poster), (time.perf_counter() - t) * 1000  # outside the lock: predictions go on
        finally:
            self.explain_slots.release()

    def poster(self, item_id: str) -> bytes:
        """A training poster of the knn index, decoded as an image and re-encoded as JPEG."""
        from genrekit.data.images import load_image

        path = self.similar.posters.get(item_id) if self.similar is not None else None
        if path is None:
            raise ApiError(404, f"no training poster with id {item_id!r} in this run's knn index")
        try:
            img = load_image(path, draft=POSTER_SIDE)
        except UnreadableImageError as e:
            raise ApiError(404, f"the training poster of {item_id!r} cannot be read as an image: {e}") from None
        img.thumbnail((POSTER_SIDE, POSTER_SIDE))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        return buf.getvalue()

    def warm_up(self) -> float:
        """One prediction on a generated item, so the encoder is built before the first request."""
        t = time.perf_counter()
        image = None
        if IMAGE_FIELD in self.run.inputs:
            buf = io.BytesIO()
            Image.new("RGB", (64, 96), (128, 64, 32)).save(buf, "PNG")
            image = buf.getvalue()
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
        >>> uvicorn.run(app, host=cfg.host, port=cfg.port, http=TimedH11Protocol)
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
    run_json = {"kind": run.kind, "name": run.name, **server.identity}

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        return _error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

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

    @app.get("/api/info", summary="The run: identity, genres, thresholds, inputs, precision, limits")
    async def info() -> dict:
        return server.info()

    async def _predict(request: Request, batch: bool):
        t0 = time.perf_counter()
        parsed = await _read_form(request, run.inputs, cfg, batch)
        if not batch and parsed.refused:
            _, status, reason = parsed.refused[0]
            raise ApiError(status, reason)
        try:
            preds, failures, model_ms = await run_in_threadpool(server.predict, parsed.items) if parsed.items else ([], [], 0.0)
        except GenrekitError as e:  # the run itself is broken (NaN weights ...): the server's fault, said in one line
            raise ApiError(500, str(e)) from None
        failures = [(n, r) for n, _, r in parsed.refused] + failures  # every run kind names a failure by its item
        if not preds:
            raise ApiError(422, failures[0][1] if len(failures) == 1 else "; ".join(f"{n}: {r}" for n, r in failures[:5]))
        common = {
            "threshold_rule": run.thresholds.to_json(),
            "run": run_json,
            "timing_ms": {"predict": round(model_ms, 2), "total": round((time.perf_counter() - t0) * 1000, 2)},
        }
        if not batch:
            return {**preds[0].to_json(), **common}  # what `genrekit predict --json` writes
        return {"predictions": [p.to_json() for p in preds], "failures": [{"item": n, "reason": r} for n, r in failures], **common}

    @app.post("/api/predict", summary="Genres of one poster (and/or its texts)", openapi_extra=_request_schema(run.inputs, False))
    async def predict(request: Request) -> dict:
        """Multipart form: ``image`` (a poster file) and/or the run's text fields. Returns the genres
        sorted by probability with their thresholds, the predicted set, the threshold rule, the
        run's identity and timing."""
        return await _predict(request, batch=False)

    @app.post("/api/predict/batch", summary="Genres of several posters", openapi_extra=_request_schema(run.inputs, True))
    async def predict_batch(request: Request) -> dict:
        """Multipart form with the fields repeated, one value each per item; unreadable items are
        listed under ``failures`` (422 when none is readable)."""
        return await _predict(request, batch=True)

    async def _one_poster(request: Request) -> bytes:
        """The one poster of the form; a refused poster is the JSON 4xx of /api/predict."""
        parsed = await _read_form(request, (IMAGE_FIELD,), cfg, batch=False)
        if parsed.refused:
            _, status, reason = parsed.refused[0]
            raise ApiError(status, reason)
        return parsed.items[0].image

    @app.post("/api/explain", summary="Saliency maps of a poster's top genres", openapi_extra=_request_schema([IMAGE_FIELD], False))
    async def explain(request: Request, top_k: int = 3, stream: bool = False):
        """Multipart form: ``image``. Returns, for the ``top_k`` most probable genres, the map of
        where the evidence lies, blended over the poster (a PNG data URL), with the method and the
        two checks of ``genrekit explain`` (model randomisation, genre distinctness).

        With ``stream=true`` the answer is JSON lines: ``{"progress": ...}`` while the maps are
        made, then ``{"result": ...}`` (or ``{"error": ...}``). A client that leaves stops the work."""
        if server.saliency.explainer is None:
            raise ApiError(422, f"no saliency maps for this run: {server.saliency.reason}")
        if not 1 <= top_k <= min(len(run.genres), MAX_EXPLAIN):
            raise ApiError(422, f"top_k must be between 1 and {min(len(run.genres), MAX_EXPLAIN)}, got {top_k}")
        t0 = time.perf_counter()
        poster = await _one_poster(request)
        if not server.explain_slots.acquire(blocking=False):
            raise ApiError(503, f"busy: {cfg.max_explains} saliency requests are running or waiting (--max-explains); "
                                f"retry in a few seconds", headers={"Retry-After": "5"})  # fmt: skip
        job = ExplainJob()
        work = asyncio.get_running_loop().run_in_executor(None, server.explain, poster, top_k, job)
        work.add_done_callback(lambda f: f.cancelled() or f.exception())  # a stopped one's Cancelled is expected, not logged

        def answer() -> dict:
            try:
                out, ms = work.result()
            except UnreadableImageError as e:
                raise ApiError(422, str(e)) from None
            except GenrekitError as e:
                raise ApiError(500, str(e)) from None
            return {**out, "run": run_json, "timing_ms": {"explain": round(ms, 2), "total": round((time.perf_counter() - t0) * 1000, 2)}}

        if stream:
            async def lines():
                try:
                    last = None
                    while not (await asyncio.wait({work}, timeout=0.2))[0]:
                        if (ev := job.event()) != last:
                            yield json.dumps(ev) + "\n"
                            last = ev
                    try:
                        yield json.dumps({"result": answer()}) + "\n"
                    except ApiError as e:
                        yield json.dumps({"error": e.detail, "status": e.status_code}) + "\n"
                finally:
                    job.cancelled.set()  # the client left (or the answer is sent): stop the work

            return StreamingResponse(lines(), media_type="application/x-ndjson")
        try:
            while not (await asyncio.wait({work}, timeout=0.5))[0]:
                if await request.is_disconnected():
                    job.cancelled.set()
                    return Response(status_code=499)  # nobody reads it
        finally:
            if not work.done():
                job.cancelled.set()
        return answer()

    @app.post("/api/similar", summary="The most similar training posters", openapi_extra=_request_schema([IMAGE_FIELD], False))
    async def similar(request: Request, k: int = 6) -> dict:
        """Multipart form: ``image``. Returns the ``k`` nearest training items of the run's knn head
        (cosine similarity of the embeddings), with their titles, genres and poster URLs."""
        if server.similar is None:
            raise ApiError(422, f"no similar posters for this run: {server.similar_reason}")
        if not 1 <= k <= MAX_SIMILAR:
            raise ApiError(422, f"k must be between 1 and {MAX_SIMILAR}, got {k}")
        poster = await _one_poster(request)
        try:
            found = await run_in_threadpool(server.neighbours, poster, k)
        except UnreadableImageError as e:
            raise ApiError(422, str(e)) from None
        for n in found:
            n["poster"] = f"/api/poster/{quote(n['id'], safe='')}" if n.pop("has_poster") else None
        return {"neighbours": found}

    @app.get("/api/poster/{item_id:path}", summary="A training poster of the knn index", response_class=Response)
    async def poster(item_id: str) -> Response:
        """Only the posters of the items the run's knn head was trained on, decoded as images and
        sent as JPEG (at most 512 px a side)."""
        data = await run_in_threadpool(server.poster, item_id)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    # A form adds part headers and text fields to the file's bytes: allow a little room for them.
    one = (cfg.max_upload_bytes + MB // 16, f"the limit of {cfg.max_upload_mb:g} MB (--max-upload-mb)")
    many = (int(cfg.max_batch_mb * MB), f"the batch limit of {cfg.max_batch_mb:g} MB (--max-batch-mb)")
    app.add_middleware(BodyLimit, limit_for=lambda path: many if path.endswith("/batch") else one, max_pending=cfg.max_pending)
    return app


def keep_memory_bounded() -> None:
    """Map buffers of 1 MiB and more outside the heap, so they go back to the system when freed.

    glibc raises its mmap threshold after big buffers are freed, so a flood of 10 MB uploads
    then lands in the heap of each thread and RSS only grows (+690 MB after 200 uploads, kept;
    with a fixed threshold +220 MB at the peak and +30 MB after: the flood of ``benchmarks/bench_serve.py``).
    Elsewhere than glibc this does nothing.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def app_from_env() -> FastAPI:
    """The app for one uvicorn worker process: the config comes from ``GENREKIT_SERVE_CONFIG``."""
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise ConfigError(f"{CONFIG_ENV} is not set; start workers with `genrekit serve`")
    cfg = ServeConfig(**json.loads(raw)).check()
    keep_memory_bounded()
    TimedH11Protocol.request_timeout = cfg.request_timeout
    return create_app(load_run(cfg.run, device=cfg.device, precision=cfg.precision), cfg)


def serve(cfg: ServeConfig, log_level: str = "info") -> None:
    """Load the run and serve it with uvicorn until interrupted (``genrekit serve``)."""
    import uvicorn

    cfg.check()
    if not is_loopback(cfg.host):
        log.warning("binding to %s: the API is reachable from other machines and has no authentication", cfg.host)
    keep_memory_bounded()
    TimedH11Protocol.request_timeout = cfg.request_timeout
    # Connections beyond this many get uvicorn's 503; with the request deadline, no client holds one for long.
    options = dict(host=cfg.host, port=cfg.port, log_level=log_level, http=TimedH11Protocol, timeout_keep_alive=5,
                   limit_concurrency=4 * cfg.max_pending + 16)  # fmt: skip
    if cfg.workers == 1:
        app = create_app(load_run(cfg.run, device=cfg.device, precision=cfg.precision), cfg)
        uvicorn.run(app, **options)
        return
    load_run(cfg.run, device=cfg.device, precision=cfg.precision)  # fail here, in one line, rather than in every worker
    os.environ[CONFIG_ENV] = json.dumps(asdict(cfg))
    uvicorn.run("genrekit_cli.apps.serve:app_from_env", factory=True, workers=cfg.workers, **options)
