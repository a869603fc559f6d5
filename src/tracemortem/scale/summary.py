"""The per-rank map: one work item's trace files → a small `RankSummary` (docs/scale.md).

`map_item` is a pure, picklable function of its item: it reads the files (each one a profiling
session), normalises and links them, and keeps only what the reduce needs — the mergeable timing
tables (`timing.partial`), the sessions, the notes, the devices used, and the events of this
item's slowest profiled step for the report's timeline. No event table leaves it, so what the
reduce holds grows with ranks and steps, never with events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from ..findings import Finding
from ..load import chrome
from ..load.coverage import unread_counts
from ..load.devices import used_devices
from ..load.sessions import SESSIONS_SCHEMA
from ..load.traces import FileMeta, TraceSet, event_counts, link_files, read_files
from ..timing.partial import TimingPartial, partial_timing
from ..timing.step_events import StepTimeline, step_timeline
from .items import WorkItem

SLOWEST = "slowest profiled step"


@dataclass
class RankSummary:
    label: str
    files: list[FileMeta] = field(default_factory=list)  # the readable files
    notes: list[tuple[int, Finding]] = field(default_factory=list)  # (file index, note)
    errors: list[tuple[int, str]] = field(default_factory=list)  # (file index, why it could not be read)
    events: dict[int, int] = field(default_factory=dict)  # rank → events read
    sessions: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=SESSIONS_SCHEMA))
    unread: pl.DataFrame = field(default_factory=pl.DataFrame)  # load.coverage.unread_counts
    devices: pl.DataFrame = field(default_factory=pl.DataFrame)  # load.devices.used_devices
    timing: TimingPartial | None = None  # None: no file of the item was readable
    slowest: StepTimeline | None = None


def _load(
    item: WorkItem, parallel_decode: bool
) -> tuple[TraceSet | None, list[FileMeta], list[tuple[int, Finding]], list[tuple[int, str]]]:
    if parallel_decode:  # a big trace's chunks decoded by worker processes (load/chrome.py)
        with chrome.Decoders(untrusted={path.parent for _, path, _ in item.files}) as workers:
            read = read_files(list(item.files), workers=workers)
    else:
        read = read_files(list(item.files))
    files, notes, errors = list(read.files), list(read.notes), list(read.errors)
    return link_files(read), files, notes, errors


def slowest_step(steps: pl.DataFrame) -> tuple[int, int] | None:
    """(rank, step) of the longest profiled step; ties to the lowest rank, then step."""
    if steps.is_empty():
        return None
    row = steps.sort("duration_ns", "rank", "step", descending=[True, False, False]).row(0, named=True)
    return int(row["rank"]), int(row["step"])


def timeline_key(timeline: StepTimeline) -> tuple[int, int, int]:
    """Orders timelines as `slowest_step` orders steps: longest first, then lowest rank and step."""
    return (-(timeline.end_ns - timeline.start_ns), timeline.rank, timeline.step)


def map_item(item: WorkItem, parallel_decode: bool = False) -> RankSummary:
    traces, files, notes, errors = _load(item, parallel_decode)
    summary = RankSummary(item.label, files, notes, errors)
    if traces is None:
        return summary
    summary.events = event_counts(traces.events)
    summary.sessions = traces.sessions
    summary.unread = unread_counts(traces.events)
    summary.devices = used_devices(traces.events)
    summary.timing = partial_timing(traces)
    steps = summary.timing.steps.sort("rank", "session", "step")
    slowest = slowest_step(steps)
    if slowest is not None:
        summary.slowest = step_timeline(traces, steps, *slowest, SLOWEST)
    return summary


def item_timeline(item: WorkItem, steps: pl.DataFrame, rank: int, step: int, why: str) -> StepTimeline | None:
    """The timeline of one more step of the item's rank, read again from its files (`steps`: the
    merged `Timing.steps`)."""
    traces, *_ = _load(item, parallel_decode=False)
    return step_timeline(traces, steps, rank, step, why) if traces is not None else None
