"""The encoder protocol and the backbone spec every registry entry is made of."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrekit.backbones.families import FAMILIES
from genrekit.backbones.preprocess import Preprocess
from genrekit.errors import ConfigError, WeightsUnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry: what a backbone is and how to build it.

    Attributes:
        name: the registry name (``genrekit extract --backbone NAME``).
        family: a key of :data:`~genrekit.backbones.families.FAMILIES` (``open_clip``,
            ``torchvision``, ``timm``, ``onnx``, ``colorstats``, ``hf-text``, ``test``), which
            also says what it reads (:attr:`modalities`).
        dim: embedding size.
        weights: known pretrained weight tags, the default first; ``none`` and a file path always work.
        preprocess: image preprocessing the weights expect (``None`` for text-only models).
        build: ``build(spec, weights, device) -> Encoder``.
        normalisation: what extraction applies by default (``l2`` for contrastive/sentence models).
        cpu_batch_size: the batch size measured fastest on CPU (benchmarks/bench_extract.py).
        cpu_streams: batches encoded side by side on a CPU with no decode process (up to 2
            cores), each stream decoding its own; measured faster than one for MobileNetV2.
        channels_last: whether NHWC was measured faster (CNNs).
        layers: what ``extract --layers`` defaults to: ``last`` (the pooled embedding) or ``all``
            (pooled statistics of every stage; measured better with the heads for MobileNetV2).
    """

    name: str
    family: str
    dim: int
    weights: tuple[str, ...]
    build: Callable[..., Encoder] = field(repr=False, compare=False)
    preprocess: Preprocess | None = None
    normalisation: str = "none"
    cpu_batch_size: int = 16
    cpu_streams: int = 1
    channels_last: bool = False
    layers: str = "last"
    description: str = ""
    options: dict = field(default_factory=dict, compare=False)  # family-specific build arguments

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"backbone {self.name!r}: family {self.family!r} is not one of {', '.join(FAMILIES)} "
                             "(a new family is one entry of genrekit.backbones.families.FAMILIES)")

    @property
    def modalities(self) -> tuple[str, ...]:
        """``("image",)``, ``("text",)`` or both (CLIP: image tower plus text tower): the family's,
        so a store's ``encoder.family`` tells without torch."""
        return FAMILIES[self.family]

    @property
    def default_weights(self) -> str:
        return self.weights[0] if self.weights else "none"

    @property
    def input_size(self) -> int | None:
        return self.preprocess.size if self.preprocess else None


@dataclass(frozen=True)
class WeightsRef:
    """A resolved ``--weights`` value: a pretrained tag, a local file/folder, or none (random init)."""

    kind: str  # "tag" | "path" | "none"
    value: str  # the tag, the absolute path, or "none"

    @classmethod
    def parse(cls, value: str | None, spec: BackboneSpec) -> WeightsRef:
        if value is None:
            value = spec.default_weights
        if value.lower() in ("none", "random", ""):
            return cls("none", "none")
        p = Path(value).expanduser()
        if p.exists():
            return cls("path", str(p.resolve()))
        looks_like_path = value.startswith(("/", "./", "../", "~")) or value.endswith(
            (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".onnx")
        )
        if looks_like_path:
            raise WeightsUnavailableError(f"weights file {value!r} does not exist")
        if value in spec.weights or spec.options.get("any_tag", False):
            return cls("tag", value)
        known = ", ".join(spec.weights) or "none"
        raise WeightsUnavailableError(
            f"{spec.name} has no weights tag {value!r} and no such file exists; known tags: {known}; "
            "or pass a local checkpoint path, or 'none'"
        )

    def identity(self) -> dict[str, Any]:
        """What the store records: the tag, or the file's name and sha256."""
        if self.kind != "path":
            return {"weights": self.value}
        p = Path(self.value)
        return {"weights": f"file:{p.name}", "weights_sha256": sha256_path(p), "weights_path": str(p)}


def cache_root() -> Path:
    """Where genrekit keeps what it derives from installed weights (cut graphs, joined or
    converted checkpoints): ``$GENREKIT_CACHE``, else ``$XDG_CACHE_HOME/genrekit`` or ``~/.cache/genrekit``."""
    root = os.environ.get("GENREKIT_CACHE")
    return Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "genrekit"


