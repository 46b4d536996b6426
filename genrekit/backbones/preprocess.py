"""Image preprocessing, bundled with every image encoder so features and inputs cannot drift apart."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from PIL import Image

from genrekit.backbones.decode import pil_to_uint8, read_rgb
from genrekit.data.images import decode_image_bytes, load_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("squash", "center-crop", "letterbox")
# torchvision: libjpeg-turbo decode + antialiased resize of uint8 tensors (torchvision.transforms.v2);
# nvjpeg: the same on a CUDA GPU (nvJPEG decode and resize on the device; files it cannot take,
# and single files read on CPU for prediction, take the torchvision path);
# pil: the first path (PIL decode with JPEG draft, PIL resize), kept to extend and use older stores.
DECODERS = ("torchvision", "nvjpeg", "pil")
_INTERP = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes a model input (3, size, size), recorded in every store.

    ``load`` reads and resizes to uint8; batches stay uint8 until ``normalise`` turns the whole
    batch into the model's input in one step (on the model's device). The decoder and resize
    kernel change the pixels, so they are part of the store's identity: ``decoder="pil"`` stores
    (made before the fast path existed, which recorded no decoder) are extended only with
    ``--decoder pil``.

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
    decoder: str = "torchvision"
    resize_antialias: bool = True  # torchvision resize; PIL's resize always filters over the whole footprint

    def __post_init__(self) -> None:
        from genrekit.errors import ConfigError

        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"resize mode {self.resize!r} is not one of {', '.join(RESIZE_MODES)}")
        if self.interpolation not in _INTERP:
            raise ConfigError(f"interpolation {self.interpolation!r} is not one of {', '.join(_INTERP)}")
        if self.decoder not in DECODERS:
            raise ConfigError(f"decoder {self.decoder!r} is not one of {', '.join(DECODERS)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.decoder == "pil":  # exactly what stores made by the PIL path recorded
            del d["decoder"], d["resize_antialias"]
        return d

    def with_resize(self, resize: str | None) -> Preprocess:
        return self if resize is None else replace(self, resize=resize)

    def with_decoder(self, decoder: str | None) -> Preprocess:
        return self if decoder is None else replace(self, decoder=decoder)

    # -- reading: file -> uint8 (3, size, size) --------------------------------------------------
    def load(self, source: str | os.PathLike | bytes) -> torch.Tensor:
        """Read, orient and resize one image (a file path, or the file's bytes) to a (3, size, size)
        uint8 tensor: the one way posters become pixels, for extraction, fine-tuning and prediction.

        Raises UnreadableImageError with the reason.
        """
        if self.decoder == "pil":
            # JPEG draft decoding at >= 2x the input size keeps quality and skips most of the work.
            draft = 2 * self.size
            if isinstance(source, (bytes, bytearray, memoryview)):
                img = decode_image_bytes(bytes(source), draft=draft)[0]
            else:
                img = load_image(os.fspath(source), draft=draft)
            return self._pil_uint8(self.resize_image(img))
        return self.resize_uint8(read_rgb(source))

    def resize_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """(3, H, W) uint8 -> (3, size, size) uint8: squash, center-crop or letterbox."""
        from torchvision.transforms.v2 import functional as F

        s, interp = self.size, getattr(F.InterpolationMode, self.interpolation.upper())
        h, w = x.shape[-2:]
        if self.resize == "squash":
            return F.resize(x, [s, s], interpolation=interp, antialias=self.resize_antialias)
        if self.resize == "center-crop":
            scale = round(s / self.crop_pct) / min(w, h)
            nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
            x = F.resize(x, [nh, nw], interpolation=interp, antialias=self.resize_antialias)
            return F.crop(x, (nh - s) // 2, (nw - s) // 2, s, s)
        scale = s / max(w, h)  # letterbox
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        fill = torch.tensor([int(round(255 * m)) for m in self.mean], dtype=torch.uint8, device=x.device)
        canvas = fill.view(3, 1, 1).repeat(1, s, s)
        top, left = (s - nh) // 2, (s - nw) // 2
        canvas[:, top : top + nh, left : left + nw] = F.resize(x, [nh, nw], interpolation=interp, antialias=self.resize_antialias)
        return canvas

    def normalise(self, batch: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A uint8 batch (B, 3, size, size), on any device and memory format, -> the model's input.

        The arithmetic is the PIL path's per-image one (divide by 255, subtract the mean, divide by
        the std, in float32), so stores made either way can be extended bit-for-bit.
        """
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        x = batch.float().div_(255.0).sub_(mean).div_(std)
        return x if dtype == torch.float32 else x.to(dtype)

    @staticmethod
    def _pil_uint8(img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()

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
        """PIL RGB image -> normalised float32 tensor (3, size, size), with this decoder's resize."""
        if self.decoder == "pil":
            x = self._pil_uint8(self.resize_image(img))
        else:
            x = self.resize_uint8(pil_to_uint8(img.convert("RGB")))
        return self.normalise(x[None])[0]
