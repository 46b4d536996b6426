"""Facts about the machine that several layers size their work by."""

from __future__ import annotations

import os


def cpu_count() -> int:
    """Cores this process may use (affinity/cgroup aware where the OS tells), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
