"""The one progress protocol of the library: the CLI turns it into rich bars, tests ignore it.

Library functions take ``progress: ProgressFn | None`` and call ``progress(stage, done, total)``
after each unit of work (``total`` may be ``None`` when unknown). They never print.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[str, int, "int | None"], None]


def null_progress(stage: str, done: int, total: int | None) -> None:
    """A progress callback that does nothing."""
