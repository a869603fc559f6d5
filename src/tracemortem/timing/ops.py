"""CPU op statistics: calls, total and self time, GPU time of the kernels each op launched.

Self time = an event's duration minus its direct children's on the same (rank, pid, tid).
Nesting comes from the events' own intervals: an event's depth is the number of events of its
thread still open at its start, and its parent is the latest earlier-starting event one level up.
Kineto's float-µs rounding lets a child end a few ns after its parent or a sibling start a few ns
before the previous one ends; ends are pulled in by `OVERLAP_TOLERANCE_NS` before nesting.
"""

from __future__ import annotations

import polars as pl

from . import quantiles

OP_KEYS = ["name", "input_dims"]
OVERLAP_TOLERANCE_NS = 1_000  # TraceLens' 1 µs "bleed" rule; Kineto rounds times to 1 ns–1 µs
GPU_SIDE = pl.col("stream").is_not_null()
STEP_MARK = "ProfilerStep#"
# On the Categorical name: each distinct name is tested once, not each row's copy of it.
IS_STEP = pl.col("name").cat.starts_with(STEP_MARK)

_THREAD = ["rank", "session", "pid", "tid"]  # a session's pids and tids say nothing about another's


def _in_thread(index: str) -> pl.Expr:
    """`index` counted from the first row of its thread, on rows sorted by `_thread`."""
    first = pl.when(pl.col("_thread").ne_missing(pl.col("_thread").shift(1))).then(pl.col(index)).forward_fill()
    return pl.col(index) - first


def with_self_time(events: pl.DataFrame) -> pl.DataFrame:
    """CPU events (no stream) with `self` (ns) and `depth` added."""
    cpu = (
        # "Trace" is the profiler's own whole-trace span, not work (HTA drops it too).
        events.filter(~GPU_SIDE & (pl.col("cat") != "Trace"))
        .select("rank", "session", "name", "cat", "ts", "dur", "pid", "tid", "external_id", "step", "input_dims")
        # Stable: events of equal start and duration nest in file order, whichever ranks share the frame.
        .sort([*_THREAD, "ts", "dur"], descending=[False, False, False, False, False, True], maintain_order=True)
        .with_row_index("_order")
        .with_columns(pl.struct(_THREAD).rle_id().alias("_thread"))
    )
    # Effective end: at least 1 ns after the start, so an event never closes before it opens.
    close = pl.max_horizontal(pl.col("ts") + pl.col("dur") - OVERLAP_TOLERANCE_NS, pl.col("ts") + 1)
    # Depth: the events of the thread started before this one (in nesting order) less those
    # closed at or before its start (an end at the same instant comes first).
    ends = (
        cpu.select("_thread", close.alias("_close"))
        .sort("_thread", "_close", maintain_order=True)  # nearly in order already: stable is fast
        .with_row_index("_end")
        .with_columns((_in_thread("_end") + 1).alias("_closed"))
    )
    cpu = (
        cpu.join_asof(
            ends.select("_thread", "_close", "_closed"),
            left_on="ts",
            right_on="_close",
            by="_thread",
            strategy="backward",
            check_sortedness=False,
        )
        .with_columns((_in_thread("_order") - pl.col("_closed").fill_null(0)).cast(pl.Int64).alias("depth"))
        .drop("_close", "_closed")
    )
    parents = cpu.select("_thread", "_order", (pl.col("depth") + 1).alias("depth"), pl.col("_order").alias("_parent"))
    linked = cpu.join_asof(
        parents,
        on="_order",
        by=["_thread", "depth"],
        strategy="backward",
        allow_exact_matches=False,
        check_sortedness=False,
    ).drop("_thread")
    children = linked.group_by("_parent").agg(pl.col("dur").sum().alias("_child"))
    return (
        linked.join(children, left_on="_order", right_on="_parent", how="left")
        .with_columns((pl.col("dur") - pl.col("_child").fill_null(0)).clip(lower_bound=0).alias("self"))
        .drop("_child", "_parent")
    )


def op_table(ops: pl.DataFrame, durations: pl.DataFrame, attributed: pl.DataFrame, on_gpu: bool) -> pl.DataFrame:
    """Per op name and input shapes, over all ranks: calls, total/self/GPU ns, instance percentiles,
    from the merged partial tables (`timing.partial`): `ops` (sums), `durations` (value counts) and
    `attributed` (GPU ns per op name and shapes: self GPU time)."""
    table = (
        ops.join(quantiles.median(durations, OP_KEYS, "dur", "p50_ns"), on=OP_KEYS, how="left", nulls_equal=True)
        .join(
            quantiles.quantile(durations, OP_KEYS, "dur", 0.95, "nearest", "p95_ns"),
            on=OP_KEYS,
            how="left",
            nulls_equal=True,
        )
        .select(
            pl.col("name").cast(pl.Categorical),
            "input_dims",
            pl.col("cat").cast(pl.Categorical),
            pl.col("calls").cast(pl.UInt32),
            "total_ns",
            "self_ns",
            "p50_ns",
            "p95_ns",
            "max_ns",
        )
    )
    if not on_gpu:
        return table.with_columns(pl.lit(0, pl.Int64).alias("gpu_ns")).sort("self_ns", descending=True)
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
        cpu.filter(pl.col("step").is_not_null() & ~IS_STEP)
        .group_by("rank", "session", "step", "name")  # Categorical: 4 bytes a row at thousands of ranks
        .agg(pl.len().alias("calls"), pl.col("dur").sum().alias("total_ns"), pl.col("self").sum().alias("self_ns"))
        .sort("rank", "session", "step", "self_ns", descending=[False, False, False, True])
    )
