"""Profiling sessions: each trace file of a rank is one session with its own timeline.

A profiler schedule with `repeat` writes one file per cycle, and a folder may hold traces of
different runs that claim the same rank. Merging them into one timeline counts the gaps between
them as GPU idle and overlaps their step windows (docs/traces.md "Sessions"). Here each file
becomes a session (rank, session id, span, ProfilerStep range, host, process), and the sessions
of one rank are classified: cycles of one profiling run (same host and process, spans that do not
overlap, step numbers that go on) or unrelated traces.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ..findings import Finding

SESSIONS_SCHEMA = {
    "rank": pl.Int32,
    "session": pl.Int32,
    "file": pl.String,
    "start_ns": pl.Int64,
    "end_ns": pl.Int64,
    "first_step": pl.Int64,
    "last_step": pl.Int64,
    "steps": pl.UInt32,
    "hostname": pl.String,
    "pid": pl.String,
    "base_ns": pl.Int64,  # the trace's baseTimeNanoseconds (None: absolute times)
}


def session_table(
    events: pl.DataFrame,
    profiler_steps: pl.DataFrame,
    files: dict[int, Path],
    hosts: dict[int, str | None],
    bases: dict[int, int | None],
) -> pl.DataFrame:
    """One row per (rank, session) with events: its span, ProfilerStep range, host and main process
    (the pid of its ProfilerStep spans, else of most of its events)."""
    if events.is_empty():
        return pl.DataFrame(schema=SESSIONS_SCHEMA)
    spans = events.group_by("rank", "session").agg(
        pl.col("ts").min().alias("start_ns"),
        (pl.col("ts") + pl.col("dur")).max().alias("end_ns"),
        pl.col("pid").filter(pl.col("stream").is_null()).mode().sort().first().alias("_any_pid"),
    )
    # The name test on the few distinct names, not on every row (millions in a large trace).
    names = events.get_column("name").unique().cast(pl.String)
    step_names = names.filter(names.str.starts_with("ProfilerStep#")).to_list()
    step_pids = (
        events.filter(pl.col("name").is_in(step_names))
        .group_by("rank", "session")
        .agg(pl.col("pid").filter(pl.col("stream").is_null()).mode().sort().first().alias("_step_pid"))
    )
    steps = profiler_steps.group_by("rank", "session").agg(
        pl.col("step").min().alias("first_step"), pl.col("step").max().alias("last_step"), pl.len().alias("steps")
    )
    meta = pl.DataFrame(
        {
            "session": list(files),
            "file": [path.name for path in files.values()],
            "hostname": [hosts.get(index) for index in files],
            "base_ns": [bases.get(index) for index in files],
        },
        schema={"session": pl.Int32, "file": pl.String, "hostname": pl.String, "base_ns": pl.Int64},
    )
    return (
        spans.join(step_pids, on=["rank", "session"], how="left")
        .join(steps, on=["rank", "session"], how="left")
        .join(meta, on="session", how="left")
        .with_columns(pl.coalesce("_step_pid", "_any_pid").alias("pid"), pl.col("steps").fill_null(0))
        .select(*[pl.col(c).cast(t) for c, t in SESSIONS_SCHEMA.items()])
        .sort("rank", "start_ns")
    )


def classify(sessions: pl.DataFrame) -> pl.DataFrame:
    """`sessions` plus `ordinal` (0, 1, … in time within the rank) and `related`: the session
    continues the previous one of its rank (same host and process, starts after it ended, step
    numbers go on). The first session of a rank is related to nothing (null)."""
    prev = [pl.col(c).shift(1).over("rank") for c in ("end_ns", "hostname", "pid", "last_step")]
    same = [pl.col("hostname").eq_missing(prev[1]), pl.col("pid").eq_missing(prev[2])]
    steps_go_on = (pl.col("first_step") > prev[3]).fill_null(True)
    return sessions.sort("rank", "start_ns", "file").with_columns(  # file: equal starts in one order
        pl.int_range(pl.len()).over("rank").cast(pl.Int32).alias("ordinal"),
        pl.when(prev[0].is_not_null())
        .then(same[0] & same[1] & (pl.col("start_ns") >= prev[0]) & steps_go_on)
        .alias("related"),
    )


def _step_range(first: int | None, last: int | None) -> str:
    if first is None or last is None:
        return "no ProfilerStep"
    return f"step {first}" if first == last else f"steps {first}–{last}"


def session_notes(sessions: pl.DataFrame) -> list[Finding]:
    """`trace-sessions` per rank with several sessions: info for the cycles of one profiling run,
    warning for unrelated traces that claim the same rank."""
    classified = classify(sessions)
    per_rank = (
        classified.group_by("rank", maintain_order=True)
        .agg(
            pl.len().alias("sessions"),
            pl.col("related").drop_nulls().all().alias("one_run"),
            pl.col("file"),
            pl.col("first_step"),
            pl.col("last_step"),
            pl.col("hostname").n_unique().alias("hosts"),
            pl.col("pid").n_unique().alias("processes"),
            (pl.col("start_ns").shift(-1) - pl.col("end_ns")).drop_nulls().min().alias("closest_gap_ns"),
        )
        .filter(pl.col("sessions") > 1)
    )
    notes = []
    for row in per_rank.iter_rows(named=True):
        ranges = [_step_range(a, b) for a, b in zip(row["first_step"], row["last_step"])]
        evidence = {
            "sessions": row["sessions"],
            "files": row["file"],
            "step_ranges": ranges,
            "hosts": row["hosts"],
            "processes": row["processes"],
        }
        if row["one_run"]:
            notes.append(
                Finding(
                    "trace-sessions",
                    "info",
                    f"{row['sessions']} profiling sessions of rank {row['rank']}",
                    f"Rank {row['rank']}'s traces are {row['sessions']} profiling sessions of one run "
                    f"({', '.join(ranges)}). Each is analysed on its own timeline and the totals add them up; "
                    "the time between sessions is not counted as GPU idle.",
                    rank=row["rank"],
                    subject=f"rank {row['rank']}",
                    evidence=evidence,
                )
            )
            continue
        overlap = row["closest_gap_ns"] is not None and row["closest_gap_ns"] < 0
        why = [
            f"{row['hosts']} hosts" if row["hosts"] > 1 else "",
            f"{row['processes']} processes" if row["processes"] > 1 else "",
            "overlapping times" if overlap else "",
        ]
        reason = ", ".join(w for w in why if w) or "step numbers that start over"
        notes.append(
            Finding(
                "trace-sessions",
                "warning",
                f"Unrelated traces claim rank {row['rank']}",
                f"{row['sessions']} traces give rank {row['rank']} but do not come from one profiling run "
                f"({reason}): {', '.join(row['file'][:5])}{' …' if len(row['file']) > 5 else ''}. "
                "They are not merged: each is analysed on its own timeline, and per-rank totals add them up.",
                rank=row["rank"],
                evidence=evidence,
                suggestion="Analyse each run's traces on their own (one folder per run), or make sure every trace "
                "carries its own rank (torch.distributed initialised, or rank-N in the file name).",
            )
        )
    return notes
