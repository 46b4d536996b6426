"""Reading one image safely: every failure becomes a short reason, every mode becomes RGB."""

from __future__ import annotations

import os
import warnings

from PIL import Image, ImageFile

from genrekit.errors import UnreadableImageError

# Pillow's own default limit; above it we refuse rather than risk a decompression bomb.
MAX_PIXELS = 89_478_485


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


def load_image(path: str, draft: int | None = None) -> Image.Image:
    """Open ``path`` as an RGB image or raise :class:`UnreadableImageError` with the reason.

    Args:
        path: local file path. URLs must be downloaded first (``genrekit data download``).
        draft: if given, let the JPEG decoder shrink by a power of two while keeping both sides
            at least this large, which makes decoding big posters several times faster.
    """
    if path.startswith(("http://", "https://")):
        raise UnreadableImageError("not downloaded (a URL; run `genrekit data download` first)")
    try:
        size = os.path.getsize(path)
    except OSError:
        raise UnreadableImageError("missing file") from None
    if size == 0:
        raise UnreadableImageError("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise UnreadableImageError(f"decompression bomb ({w}x{h} pixels > {MAX_PIXELS})")
            if draft and img.format == "JPEG":
                img.draft("RGB", (draft, draft))
            # Truncated files must fail, not be padded with grey (Pillow's opt-in behaviour).
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            img.load()
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
        except (ValueError, SyntaxError) as e:
            raise UnreadableImageError(f"cannot decode ({e})") from None
    return _to_rgb(img)
