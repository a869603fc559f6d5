"""Chrome traces → `TraceSet` (docs/architecture.md "Frames between stages", docs/traces.md).

Each file is decoded by `chrome.read_trace`; here the files are normalised (absolute int64 ns,
rank resolved), concatenated, and linked: CPU events get the `ProfilerStep#N` that contains them,
GPU kernels/memcpy/memset get their runtime launch (by `correlation`, or the `ac2g` flow where a
legacy event lacks it) and the CPU op that made that launch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import polars as pl

from ..errors import InputError
from ..findings import Finding
from ..progress import Progress, silent
from . import chrome
from .categories import GPU_CATS, GPU_KINDS, OP_CATS, RUNTIME_CATS
from .chrome import RawTrace
from .coverage import unread_counts, unread_notes
from .sessions import SESSIONS_SCHEMA, session_notes, session_table

FLOW_CATS = frozenset({"ac2g", "async", "async_cpu_to_gpu", "async_gpu"})
_SYNC_TID_OFFSET = 1_000_000  # Kineto moves cuda_sync events to tid = stream + 1,000,000
_STEP_PREFIX = "ProfilerStep#"

ColumnTypes: TypeAlias = "dict[str, pl.DataType | type[pl.DataType]]"  # a dtype class or instance per column
EVENTS_SCHEMA: ColumnTypes = {
    "rank": pl.Int32,
    "session": pl.Int32,
    "name": pl.Categorical,
    "cat": pl.Categorical,
    "ts": pl.Int64,
    "dur": pl.Int64,
    "pid": pl.String,
    "tid": pl.String,
    "stream": pl.Int64,
    "correlation": pl.Int64,
    "external_id": pl.Int64,
    "step": pl.Int64,
    "input_dims": pl.String,
}
STEPS_SCHEMA: ColumnTypes = {"rank": pl.Int32, "session": pl.Int32, "step": pl.Int64, "ts": pl.Int64, "dur": pl.Int64}
GPU_SCHEMA: ColumnTypes = {
    "rank": pl.Int32,
    "session": pl.Int32,
    "name": pl.Categorical,
    "kind": pl.Enum(["kernel", "memcpy", "memset"]),
    "ts": pl.Int64,
    "dur": pl.Int64,
    "stream": pl.Int64,
    "correlation": pl.Int64,
    "step": pl.Int64,
    "launch_name": pl.Categorical,
    "launch_ts": pl.Int64,
    "launch_dur": pl.Int64,
    "op": pl.Categorical,
}


@dataclass
class TraceSet:
    events: pl.DataFrame
    profiler_steps: pl.DataFrame
    gpu: pl.DataFrame
    ranks: dict[int, dict[str, Any]] = field(default_factory=dict)
    notes: list[Finding] = field(default_factory=list)
    # one row per (rank, session): each trace file is a session with its own timeline
    sessions: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=SESSIONS_SCHEMA))


@dataclass
class FileMeta:
    """One readable trace file: its session id (its place among all the input's files), rank and envelope facts."""

    index: int
    rank: int
    path: Path
    meta: dict[str, Any]


@dataclass
class ReadFiles:
    """What reading some trace files gave, before linking: each readable file's normalised frame and
    facts, its notes (tagged with the file's index, so notes of many reads can be put in file order)
    and the files that could not be read."""

    parts: list[pl.DataFrame] = field(default_factory=list)
    files: list[FileMeta] = field(default_factory=list)
    notes: list[tuple[int, Finding]] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)


IndexedFile: TypeAlias = "tuple[int, Path, int | None]"  # (session id, path, rank guessed from the path)


def indexed_files(files: dict[Path, int | None]) -> list[IndexedFile]:
    """The input's trace files in path order, each with its session id (its position)."""
    ordered = sorted(files.items(), key=lambda kv: str(kv[0]))
    return [(index, Path(path), guess) for index, (path, guess) in enumerate(ordered)]


