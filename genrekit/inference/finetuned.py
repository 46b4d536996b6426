"""The ``finetune`` run kind: a fine-tuned backbone and its linear head (``genrekit finetune``).

``load_run("FT/")`` returns a :class:`FinetunedRun`. Besides the :class:`LoadedRun` protocol it
exposes ``network`` (eval-mode ``nn.Module``: preprocessed image batch -> genre logits) and
``encoder`` (the fine-tuned backbone as a genrekit Encoder; ``encoder.load_image(path)`` is the
preprocessing), which Grad-CAM and the server use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from genrekit.backbones.finetuned import BACKBONE_FILE, load_network, network_input
from genrekit.evaluation.thresholds import Thresholds
from genrekit.inference.loaded import Item, register_loader
from genrekit.rundir import FINETUNE_FILE, read_json, refuse_nonfinite


class FinetunedRun:
    """A fine-tuned network loaded from ``FT/`` (safetensors + JSON; nothing is unpickled)."""

    kind = "finetune"
    inputs = ("image",)

    def __init__(self, path: Path, device: str = "cpu", batch_size: int = 32, precision: str = "auto"):
        self.path = Path(path)
        loaded = self.loaded = load_network(self.path, read_json(self.path / FINETUNE_FILE), device, precision)
        rec = self.record = loaded.record
        self.name = f"finetune:{rec['backbone']}"
        self.genres = list(rec["genres"])
        self.thresholds = Thresholds.from_json(rec["thresholds"])
        self.encoder, self.network, self.channels_last = loaded.encoder, loaded.network, loaded.channels_last
        self.device = self.encoder.device
        self.precision = loaded.precision
        self.batch_size = batch_size

    def identity(self) -> dict:
        enc = self.record["original_encoder"]
        return {
            "kind": self.kind,
            "head": "linear (fine-tuned)",
            "encoder": self.record["backbone"],
            "weights": "file:backbone.safetensors",
            "weights_sha256": self.record["weights_sha256"],
            "fine_tuned_from": {"weights": enc.get("weights"), "weights_sha256": enc.get("weights_sha256")},
            "layers": enc.get("layers"),
            "wise_ft_alpha": self.record.get("wise_ft_alpha"),
            "modality": "image",
            "preprocessing": self.record["preprocessing"],
        }

    @torch.no_grad()
    def predict_proba(self, items: Sequence[Item]) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
        from genrekit.extraction import read_images

        failures = [(k, "no poster given (this run reads posters)") for k, it in enumerate(items) if not it.image]
        idx = [k for k, it in enumerate(items) if it.image]
        pixels, ok, bad = read_images(self.encoder.preprocess, [items[k].image for k in idx])
        failures = sorted(failures + [(idx[i], reason) for i, reason in bad])
        if not ok:
            return np.zeros((0, len(self.genres)), np.float32), [], failures
        out = []
        for s in range(0, len(ok), self.batch_size):
            x = network_input(self.encoder.preprocess, pixels[s : s + self.batch_size], self.device, self.channels_last)
            out.append(torch.sigmoid(self.loaded.logits(x)).cpu())
        P = refuse_nonfinite(torch.cat(out).float().numpy().astype(np.float32), self.path / BACKBONE_FILE)
        return P, [idx[i] for i in ok], failures


register_loader("finetune", lambda run, device, precision="auto": FinetunedRun(run.path, device, precision=precision))
