"""What a PATH given to the analyzer is: a run directory, a rank directory, one trace, a
directory of traces, or another tool's log (TensorBoard, Hugging Face Trainer, Lightning CSV).
Everything later works from the `Inputs` this returns."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..format import RunPaths, is_inside, is_rank_dir, is_run_dir
from .find_logs import FoundLogs, find_logs

TRACE_SUFFIXES = (".json", ".json.gz")
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
    # another tool's log (kind in LOG_KINDS): run name → its files, vetted by find_logs
    logs: dict[str, list[Path]] = field(default_factory=dict)


LOG_KINDS = ("tensorboard", "hf-trainer", "lightning-csv")


def is_trace_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(TRACE_SUFFIXES) and name not in ("manifest.json", "meta.json", "info.json")


def rank_from_path(path: Path) -> int | None:
    for part in reversed(path.parts):
        match = _RANK_IN_NAME.search(part)
        if match:
            return int(match.group(1))
    return None


def _traces_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if is_trace_file(p))


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
    handler_traces = [t for t in _traces_under(path) if ".pt.trace.json" in t.name] if path.is_dir() else []
    traces = {t: rank_from_path(t.relative_to(path)) for t in handler_traces} if logs.kind == "tensorboard" else {}
    inputs = Inputs(path, logs.kind, run_root=None, trace_files=traces, refused=list(logs.refused), logs=logs.runs)
    inputs.refused += [t for t in traces if not is_inside(path, t)]
    for t in inputs.refused:
        inputs.trace_files.pop(t, None)
    return inputs


def discover(path: str | Path) -> Inputs:
    path = Path(path)
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
    if is_run_dir(path):
        run = RunPaths(path)
        ranks = {r: run.rank(r).root for r in run.ranks()}
        traces = {t: r for r, d in ranks.items() for t in _traces_under(d / "traces")}
        return _refuse_outside(Inputs(path, "run", run_root=path, rank_dirs=ranks, trace_files=traces))
    if is_rank_dir(path):
        rank = int(path.name[4:])
        traces = {t: rank for t in _traces_under(path / "traces")}
        return _refuse_outside(Inputs(path, "rank", run_root=path.parent, rank_dirs={rank: path}, trace_files=traces))
    if (logs := find_logs(path)) is not None:
        return _logged(path, logs)
    traces = {t: rank_from_path(t.relative_to(path)) for t in _traces_under(path)}
    if not traces:
        raise InputError(
            f"{path}: no run directory (manifest.json, rank*/), no chrome traces (*.json, *.json.gz) and no "
            "TensorBoard, Hugging Face Trainer or Lightning CSV log found"
        )
    return Inputs(path, "traces", trace_files=traces)
