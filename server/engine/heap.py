"""Giving freed memory back to the OS after a model closes.

A model's load and first requests make many mid-sized allocations (llama.cpp's loader and graph
building, our token tables); once they are freed, glibc keeps the pages in its arenas for reuse, so
RSS after an unload stayed about 19 MiB above its level before the load (bench/bench_lifecycle.py).
`malloc_trim(0)` returns free pages from every arena, which brought it back to within 4 MiB
(docs/architecture.md, "Memory after an unload"). Other C libraries (musl, macOS) have no
malloc_trim and return memory on their own terms: there this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def return_free_memory() -> None:
    """Hand the allocator's free pages back to the OS (glibc); safe from any thread."""
    if _TRIM is not None:
        _TRIM(0)
