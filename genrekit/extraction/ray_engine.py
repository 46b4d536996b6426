"""Extraction on a Ray cluster (``genrekit extract --engine ray``).

Ray Data does the distribution: the samples still to encode (the same resume rule as local
extraction: ids already in the store or its part files are skipped) become a dataset; CPU tasks
decode and preprocess posters with the same :func:`~genrekit.extraction.core.decode_item` as
local decoding (so failures carry the same reasons); a pool of actors, each loading the encoder
once (one per GPU with ``--num-gpus-per-worker 1``, else one per ``--workers`` CPU slot), encodes
them. The driver receives the embeddings as they finish, in any order, and writes the same
crash-safe part files keyed by sample id that local extraction writes, then finalises the store.

Killing the driver loses at most the batches not yet in a part file; re-running the same command
resumes from the parts. A killed worker is restarted by Ray and its batch retried. Ray's own job
checkpointing (beta) is not needed: the store is the checkpoint.

Ray is an optional extra: ``pip install 'genrekit[ray]'``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence

import numpy as np

from genrekit.data.manifest import Manifest, sample_text
from genrekit.errors import ConfigError, StoreMismatchError
from genrekit.extraction.core import ExtractConfig, ExtractReport, PartSink, _torch_threads, decode_item, finish, plan_extraction
from genrekit.progress import ProgressFn
from genrekit.system import cpu_count

log = logging.getLogger(__name__)

INSTALL_HINT = "--engine ray needs Ray Data: pip install 'genrekit[ray]' (or pip install 'ray[data]')"


def import_ray():
    """The ``ray`` module, or a one-line :class:`ConfigError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"{INSTALL_HINT} ({e.name or 'ray'} is not installed)") from None
    return ray


def _decode_batch(batch: dict, preprocess) -> dict:
    """A Ray Data task: paths -> decoded, resized uint8 tensors, or the reason each one failed."""
    size = preprocess.size
    x = np.zeros((len(batch["i"]), 3, size, size), np.uint8)
    reasons = []
    for k, path in enumerate(batch["path"]):
        t, reason = decode_item(str(path) if path else None, preprocess)
        if t is not None:
            x[k] = t.numpy()
        reasons.append(reason or "")
    return {"i": batch["i"], "x": x, "reason": np.array(reasons, dtype=object)}


class _Encode:
    """A Ray Data actor: loads the encoder once, then encodes batches (images or texts)."""

    def __init__(self, config: ExtractConfig, identity: dict, threads: int) -> None:
        import torch

        self.threads = threads
        torch.set_num_threads(threads)
        self.encoder = config.build_encoder()
        self.modality = config.modality
        mine = self.encoder.identity
        for k in sorted(set(mine) | set(identity)):
            if k not in ("device",) and mine.get(k) != identity.get(k):
                raise StoreMismatchError(
                    f"the encoder on Ray worker {os.uname().nodename} differs from the driver's in encoder.{k}: "
                    f"{mine.get(k)!r} vs {identity.get(k)!r} (the weights file must be the same on every node)"
                )

    def __call__(self, batch: dict) -> dict:
        import torch

        reasons = np.asarray(batch["reason"], dtype=object)
        ok = reasons == ""
        emb = np.zeros((len(reasons), self.encoder.dim), np.float32)
        if ok.any():
            with _torch_threads(self.threads):
                if self.modality == "image":
                    emb[ok] = self.encoder.encode_images(torch.from_numpy(np.ascontiguousarray(batch["x"][ok])))
                else:
                    emb[ok] = self.encoder.encode_texts([str(t) for t in np.asarray(batch["text"], dtype=object)[ok]])
        return {"i": batch["i"], "emb": emb, "reason": reasons}


def _rows(todo, modality: str, text_field: str) -> list[dict]:
    if modality == "image":
        return [{"i": k, "path": s.image or ""} for k, s in enumerate(todo)]
    texts = [sample_text(s, text_field) for s in todo]
    return [
        {"i": k, "text": t or "", "reason": "" if t and t.strip() else f"no {text_field} (empty or missing)"}
        for k, t in enumerate(texts)
    ]


def init_ray(address: str | None, num_cpus: int | None = None):
    """Connect to a cluster (``auto``, ``ray://HOST:PORT``) or start a local Ray on this machine's cores."""
    ray = import_ray()
    if not ray.is_initialized():
        kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=num_cpus or cpu_count(), **kw)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI shows its own bar
    ctx.verbose_progress = False
    return ray


def extract_on_ray(config: ExtractConfig, progress: ProgressFn | None = None, manifest: Manifest | None = None) -> ExtractReport:
    """Encode the samples not yet in the store on a Ray cluster, into the same crash-safe parts.

    The encoder is built once on the driver too (it names the store's identity: weights sha256,
    preprocessing), and every actor checks that its encoder has the same identity.

    Example:
        >>> extract(ExtractConfig(backbone="ViT-L-14", data="labels.csv", out="posters.h5",
        ...                       engine="ray", ray_address="auto", num_gpus_per_worker=1))  # doctest: +SKIP
    """
    import_ray()  # fail in one line before reading anything
    if config.decoder == "nvjpeg":
        raise ConfigError("--engine ray decodes in CPU tasks; use --decoder torchvision (nvjpeg decodes on the GPU of a local run)")
    plan = plan_extraction(config, manifest)
    times = {"read": 0.0, "encode": 0.0, "write": 0.0}
    sink = PartSink(plan, times)
    todo = plan.todo
    if progress:
        progress("encode", 0, len(todo))
    if not todo:
        return finish(plan, sink, times)
    ray = init_ray(config.ray_address)
    cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
    gpus = config.num_gpus_per_worker
    actors = config.workers or (max(1, int(ray.cluster_resources().get("GPU", 0) // gpus)) if gpus else 1)
    # One CPU slot per actor, but its torch threads use every core of its share: decoding costs
    # 0.7 ms a poster against ~20 ms of model, and measured on 2 cores (bench_ray) one thread per
    # actor ran at 0.72x of local in steady state, all cores at 0.97x.
    threads = config.threads or max(1, cluster_cpus // actors)
    batch_size = config.batch_size or (256 if gpus else plan.encoder.spec.cpu_batch_size)
    ds = ray.data.from_items(_rows(todo, config.modality, config.text_field), override_num_blocks=max(1, math.ceil(len(todo) / batch_size)))
    if config.modality == "image":
        ds = ds.map_batches(_decode_batch, fn_kwargs={"preprocess": plan.encoder.preprocess}, batch_size=batch_size,
                            batch_format="numpy", num_cpus=1)  # fmt: skip
    ds = ds.map_batches(
        _Encode, fn_constructor_args=(config, dict(plan.encoder.identity), threads), batch_size=batch_size,
        batch_format="numpy", num_cpus=1, num_gpus=gpus or None, concurrency=actors,
    )  # fmt: skip
    t_wait = time.perf_counter()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        t0 = time.perf_counter()
        times["encode"] += t0 - t_wait  # the cluster's time, seen from the driver
        reasons = np.asarray(batch["reason"], dtype=object)
        ok = reasons == ""
        idx = np.asarray(batch["i"], dtype=np.int64)
        sink.add(idx[ok], batch["emb"][ok], _failures(idx[~ok], reasons[~ok]))
        if progress:
            progress("encode", sink.done, len(todo))
        t_wait = time.perf_counter()
    return finish(plan, sink, times)


def _failures(idx: Sequence[int], reasons: Sequence[str]) -> list[tuple[int, str]]:
    return [(int(i), str(r)) for i, r in zip(idx, reasons)]
