"""Time statistics from profiler traces (docs/architecture.md, `Timing`).

`summarize(traces, config)` turns a `TraceSet` into per-op, per-kernel, per-step and per-rank
tables. All times in frames are int64 ns unless the column says otherwise; `ranks` follows the
JSON `run.ranks` contract with GPU times in µs as Holistic Trace Analysis defines them, computed
per profiling session and added up per rank (docs/traces.md "Sessions").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from ..load.traces import TraceSet
from ..progress import Progress, silent
from ..scalars import as_int, optional_float
from ..thresholds import Thresholds
from . import gpu as gpu_stats
from .kernels import kernel_table
from .ops import op_table, step_op_table, with_self_time
from .steps import step_breakdown

__all__ = ["Timing", "summarize"]


@dataclass
class Timing:
    ops: pl.DataFrame  # name, input_dims, cat, calls, total_ns, self_ns, p50_ns, p95_ns, max_ns, gpu_ns
    kernels: pl.DataFrame  # name, kind, type, calls, total_ns, mean_ns, max_ns, ranks, hta_sum_us
    steps: pl.DataFrame  # rank, step, ts_ns, duration_ns, exclusive parts *_ns, other_ns, total_*_ns
    step_ops: pl.DataFrame  # rank, step, name, calls, total_ns, self_ns
    ranks: list[dict[str, Any]] = field(default_factory=list)
    # per (rank, session): HTA temporal breakdown (µs) and which view it came from (hta | exact)
    gpu_sessions: pl.DataFrame = field(default_factory=pl.DataFrame)
    world_size: int | None = None  # from the traces' distributedInfo

    def step_span(self) -> dict[str, Any]:
        if self.steps.is_empty():
            return {"first": None, "last": None, "count": 0}
        numbers = self.steps["step"]
        return {"first": as_int(numbers.min()), "last": as_int(numbers.max()), "count": numbers.n_unique()}

    def gpu_ranks(self) -> list[int]:
        return [entry["rank"] for entry in self.ranks if "gpu" in entry]


def summarize(traces: TraceSet, config: Thresholds | None = None, progress: Progress = silent) -> Timing:
    progress("timing: op nesting and self time")
    cpu = with_self_time(traces.events)
    ops = op_table(cpu, traces.gpu, traces.events)
    step_ops = step_op_table(cpu)
    progress("timing: GPU kernels and HTA temporal breakdown")
    view = gpu_stats.hta_view(traces.events, traces.profiler_steps, traces.sessions)
    kernels = kernel_table(traces.gpu, view)
    temporal = gpu_stats.session_breakdown(
        gpu_stats.temporal_breakdown(view),
        gpu_stats.temporal_breakdown(gpu_stats.exact_view(traces.events, traces.profiler_steps)),
    )
    launches = gpu_stats.launch_stats(traces.gpu, traces.profiler_steps, traces.sessions)
    progress("timing: step breakdown")
    steps = step_breakdown(traces.events, traces.profiler_steps, traces.gpu)
    return Timing(
        ops=ops,
        kernels=kernels,
        steps=steps,
        step_ops=step_ops,
        ranks=_rank_entries(traces, steps, temporal, launches),
        gpu_sessions=temporal,
        world_size=_world_size(traces),
    )


def _world_size(traces: TraceSet) -> int | None:
    """The largest `distributedInfo.world_size` the traces state (a rank's trace knows the job's size)."""
    sizes = [
        info.get("world_size")
        for meta in traces.ranks.values()
        if isinstance(info := meta.get("distributedInfo"), dict)
    ]
    valid = [s for s in sizes if isinstance(s, int) and not isinstance(s, bool) and 0 < s < 2**31]
    return max(valid) if valid else None


def _plain_number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 3)


def _gpu_entry(sessions: pl.DataFrame, traces: TraceSet) -> dict[str, Any] | None:
    """One rank's `gpu` block: its sessions' breakdowns added up, and each session when several."""
    totals = sessions.select(pl.col(c).sum() for c in gpu_stats.BREAKDOWN).row(0, named=True)
    if totals["span_us"] <= 0:
        return None
    entry: dict[str, Any] = {
        key: _plain_number(totals[key]) for key in ("idle_us", "compute_us", "non_compute_us", "span_us", "comm_us")
    }
    entry["comm_overlap"] = totals["overlap_us"] / totals["comm_us"] if totals["comm_us"] > 0 else None
    if sessions.height > 1 or (sessions["view"] == "exact").any():
        files = dict(traces.sessions.select("session", "file").iter_rows()) if not traces.sessions.is_empty() else {}
        entry["sessions"] = [
            {
                "session": row["session"],
                "file": files.get(row["session"]),
                "view": row["view"],
                **{k: _plain_number(row[k]) for k in ("idle_us", "compute_us", "non_compute_us", "span_us")},
            }
            for row in sessions.iter_rows(named=True)
        ]
    return entry


def _rank_entries(
    traces: TraceSet, steps: pl.DataFrame, temporal: pl.DataFrame, launches: pl.DataFrame
) -> list[dict[str, Any]]:
    launch_rows = {row["rank"]: row for row in launches.iter_rows(named=True)}
    entries = []
    for rank in sorted(set(traces.ranks) | set(steps["rank"].to_list() if not steps.is_empty() else [])):
        mine = steps.filter(pl.col("rank") == rank) if not steps.is_empty() else steps
        median = optional_float(mine["duration_ns"].median()) if not mine.is_empty() else None
        entry: dict[str, Any] = {
            "rank": rank,
            "steps": mine.height,
            "step_time_s": median / 1e9 if median is not None else None,
        }
        gpu = _gpu_entry(temporal.filter(pl.col("rank") == rank), traces) if not temporal.is_empty() else None
        if gpu is not None:
            entry["gpu"] = gpu
        launch = launch_rows.get(rank)
        if launch is not None:
            entry["launch"] = {k: v for k, v in launch.items() if k != "rank"}
        entries.append(entry)
    return entries
