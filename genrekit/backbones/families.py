"""What each backbone family's encoders read, known without importing torch.

A registry entry's ``modalities`` is its family's (:class:`~genrekit.backbones.BackboneSpec`
reads it here and refuses a family not listed), so a store header's ``encoder.family`` says
whether the encoder that made it has a text tower: the heads runner learns it in microseconds
instead of importing torch (2 s).
"""

from __future__ import annotations

FAMILIES: dict[str, tuple[str, ...]] = {
    "open_clip": ("image", "text"),
    "torchvision": ("image",),
    "timm": ("image",),
    "onnx": ("image",),
    "colorstats": ("image",),
    "hf-text": ("text",),
    "test": ("image",),
}


def family_has_text(family: str) -> bool | None:
    """Whether encoders of ``family`` have a text tower; None for a family not known here."""
    modalities = FAMILIES.get(family)
    return None if modalities is None else "text" in modalities
