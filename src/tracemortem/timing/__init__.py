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
from . import quantiles
from .kernels import kernel_table
from .ops import op_table
from .partial import TimingPartial, partial_timing

__all__ = ["Timing", "TimingPartial", "finish", "partial_timing", "summarize"]


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
    progress("timing: ops, kernels, steps and HTA temporal breakdown")
    return finish(partial_timing(traces), traces.sessions, traces.ranks)


def finish(merged: TimingPartial, sessions: pl.DataFrame, ranks: dict[int, dict[str, Any]]) -> Timing:
    """The `Timing` of the ranks whose partials were merged into `merged`; `sessions` and `ranks` are
    theirs too (`TraceSet.sessions`, `TraceSet.ranks`)."""
    steps = merged.steps.sort("rank", "session", "step")
    return Timing(
        ops=op_table(merged.ops, merged.op_durations, merged.op_gpu, on_gpu=not merged.kernels.is_empty()),
        kernels=kernel_table(merged.kernels, merged.kernel_ranks, merged.kernel_hta),
        steps=steps,
        step_ops=merged.step_ops.sort("rank", "session", "step", "self_ns", descending=[False, False, False, True]),
        ranks=_rank_entries(ranks, sessions, steps, merged.gpu_sessions, _launch_stats(merged)),
        gpu_sessions=merged.gpu_sessions.sort(gpu_stats.SESSION),
        world_size=_world_size(ranks),
    )


def _launch_stats(merged: TimingPartial) -> pl.DataFrame:
    """Per rank: HTA 0.5's `get_cuda_kernel_launch_stats`, summarised (`gpu.launch_pairs`)."""
    values, keys = merged.launch_values, ["rank", "measure"]
    medians = quantiles.median(values, keys, "value", "p50")
    delay_p95 = quantiles.quantile(values.filter(pl.col("measure") == "delay"), keys, "value", 0.95, "linear", "p95")
    out = merged.launches.with_columns(pl.col(c).cast(pl.UInt32) for c in merged.launches.columns if c != "rank")
    if medians.is_empty():
        return out  # no launch pairs: no rank has a `launch` entry
    wide = medians.pivot("measure", index="rank", values="p50")
    return (
        out.join(wide, on="rank", how="left")
        .join(delay_p95.select("rank", "p95"), on="rank", how="left")
        .select(
            "rank",
            "launches",
            pl.col("delay").alias("delay_p50_us"),
            pl.col("p95").alias("delay_p95_us"),
            pl.col("launch").alias("launch_p50_us"),
            pl.col("gpu").alias("gpu_p50_us"),
            "shorter_than_launch",
            "launch_outliers",
            "delay_outliers",
        )
        .sort("rank")
    )


def _world_size(ranks: dict[int, dict[str, Any]]) -> int | None:
    """The largest `distributedInfo.world_size` the traces state (a rank's trace knows the job's size)."""
    sizes = [info.get("world_size") for meta in ranks.values() if isinstance(info := meta.get("distributedInfo"), dict)]
    valid = [s for s in sizes if isinstance(s, int) and not isinstance(s, bool) and 0 < s < 2**31]
    return max(valid) if valid else None


def _plain_number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 3)


def _gpu_entry(sessions: pl.DataFrame, files: dict[int, str]) -> dict[str, Any] | None:
    """One rank's `gpu` block: its sessions' breakdowns added up, and each session when several."""
    totals = sessions.select(pl.col(c).sum() for c in gpu_stats.BREAKDOWN).row(0, named=True)
    if totals["span_us"] <= 0:
        return None
    entry: dict[str, Any] = {
        key: _plain_number(totals[key]) for key in ("idle_us", "compute_us", "non_compute_us", "span_us", "comm_us")
    }
    entry["comm_overlap"] = totals["overlap_us"] / totals["comm_us"] if totals["comm_us"] > 0 else None
    if sessions.height > 1 or (sessions["view"] == "exact").any():
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
    ranks: dict[int, dict[str, Any]],
    sessions: pl.DataFrame,
    steps: pl.DataFrame,
    temporal: pl.DataFrame,
    launches: pl.DataFrame,
) -> list[dict[str, Any]]:
    """The `run.ranks` entries (one per rank: the output itself is per rank); every statistic is
    computed for all ranks at once."""
    launch_rows = {row["rank"]: row for row in launches.iter_rows(named=True)}
    step_stats = steps.group_by("rank").agg(pl.len(), pl.col("duration_ns").median()) if not steps.is_empty() else None
    per_rank = {row["rank"]: row for row in step_stats.iter_rows(named=True)} if step_stats is not None else {}
    by_rank = temporal.partition_by("rank", as_dict=True) if not temporal.is_empty() else {}
    files = dict(sessions.select("session", "file").iter_rows()) if not sessions.is_empty() else {}
    entries = []
    for rank in sorted(set(ranks) | set(per_rank)):
        mine = per_rank.get(rank)
        median = optional_float(mine["duration_ns"]) if mine is not None else None
        entry: dict[str, Any] = {
            "rank": rank,
            "steps": mine["len"] if mine is not None else 0,
            "step_time_s": median / 1e9 if median is not None else None,
        }
        rank_sessions = by_rank.get((rank,))
        gpu = _gpu_entry(rank_sessions, files) if rank_sessions is not None else None
        if gpu is not None:
            entry["gpu"] = gpu
        launch = launch_rows.get(rank)
        if launch is not None:
            entry["launch"] = {k: v for k, v in launch.items() if k != "rank"}
        entries.append(entry)
    return entries
