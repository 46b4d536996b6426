"""Extraction: run a frozen encoder once over a collection into a feature store.

Batched, decoding in worker processes while the model runs, resumable after a crash (rows are
keyed by sample id; see :mod:`genrekit.store`), and every unreadable input is recorded with its
reason instead of stopping the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from genrekit.backbones import Encoder, Preprocess, create_encoder
from genrekit.backbones.base import resolve_device, serving_precision
from genrekit.backbones.decode import decode_jpegs, plain_jpeg_bytes
from genrekit.backbones.preprocess import DECODERS
from genrekit.data.manifest import TEXT_FIELDS, CsvColumns, Manifest, ManifestSource, Sample, sample_text
from genrekit.data.vocab import VocabConfig, apply_vocabulary
from genrekit.errors import ConfigError, GenrekitError, ManifestError, StoreMismatchError, UnreadableImageError
from genrekit.progress import ProgressFn
from genrekit.features import l2_normalise
from genrekit.store import FeatureStore, StoreHeader, StoreWriter, store_lock
from genrekit.system import cpu_count

log = logging.getLogger(__name__)
MODALITIES = ("image", "text")
ENGINES = ("local", "ray")
# Parts are flushed at least this often, so a crash loses at most this much work.
FLUSH_ROWS, FLUSH_SECONDS = 512, 10.0


@dataclass(frozen=True)
class ExtractConfig:
    """Everything ``genrekit extract`` takes; fields map one-to-one to its flags.

    The resolved config is written into the store (attribute ``config``).
    """

    backbone: str
    data: str  # the manifest
    out: str  # the store to create or extend
    weights: str | None = None  # tag, local file, or "none"; None = the backbone's default tag
    modality: str = "image"
    text_field: str = "plot"  # --field; text modality: plot, title or any other text column of the manifest
    format: str = "auto"  # manifest format
    columns: CsvColumns | None = None  # --columns: column names of a generic CSV
    genre_sep: str | None = None  # --genre-sep: genre separator of a generic CSV; None detects it
    batch_size: int | None = None  # None = the backbone's measured best for the device
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (GPU): auto is bf16 where the GPU or CPU has it natively, else fp16 on GPU, fp32 on CPU
    resize: str | None = None  # squash | center-crop | letterbox; None = squash (measured best on posters)
    decoder: str | None = None  # torchvision (libjpeg-turbo, uint8 resize) | pil (the older path); None = torchvision
    layers: str | None = None  # last | all | N,M: pooled stages of a CNN, concatenated; None = the backbone's (spec.layers)
    layer_stats: str = "mean,std"  # with --layers: mean or mean,std per stage
    workers: int | None = None  # decode processes; None = spare cores on GPU, 0-1 on CPU (_workers_and_threads)
    threads: int | None = None  # torch CPU threads; None = the cores the decode workers leave
    decode_thread: bool = False  # with no decode processes: decode the next batch in a thread while the model runs
    streams: int | None = None  # CPU images: batches encoded side by side, each decoding its own on its share of the threads; None = the backbone's with no decode process (_streams)
    limit: int | None = None  # only the first N samples of the manifest
    dtype: str = "float32"  # stored embedding type: float32 or float16
    normalize: str | None = None  # none | l2; None = the backbone's default
    split: str | None = None  # an id,split CSV to store with the features
    vocab: VocabConfig = field(default_factory=VocabConfig)  # --top-k, --min-count, --genres, --other, synonyms
    engine: str = "local"  # local | ray
    ray_address: str | None = None  # --ray-address: auto, ray://HOST:PORT; None starts a local Ray
    num_gpus_per_worker: float = 0.0  # --num-gpus-per-worker: GPUs per encoder actor on a Ray cluster

    def validate(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.num_gpus_per_worker < 0:
            raise ConfigError(f"--num-gpus-per-worker must be 0 or more, got {self.num_gpus_per_worker}")
        if self.modality not in MODALITIES:
            raise ConfigError(f"--modality {self.modality!r} is not one of {', '.join(MODALITIES)}")
        if not self.text_field or not self.text_field.strip():
            raise ConfigError("--field needs a column name: plot, title or another text column of the manifest")
        if self.dtype not in ("float32", "float16"):
            raise ConfigError(f"--dtype {self.dtype!r} is not float32 or float16")
        if self.normalize not in (None, "none", "l2"):
            raise ConfigError(f"--normalize {self.normalize!r} is not none or l2")
        for name in ("batch_size", "limit"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be 0 or more, got {self.workers}")
        if self.decoder not in (None, *DECODERS):
            raise ConfigError(f"--decoder {self.decoder!r} is not one of {', '.join(DECODERS)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        if self.streams is not None and self.streams < 1:
            raise ConfigError(f"--streams must be at least 1, got {self.streams}")
        if self.streams is not None and self.streams > 1:
            clash = ("--modality text" if self.modality == "text" else "--engine ray" if self.engine == "ray"
                     else "--decode-thread" if self.decode_thread else "--workers" if self.workers
                     else f"--device {self.device}" if self.device.startswith("cuda") else None)
            if clash:
                raise ConfigError(f"--streams {self.streams} applies to images encoded on this machine's CPU, each stream "
                                  f"decoding its own: leave out {clash}, or --streams")
        if self.modality == "text" and self.layers not in (None, "last"):
            raise ConfigError("--layers applies to image backbones (CNNs); text stores use the last layer")

    def build_encoder(self) -> Encoder:
        """The encoder these options name (the driver's, and each Ray actor's)."""
        image = self.modality == "image"
        return create_encoder(self.backbone, self.weights, self.device, self.precision, self.resize,
                              self.decoder if image else None, self.layers if image else "last", self.layer_stats)


@dataclass
class ExtractReport:
    """What an extraction did, for the CLI summary and for benchmarks."""

    store: str
    rows: int  # rows in the store now
    encoded: int  # rows encoded by this run
    skipped: int  # samples already in the store (or recorded as failed) before this run
    failures: list[tuple[str, str]] = field(default_factory=list)  # (id, reason), this run's
    all_failures: int = 0  # failures recorded in the store, this run's and earlier ones
    seconds: dict[str, float] = field(default_factory=dict)  # read (waiting for input; streams: decoding), encode, write, total

    @property
    def items_per_second(self) -> float:
        return self.encoded / self.seconds["total"] if self.seconds.get("total") else 0.0


def store_header(encoder: Encoder, modality: str, genres: Sequence[str], normalize: str | None = None,
                 dtype: str = "float32", config: dict | None = None, text_field: str | None = None) -> StoreHeader:
    """The header a store made by ``encoder`` carries (what must match to extend or use it).

    ``text_field`` (text stores) is the manifest column embedded; it goes into the preprocessing,
    which is part of the identity, so a title store can never extend, or feed a head of, a plot
    store. Stores made before fields were recorded have none and read as plot stores.
    """
    if modality == "image" and not encoder.has_image:
        raise ConfigError(f"{encoder.spec.name} is a text encoder; use --modality text")
    if modality == "text" and not encoder.has_text:
        raise ConfigError(f"{encoder.spec.name} has no text tower; pick a text or open_clip backbone for --modality text")
    pre = encoder.preprocess.to_dict() if modality == "image" and encoder.preprocess else encoder.text_preprocessing()
    if modality == "text" and text_field:
        pre = {**pre, "field": text_field}
    return StoreHeader(
        encoder=encoder.identity,
        preprocessing=pre,
        normalisation=normalize or encoder.spec.normalisation,
        modality=modality,
        dim=encoder.dim,
        dtype=dtype,
        genres=tuple(genres),
        config=config or {},
    )


class _ImageFiles(Dataset):
    """Decodes and resizes to uint8 (in worker processes, or in the main one); failures travel as
    reasons, not exceptions. Batches stay uint8 until the encoder normalises them in one step."""

    def __init__(self, paths: Sequence[str | None], preprocess: Preprocess) -> None:
        self.paths, self.preprocess = list(paths), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return (i, *decode_item(self.paths[i], self.preprocess))


def decode_item(path: str | bytes | None, preprocess: Preprocess) -> tuple[torch.Tensor | None, str | None]:
    """One poster (a path, or its bytes) decoded and resized to a uint8 tensor, or the reason it
    cannot be: ``(tensor, None)`` or ``(None, reason)``.

    The same function runs in local decode workers, in a cluster's decode tasks and for new items
    (:func:`read_images`), so failures are recorded with the same reasons everywhere.
    """
    try:
        if path is None:
            raise UnreadableImageError("no image in the manifest")
        return preprocess.load(path), None
    except UnreadableImageError as e:
        return None, str(e)
    except Exception as e:  # a worker must never die on one bad file
        return None, f"cannot decode ({type(e).__name__}: {e})"


class _JpegBytes(_ImageFiles):
    """For decoding on the GPU: plain JPEGs travel as bytes, anything else is read here (CPU path)."""

    def __getitem__(self, i: int):
        data = plain_jpeg_bytes(self.paths[i]) if self.paths[i] else None
        return (i, data, None) if data is not None else super().__getitem__(i)


def _device_decoded(items, preprocess: Preprocess, paths: Sequence[str | None], device: torch.device):
    """Items of :class:`_JpegBytes` -> ``(ok, uint8 batch on device, bad)``: one batched nvJPEG call,
    resized on the device; what it refuses is read on CPU, which gives the fallback or the reason."""
    jpegs = [(i, x) for i, x, _ in items if isinstance(x, bytes)]
    decoded = dict(zip([i for i, _ in jpegs], decode_jpegs([x for _, x in jpegs], device))) if jpegs else {}
    ok, xs, bad = [], [], []
    for i, x, reason in items:
        if isinstance(x, bytes):
            x = decoded[i]
            if x is not None:
                x = preprocess.resize_uint8(x)
            else:
                _, x, reason = _ImageFiles([paths[i]], preprocess)[0]
        if x is None:
            bad.append((i, reason))
        else:
            ok.append(i)
            xs.append(x.to(device, non_blocking=True))
    return ok, (torch.stack(xs) if xs else None), bad


def _collate(items):
    ok = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, r) for i, _, r in items if r is not None]
    xs = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], xs, bad


def _workers_and_threads(config: ExtractConfig, on_gpu: bool) -> tuple[int, int]:
    """Decode processes and torch threads.

    On GPU the CPU only decodes: one process per spare core. On CPU the model is the work, and
    torch's threads wait for each other at every layer, so a decode process competing for their
    cores slows every layer. Measured on 2 cores (benchmarks/README.md, MobileNetV2 bf16):
    decoding in the main process with 2 torch threads ran at 107 posters/s, one decode worker
    beside 2 threads at 86, one worker beside 1 thread at 78. With more cores, one worker gets a
    core of its own. ``--decode-thread`` (decoding the next batch in a thread beside torch's) is
    off by default: measured slower on 2 cores (MobileNetV2 fp32 six stages, end to end / model
    only 0.70 with it, 0.60 with one decode process, 0.93 without, once the freed memory was
    kept; at idle priority no better: torch's threads leave no idle core to fill;
    benchmarks/README.md, "Extraction"). ``--streams N`` decodes in its streams: no process.
    """
    cores = cpu_count()
    if config.workers is not None:
        workers = config.workers
    elif on_gpu:
        workers = max(1, min(8, cores - 1))
    else:
        workers = 0 if cores <= 2 or (config.streams or 1) > 1 else 1
    return workers, config.threads or max(1, cores - workers)


def _streams(config: ExtractConfig, encoder: Encoder, on_gpu: bool, workers: int, threads: int) -> int:
    """How many streams encode side by side (``_encode_in_streams``), at most one a thread.

    ``--streams`` when given. Else the backbone's ``cpu_streams`` for CPU images decoded in this
    process (no decode process or thread, so up to 2 cores): there MobileNetV2's 2 streams ran
    level with one or up to 16% faster end to end (AMD EPYC fp32, a Xeon in fp32 and bf16;
    benchmarks/README.md, "Streams, and glibc's arenas"). With more cores one stream keeps its
    decode process (streams were not measured there).
    """
    if config.streams is None:
        alone = config.modality == "image" and not (on_gpu or workers or config.decode_thread)
        return min(encoder.spec.cpu_streams, threads) if alone else 1
    if config.streams > 1 and on_gpu:  # "auto" resolved to a GPU (an explicit cuda is refused by validate)
        raise ConfigError(f"--streams {config.streams} applies to CPU extraction; this run encodes on {encoder.device}")
    if config.streams > threads:
        log.warning("--streams %d: %d torch threads make %d streams of one thread", config.streams, threads, threads)
    return min(config.streams, threads)


def thread_shares(threads: int, streams: int) -> list[int]:
    """Torch threads of each stream: every thread used (3 threads, 2 streams: 2 + 1)."""
    return [threads // streams + (k < threads % streams) for k in range(streams)]


@contextlib.contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _prefetched(batches):
    """Make the next batch in a thread while the caller encodes this one (decode_jpeg and the
    resize kernels release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    it = iter(batches)
    with ThreadPoolExecutor(1, thread_name_prefix="genrekit-decode") as pool:
        nxt = pool.submit(next, it, None)
        while (batch := nxt.result()) is not None:
            nxt = pool.submit(next, it, None)
            yield batch


def _image_batches(samples: Sequence[Sample], encoder: Encoder, batch_size: int, workers: int, thread: bool = False):
    ds = _ImageFiles([s.image for s in samples], encoder.preprocess)
    if encoder.preprocess.decoder == "nvjpeg":
        paths = [s.image for s in samples]
        loader = DataLoader(_JpegBytes(paths, encoder.preprocess), batch_size=batch_size, num_workers=workers,
                            collate_fn=list, prefetch_factor=4 if workers else None)
        for items in loader:
            yield _device_decoded(items, encoder.preprocess, paths, encoder.device)
        return
    if thread and not workers:
        yield from _prefetched(DataLoader(ds, batch_size=batch_size, num_workers=0, collate_fn=_collate))
        return
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=encoder.device.type == "cuda",
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    yield from loader


def _text_batches(samples: Sequence[Sample], batch_size: int, text_field: str = "plot"):
    for start in range(0, len(samples), batch_size):
        chunk = range(start, min(start + batch_size, len(samples)))
        texts = {i: sample_text(samples[i], text_field) for i in chunk}
        ok = [i for i in chunk if texts[i]]
        bad = [(i, f"no {text_field} (empty or missing)") for i in sorted(set(chunk) - set(ok))]
        yield ok, [texts[i] for i in ok], bad


@dataclass
class Plan:
    """What one extraction run will do: the samples still to encode, the encoder, the store writer."""

    config: ExtractConfig
    genres: list[str]
    samples: list[Sample]
    encoder: Encoder
    header: StoreHeader
    writer: StoreWriter
    todo: list[Sample]
    started: float = field(default_factory=time.perf_counter)

    @property
    def skipped(self) -> int:
        return len(self.samples) - len(self.todo)


def plan_extraction(config: ExtractConfig, manifest: Manifest | None = None) -> Plan:
    """Read the manifest, build the encoder and the store header, and find what is left to do."""
    config.validate()
    started = time.perf_counter()
    source = ManifestSource(str(Path(config.data).resolve()), config.format, config.columns, config.genre_sep)
    manifest = manifest or source.read()
    if not manifest.samples:  # a header-only manifest would otherwise make an empty store
        raise ManifestError(f"manifest {manifest.source or config.data} has no rows (only a header?); nothing to extract")
    for w in manifest.warnings:
        log.warning(w)
    manifest, vocab_report = apply_vocabulary(manifest, config.vocab)
    genres = manifest.vocabulary()  # of the whole manifest, so --limit runs extend the same store
    samples = manifest.samples[: config.limit] if config.limit else manifest.samples
    encoder = config.build_encoder()
    if config.modality == "image" and encoder.preprocess and encoder.preprocess.decoder == "nvjpeg" and encoder.device.type != "cuda":
        raise ConfigError("--decoder nvjpeg decodes on a CUDA GPU; on CPU use --decoder torchvision (a store "
                          "made with nvjpeg is extended on a GPU only)")
    resolved = asdict(config) | {
        "data": source.path,  # absolute, so every command re-reads it from any directory (ManifestSource)
        "vocabulary_report": asdict(vocab_report),
        "weights": encoder.identity["weights"],
        "resize": encoder.preprocess.resize if encoder.preprocess and config.modality == "image" else None,
        "decoder": encoder.preprocess.decoder if encoder.preprocess and config.modality == "image" else None,
    }
    text_field = config.text_field if config.modality == "text" else None
    if text_field and text_field not in TEXT_FIELDS and not any(text_field in s.extra for s in samples):
        raise ConfigError(
            f"--field {text_field!r}: no sample of {config.data} has a non-empty {text_field!r} column; "
            f"use plot, title or a text column of the manifest"
        )
    header = store_header(encoder, config.modality, genres, config.normalize, config.dtype, resolved, text_field)
    _refuse_new_layers_default(config, encoder)
    writer = StoreWriter(config.out, header)
    genres = list(writer.header.genres)  # the store's column order when it has these genres in another order
    todo = [s for s in samples if s.id not in writer.done_ids]
    if len(todo) < len(samples):
        log.info("resuming %s: %d of %d samples already done", config.out, len(samples) - len(todo), len(samples))
    return Plan(config, list(genres), list(samples), encoder, header, writer, todo, started)


def _refuse_new_layers_default(config: ExtractConfig, encoder: Encoder) -> None:
    """A last-layer store of a backbone whose default is now multi-layer: say which flag extends it."""
    if config.layers is not None or not encoder.layers or not Path(config.out).is_file():
        return
    try:
        old = FeatureStore(config.out).header
    except GenrekitError:
        return  # StoreWriter names what is wrong with it
    if old.encoder.get("name") == encoder.spec.name and not old.encoder.get("layers"):
        raise StoreMismatchError(
            f"{config.out} holds {encoder.spec.name}'s last-layer features, and {encoder.spec.name} now extracts "
            f"--layers {encoder.spec.layers} by default (measured better with the heads): extend it with --layers last, "
            f"or write to another --out"
        )


class PartSink:
    """Collects encoded rows and failures (by index into ``plan.todo``) and writes them as crash-safe parts.

    Rows may arrive in any order (a cluster returns batches as they finish): each part carries
    its own ids, so the store never relies on order.
    """

    def __init__(self, plan: Plan, times: dict[str, float]) -> None:
        self.plan, self.times = plan, times
        self.genre_index = {g: k for k, g in enumerate(plan.genres)}
        self.failures: list[tuple[str, str]] = []
        self.done = 0
        self._idx: list[int] = []
        self._emb: list[np.ndarray] = []
        self._fail: list[tuple[str, str]] = []
        self._last = time.perf_counter()

    def add(self, idx: Sequence[int], emb: np.ndarray | None, bad: Sequence[tuple[int, str]]) -> None:
        todo, modality = self.plan.todo, self.plan.config.modality
        if len(idx):
            self._idx.extend(int(i) for i in idx)
            self._emb.append(np.asarray(emb, dtype=np.float32))
        for i, reason in bad:
            s = todo[int(i)]
            self._fail.append((s.id, reason))
            self.failures.append((s.id, reason))
            log.warning("%s: %s (%s)", s.id, reason, s.image if modality == "image" else self.plan.config.text_field)
        self.done += len(idx) + len(bad)
        if len(self._idx) >= FLUSH_ROWS or time.perf_counter() - self._last > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if not (self._idx or self._fail):
            return
        t0 = time.perf_counter()
        plan = self.plan
        rows = [plan.todo[i] for i in self._idx]
        labels = np.zeros((len(rows), len(plan.genres)), np.uint8)
        for r, s in enumerate(rows):
            labels[r, [self.genre_index[g] for g in s.genres if g in self.genre_index]] = 1
        emb = np.concatenate(self._emb) if self._emb else np.zeros((0, plan.header.dim), np.float32)
        if plan.header.normalisation == "l2":
            emb = l2_normalise(emb)
        plan.writer.write_part([s.id for s in rows], emb, labels, [s.title for s in rows], [s.year for s in rows], self._fail)
        self._idx, self._emb, self._fail = [], [], []
        self._last = time.perf_counter()
        self.times["write"] = self.times.get("write", 0.0) + self._last - t0


def finish(plan: Plan, sink: PartSink, times: dict[str, float]) -> ExtractReport:
    """Flush what is left, turn the parts into the store, attach the split, and report."""
    sink.flush()
    t0 = time.perf_counter()
    store = plan.writer.finalize()
    if plan.config.split:
        from genrekit.data.split import read_split_file

        store.write_split(read_split_file(plan.config.split))
    times["write"] = times.get("write", 0.0) + time.perf_counter() - t0
    times["total"] = time.perf_counter() - plan.started
    return ExtractReport(
        store=str(store.path),
        rows=len(store),
        encoded=sink.done - len(sink.failures),
        skipped=plan.skipped,
        failures=sink.failures,
        all_failures=len(store.failures),
        seconds=times,
    )


def extract(config: ExtractConfig, progress: ProgressFn | None = None, manifest: Manifest | None = None) -> ExtractReport:
    """Encode every sample of a manifest into a feature store, resuming where a previous run stopped.

    Args:
        config: what to extract, from where, into which store; ``config.engine`` picks this
            machine (``local``) or a Ray cluster (``ray``, :mod:`genrekit.extraction.ray_engine`).
        progress: called as ``progress("encode", done, total)`` after each batch.
        manifest: an already-read manifest (else ``config.data`` is read).

    Example:
        >>> report = extract(ExtractConfig(backbone="mobilenet_v2", weights="mobilenet.pth",
        ...                                data="posters/labels.csv", out="posters.h5"))  # doctest: +SKIP
        >>> report.rows, len(report.failures)
        (6000, 0)
    """
    config.validate()
    with store_lock(config.out):  # a second extract into this store is refused, naming this pid
        config = with_recorded_weights(config)
        if config.engine == "ray":
            from genrekit.extraction.ray_engine import extract_on_ray

            return extract_on_ray(config, progress, manifest)
        return _extract_here(config, progress, manifest)


def recorded_header(out: str | Path) -> StoreHeader | None:
    """The header of the store being extended or resumed (the finished store's, else its parts'), or ``None``."""
    out = Path(out)
    try:
        if out.is_file():
            return FeatureStore(out).header
        hp = out.with_name(out.name + ".parts") / "header.json"
        if hp.is_file():
            return StoreHeader.from_json(json.loads(hp.read_text(encoding="utf-8")))
    except (GenrekitError, OSError, ValueError, TypeError, KeyError):
        return None  # StoreWriter names what is wrong with it
    return None


def with_recorded_weights(config: ExtractConfig) -> ExtractConfig:
    """Without ``--weights``, extending or resuming a store uses the weights the store records.

    A store made from a local checkpoint records its path and sha256; one made from a tag records
    the tag. Without this, a re-run would fall back to the backbone's default tag (and try to
    download it) only to be refused for a weights mismatch.
    """
    if config.weights is not None:
        return config
    header = recorded_header(config.out)
    if header is None or header.encoder.get("name") != config.backbone:
        return config
    enc = header.encoder
    path, tag = enc.get("weights_path"), enc.get("weights")
    if path:
        if not Path(path).is_file():
            raise StoreMismatchError(
                f"{config.out} was made with the weights file {path}, which is not there any more; "
                f"pass the same checkpoint with --weights PATH (its sha256 is {str(enc.get('weights_sha256'))[:12]}…)"
            )
        weights = str(path)
    elif tag and not str(tag).startswith("file:"):
        weights = str(tag)
    else:
        return config
    log.info("extending %s with the weights it records: %s", config.out, weights)
    return replace(config, weights=weights)


def _extract_here(config: ExtractConfig, progress: ProgressFn | None, manifest: Manifest | None) -> ExtractReport:
    """The local engine: decode and encode on this machine."""
    plan = plan_extraction(config, manifest)
    todo, encoder = plan.todo, plan.encoder
    on_gpu = encoder.device.type == "cuda"
    workers, threads = _workers_and_threads(config, on_gpu)
    streams = _streams(config, encoder, on_gpu, workers, threads)
    batch_size = config.batch_size or (256 if on_gpu else max(1, encoder.spec.cpu_batch_size // streams))
    workers = workers if len(todo) > batch_size else 0
    times = {"start": time.perf_counter() - plan.started, "read": 0.0, "encode": 0.0, "write": 0.0}
    sink = PartSink(plan, times)
    if progress:
        progress("encode", 0, len(todo))
    if streams > 1:
        _encode_in_streams(todo, encoder, batch_size, thread_shares(threads, streams), sink, progress, times)
        return finish(plan, sink, times)
    if config.modality == "image":
        batches = _image_batches(todo, encoder, batch_size, workers, config.decode_thread)
    else:
        batches = _text_batches(todo, batch_size, config.text_field)
    t_wait = time.perf_counter()
    with _torch_threads(threads):
        for ok_idx, inputs, bad in batches:
            t0 = time.perf_counter()
            times["read"] += t0 - t_wait
            emb = None
            if ok_idx:
                emb = encoder.encode_images(inputs) if config.modality == "image" else encoder.encode_texts(inputs)
            times["encode"] += time.perf_counter() - t0
            sink.add(ok_idx, emb, bad)
            if progress:
                progress("encode", sink.done, len(todo))
            t_wait = time.perf_counter()
    return finish(plan, sink, times)


def _encode_in_streams(todo: Sequence[Sample], encoder: Encoder, batch_size: int, threads: Sequence[int],
                       sink: PartSink, progress: ProgressFn | None, times: dict[str, float]) -> None:
    """Encode ``todo``'s images in one thread per entry of ``threads`` (its torch threads), each
    decoding its next batch and running the network (decode_jpeg, the resize kernels and torch's
    operators release the GIL), so one stream decodes while another computes.

    Batches reach ``sink`` in the order of ``todo`` whichever stream finishes first, so the store is
    the same as one stream's. A failing stream, or an interrupt, stops the others before their
    next forward, and the first failure is raised. ``times`` gets each stream's decoding
    (``read``) and encoding, averaged over the streams, so the parts still add up to the wall time.
    """
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    ds = _ImageFiles([s.image for s in todo], encoder.preprocess)
    starts = iter(enumerate(range(0, len(ds), batch_size)))
    lock, stop = threading.Lock(), threading.Event()
    finished: dict[int, tuple] = {}  # batch number -> (ok, emb, bad), waiting for the batches before it
    following = 0  # the next batch number the sink takes
    streams = len(threads)

    def stream(n_threads: int) -> None:
        nonlocal following
        torch.set_num_threads(n_threads)  # this thread's own count (OpenMP keeps one per thread)
        try:
            while not stop.is_set():
                with lock:
                    number, start = next(starts, (None, 0))
                if number is None:
                    return
                t0 = time.perf_counter()
                ok, xs, bad = _collate([ds[i] for i in range(start, min(start + batch_size, len(ds)))])
                if stop.is_set():
                    return
                t1 = time.perf_counter()
                emb = encoder.encode_images(xs) if ok else None
                t2 = time.perf_counter()
                with lock:
                    times["read"] += (t1 - t0) / streams
                    times["encode"] += (t2 - t1) / streams
                    finished[number] = (ok, emb, bad)
                    while following in finished:
                        sink.add(*finished.pop(following))
                        following += 1
                        if progress:
                            progress("encode", sink.done, len(todo))
        except BaseException:
            stop.set()
            raise

    before = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(streams, thread_name_prefix="genrekit-stream") as pool:
            futures = [pool.submit(stream, n) for n in threads]
            try:
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                for f in done:
                    if f.exception() is not None:
                        raise f.exception()
            finally:
                stop.set()
    finally:
        torch.set_num_threads(before)  # the count new threads start with, which the streams set


# -- using a store's encoder on new inputs (predict, zero-shot) --------------------------------
def encoder_from_header(header: StoreHeader, device: str = "cpu", precision: str = "auto") -> Encoder:
    """Rebuild the encoder that made a store, refusing if its weights are not the same ones.

    ``precision`` (``auto``, ``fp32``, ``bf16``): see :func:`~genrekit.backbones.base.serving_precision`;
    ``auto`` is the store's own, in fp32 where this machine lacks it. The encoder's
    ``precision`` attribute says which one is in use.

    Example:
        >>> store = FeatureStore("posters.h5")  # doctest: +SKIP
        >>> enc = encoder_from_header(store.header)
    """
    ident = dict(header.encoder)
    weights = ident.get("weights_path") or ident.get("weights")
    if str(weights).startswith("file:") and not ident.get("weights_path"):
        raise StoreMismatchError(f"the store's weights file {weights[5:]} is not known on this machine; pass its path")
    if weights and str(weights).startswith("/") and not Path(weights).exists():
        raise StoreMismatchError(
            f"the store was made with weights {weights}, which no longer exist; put the file back or re-extract"
        )
    resize = header.preprocessing.get("resize") if header.modality == "image" else None
    # Stores made before the torchvision path recorded no decoder: they were made with PIL.
    decoder = header.preprocessing.get("decoder", "pil") if header.modality == "image" else None
    # The store's precision where this device has it (a bf16 store is read in fp32 on a CPU without
    # native bf16, a GPU's fp16 store in fp32 on CPU); predictions tolerate the ~0.999 cosine
    # between precisions, extending a store does not.
    precision = serving_precision(precision, resolve_device(device), ident.get("precision", "fp32"))
    encoder = create_encoder(ident["name"], weights, device, precision=precision, resize=resize, decoder=decoder,
                             layers=ident["layers"].split(",") if ident.get("layers") else "last",
                             layer_stats=ident.get("layer_stats"))
    new = store_header(encoder, header.modality, header.genres, header.normalisation, header.dtype,
                       text_field=header.preprocessing.get("field") if header.modality == "text" else None)
    diff = [d for d in header.diff(new) if d[0] != "encoder.precision"]
    if diff:
        field_, a, b = diff[0]
        raise StoreMismatchError(f"the encoder rebuilt for this store differs in {field_}: store has {a!r}, now {b!r}")
    return encoder


ImageSource = str | os.PathLike | bytes  # a poster file, or its bytes (an upload held in memory)


def read_images(
    preprocess: Preprocess, sources: Sequence[ImageSource | None], threads: int = 1
) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """Decode and resize new images exactly as a store's were (:func:`decode_item`).

    The one input path for items no store holds: fine-tuning decodes its posters with it, and
    every run kind predicting a poster (``predict``, ``serve``, ``evaluate --data``) too, so the
    pixels a network trains on are the pixels it predicts from.

    Args:
        preprocess: the encoder's (or the fine-tuned network's) preprocessing.
        sources: paths or bytes; ``None`` where an item has no image.
        threads: decode in this many threads (decode_jpeg and the resize kernels release the GIL).

    Returns:
        ``(pixels, ok, failures)``: uint8 ``(len(ok), 3, S, S)`` of the readable sources, their
        indices into ``sources``, and ``(index, reason)`` for the others, in order.
    """
    def one(src):
        return decode_item(src if isinstance(src, (bytes, bytearray, memoryview)) or src is None else os.fspath(src), preprocess)

    if threads > 1 and len(sources) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads, thread_name_prefix="genrekit-decode") as pool:
            decoded = list(pool.map(one, sources))
    else:
        decoded = [one(s) for s in sources]
    ok = [i for i, (x, _) in enumerate(decoded) if x is not None]
    failures = [(i, reason) for i, (x, reason) in enumerate(decoded) if x is None]
    s = preprocess.size
    pixels = torch.stack([decoded[i][0] for i in ok]) if ok else torch.zeros((0, 3, s, s), dtype=torch.uint8)
    return pixels, ok, failures


def embed_images(
    encoder: Encoder, header: StoreHeader, sources: Sequence[ImageSource | None], batch_size: int = 16
) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Embed new images (paths or bytes) exactly as the store with ``header`` was made.

    Returns:
        ``(X, ok, failures)``: float32 embeddings of the readable images, their indices into
        ``sources``, and ``(index, reason)`` for the others; callers name failures by their item.
    """
    pixels, ok, failures = read_images(encoder.preprocess, sources)
    chunks = [encoder.encode_images(pixels[i : i + batch_size]) for i in range(0, len(ok), batch_size)]
    X = np.concatenate(chunks) if chunks else np.zeros((0, header.dim), np.float32)
    return (l2_normalise(X) if header.normalisation == "l2" else X), ok, failures


def embed_texts(encoder: Encoder, header: StoreHeader, texts: Sequence[str]) -> np.ndarray:
    """Embed texts as a text store with ``header`` was made (same encoder and normalisation)."""
    X = encoder.encode_texts(list(texts))
    return l2_normalise(X) if header.normalisation == "l2" else X
