"""The analyzer process's allocator setting (docs/scale.md, "Memory").

polars allocates with jemalloc, which returns freed pages to the system only as later allocations
in the same arena pass by. The analyzer's own process folds the per-rank summaries as they arrive
and waits in between, so the pages of every fold stayed resident: 298 MB instead of 175 MB after
1,024 ranks. There, freed pages are returned at once. Its worker processes keep polars' decay:
they allocate all the time, and returning pages at once quadrupled their system time. A worker
runs one polars thread, so it gets one arena and no thread caches (`worker_options`): its spare
arenas and caches held ~35 MB more at the same CPU time.
"""

from __future__ import annotations

import os
import sys

CONF = "_RJEM_MALLOC_CONF"  # jemalloc reads it when polars loads; polars adds its own options before it

_WORKER = "narenas:1,tcache:false"


def return_freed_pages() -> None:
    """In this process only, before polars is imported (later, it changes nothing)."""
    if "polars" in sys.modules:
        return
    before = os.environ.get(CONF)
    os.environ[CONF] = f"{before},dirty_decay_ms:0" if before else "dirty_decay_ms:0"
    try:
        import polars  # noqa: F401  # jemalloc reads the setting as polars loads
    finally:
        # Processes started from here (the workers) get the setting they would have had.
        if before is None:
            os.environ.pop(CONF, None)
        else:
            os.environ[CONF] = before


def worker_options(before: str | None) -> str:
    """The setting a worker process starts with: ours, then the user's own (`before`), which win."""
    return f"{_WORKER},{before}" if before else _WORKER
