"""Reading one image safely: regular files only, bounded, upright; every failure a short reason, every mode RGB."""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
from typing import BinaryIO

from PIL import Image, ImageFile, ImageOps

from genrekit.errors import UnreadableImageError

# Pillow's own default limit; above it we refuse rather than risk a decompression bomb.
MAX_PIXELS = 89_478_485
# Larger files are refused unread: a poster is a few MB, and every read of a file is bounded.
MAX_FILE_BYTES = 256 * 2**20
ORIENTATION = 0x0112  # the EXIF tag


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGBa"):
        # Transparent areas become white, as a poster on a page, not black.
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float greyscale: rescale to 8 bits instead of clipping to white.
        lo, hi = img.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = img.point(lambda v: (v - lo) * scale).convert("L")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str, what: str = "file", max_bytes: int = MAX_FILE_BYTES) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file of at most ``max_bytes``.

    ``O_NONBLOCK`` makes opening a FIFO return at once instead of waiting for a writer, and the
    ``fstat`` of the opened descriptor (not of the name, which could be swapped) refuses FIFOs,
    devices such as ``/dev/zero`` and sockets before anything is read. Raises
    :class:`UnreadableImageError` with the reason.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UnreadableImageError("missing file") from None
    except OSError as e:
        raise UnreadableImageError(f"cannot open ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableImageError(f"not a regular {what} ({_file_kind(st.st_mode)})")
        if st.st_size > max_bytes:
            raise UnreadableImageError(f"too large ({st.st_size} bytes > {max_bytes})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag: phone photos store the pixels sideways plus this tag, and
    without it a rotated poster is encoded sideways (cosine 0.935 to the upright one)."""
    try:
        orientation = img.getexif().get(ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose a decodable poster
        return img
    if orientation in (None, 1):
        return img  # the common case: no copy
    return ImageOps.exif_transpose(img)


def _decode(fp: BinaryIO, draft: int | None) -> tuple[Image.Image, str | None]:
    """Decode an open image file fully, upright (EXIF orientation applied); returns it and its format."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(fp)
            fmt = img.format
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise UnreadableImageError(f"decompression bomb ({w}x{h} pixels > {MAX_PIXELS})")
            if draft and img.format == "JPEG":
                img.draft("RGB", (draft, draft))
            # Truncated files must fail, not be padded with grey (Pillow's opt-in behaviour).
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            img.load()
            img = _upright(img)
        except UnreadableImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise UnreadableImageError(f"decompression bomb ({e})") from None
        except Image.UnidentifiedImageError:
            raise UnreadableImageError("not an image (unrecognised format)") from None
        except OSError as e:
            msg = str(e)
            if "truncated" in msg.lower() or "image file is" in msg.lower():
                raise UnreadableImageError(f"truncated image ({msg})") from None
            raise UnreadableImageError(f"cannot decode ({msg})") from None
        except (ValueError, SyntaxError, struct.error, EOFError) as e:
            raise UnreadableImageError(f"cannot decode ({e})") from None
    return img, fmt


def load_image(path: str, draft: int | None = None) -> Image.Image:
    """Open ``path`` as an upright RGB image or raise :class:`UnreadableImageError` with the reason.

    Only regular files are read (a FIFO or a device is a failure, not a hang), the EXIF
    orientation is applied, and every mode becomes RGB.

    Args:
        path: local file path. URLs must be downloaded first (``genrekit data download``).
        draft: if given, let the JPEG decoder shrink by a power of two while keeping both sides
            at least this large, which makes decoding big posters several times faster.
    """
    if path.startswith(("http://", "https://")):
        raise UnreadableImageError("not downloaded (a URL; run `genrekit data download` first)")
    with open_regular(path) as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise UnreadableImageError("empty file (0 bytes)")
        img, _ = _decode(fh, draft)
    return _to_rgb(img)


def decode_image_bytes(data: bytes, draft: int | None = None) -> tuple[Image.Image, str | None]:
    """Decode image bytes held in memory (a download, an upload) with the checks of :func:`load_image`.

    Returns the upright RGB image and the file's own format (``"JPEG"``, ``"PNG"`` ...).
    """
    if not data:
        raise UnreadableImageError("empty body (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise UnreadableImageError(f"too large ({len(data)} bytes > {MAX_FILE_BYTES})")
    img, fmt = _decode(io.BytesIO(data), draft)
    return _to_rgb(img), fmt
