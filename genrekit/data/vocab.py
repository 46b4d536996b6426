"""The genre vocabulary: which genres a run predicts, and how raw labels map onto them.

Order of operations in :func:`apply_vocabulary`: synonyms first (so ``Science Fiction`` and
``Sci-Fi`` count as one genre), then an explicit ``genres`` list or ``min_count`` and ``top_k``,
then genres outside the vocabulary go to ``Other`` (if asked) or are dropped. Items left with
no genre are removed and listed in the report. Heads and evaluation align genres by name.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from genrekit.data.manifest import Manifest
from genrekit.errors import ConfigError, UnknownNameError

log = logging.getLogger(__name__)

# Only spellings that cannot mean anything else; matched case-insensitively.
BUILTIN_SYNONYMS: Mapping[str, str] = {
    "science fiction": "Sci-Fi",
    "science-fiction": "Sci-Fi",
    "sci fi": "Sci-Fi",
    "scifi": "Sci-Fi",
    "sf": "Sci-Fi",
    "film noir": "Film-Noir",
    "noir": "Film-Noir",
    "animated": "Animation",
    "biopic": "Biography",
    "documentaries": "Documentary",
    "musicals": "Musical",
    "romantic": "Romance",
    "war film": "War",
}


@dataclass(frozen=True)
class VocabConfig:
    """How to build the genre vocabulary; each field is a CLI flag of ``extract`` and ``data clean``.

    Attributes:
        top_k: keep the ``top_k`` most frequent genres (``--top-k``); ``None`` keeps all.
        min_count: drop genres with fewer items (``--min-count``); rare genres cannot be learned
            or evaluated, and they break stratification.
        genres: an explicit vocabulary (``--genres A,B,C``); overrides ``top_k`` and ``min_count``.
        other: put genres outside the vocabulary into an ``Other`` genre instead of dropping them
            (``--other``), so items keep a label.
        synonyms: extra ``(raw, canonical)`` renames, applied case-insensitively after the built-ins.
        builtin_synonyms: apply :data:`BUILTIN_SYNONYMS` (``--no-synonyms`` turns them off).
    """

    top_k: int | None = None
    min_count: int = 1
    genres: tuple[str, ...] | None = None
    other: bool = False
    synonyms: tuple[tuple[str, str], ...] = ()
    builtin_synonyms: bool = True
    other_name: str = "Other"

    def __post_init__(self) -> None:
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k={self.top_k} must be at least 1 (or unset to keep every genre)")
        if self.min_count < 1:
            raise ConfigError(f"min_count={self.min_count} must be at least 1")
        if self.genres is not None and not self.genres:
            raise ConfigError("genres is an empty list; give at least one genre, e.g. --genres Drama,Comedy")


@dataclass
class VocabReport:
    """What :func:`apply_vocabulary` did, to show and to store with the features."""

    vocabulary: list[str]
    renamed: dict[str, str]  # raw spelling -> canonical, for every spelling seen
    dropped: dict[str, int]  # genre -> label count removed (not in the vocabulary, no Other)
    to_other: dict[str, int]  # genre -> label count moved into Other
    emptied: list[str] = field(default_factory=list)  # ids removed because no genre was left
    config: dict = field(default_factory=dict)


def _synonym_table(config: VocabConfig) -> dict[str, str]:
    table = {k.casefold(): v for k, v in BUILTIN_SYNONYMS.items()} if config.builtin_synonyms else {}
    table.update({k.strip().casefold(): v.strip() for k, v in config.synonyms})
    return table


def canonical_genres(manifest: Manifest, config: VocabConfig) -> tuple[Manifest, dict[str, str]]:
    """Apply synonyms and unify case (``comedy`` -> the most frequent spelling, ``Comedy``)."""
    table = _synonym_table(config)
    spellings = Counter(g for s in manifest.samples for g in s.genres)
    mapped = {g: table.get(g.casefold(), g) for g in spellings}
    weight: Counter[str] = Counter()
    for g, c in spellings.items():
        weight[mapped[g]] += c
    # The most frequent spelling of each case-folded name wins, so "drama" joins "Drama".
    best: dict[str, str] = {}
    for g, _ in sorted(weight.items(), key=lambda kv: (-kv[1], kv[0])):
        best.setdefault(g.casefold(), g)
    renamed = {g: best[mapped[g].casefold()] for g in spellings if best[mapped[g].casefold()] != g}
    samples = [
        replace(s, genres=tuple(dict.fromkeys(renamed.get(g, g) for g in s.genres)))
        if any(g in renamed for g in s.genres)
        else s
        for s in manifest.samples
    ]
    return manifest.with_samples(samples), renamed


def choose_vocabulary(counts: Counter[str], config: VocabConfig) -> list[str]:
    """The genres to keep, most frequent first (an explicit list keeps its own order).

    Names in ``config.genres`` go through the same synonyms, so ``--genres "Science Fiction"``
    finds ``Sci-Fi``.
    """
    if config.genres is not None:
        known = {g.casefold(): g for g in counts}
        table = _synonym_table(config)
        out = []
        for g in config.genres:
            g = table.get(g.casefold(), g)
            if g.casefold() not in known:
                raise UnknownNameError("genre", g, list(counts), hint=f"the manifest has {len(counts)} genres")
            out.append(known[g.casefold()])
        return list(dict.fromkeys(out))
    ranked = [g for g, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= config.min_count]
    return ranked[: config.top_k] if config.top_k else ranked


def apply_vocabulary(manifest: Manifest, config: VocabConfig | None = None) -> tuple[Manifest, VocabReport]:
    """Map every item's genres onto the vocabulary that ``config`` describes.

    Args:
        manifest: the items, with raw genre names.
        config: the vocabulary rules; the default keeps every genre and applies built-in synonyms.

    Returns:
        A new manifest (items without any remaining genre removed) and a report of what was
        renamed, dropped, moved to ``Other`` and removed.

    Example:
        >>> m2, rep = apply_vocabulary(m, VocabConfig(top_k=10, other=True))  # doctest: +SKIP
        >>> rep.vocabulary[-1]
        'Other'
    """
    config = config or VocabConfig()
    canon, renamed = canonical_genres(manifest, config)
    counts = canon.genre_counts()
    vocab = choose_vocabulary(counts, config)
    keep = set(vocab)
    if config.other and config.other_name in keep:
        raise ConfigError(
            f"the data already has a genre named {config.other_name!r}; choose another other_name or drop --other"
        )
    outside = {g: c for g, c in counts.items() if g not in keep}
    samples, emptied = [], []
    for s in canon.samples:
        genres = [g for g in s.genres if g in keep]
        if config.other and len(genres) < len(s.genres):
            genres.append(config.other_name)
        if not genres:
            emptied.append(s.id)
            continue
        samples.append(s if tuple(genres) == s.genres else replace(s, genres=tuple(genres)))
    if config.other and outside:
        vocab = vocab + [config.other_name]
    report = VocabReport(
        vocabulary=vocab,
        renamed=renamed,
        dropped={} if config.other else dict(sorted(outside.items(), key=lambda kv: -kv[1])),
        to_other=dict(sorted(outside.items(), key=lambda kv: -kv[1])) if config.other else {},
        emptied=emptied,
        config={k: getattr(config, k) for k in config.__dataclass_fields__},
    )
    if emptied:
        log.warning("%d item(s) have no genre left in the vocabulary and were removed", len(emptied))
    return canon.with_samples(samples), report
