"""Frozen encoders: one registry of backbones, one encoder protocol, preprocessing bundled.

The names below are imported on first use, so that ``genrekit.backbones.families`` (what each
family reads) is there without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genrekit.backbones.base import BackboneSpec, Encoder, WeightsRef
    from genrekit.backbones.preprocess import RESIZE_MODES, Preprocess
    from genrekit.backbones.registry import create_encoder, get_spec, list_backbones, random_weights, register, weights_present

_HOME = {
    "BackboneSpec": "base",
    "Encoder": "base",
    "WeightsRef": "base",
    "RESIZE_MODES": "preprocess",
    "Preprocess": "preprocess",
    "create_encoder": "registry",
    "get_spec": "registry",
    "list_backbones": "registry",
    "random_weights": "registry",
    "register": "registry",
    "weights_present": "registry",
}
__all__ = list(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value
