"""Time statistics from profiler traces (docs/architecture.md, `Timing`).

`summarize(traces, config)` turns a `TraceSet` into per-op, per-kernel, per-step and per-rank
tables. All times in frames are int64 ns unless the column says otherwise; `ranks` follows the
JSON `run.ranks` contract (DESIGN §6) with GPU times in µs as Holistic Trace Analysis defines them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from ..config import Config
from ..load.traces import TraceSet
from ..progress import Progress, silent
from ..scalars import as_int, optional_float
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

    def step_span(self) -> dict[str, Any]:
        if self.steps.is_empty():
            return {"first": None, "last": None, "count": 0}
        numbers = self.steps["step"]
        return {"first": as_int(numbers.min()), "last": as_int(numbers.max()), "count": numbers.n_unique()}

    def gpu_ranks(self) -> list[int]:
        return [entry["rank"] for entry in self.ranks if "gpu" in entry]


def summarize(traces: TraceSet, config: Config | None = None, progress: Progress = silent) -> Timing:
    progress("timing: op nesting and self time")
    cpu = with_self_time(traces.events)
    ops = op_table(cpu, traces.gpu, traces.events)
    step_ops = step_op_table(cpu)
    progress("timing: GPU kernels and HTA temporal breakdown")
    view = gpu_stats.hta_view(traces.events, traces.profiler_steps, traces.ranks)
    kernels = kernel_table(traces.gpu, view)
    temporal = gpu_stats.temporal_breakdown(view)
    launches = gpu_stats.launch_stats(traces.gpu)
    progress("timing: step breakdown")
    steps = step_breakdown(traces.events, traces.profiler_steps, traces.gpu)
    return Timing(
        ops=ops, kernels=kernels, steps=steps, step_ops=step_ops, ranks=_rank_entries(traces, steps, temporal, launches)
    )


def _rank_entries(
    traces: TraceSet, steps: pl.DataFrame, temporal: pl.DataFrame, launches: pl.DataFrame
) -> list[dict[str, Any]]:
    by_rank = {row["rank"]: row for row in temporal.iter_rows(named=True)} if not temporal.is_empty() else {}
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
        row = by_rank.get(rank)
        if row is not None and row["span_us"] > 0:
            entry["gpu"] = {
                "idle_us": row["idle_us"],
                "compute_us": row["compute_us"],
                "non_compute_us": row["non_compute_us"],
                "span_us": row["span_us"],
                "comm_us": row["comm_us"],
                "comm_overlap": row["overlap_us"] / row["comm_us"] if row["comm_us"] > 0 else None,
            }
        launch = launch_rows.get(rank)
        if launch is not None:
            entry["launch"] = {k: v for k, v in launch.items() if k != "rank"}
        entries.append(entry)
    return entries
