"""Per-rank GPU statistics with Holistic Trace Analysis' definitions (research/trace-analyzers.md §1.2).

The temporal breakdown and the HTA kernel sums are computed on *HTA's view* of a trace, so the
numbers can be checked against HTA 0.5:
- GPU events are the events HTA sees with a stream: kernels, memcpy, memset and `cuda_sync`
  (`gpu_user_annotation` carries no `args.stream` and is left out);
- with two or more ProfilerSteps, only GPU events whose launch (any CPU event of that correlation)
  started before the last ProfilerStep are kept (`include_last_profiler_step=False`);
- times are rounded as HTA does for float-µs traces: start up to the next whole µs, end down to a
  whole µs, computed in float64 µs of the trace's own time base (pytorch/pytorch#122425).
Kernel classes are HTA's name regexes: communication `^nccl.*Kernel`, memory
`^Memcpy|^Memset|^dma`, computation everything not matching `^nccl.*Kernel|.*Memcpy|Memset|.*Sync`.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from . import intervals

COMM_RE = r"^nccl.*Kernel"
MEMORY_RE = r"^(Memcpy|Memset|dma)"
NOT_COMPUTE_RE = r"^(nccl.*Kernel|.*Memcpy|Memset|.*Sync)"
HTA_GPU_CATS = ("kernel", "Kernel", "gpu_memcpy", "Memcpy", "gpu_memset", "Memset", "cuda_sync")

# HTA get_cuda_kernel_launch_stats defaults (µs): runtime_cutoff, launch_delay_cutoff.
RUNTIME_CUTOFF_NS = 50_000
LAUNCH_DELAY_CUTOFF_NS = 100_000


def kernel_type(name: pl.Expr) -> pl.Expr:
    """HTA's KernelType from the name: COMMUNICATION, MEMORY, COMPUTATION or OTHER."""
    text = name.cast(pl.String)
    return (
        pl.when(text.str.contains(COMM_RE))
        .then(pl.lit("COMMUNICATION"))
        .when(text.str.contains(MEMORY_RE))
        .then(pl.lit("MEMORY"))
        .when(~text.str.contains(NOT_COMPUTE_RE))
        .then(pl.lit("COMPUTATION"))
        .otherwise(pl.lit("OTHER"))
    )


