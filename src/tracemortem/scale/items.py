"""Work items of the per-rank map: the input's trace files, grouped by the rank their path names,
and consecutive ranks batched up to `BATCH_BYTES` of trace files (docs/scale.md "Work items").

A batch of small ranks is loaded and summarised together: a rank's tables are small, and the
fixed cost of each table operation would otherwise dominate. A rank bigger than the budget is an
item of its own. Each file keeps its session id (its place among all the input's files, as when
every file is read in one process), so the merged output does not depend on the batching. A file
whose path names no rank is a group of its own: its rank is known only once it is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..limits import limit
from ..load.traces import IndexedFile, indexed_files

BATCH_BYTES = limit(
    "TRACEMORTEM_BATCH_BYTES",
    48 * 2**20,
    "bytes of trace files (on disk) that one work item of the per-rank map reads, unless one rank alone has more",
)


@dataclass(frozen=True)
class WorkItem:
    label: str  # "rank 3", "ranks 0-7", or a file's name
    files: tuple[IndexedFile, ...]
    ranks: int  # rank groups in the item (for progress: "rank 17/128")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # reading it reports the problem
        return 0


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
