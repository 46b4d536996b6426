"""The ``finetune`` run kind: a fine-tuned backbone and its linear head (``genrekit finetune``).

``load_run("FT/")`` returns a :class:`FinetunedRun`. Besides the :class:`LoadedRun` protocol it
exposes ``network`` (eval-mode ``nn.Module``: preprocessed image batch -> genre logits) and
``encoder`` (the fine-tuned backbone as a genrekit Encoder; ``encoder.load_image(path)`` is the
preprocessing), which Grad-CAM and the server use.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from genrekit.backbones.base import sha256_path
from genrekit.errors import StoreError, StoreMismatchError, UnreadableImageError
from genrekit.evaluation.thresholds import Thresholds
from genrekit.inference.loaded import Item, register_loader
from genrekit.rundir import FINETUNE_FILE
from genrekit.runs.finetune import FORMAT, FinetuneNet, trainable_encoder


class FinetunedRun:
    """A fine-tuned network loaded from ``FT/`` (safetensors + JSON; nothing is unpickled)."""

    kind = "finetune"
    inputs = ("image",)

    def __init__(self, path: Path, device: str = "cpu", batch_size: int = 32):
        from safetensors.torch import load_file

        from genrekit.backbones.base import resolve_device

        self.path = Path(path)
        rec = json.loads((self.path / FINETUNE_FILE).read_text())
        if int(rec.get("format", 0)) > FORMAT:
            raise StoreError(f"{self.path} was written in finetune format {rec.get('format')}; this genrekit reads up to {FORMAT}")
        self.record = rec
        backbone, head = self.path / "backbone.safetensors", self.path / "head.safetensors"
        for f in (backbone, head):
            if not f.is_file():
                raise StoreError(f"{self.path} lacks {f.name}; re-run `genrekit finetune` to finish it")
        if sha256_path(backbone) != rec["weights_sha256"]:
            raise StoreMismatchError(f"{backbone} is not the file this run saved (weights_sha256 differs); re-run `genrekit finetune`")
        if sha256_path(head) != rec["head_sha256"]:
            raise StoreMismatchError(f"{head} is not the file this run saved (head_sha256 differs); re-run `genrekit finetune`")
        self.name = f"finetune:{rec['backbone']}"
        self.genres = list(rec["genres"])
        self.thresholds = Thresholds.from_json(rec["thresholds"])
        self.device = resolve_device(device)
        pre = rec["preprocessing"]
        self.encoder = trainable_encoder(rec["backbone"], str(backbone), self.device, int(pre["size"]), pre.get("resize"))
        if self.encoder.preprocess.to_dict() != pre:
            raise StoreMismatchError(f"the rebuilt encoder's preprocessing differs from the run's: {self.encoder.preprocess.to_dict()} vs {pre}")
        net = FinetuneNet(self.encoder, len(self.genres), l2=rec.get("normalisation") == "l2")
        net.head.load_state_dict(load_file(str(head)))
        self.network = net.to(self.device).eval()
        self.channels_last = bool(rec.get("channels_last"))
        if self.channels_last:
            self.network.to(memory_format=torch.channels_last)
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
            "wise_ft_alpha": self.record.get("wise_ft_alpha"),
            "modality": "image",
            "preprocessing": self.record["preprocessing"],
        }

    @torch.no_grad()
    def predict_proba(self, items: Sequence[Item]) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
        failures: list[tuple[str, str]] = []
        xs, idx = [], []
        for k, it in enumerate(items):
            if not it.image:
                failures.append((it.name, "no poster given (this run reads posters)"))
                continue
            try:
                xs.append(self.encoder.load_image(str(it.image)))
                idx.append(k)
            except UnreadableImageError as e:
                failures.append((it.name, str(e)))
        if not idx:
            return np.zeros((0, len(self.genres)), np.float32), [], failures
        out = []
        for s in range(0, len(xs), self.batch_size):
            x = torch.stack(xs[s : s + self.batch_size]).to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(torch.sigmoid(self.network(x).float()).cpu())
        return torch.cat(out).numpy().astype(np.float32), idx, failures


register_loader("finetune", lambda run, device: FinetunedRun(run.path, device))
