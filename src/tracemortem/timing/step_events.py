"""The events of the steps that matter — the slowest profiled step and the first anomalous one —
kept for the report's timeline, and where each rank's trace came from, so a reader can open the
same range in Perfetto or chrome://tracing (docs/report.md, "Timeline")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    from ..findings import Finding
    from ..load.traces import TraceSet

MAX_EVENTS = 1500  # bars in one timeline; beyond this the longest are kept
_CPU_CATEGORIES = ("cpu_op", "user_annotation", "cuda_runtime", "cuda_driver", "python_function")


@dataclass(frozen=True)
class TraceOrigin:
    """Where a rank's events came from: its trace files and the offset the loader added to every
    timestamp (a trace's `baseTimeNanoseconds`), so times can be written as the file has them."""

    files: tuple[str, ...]
    base_time_ns: int = 0

    def file_us(self, ts_ns: int) -> float:
        """A loaded timestamp as the file's own `ts` (µs), the unit Perfetto and chrome://tracing show."""
        return (ts_ns - self.base_time_ns) / 1000


@dataclass(frozen=True)
class StepTimeline:
    rank: int
    step: int
    why: str  # "slowest profiled step", "first anomalous step"
    start_ns: int
    end_ns: int
    lanes: list[str]
    # lane (index into lanes), start_ms and dur_ms (from start_ns), name
    events: pl.DataFrame = field(repr=False)
    total_events: int = 0  # before the cap


def origins(ranks: dict[int, dict[str, Any]]) -> dict[int, TraceOrigin]:
    """rank → its trace files and time base, from `TraceSet.ranks`."""
    out = {}
    for rank, meta in ranks.items():
        base = meta.get("base_time_ns")
        files = meta.get("files") or []
        out[rank] = TraceOrigin(tuple(str(f) for f in files), base if isinstance(base, int) else 0)
    return out


def _lane_events(traces: TraceSet, rank: int, step: int, start: int, end: int) -> pl.DataFrame:
    window = (pl.col("rank") == rank) & (pl.col("ts") + pl.col("dur") >= start) & (pl.col("ts") <= end)
    cpu = traces.events.filter(window & pl.col("cat").is_in(_CPU_CATEGORIES)).select(
        pl.format("CPU thread {}", pl.col("tid").cast(pl.String)).alias("lane"),
        "ts",
        "dur",
        pl.col("name").cast(pl.String),
    )
    gpu = traces.gpu.filter(window).select(
        pl.format("GPU stream {}", pl.col("stream").cast(pl.String)).alias("lane"),
        "ts",
        "dur",
        pl.col("name").cast(pl.String),
    )
    return pl.concat([cpu, gpu])


def step_timeline(traces: TraceSet, steps: pl.DataFrame, rank: int, step: int, why: str) -> StepTimeline | None:
    """The events of one profiled step of one rank (`steps`: the timing stage's per-step frame)."""
    row = steps.filter((pl.col("rank") == rank) & (pl.col("step") == step))
    if row.is_empty():
        return None
    start = int(row["ts_ns"][0])
    end = start + int(row["duration_ns"][0])
    events = _lane_events(traces, rank, step, start, end)
    total = events.height
    if total > MAX_EVENTS:
        events = events.sort("dur", "ts", descending=[True, False]).head(MAX_EVENTS)
    # CPU threads first, then GPU streams, each in number order
    lanes = sorted(events["lane"].unique().to_list(), key=lambda lane: (lane.startswith("GPU"), len(lane), lane))
    clipped_start = pl.max_horizontal(pl.col("ts"), pl.lit(start))
    clipped_end = pl.min_horizontal(pl.col("ts") + pl.col("dur"), pl.lit(end))
    events = events.sort("ts", "name").select(
        pl.col("lane").replace_strict(lanes, list(range(len(lanes))), return_dtype=pl.Int32),
        ((clipped_start - start) / 1e6).round(4).alias("start_ms"),
        ((clipped_end - clipped_start).clip(lower_bound=0) / 1e6).round(4).alias("dur_ms"),
        "name",
    )
    return StepTimeline(rank, step, why, start, end, lanes, events, total)


def steps_that_matter(steps: pl.DataFrame, findings: list[Finding]) -> list[tuple[int, int, str]]:
    """(rank, step, why) of the slowest profiled step, and of the first step a finding names
    when it was profiled too."""
    if steps.is_empty() or not {"rank", "step", "duration_ns"} <= set(steps.columns):
        return []
    slowest = steps.sort("duration_ns", "rank", "step", descending=[True, False, False]).row(0, named=True)
    chosen = [(int(slowest["rank"]), int(slowest["step"]), "slowest profiled step")]
    profiled = set(zip(steps["rank"].to_list(), steps["step"].to_list()))
    flagged = sorted(
        ((f.step, f.rank if f.rank is not None else chosen[0][0]) for f in findings if f.step is not None),
    )
    for step, rank in flagged:
        if (rank, step) in profiled:
            if (rank, step) != chosen[0][:2]:
                chosen.append((rank, step, "first anomalous step"))
            break
    return chosen
