"""What a PATH given to the analyzer is: a run directory, a rank directory, one trace, a
directory of traces, or another tool's log (TensorBoard, Hugging Face Trainer, Lightning CSV).
Everything later works from the `Inputs` this returns."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..format import MAX_RANK, RankPaths, RunPaths, is_inside, is_rank_dir, is_run_dir
from .find_logs import FoundLogs, find_logs

TRACE_SUFFIXES = (".json", ".json.gz")
# The CLI's own reports: never read back as traces (a report written into a traces folder).
OWN_OUTPUT_PREFIX = "tracemortem-report."
_RANK_IN_NAME = re.compile(r"rank[-_]?(\d+)", re.IGNORECASE)


@dataclass
class Inputs:
    path: Path
    kind: str  # "run" | "rank" | "trace" | "traces" | one of LOG_KINDS
    run_root: Path | None = None  # run directory (kind run), or the rank dir's parent (kind rank)
    rank_dirs: dict[int, Path] = field(default_factory=dict)
    # trace file → rank guessed from its path (rank{R} folder, rank-N in the name); None = unknown.
    # The trace's own distributedInfo.rank, when present, wins over this guess.
    trace_files: dict[Path, int | None] = field(default_factory=dict)
    # trace files of a run directory that link outside it: not read (load_run reports them)
    refused: list[Path] = field(default_factory=list)
    # folders that could not be listed (no permission), with why: reported, the rest is read
    unlisted: list[tuple[Path, str]] = field(default_factory=list)
    # another tool's log (kind in LOG_KINDS): run name → its files, vetted by find_logs
    logs: dict[str, list[Path]] = field(default_factory=dict)


LOG_KINDS = ("tensorboard", "hf-trainer", "lightning-csv")


def is_trace_file(path: Path) -> bool:
    """A regular file (or a link to one: never a FIFO, device or socket) named like a trace, not
    one of a run directory's documents, a file still being written (dot-names) or our own report."""
    name = path.name.lower()
    return (
        name.endswith(TRACE_SUFFIXES)
        and name not in ("manifest.json", "meta.json", "info.json")
        and not name.startswith((".", OWN_OUTPUT_PREFIX))
        and path.is_file()
    )


def rank_from_path(path: Path) -> int | None:
    for part in reversed(path.parts):
        match = _RANK_IN_NAME.search(part)
        if match:
            rank = int(match.group(1))
            return rank if rank <= MAX_RANK else None
    return None


def _traces_under(folder: Path, unlisted: list[tuple[Path, str]]) -> list[Path]:
    """Trace files below `folder`. Hidden folders are skipped (the profiler's `.trace.*/`
    scratch exports of a live run); linked folders are not followed (no loops); a folder that
    cannot be listed goes to `unlisted`."""

    def unreadable(error: OSError) -> None:
        if not isinstance(error, FileNotFoundError):  # a rank without traces/ is no problem
            unlisted.append((Path(error.filename or folder), error.strerror or str(error)))

    found = []
    for parent, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [path for name in files if is_trace_file(path := Path(parent) / name)]
    return sorted(found)


def _rank_traces(rank_dir: Path, unlisted: list[tuple[Path, str]]) -> list[Path]:
    """The traces of every attempt recorded in a rank folder."""
    try:
        attempts = [attempt for _, attempt in RankPaths(rank_dir).attempts()]
    except OSError as error:  # the rank folder cannot be looked into: its traces/ then cannot either
        unlisted.append((Path(error.filename or rank_dir), error.strerror or str(error)))
        return []
    return [t for attempt in attempts for t in _traces_under(attempt.traces, unlisted)]


def _refuse_outside(inputs: Inputs) -> Inputs:
    """A run directory's traces must lie inside it (a link out of it could pull any local file in)."""
    assert inputs.run_root is not None
    inputs.refused = [t for t in inputs.trace_files if not is_inside(inputs.run_root, t)]
    for t in inputs.refused:
        del inputs.trace_files[t]
    return inputs


def _logged(path: Path, logs: FoundLogs) -> Inputs:
    """Another tool's log. Profiler traces that tensorboard_trace_handler wrote into a TensorBoard
    log directory (`*.pt.trace.json[.gz]`) come along; other JSON files there are not traces."""
    if not logs.runs:
        raise InputError(f"{path}: its {logs.kind} files link outside it or are not regular files; none was read")
    unlisted: list[tuple[Path, str]] = []
    handler_traces = [t for t in _traces_under(path, unlisted) if ".pt.trace.json" in t.name] if path.is_dir() else []
    traces = {t: rank_from_path(t.relative_to(path)) for t in handler_traces} if logs.kind == "tensorboard" else {}
    inputs = Inputs(path, logs.kind, trace_files=traces, refused=list(logs.refused), unlisted=unlisted, logs=logs.runs)
    inputs.refused += [t for t in traces if not is_inside(path, t)]
    for t in inputs.refused:
        inputs.trace_files.pop(t, None)
    return inputs


def discover(path: str | Path) -> Inputs:
    path = Path(path)
    try:
        return _discover(path)
    except OSError as exc:  # PATH itself, or a folder on the way, without permission
        raise InputError(f"{exc.filename or path}: cannot read ({exc.strerror or exc})") from None


def _discover(path: Path) -> Inputs:
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_file():
        if (logs := find_logs(path)) is not None:
            return _logged(path, logs)
        if not path.name.lower().endswith(TRACE_SUFFIXES):
            raise InputError(
                f"{path}: not a run directory, a chrome trace (.json / .json.gz), a TensorBoard event file, "
                "a trainer_state.json or a metrics.csv"
            )
        return Inputs(path, "trace", trace_files={path: rank_from_path(path)})
    if not path.is_dir():
        raise InputError(f"{path}: not a regular file or directory")
    unlisted: list[tuple[Path, str]] = []
    if is_run_dir(path):
        run = RunPaths(path)
        ranks = {r: run.rank(r).root for r in run.ranks()}
        traces: dict[Path, int | None] = {t: r for r, d in ranks.items() for t in _rank_traces(d, unlisted)}
        inputs = Inputs(path, "run", run_root=path, rank_dirs=ranks, trace_files=traces, unlisted=unlisted)
        return _refuse_outside(inputs)
    if is_rank_dir(path):
        rank = int(path.name[4:])
        traces = {t: rank for t in _rank_traces(path, unlisted)}
        inputs = Inputs(path, "rank", run_root=path.parent, rank_dirs={rank: path}, trace_files=traces)
        inputs.unlisted = unlisted
        return _refuse_outside(inputs)
    if (logs := find_logs(path)) is not None:
        return _logged(path, logs)
    traces = {t: rank_from_path(t.relative_to(path)) for t in _traces_under(path, unlisted)}
    if not traces:
        why = f" ({unlisted[0][0]}: {unlisted[0][1]})" if unlisted else ""
        raise InputError(
            f"{path}: no run directory (manifest.json, rank*/), no chrome traces (*.json, *.json.gz) and no "
            f"TensorBoard, Hugging Face Trainer or Lightning CSV log found{why}"
        )
    return Inputs(path, "traces", trace_files=traces, unlisted=unlisted)
