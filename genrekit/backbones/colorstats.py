"""``colorstats``: a weight-free image baseline of colour histograms and colour/edge statistics.

It runs anywhere, in milliseconds, and tells whether a learned encoder beats what palette and
layout alone give (horror posters are dark, animation is saturated, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genrekit.backbones.base import BackboneSpec, Encoder, WeightsRef
from genrekit.backbones.preprocess import Preprocess

HUE_BINS, SAT_BINS, VAL_BINS, EDGE_BINS, GRID = 12, 4, 4, 4, 3
DIM = 6 + HUE_BINS + SAT_BINS + VAL_BINS + 1 + EDGE_BINS + 3 + GRID * GRID + 3 * 3 + 2


def _hist(values: torch.Tensor, bins: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image normalised histogram of values in [0, 1]: (B, N) -> (B, bins)."""
    idx = (values.clamp(0, 1 - 1e-6) * bins).long()
    w = torch.ones_like(values) if weights is None else weights
    h = torch.zeros(values.shape[0], bins, dtype=values.dtype).scatter_add_(1, idx, w)
    return h / h.sum(1, keepdim=True).clamp_min(1e-6)


def colour_features(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, DIM) features."""
    b = x.shape[0]
    r, g, bl = x[:, 0], x[:, 1], x[:, 2]
    mx, mn = x.max(1).values, x.min(1).values
    delta = mx - mn
    sat = torch.where(mx > 0, delta / mx.clamp_min(1e-6), torch.zeros_like(mx))
    safe = delta.clamp_min(1e-6)
    hue = torch.where(
        mx == r, ((g - bl) / safe) % 6, torch.where(mx == g, (bl - r) / safe + 2, (r - g) / safe + 4)
    ) / 6.0
    flat = lambda t: t.reshape(b, -1)  # noqa: E731
    grey = 0.299 * r + 0.587 * g + 0.114 * bl
    gx = F.conv2d(grey[:, None], torch.tensor([[[[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]]]), padding=1)
    gy = F.conv2d(grey[:, None], torch.tensor([[[[-1.0, -2, -1], [0, 0, 0], [1, 2, 1]]]]), padding=1)
    mag = (gx**2 + gy**2).sqrt()[:, 0] / 4.0
    rg, yb = r - g, 0.5 * (r + g) - bl
    colourfulness = (rg.reshape(b, -1).std(1) ** 2 + yb.reshape(b, -1).std(1) ** 2).sqrt() + 0.3 * (
        rg.reshape(b, -1).mean(1) ** 2 + yb.reshape(b, -1).mean(1) ** 2
    ).sqrt()
    thirds = F.adaptive_avg_pool2d(x, (3, 1)).reshape(b, 9)  # mean RGB of top / middle / bottom
    feats = [
        flat(x).reshape(b, 3, -1).mean(2),
        flat(x).reshape(b, 3, -1).std(2),
        _hist(flat(hue), HUE_BINS, flat(sat * mx)),  # hue weighted by how colourful the pixel is
        _hist(flat(sat), SAT_BINS),
        _hist(flat(mx), VAL_BINS),
        colourfulness[:, None],
        _hist(flat(mag), EDGE_BINS),
        torch.stack([flat(mag).mean(1), flat(gx.abs()).mean(1) / 4, flat(gy.abs()).mean(1) / 4], 1),
        F.adaptive_avg_pool2d(grey[:, None], GRID).reshape(b, -1),
        thirds,
        torch.stack([(flat(grey) < 0.15).float().mean(1), (flat(grey) > 0.85).float().mean(1)], 1),
    ]
    return torch.cat(feats, 1)


class ColorStatsEncoder(Encoder):
    def _forward_images(self, x: torch.Tensor) -> torch.Tensor:
        return colour_features(x.float())


def build_colorstats(spec: BackboneSpec, weights: WeightsRef, device: torch.device, **kw) -> Encoder:
    return ColorStatsEncoder(spec, WeightsRef("none", "none"), torch.device("cpu"), **kw)


COLORSTATS = BackboneSpec(
    name="colorstats",
    family="colorstats",
    dim=DIM,
    weights=(),
    build=build_colorstats,
    # Pixels in [0, 1] (mean 0, std 1): the statistics are of the image, not of a normalised input.
    preprocess=Preprocess(size=128, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
    cpu_batch_size=64,
    description="weight-free colour histograms + colour/edge statistics (a baseline that runs anywhere)",
)
