"""Per (rank, ProfilerStep) time breakdown.

Each step's wall-clock window is split by priority, in the spirit of tb_plugin's waterfall
(docs/traces.md), so the exclusive parts sum to the step's duration:
GPU compute > communication (NCCL) > memcpy > memset > data loading > host sync > other.
A lower part only gets window time no higher part covers: `data_loading_ns` is DataLoader time
while the GPU was idle, `other_ns` is time with no GPU work, no data loading and no sync (on a
CPU-only trace: the CPU's own work). The `total_*` columns are the same categories without the
priority (all DataLoader time in the step, all sync time, all GPU idle time).
"""

from __future__ import annotations

import polars as pl

from . import intervals
from .gpu import kernel_type

DATALOADER_RE = r"^enumerate\((DataLoader|DataPipe)\)#.*"
SYNC_CALLS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cudaMemcpy",
    "hipStreamSynchronize",
    "hipDeviceSynchronize",
    "hipMemcpy",
)
# Ops that block the host only when the tensor lives on a device (on CPU they are plain reads).
SYNC_OPS = ("aten::item", "aten::_local_scalar_dense")

LEVELS = ("compute", "comm", "memcpy", "memset", "data_loading", "host_sync")
GPU_LEVELS = LEVELS[:4]


def _gpu_intervals(gpu: pl.DataFrame) -> pl.DataFrame:
    kind_level = (
        pl.when(pl.col("kind") == "memcpy")
        .then(pl.lit("memcpy"))
        .when(pl.col("kind") == "memset")
        .then(pl.lit("memset"))
        .when(kernel_type(pl.col("name")) == "COMMUNICATION")
        .then(pl.lit("comm"))
        .otherwise(pl.lit("compute"))
    )
    return gpu.select("rank", "session", "ts", (pl.col("ts") + pl.col("dur")).alias("end"), kind_level.alias("level"))


def _cpu_intervals(events: pl.DataFrame, gpu: pl.DataFrame, gpu_ranks: list[int]) -> pl.DataFrame:
    name = pl.col("name")  # Categorical: tested per distinct name; the regex only on the few left
    cpu = events.filter(pl.col("stream").is_null())
    loading = cpu.filter(name.cat.ends_with("__next__")).filter(name.cast(pl.String).str.contains(DATALOADER_RE))
    sync = cpu.filter(name.is_in(SYNC_CALLS) | (name.is_in(SYNC_OPS) & pl.col("rank").is_in(gpu_ranks)))
    # A device-to-host copy blocks the host for the span of its launching call.
    dtoh = gpu.filter(
        (pl.col("kind") == "memcpy")
        & pl.col("name").cast(pl.String).str.contains("DtoH")
        & pl.col("launch_ts").is_not_null()
    )
    span = [pl.col("ts"), (pl.col("ts") + pl.col("dur")).alias("end")]
    return pl.concat(
        [
            loading.select("rank", "session", *span, pl.lit("data_loading").alias("level")),
            sync.select("rank", "session", *span, pl.lit("host_sync").alias("level")),
            dtoh.select(
                "rank",
                "session",
                pl.col("launch_ts").alias("ts"),
                (pl.col("launch_ts") + pl.col("launch_dur")).alias("end"),
                pl.lit("host_sync").alias("level"),
            ),
        ]
    )


def _level_unions(pieces: pl.DataFrame, keys: list[str], upto: list[str], totals: list[str]) -> pl.DataFrame:
    """Per `keys`: `totals[i]`, the length covered by the pieces of level i, and `upto[i]`, the
    length covered by those of levels 0..i. One sweep over the pieces' starts and ends sorted by
    time: after each point, the open pieces of each level are counted (the points of a group
    add up to zero, so one running sum serves every group), and the time to the next point is
    covered by a level, or by levels 0..i, while their count is above zero."""
    points = pl.concat(
        [
            pieces.select(*keys, pl.col("ts").alias("t"), "_level", pl.lit(1, pl.Int32).alias("_d")),
            pieces.select(*keys, pl.col("end").alias("t"), "_level", pl.lit(-1, pl.Int32).alias("_d")),
        ]
    ).sort([*keys, "t"], maintain_order=True)
    open_at = [pl.when(pl.col("_level") == i).then(pl.col("_d")).otherwise(0).cum_sum() for i in range(len(LEVELS))]
    span = pl.col("t").shift(-1) - pl.col("t")  # at a group's last point nothing is open
    return (
        points.with_columns(*(count.alias(f"_o{i}") for i, count in enumerate(open_at)), span.alias("_span"))
        .group_by(keys)
        .agg(
            *(pl.col("_span").filter(pl.col(f"_o{i}") > 0).sum().alias(name) for i, name in enumerate(totals)),
            *(
                pl.col("_span").filter(pl.sum_horizontal(f"_o{j}" for j in range(i + 1)) > 0).sum().alias(name)
                for i, name in enumerate(upto)
            ),
        )
    )


def step_breakdown(events: pl.DataFrame, profiler_steps: pl.DataFrame, gpu: pl.DataFrame) -> pl.DataFrame:
    keys = ["rank", "session", "step"]
    steps = profiler_steps.select(*keys, pl.col("ts").alias("ts_ns"), pl.col("dur").alias("duration_ns")).sort(keys)
    if steps.is_empty():
        return steps
    gpu_ranks = gpu["rank"].unique().to_list()
    windows = profiler_steps.select(*keys, pl.col("ts").alias("w_ts"), (pl.col("ts") + pl.col("dur")).alias("w_end"))
    spans = pl.concat([_gpu_intervals(gpu), _cpu_intervals(events, gpu, gpu_ranks)])
    pieces = intervals.clip_to_windows(spans.with_columns(pl.col("level").cast(pl.String)), windows)

    rank_of_level = pl.col("level").replace_strict(LEVELS, range(len(LEVELS)), return_dtype=pl.Int64)
    pieces = pieces.with_columns(rank_of_level.alias("_level"))
    # `_u{i}`: the union of levels 0..i; `total_{level}_ns`: each level's own union.
    upto = [f"_u{i}" for i in range(len(LEVELS))]
    totals = [f"total_{level}_ns" for level in LEVELS]
    out = steps.join(_level_unions(pieces, keys, upto, totals), on=keys, how="left").with_columns(
        pl.col(*upto, *totals).fill_null(0)
    )
    # Each level's exclusive part: what it adds to the union of the levels above it.
    out = out.with_columns(
        (pl.col(column) - (pl.col(upto[i - 1]) if i else 0)).alias(f"{level}_ns")
        for i, (column, level) in enumerate(zip(upto, LEVELS))
    )
    has_gpu = pl.col("rank").is_in(gpu_ranks)
    busy = pl.col(upto[len(GPU_LEVELS) - 1])
    out = out.with_columns(
        (pl.col("duration_ns") - pl.col(upto[-1])).alias("other_ns"),
        pl.when(has_gpu).then(pl.col("duration_ns") - busy).alias("total_gpu_idle_ns"),
        *[pl.when(has_gpu).then(pl.col(f"{level}_ns")).alias(f"{level}_ns") for level in GPU_LEVELS],
    )
    return out.select(
        *keys,
        "ts_ns",
        "duration_ns",
        *[f"{level}_ns" for level in LEVELS],
        "other_ns",
        "total_gpu_idle_ns",
        "total_data_loading_ns",
        "total_host_sync_ns",
    ).sort(keys)