def hta_view(events: pl.DataFrame, profiler_steps: pl.DataFrame, ranks: dict[int, dict[str, Any]]) -> pl.DataFrame:
    """HTA's GPU events: `rank, name, ts, end, dur` in whole µs (Int64), plus `type`."""
    gpu = events.filter(pl.col("cat").cast(pl.String).is_in(HTA_GPU_CATS) & pl.col("stream").is_not_null())
    last = (
        profiler_steps.group_by("rank")
        .agg(pl.col("ts").max().alias("_last_start"), pl.len().alias("_steps"))
        .filter(pl.col("_steps") >= 2)
    )
    if not last.is_empty():
        launched = (
            events.filter(pl.col("stream").is_null() & pl.col("correlation").is_not_null())
            .join(last, on="rank")
            .filter(pl.col("ts") < pl.col("_last_start"))
            .select("rank", "correlation")
            .unique()
        )
        filtered = gpu.join(last.select("rank"), on="rank").join(launched, on=["rank", "correlation"], how="semi")
        gpu = pl.concat([filtered, gpu.join(last.select("rank"), on="rank", how="anti")])
    base = pl.DataFrame(
        {"rank": list(ranks), "_base": [int(meta.get("base_time_ns") or 0) for meta in ranks.values()]},
        schema={"rank": pl.Int32, "_base": pl.Int64},
    )
    rel = pl.col("ts") - pl.col("_base")
    # The trace's float µs as a double, built from the exact integer µs (exact below 2**53) plus
    # the fraction, as a JSON parser would produce it; end = start + dur in float64, as in pandas.
    start_us = (rel // 1000).cast(pl.Float64) + (rel % 1000).cast(pl.Float64) / 1000.0
    end_us = start_us + pl.col("dur").cast(pl.Float64) / 1000.0
    # HTA rounds only traces whose `ts` column is float, i.e. where some time has a sub-µs part.
    fractional = ((rel % 1000) != 0).any().over("rank")
    return (
        gpu.join(base, on="rank", how="left")
        .with_columns(pl.col("_base").fill_null(0))
        .select(
            "rank",
            "name",
            pl.when(fractional).then(start_us.ceil().cast(pl.Int64)).otherwise(rel // 1000).alias("ts"),
            pl.when(fractional)
            .then(end_us.floor().cast(pl.Int64))
            .otherwise((rel + pl.col("dur")) // 1000)
            .alias("end"),
            kernel_type(pl.col("name")).alias("type"),
        )
        # HTA keeps the negative durations its rounding creates (an event shorter than 1 µs that
        # contains no whole µs); so do we, to reproduce its sums.
        .with_columns((pl.col("end") - pl.col("ts")).alias("dur"))
    )


def _union_per_rank(view: pl.DataFrame, name: str) -> pl.DataFrame:
    merged = intervals.merge(view, ["rank"])
    return merged.group_by("rank").agg((pl.col("end") - pl.col("ts")).sum().alias(name))


def temporal_breakdown(view: pl.DataFrame) -> pl.DataFrame:
    """Per rank (µs): span, idle, compute, non_compute, comm, and comm/comp overlap."""
    if view.is_empty():
        return pl.DataFrame(schema={"rank": pl.Int32})
    span = view.group_by("rank").agg((pl.col("end").max() - pl.col("ts").min()).alias("span_us"))
    busy = _union_per_rank(view, "busy_us")
    compute = _union_per_rank(view.filter(pl.col("type") == "COMPUTATION"), "compute_us")
    comm = _union_per_rank(view.filter(pl.col("type") == "COMMUNICATION"), "comm_us")
    both = _union_per_rank(view.filter(pl.col("type").is_in(["COMPUTATION", "COMMUNICATION"])), "comp_or_comm_us")
    out = span
    for part in (busy, compute, comm, both):
        out = out.join(part, on="rank", how="left")
    return (
        out.with_columns(pl.col(c).fill_null(0) for c in ("busy_us", "compute_us", "comm_us", "comp_or_comm_us"))
        .with_columns(
            (pl.col("span_us") - pl.col("busy_us")).alias("idle_us"),
            # HTA get_comm_comp_overlap: time both run / communication time.
            (pl.col("compute_us") + pl.col("comm_us") - pl.col("comp_or_comm_us")).alias("overlap_us"),
        )
        .with_columns((pl.col("span_us") - pl.col("compute_us") - pl.col("idle_us")).alias("non_compute_us"))
        .sort("rank")
    )


def launch_stats(gpu: pl.DataFrame) -> pl.DataFrame:
    """Per rank, over GPU events with a known launch (exact ns): HTA's kernel-launch statistics."""
    linked = gpu.filter(pl.col("launch_ts").is_not_null()).with_columns(
        (pl.col("ts") - pl.col("launch_ts")).alias("delay"),
    )
    return (
        linked.group_by("rank")
        .agg(
            pl.len().alias("launches"),
            (pl.col("delay").median() / 1000).alias("delay_p50_us"),
            (pl.col("delay").quantile(0.95) / 1000).alias("delay_p95_us"),
            (pl.col("launch_dur").median() / 1000).alias("launch_p50_us"),
            (pl.col("dur").median() / 1000).alias("gpu_p50_us"),
            (pl.col("dur") < pl.col("launch_dur")).sum().alias("shorter_than_launch"),
            (pl.col("launch_dur") > RUNTIME_CUTOFF_NS).sum().alias("launch_outliers"),
            (pl.col("delay") > LAUNCH_DELAY_CUTOFF_NS).sum().alias("delay_outliers"),
        )
        .sort("rank")
    )
