"""Work items of the per-rank map: the input's trace files, grouped by the rank their path names.

Each file keeps its session id (its place among all the input's files, as when every file is read
in one process), so the merged output does not depend on how the files were grouped. A file whose
path names no rank is an item of its own: its rank is known only once it is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..load.traces import IndexedFile, indexed_files


@dataclass(frozen=True)
class WorkItem:
    label: str  # "rank 3", or the file's name
    files: tuple[IndexedFile, ...]


def work_items(files: dict[Path, int | None]) -> list[WorkItem]:
    """One item per guessed rank (its files in path order), and one per file without a guess, in
    the order of their first file."""
    by_rank: dict[int, list[IndexedFile]] = {}
    items: list[WorkItem | int] = []  # an int stands for the rank's item, filled in below
    for indexed in indexed_files(files):
        _, path, guess = indexed
        if guess is None:
            items.append(WorkItem(path.name, (indexed,)))
        elif guess in by_rank:
            by_rank[guess].append(indexed)
        else:
            by_rank[guess] = [indexed]
            items.append(guess)
    return [item if isinstance(item, WorkItem) else WorkItem(f"rank {item}", tuple(by_rank[item])) for item in items]