def load_traces(files: dict[Path, int | None], progress: Progress = silent) -> TraceSet:
    """Read every trace; `files` maps each path to the rank guessed from its path (None: unknown).

    The trace's own `distributedInfo.rank` wins over the guess; with neither, rank 0. Several
    files of one rank are sessions (profiling cycles, or unrelated traces): their events are
    concatenated, each row keeping its `session`, and nothing is linked across sessions. Raises InputError only when no file
    could be read at all; a bad file among good ones becomes an `input-error` note.
    """
    # Worker processes for big traces, started on the first one and shared by all the files; they
    # import nothing from the traces' folders.
    with chrome.Decoders(untrusted={Path(p).parent for p in files}) as workers:
        read = read_files(indexed_files(files), progress, workers)
    traces = link_files(read, progress)
    if traces is None:
        raise no_readable_trace(read.errors)
    traces.notes = [note for _, note in read.notes] + error_notes(read.errors)
    traces.notes += session_notes(traces.sessions) + unread_notes(unread_counts(traces.events))
    return traces


def read_files(
    files: list[IndexedFile], progress: Progress = silent, workers: chrome.Decoders | None = None
) -> ReadFiles:
    """Decode and normalise each file; unreadable ones are listed in `errors`, never raised."""
    read = ReadFiles()
    for index, path, guess in files:
        mb_total = max(path.stat().st_size, 1) / 2**20 if path.exists() else 0.0
        label = f"rank {guess}" if guess is not None else path.name

        def report(done: int, total: int, label: str = label, mb_total: float = mb_total) -> None:
            progress(f"parsing {label}: {done / 2**20:.0f}/{mb_total:.0f} MB")

        try:
            raw = chrome.read_trace(path, report, workers)
        except InputError as exc:
            read.errors.append((index, str(exc)))
            continue
        except OSError as exc:
            read.errors.append((index, f"{path}: cannot read ({exc.strerror or exc})"))
            continue
        rank = _rank_of(raw.envelope, guess)
        frame, meta, file_notes = _normalise(raw, rank, index)
        del raw  # its frame is the un-normalised copy: peak memory is the point of this loop
        read.notes += [(index, note) for note in file_notes]
        read.parts.append(frame)
        read.files.append(FileMeta(index, rank, path, meta))
    return read


def link_files(read: ReadFiles, progress: Progress = silent) -> TraceSet | None:
    """Link the files read (emptying `read.parts`); None when none was readable. The TraceSet has
    no notes yet: the caller adds the files' own (`read.notes`), `error_notes`, `session_notes` and
    `unread_notes`, in that order."""
    if not read.parts:
        return None
    progress("linking trace events")
    traces = _link(read.parts)
    traces.ranks = rank_table(read.files, event_counts(traces.events))
    files = {f.index: f.path for f in read.files}
    hosts = {f.index: f.meta["hostname"] for f in read.files}
    bases = {f.index: f.meta["base_time_ns"] for f in read.files}
    traces.sessions = session_table(traces.events, traces.profiler_steps, files, hosts, bases)
    return traces


def event_counts(events: pl.DataFrame) -> dict[int, int]:
    return {int(rank): int(n) for rank, n in events.group_by("rank").len().iter_rows()}


def rank_table(files: list[FileMeta], counts: dict[int, int]) -> dict[int, dict[str, Any]]:
    """rank → its files and the first file's envelope facts (`base_times_ns` lists the other files'
    bases where they differ), from the files in index order; `events` from `counts`."""
    ranks: dict[int, dict[str, Any]] = {}
    for file in sorted(files, key=lambda f: f.index):
        entry = ranks.setdefault(file.rank, {"rank": file.rank, "files": []})
        entry["files"].append(str(file.path))
        for key, value in file.meta.items():
            entry.setdefault(key, value)
        if entry.get("base_time_ns") != file.meta.get("base_time_ns"):
            entry.setdefault("base_times_ns", []).append(file.meta.get("base_time_ns"))
    for rank, entry in ranks.items():
        entry["events"] = int(counts.get(rank, 0))
    return ranks


