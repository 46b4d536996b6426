"""Option types and flag parsers shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Optional

import typer

from genrekit.errors import ConfigError

if TYPE_CHECKING:  # the library's data layer imports numpy: only inside the commands that read manifests
    from genrekit.data.manifest import CsvColumns, Manifest
    from genrekit.data.vocab import VocabConfig

ManifestArg = Annotated[
    Path, typer.Argument(help="A CSV manifest, Kaggle MovieGenre.csv, AniList/MAL CSV, MM-IMDb folder or genre folders.")
]
FormatOpt = Annotated[
    str, typer.Option("--format", "-f", help="auto, csv, kaggle, mmimdb, anime or folder.", show_default=True)
]
ColumnsOpt = Annotated[
    Optional[str],
    typer.Option("--columns", help="Generic CSV column names as KEY=NAME,..., keys: id genres image plot title year split."),
]
GenreSepOpt = Annotated[
    Optional[str], typer.Option("--genre-sep", help="Genre separator of a generic CSV.", show_default="detect | , or space")
]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k", help="Keep the K most frequent genres.")]
MinCountOpt = Annotated[int, typer.Option("--min-count", help="Drop genres with fewer items.")]
GenresOpt = Annotated[Optional[str], typer.Option("--genres", help="Explicit vocabulary, e.g. Drama,Comedy,Horror.")]
OtherOpt = Annotated[bool, typer.Option("--other", help="Map genres outside the vocabulary to 'Other' instead of dropping them.")]
SynonymOpt = Annotated[Optional[list[str]], typer.Option("--synonym", help="Extra rename RAW=CANONICAL (repeatable).")]
NoSynonymsOpt = Annotated[bool, typer.Option("--no-synonyms", help="Do not apply the built-in synonyms (Science Fiction -> Sci-Fi ...).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="Where the encoder runs: auto, cpu, cuda or cuda:N.")]
PrecisionOpt = Annotated[
    Literal["auto", "fp32", "fp16", "bf16"],  # genrekit.backbones.base.PRECISIONS, without importing torch
    typer.Option(
        "--precision",
        help="Precision of the run's encoders: auto (the run's own; fp32 with a warning where bf16 is not native), fp32 or bf16.",
    ),
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace an existing output that genrekit did not write for this purpose.")
]
TopOpt = Annotated[int, typer.Option("--top", help="Genres shown per item (the predicted ones always are); 0: all.")]
WeightsOpt = Annotated[
    Optional[str], typer.Option("--weights", help="Weights tag, local checkpoint file/folder, or none (random init).", show_default="the backbone's default tag")
]


def csv_list(value: str | None) -> tuple[str, ...]:
    """``a, b,c`` as ``("a", "b", "c")``; nothing for an empty value."""
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def parse_columns(value: str | None) -> CsvColumns | None:
    """``--columns id=imdb_id,genres=tags`` as :class:`CsvColumns`."""
    from genrekit.data.manifest import CsvColumns

    if not value:
        return None
    fields = CsvColumns.__dataclass_fields__
    mapping = {}
    for item in value.split(","):
        key, sep, name = item.partition("=")
        if not sep or key.strip() not in fields or not name.strip():
            raise ConfigError(f"--columns item {item!r} must be KEY=NAME with KEY one of {', '.join(fields)}")
        mapping[key.strip()] = name.strip()
    return CsvColumns(**mapping)


def load_manifest(path: Path, fmt: str, columns: str | None, genre_sep: str | None) -> Manifest:
    """Read a manifest from the shared ``--format/--columns/--genre-sep`` flags."""
    from genrekit.data.manifest import read_manifest

    return read_manifest(path, fmt, columns=parse_columns(columns), genre_sep=genre_sep)


def vocab_config(
    top_k: int | None, min_count: int, genres: str | None, other: bool, synonyms: list[str] | None, no_synonyms: bool
) -> VocabConfig:
    """A :class:`VocabConfig` from the vocabulary flags."""
    from genrekit.data.vocab import VocabConfig

    pairs = []
    for item in synonyms or []:
        raw, sep, canon = item.partition("=")
        if not sep or not raw.strip() or not canon.strip():
            raise ConfigError(f"--synonym {item!r} must be RAW=CANONICAL, e.g. 'Science Fiction=Sci-Fi'")
        pairs.append((raw.strip(), canon.strip()))
    names = tuple(g.strip() for g in genres.split(",") if g.strip()) if genres is not None else None
    return VocabConfig(top_k, min_count, names, other, tuple(pairs), not no_synonyms)
