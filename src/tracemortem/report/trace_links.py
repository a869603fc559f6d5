"""Where in the trace a performance finding or a timeline lies, written so a reader can open that
exact range in Perfetto or chrome://tracing (docs/report.md, "Timeline")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from ..findings import PERF_RULES, Finding
from ..scalars import as_int
from ..timing.step_events import TraceOrigin

if TYPE_CHECKING:
    from ..analysis import Analysis


@dataclass(frozen=True)
class TraceRange:
    file: str
    start_us: float  # as the file's own `ts` values
    end_us: float
    step: int | None  # the ProfilerStep the range is, when it is one

    @property
    def range_text(self) -> str:
        return f"ts {self.start_us:.0f} – {self.end_us:.0f} µs ({(self.end_us - self.start_us) / 1000:.3g} ms)"

    @property
    def how_to_open(self) -> str:
        find = (
            f"search for ProfilerStep#{self.step}, click it and press F to zoom to it"
            if self.step is not None
            else "press F after selecting the range's first slice"
        )
        query = f"select * from slice where ts between {self.start_us * 1000:.0f} and {self.end_us * 1000:.0f}"
        return f"Open the file in ui.perfetto.dev or chrome://tracing, then {find}; in Perfetto's query page: {query}"


def _file(origin: TraceOrigin) -> str:
    return origin.files[0] if len(origin.files) == 1 else ", ".join(origin.files) + " (one of these)"


def step_range(analysis: Analysis, rank: int, step: int | None) -> TraceRange | None:
    """The range of one profiled step of a rank, or (step None, or not profiled) the rank's whole
    profiled span."""
    origin = analysis.trace_origins.get(rank)
    frame = analysis.step_times
    if origin is None or not origin.files or frame.is_empty() or not {"ts_ns", "duration_ns"} <= set(frame.columns):
        return None
    mine = frame.filter(pl.col("rank") == rank)
    one = mine.filter(pl.col("step") == step) if step is not None else mine.clear()
    chosen, named = (one, step) if not one.is_empty() else (mine, None)
    if chosen.is_empty():
        return None
    start = as_int(chosen["ts_ns"].min())
    end = as_int((chosen["ts_ns"] + chosen["duration_ns"]).max())
    return TraceRange(_file(origin), origin.file_us(start), origin.file_us(end), named)


def finding_range(analysis: Analysis, finding: Finding) -> TraceRange | None:
    if finding.rule not in PERF_RULES or not analysis.trace_origins:
        return None
    rank = finding.rank if finding.rank is not None else min(analysis.trace_origins)
    return step_range(analysis, rank, finding.step)