def no_readable_trace(errors: list[tuple[int, str]]) -> InputError:
    messages = [message for _, message in sorted(errors)]
    if not messages:
        return InputError("no trace file to read")
    if len(messages) == 1:
        return InputError(messages[0])
    return InputError(f"no readable trace among {len(messages)} files; first: {messages[0]}")


def error_notes(errors: list[tuple[int, str]]) -> list[Finding]:
    return [
        Finding(
            rule="input-error",
            severity="warning",
            title="Unreadable trace file skipped",
            message=message,
            suggestion="Check that the file is a torch.profiler chrome trace (.json or .json.gz).",
        )
        for _, message in sorted(errors)
    ]


def _rank_of(envelope: dict[str, Any], guess: int | None) -> int:
    info = envelope.get("distributedInfo")
    if isinstance(info, dict):
        rank = info.get("rank")
        if isinstance(rank, int) and not isinstance(rank, bool) and 0 <= rank < 2**31:
            return rank
    return guess if guess is not None else 0


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _scalars(info: Any) -> dict[str, Any] | None:
    """A dict's scalar entries. `distributedInfo.pg_config` lists every rank of every process group:
    kept for each rank, it would grow with the square of the ranks (1M list items at 1,024)."""
    return {k: v for k, v in info.items() if not isinstance(v, (list, dict))} if isinstance(info, dict) else None


def _normalise(raw: RawTrace, rank: int, index: int) -> tuple[pl.DataFrame, dict[str, Any], list[Finding]]:
    """Absolute int64 ns, rank and file index; drop events whose times are unusable."""
    env = raw.envelope
    notes: list[Finding] = []
    base = _int_or_none(env.get("baseTimeNanoseconds"))
    if base is not None and not 0 <= base < 2**62:
        base = None
    meta: dict[str, Any] = {
        "hostname": env.get("host_name") if isinstance(env.get("host_name"), str) else None,
        "distributedInfo": _scalars(env.get("distributedInfo")),
        "deviceProperties": env.get("deviceProperties") if isinstance(env.get("deviceProperties"), list) else [],
        "base_time_ns": base,
        "schemaVersion": env.get("schemaVersion"),
    }
    frame = raw.frame
    ts = pl.col("ts_us")
    # ns without losing precision on absolute µs (1.7e15 µs * 1000 would round to 256 ns).
    whole = ts.floor()
    ts_ns = whole.cast(pl.Int64) * 1000 + ((ts - whole) * 1000).round().cast(pl.Int64) + (base or 0)
    usable_ts = ts.is_not_null() & ts.is_finite() & (ts.abs() < chrome._MAX_TS_US)
    is_x = pl.col("ph") == "X"
    usable_dur = pl.col("dur_us").is_not_null() & pl.col("dur_us").is_finite() & (pl.col("dur_us") < chrome._MAX_DUR_US)
    keep = usable_ts & (~is_x | usable_dur)
    bad = frame.select((~keep & pl.col("ph").is_in(["X", "s", "f"])).sum()).item()
    frame = (
        frame.filter(keep)
        .with_columns(
            ts=ts_ns,
            # Kineto clamps negative durations to 0; so do we.
            dur=(pl.col("dur_us").clip(lower_bound=0) * 1000).round().cast(pl.Int64),
            rank=pl.lit(rank, dtype=pl.Int32),
            file=pl.lit(index, dtype=pl.Int32),
        )
        .drop("ts_us", "dur_us")
    )
    skipped = raw.skipped + bad
    if raw.truncated:
        kept = frame.select((pl.col("ph") == "X").sum()).item()
        notes.append(
            Finding(
                rule="trace-truncated",
                severity="warning",
                title="Trace file is cut off",
                message=(
                    f"{raw.path.name}: {raw.truncated_detail}; read {kept} events from the first "
                    f"{raw.bytes_read} bytes (the events up to the last complete one)."
                ),
                rank=rank,
                # No subject: the same damage on many ranks (a job killed while every rank wrote
                # its trace) is one cause, merged across ranks (docs/traces.md "Limits and failure behaviour").
                evidence={"file": raw.path.name, "events_recovered": kept, "bytes_recovered": raw.bytes_read},
                suggestion="The profiled job was probably killed while writing the trace; results cover only the recovered part.",
            )
        )
    if skipped:
        detail = "; ".join(raw.problems[:2])
        notes.append(
            Finding(
                rule="input-error",
                severity="warning",
                title="Malformed trace events skipped",
                message=f"{raw.path.name}: skipped {skipped} malformed events"
                + (f" (e.g. {detail})" if detail else ""),
                rank=rank,
                evidence={"file": raw.path.name, "events_skipped": skipped},
                suggestion="The trace was written by a tool that does not follow the Kineto format; totals may be incomplete.",
            )
        )
    return frame, meta, notes