def package_file(module: str, inside: str) -> Path | None:
    """The file ``inside`` an installed package (found without importing it), or None."""
    import importlib.util

    found = importlib.util.find_spec(module)
    path = Path(found.origin).parent / inside if found and found.origin else None
    return path if path is not None and path.is_file() else None


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder's files (sorted by relative path)."""
    h = hashlib.sha256()
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def require_network(host: str, what: str, hint: str) -> None:
    """Fail in one line, at once, when ``host`` cannot be reached (instead of minutes of retries)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" and "huggingface" in host:
        raise WeightsUnavailableError(f"cannot download {what}: HF_HUB_OFFLINE=1. {hint}")
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        raise WeightsUnavailableError(f"cannot download {what}: no connection to {host}. {hint}") from None


class _DropRandomInitNotes(logging.Filter):
    # open_clip warns on the root logger for every random init, which is what `--weights none` asks for.
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def seeded(seed: int = 0):
    """Random init that is the same every run, without touching the caller's RNG state."""
    root, note_filter = logging.getLogger(), _DropRandomInitNotes()
    root.addFilter(note_filter)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        root.removeFilter(note_filter)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} was asked for, but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(device)


class Encoder:
    """A frozen encoder: eval mode, inference mode, its preprocessing bundled.

    Subclasses implement ``_forward_images`` (normalised image batch -> embeddings) and/or
    ``_forward_texts`` (list of strings -> embeddings; long texts are split into windows and
    mean-pooled, never silently truncated).
    """

    def __init__(
        self,
        spec: BackboneSpec,
        weights: WeightsRef,
        device: torch.device,
        dim: int | None = None,
        preprocess: Preprocess | None = None,
        module: torch.nn.Module | None = None,
        precision: str = "auto",
    ) -> None:
        self.spec = spec
        self.weights = weights
        self.device = device
        self.dim = dim or spec.dim
        self.preprocess = preprocess if preprocess is not None else spec.preprocess
        self.module = module
        self.channels_last = spec.channels_last
        self.precision = resolve_precision(precision, device) if module is not None else "fp32"
        # GPU: fp32 weights under autocast. CPU: bf16 weights and inputs (oneDNN's bf16 kernels;
        # autocast on CPU was slower for ViTs). Measured in benchmarks/README.md.
        self.amp_dtype = _DTYPES[self.precision] if device.type == "cuda" and self.precision != "fp32" else None
        self.cast_dtype = torch.bfloat16 if device.type == "cpu" and self.precision == "bf16" else None
        if module is not None:
            module.eval().requires_grad_(False).to(device)
            if self.channels_last:
                module.to(memory_format=torch.channels_last)
            if self.cast_dtype is not None:
                module.to(self.cast_dtype)

    # -- description ---------------------------------------------------------------------------
    @property
    def has_image(self) -> bool:
        return "image" in self.spec.modalities

    @property
    def has_text(self) -> bool:
        return "text" in self.spec.modalities

    @property
    def identity(self) -> dict[str, Any]:
        """Encoder identity as recorded in stores: family, name, weights (tag or file + sha256)."""
        ident = {"family": self.spec.family, "name": self.spec.name, **self.weights.identity(), "precision": self.precision}
        if self.layers:  # multi-layer features (--layers); last-layer encoders record nothing, as before
            ident |= {"layers": self.layers, "layer_stats": self.layer_stats}
        return ident

    def with_resize(self, resize: str | None, decoder: str | None = None) -> Encoder:
        """Override the resize mode and/or the decoder (``torchvision`` or the older ``pil``)."""
        if self.preprocess is not None:
            self.preprocess = self.preprocess.with_resize(resize).with_decoder(decoder)
        return self

    def text_preprocessing(self) -> dict[str, Any]:
        """How texts are tokenised and pooled (stored like image preprocessing)."""
        return {"window_tokens": self.text_window, "pooling": "mean over windows, weighted by tokens"}

    text_window: int = 0
    layers: str | None = None  # the stages pooled by --layers (comma-separated); None = the last layer
    layer_stats: str | None = None  # mean or mean,std

    # -- encoding ------------------------------------------------------------------------------
    def read_image(self, path: str) -> torch.Tensor:
        """Read and resize one image to uint8 (3, size, size); raises UnreadableImageError with the reason."""
        if self.preprocess is None:
            raise ConfigError(f"{self.spec.name} is a text encoder; it cannot read images")
        return self.preprocess.load(path)

    def load_image(self, path: str) -> torch.Tensor:
        """Read and preprocess one image to the model's float32 input (3, size, size)."""
        return self.preprocess.normalise(self.read_image(path)[None])[0]

    def encode_images(self, batch: torch.Tensor) -> np.ndarray:
        """Embed a batch (B, 3, H, W); returns float32 (B, dim), not normalised.

        ``batch`` is either uint8 pixels (from :meth:`read_image`), normalised here in one step on
        the model's device, after a 4x smaller transfer, or an already normalised float batch.
        """
        if not self.has_image:
            raise ConfigError(f"{self.spec.name} is a text encoder; use --modality text")
        with torch.inference_mode(), self._autocast():
            x = batch.to(self.device, non_blocking=True)
            if x.dtype == torch.uint8:
                x = self.preprocess.normalise(x, self.cast_dtype or torch.float32)
            elif self.cast_dtype is not None:
                x = x.to(self.cast_dtype)
            if self.channels_last:  # after normalising: broadcasting the 3 channel constants over
                x = x.contiguous(memory_format=torch.channels_last)  # NHWC pixels is 2x slower (bench_extract)
            out = self._forward_images(x)
        return out.float().cpu().numpy()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; returns float32 (n, dim), not normalised."""
        if not self.has_text:
            raise ConfigError(f"{self.spec.name} has no text tower; use an open_clip or text backbone")
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode(), self._autocast():
            out = self._forward_texts(list(texts))
        return out.float().cpu().numpy()

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _forward_images(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _forward_texts(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError


_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> what is fastest and safe on ``device``: bf16 where the hardware has it, else fp16
    on GPU and fp32 on CPU. Features differ from fp32 by a cosine of about 0.999.

    An explicit ``bf16`` on a CPU without it is honoured (emulated, slowly): extending a bf16
    store must repeat its precision. Using a run goes through :func:`serving_precision` instead.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        if precision != "auto":
            return precision
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16":
        raise ConfigError("--precision fp16 is for GPUs; on CPU use bf16 or fp32")
    if precision == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    return precision


def serving_precision(requested: str, device: torch.device, made_with: str | None = None) -> str:
    """The precision to predict in (``predict``, ``serve``, ``evaluate``'s ``--precision``).

    ``auto`` is the precision the run's features were made with (``made_with``; fp32 when not
    recorded), so predictions repeat training's; ``fp32`` and ``bf16`` choose. On a CPU without
    native bf16 (no AVX512-BF16 / AMX) bf16 would be emulated, 6-125x slower, so it falls back to
    fp32 with a warning (bf16 and fp32 features: cosine >= 0.9988, probe AUC equal within 0.003
    on 1,000 posters). A store made in fp16 on a GPU is read in fp32 on a CPU.
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"--precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    wanted = (made_with or "fp32") if requested == "auto" else requested
    if device.type == "cuda":
        return resolve_precision(wanted, device)
    if wanted == "fp16":
        return "fp32"
    if wanted == "bf16" and not cpu_has_bf16():
        log.warning("bf16 is not native on this CPU (no AVX512-BF16 or AMX): predicting in fp32 instead of emulating bf16 "
                    "(%s); pass --precision fp32 to silence this", "the run was made in bf16" if requested == "auto" else "--precision bf16")  # fmt: skip
        return "fp32"
    return wanted


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AVX512-BF16 or AMX), where it is 1.6-4.5x faster."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pool_windows(vectors: torch.Tensor, owners: Sequence[int], weights: Sequence[int], n: int) -> torch.Tensor:
    """Average window embeddings back into one per text, weighted by each window's token count."""
    w = torch.tensor(weights, dtype=vectors.dtype, device=vectors.device)
    idx = torch.tensor(owners, device=vectors.device)
    out = torch.zeros(n, vectors.shape[1], dtype=vectors.dtype, device=vectors.device)
    out.index_add_(0, idx, vectors * w[:, None])
    total = torch.zeros(n, dtype=vectors.dtype, device=vectors.device).index_add_(0, idx, w)
    return out / total.clamp_min(1)[:, None]


def split_windows(token_lists: Sequence[Sequence[int]], window: int) -> tuple[list[list[int]], list[int]]:
    """Cut each token list into windows of at most ``window`` tokens; returns windows and owners."""
    windows, owners = [], []
    for i, toks in enumerate(token_lists):
        toks = list(toks)
        if not toks:
            windows.append([])
            owners.append(i)
        for start in range(0, len(toks), window):
            windows.append(toks[start : start + window])
            owners.append(i)
    return windows, owners
