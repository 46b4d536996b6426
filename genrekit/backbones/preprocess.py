"""Image preprocessing, bundled with every image encoder so features and inputs cannot drift apart."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("squash", "center-crop", "letterbox")
_INTERP = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}


@dataclass(frozen=True)
class Preprocess:
    """How a PIL image becomes a model input (3, size, size), recorded in every store.

    Posters are 2:3 portraits; ``center-crop`` (resize the short side to ``size / crop_pct``, then
    crop) cuts off titles and credits, so the default is ``squash`` (resize to size x size
    ignoring the aspect ratio), which scored better in a MobileNetV2 linear probe on posters
    (see benchmarks/README.md). ``letterbox`` keeps the aspect ratio and pads with the mean colour.
    """

    size: int = 224
    resize: str = "squash"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    def __post_init__(self) -> None:
        from genrekit.errors import ConfigError

        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"resize mode {self.resize!r} is not one of {', '.join(RESIZE_MODES)}")
        if self.interpolation not in _INTERP:
            raise ConfigError(f"interpolation {self.interpolation!r} is not one of {', '.join(_INTERP)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def with_resize(self, resize: str | None) -> Preprocess:
        return self if resize is None else replace(self, resize=resize)

    def resize_image(self, img: Image.Image) -> Image.Image:
        """Resize (and crop or pad) to size x size, still a PIL image."""
        s, interp = self.size, _INTERP[self.interpolation]
        w, h = img.size
        if self.resize == "squash":
            return img.resize((s, s), interp, reducing_gap=3.0)
        if self.resize == "center-crop":
            short = round(s / self.crop_pct)
            scale = short / min(w, h)
            nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
            img = img.resize((nw, nh), interp, reducing_gap=3.0)
            left, top = (nw - s) // 2, (nh - s) // 2
            return img.crop((left, top, left + s, top + s))
        scale = s / max(w, h)  # letterbox
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        fill = tuple(int(round(255 * m)) for m in self.mean)
        canvas = Image.new("RGB", (s, s), fill)
        canvas.paste(img.resize((nw, nh), interp, reducing_gap=3.0), ((s - nw) // 2, (s - nh) // 2))
        return canvas

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """PIL RGB image -> normalised float32 tensor (3, size, size)."""
        x = torch.from_numpy(np.asarray(self.resize_image(img), dtype=np.uint8).copy())
        x = x.permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return x.sub_(mean).div_(std)