def _link(parts: list[pl.DataFrame]) -> TraceSet:
    """Link the normalised frames of every file. Takes the list and empties it, and every frame
    is dropped as soon as the next one derived from it exists: peak memory is a small multiple of
    the events table."""
    rows = pl.concat(parts, how="vertical")
    parts.clear()
    # Category tests on the Categorical directly: casting millions of rows to String per test
    # was a large part of the linking time.
    cat = pl.col("cat")
    x = rows.filter(pl.col("ph") == "X").drop("ph").with_columns(is_gpu=cat.is_in(list(GPU_CATS)))

    # Legacy GPU and runtime events without `correlation`: take it from the ac2g flow ending (GPU)
    # or starting (runtime) at the same place. Current traces carry it, and skip this.
    correlated = pl.col("is_gpu") | cat.is_in(list(RUNTIME_CATS))
    if x.select((correlated & pl.col("correlation").is_null()).any()).item():
        flows = rows.filter(pl.col("ph").is_in(["s", "f"]) & cat.is_in(list(FLOW_CATS)))
        flow_keys = (
            flows.select(
                "file",
                "pid",
                "tid",
                "ts",
                is_gpu=pl.col("ph") == "f",
                flow_corr=pl.col("flow_id"),
            )
            .drop_nulls("flow_corr")
            .unique(["file", "pid", "tid", "ts", "is_gpu"], keep="first")
        )
        x = (
            x.join(flow_keys, on=["file", "pid", "tid", "ts", "is_gpu"], how="left", maintain_order="left")
            .with_columns(
                correlation=pl.when(correlated).then(pl.coalesce("correlation", "flow_corr")).otherwise("correlation")
            )
            .drop("flow_corr")
        )
    del rows

    # GPU stream: args.stream (int, or ROCm's "0x0"), else from tid ("7", "stream 7", 1000007).
    arg_stream = pl.col("arg_stream")
    parsed_arg = (
        pl.when(arg_stream.str.starts_with("0x"))
        .then(arg_stream.str.slice(2).str.to_integer(base=16, strict=False))
        .otherwise(arg_stream.str.to_integer(strict=False))
    )
    tid_num = pl.col("tid").str.extract(r"(\d+)\s*$").str.to_integer(strict=False)
    tid_stream = pl.when(tid_num >= _SYNC_TID_OFFSET).then(tid_num - _SYNC_TID_OFFSET).otherwise(tid_num)
    x = x.drop("flow_id").with_row_index("_row")
    gpu_rows = x.filter("is_gpu").with_columns(stream=pl.coalesce(parsed_arg, tid_stream)).drop("arg_stream")
    x = x.drop("arg_stream")

    # Profiler steps: CPU copies only (the GPU-side ProfilerStep mirror has GPU durations). The
    # name test on the Categorical runs on the few distinct names, not on every row.
    steps = (
        x.filter(~pl.col("is_gpu") & pl.col("name").cat.starts_with(_STEP_PREFIX))
        .with_columns(step=pl.col("name").cast(pl.String).str.slice(len(_STEP_PREFIX)).str.to_integer(strict=False))
        .drop_nulls("step")
        .select("rank", "file", "step", "ts", "dur", step_end=pl.col("ts") + pl.col("dur"))
        .unique(["rank", "file", "step", "ts"], keep="first")
        .sort("rank", "file", "ts")
    )

    # CPU events: the step whose span contains the event's start, on any thread of the rank's
    # session (file) — backward ops run on autograd threads, outside the ProfilerStep's own thread.
    cpu = _with_step(x.filter(~pl.col("is_gpu")).select("_row", "rank", "file", "ts"), steps).select("_row", "step")

    # GPU events: the launch with the same correlation in the same file, then its step and op.
    launches = (
        _with_step(
            x.filter(cat.is_in(list(RUNTIME_CATS)) & pl.col("correlation").is_not_null())
            .select("file", "correlation", "rank", "name", "ts", "dur", "external_id", "pid", "tid")
            .unique(["file", "correlation"], keep="first", maintain_order=True),
            steps,
        )
        .drop("rank")
        .rename(
            {
                "name": "launch_name",
                "ts": "launch_ts",
                "dur": "launch_dur",
                "external_id": "launch_ext",
                "pid": "launch_pid",
                "tid": "launch_tid",
                "step": "launch_step",
            }
        )
    )
    ops = (
        x.lazy()
        .filter(cat.is_in(list(OP_CATS)))
        .select("file", "pid", "tid", "ts", "dur", "external_id", "name")
        .collect()
    )
    # Only the ops that some GPU event or launch names: far fewer than all ops, and `unique` over
    # all of them was the costliest step of linking.
    wanted = pl.concat(
        [launches.select("file", external_id="launch_ext"), gpu_rows.select("file", "external_id")]
    ).drop_nulls()
    op_by_ext = (
        ops.select("file", "external_id", op_name="name")
        .join(wanted, on=["file", "external_id"], how="semi", maintain_order="left")
        .unique(["file", "external_id"], keep="first", maintain_order=True)
    )
    gpu_side = (
        gpu_rows.join(launches, on=["file", "correlation"], how="left", maintain_order="left")
        .join(
            op_by_ext.rename({"external_id": "launch_ext"}),
            on=["file", "launch_ext"],
            how="left",
            maintain_order="left",
        )
        .join(op_by_ext.rename({"op_name": "own_op"}), on=["file", "external_id"], how="left", maintain_order="left")
    )
    gpu_side = gpu_side.with_columns(op=pl.coalesce("op_name", "own_op")).drop("op_name", "own_op")
    unresolved = gpu_side.filter(pl.col("op").is_null() & pl.col("launch_ts").is_not_null())
    if unresolved.height and ops.height:
        # Launches whose External id names no op (2022-era traces reuse the correlation id):
        # the innermost op on the launching thread that encloses the launch.
        found = _enclosing_ops(ops, unresolved)
        gpu_side = (
            gpu_side.join(found, on="_row", how="left", maintain_order="left")
            .with_columns(op=pl.coalesce("op", "enclosing_op"))
            .drop("enclosing_op")
        )

    # Every X row is in exactly one of `cpu` and `gpu_side`: sorted by row they give the step and
    # stream columns (a join would copy every column of x).
    by_row = pl.concat(
        [
            cpu.with_columns(stream=pl.lit(None, dtype=pl.Int64)),
            gpu_side.select("_row", step="launch_step", stream="stream"),
        ]
    ).sort("_row")
    del cpu
    events = (
        x.with_columns(by_row.get_column("step"), by_row.get_column("stream"))
        .rename({"file": "session"})
        .select(*[pl.col(c).cast(t) for c, t in EVENTS_SCHEMA.items()])
    )
    del x, by_row
    gpu = (
        gpu_side.filter(cat.is_in(list(GPU_KINDS)))
        .rename({"file": "session"})
        .with_columns(
            step=pl.col("launch_step"),
            kind=pl.col("cat").cast(pl.String).replace_strict(GPU_KINDS, return_dtype=GPU_SCHEMA["kind"]),
        )
        .select(*[pl.col(c).cast(t) for c, t in GPU_SCHEMA.items()])
    )
    profiler_steps = steps.rename({"file": "session"}).select(*[pl.col(c).cast(t) for c, t in STEPS_SCHEMA.items()])
    return TraceSet(events=events, profiler_steps=profiler_steps, gpu=gpu)


