"""Multi-layer CNN features (``extract --layers``): pooled statistics of several stages, concatenated.

Early stages see colour, texture and layout; the last one sees objects. Each chosen stage's
feature map (B, C, H, W) is pooled over its pixels to its mean and, optionally, its standard
deviation, and the stages are concatenated. The stage outputs come from torchvision's
feature-extraction API (``create_feature_extractor``: the graph is cut after the last stage
asked for) or from timm's ``forward_intermediates``; the stages a backbone offers are listed in
its spec (``options["stages"]``) or, for timm models, read from ``feature_info``.

The layers and statistics are part of the encoder's identity, so a multi-layer store is never
extended with, or fed to a head of, a last-layer store.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from genrekit.errors import ConfigError

LAYER_STATS = ("mean", "mean,std")


def stage_names(spec, module: nn.Module) -> list[str]:
    """The stages ``spec``'s CNN offers, shallow to deep (the last one is the pooled embedding's)."""
    stages = spec.options.get("stages")
    if stages:
        return list(stages)
    info = getattr(module, "feature_info", None)
    if info is not None and spec.family == "timm":
        return [f["module"] for f in info] if isinstance(info, list) else list(info.module_name())
    raise ConfigError(
        f"--layers needs a CNN with known stages; {spec.name} ({spec.family}) has none: use --layers last"
    )


def select_stages(value: str, names: Sequence[str], backbone: str) -> list[str]:
    """``all`` or stage numbers ``N,M`` (counted from 1, shallow to deep) -> stage names."""
    value = value.strip().lower()
    if value == "all":
        return list(names)
    try:
        picks = [int(p) for p in value.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"--layers {value!r} is not last, all or stage numbers like 2,4") from None
    bad = [p for p in picks if not 1 <= p <= len(names)]
    if not picks or bad:
        raise ConfigError(f"--layers: {backbone} has stages 1 to {len(names)}, got {value!r}")
    return [names[p - 1] for p in sorted(set(picks))]


def pooled_stats(maps: Sequence[torch.Tensor], stats: str) -> torch.Tensor:
    """Concatenate, per stage, the spatial mean (and std) of each channel, computed in float32.

    Each map is read as (B, pixels, C), a view of the channels-last maps a CNN runs in on CPU, so
    the reductions run along contiguous channels: 7x faster than reducing each channel's pixels
    of the same maps (1.0 -> 0.15 ms a poster for MobileNetV2's six stages, bench_extract.py).
    The std is two-pass (the mean first), as ``torch.std`` computes it.
    """
    out = []
    for f in maps:
        f = f.float()
        b, c = f.shape[:2]
        if f.dim() == 4 and f.is_contiguous(memory_format=torch.channels_last):
            v = f.permute(0, 2, 3, 1).reshape(b, -1, c)  # a view
        else:
            v = f.reshape(b, c, -1).transpose(1, 2)
        mean = v.mean(1, keepdim=True)
        out.append(mean[:, 0])
        if stats == "mean,std":
            out.append((v - mean).square_().mean(1).sqrt_())
    return torch.cat(out, 1)


class StagePool(nn.Module):
    """Image batch -> pooled statistics of the chosen stages of ``model``, concatenated."""

    def __init__(self, model: nn.Module, stages: Sequence[str], stats: str, timm_indices: list[int] | None = None) -> None:
        super().__init__()
        self.stats, self.timm_indices = stats, timm_indices
        if timm_indices is None:
            from torchvision.models.feature_extraction import create_feature_extractor

            self.body = create_feature_extractor(model, return_nodes={s: s for s in stages})
        else:
            self.body = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.timm_indices is None:
            maps = list(self.body(x).values())
        else:
            maps = self.body.forward_intermediates(x, indices=self.timm_indices, intermediates_only=True)
        return pooled_stats(maps, self.stats)


def with_layers(encoder, layers: str | Sequence[str] | None, stats: str | None):
    """``encoder`` made to return multi-layer features; as is for ``last`` (or ``None``).

    ``layers`` is what ``--layers`` takes (``all``, ``N,M``) or a list of stage names (as a
    store records them, to rebuild its encoder).
    """
    stats = stats or "mean,std"
    if stats not in LAYER_STATS:
        raise ConfigError(f"--layer-stats {stats!r} is not one of {', '.join(LAYER_STATS)}")
    if not layers or (isinstance(layers, str) and layers.strip().lower() == "last"):
        return encoder
    if encoder.module is None or not encoder.has_image or encoder.spec.family not in ("torchvision", "timm", "test"):
        raise ConfigError(f"--layers applies to CNN backbones (torchvision, timm); {encoder.spec.name} is {encoder.spec.family}: use --layers last")
    names = stage_names(encoder.spec, encoder.module)
    if isinstance(layers, str):
        chosen = select_stages(layers, names, encoder.spec.name)
    else:
        chosen = list(layers)
        unknown = [s for s in chosen if s not in names]
        if unknown:
            raise ConfigError(f"{encoder.spec.name} has no stage {unknown[0]!r} (its stages: {', '.join(names)})")
    timm_indices = [names.index(s) for s in chosen] if encoder.spec.family == "timm" else None
    pool = StagePool(encoder.module, chosen, stats, timm_indices)
    param = next(encoder.module.parameters())
    size = encoder.preprocess.size
    with torch.inference_mode():  # one small forward pass to learn the width
        probe = torch.zeros(1, 3, size, size, dtype=param.dtype, device=param.device)
        dim = pool(probe).shape[1]
    encoder.module = pool
    encoder.dim = int(dim)
    encoder.layers = ",".join(chosen)
    encoder.layer_stats = stats
    return encoder
