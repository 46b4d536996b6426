"""Data layer: manifests in every supported format, cleaning, vocabularies, splits, download, demo."""

from genrekit.data.manifest import CsvColumns, Manifest, Sample, read_manifest, write_manifest
from genrekit.data.split import read_split_file, stratified_split, write_split_file, year_split
from genrekit.data.vocab import VocabConfig, apply_vocabulary

__all__ = [
    "CsvColumns",
    "Manifest",
    "Sample",
    "VocabConfig",
    "apply_vocabulary",
    "read_manifest",
    "read_split_file",
    "stratified_split",
    "write_manifest",
    "write_split_file",
    "year_split",
]