def _with_step(frame: pl.DataFrame, steps: pl.DataFrame) -> pl.DataFrame:
    """`frame` (with rank, file and ts) plus `step`: the ProfilerStep of its rank and file whose span
    contains ts, null outside every step. The result is sorted by rank and ts."""
    if not steps.height:
        return frame.with_columns(step=pl.lit(None, dtype=pl.Int64))
    return (
        frame.sort("rank", "ts", maintain_order=True)  # stable: events of one instant keep file order
        .join_asof(
            steps.select("rank", "file", "ts", "step", "step_end"),
            on="ts",
            by=["rank", "file"],
            strategy="backward",
            check_sortedness=False,
        )
        .with_columns(step=pl.when(pl.col("ts") < pl.col("step_end")).then("step"))
        .drop("step_end")
    )


def _enclosing_ops(ops: pl.DataFrame, launches: pl.DataFrame) -> pl.DataFrame:
    """For each launch (`_row`, file, launch_pid, launch_tid, launch_ts): the name of the innermost
    op on its thread with start <= launch_ts <= end. Innermost, because that is the op Kineto names
    through External id in newer traces, so GPU time lands on the same ops (aten::mm, not
    aten::linear) whatever the trace's age.

    Ops are sorted per thread by start (outer first on equal starts). The answer is the last op at
    or before the launch's position whose end reaches the launch: found for all launches at once
    by skipping runs of ops that ended earlier, using block maxima of the ends (2^k-op blocks)."""
    import numpy as np  # here only: a fifth of a second at every start-up, for legacy traces alone

    keys = ["file", "pid", "tid"]
    spans = (
        ops.select(*keys, "ts", end=pl.col("ts") + pl.col("dur"), enclosing_op="name")
        .sort(*keys, "ts", "end", descending=[False, False, False, False, True])
        .with_row_index("_op")
        .with_columns(group_start=pl.col("_op").first().over(keys))
    )
    # The last op of the thread starting at or before the launch; ties in start resolved to the
    # last of the tie (the innermost) through `tie_last`.
    spans = spans.with_columns(tie_last=pl.col("_op").last().over(*keys, "ts"))
    query = launches.select(
        "_row", "file", pid=pl.col("launch_pid"), tid=pl.col("launch_tid"), ts=pl.col("launch_ts")
    ).sort("ts")
    query = query.join_asof(
        spans.select(*keys, "ts", "tie_last", "group_start").sort("ts"),
        on="ts",
        by=keys,
        strategy="backward",
        check_sortedness=False,
    ).drop_nulls("tie_last")
    if not query.height:
        return pl.DataFrame(schema={"_row": pl.UInt32, "enclosing_op": pl.Categorical})
    end = spans.get_column("end").to_numpy()
    t = query.get_column("ts").to_numpy()
    pos = query.get_column("tie_last").to_numpy().astype(np.int64) + 1  # ops in [pos, j0] end before t
    levels = [end]
    while (1 << len(levels)) <= len(end):
        prev, width = levels[-1], 1 << (len(levels) - 1)
        # block max of (j - 2^k, j]: the previous level here and `width` ops earlier (clipped at 0)
        levels.append(np.concatenate([prev[:width], np.maximum(prev[width:], prev[:-width])]))
    for k in range(len(levels) - 1, -1, -1):
        live = pos > 0
        skip = np.zeros_like(live)
        skip[live] = levels[k][pos[live] - 1] < t[live]
        pos = np.where(skip, np.maximum(pos - (1 << k), 0), pos)
    found = pos - 1
    ok = found >= query.get_column("group_start").to_numpy().astype(np.int64)
    names = spans.get_column("enclosing_op")
    return pl.DataFrame(
        {
            "_row": query.get_column("_row"),
            "enclosing_op": names.gather(pl.Series(np.where(ok, found, 0))).set(pl.Series(~ok), None)
            if len(names)
            else names,
        }
    )
