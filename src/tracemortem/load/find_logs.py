"""Find logs written by other tools under a PATH: a Hugging Face Trainer state, Lightning
CSVLogger metrics, TensorBoard event files (docs/inputs.md).

Every file found is vetted here once: it must be a regular file that lies inside PATH (links out
of it, FIFOs and devices are refused unread), so the readers never open anything else.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..format import is_inside

HF_STATE = "trainer_state.json"
LIGHTNING_METRICS = "metrics.csv"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_MAX_ENTRIES = 200_000  # a log directory this large is someone's home folder, not a log


@dataclass
class FoundLogs:
    kind: str  # tensorboard | hf-trainer | lightning-csv
    runs: dict[str, list[Path]]  # run name (folder relative to PATH, "." for PATH) → its files
    refused: list[Path] = field(default_factory=list)  # links out of PATH, FIFOs, devices


def is_event_file(name: str) -> bool:
    return "tfevents" in name


def _vetted(root: Path, path: Path, refused: list[Path]) -> bool:
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        regular = False
    if not regular or not is_inside(root, path):
        refused.append(path)
        return False
    return True


def _walk(root: Path) -> list[Path]:
    """Every file name under root (links to folders are not followed), sorted."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        found += [Path(folder) / f for f in files]
        if len(found) > _MAX_ENTRIES:
            break
    return sorted(found)


def _run_name(root: Path, folder: Path) -> str:
    return folder.relative_to(root).as_posix() if folder != root else "."


def _group(root: Path, files: list[Path]) -> dict[str, list[Path]]:
    runs: dict[str, list[Path]] = {}
    for path in files:
        runs.setdefault(_run_name(root, path.parent), []).append(path)
    return runs


def _hf_state(root: Path) -> Path | None:
    """The Trainer's own state at the top, else the newest checkpoint's (its log is cumulative)."""
    if (root / HF_STATE).exists():
        return root / HF_STATE
    checkpoints = []
    for child in root.iterdir() if root.is_dir() else []:
        match = _CHECKPOINT.match(child.name)
        if match and (child / HF_STATE).exists():
            checkpoints.append((int(match.group(1)), child / HF_STATE))
    return max(checkpoints)[1] if checkpoints else None


def _single(kind: str, root: Path, path: Path) -> FoundLogs:
    refused: list[Path] = []
    runs = {".": [path]} if _vetted(root, path, refused) else {}
    return FoundLogs(kind, runs, refused)


def find_logs(path: Path) -> FoundLogs | None:
    """What other tool's log PATH is, or None when it holds none."""
    if path.is_file() or not path.is_dir():
        name = path.name
        kind = (
            "hf-trainer"
            if name == HF_STATE
            else "lightning-csv"
            if name == LIGHTNING_METRICS
            else "tensorboard"
            if is_event_file(name)
            else None
        )
        return _single(kind, path.parent, path) if kind else None
    state = _hf_state(path)
    if state is not None:
        return _single("hf-trainer", path, state)
    files = _walk(path)
    for kind, wanted in (
        ("lightning-csv", lambda p: p.name == LIGHTNING_METRICS),
        ("tensorboard", lambda p: is_event_file(p.name)),
    ):
        candidates = [p for p in files if wanted(p)]
        if candidates:
            refused: list[Path] = []
            kept = [p for p in candidates if _vetted(path, p, refused)]
            return FoundLogs(kind, _group(path, kept), refused)
    return None
