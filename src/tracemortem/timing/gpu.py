"""Per-session GPU statistics with Holistic Trace Analysis' definitions (docs/traces.md "GPU time").

HTA reads one trace per rank; here every profiling session (one trace file) is one HTA trace, so
the temporal breakdown is computed per (rank, session) and then added up per rank: the time
between two sessions is not GPU idle. The numbers are computed on *HTA's view* of a session, so
they can be checked against HTA 0.5:
- GPU events are the events HTA sees with a stream: kernels, memcpy, memset and `cuda_sync`, but
  not those with stream -1 (HTA's `stream.ne(-1)`: CUDA event-sync records on the host's side)
  and not `gpu_user_annotation` (no `args.stream`; its ProfilerStep mirror is a span, not work);
- with two or more ProfilerSteps, only GPU events whose launch (any CPU event of that correlation)
  started before the last ProfilerStep are kept (`include_last_profiler_step=False`);
- times are rounded as HTA does for float-µs traces: start up to the next whole µs, end down to a
  whole µs, computed in float64 µs of the trace's own time base (pytorch/pytorch#122425).
Kernel classes are HTA's name regexes: communication `^nccl.*Kernel`, memory
`^Memcpy|^Memset|^dma`, computation everything not matching `^nccl.*Kernel|.*Memcpy|Memset|.*Sync`.

HTA's rounding can make a sub-µs event's duration −1 µs, and a session's non-compute time
negative; where it does, that session's breakdown comes from the exact-ns view instead (`view`:
"exact"), so no time in any output is negative.
"""

from __future__ import annotations

import polars as pl

from . import intervals

COMM_RE = r"^nccl.*Kernel"
MEMORY_RE = r"^(Memcpy|Memset|dma)"
NOT_COMPUTE_RE = r"^(nccl.*Kernel|.*Memcpy|Memset|.*Sync)"
HTA_GPU_CATS = ("kernel", "Kernel", "gpu_memcpy", "Memcpy", "gpu_memset", "Memset", "cuda_sync")
SESSION = ["rank", "session"]

# HTA get_cuda_kernel_launch_stats: the launch calls it pairs with GPU events, and its cutoffs (µs).
LAUNCH_APIS = (
    "cudaLaunchKernel",
    "cudaLaunchKernelExC",
    "runFunction - job_prep_and_submit_for_execution",
    "cudaMemcpyAsync",
    "cudaMemsetAsync",
)
RUNTIME_CUTOFF_US = 50
LAUNCH_DELAY_CUTOFF_US = 100
BREAKDOWN = ("span_us", "busy_us", "idle_us", "compute_us", "non_compute_us", "comm_us", "overlap_us")


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


def _last_step_starts(profiler_steps: pl.DataFrame) -> pl.DataFrame:
    """Sessions with two or more ProfilerSteps, and the start of their last one."""
    return (
        profiler_steps.group_by(SESSION)
        .agg(pl.col("ts").max().alias("_last_start"), pl.len().alias("_steps"))
        .filter(pl.col("_steps") >= 2)
        .drop("_steps")
    )


def hta_gpu_events(events: pl.DataFrame, profiler_steps: pl.DataFrame) -> pl.DataFrame:
    """The GPU events HTA's temporal breakdown reads, without its last ProfilerStep (the events of
    `hta_view` and `exact_view`)."""
    gpu = events.filter(pl.col("cat").is_in(HTA_GPU_CATS) & pl.col("stream").is_not_null() & (pl.col("stream") != -1))
    last = _last_step_starts(profiler_steps)
    if last.is_empty():
        return gpu
    launched = (
        events.filter(pl.col("stream").is_null() & pl.col("correlation").is_not_null())
        .join(last, on=SESSION)
        .filter(pl.col("ts") < pl.col("_last_start"))
        .select(*SESSION, "correlation")
        .unique()
    )
    filtered = gpu.join(last.select(SESSION), on=SESSION).join(launched, on=[*SESSION, "correlation"], how="semi")
    return pl.concat([filtered, gpu.join(last.select(SESSION), on=SESSION, how="anti")])


def _session_bases(sessions: pl.DataFrame) -> pl.DataFrame:
    return sessions.select(*SESSION, pl.col("base_ns").fill_null(0).alias("_base"))


