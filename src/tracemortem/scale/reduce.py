"""The reduce: per-rank summaries → the `Timing`, notes and facts of the whole input (docs/scale.md).

Summaries are added as they arrive and folded together every `FOLD_EVERY` of them (one concat
and one group_by per table), so the reduce holds a bounded number of unfolded summaries and tables
whose size depends on ranks, steps and distinct ops, never on events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from ..findings import Finding
from ..load.coverage import unread_notes
from ..load.devices import gpu_devices
from ..load.sessions import session_notes
from ..load.traces import FileMeta, error_notes, no_readable_trace, rank_table
from ..progress import Progress, silent
from ..timing import Timing, finish
from ..timing.partial import TimingPartial, concat_frames, merge
from ..timing.step_events import StepTimeline, TraceOrigin, origins, steps_that_matter
from .items import WorkItem, work_items
from .summary import SLOWEST, RankSummary, item_timeline, timeline_key

if TYPE_CHECKING:
    from .engines import Engine

FOLD_EVERY = 16  # summaries held before they are folded into the running totals


@dataclass
class Reducer:
    files: list[FileMeta] = field(default_factory=list)
    notes: list[tuple[int, Finding]] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    events: dict[int, int] = field(default_factory=dict)
    rank_items: dict[int, int] = field(default_factory=dict)  # rank → index of the first item holding it
    slowest: StepTimeline | None = None
    _timing: list[TimingPartial] = field(default_factory=list)
    _sessions: list[pl.DataFrame] = field(default_factory=list)
    _unread: list[pl.DataFrame] = field(default_factory=list)
    _devices: list[pl.DataFrame] = field(default_factory=list)

    def add(self, index: int, summary: RankSummary) -> None:
        """Take the summary of work item `index`; it is not kept."""
        self.files += summary.files
        self.notes += summary.notes
        self.errors += summary.errors
        for rank, count in summary.events.items():
            self.events[rank] = self.events.get(rank, 0) + count
        for file in summary.files:
            self.rank_items.setdefault(file.rank, index)
        if summary.slowest is not None and (
            self.slowest is None or timeline_key(summary.slowest) < timeline_key(self.slowest)
        ):
            self.slowest = summary.slowest
        if summary.timing is not None:
            self._timing.append(summary.timing)
            self._sessions.append(summary.sessions)
            self._unread.append(summary.unread)
            self._devices.append(summary.devices)
        if len(self._timing) >= FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        self._timing = [merge(self._timing)] if self._timing else []
        for frames in (self._sessions, self._unread, self._devices):
            frames[:] = [concat_frames(frames)] if frames else []

    def finish(self, items: Sequence[WorkItem], engine: Engine) -> ScaledTraces:
        """The whole input's traces; raises InputError when no file could be read."""
        self._fold()
        if not self._timing:
            raise no_readable_trace(self.errors)
        sessions = self._sessions[0].sort("rank", "start_ns", maintain_order=True)
        ranks = rank_table(self.files, self.events)
        notes = [note for _, note in sorted(self.notes, key=lambda tagged: tagged[0])]
        notes += error_notes(self.errors) + session_notes(sessions) + unread_notes(self._unread[0])
        return ScaledTraces(
            timing=finish(self._timing[0], sessions, ranks),
            notes=notes,
            ranks=ranks,
            gpus=gpu_devices(ranks, self._devices[0]),
            slowest=self.slowest,
            items=list(items),
            rank_items=self.rank_items,
            engine=engine,
        )


@dataclass
class ScaledTraces:
    """What the traces of every rank add up to; the map's engine stays at hand for `timelines`."""

    timing: Timing
    notes: list[Finding]
    ranks: dict[int, dict[str, Any]]  # TraceSet.ranks: files and envelope facts per rank
    gpus: list[dict[str, Any]]
    slowest: StepTimeline | None
    items: list[WorkItem]
    rank_items: dict[int, int]
    engine: Engine

    def origins(self) -> dict[int, TraceOrigin]:
        return origins(self.ranks)

    def timelines(self, findings: list[Finding]) -> list[StepTimeline]:
        """The slowest profiled step's events (kept by the map) and the first anomalous step's,
        read again from that one rank's files."""
        found = []
        for rank, step, why in steps_that_matter(self.timing.steps, findings):
            kept = self.slowest
            if why == SLOWEST and kept is not None and (kept.rank, kept.step) == (rank, step):
                found.append(kept)
                continue
            item = self.items[self.rank_items[rank]] if rank in self.rank_items else None
            if item is None:
                continue
            steps = self.timing.steps.filter(pl.col("rank") == rank)
            timeline = self.engine.call(item_timeline, item, steps, rank, step, why)
            if timeline is not None:
                found.append(timeline)
        return found


def analyze_traces(files: dict[Path, int | None], engine: Engine, progress: Progress = silent) -> ScaledTraces:
    """Map every rank's trace files on `engine`, reduce here."""
    items = work_items(files)
    reducer = Reducer()
    total, done = sum(item.ranks for item in items), 0
    for index, summary in engine.map(items):
        reducer.add(index, summary)
        done += items[index].ranks
        progress(f"rank {done}/{total} read ({summary.label})")
    progress("merging ranks")
    return reducer.finish(items, engine)
