"""Per GPU kernel (and memcpy/memset) name over all ranks: calls, total, mean, max (exact ns),
plus `hta_sum_us`, the total in HTA's view of the trace (see `gpu.hta_view`) for checking."""

from __future__ import annotations

import polars as pl

from .gpu import kernel_type


def kernel_table(kernels: pl.DataFrame, ranks: pl.DataFrame, hta: pl.DataFrame) -> pl.DataFrame:
    """From the merged partial tables (`timing.partial`): per-kernel sums and maxima, the ranks that
    ran each kernel, and each kernel's total in HTA's view."""
    if kernels.is_empty():
        return pl.DataFrame(
            schema={
                "name": pl.String,
                "kind": pl.String,
                "type": pl.String,
                "calls": pl.UInt32,
                "total_ns": pl.Int64,
                "mean_ns": pl.Float64,
                "max_ns": pl.Int64,
                "ranks": pl.UInt32,
                "hta_sum_us": pl.Int64,
            }
        )
    # HTA's rounding gives sub-µs events −1 µs; where a kernel's HTA sum comes out negative, the
    # exact total (rounded to µs) stands instead (docs/traces.md "GPU time").
    exact_us = (pl.col("total_ns") / 1000).round().cast(pl.Int64)
    rank_counts = ranks.group_by(pl.col("name").cast(pl.String)).agg(pl.col("rank").n_unique().alias("ranks"))
    return (
        kernels.with_columns(
            pl.col("calls").cast(pl.UInt32),
            (pl.col("total_ns") / pl.col("calls")).alias("mean_ns"),
            kernel_type(pl.col("name")).alias("type"),
        )
        .join(rank_counts, on="name", how="left")
        .join(hta, on="name", how="left")
        .with_columns(pl.when(pl.col("hta_sum_us") < 0).then(exact_us).otherwise("hta_sum_us").alias("hta_sum_us"))
        .select("name", "kind", "type", "calls", "total_ns", "mean_ns", "max_ns", "ranks", "hta_sum_us")
        .sort(["total_ns", "name"], descending=[True, False])
    )