def hta_times(frame: pl.DataFrame, sessions: pl.DataFrame, ts: str, dur: str) -> pl.DataFrame:
    """`frame` plus `<ts>_us` and `<ts>_end_us`: whole µs of the session's time base, rounded as HTA
    rounds a float-µs trace (start up, end down), or exact where the session's times are whole µs."""
    rel = pl.col(ts) - pl.col("_base")
    # The trace's float µs as a double, built from the exact integer µs (exact below 2**53) plus
    # the fraction, as a JSON parser would produce it; end = start + dur in float64, as in pandas.
    start_us = (rel // 1000).cast(pl.Float64) + (rel % 1000).cast(pl.Float64) / 1000.0
    end_us = start_us + pl.col(dur).cast(pl.Float64) / 1000.0
    # HTA rounds only traces whose `ts` column is float, i.e. where some time has a sub-µs part.
    fractional = ((rel % 1000) != 0).any().over(SESSION)
    return (
        frame.join(_session_bases(sessions), on=SESSION, how="left")
        .with_columns(pl.col("_base").fill_null(0))
        .with_columns(
            pl.when(fractional).then(start_us.ceil().cast(pl.Int64)).otherwise(rel // 1000).alias(f"{ts}_us"),
            pl.when(fractional)
            .then(end_us.floor().cast(pl.Int64))
            .otherwise((rel + pl.col(dur)) // 1000)
            .alias(f"{ts}_end_us"),
        )
        .drop("_base")
    )


def hta_view(gpu_events: pl.DataFrame, sessions: pl.DataFrame) -> pl.DataFrame:
    """HTA's GPU events (`hta_gpu_events`): `rank, session, name, ts, end, dur` in whole µs (Int64),
    plus `type`."""
    gpu = hta_times(gpu_events, sessions, "ts", "dur")
    return gpu.select(
        *SESSION,
        "name",
        pl.col("ts_us").alias("ts"),
        pl.col("ts_end_us").alias("end"),
        kernel_type(pl.col("name")).alias("type"),
        # HTA keeps the negative durations its rounding creates (an event shorter than 1 µs that
        # contains no whole µs); so does this view, to reproduce its sums.
        (pl.col("ts_end_us") - pl.col("ts_us")).alias("dur"),
    )


def exact_view(gpu_events: pl.DataFrame) -> pl.DataFrame:
    """The same events as `hta_view`, in exact ns: what a breakdown falls back to where HTA's
    rounding makes a time negative."""
    return gpu_events.select(
        *SESSION,
        "name",
        "ts",
        (pl.col("ts") + pl.col("dur")).alias("end"),
        kernel_type(pl.col("name")).alias("type"),
        "dur",
    )


def _union_per_session(view: pl.DataFrame, name: str) -> pl.DataFrame:
    merged = intervals.merge(view, SESSION)
    return merged.group_by(SESSION).agg((pl.col("end") - pl.col("ts")).sum().alias(name))


def temporal_breakdown(view: pl.DataFrame) -> pl.DataFrame:
    """Per (rank, session), in the view's unit: span, busy, idle, compute, non_compute, comm, and
    comm/comp overlap."""
    if view.is_empty():
        return pl.DataFrame(schema={"rank": pl.Int32, "session": pl.Int32, **{c: pl.Int64 for c in BREAKDOWN}})
    span = view.group_by(SESSION).agg((pl.col("end").max() - pl.col("ts").min()).alias("span_us"))
    busy = _union_per_session(view, "busy_us")
    compute = _union_per_session(view.filter(pl.col("type") == "COMPUTATION"), "compute_us")
    comm = _union_per_session(view.filter(pl.col("type") == "COMMUNICATION"), "comm_us")
    both = _union_per_session(view.filter(pl.col("type").is_in(["COMPUTATION", "COMMUNICATION"])), "comp_or_comm_us")
    out = span
    for part in (busy, compute, comm, both):
        out = out.join(part, on=SESSION, how="left")
    return (
        out.with_columns(pl.col(c).fill_null(0) for c in ("busy_us", "compute_us", "comm_us", "comp_or_comm_us"))
        .with_columns(
            (pl.col("span_us") - pl.col("busy_us")).alias("idle_us"),
            # HTA get_comm_comp_overlap: time both run / communication time.
            (pl.col("compute_us") + pl.col("comm_us") - pl.col("comp_or_comm_us")).alias("overlap_us"),
        )
        .with_columns((pl.col("span_us") - pl.col("compute_us") - pl.col("idle_us")).alias("non_compute_us"))
        .select(*SESSION, *BREAKDOWN)
        .sort(SESSION)
    )


def session_breakdown(hta: pl.DataFrame, exact: pl.DataFrame) -> pl.DataFrame:
    """HTA's breakdown per session, except where its rounding made a time negative: there the exact
    view's (ns → µs), so that no time is negative. Column `view` says which."""
    negative = pl.any_horizontal(pl.col(c) < 0 for c in BREAKDOWN)
    exact_us = exact.with_columns((pl.col(c) / 1000).round(3) for c in BREAKDOWN)
    use_exact = hta.filter(negative).select(SESSION)
    return pl.concat(
        [
            hta.join(use_exact, on=SESSION, how="anti")
            .with_columns(pl.col(c).cast(pl.Float64) for c in BREAKDOWN)
            .with_columns(pl.lit("hta").alias("view")),
            exact_us.join(use_exact, on=SESSION, how="semi").with_columns(pl.lit("exact").alias("view")),
        ]
    ).sort(SESSION)


# A launch pair's times in HTA's µs (columns of `launch_pairs`).
LAUNCH_CPU_US = pl.col("launch_ts_end_us") - pl.col("launch_ts_us")
LAUNCH_GPU_US = pl.col("ts_end_us") - pl.col("ts_us")
LAUNCH_DELAY_US = (pl.col("ts_us") - pl.col("launch_ts_end_us")).clip(lower_bound=0)


def launch_pairs(gpu: pl.DataFrame, profiler_steps: pl.DataFrame, sessions: pl.DataFrame) -> pl.DataFrame:
    """HTA 0.5's `get_cuda_kernel_launch_stats` pairs: GPU events and the launch call of the same
    correlation, where that call is one of `LAUNCH_APIS`; the last ProfilerStep is left out; times
    in HTA's µs. cpu_duration is the call's duration, gpu_duration the GPU event's, launch_delay =
    max(0, GPU start − call end): `LAUNCH_CPU_US`, `LAUNCH_GPU_US`, `LAUNCH_DELAY_US`."""
    pairs = gpu.filter(pl.col("launch_name").cast(pl.String).is_in(LAUNCH_APIS) & pl.col("launch_ts").is_not_null())
    last = _last_step_starts(profiler_steps)
    if not last.is_empty():
        kept = pairs.join(last, on=SESSION).filter(pl.col("launch_ts") < pl.col("_last_start")).drop("_last_start")
        pairs = pl.concat([kept, pairs.join(last.select(SESSION), on=SESSION, how="anti")])
    return hta_times(hta_times(pairs, sessions, "ts", "dur"), sessions, "launch_ts", "launch_dur")
