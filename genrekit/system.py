"""Facts about the machine that several layers size their work by, and the process settings that
running a network on a CPU, and leaving a process that imported one, need."""

from __future__ import annotations

import atexit
import ctypes
import functools
import gc
import logging
import os

log = logging.getLogger(__name__)

# glibc's mallopt() parameters (malloc.h) and what keep_freed_memory() sets them to.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_KEEP_BYTES = 1 << 30
_OPT_OUT = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES")


def cpu_count() -> int:
    """Cores this process may use (affinity/cgroup aware where the OS tells), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@functools.cache
def _malloc_left_alone() -> bool:
    """Whether genrekit leaves glibc's malloc as it is: not glibc, or the environment sets it
    (decided once a process, for :func:`keep_freed_memory` and :func:`share_main_arena`)."""
    if os.environ.get("GENREKIT_MALLOC") == "default" or any(v in os.environ for v in _OPT_OUT):
        log.debug("malloc: left as the environment sets it")
        return True
    return not glibc()


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc keep the memory a network frees for the next batch instead of handing it back.

    A CNN's forward allocates and frees tens of MB of activations a batch. With glibc's defaults a
    block above the mmap threshold (adaptive, at most 32 MiB) is mapped and unmapped every time, and
    the heap top is trimmed once twice that is free, so every batch faults its memory in again,
    page by page: on 1,024 posters, MobileNetV2 six stages, a fresh process took 6.3 million minor
    faults and 20 s of kernel time, and ran at half the speed (``benchmarks/README.md``). Both
    thresholds at 1 GiB keep it in the process; the peak resident size hardly moves (0.97 -> 1.0 GB
    there). Threads started afterwards share the main arena (:func:`share_main_arena`), where
    these thresholds hold.

    Process-wide and once; glibc only. Left alone when the environment sets glibc's malloc
    (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TOP_PAD_``,
    ``MALLOC_ARENA_MAX``, ``GLIBC_TUNABLES``) or ``GENREKIT_MALLOC=default``. Returns whether the
    setting is in force.
    """
    if _malloc_left_alone():
        return False
    libc = ctypes.CDLL(None)
    kept = bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES) and libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES))
    log.debug("malloc: freed memory kept for reuse up to %d MiB: %s", _KEEP_BYTES >> 20, kept)
    return share_main_arena() and kept


@functools.cache
def share_main_arena() -> bool:
    """Threads started from now on allocate from glibc's main arena (``M_ARENA_MAX`` 1).

    A thread's first allocation gives it an arena of its own, whose heaps are at most 64 MiB: a
    larger block (MobileNetV2's widest activation at batch 16 is 77 MB in fp32) is mapped and
    unmapped every time whatever :func:`keep_freed_memory` sets, and a heap that falls free is
    unmapped. A forward in another thread (extraction's streams, a server's worker threads) faulted
    2,400-3,900 pages a poster and ran at 0.5-0.65 of the main thread's rate; in the main arena it
    faults none and runs at 0.85-0.95 of it (``benchmarks/README.md``, "Streams, and glibc's
    arenas").

    Only arenas made from now on are capped: a thread that has allocated keeps its own, and a new
    thread may be handed one of those, so the command line calls this before it starts any thread,
    and building an encoder calls it (through :func:`keep_freed_memory`) before the network's own.
    Process-wide and once; glibc only; left alone as :func:`keep_freed_memory` is.
    """
    if _malloc_left_alone():
        return False
    shared = bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 1))
    log.debug("malloc: threads started from now on share the main arena: %s", shared)
    return shared


def glibc() -> bool:
    """Whether this process runs on GNU libc (whose malloc :func:`keep_freed_memory` tunes)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError, TypeError):  # not POSIX, or a libc that does not say
        return False


@functools.cache
def exit_without_collection() -> None:
    """At exit, skip the interpreter's last garbage collection over every object it imported.

    A process that imported torch and scikit-learn spends 0.7-1.2 s after its last line on that
    collection (2 cores, ``benchmarks/README.md``, "Outside the fits"), memory the kernel frees
    anyway when the process ends. An exit handler (registered once) freezes what is left
    (:func:`gc.freeze`); handlers registered later run before it, and loky stops its job processes
    before any handler runs. The interpreter then frees by reference count only: what is still in
    a reference cycle is not finalized (Python does not promise it either); genrekit closes what it
    writes. Called by the command line's entry point and by the heads runner's job processes
    (loky's reusable workers, which a library caller's later joblib work may share: it changes
    only how they leave).
    """
    atexit.register(gc.freeze)
