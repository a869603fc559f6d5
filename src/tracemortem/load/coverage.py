"""Trace activity the analyzer does not read, named instead of silently skipped.

Kineto writes device activity of other kinds than CUDA/ROCm kernels, copies and memsets: MTIA
accelerator events (`mtia_ccp_events`), CUPTI range-profiler spans (`cuda_profiler_range`), and
categories newer than this analyzer. They are left out of GPU time, the kernel table and the HTA
breakdown; a `trace-unsupported` note says so, per rank, with the categories and their counts
(docs/traces.md "What is not read").
"""

from __future__ import annotations

import polars as pl

from ..findings import Finding
from .categories import GPU_CATS, OP_CATS, RUNTIME_CATS

# Categories of complete events that the loader or timing reads, or that carry no work of their
# own (the profiler's whole-trace span, instant markers, Python frames under the ops).
READ_CATS = (
    GPU_CATS
    | RUNTIME_CATS
    | OP_CATS
    | frozenset({"user_annotation", "python_function", "Trace", "cpu_instant_event", "overhead", "fwdbwd"})
)


def unread_counts(events: pl.DataFrame) -> pl.DataFrame:
    """rank, cat, events: how many events of each kind tracemortem does not read (counts of several
    sets of files add up)."""
    return (
        events.filter(~pl.col("cat").is_in(list(READ_CATS)))
        .group_by("rank", pl.col("cat").cast(pl.String))
        .agg(pl.len().cast(pl.Int64).alias("events"))
    )


def unread_notes(counts: pl.DataFrame) -> list[Finding]:
    unread = (
        counts.group_by("rank", "cat")
        .agg(pl.col("events").sum())
        .sort("rank", "events", descending=[False, True])
        .group_by("rank", maintain_order=True)
        .agg(pl.col("cat"), pl.col("events"), pl.col("events").sum().alias("total"))
    )
    return [
        Finding(
            "trace-unsupported",
            "warning",
            "Trace activity not analysed",
            f"Rank {row['rank']}: {row['total']:,} events of kinds tracemortem does not read ("
            + ", ".join(f"{cat}: {n:,}" for cat, n in zip(row["cat"], row["events"]))
            + "). They are left out of GPU time, the kernel table and the idle/compute breakdown, so those "
            "describe only the CPU side and any CUDA/ROCm activity.",
            rank=row["rank"],
            subject=row["cat"][0],
            evidence={"events": row["total"], "categories": dict(zip(row["cat"], row["events"]))},
            suggestion="Use the accelerator vendor's own trace tools for this activity.",
        )
        for row in unread.iter_rows(named=True)
    ]
