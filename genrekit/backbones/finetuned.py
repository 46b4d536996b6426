"""A fine-tuned network and its weights: one home below the trainer and the predictors.

``genrekit finetune`` (:mod:`genrekit.runs.finetune`) builds a :class:`FinetuneNet`, trains it and
writes its weights with :func:`save_network`; prediction (:mod:`genrekit.inference.finetuned`)
rebuilds it with :func:`load_network`, and both turn decoded posters into the network's input
with :func:`network_input`. So predicting never imports the trainer, and the two cannot disagree
on what the network is or which pixels it sees. The run's record (``finetune.json``, named in
:mod:`genrekit.rundir`) holds what :func:`save_network` returns plus what the trainer adds:
backbone, original encoder (its layers), preprocessing, genres, thresholds, precision.

Weight files::

    backbone.safetensors   the backbone, keys of the registry's module, so
                           ``genrekit extract --backbone NAME --weights FT/backbone.safetensors`` loads it
    head.safetensors       the linear head (weight, bias)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genrekit.atomic import atomic_write
from genrekit.backbones.base import Encoder, resolve_device, serving_precision, sha256_path
from genrekit.backbones.preprocess import Preprocess
from genrekit.errors import ConfigError, StoreError, StoreMismatchError, UnknownNameError

BACKBONE_FILE, HEAD_FILE = "backbone.safetensors", "head.safetensors"
# 2: the backbone may pool several stages (``original_encoder.layers``); format 1 runs read as last-layer.
FORMAT = 2


class FinetuneNet(nn.Module):
    """Backbone (the registry encoder's module, or its multi-layer pooling) -> features -> [l2] -> linear genre logits.

    With a multi-layer encoder (``--layers``) the backbone is the differentiable
    :class:`~genrekit.backbones.layers.StagePool` over the registry module, so the network trains
    through the same pooled stage statistics the store holds and its linear probe was fitted on.
    """

    def __init__(self, encoder: Encoder, n_genres: int, l2: bool = False) -> None:
        super().__init__()
        if encoder.module is None:
            if getattr(encoder, "not_trainable", None):
                raise ConfigError(f"{encoder.spec.name} {encoder.not_trainable}; fine-tune a torch backbone (torchvision, timm, open_clip)")
            raise ConfigError(f"{encoder.spec.name} has no trainable weights; fine-tune a CNN or ViT backbone")
        self.backbone = encoder.module
        # The registry's own module (shares its parameters with a StagePool): what backbone.safetensors
        # holds. Kept out of the module tree, so the state dict lists each weight once.
        source = getattr(encoder, "source_module", None)
        self.__dict__["source"] = encoder.module if source is None else source
        self._forward = encoder._forward_images  # the encoder's own pooling (ViT: encode_image, CNN: module)
        self.l2 = l2
        self.head = nn.Linear(encoder.dim, n_genres)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = self._forward(x).float()
        return F.normalize(f, dim=1) if self.l2 else f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def backbone_state(self) -> dict[str, torch.Tensor]:
        """The backbone's weights under the registry module's keys (``extract --weights`` loads them)."""
        return {k: v.detach().cpu().contiguous().clone() for k, v in self.source.state_dict().items()}


def trainable_encoder(
    name: str,
    weights: str | None,
    device: torch.device,
    image_size: int | None,
    resize: str | None,
    layers: str | list[str] | None = None,
    layer_stats: str | None = None,
) -> Encoder:
    """A registry encoder with fp32 weights that require gradients, at ``image_size``.

    ``layers`` (a store's recorded stage names, or ``all``) gives the multi-layer features of a
    ``--layers`` store; ``None`` the last layer. ``encoder.source_module`` is the registry module.
    """
    from genrekit.backbones.layers import with_layers
    from genrekit.backbones.registry import create_encoder

    encoder = create_encoder(name, weights, str(device), precision="fp32", resize=resize, layers="last")
    if getattr(encoder, "not_trainable", None):
        raise ConfigError(f"{name} {encoder.not_trainable}; fine-tune a torch backbone (torchvision, timm, open_clip)")
    encoder.source_module = encoder.module
    if layers:
        with_layers(encoder, layers, layer_stats)
    if image_size is not None and encoder.preprocess is not None and image_size != encoder.preprocess.size:
        encoder.preprocess = replace(encoder.preprocess, size=int(image_size))
    if encoder.module is not None:
        encoder.module.requires_grad_(True)
    return encoder


def network_input(preprocess: Preprocess, pixels: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 posters (B, 3, S, S) from :func:`genrekit.extraction.read_images` -> the network's input,
    normalised on ``device`` exactly as extraction normalises (:meth:`Preprocess.normalise`)."""
    x = preprocess.normalise(pixels.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype a fine-tuned network runs in at ``precision`` (None: fp32, no autocast)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def save_weights(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    from safetensors.torch import save

    atomic_write(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=dict(metadata or {})))


def save_network(out: Path, net: FinetuneNet) -> dict:
    """Write the backbone and the head into ``out``; returns the record fields that name them
    (``format``, ``weights_sha256``, ``head_sha256``), for the run's record."""
    out = Path(out)
    save_weights(out / BACKBONE_FILE, net.backbone_state())
    save_weights(out / HEAD_FILE, {k: v for k, v in net.head.state_dict().items()})
    return {"format": FORMAT, "weights_sha256": sha256_path(out / BACKBONE_FILE), "head_sha256": sha256_path(out / HEAD_FILE)}


@dataclass
class LoadedNetwork:
    """A fine-tuned network read back: eval mode, on its device, with its encoder and record."""

    network: FinetuneNet
    encoder: Encoder
    record: dict
    channels_last: bool
    precision: str  # what it predicts in (autocast): fp32, bf16 or fp16

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Genre logits (float32) of a :func:`network_input` batch, in :attr:`precision`."""
        dtype = autocast_dtype(self.precision)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            return self.network(x).float()


def check_record(rec: Mapping, path: Path) -> None:
    """Refuse a ``finetune.json`` whose fields are missing or of the wrong type, in one line naming
    the file and the field (it is user-editable input, like a head's ``run.json``)."""
    where = path / "finetune.json"

    def bad(what: str) -> StoreError:
        return StoreError(f"{where}: {what}; the run directory was edited or damaged: re-run `genrekit finetune`")

    def need(key: str, types, parent: Mapping = rec, name: str | None = None, optional: bool = False):
        name = name or key
        if key not in parent or parent[key] is None:
            if optional:
                return None
            raise bad(f"the field {name!r} is missing")
        v = parent[key]
        if not isinstance(v, types) or isinstance(v, bool) and types is not bool:
            want = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            raise bad(f"the field {name!r} is a {type(v).__name__}, expected {want}")
        return v

    need("format", int, optional=True)
    for key in ("weights_sha256", "head_sha256", "backbone"):
        need(key, str)
    pre = need("preprocessing", dict)
    size = need("size", int, pre, "preprocessing.size")
    if not 1 <= size <= 4096:
        raise bad(f"the field 'preprocessing.size' is {size}, expected 1..4096")
    genres = need("genres", list)
    if not genres or not all(isinstance(g, str) for g in genres) or len(set(genres)) != len(genres):
        raise bad("the field 'genres' must be a non-empty list of distinct genre names")
    th = need("thresholds", dict)
    need("rule", str, th, "thresholds.rule")
    values = need("values", list, th, "thresholds.values")
    if len(values) != len(genres) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise bad(f"the field 'thresholds.values' must be {len(genres)} finite numbers")
    k = need("k", int, th, "thresholds.k", optional=True)
    if k is not None and not 0 <= k <= len(genres):
        raise bad(f"the field 'thresholds.k' is {k}, expected 0..{len(genres)}")
    fallback = need("fallback", list, th, "thresholds.fallback", optional=True) or []
    if not all(isinstance(g, str) for g in fallback):
        raise bad("the field 'thresholds.fallback' must be a list of genre names")
    enc = need("original_encoder", dict, optional=True) or {}
    need("layers", str, enc, "original_encoder.layers", optional=True)
    need("normalisation", str, optional=True)
    need("precision", str, optional=True)


def load_network(path: str | Path, rec: Mapping, device: str = "cpu", precision: str = "auto") -> LoadedNetwork:
    """Rebuild the network in ``path`` from its record ``rec`` (safetensors; nothing is unpickled).

    Refuses files that are not the ones the run saved (sha256), a newer format, and an encoder
    whose rebuilt preprocessing differs from the recorded one, naming the field. ``precision``
    (``auto``: what its scores were made in, fp32 where bf16 is not native; see
    :func:`~genrekit.backbones.base.serving_precision`) is the autocast it predicts in.
    """
    from safetensors.torch import load_file

    path, rec = Path(path), dict(rec)
    check_record(rec, path)
    if int(rec.get("format") or 0) > FORMAT:
        raise StoreError(f"{path} was written in finetune format {rec.get('format')}; this genrekit reads up to {FORMAT}")
    backbone, head = path / BACKBONE_FILE, path / HEAD_FILE
    for f in (backbone, head):
        if not f.is_file():
            raise StoreError(f"{path} lacks {f.name}; re-run `genrekit finetune` to finish it")
    if sha256_path(backbone) != rec["weights_sha256"]:
        raise StoreMismatchError(f"{backbone} is not the file this run saved (weights_sha256 differs); re-run `genrekit finetune`")
    if sha256_path(head) != rec["head_sha256"]:
        raise StoreMismatchError(f"{head} is not the file this run saved (head_sha256 differs); re-run `genrekit finetune`")
    dev = resolve_device(device)
    pre = rec["preprocessing"]
    enc = rec.get("original_encoder") or {}
    layers = enc["layers"].split(",") if enc.get("layers") else None
    try:
        encoder = trainable_encoder(rec["backbone"], str(backbone), dev, int(pre["size"]), pre.get("resize"), layers, enc.get("layer_stats"))
    except (StoreError, StoreMismatchError, UnknownNameError, ConfigError):
        raise
    except Exception as e:  # a safetensors file that does not fit the backbone (edited with its sha256): named, never raw
        raise StoreError(f"{backbone}: does not load into {rec['backbone']} ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
                         "re-run `genrekit finetune`") from None
    if encoder.preprocess.to_dict() != pre:
        now = encoder.preprocess.to_dict()
        field = next(k for k in sorted(set(now) | set(pre)) if now.get(k) != pre.get(k))
        raise StoreMismatchError(f"the rebuilt encoder's preprocessing differs from the run's in {field}: run has {pre.get(field)!r}, now {now.get(field)!r}")
    net = FinetuneNet(encoder, len(rec["genres"]), l2=rec.get("normalisation") == "l2")
    try:
        net.head.load_state_dict(load_file(str(head)))
    except Exception as e:
        raise StoreError(f"{head}: does not load as the run's linear head ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
                         "re-run `genrekit finetune`") from None
    net = net.to(dev).eval().requires_grad_(False)
    channels_last = bool(rec.get("channels_last"))
    if channels_last:
        net.to(memory_format=torch.channels_last)
    return LoadedNetwork(net, encoder, rec, channels_last, serving_precision(precision, dev, rec.get("precision", "fp32")))
