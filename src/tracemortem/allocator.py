"""The analyzer process's allocator setting (docs/scale.md, "Memory").

polars allocates with jemalloc, which returns freed pages to the system only as later allocations
in the same arena pass by. The analyzer's own process folds the per-rank summaries as they arrive
and waits in between, so the pages of every fold stayed resident: 298 MB instead of 175 MB after
1,024 ranks. There, freed pages are returned at once. Its worker processes keep polars' setting:
they allocate all the time, and returning pages at once quadrupled their system time.
"""

from __future__ import annotations

import os
import sys

_CONF = "_RJEM_MALLOC_CONF"  # jemalloc reads it when polars loads; polars adds its own options before it


def return_freed_pages() -> None:
    """In this process only, before polars is imported (later, it changes nothing)."""
    if "polars" in sys.modules:
        return
    before = os.environ.get(_CONF)
    os.environ[_CONF] = f"{before},dirty_decay_ms:0" if before else "dirty_decay_ms:0"
    try:
        import polars  # noqa: F401  # jemalloc reads the setting as polars loads
    finally:
        # Processes started from here (the workers) get the setting they would have had.
        if before is None:
            os.environ.pop(_CONF, None)
        else:
            os.environ[_CONF] = before
