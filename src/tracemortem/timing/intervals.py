"""Interval arithmetic over whole columns: unions by sort + running max, clipping to windows.

Intervals are rows with `ts` and `end` (same unit); `keys` name the groups (e.g. rank, step)
whose unions are taken separately. No Python loop touches rows.
"""

from __future__ import annotations

import polars as pl


def merge(frame: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Merged (non-overlapping) intervals per group: `keys + [ts, end]`.

    An interval joins the previous run when it starts at or before the run's furthest end
    (HTA's `merge_kernel_intervals` rule, so touching intervals merge).
    """
    # Stable: intervals mostly arrive in time order, which the stable sort exploits; ties keep
    # their order, so the runs do not depend on the sort.
    ordered = frame.select(*keys, "ts", "end").sort([*keys, "ts"], maintain_order=True)
    reach = pl.col("end").cum_max().shift(1)
    if keys:
        reach = reach.over(keys)
    starts_run = (pl.col("ts") > reach).fill_null(True)
    run = starts_run.cast(pl.UInt32).cum_sum()
    if keys:
        run = run.over(keys)
    return (
        ordered.with_columns(run.alias("_run"))
        .group_by([*keys, "_run"], maintain_order=True)
        .agg(pl.col("ts").min(), pl.col("end").max())
        .drop("_run")
    )


def clip_to_windows(intervals: pl.DataFrame, windows: pl.DataFrame) -> pl.DataFrame:
    """Cut intervals (`rank, session, ts, end`, plus any columns) into the windows (`rank, session,
    step, w_ts, w_end`) they overlap; each piece carries its window's `step`.

    A piece is found for the window holding the interval's start and for the window holding its
    end, so an interval crossing one window boundary is split in two; an interval spanning three
    or more windows loses its middle (step windows are far longer than kernels).
    """
    if intervals.is_empty() or windows.is_empty():
        return intervals.clear().with_columns(pl.lit(None, pl.Int64).alias("step"))
    win = windows.sort("w_ts")
    cols = intervals.columns
    indexed = intervals.with_row_index("_i")
    at_start = indexed.sort("ts").join_asof(
        win, left_on="ts", right_on="w_ts", by=["rank", "session"], strategy="backward", check_sortedness=False
    )
    at_end = (
        indexed.with_columns((pl.col("end") - 1).alias("_last"))
        .sort("_last")
        .join_asof(
            win, left_on="_last", right_on="w_ts", by=["rank", "session"], strategy="backward", check_sortedness=False
        )
        .drop("_last")
    )
    return (
        pl.concat([at_start, at_end])
        .filter(pl.col("step").is_not_null())
        .unique(subset=["_i", "step"], maintain_order=True)
        .with_columns(
            pl.max_horizontal("ts", "w_ts").alias("ts"),
            pl.min_horizontal("end", "w_end").alias("end"),
        )
        .filter(pl.col("end") > pl.col("ts"))
        .select(*cols, "step")
    )
