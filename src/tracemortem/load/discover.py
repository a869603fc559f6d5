"""What a PATH given to the analyzer is: a run directory, a rank directory, one trace, or a
directory of traces. Everything later works from the `Inputs` this returns."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..format import RankPaths, RunPaths, is_inside, is_rank_dir, is_run_dir

TRACE_SUFFIXES = (".json", ".json.gz")
_RANK_IN_NAME = re.compile(r"rank[-_]?(\d+)", re.IGNORECASE)


@dataclass
class Inputs:
    path: Path
    kind: str  # "run" | "rank" | "trace" | "traces"
    run_root: Path | None = None  # run directory (kind run), or the rank dir's parent (kind rank)
    rank_dirs: dict[int, Path] = field(default_factory=dict)
    # trace file → rank guessed from its path (rank{R} folder, rank-N in the name); None = unknown.
    # The trace's own distributedInfo.rank, when present, wins over this guess.
    trace_files: dict[Path, int | None] = field(default_factory=dict)
    # trace files of a run directory that link outside it: not read (load_run reports them)
    refused: list[Path] = field(default_factory=list)


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


def _rank_traces(rank_dir: Path) -> list[Path]:
    """The traces of every attempt recorded in a rank folder."""
    return [t for _, attempt in RankPaths(rank_dir).attempts() for t in _traces_under(attempt.traces)]


def _refuse_outside(inputs: Inputs) -> Inputs:
    """A run directory's traces must lie inside it (a link out of it could pull any local file in)."""
    assert inputs.run_root is not None
    inputs.refused = [t for t in inputs.trace_files if not is_inside(inputs.run_root, t)]
    for t in inputs.refused:
        del inputs.trace_files[t]
    return inputs


def discover(path: str | Path) -> Inputs:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_file():
        if not path.name.lower().endswith(TRACE_SUFFIXES):
            raise InputError(f"{path}: not a run directory or a chrome trace (.json / .json.gz)")
        return Inputs(path, "trace", trace_files={path: rank_from_path(path)})
    if not path.is_dir():
        raise InputError(f"{path}: not a regular file or directory")
    if is_run_dir(path):
        run = RunPaths(path)
        ranks = {r: run.rank(r).root for r in run.ranks()}
        traces = {t: r for r, d in ranks.items() for t in _rank_traces(d)}
        return _refuse_outside(Inputs(path, "run", run_root=path, rank_dirs=ranks, trace_files=traces))
    if is_rank_dir(path):
        rank = int(path.name[4:])
        traces = {t: rank for t in _rank_traces(path)}
        return _refuse_outside(Inputs(path, "rank", run_root=path.parent, rank_dirs={rank: path}, trace_files=traces))
    traces = {t: rank_from_path(t.relative_to(path)) for t in _traces_under(path)}
    if not traces:
        raise InputError(
            f"{path}: no run directory (manifest.json, rank*/) and no chrome traces (*.json, *.json.gz) found"
        )
    return Inputs(path, "traces", trace_files=traces)
