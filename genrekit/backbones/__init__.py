"""Frozen encoders: one registry of backbones, one encoder protocol, preprocessing bundled."""

from genrekit.backbones.base import BackboneSpec, Encoder, WeightsRef
from genrekit.backbones.preprocess import RESIZE_MODES, Preprocess
from genrekit.backbones.registry import create_encoder, get_spec, list_backbones, random_weights, register, weights_present

__all__ = [
    "RESIZE_MODES",
    "BackboneSpec",
    "Encoder",
    "Preprocess",
    "WeightsRef",
    "create_encoder",
    "get_spec",
    "list_backbones",
    "random_weights",
    "register",
    "weights_present",
]
