"""The anomaly snapshot (docs/format.md): state just before the first non-finite update.

Everything is saved with plain containers and tensors so that `torch.load(weights_only=True)`
can read it back; the folder appears whole or not at all (written under a temp name, renamed).
"""

from __future__ import annotations

import math
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from .. import format as fmt

MODEL = "model.pt"
OPTIMIZER = "optimizer.pt"
RNG = "rng.pt"
BATCH = "batch.pt"
NOT_PRE_UPDATE = (
    "written after the loop had updated the weights (no optimizer step or end of backward pass "
    "was seen before the update): this is not the state before the bad update; do not replay from it"
)


def plain(obj: Any, depth: int = 0) -> Any:
    """A copy of `obj` that weights_only loading accepts: CPU tensors, containers, primitives;
    anything else becomes its (truncated) repr."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if depth > 20:
        return repr(obj)[:200]
    if isinstance(obj, dict) or hasattr(obj, "items"):
        try:
            return {(k if isinstance(k, (str, int)) else str(k)): plain(v, depth + 1) for k, v in obj.items()}
        except Exception:
            return repr(obj)[:200]
    if isinstance(obj, (list, tuple)):
        items = [plain(v, depth + 1) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    return repr(obj)[:200]


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"python": random.getstate(), "torch_cpu": torch.get_rng_state()}
    try:
        import numpy as np

        state = np.random.get_state(legacy=True)
        if isinstance(state, tuple):  # the legacy global generator is MT19937, whose state is a tuple
            name, keys, pos, has_gauss, cached = state
            states["numpy"] = {
                "bit_generator": str(name),
                "keys": torch.from_numpy(keys.astype("int64")),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            }
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch_cuda"] = torch.cuda.get_rng_state_all()
    return states


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def write_snapshot(
    folder: Path,
    *,
    step: int,
    rank: int,
    reason: str,
    pre_update: bool | None,  # None: not known (docs/format.md, snapshot)
    model: torch.nn.Module,
    optimizers: list[Any],
    batch: Any,
    nonfinite_params: list[str],
    nonfinite_counts: dict[str, int],
    loss: float | None,
) -> Path:
    if folder.exists():
        raise FileExistsError(f"{folder} already exists (a snapshot from an earlier run)")
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        files = [MODEL, RNG]
        torch.save(plain(model.state_dict()), tmp / MODEL)
        if optimizers:  # one state_dict, or a list of them for several optimizers
            states = [plain(o.state_dict()) for o in optimizers]
            torch.save(states[0] if len(states) == 1 else states, tmp / OPTIMIZER)
            files.append(OPTIMIZER)
        torch.save(rng_states(), tmp / RNG)
        if batch is not None:
            torch.save(plain(batch), tmp / BATCH)
            files.append(BATCH)
        info = {
            "step": step,
            "rank": rank,
            "reason": reason,
            "pre_update": pre_update,
            **({} if pre_update else {"note": NOT_PRE_UPDATE}),
            "nonfinite_params": nonfinite_params,
            "nonfinite_counts": nonfinite_counts,
            "loss": finite_or_none(loss),
            "loss_text": None if loss is None else repr(float(loss)),
            "files": sorted(files),
        }
        fmt.write_json_atomic(tmp / fmt.SNAPSHOT_INFO, info)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def set_snapshot_loss(folder: Path, loss: float) -> None:
    """The loss of the snapshot step is known only at step(), after the snapshot was written."""
    info = fmt.read_json(folder / fmt.SNAPSHOT_INFO, "snapshot info")
    info["loss"] = finite_or_none(loss)
    info["loss_text"] = repr(float(loss))
    fmt.write_json_atomic(folder / fmt.SNAPSHOT_INFO, info)
