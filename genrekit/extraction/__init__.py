"""Extraction: run a frozen encoder once over a collection into a feature store, and embed new items."""

from genrekit.extraction.core import (
    MODALITIES,
    ExtractConfig,
    ExtractReport,
    embed_images,
    embed_texts,
    encoder_from_header,
    extract,
    read_images,
    store_header,
)

__all__ = [
    "MODALITIES",
    "ExtractConfig",
    "ExtractReport",
    "embed_images",
    "embed_texts",
    "encoder_from_header",
    "extract",
    "read_images",
    "store_header",
]
