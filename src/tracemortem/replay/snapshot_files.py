"""Read an anomaly snapshot (docs/format.md, `snapshot/`) as untrusted input: every `.pt` file
with `torch.load(weights_only=True)`, every path checked to lie inside the run directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import format as fmt
from ..errors import ConfigError, InputError
from ..record.snapshot import BATCH, MODEL, OPTIMIZER, RNG


@dataclass
class Snapshot:
    folder: Path
    rank: int
    info: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    batch: Any
    rng: Any
    recorded_device: str | None
    notes: list[str] = field(default_factory=list)


def find_rank_dir(path: Path, rank: int | None) -> tuple[Path, Path]:
    """(run root, rank folder) for RUN given as a run directory or one rank directory."""
    if fmt.is_rank_dir(path):
        if rank is not None and rank != fmt.RankPaths(path).rank:
            raise ConfigError(f"{path} is the folder of rank {fmt.RankPaths(path).rank}, not of rank {rank}")
        return path.parent, path
    if not path.is_dir():
        raise InputError(f"{path}: not a run directory")
    runs = fmt.RunPaths(path)
    with_snapshot = [r for r in runs.ranks() if runs.rank(r).snapshot.is_dir()]
    if rank is not None:
        return path, runs.rank(rank).root
    if not with_snapshot:
        raise InputError(f"{path}: no rank has a snapshot/ folder (the run never saw a non-finite value)")
    return path, runs.rank(with_snapshot[0]).root


def load_snapshot(root: Path, rank_dir: Path) -> Snapshot:
    paths = fmt.RankPaths(rank_dir)
    folder = paths.snapshot
    if not folder.is_dir():
        raise InputError(f"{folder}: no snapshot (the run never saw a non-finite value on this rank)")
    if not fmt.is_inside(root, folder):
        raise InputError(f"{folder}: links outside the run directory; not read")
    info = fmt.read_json(folder / fmt.SNAPSHOT_INFO, "snapshot info.json")
    state = _load(root, folder / MODEL, required=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{folder / MODEL}: not a state_dict of tensors")
    meta = {}
    if paths.meta.is_file() and fmt.is_inside(root, paths.meta):
        try:
            meta = fmt.read_json(paths.meta, "meta.json")
        except InputError:
            meta = {}
    snapshot = Snapshot(
        folder=folder,
        rank=paths.rank,
        info=info,
        model_state={str(k): v for k, v in state.items()},
        batch=_load(root, folder / BATCH, required=False),
        rng=_load(root, folder / RNG, required=False),
        recorded_device=None if meta.get("device") is None else str(meta.get("device")),
    )
    optimizer = _load(root, folder / OPTIMIZER, required=False)
    if optimizer is not None:
        bad = _nonfinite_in(optimizer)
        if bad:
            snapshot.notes.append(f"the optimizer state holds {bad} non-finite value(s)")
    return snapshot


def _load(root: Path, path: Path, required: bool) -> Any:
    if not path.is_file():
        if required:
            raise InputError(f"{path}: missing from the snapshot")
        return None
    if not fmt.is_inside(root, path):
        raise InputError(f"{path}: links outside the run directory; not read")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refusals, truncated zip files, foreign formats
        raise InputError(f"{path}: cannot load with weights_only=True: {type(exc).__name__}: {exc}") from None


def _nonfinite_in(value: Any, depth: int = 0) -> int:
    if isinstance(value, torch.Tensor):
        return int((~torch.isfinite(value)).sum()) if value.is_floating_point() else 0
    if depth > 10:
        return 0
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return sum(_nonfinite_in(v, depth + 1) for v in items)
