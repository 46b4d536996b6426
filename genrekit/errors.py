"""Every error genrekit raises on purpose.

Each subclasses the builtin it refines, so callers can catch ``KeyError``/``ValueError``
without knowing genrekit, and the CLI turns any :class:`GenrekitError` into one red line.
Messages say what was given, what was expected and how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GenrekitError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class UnknownNameError(GenrekitError, KeyError):
    """A registry lookup (backbone, head, format ...) found no such name."""

    def __init__(self, kind: str, name: str, known: Iterable[str], hint: str = "") -> None:
        known = list(dict.fromkeys(known))  # registries may list a name twice
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        if not close:  # fall back to a case-insensitive prefix/substring match
            low = name.lower()
            close = [k for k in known if low in k.lower() or k.lower() in low][:5]
        msg = f"unknown {kind} {name!r}"
        msg += f"; did you mean: {', '.join(close)}?" if close else "."
        if hint:
            msg += f" {hint}"
        super().__init__(msg)
        self.name = name
        self.suggestions = close


class ManifestError(GenrekitError, ValueError):
    """A manifest is malformed; the message names the row and column."""


class StoreMismatchError(GenrekitError, ValueError):
    """A feature store was made by another encoder, weights or preprocessing than asked for."""


class StoreError(GenrekitError, ValueError):
    """A feature store is missing, incomplete or not a genrekit store."""


class WeightsUnavailableError(GenrekitError, FileNotFoundError):
    """Pretrained weights cannot be loaded (offline, or a bad local file)."""


class MissingDependencyError(GenrekitError, ImportError):
    """An optional package is needed for this feature."""


class ConfigError(GenrekitError, ValueError):
    """An option value is out of range or options contradict each other."""


class UnreadableImageError(GenrekitError, OSError):
    """One image could not be read; the message is the reason recorded in the store."""


class LabelError(GenrekitError, ValueError):
    """Labels are missing or unusable for training or scoring (no genres, a genre with no positives)."""


class UntrustedFileError(GenrekitError, ValueError):
    """A saved model file holds types genrekit does not trust to load."""
