"""CPU op statistics: calls, total and self time, GPU time of the kernels each op launched.

Self time = an event's duration minus its direct children's on the same (rank, pid, tid).
Nesting comes from the events' own intervals: an event's depth is the number of events of its
thread still open at its start, and its parent is the latest earlier-starting event one level up.
Kineto's float-µs rounding lets a child end a few ns after its parent or a sibling start a few ns
before the previous one ends; ends are pulled in by `OVERLAP_TOLERANCE_NS` before nesting.
"""

from __future__ import annotations

import polars as pl

OVERLAP_TOLERANCE_NS = 1_000  # TraceLens' 1 µs "bleed" rule; Kineto rounds times to 1 ns–1 µs
GPU_SIDE = pl.col("stream").is_not_null()
STEP_MARK = "ProfilerStep#"

_THREAD = ["rank", "session", "pid", "tid"]  # a session's pids and tids say nothing about another's


def with_self_time(events: pl.DataFrame) -> pl.DataFrame:
    """CPU events (no stream) with `self` (ns) and `depth` added."""
    cpu = (
        # "Trace" is the profiler's own whole-trace span, not work (HTA drops it too).
        events.filter(~GPU_SIDE & (pl.col("cat").cast(pl.String) != "Trace"))
        .select("rank", "session", "name", "cat", "ts", "dur", "pid", "tid", "external_id", "step", "input_dims")
        .sort([*_THREAD, "ts", "dur"], descending=[False, False, False, False, False, True])
        .with_row_index("_order")
    )
    # Effective end: at least 1 ns after the start, so an event never closes before it opens.
    close = pl.max_horizontal(pl.col("ts") + pl.col("dur") - OVERLAP_TOLERANCE_NS, pl.col("ts") + 1)
    points = pl.concat(
        [
            cpu.select(*_THREAD, pl.col("ts").alias("t"), pl.lit(1, pl.Int8).alias("kind"), "_order"),
            cpu.select(
                *_THREAD, close.alias("t"), pl.lit(0, pl.Int8).alias("kind"), pl.lit(None, pl.UInt32).alias("_order")
            ),
        ]
    )
    # Ends before starts at the same instant; starts in nesting order (`_order`).
    open_count = (
        points.sort([*_THREAD, "t", "kind", "_order"])
        .with_columns(pl.when(pl.col("kind") == 1).then(1).otherwise(-1).cum_sum().over(_THREAD).alias("_open"))
        .filter(pl.col("kind") == 1)
        .select("_order", (pl.col("_open") - 1).alias("depth"))
    )
    cpu = cpu.join(open_count, on="_order").sort("_order")
    parents = cpu.select(*_THREAD, "_order", (pl.col("depth") + 1).alias("depth"), pl.col("_order").alias("_parent"))
    linked = cpu.join_asof(
        parents,
        on="_order",
        by=[*_THREAD, "depth"],
        strategy="backward",
        allow_exact_matches=False,
        check_sortedness=False,
    )
    children = linked.group_by("_parent").agg(pl.col("dur").sum().alias("_child"))
    return (
        linked.join(children, left_on="_order", right_on="_parent", how="left")
        .with_columns((pl.col("dur") - pl.col("_child").fill_null(0)).clip(lower_bound=0).alias("self"))
        .drop("_child", "_parent")
    )


def op_table(cpu: pl.DataFrame, gpu: pl.DataFrame, events: pl.DataFrame) -> pl.DataFrame:
    """Per op name and input shapes, over all ranks: calls, total/self/GPU ns, instance percentiles.

    GPU time goes to the op whose External id the kernel's launch carries (the innermost op), so
    `gpu_ns` is self GPU time; kernels whose launch has no External id go to `gpu.op` by name.
    """
    ops = cpu.filter(~pl.col("name").cast(pl.String).str.starts_with(STEP_MARK))
    table = ops.group_by("name", "input_dims").agg(
        pl.col("cat").first(),
        pl.len().alias("calls"),
        pl.col("dur").sum().alias("total_ns"),
        pl.col("self").sum().alias("self_ns"),
        pl.col("dur").median().alias("p50_ns"),
        pl.col("dur").quantile(0.95, "nearest").alias("p95_ns"),
        pl.col("dur").max().alias("max_ns"),
    )
    if gpu.is_empty():
        return table.with_columns(pl.lit(0, pl.Int64).alias("gpu_ns")).sort("self_ns", descending=True)
    launch_ext = (
        events.filter(~GPU_SIDE & pl.col("correlation").is_not_null() & pl.col("external_id").is_not_null())
        .select("rank", "session", "correlation", pl.col("external_id").alias("_ext"))
        .unique(subset=["rank", "session", "correlation"])
    )
    op_of_ext = (
        ops.filter(pl.col("external_id").is_not_null() & (pl.col("cat").cast(pl.String).is_in(["cpu_op", "Operator"])))
        .select(
            "rank",
            "session",
            pl.col("external_id").alias("_ext"),
            pl.col("name").alias("_name"),
            pl.col("input_dims").alias("_dims"),
        )
        .unique(subset=["rank", "session", "_ext"])
    )
    attributed = (
        gpu.select("rank", "session", "correlation", "op", "dur")
        .join(launch_ext, on=["rank", "session", "correlation"], how="left")
        .join(op_of_ext, on=["rank", "session", "_ext"], how="left")
        .with_columns(
            pl.coalesce(pl.col("_name").cast(pl.String), pl.col("op").cast(pl.String)).alias("_key"),
            pl.when(pl.col("_name").is_not_null()).then(pl.col("_dims")).alias("_dims"),
        )
        .filter(pl.col("_key").is_not_null())
        .group_by("_key", "_dims")
        .agg(pl.col("dur").sum().alias("gpu_ns"))
    )
    return (
        table.with_columns(pl.col("name").cast(pl.String).alias("_key"))
        .join(attributed, left_on=["_key", "input_dims"], right_on=["_key", "_dims"], how="left", nulls_equal=True)
        .drop("_key")
        .with_columns(pl.col("gpu_ns").fill_null(0))
        .sort(["self_ns", "name"], descending=[True, False])
    )


def step_op_table(cpu: pl.DataFrame) -> pl.DataFrame:
    """Per (rank, session, step, op name): calls, total and self ns — what a slow step spent more on."""
    return (
        cpu.filter(pl.col("step").is_not_null() & ~pl.col("name").cast(pl.String).str.starts_with(STEP_MARK))
        .group_by("rank", "session", "step", pl.col("name").cast(pl.String))
        .agg(pl.len().alias("calls"), pl.col("dur").sum().alias("total_ns"), pl.col("self").sum().alias("self_ns"))
        .sort("rank", "session", "step", "self_ns", descending=[False, False, False, True])
    )
