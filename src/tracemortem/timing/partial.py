"""The timing of some ranks as small, mergeable tables (docs/scale.md "Merging").

`partial_timing(traces)` reduces a `TraceSet` (the events of one or a few ranks) to tables whose size
does not depend on the number of events: per-op and per-kernel sums and maxima, value counts of
the durations whose quantiles the op table reports, per-step rows, per-session GPU breakdowns and
per-rank launch statistics. `merge` adds partials of different ranks up (one concat and one
group_by per table), and `timing.finish` turns the result into the `Timing` the rules read, equal
to what `summarize` computes on all the events at once: sums and maxima are exact, quantiles come
from the merged value counts (`timing.quantiles`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import polars as pl

from ..load.traces import TraceSet
from . import gpu as gpu_stats
from . import quantiles
from .ops import GPU_SIDE, IS_STEP, OP_KEYS, step_op_table, with_self_time
from .steps import step_breakdown

LAUNCH_MEASURES = ("delay", "launch", "gpu")  # launch delay, launch call and GPU event durations (µs)


@dataclass
class TimingPartial:
    # name, input_dims, cat, calls, total_ns, self_ns, max_ns; `_first` = (rank, session) of the op's
    # first call, so the merged `cat` is the first call's, as in one table
    ops: pl.DataFrame
    op_durations: pl.DataFrame  # name, input_dims, dur, n
    op_gpu: pl.DataFrame  # _key, _dims, gpu_ns: GPU time attributed to an op name and shapes
    kernels: pl.DataFrame  # name, kind, _first, calls, total_ns, max_ns
    kernel_ranks: pl.DataFrame  # name (Categorical), rank: unique
    kernel_hta: pl.DataFrame  # name, hta_sum_us
    steps: pl.DataFrame  # timing.Timing.steps rows of these ranks
    step_ops: pl.DataFrame
    gpu_sessions: pl.DataFrame
    launches: pl.DataFrame  # rank, launches, shorter_than_launch, launch_outliers, delay_outliers
    launch_values: pl.DataFrame  # rank, measure, value, n


def _ops(cpu: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    ops = cpu.filter(~IS_STEP)
    table = ops.group_by(OP_KEYS).agg(
        pl.col("cat").first().cast(pl.String),
        pl.struct(pl.col("rank").cast(pl.Int64), pl.col("session").cast(pl.Int64)).first().alias("_first"),
        pl.len().alias("calls"),
        pl.col("dur").sum().alias("total_ns"),
        pl.col("self").sum().alias("self_ns"),
        pl.col("dur").max().alias("max_ns"),
    )
    # Grouped on the Categorical name, kept as text: partials of other processes are concatenated.
    as_text = pl.col("name").cast(pl.String)
    return table.with_columns(as_text), quantiles.value_counts(ops, OP_KEYS, "dur").with_columns(as_text)


def _op_gpu(cpu: pl.DataFrame, gpu: pl.DataFrame, events: pl.DataFrame) -> pl.DataFrame:
    """GPU time per (op name, shapes): to the op whose External id the kernel's launch carries (the
    innermost op), so it is self GPU time; kernels whose launch has no External id go to `gpu.op`."""
    launch_ext = (
        events.filter(~GPU_SIDE & pl.col("correlation").is_not_null() & pl.col("external_id").is_not_null())
        .select("rank", "session", "correlation", pl.col("external_id").alias("_ext"))
        .unique(subset=["rank", "session", "correlation"])
    )
    op_of_ext = (
        cpu.filter(~IS_STEP & pl.col("external_id").is_not_null() & pl.col("cat").is_in(["cpu_op", "Operator"]))
        .select(
            "rank",
            "session",
            pl.col("external_id").alias("_ext"),
            pl.col("name").alias("_name"),
            pl.col("input_dims").alias("_dims"),
        )
        .unique(subset=["rank", "session", "_ext"])
    )
    return (
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


def _kernels(gpu: pl.DataFrame, view: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    name = pl.col("name").cast(pl.String)
    table = gpu.group_by(name).agg(
        pl.col("kind").first().cast(pl.String),
        pl.col("session").first().cast(pl.Int64).alias("_first"),
        pl.len().alias("calls"),
        pl.col("dur").sum().alias("total_ns"),
        pl.col("dur").max().alias("max_ns"),
    )
    # Categorical: a rank's row costs 8 bytes, not a copy of a kernel name hundreds of bytes long.
    ranks = gpu.select(pl.col("name").cast(pl.Categorical), "rank").unique()
    hta = view.group_by(name).agg(pl.col("dur").sum().alias("hta_sum_us"))
    return table, ranks, hta


def _launches(traces: TraceSet) -> tuple[pl.DataFrame, pl.DataFrame]:
    timed = gpu_stats.launch_pairs(traces.gpu, traces.profiler_steps, traces.sessions)
    cpu_us, gpu_us, delay_us = gpu_stats.LAUNCH_CPU_US, gpu_stats.LAUNCH_GPU_US, gpu_stats.LAUNCH_DELAY_US
    sums = timed.group_by("rank").agg(
        pl.len().alias("launches"),
        # HTA's three groups: short GPU events, runtime outliers, launch-delay outliers.
        ((cpu_us <= gpu_stats.RUNTIME_CUTOFF_US) & (gpu_us < cpu_us)).sum().alias("shorter_than_launch"),
        (cpu_us > gpu_stats.RUNTIME_CUTOFF_US).sum().alias("launch_outliers"),
        (delay_us > gpu_stats.LAUNCH_DELAY_CUTOFF_US).sum().alias("delay_outliers"),
    )
    values = pl.concat(
        [
            quantiles.value_counts(
                timed.select("rank", pl.lit(measure).alias("measure"), expr.alias("value")),
                ["rank", "measure"],
                "value",
            )
            for measure, expr in zip(LAUNCH_MEASURES, (delay_us, cpu_us, gpu_us))
        ]
    )
    return sums, values


def partial_timing(traces: TraceSet) -> TimingPartial:
    cpu = with_self_time(traces.events)
    ops, op_durations = _ops(cpu)
    gpu_events = gpu_stats.hta_gpu_events(traces.events, traces.profiler_steps)
    view = gpu_stats.hta_view(gpu_events, traces.sessions)
    kernels, kernel_ranks, kernel_hta = _kernels(traces.gpu, view)
    temporal = gpu_stats.session_breakdown(
        gpu_stats.temporal_breakdown(view),
        gpu_stats.temporal_breakdown(gpu_stats.exact_view(gpu_events)),
    )
    launches, launch_values = _launches(traces)
    return TimingPartial(
        ops=ops,
        op_durations=op_durations,
        op_gpu=_op_gpu(cpu, traces.gpu, traces.events),
        kernels=kernels,
        kernel_ranks=kernel_ranks,
        kernel_hta=kernel_hta,
        steps=step_breakdown(traces.events, traces.profiler_steps, traces.gpu),
        step_ops=step_op_table(cpu),
        gpu_sessions=temporal,
        launches=launches,
        launch_values=launch_values,
    )


def concat_frames(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """The non-empty frames concatenated; with none, the first (an empty frame keeps its own schema)."""
    full = [frame for frame in frames if not frame.is_empty()]
    if not full:
        return frames[0] if frames else pl.DataFrame()
    return pl.concat(full, how="vertical_relaxed") if len(full) > 1 else full[0]


def merge(parts: list[TimingPartial]) -> TimingPartial:
    """One partial for all of `parts`' ranks: each table concatenated once and regrouped."""
    if len(parts) == 1:
        return parts[0]
    tables = {f.name: concat_frames([getattr(p, f.name) for p in parts]) for f in fields(TimingPartial)}
    if not tables["ops"].is_empty():
        tables["ops"] = (
            tables["ops"]
            .sort("_first")
            .group_by(OP_KEYS)
            .agg(
                pl.col("cat").first(),
                pl.col("_first").first(),
                pl.col("calls").sum(),
                pl.col("total_ns").sum(),
                pl.col("self_ns").sum(),
                pl.col("max_ns").max(),
            )
        )
    tables["op_durations"] = quantiles.add_counts(tables["op_durations"], OP_KEYS, "dur")
    tables["op_gpu"] = tables["op_gpu"].group_by("_key", "_dims").agg(pl.col("gpu_ns").sum())
    if not tables["kernels"].is_empty():
        tables["kernels"] = (
            tables["kernels"]
            .sort("_first")
            .group_by("name")
            .agg(
                pl.col("kind").first(),
                pl.col("_first").first(),
                pl.col("calls").sum(),
                pl.col("total_ns").sum(),
                pl.col("max_ns").max(),
            )
        )
    tables["kernel_ranks"] = tables["kernel_ranks"].unique()
    tables["kernel_hta"] = tables["kernel_hta"].group_by("name").agg(pl.col("hta_sum_us").sum())
    tables["launches"] = tables["launches"].group_by("rank").agg(pl.exclude("rank").sum())
    # per rank: as many rows as one rank has distinct values, so kept exact. A rank's files are
    # in one part unless their paths named no rank: parts of disjoint ranks are only concatenated
    # (regrouping 315 k rows of 448 ranks held 62 MB, at every fold; docs/scale.md "Memory").
    if not _disjoint_ranks([part.launch_values for part in parts]):
        tables["launch_values"] = quantiles.add_counts(
            tables["launch_values"], ["rank", "measure"], "value", exact=True
        )
    return TimingPartial(**tables)


def _disjoint_ranks(frames: list[pl.DataFrame]) -> bool:
    ranks = [frame.get_column("rank").unique() for frame in frames]
    return sum(len(r) for r in ranks) == pl.concat(ranks).n_unique()
