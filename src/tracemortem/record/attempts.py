"""Attempts: a Recorder never writes over an earlier recording of its rank (docs/format.md,
"Attempts"). The first recording of a rank lives in `rank{R}/` itself (the v1 layout); each
later one (a restart, a re-run notebook cell, a second process given the same rank) claims
`rank{R}/attempts/{K}/` with an atomic mkdir, so two processes starting together never share one.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import format as fmt

# What the manifest lists for each attempt (read from its meta.json).
SUMMARY_KEYS = ("pid", "hostname", "started", "ended", "status", "start_step", "steps", "dropped_steps", "lost_steps")


@dataclass
class Attempt:
    number: int
    paths: fmt.RankPaths
    earlier: list[dict[str, Any]] = field(default_factory=list)  # summaries of the rank's earlier attempts
    note: str | None = None  # why no attempt could be claimed (the directory is unusable)

    def live_earlier(self) -> list[dict[str, Any]]:
        """Earlier attempts that look alive: still `running`, and their process exists (on this
        host) or cannot be checked (another host)."""
        host = socket.gethostname()
        return [a for a in self.earlier if a.get("status") == fmt.STATUS_RUNNING and _maybe_alive(a, host)]


def _maybe_alive(summary: dict[str, Any], host: str) -> bool:
    pid = summary.get("pid")
    if summary.get("hostname") != host or not isinstance(pid, int) or isinstance(pid, bool):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def claim(rank_paths: fmt.RankPaths, first_meta: dict[str, Any]) -> Attempt:
    """Claim the next attempt of this rank. Attempt 0 is claimed by creating its meta.json
    (`first_meta`) exclusively; a later one by creating its folder. Never raises: a folder that
    cannot be written gives attempt 0, whose writes then fail and are counted as usual."""
    try:
        if not rank_paths.holds_data() and fmt.write_json_exclusive(rank_paths.meta, {**first_meta, "attempt": 0}):
            return Attempt(0, rank_paths)
        base = rank_paths.root / fmt.ATTEMPTS
        base.mkdir(parents=True, exist_ok=True)
        number = max((n for n, _ in rank_paths.attempts()), default=0) + 1
        while True:
            try:
                (base / str(number)).mkdir()
                break
            except FileExistsError:  # another process took it meanwhile
                number += 1
        return Attempt(number, rank_paths.attempt(number), earlier=survey_rank(rank_paths, below=number))
    except OSError as exc:
        return Attempt(0, rank_paths, note=f"no attempt could be claimed: {type(exc).__name__}: {exc}")


def summary(rank: int, number: int, paths: fmt.RankPaths, run_root: Path, meta: dict[str, Any]) -> dict[str, Any]:
    try:
        where = paths.root.relative_to(run_root).as_posix()
    except ValueError:
        where = str(paths.root)
    return {"rank": rank, "attempt": number, "path": where, **{k: meta.get(k) for k in SUMMARY_KEYS}}


def survey_rank(rank_paths: fmt.RankPaths, below: int | None = None, skip: int | None = None) -> list[dict[str, Any]]:
    """Summaries of the attempts on disk in one rank folder (those numbered below `below`; not
    attempt `skip`, whose meta.json is not read: 20,000 parameters make it megabytes)."""
    found = []
    run_root = rank_paths.root.parent
    for number, paths in rank_paths.attempts():
        if (below is not None and number >= below) or number == skip:
            continue
        try:
            meta = fmt.read_json(paths.meta, "meta")
        except Exception:  # unreadable or not yet written: listed, without its facts
            meta = {}
        found.append(summary(rank_paths.rank, number, paths, run_root, meta))
    return found
