"""Work items of the per-rank map: the input's trace files, grouped by the rank their path names,
and consecutive ranks batched up to `BATCH_BYTES` of trace text (docs/scale.md "Work items").

A batch of small ranks is loaded and summarised together: a rank's tables are small, and the
fixed cost of each table operation would otherwise dominate. A rank bigger than the budget is an
item of its own. Each file keeps its session id (its place among all the input's files, as when
every file is read in one process), so the merged output does not depend on the batching. A file
whose path names no rank is a group of its own: its rank is known only once it is read.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..limits import limit
from ..load import gzip_stream
from ..load.traces import IndexedFile, indexed_files

BATCH_BYTES = limit(
    "TRACEMORTEM_BATCH_BYTES",
    48 * 2**20,
    "bytes of trace text (a gzip counted by the size its trailer claims) that one work item of the per-rank map reads, "
    "unless one rank alone has more",
)


_GZIP_MIN_BYTES = 18  # header (10) + trailer (8)


@dataclass(frozen=True)
class WorkItem:
    label: str  # "rank 3", "ranks 0-7", or a file's name
    files: tuple[IndexedFile, ...]
    ranks: int  # rank groups in the item (for progress: "rank 17/128")


def _size(path: Path) -> int:
    """The bytes reading `path` will hold: a gzip's claimed uncompressed size (its trailer's ISIZE:
    real traces inflate 9-30:1, so their size on disk would batch 10× too many ranks into one
    item), never less than its size on disk. A special file counts 0 and is never opened here
    (opening a FIFO would block); reading it reports the problem."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return 0
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return 0
        if info.st_size < _GZIP_MIN_BYTES or os.pread(fd, 2, 0) != gzip_stream.MAGIC:
            return info.st_size
        # ISIZE is the last member's size mod 2**32: a claim, used only to size the batch
        claimed = int.from_bytes(os.pread(fd, 4, info.st_size - 4), "little")
        return max(claimed, info.st_size)
    except OSError:
        return 0
    finally:
        os.close(fd)


def _groups(files: dict[Path, int | None]) -> list[tuple[str, list[IndexedFile]]]:
    """One group per guessed rank (its files in path order), one per file without a guess, in the
    order of their first file."""
    by_rank: dict[int, list[IndexedFile]] = {}
    groups: list[tuple[str, list[IndexedFile]]] = []
    for indexed in indexed_files(files):
        _, path, guess = indexed
        if guess is None:
            groups.append((path.name, [indexed]))
        elif guess in by_rank:
            by_rank[guess].append(indexed)
        else:
            by_rank[guess] = [indexed]
            groups.append((f"rank {guess}", by_rank[guess]))
    return groups


def work_items(files: dict[Path, int | None], batch_bytes: int | None = None) -> list[WorkItem]:
    budget = BATCH_BYTES.value() if batch_bytes is None else batch_bytes
    items: list[WorkItem] = []
    labels: list[str] = []
    batch: list[IndexedFile] = []
    size = 0

    def close() -> None:
        if batch:
            label = labels[0] if len(labels) == 1 else f"{labels[0]} … {labels[-1]}"
            items.append(WorkItem(label, tuple(sorted(batch)), len(labels)))

    for label, group in _groups(files):
        group_size = sum(_size(path) for _, path, _ in group)
        if batch and size + group_size > budget:
            close()
            labels, batch, size = [], [], 0
        labels.append(label)
        batch += group
        size += group_size
    close()
    return items
