"""The fast input path: JPEG bytes -> uint8 RGB tensor with libjpeg-turbo (``torchvision.io``).

Posters are JPEGs; ``torchvision.io.decode_jpeg`` decodes them 2x faster than PIL, bit-identical
to PIL's output, and honours the EXIF orientation. Everything it does not handle goes to the PIL
reader (:func:`genrekit.data.images.load_image`), which also gives the failure reason, so a bad
file gets exactly the reason it always got: other formats (PNG, WebP, ...), 4-channel JPEGs
(CMYK/YCCK), files that are not plain regular files, anything ``decode_jpeg`` refuses (truncated,
corrupt) and images above the decompression-bomb limit.
"""

from __future__ import annotations

import logging
import os
import stat

import numpy as np
import torch

from genrekit.data import images
from genrekit.errors import UnreadableImageError

log = logging.getLogger(__name__)
# Larger files go through PIL's bounded reader rather than being read whole here.
MAX_FAST_BYTES = 64 << 20
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """``(width, height, components)`` from a JPEG's frame header, or None if it has none.

    Hand-written because neither torchvision nor PIL reads only the header cheaply (PIL's
    ``Image.open`` costs 0.1 ms per poster, a quarter of the whole fast decode); the size is
    needed *before* decoding to refuse decompression bombs.
    """
    n, i = len(data), 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF:
            if i + 10 > n:
                return None
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            return w, h, data[i + 9]
        if marker == 0xDA or length < 2:  # scan data before any frame header: not a valid JPEG
            return None
        i += 2 + length
    return None


def plain_jpeg_bytes(path: str) -> bytes | None:
    """The bytes of ``path`` when it is a plain 1- or 3-channel JPEG file within the limits, for
    the fast decoder; None sends it to the PIL reader."""
    if path.startswith(("http://", "https://")):
        return None
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or not 0 < st.st_size <= MAX_FAST_BYTES:
            return None
        with open(path, "rb") as f:
            data = f.read(MAX_FAST_BYTES + 1)
    except OSError:
        return None
    return data if _plain_jpeg(data) else None


def _plain_jpeg(data: bytes) -> bool:
    """A 1- or 3-channel JPEG within the limits, for the fast decoder (else the PIL reader)."""
    if len(data) > MAX_FAST_BYTES or not data.startswith(b"\xff\xd8\xff"):
        return False
    head = jpeg_header(data)
    return not (head is None or head[2] not in (1, 3) or head[0] * head[1] > images.MAX_PIXELS or 0 in head[:2])


def decode_jpeg_bytes(data: bytes, device: str | torch.device = "cpu") -> torch.Tensor:
    """libjpeg-turbo (or nvJPEG with a CUDA ``device``) decode to (3, H, W) uint8, EXIF-upright.

    Raises RuntimeError (torchvision's) when the data cannot be decoded.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return decode_jpeg(raw, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)


def decode_jpegs(datas: list[bytes], device: str | torch.device) -> list[torch.Tensor | None]:
    """Decode a batch of JPEGs in one call (nvJPEG's batched decode on a CUDA ``device``).

    Returns (3, H, W) uint8 tensors on ``device``, None for those it cannot decode (the caller
    reads them with :func:`read_rgb`, which gives the reason or the PIL fallback).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    raws = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        return list(decode_jpeg(raws, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
    except RuntimeError:  # one bad file fails the whole batched call: decode one by one
        out: list[torch.Tensor | None] = []
        for raw in raws:
            try:
                out.append(decode_jpeg(raw, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
            except RuntimeError:
                out.append(None)
        return out


def read_rgb(source: str | os.PathLike | bytes) -> torch.Tensor:
    """Read one image (a file, or its bytes held in memory) as a (3, H, W) uint8 RGB tensor, upright.

    Raises :class:`~genrekit.errors.UnreadableImageError` with the PIL reader's reason. The PIL
    fallback decodes at full size (no JPEG draft), as libjpeg-turbo does, so both give the same
    pixels; a file and its bytes give the same pixels too.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data: bytes | None = bytes(source)
        name = "image bytes"
        if not _plain_jpeg(data):
            data = None
    else:
        name = os.fspath(source)
        data = plain_jpeg_bytes(name)
    if data is not None:
        try:
            return decode_jpeg_bytes(data)
        except RuntimeError as e:
            log.debug("%s: decode_jpeg refused it (%s); reading it with PIL", name, e)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return pil_to_uint8(images.decode_image_bytes(bytes(source))[0])
    return pil_to_uint8(images.load_image(name))


def pil_to_uint8(img) -> torch.Tensor:
    """A PIL RGB image as a (3, H, W) uint8 tensor (a view of an HWC copy, like decode_jpeg's)."""
    if img.mode != "RGB":
        raise UnreadableImageError(f"cannot decode (mode {img.mode} after conversion)")
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
