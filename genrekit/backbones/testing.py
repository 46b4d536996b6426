"""Tiny, seeded backbones that are real registry entries, so tests run real code paths offline."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from genrekit.backbones.base import BackboneSpec, Encoder, WeightsRef, seeded
from genrekit.backbones.preprocess import Preprocess
from genrekit.backbones.vision import ModuleEncoder, load_checkpoint, load_into


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 32),
    )


def build_tiny_cnn(spec: BackboneSpec, weights: WeightsRef, device: torch.device, **kw) -> Encoder:
    with seeded():
        model = tiny_cnn()
    if weights.kind == "path":
        load_into(model, load_checkpoint(weights.value), weights.value, head="none")
    return ModuleEncoder(spec, weights, device, module=model, **kw)


TINY_CNN = BackboneSpec(
    name="test-tiny-cnn",
    family="test",
    dim=32,
    weights=(),
    build=build_tiny_cnn,
    preprocess=Preprocess(size=32),
    cpu_batch_size=32,
    description="tiny seeded CNN for tests (32-d)",
    options={"stages": ("2", "4")},  # the two ReLU outputs (8 and 16 channels)
)

# The same network whose `extract` default is its stages pooled (mean + std), as mobilenet_v2's is:
# tests of the default path (extract -> heads -> finetune -> predict / serve / report) use it.
TINY_CNN_STAGES = dataclasses.replace(
    TINY_CNN, name="test-tiny-cnn-stages", layers="all", description="tiny seeded CNN whose default features are its two stages (48-d)"
)
